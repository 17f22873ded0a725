"""Error bars: per-example dev predictions, paired bootstrap intervals and intervals over seeds.

One concept: how sure is a difference between a variant and its ``finetune`` (DESIGN §9).

- ``predictions.npz`` (beside metrics.json, written by ``axformer measure`` / ``axformer majority``): the dev
  row ids, the dev labels and the variant's dev predictions (class ids as int8, regression scores as float32;
  SQuAD: the per-question F1 and exact match, since the labels there are answer strings), plus the
  per-iteration times of the interleaved latency jobs (float32 ms, round order). :func:`write_predictions`,
  :func:`read_predictions`.
- :func:`paired_bootstrap`: resample dev examples with replacement, the *same* indices for both models, and
  take the metric difference (variant minus finetune) on every resample; the 95 % interval is the 2.5 / 97.5 %
  percentiles of those differences (percentile bootstrap). Accuracy, F1, MCC, Pearson, Spearman are
  vectorised over resamples (checked against :mod:`axformer.metrics`); SQuAD F1 / EM are means of
  per-question scores.
- :func:`speedup_interval`: the speedup is median(baseline ms) / median(variant ms) of one interleaved job;
  iteration i of both models is one A B round, so rounds are resampled as pairs.
- :func:`combine_seeds`: one interval from several fine-tuning seeds (documented there).
- :func:`verdict_accuracy`, :func:`verdict_speed`, :func:`verdict_size`: the words of the verdict table.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from axformer import metrics as M
from axformer.utils import ConfigError

__all__ = [
    "DEFAULT_RESAMPLES", "DEFAULT_SEED", "LEVEL", "MIN_RESAMPLES", "PREDICTIONS_FILE",
    "Predictions", "Interval", "write_predictions", "write_dev_predictions", "read_predictions",
    "squad_per_question", "resampled_metric", "bootstrap_indices", "paired_bootstrap", "speedup_interval",
    "t_interval", "combine_seeds", "verdict_accuracy", "verdict_speed", "verdict_size",
]

DEFAULT_RESAMPLES = 2000  # bootstrap resamples of the verdict table (the issue asks for >= 1,000)
MIN_RESAMPLES = 1000  # below this the 2.5 % tail rests on fewer than 25 resamples
DEFAULT_SEED = 0
LEVEL = 0.95
PREDICTIONS_FILE = "predictions.npz"
FORMAT_VERSION = 1
NA = "n/a"
# Resamples drawn per block: the (block, n) index matrix of SQuAD dev (10,570 questions) stays ~20 MB.
_BLOCK = 256
# A size ratio within 0.5 % of 1 is "same" (bytes on disk vary by a few header bytes between saves).
SIZE_TOLERANCE = 0.005


# ----------------------------------------------------------------------------------------- predictions file
@dataclass
class Predictions:
    """The content of one predictions.npz."""

    task: str
    metric: str  # the task's headline metric
    ids: np.ndarray  # dev row ids (GLUE: row index in the dev file; SQuAD: question id strings)
    preds: np.ndarray | None = None  # GLUE: class ids or regression scores
    labels: np.ndarray | None = None  # GLUE: dev labels
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # SQuAD: per-question "f1", "exact_match"
    iter_ms: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # batch -> (baseline, variant)
    path: Path | None = None

    def metric_inputs(self, name: str | None = None) -> tuple[str, np.ndarray, np.ndarray | None]:
        """``(kind, values, labels)`` for :func:`resampled_metric`: a GLUE metric name with predictions and
        labels, or ``"mean"`` with SQuAD's per-question scores of metric ``name`` (default: headline)."""
        name = name or self.metric
        if self.scores:
            if name not in self.scores:
                raise ConfigError(f"{self.path}: no per-question '{name}' scores (has {sorted(self.scores)}).")
            return "mean", self.scores[name], None
        if self.preds is None or self.labels is None:
            raise ConfigError(f"{self.path}: neither predictions + labels nor per-question scores; re-run measure.")
        return name, self.preds, self.labels


