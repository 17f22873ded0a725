"""Official GLUE metrics, computed with scikit-learn / scipy (the `evaluate` hub metrics are offline-unsafe)."""

from __future__ import annotations

import numpy as np

from axformer.tasks import Task


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of exact matches."""
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports for MRPC."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, pos_label=1, zero_division=0.0))


def mcc(preds: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (CoLA)."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson r (STS-B); 0 for a constant prediction, where r is undefined."""
    from scipy.stats import pearsonr

    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(pearsonr(preds, labels)[0])


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rho (STS-B); 0 for a constant prediction."""
    from scipy.stats import spearmanr

    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(spearmanr(preds, labels)[0])


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute(task: Task, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's headline metric and its secondary ones, keyed by name."""
    names = (task.metric, *task.secondary)
    return {n: METRICS[n](np.asarray(preds), np.asarray(labels)) for n in names}


def constant_baseline(task: Task, train_labels: np.ndarray, dev_labels: np.ndarray) -> dict[str, float]:
    """Metric of the majority class (classification) or the train mean (regression) on dev."""
    train_labels = np.asarray(train_labels)
    if task.is_regression:
        preds = np.full(len(dev_labels), float(np.mean(train_labels)))
    else:
        values, counts = np.unique(train_labels, return_counts=True)
        preds = np.full(len(dev_labels), values[np.argmax(counts)])
    return compute(task, preds, dev_labels)
