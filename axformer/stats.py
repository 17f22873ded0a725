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
  vectorised over resamples (checked against :mod:`axformer.taskdata.metrics`); SQuAD F1 / EM are means of
  per-question scores.
- :func:`speedup_interval`: the speedup is median(baseline ms) / median(variant ms) of one interleaved job;
  iteration i of both models is one A B round, so rounds are resampled as pairs.
- :func:`combine_seeds`: one interval from several fine-tuning seeds (Welch–Satterthwaite degrees of
  freedom for seed spread plus dev-bootstrap variance; documented there), with its p-value.
- :func:`passes_interval`: the speedup of R independent timing passes (median, bootstrap over passes, never
  narrower than the median pass's within-pass interval).
- :func:`adjust_pvalues`: Holm / Benjamini–Hochberg across a profile's rows.
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

from axformer.taskdata import metrics as M
from axformer.utils import ConfigError

__all__ = [
    "DEFAULT_RESAMPLES", "DEFAULT_SEED", "LEVEL", "MIN_RESAMPLES", "PREDICTIONS_FILE",
    "Predictions", "Interval", "write_predictions", "write_dev_predictions", "read_predictions",
    "squad_per_question", "resampled_metric", "bootstrap_indices", "paired_bootstrap", "speedup_interval",
    "t_interval", "welch_satterthwaite", "resample_df", "bootstrap_p", "t_p", "combine_seeds",
    "passes_bootstrap", "passes_interval", "adjust_pvalues", "verdict_accuracy", "verdict_speed", "verdict_size",
    "verdict_adjusted",
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
# bootstrap_p counts resamples beyond the null where at least this many are; below, the count is too coarse
MIN_TAIL = 10


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
        if d.get("pass") is not None:  # timing passes (axformer.measurement.timing): the pass of each round
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

    ``kind``: a :data:`axformer.taskdata.metrics.METRICS` name (``values`` = predictions) or ``"mean"`` (``values`` =
    per-example scores, e.g. SQuAD F1 / EM). Binary F1 / MCC, accuracy, Pearson and Spearman are vectorised;
    anything else (multi-class MCC / F1) calls the :mod:`axformer.taskdata.metrics` function once per resample.
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
    """An aggregate over seeds (or timing passes): estimate, interval (NaN when there is none), how many seeds
    (passes) it rests on and how; ``df`` the t quantile's degrees of freedom (NaN for a bootstrap interval) and
    ``p`` the two-sided p-value against the null the caller named (0 for a Δmetric, 1 for a speedup)."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    df: float = math.nan
    p: float = math.nan


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaN, NaN for fewer than 3 values)."""
    from scipy.stats import t

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) < 3:
        return math.nan, math.nan
    hw = t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - hw), float(x.mean() + hw)


def welch_satterthwaite(components: Sequence[tuple[float, float]]) -> float:
    """Effective degrees of freedom of a sum of independent variance estimates ``[(v_k, df_k), ...]``:
    (Σ v_k)² / Σ (v_k² / df_k). A component with df = inf adds variance but no uncertainty about it; a sum
    of zero variances has df = inf (there is nothing to be unsure about); a df below 1 (unknown) counts as 1,
    the fewest a variance estimate can have."""
    total = sum(v for v, _ in components)
    den = sum(v * v / max(1.0, d) for v, d in components if v > 0 and not math.isinf(d))
    if total <= 0 or den <= 0:
        return math.inf
    return float(total * total / den)


def resample_df(n_units: int, resamples: int) -> float:
    """Degrees of freedom of a bootstrap variance of a statistic over ``n_units`` resampled units (dev rows,
    timing rounds) estimated from ``resamples`` resamples: the variance estimate has the relative variance
    ≈ 2/(n_units − 1) of a sample variance (its sampling error) plus 2/(resamples − 1) (Monte Carlo error),
    so df = 1 / (1/(n_units − 1) + 1/(resamples − 1)); inf where both are infinite."""
    inv = (1.0 / (n_units - 1) if n_units > 1 else math.inf) + (1.0 / (resamples - 1) if resamples > 1 else math.inf)
    return math.inf if inv == 0 else 1.0 / inv