def _compact_labels(values: np.ndarray, regression: bool) -> np.ndarray:
    """Class ids as int8 (lossless: GLUE has <= 3 classes), scores as float32 (the logits' own dtype)."""
    v = np.asarray(values)
    if regression:
        return v.astype(np.float32)
    if v.size and (v.min() < -128 or v.max() > 127 or not np.all(v == np.round(v))):
        raise ValueError("class ids must be integers in [-128, 127] to be stored as int8")
    return v.astype(np.int8)


def write_predictions(path: str | os.PathLike, task, ids: Sequence[Any], *, preds: Any = None, labels: Any = None,
                      scores: Mapping[str, Any] | None = None,
                      iter_ms: Mapping[int, Mapping[str, Sequence[float]]] | None = None) -> Path:
    """Write predictions.npz atomically (compressed; tens of KB for a GLUE dev set).

    GLUE: ``preds`` and ``labels`` (one per id). QA: ``scores`` = {"f1": [...], "exact_match": [...]} per
    question. ``iter_ms``: {batch size: {"baseline": [ms...], "variant": [ms...]}} from ``measure_pair``.
    """
    ids = np.asarray(list(ids))
    arrays: dict[str, np.ndarray] = {
        "format": np.asarray(FORMAT_VERSION), "task": np.asarray(task.name), "metric": np.asarray(task.metric),
        "ids": ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str),
    }
    n = len(ids)
    if task.is_qa:
        if not scores:
            raise ValueError("a QA task needs per-question scores")
        for name, val in scores.items():
            val = np.asarray(val, dtype=np.float32)
            if len(val) != n:
                raise ValueError(f"{len(val)} '{name}' scores for {n} questions")
            # exact match is 0/1: uint8 is lossless; F1 keeps float32
            arrays[f"score_{name}"] = val.astype(np.uint8) if name == "exact_match" else val
    else:
        if preds is None or labels is None or len(preds) != n or len(labels) != n:
            raise ValueError(f"GLUE predictions need preds and labels, one per id ({n} ids)")
        arrays["preds"] = _compact_labels(preds, task.is_regression)
        arrays["labels"] = _compact_labels(labels, task.is_regression)
    for bs, d in (iter_ms or {}).items():
        base, var = np.asarray(d["baseline"], dtype=np.float32), np.asarray(d["variant"], dtype=np.float32)
        if len(base) != len(var):
            raise ValueError(f"batch {bs}: {len(base)} baseline but {len(var)} variant iterations (must be rounds)")
        arrays[f"iter_ms_b{int(bs)}_baseline"] = base
        arrays[f"iter_ms_b{int(bs)}_variant"] = var
        if d.get("pass") is not None:  # timing passes (axformer.timing): the pass of each round
            arrays[f"iter_pass_b{int(bs)}"] = np.asarray(d["pass"], dtype=np.int16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def squad_per_question(answers: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Per-question best F1 / exact match against any gold answer (their means are ``metrics.squad_scores``)."""
    if len(answers) != len(golds):
        raise ValueError(f"{len(answers)} answers but {len(golds)} questions")
    f1 = np.array([max(M.squad_f1(a, g) for g in refs) for a, refs in zip(answers, golds)], dtype=np.float64)
    em = np.array([max(M.squad_exact(a, g) for g in refs) for a, refs in zip(answers, golds)], dtype=np.float64)
    return {"f1": f1, "exact_match": em}


def write_dev_predictions(path: str | os.PathLike, task, dev_ds, result,
                          iter_ms: Mapping[int, Mapping[str, Sequence[float]]] | None = None) -> Path:
    """predictions.npz of a dev split (``datasets.Dataset``) and its ``train.EvalResult``."""
    if task.is_qa:
        rows = np.asarray(result.question_ids, dtype=np.int64)
        ids, answers = np.asarray(dev_ds["id"]), dev_ds["answers"]
        golds = [list(answers[int(i)]) for i in rows]
        return write_predictions(path, task, ids[rows], scores=squad_per_question(result.answers, golds),
                                 iter_ms=iter_ms)
    return write_predictions(path, task, dev_ds["idx"], preds=result.predictions, labels=result.labels,
                             iter_ms=iter_ms)


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read predictions.npz; a missing or malformed file is a ConfigError naming it."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist: re-run `axformer measure` for this run (older runs have none).") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: not a readable predictions.npz ({exc}); delete it and re-run the measure job.") from exc
    missing = [k for k in ("task", "metric", "ids") if k not in data]
    if missing:
        raise ConfigError(f"{p}: lacks {missing}; delete it and re-run the measure job.")
    scores = {k.removeprefix("score_"): v.astype(np.float64) for k, v in data.items() if k.startswith("score_")}
    iter_ms: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k in data:
        if k.startswith("iter_ms_b") and k.endswith("_baseline"):
            b = int(k[len("iter_ms_b"):-len("_baseline")])
            iter_ms[b] = (data[k].astype(np.float64), data[f"iter_ms_b{b}_variant"].astype(np.float64))
    return Predictions(task=str(data["task"]), metric=str(data["metric"]), ids=data["ids"],
                       preds=data.get("preds"), labels=data.get("labels"), scores=scores,
                       iter_ms=dict(sorted(iter_ms.items())), path=p)


# ------------------------------------------------------------------------------------ metrics on resamples
def _binary(*arrays: np.ndarray) -> bool:
    return all(np.isin(np.unique(a), (0, 1)).all() for a in arrays)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of (R, n) arrays; 0 where a row is constant (as metrics.pearson)."""
    xm = x - x.mean(axis=1, keepdims=True)
    ym = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xm * xm).sum(1) * (ym * ym).sum(1))
    # constancy tested exactly (min == max), not through a rounding-prone variance
    const = (x.min(1) == x.max(1)) | (y.min(1) == y.max(1)) | (den == 0)
    return np.where(const, 0.0, (xm * ym).sum(1) / np.where(const, 1.0, den))


