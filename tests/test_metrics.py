"""Official GLUE metrics against hand computations."""

import math

import numpy as np
import pytest

from axformer.taskdata import metrics as M
from axformer.taskdata.tasks import get_task


def test_accuracy_and_f1_by_hand():
    preds = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1, 0])
    # TP=2 (0,4), FP=1 (1), FN=1 (3): P=2/3, R=2/3, F1=2/3; accuracy 4/6
    assert M.accuracy(preds, labels) == pytest.approx(4 / 6)
    assert M.f1(preds, labels) == pytest.approx(2 / 3)


def test_mcc_by_hand():
    preds = np.array([1, 1, 1, 0, 0, 1, 0, 1])
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 1])
    tp, tn, fp, fn = 4, 2, 1, 1
    want = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.mcc(preds, labels) == pytest.approx(want)


def test_pearson_spearman_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 5.0])
    xm, ym = x - x.mean(), y - y.mean()
    r = (xm @ ym) / math.sqrt((xm @ xm) * (ym @ ym))
    assert M.pearson(x, y) == pytest.approx(r)
    # ranks of y: 1,3,2,4 -> d = 0,1,1,0 -> rho = 1 - 6*2/(4*15) = 0.8
    assert M.spearman(x, y) == pytest.approx(0.8)
    assert M.pearson(np.ones(4), y) == 0.0  # constant predictor: r undefined -> 0
    # a constant whose float mean is inexact (np.std of it is ~1e-15, not 0): still 0, not scipy's NaN
    const = np.full(1500, 2.7012345)
    assert np.std(const) != 0 and M.pearson(const, np.arange(1500.0)) == 0.0
    assert M.spearman(const, np.arange(1500.0)) == 0.0


def test_compute_names_and_constant_baseline():
    task = get_task("mrpc")
    out = M.compute(task, np.array([1, 0]), np.array([1, 1]))
    assert set(out) == {"f1", "accuracy"}
    base = M.constant_baseline(task, np.array([1, 1, 0]), np.array([1, 0, 1, 1]))
    assert base["accuracy"] == 0.75 and base["f1"] == pytest.approx(2 * 0.75 / 1.75)
    sts = M.constant_baseline(get_task("stsb"), np.array([1.0, 3.0]), np.array([0.0, 5.0]))
    assert sts["pearson"] == 0.0


def test_constant_float_prediction_scores_zero_not_nan():
    # n copies of one float mean can have a std of ~1e-16 (not 0): r would be NaN, which JSON cannot hold
    preds = np.full(1500, 2.7033279922157525)
    labels = np.linspace(0.0, 5.0, 1500)
    assert np.std(preds) > 0  # the case: numerically constant, std not exactly 0
    assert M.pearson(preds, labels) == 0.0 and M.spearman(preds, labels) == 0.0
def test_macro_f1_by_hand_and_multiclass_constant_baseline():
    preds = np.array([0, 1, 2, 2, 1, 0, 2])
    labels = np.array([0, 1, 1, 2, 2, 0, 2])
    # class 0: TP 2 FP 0 FN 0 -> 1; class 1: TP 1 FP 1 FN 1 -> 1/2; class 2: TP 2 FP 1 FN 1 -> 2/3
    assert M.macro_f1(preds, labels) == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    # a class never predicted counts as 0, not skipped
    assert M.macro_f1(np.zeros(3, int), np.array([0, 1, 2])) == pytest.approx((2 * (1 / 3) / (1 + 1 / 3)) / 3)
    from axformer.taskdata.tasks import task_from_decl

    three = task_from_decl("t3", {"train": "a.csv", "dev": "b.csv", "text": "s", "label": "y",
                                  "labels": ["a", "b", "c"], "metric": "macro_f1", "secondary": ["accuracy", "mcc"]})
    base = M.constant_baseline(three, np.array([2, 2, 1, 0]), np.array([0, 1, 2, 2]))
    assert base["accuracy"] == 0.5 and base["mcc"] == 0.0
    assert base["macro_f1"] == pytest.approx((2 * 0.5 / 1.5) / 3)  # only class 2 is predicted: P 1/2, R 1