def bootstrap_p(samples: np.ndarray, null: float = 0.0, min_tail: int = MIN_TAIL) -> float:
    """Two-sided percentile-bootstrap p-value of ``null``: 2 · min(P(x ≤ null), P(x ≥ null)), capped at 1.
    It is below 1 − level exactly when ``null`` lies outside the central percentile interval (up to the
    interpolation of the percentiles).

    With fewer than ``min_tail`` resamples beyond ``null`` the count cannot resolve p (2,000 resamples: nothing
    below 0.01; none beyond would read p = 0, which a Holm step of 0.05 / 100 rows would take as proof), so
    there p is the normal approximation of the same samples, 2 · Φ(−|mean − null| / sd); p = 0 only where every
    resample is the same value other than ``null``."""
    x = np.asarray(samples, dtype=np.float64)
    if not len(x):
        return math.nan
    tail = int(min(np.sum(x <= null), np.sum(x >= null)))
    sd = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    if tail >= min_tail or sd == 0.0:
        return float(min(1.0, 2.0 * tail / len(x)))
    from scipy.stats import norm

    return float(min(1.0, 2.0 * norm.sf(abs(float(x.mean()) - null) / sd)))


def t_p(estimate: float, se: float, df: float, null: float = 0.0) -> float:
    """Two-sided p-value of ``null`` for ``estimate`` with standard error ``se`` and ``df`` degrees of freedom."""
    from scipy.stats import t

    if se <= 0 or math.isnan(se):
        return 1.0 if estimate == null else 0.0
    return float(2.0 * t.sf(abs(estimate - null) / se, df))