def resampled_metric(kind: str, values: np.ndarray, labels: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    """``f(idx)`` -> the metric of every resample; ``idx`` is an (R, n) array of example indices.

    ``kind``: a :data:`axformer.metrics.METRICS` name (``values`` = predictions) or ``"mean"`` (``values`` =
    per-example scores, e.g. SQuAD F1 / EM). Binary F1 / MCC, accuracy, Pearson and Spearman are vectorised;
    anything else (multi-class MCC / F1) calls the :mod:`axformer.metrics` function once per resample.
    """
    v = np.asarray(values, dtype=np.float64)
    if kind == "mean":
        return lambda idx: v[idx].mean(axis=1)
    if kind not in M.METRICS:
        raise ConfigError(f"no bootstrap for metric {kind!r}; known: {sorted(M.METRICS)} and 'mean'.")
    y = np.asarray(labels, dtype=np.float64)
    if len(y) != len(v):
        raise ValueError(f"{len(v)} predictions but {len(y)} labels")
    if kind == "accuracy":
        correct = (v == y).astype(np.float64)
        return lambda idx: correct[idx].mean(axis=1)
    if kind in ("f1", "mcc") and _binary(v, y):
        tp_, fp_ = ((v == 1) & (y == 1)).astype(np.int64), ((v == 1) & (y == 0)).astype(np.int64)
        fn_, tn_ = ((v == 0) & (y == 1)).astype(np.int64), ((v == 0) & (y == 0)).astype(np.int64)

        def counts(idx):
            return tuple(a[idx].sum(axis=1).astype(np.float64) for a in (tp_, fp_, fn_, tn_))

        if kind == "f1":  # sklearn f1_score(pos_label=1, zero_division=0)
            def f1(idx):
                tp, fp, fn, _ = counts(idx)
                den = 2 * tp + fp + fn
                return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
            return f1

        def mcc(idx):  # sklearn matthews_corrcoef: 0 where the denominator is 0
            tp, fp, fn, tn = counts(idx)
            den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            return np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1), 0.0)
        return mcc
    if kind == "pearson":
        return lambda idx: _pearson_rows(v[idx], y[idx])
    if kind == "spearman":
        from scipy.stats import rankdata

        def spearman(idx):
            xs, ys = v[idx], y[idx]
            r = _pearson_rows(rankdata(xs, axis=1), rankdata(ys, axis=1))
            const = (xs.min(1) == xs.max(1)) | (ys.min(1) == ys.max(1))
            return np.where(const, 0.0, r)
        return spearman
    fn = M.METRICS[kind]
    return lambda idx: np.array([fn(v[row], y[row]) for row in idx])


