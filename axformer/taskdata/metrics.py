"""Official GLUE metrics, computed with scikit-learn / scipy (the `evaluate` hub metrics are offline-unsafe),
and the SQuAD v1.1 exact match / F1 with the official answer normalisation (our own implementation of the
rules the official v1.1 evaluation script applies; fractions in [0, 1] like every other metric here, where the
SQuAD leaderboard prints percentages).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from axformer.taskdata.tasks import Task
from axformer.utils import ConfigError


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of exact matches."""
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports for MRPC."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, pos_label=1, zero_division=0.0))


def macro_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean over classes of each class's F1 (one-vs-rest), for more than two classes. The classes are
    those present in the labels or the predictions; a class never predicted scores 0 (not skipped)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, average="macro", zero_division=0.0))


def mcc(preds: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (CoLA); the multi-class generalisation (Gorodkin's R_K) for > 2 classes."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def _constant(x: np.ndarray) -> bool:
    """All values equal, tested exactly: np.std of n copies of 2.7 is 9e-16, not 0, and would let a constant
    prediction through to scipy, which returns NaN for it."""
    x = np.asarray(x)
    return x.size == 0 or bool(x.min() == x.max())


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson r (STS-B); 0 for a constant prediction, where r is undefined."""
    from scipy.stats import pearsonr

    if _constant(preds) or _constant(labels):
        return 0.0
    return float(pearsonr(preds, labels)[0])


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rho (STS-B); 0 for a constant prediction."""
    from scipy.stats import spearmanr

    if _constant(preds) or _constant(labels):
        return 0.0
    return float(spearmanr(preds, labels)[0])


METRICS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "mcc": mcc, "pearson": pearson,
           "spearman": spearman}

# ----------------------------------------------------------------------------------------------- SQuAD v1.1
_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalisation: lower case, drop ASCII punctuation, drop the articles a/an/the, collapse
    whitespace — in that order (punctuation goes first, so "the-end" loses its hyphen and then its article)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact(prediction: str, gold: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token-level F1 between the normalised answers (bag of whitespace tokens, multiplicity counted)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean over questions of the best exact match / F1 against any of its gold answers."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} questions")
    if not len(golds):
        raise ValueError("no questions to score")
    em = f1_ = 0.0
    for pred, refs in zip(predictions, golds):
        if not len(refs):
            raise ValueError("a SQuAD v1.1 question without gold answers")
        em += max(squad_exact(pred, g) for g in refs)
        f1_ += max(squad_f1(pred, g) for g in refs)
    return {"f1": f1_ / len(golds), "exact_match": em / len(golds)}


def compute(task: Task, preds, labels) -> dict[str, float]:
    """The task's headline metric and its secondary ones, keyed by name.

    QA: ``preds`` are answer strings, ``labels`` the list of gold answers of each question.
    """
    if task.is_qa:
        scores = squad_scores(list(preds), list(labels))
        return {n: scores[n] for n in (task.metric, *task.secondary)}
    names = (task.metric, *task.secondary)
    return {n: METRICS[n](np.asarray(preds), np.asarray(labels)) for n in names}


def constant_baseline(task: Task, train_labels: np.ndarray, dev_labels: np.ndarray) -> dict[str, float]:
    """Metric of the majority class (classification) or the train mean (regression) on dev."""
    if task.is_qa:
        raise ConfigError(f"{task.name}: there is no constant predictor for span question answering; leave the "
                          "majority row out for QA tasks.")
    train_labels = np.asarray(train_labels)
    if task.is_regression:
        preds = np.full(len(dev_labels), float(np.mean(train_labels)))
    else:
        values, counts = np.unique(train_labels, return_counts=True)
        preds = np.full(len(dev_labels), values[np.argmax(counts)])
    return compute(task, preds, dev_labels)