def combine_seeds(points: Sequence[float], boots: Sequence[np.ndarray | None], level: float = LEVEL,
                  dev_df: float | None = None, null: float = 0.0, within: str = "dev bootstrap") -> Interval:
    """One estimate and interval from per-seed estimates ``points`` and their bootstrap samples ``boots``.

    Seeds without bootstrap samples (older runs) are left out, and with none left there is no interval (the
    estimate is then the plain mean). Over the seeds that have them, the estimate is their mean and:

    - fewer than 3 seeds: the percentile interval of the resample-wise mean of the seeds' bootstrap samples
      (with 1 seed: that seed's paired bootstrap); p = :func:`bootstrap_p` of those means. It covers dev-set
      (measurement) sampling only: 2 seeds cannot estimate the spread between fine-tuning runs.
    - 3 or more: mean ± t(ν) · sqrt(s²/n + v_dev), s² the sample variance of the per-seed estimates (spread
      between fine-tuning runs, n − 1 df), v_dev the variance of that resample-wise mean (dev-set sampling;
      the seeds are resampled with the same seed, so seeds scored on the same dev rows share their resamples
      and their correlation is kept) with ``dev_df`` degrees of freedom (default: resamples − 1; callers pass
      :func:`resample_df` of the dev rows), and ν the Welch–Satterthwaite degrees of freedom of that sum. The
      old t(n − 1) multiplied the well-estimated v_dev by t(2) = 4.30 too; with ν, v_dev counts as the
      well-known variance it is, and ν = n − 1 again where v_dev = 0. p = :func:`t_p` with the same ν.
      ``within`` names the per-seed noise in the method ("dev bootstrap"; speed: "timing bootstrap").
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
        return Interval(estimate, lo, hi, len(have), how, math.nan, bootstrap_p(mean_boot, null))
    from scipy.stats import t

    v_seed = float(pts.var(ddof=1)) / len(pts)
    v_dev = float(mean_boot.var(ddof=1)) if n_r > 1 else 0.0
    nu_dev = float(n_r - 1) if dev_df is None else float(dev_df)
    df = welch_satterthwaite([(v_seed, len(pts) - 1), (v_dev, nu_dev)])
    se = math.sqrt(v_seed + v_dev)
    hw = float(t.ppf(0.5 + level / 2, df) * se) if se > 0 else 0.0
    return Interval(estimate, estimate - hw, estimate + hw, len(have),
                    f"Welch-Satterthwaite t over {len(have)} seeds + {within}", df, t_p(estimate, se, df, null))


# ------------------------------------------------------------------------------------------ timing passes
def _median_pass(speedups: np.ndarray, cis: np.ndarray) -> int:
    """Index of the median pass; with an even count the one of the two middle passes whose within-pass
    interval is wider (the conservative floor)."""
    order = np.argsort(speedups, kind="stable")
    r = len(order)
    if r % 2:
        return int(order[r // 2])
    a, b = int(order[r // 2 - 1]), int(order[r // 2])
    width = lambda i: -1.0 if np.isnan(cis[i]).any() else cis[i, 1] - cis[i, 0]  # noqa: E731
    return a if width(a) >= width(b) else b


def _cover(samples: np.ndarray, estimate: float, low: float, high: float, level: float, seed: int) -> np.ndarray:
    """``samples`` made to reach ``[low, high]`` (the floored interval) at their percentiles, so that their
    variance, which :func:`combine_seeds` uses, is never below the floor's: each side of ``estimate`` is
    stretched linearly (a monotone map keeps the percentiles' order), and where a side has no spread at all
    (one pass, or identical passes) split-normal draws with the floor's half-widths stand in."""
    if math.isnan(low) or math.isnan(high):
        return samples
    q_lo, q_hi = _percentiles(samples, level) if len(samples) else (estimate, estimate)
    if q_lo <= low + 1e-12 and q_hi >= high - 1e-12:
        return samples
    if len(samples) and q_lo < estimate < q_hi:
        below = (estimate - low) / (estimate - q_lo)
        above = (high - estimate) / (q_hi - estimate)
        out = samples.copy()
        out[samples < estimate] = estimate + (samples[samples < estimate] - estimate) * max(1.0, below)
        out[samples > estimate] = estimate + (samples[samples > estimate] - estimate) * max(1.0, above)
        return out
    from scipy.stats import norm

    zq = float(norm.ppf(0.5 + level / 2))
    z = np.random.default_rng(seed).standard_normal(max(len(samples), DEFAULT_RESAMPLES))
    return np.where(z < 0, estimate + z * (estimate - low) / zq, estimate + z * (high - estimate) / zq)


def passes_bootstrap(speedups: Sequence[float], within_cis: Sequence[Sequence[float] | None],
                     resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = LEVEL) -> Bootstrap:
    """Speedup of a run timed in R independent passes: the median of the pass speedups, its interval the
    percentile bootstrap of that median over resampled passes, widened to contain the median pass's own
    within-pass interval (``within_cis[k]``, from its rounds; a pass set that happens to agree closely must
    not claim more precision than one pass has). R = 1: that pass's within-pass interval. The samples (for
    :func:`combine_seeds`) reach the floored interval at their percentiles (:func:`_cover`)."""
    s = np.asarray(speedups, dtype=np.float64)
    if s.ndim != 1 or not len(s) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"need >= 1 finite positive pass speedups (got {list(speedups)})")
    if len(within_cis) != len(s):
        raise ValueError(f"{len(s)} pass speedups but {len(within_cis)} within-pass intervals")
    cis = np.array([(math.nan, math.nan) if c is None else (float(c[0]), float(c[1])) for c in within_cis],
                   dtype=np.float64).reshape(len(s), 2)
    estimate = float(np.median(s))
    wlo, whi = cis[_median_pass(s, cis)]
    if len(s) == 1:
        low, high, samples = float(wlo), float(whi), np.empty(0)
    else:
        samples = np.concatenate([np.median(s[idx], axis=1) for idx in bootstrap_indices(len(s), resamples, seed)])
        low, high = _percentiles(samples, level)
        if not math.isnan(wlo):
            low, high = min(low, float(wlo)), max(high, float(whi))
    return Bootstrap(estimate, low, high, _cover(samples, estimate, low, high, level, seed))