def bootstrap_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of (<= 256, n) resampled example indices from ``np.random.default_rng(seed)``: the same
    sequence for the same (n, resamples, seed), so both models of a pair see the same resamples."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need n >= 1 and resamples >= 1 (got n={n}, resamples={resamples})")
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _BLOCK):
        yield rng.integers(0, n, size=(min(_BLOCK, resamples - start), n))


@dataclass
class Bootstrap:
    """A point estimate, its percentile interval and the resampled values behind it."""

    estimate: float
    low: float
    high: float
    samples: np.ndarray


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def paired_bootstrap(kind: str, base: np.ndarray, variant: np.ndarray, labels: np.ndarray | None = None,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = LEVEL) -> Bootstrap:
    """Metric difference (variant minus base) on the dev set with a paired percentile bootstrap interval.

    ``base`` / ``variant``: predictions (or per-example scores for ``kind="mean"``) on the same examples, in
    the same order; every resample draws n example indices with replacement and scores both models on them.
    """
    base, variant = np.asarray(base), np.asarray(variant)
    if base.shape != variant.shape:
        raise ValueError(f"base has {base.shape} predictions, variant {variant.shape}; they must cover the same rows")
    fb, fv = resampled_metric(kind, base, labels), resampled_metric(kind, variant, labels)
    full = np.arange(len(base))[None, :]
    estimate = float(fv(full)[0] - fb(full)[0])
    deltas = np.concatenate([fv(idx) - fb(idx) for idx in bootstrap_indices(len(base), resamples, seed)])
    return Bootstrap(estimate, *_percentiles(deltas, level), deltas)


def speedup_interval(base_ms: Sequence[float], variant_ms: Sequence[float], resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED, level: float = LEVEL) -> Bootstrap:
    """Speedup median(base) / median(variant) of one interleaved timing job, with a percentile interval from
    resampling its rounds (iteration i of both models together, so slow phases of the host hit both)."""
    b, v = np.asarray(base_ms, dtype=np.float64), np.asarray(variant_ms, dtype=np.float64)
    if b.shape != v.shape or b.ndim != 1 or not len(b):
        raise ValueError(f"need as many baseline as variant iterations, >= 1 (got {b.shape} and {v.shape})")
    estimate = float(np.median(b) / np.median(v))
    ratios = np.concatenate([np.median(b[idx], axis=1) / np.median(v[idx], axis=1)
                             for idx in bootstrap_indices(len(b), resamples, seed)])
    return Bootstrap(estimate, *_percentiles(ratios, level), ratios)


# ------------------------------------------------------------------------------------------------- seeds
@dataclass
class Interval:
    """An aggregate over seeds: estimate, interval (NaN when there is none), seeds used and how."""

    estimate: float
    low: float
    high: float
    n: int
    method: str


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaN, NaN for fewer than 3 values)."""
    from scipy.stats import t

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) < 3:
        return math.nan, math.nan
    hw = t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - hw), float(x.mean() + hw)


def combine_seeds(points: Sequence[float], boots: Sequence[np.ndarray | None], level: float = LEVEL) -> Interval:
    """One estimate and interval from per-seed estimates ``points`` and their bootstrap samples ``boots``.

    Seeds without bootstrap samples (older runs) are left out, and with none left there is no interval (the
    estimate is then the plain mean). Over the seeds that have them, the estimate is their mean and:

    - fewer than 3 seeds: the percentile interval of the resample-wise mean of the seeds' bootstrap samples
      (with 1 seed: that seed's paired bootstrap). It covers dev-set sampling only: 2 seeds cannot estimate
      the spread between fine-tuning runs.
    - 3 or more: mean ± t(n-1) · sqrt(s²/n + v_dev), s² the sample variance of the per-seed estimates (spread
      between fine-tuning runs), v_dev the variance of that resample-wise mean (dev-set sampling; the seeds
      are resampled with the same seed, so seeds scored on the same dev rows share their resamples and their
      correlation is kept). Both sources of noise, and t(n-1) keeps it conservative for 3 seeds.
    """
    points = [float(p) for p in points]
    if not points:
        return Interval(math.nan, math.nan, math.nan, 0, NA)
    have = [(p, b) for p, b in zip(points, boots) if b is not None and len(b)]
    if not have:
        return Interval(float(np.mean(points)), math.nan, math.nan, len(points), f"{NA}: no per-example data")
    pts = np.array([p for p, _ in have])
    n_r = min(len(b) for _, b in have)
    mean_boot = np.mean([b[:n_r] for _, b in have], axis=0)
    estimate = float(pts.mean())
    if len(have) < 3:
        lo, hi = _percentiles(mean_boot, level)
        how = "bootstrap, 1 seed" if len(have) == 1 else f"bootstrap, mean of {len(have)} seeds"
        return Interval(estimate, lo, hi, len(have), how)
    from scipy.stats import t

    se = math.sqrt(pts.var(ddof=1) / len(pts) + mean_boot.var(ddof=1))
    hw = float(t.ppf(0.5 + level / 2, len(pts) - 1) * se)
    return Interval(estimate, estimate - hw, estimate + hw, len(have), f"t over {len(have)} seeds + dev bootstrap")


# ---------------------------------------------------------------------------------------------- verdicts
def _nan(x: Any) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def verdict_accuracy(low: float, high: float) -> str:
    """"more accurate" / "less accurate" when the interval of the difference excludes 0, else "within noise"."""
    if _nan(low) or _nan(high):
        return NA
    return "more accurate" if low > 0 else "less accurate" if high < 0 else "within noise"


def verdict_speed(low: float, high: float, floor_low: float = 1.0, floor_high: float = 1.0) -> str:
    """"faster" / "slower" when the speedup interval excludes 1.0 *and* the A/A noise band ``[floor_low,
    floor_high]`` (finetune timed against a copy of itself in its own job: the interval from one job's
    iterations misses drift between jobs, so a model can look 2 % "slower" than itself), else "within noise"."""
    if _nan(low) or _nan(high):
        return NA
    hi_floor = 1.0 if _nan(floor_high) else max(1.0, floor_high)
    lo_floor = 1.0 if _nan(floor_low) else min(1.0, floor_low)
    return "faster" if low > hi_floor else "slower" if high < lo_floor else "within noise"


def verdict_size(*ratios: float, tol: float = SIZE_TOLERANCE) -> str:
    """"smaller" if any size ratio to finetune (encoder parameters, bytes on disk) is below 1 - tol, "larger"
    if one is above 1 + tol and none below, else "same"; "n/a" when no ratio is known (no model)."""
    known = [float(r) for r in ratios if not _nan(r)]
    if not known:
        return NA
    if min(known) < 1.0 - tol:
        return "smaller"
    return "larger" if max(known) > 1.0 + tol else "same"