def passes_interval(speedups: Sequence[float], within_cis: Sequence[Sequence[float] | None],
                    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = LEVEL) -> Interval:
    """:func:`passes_bootstrap` as an :class:`Interval` (``n`` = passes; ``p`` = :func:`bootstrap_p` of 1)."""
    b = passes_bootstrap(speedups, within_cis, resamples, seed, level)
    r = len(speedups)
    how = f"passes-bootstrap, {r} passes" if r > 1 else "within-pass, 1 pass"
    return Interval(b.estimate, b.low, b.high, r, how, math.nan, bootstrap_p(b.samples, 1.0))


# ------------------------------------------------------------------------------------------ multiplicity
def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values over one family (NaN entries are not tests: they stay NaN and do not
    count). ``holm``: Holm's step-down (controls the chance of *any* false verdict, for every dependence
    between the tests); ``bh``: Benjamini–Hochberg (controls the expected share of false verdicts, assumes
    positive dependence)."""
    x = np.asarray(p, dtype=np.float64)
    out = np.full(x.shape, math.nan)
    ok = ~np.isnan(x)
    v = x[ok]
    m = len(v)
    if not m:
        return out
    order = np.argsort(v, kind="stable")
    ranked = v[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adj = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    else:
        raise ValueError(f"unknown multiplicity adjustment {method!r}; use 'holm' or 'bh'")
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


# ---------------------------------------------------------------------------------------------- verdicts
def is_missing(x: Any) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def verdict_accuracy(low: float, high: float) -> str:
    """"more accurate" / "less accurate" when the interval of the difference excludes 0, else "within noise"."""
    if is_missing(low) or is_missing(high):
        return NA
    return "more accurate" if low > 0 else "less accurate" if high < 0 else "within noise"


def verdict_speed(low: float, high: float, floor_low: float = 1.0, floor_high: float = 1.0) -> str:
    """"faster" / "slower" when the speedup interval excludes 1.0 *and* the A/A noise band ``[floor_low,
    floor_high]`` (finetune timed against a copy of itself in its own job: the interval from one job's
    iterations misses drift between jobs, so a model can look 2 % "slower" than itself), else "within noise"."""
    if is_missing(low) or is_missing(high):
        return NA
    hi_floor = 1.0 if is_missing(floor_high) else max(1.0, floor_high)
    lo_floor = 1.0 if is_missing(floor_low) else min(1.0, floor_low)
    return "faster" if low > hi_floor else "slower" if high < lo_floor else "within noise"


def verdict_size(*ratios: float, tol: float = SIZE_TOLERANCE) -> str:
    """"smaller" if any size ratio to finetune (encoder parameters, bytes on disk) is below 1 - tol, "larger"
    if one is above 1 + tol and none below, else "same"; "n/a" when no ratio is known (no model)."""
    known = [float(r) for r in ratios if not is_missing(r)]
    if not known:
        return NA
    if min(known) < 1.0 - tol:
        return "smaller"
    return "larger" if max(known) > 1.0 + tol else "same"


def verdict_adjusted(verdict: str, p_adjusted: float, level: float = LEVEL) -> str:
    """The verdict after the multiplicity adjustment: a directional verdict ("more accurate", "faster", ...)
    stands only where its adjusted p-value is below 1 − level, else it becomes "within noise"; an adjustment
    never creates a verdict the unadjusted interval did not give (the speed verdict's A/A band stays)."""
    if verdict in (NA, "within noise", "same", "smaller", "larger"):
        return verdict
    if is_missing(p_adjusted):
        return NA
    alpha = round(1.0 - level, 12)  # 1 - 0.95 is 0.050000000000000044 in floating point
    return verdict if p_adjusted < alpha else "within noise"
