"""The verdict table: is each variant more accurate, faster and smaller than its ``finetune``, beyond noise?

Reads the runs :func:`axformer.reporting.report.collect` found and their predictions.npz files, and writes

- ``<results>/verdicts.csv`` (tidy, one row per task × model × variant; :data:`COLUMNS`),
- ``<figures>/tables/verdicts.md|.tex`` (its rendering) and
- ``<figures>/verdicts.pdf|png`` (the headline figure: one panel per task, Δmetric with its interval against the
  speedup with its interval, AxFormer variants, peer baselines and plain compression in three colour families).

Intervals come from :mod:`axformer.stats`: the paired bootstrap over dev examples per seed, combined over seeds
by :func:`axformer.stats.combine_seeds` (Welch–Satterthwaite degrees of freedom); the speedup interval of a seed
from its timing passes (:func:`axformer.stats.passes_bootstrap`, the ``passes`` of its latency block) or, for
records without passes, from the per-iteration times of its one interleaved timing job. A run without
predictions.npz (older results) gets an empty interval and the verdict "n/a". Every interval has a p-value
(against Δ = 0, speedup = 1), and the ``*_adjusted`` columns adjust them across the profile's rows (Holm).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from axformer.reporting import tables as R
from axformer import stats as S
from axformer.utils import ConfigError, atomic_write_text

log = logging.getLogger(__name__)

ID = ["task", "model", "variant", "kind", "n_seeds", "metric"]
COLUMNS: tuple[str, ...] = (
    *ID, "base_value", "value", "value_std", "value_low", "value_high", "delta", "ci_low", "ci_high", "ci_method",
    "speedup_b1", "speedup_b1_low", "speedup_b1_high", "speedup_b32", "speedup_b32_low", "speedup_b32_high",
    "speed_batch", "encoder_ratio", "total_ratio", "bytes_ratio", "verdict_accuracy", "verdict_speed", "verdict_size",
    # issue 31: degrees of freedom and p-values of the same intervals, and the multiplicity-adjusted verdicts
    "ci_df", "p_value", "p_adjusted", "verdict_accuracy_adjusted",
    "speed_ci_method", "speed_ci_df", "speed_p_value", "speed_p_adjusted", "verdict_speed_adjusted", "adjustment",
)
# the multiplicity adjustment of the *_adjusted columns (axformer.stats.adjust_pvalues) across a profile's rows;
# the `adjustment` column names it per row. Holm: no directional verdict of the table is false with 95 %
# (any dependence between rows); "bh" would bound the expected share of false verdicts instead (DESIGN §9).
ADJUSTMENT = "holm"
_ADJUSTMENT_NAME = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
KINDS = ("AxFormer", "peer", "compression", "reference")
# the headline figure puts a panel's speedup axis on a log scale where its points span more than this ratio
LOG_SPAN = 8.0
# verdicts.csv's kind -> the figure family (axformer.reporting.figures: one colour family per kind, a marker per variant)
_FAMILY = {"AxFormer": "axformer", "peer": "peer", "compression": "compression", "reference": "reference"}


def kind_of(variant: str, rows: pd.DataFrame) -> str:
    """AxFormer (an AxFormer-like search is in the chain: decisions.json / search record), peer (a baseline
    method), compression (int8 / distillation only) or reference (finetune itself, the constant predictor)."""
    if variant in ("finetune", "majority"):
        return "reference"
    if "family" in rows and rows["family"].notna().any():  # read from the record (axformer.records.record.Run.family)
        return {v: k for k, v in _FAMILY.items()}.get(str(rows["family"].dropna().iloc[0]), "compression")
    if ("has_decisions" in rows and rows["has_decisions"].fillna(False).astype(bool).any()) or \
            ("search_passes" in rows and rows["search_passes"].notna().any()):
        return "AxFormer"
    if "baseline_method" in rows and rows["baseline_method"].notna().any():
        return "peer"
    return "compression"


def _num(row: pd.Series, col: str) -> float:
    try:
        v = float(row.get(col, math.nan))
    except (TypeError, ValueError):
        return math.nan
    return v


def _speedup(row: pd.Series, b: int) -> float:
    sp = _num(row, f"latency_b{b}_speedup")
    if math.isnan(sp):
        base, p50 = _num(row, f"latency_b{b}_baseline_p50_ms"), _num(row, f"latency_b{b}_p50_ms")
        sp = base / p50 if p50 > 0 else math.nan
    return sp


class _Loader:
    """predictions.npz per run folder, read once; a missing / unreadable file is remembered with its reason."""

    def __init__(self, results_dir: Path):
        self.root = results_dir
        self.cache: dict[str, S.Predictions | str] = {}

    def get(self, run_dir: str) -> S.Predictions | str:
        if run_dir not in self.cache:
            path = self.root / run_dir / S.PREDICTIONS_FILE
            if not path.is_file():
                self.cache[run_dir] = f"no {S.PREDICTIONS_FILE} in {run_dir}"
            else:
                try:
                    self.cache[run_dir] = S.read_predictions(path)
                except ConfigError as exc:
                    log.warning("%s", exc)
                    self.cache[run_dir] = str(exc)
        return self.cache[run_dir]


def _aligned(base: S.Predictions, var: S.Predictions) -> tuple[S.Predictions, str | None]:
    """``var`` reordered to ``base``'s dev ids; an error message when they do not cover the same rows."""
    if base.ids.shape == var.ids.shape and np.array_equal(base.ids, var.ids):
        return var, None
    if len(base.ids) != len(var.ids) or set(base.ids.tolist()) != set(var.ids.tolist()):
        return var, f"dev ids of {var.path} differ from finetune's {base.path}"
    pos = {k: i for i, k in enumerate(var.ids.tolist())}
    order = np.array([pos[k] for k in base.ids.tolist()])
    take = lambda a: None if a is None else a[order]  # noqa: E731
    return S.Predictions(var.task, var.metric, base.ids, take(var.preds), take(var.labels),
                         {k: v[order] for k, v in var.scores.items()}, var.iter_ms, var.path), None


def _metric_boot(base: S.Predictions, var: S.Predictions, resamples: int, seed: int,
                 level: float) -> tuple[S.Bootstrap | None, str | None]:
    var, err = _aligned(base, var)
    if err:
        return None, err
    kind, b_vals, labels = base.metric_inputs()
    _, v_vals, v_labels = var.metric_inputs(base.metric)
    if labels is not None and (v_labels is None or not np.array_equal(labels, v_labels)):
        return None, f"dev labels of {var.path} differ from finetune's {base.path}"
    return S.paired_bootstrap(kind, b_vals, v_vals, labels, resamples, seed, level), None


def _passes(row: pd.Series, b: int, where: str) -> list[dict[str, Any]] | None:
    """The timing passes of a run's latency block at batch ``b`` that set its figure (superseded noisy passes
    left out: their repeat stands in for them), or None for a record without passes."""
    passes = R.latency_passes(row, b, where)
    kept = [p for p in passes or [] if p.get("superseded_by") is None]
    return kept or None


def _seed_speed(v_row: pd.Series, b: int, pv: S.Predictions | None, resamples: int, seed: int, level: float,
                where: str) -> tuple[float, np.ndarray | None, float, str, S.Bootstrap | None]:
    """(speedup, bootstrap samples, their degrees of freedom, source, the passes' Bootstrap) of one seed at
    batch ``b``: from the latency block's timing passes where it has them (median over passes,
    :func:`stats.passes_bootstrap`; df = passes − 1, or from the rounds of a single pass), else from the one
    interleaved job's rounds in predictions.npz (df :func:`stats.resample_df` of the rounds); no samples
    without either."""
    passes = _passes(v_row, b, where)
    if passes:
        cis = [p.get("speedup_ci") for p in passes]
        bt = S.passes_bootstrap([float(p["speedup"]) for p in passes], cis, resamples, seed, level)
        rec = _num(v_row, f"latency_b{b}_speedup")
        if not math.isnan(rec) and abs(rec - bt.estimate) > 1e-3 * max(1.0, abs(rec)):
            log.warning("%s: batch %d speedup %.4f in metrics.json but %.4f the median of its passes; using the "
                        "passes", where, b, rec, bt.estimate)
        rounds = int(passes[0].get("n_iters") or 0)  # unknown: df 1, the most cautious
        df = float(len(passes) - 1) if len(passes) > 1 else max(1.0, S.resample_df(rounds, resamples))
        how = f"passes-bootstrap over {len(passes)} passes" if len(passes) > 1 else "within-pass interval of 1 pass"
        return bt.estimate, bt.samples, df, how, bt
    sp = _speedup(v_row, b)
    it = None if pv is None else pv.iter_ms.get(b)
    if it is None or math.isnan(sp):
        return sp, None, math.nan, "", None
    samples = S.speedup_interval(it[0], it[1], resamples, seed, level).samples
    return sp, samples, S.resample_df(len(it[0]), resamples), "rounds bootstrap of one job (no passes)", None


def _ratio(a: pd.Series, b: pd.Series) -> float:
    a, b = pd.to_numeric(a, errors="coerce").mean(), pd.to_numeric(b, errors="coerce").mean()
    return float(a / b) if b and not math.isnan(a) and not math.isnan(b) else math.nan


def verdict_table(df: pd.DataFrame, results_dir: str | os.PathLike, batch_size: int = 32,
                  resamples: int = S.DEFAULT_RESAMPLES, seed: int = S.DEFAULT_SEED, level: float = S.LEVEL,
                  notes: list[str] | None = None) -> pd.DataFrame:
    """One row per (task, model, variant) of ``df`` (:func:`report.collect`) against the same model's
    ``finetune``, paired seed by seed (:data:`COLUMNS`). ``batch_size`` picks the speed verdict's batch
    (falls back to 1); ``notes`` collects why an interval is missing."""
    if resamples < S.MIN_RESAMPLES:
        raise ConfigError(f"bootstrap resamples must be >= {S.MIN_RESAMPLES} (got {resamples}): the 2.5 % tail "
                          "needs at least 25 resamples; set bootstrap_resamples / --resamples higher.")
    notes = notes if notes is not None else []
    if df.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    loader = _Loader(Path(results_dir))
    rows: list[dict[str, Any]] = []
    for task in R.task_order(df["task"].dropna().unique()):
        for model, g in df[df["task"] == task].groupby("model", sort=True):
            ft = g[g["variant"] == "finetune"].drop_duplicates("seed").set_index("seed")
            batches = sorted({1, 32} | set(R.measured_batch_sizes(g)))
            b_speed = batch_size if batch_size in R.measured_batch_sizes(g) else 1
            for variant in sorted(g["variant"].unique(), key=lambda v: R.variant_sort_key(str(v))):
                gv = g[g["variant"] == variant].drop_duplicates("seed").set_index("seed")
                rows.append(_row(task, model, variant, gv, ft, batches, b_speed, loader, resamples, seed, level, notes))
    out = pd.DataFrame(rows)
    _speed_against_noise_floor(out)
    _adjust(out, level)
    return out[list(COLUMNS) + [c for c in out.columns if c not in COLUMNS]]


def _adjust(vt: pd.DataFrame, level: float) -> None:
    """The ``*_adjusted`` columns: p-values adjusted (:data:`ADJUSTMENT`) across the table's rows (one profile;
    accuracy and speed are two families), finetune's own rows left out (Δ = 0 and the A/A band by
    construction: no test), and the verdicts that survive the adjustment (:func:`stats.verdict_adjusted`)."""
    tested = vt["variant"] != "finetune"
    families = (("p_value", "p_adjusted", "verdict_accuracy", "verdict_accuracy_adjusted"),
                ("speed_p_value", "speed_p_adjusted", "verdict_speed", "verdict_speed_adjusted"))
    for p_col, adj_col, verdict, out in families:
        p = pd.to_numeric(vt.get(p_col, pd.Series(math.nan, index=vt.index)), errors="coerce").where(tested)
        vt[adj_col] = S.adjust_pvalues(p.to_numpy(), ADJUSTMENT)
        vt[out] = [v if not t else S.verdict_adjusted(v, a, level)
                   for v, a, t in zip(vt[verdict], vt[adj_col], tested)]
    n_acc = int(vt["p_value"].where(tested).notna().sum())
    n_speed = int(vt["speed_p_value"].where(tested).notna().sum())
    vt["adjustment"] = (f"{_ADJUSTMENT_NAME[ADJUSTMENT]} across {n_acc} accuracy / {n_speed} speed rows"
                        if len(vt) else "")


def _speed_against_noise_floor(vt: pd.DataFrame) -> None:
    """The speed verdict also has to clear the A/A band of the same task and model: finetune timed against a
    copy of itself (its own row), whose verdict is "within noise" by definition."""
    vt["speed_floor_low"], vt["speed_floor_high"] = math.nan, math.nan
    for (task, model), g in vt.groupby(["task", "model"], sort=False):
        ft = g[g["variant"] == "finetune"]
        for i, r in g.iterrows():
            b = int(r["speed_batch"])
            lo = float(ft[f"speedup_b{b}_low"].iloc[0]) if len(ft) else math.nan
            hi = float(ft[f"speedup_b{b}_high"].iloc[0]) if len(ft) else math.nan
            vt.loc[i, ["speed_floor_low", "speed_floor_high"]] = [lo, hi]
            if r["variant"] == "finetune":
                vt.loc[i, "verdict_speed"] = "within noise" if not math.isnan(r[f"speedup_b{b}_low"]) else S.NA
            else:
                vt.loc[i, "verdict_speed"] = S.verdict_speed(r[f"speedup_b{b}_low"], r[f"speedup_b{b}_high"], lo, hi)


def _row(task, model, variant, gv, ft, batches, b_speed, loader, resamples, seed, level, notes) -> dict[str, Any]:
    seeds = sorted(s for s in gv.index if s in ft.index)
    use = gv.loc[seeds] if seeds else gv
    metric = str(use["metric_name"].dropna().iloc[0]) if "metric_name" in use and use["metric_name"].notna().any() else ""
    values = pd.to_numeric(use["metric_dev"], errors="coerce") if "metric_dev" in use else pd.Series(dtype=float)
    row: dict[str, Any] = {"task": task, "model": model, "variant": variant, "kind": kind_of(variant, gv),
                           "n_seeds": len(seeds), "metric": metric, "value": values.mean(),
                           "value_std": values.std(ddof=1) if values.notna().sum() > 1 else math.nan}
    row["value_low"], row["value_high"] = S.t_interval(values.tolist(), level)
    fts = ft.loc[seeds] if seeds else ft.iloc[0:0]
    row["base_value"] = pd.to_numeric(fts.get("metric_dev", pd.Series(dtype=float)), errors="coerce").mean() \
        if seeds else math.nan

    points, boots, reasons = [], [], []
    # per batch: per-seed speedups, their samples, the samples' degrees of freedom, where they came from
    speed: dict[int, tuple[list, list, list, list, list]] = {b: ([], [], [], [], []) for b in batches}
    n_dev: list[int] = []
    for s in seeds:
        v_row, f_row = gv.loc[s], ft.loc[s]
        points.append(_num(v_row, "metric_dev") - _num(f_row, "metric_dev"))
        pv, pf = loader.get(str(v_row["run_dir"])), loader.get(str(f_row["run_dir"]))
        boot = None
        if isinstance(pv, str) or isinstance(pf, str):
            reasons.append(pv if isinstance(pv, str) else pf)
        else:
            boot, err = _metric_boot(pf, pv, resamples, seed, level)
            n_dev.append(len(pf.ids))
            if err:
                reasons.append(err)
                log.warning("verdicts %s/%s/%s seed %s: %s", task, model, variant, s, err)
            elif not abs(boot.estimate - points[-1]) <= 1e-4:  # NaN in metrics.json fails this too
                err = (f"predictions.npz gives Δ {boot.estimate:.4f} but metrics.json {points[-1]:.4f} "
                       f"({v_row['run_dir']}): files of different runs? re-run its measure job")
                log.warning("verdicts %s/%s/%s seed %s: %s", task, model, variant, s, err)
                notes.append(f"verdicts: {task}/{variant} seed {s}: {err}")
                reasons.append(err)
                boot = None
        boots.append(None if boot is None else boot.samples)
        for b in batches:
            got = _seed_speed(v_row, b, None if isinstance(pv, str) else pv, resamples, seed, level,
                              f"{task}/{model}/{variant} seed {s}")
            for col, val in zip(speed[b], got):
                col.append(val)
    dev_df = S.resample_df(min(n_dev), resamples) if n_dev else None
    delta = S.combine_seeds(points, boots, level, dev_df=dev_df, null=0.0)
    row.update(delta=delta.estimate if seeds else math.nan, ci_low=delta.low, ci_high=delta.high)
    row["ci_method"] = delta.method if not math.isnan(delta.low) else (
        f"{S.NA}: {reasons[0]}" if reasons else f"{S.NA}: no finetune run of this seed" if not seeds else delta.method)
    if reasons and not math.isnan(delta.low):
        row["ci_method"] += f" ({len(reasons)} seed(s) without predictions left out)"
    row["ci_df"], row["p_value"] = delta.df, delta.p
    for b in batches:
        known = [k for k in zip(*speed[b]) if not math.isnan(k[0])]
        with_samples = [k for k in known if k[1] is not None]
        dfs = [k[2] for k in with_samples]
        iv = S.combine_seeds([k[0] for k in known], [k[1] for k in known], level,
                             dev_df=min(dfs) if dfs else None, null=1.0, within="timing bootstrap")
        if len(with_samples) == 1 and len(known) == 1 and with_samples[0][4] is not None:
            # one seed timed in passes: its pass interval as it is (the samples reach it up to Monte Carlo only)
            iv.low, iv.high = with_samples[0][4].low, with_samples[0][4].high
        row[f"speedup_b{b}"], row[f"speedup_b{b}_low"], row[f"speedup_b{b}_high"] = iv.estimate, iv.low, iv.high
        if b == b_speed:
            sources = sorted({k[3] for k in with_samples})
            row["speed_ci_method"] = (f"{iv.method}; per seed: {' + '.join(sources)}" if sources and
                                      not math.isnan(iv.low) else iv.method)
            row["speed_ci_df"], row["speed_p_value"] = iv.df, iv.p
    row["speed_batch"] = b_speed
    row["encoder_ratio"] = _ratio(use.get("size_params_encoder", pd.Series(dtype=float)),
                                  fts.get("size_params_encoder", pd.Series(dtype=float)))
    row["total_ratio"] = _ratio(use.get("size_params_total", pd.Series(dtype=float)),
                                fts.get("size_params_total", pd.Series(dtype=float)))
    row["bytes_ratio"] = _ratio(use.get("size_bytes_on_disk", pd.Series(dtype=float)),
                                fts.get("size_bytes_on_disk", pd.Series(dtype=float)))
    row["verdict_accuracy"] = S.verdict_accuracy(row["ci_low"], row["ci_high"])
    row["verdict_speed"] = S.verdict_speed(row[f"speedup_b{b_speed}_low"], row[f"speedup_b{b_speed}_high"])
    row["verdict_size"] = S.verdict_size(row["encoder_ratio"], row["bytes_ratio"])
    return row


# ------------------------------------------------------------------------------------------------ render
def _signed(x: float, digits: int = 3) -> str:
    return R.DASH if S.is_missing(x) else f"{x:+.{digits}f}".replace("-", "−")


def display_table(vt: pd.DataFrame) -> pd.DataFrame:
    """Display strings of :func:`verdict_table` (Markdown / LaTeX)."""
    out = pd.DataFrame(index=vt.index)
    out["Task"] = vt["task"].astype(str)
    if vt["model"].nunique() > 1:
        out["Model"] = vt["model"].astype(str)
    out["Variant"] = vt["variant"].astype(str)
    out["Seeds"] = vt["n_seeds"].astype(int).astype(str)
    out["Metric"] = vt["metric"].astype(str)
    out["Finetune"] = vt["base_value"].map(lambda v: R.format_number(v))
    out["Variant value"] = [R.format_mean_std(m, s) for m, s in zip(vt["value"], vt["value_std"])]
    out["Δ [95% CI]"] = [f"{_signed(d)} [{_signed(lo)}, {_signed(hi)}]" if not S.is_missing(lo) else _signed(d)
                         for d, lo, hi in zip(vt["delta"], vt["ci_low"], vt["ci_high"])]
    # b1 and b32 always; the speed verdict's own batch too where a profile reports another (base: b8)
    extra = sorted({int(b) for b in vt.get("speed_batch", pd.Series(dtype=float)).dropna()} - {1, 32})
    for b in [1, 32] + [b for b in extra if f"speedup_b{b}" in vt.columns]:
        out[f"Speedup b{b} [95%]"] = [
            R.DASH if S.is_missing(v) else (f"{v:.2f}× [{lo:.2f}, {hi:.2f}]" if not S.is_missing(lo) else f"{v:.2f}×")
            for v, lo, hi in zip(vt[f"speedup_b{b}"], vt[f"speedup_b{b}_low"], vt[f"speedup_b{b}_high"])]
    out["Encoder ×FT"] = vt["encoder_ratio"].map(lambda v: R.format_number(v, 2))
    out["Accuracy"] = vt["verdict_accuracy"].astype(str)
    if "verdict_accuracy_adjusted" in vt:
        out[f"Accuracy ({_ADJUSTMENT_NAME[ADJUSTMENT]})"] = vt["verdict_accuracy_adjusted"].astype(str)
    out["Speed"] = vt["verdict_speed"].astype(str)
    if "verdict_speed_adjusted" in vt:
        out[f"Speed ({_ADJUSTMENT_NAME[ADJUSTMENT]})"] = vt["verdict_speed_adjusted"].astype(str)
    out["Size"] = vt["verdict_size"].astype(str)
    return out


def _style(vt: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """variant -> (colour, marker): colour family by kind, a distinct marker and colour per variant."""
    from axformer.reporting import figures as F

    kinds = vt.drop_duplicates("variant").set_index("variant")["kind"]
    st = F.styles({str(v): _FAMILY.get(str(k), "compression") for v, k in kinds.items()})
    return {v: (s.colour, s.marker) for v, s in st.items()}


def plot_verdicts(vt: pd.DataFrame, figures_dir: str | os.PathLike, notes: list[str] | None = None) -> list[Path]:
    """The headline figure ``verdicts.pdf|png``: one panel per task (and model), speedup with its interval on
    x (at each row's ``speed_batch``), Δmetric vs finetune with its interval on y; one shared legend."""
    notes = notes if notes is not None else []
    pts = vt[vt["speedup_b1"].notna() | vt["speedup_b32"].notna()]
    skipped = sorted(set(vt["variant"]) - set(pts["variant"]))
    if skipped:
        notes.append(f"verdicts figure: no speedup for {', '.join(skipped)} (no model timed), left out")
    panels = list(pts.groupby(["task", "model"], sort=False)) if len(pts) else []
    multi_model = vt["model"].nunique() > 1
    styles = _style(pts) if len(pts) else {}
    ncol = min(3, max(1, len(panels)))
    nrow = max(1, math.ceil(len(panels) / ncol))
    from axformer.reporting import figures as F

    width = F.DOUBLE_COLUMN_IN
    with matplotlib.rc_context(F.figure_style()):
        fig = F.new_figure(width, 2.3 * nrow + 0.5 + 0.16 * F.legend_rows(list(styles), width))
        for i, ((task, model), g) in enumerate(panels):
            ax = fig.add_subplot(nrow, ncol, i + 1)
            xs: list[float] = []
            for _, r in g.iterrows():
                b = int(r["speed_batch"])
                x, xl, xh = r[f"speedup_b{b}"], r[f"speedup_b{b}_low"], r[f"speedup_b{b}_high"]
                y, yl, yh = r["delta"], r["ci_low"], r["ci_high"]
                if S.is_missing(x) or S.is_missing(y):
                    continue
                xerr = None if S.is_missing(xl) else [[max(x - xl, 0)], [max(xh - x, 0)]]
                yerr = None if S.is_missing(yl) else [[max(y - yl, 0)], [max(yh - y, 0)]]
                xs.append(float(x))
                colour, marker = styles[r["variant"]]
                ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt=marker, color=colour, ms=6, elinewidth=0.9,
                            mec="white" if marker in ("o", "s", "^", "D", "v", "h", "<", ">", "p", "d") else colour, mew=0.5, zorder=3)
            ax.axhline(0.0, color="0.3", lw=0.8, ls=":", zorder=1)
            ax.axvline(1.0, color="0.3", lw=0.8, ls=":", zorder=1)
            if xs and min(xs) > 0 and max(xs) / min(xs) > LOG_SPAN:
                # distillation / int8 chains (7-25x) beside pruning (~1.05x): on a linear axis the pruned models
                # and their intervals collapse onto x = 1
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            metric = g["metric"].iloc[0]
            ax.set_title(f"{task}" + (f" · {model}" if multi_model else ""))
            ax.set_xlabel(f"speedup (×, batch {int(g['speed_batch'].iloc[0])})")
            ax.set_ylabel(f"Δ dev {metric}")
        if panels:
            fig.suptitle("Δ dev metric (95 % CI) vs speedup (95 % interval), each against finetune")
            handles, labels = [], []
            for kind in KINDS:
                for v, (c, m) in styles.items():
                    if (pts.loc[pts["variant"] == v, "kind"] == kind).any():
                        handles.append(Line2D([], [], color=c, marker=m, ls="", ms=6))
                        labels.append(F.short_label(v) + (f" ({kind})" if kind != "reference" else ""))
            F.legend_below(fig, handles, labels, width)
        return F.save(fig, Path(figures_dir), "verdicts")


def render(df: pd.DataFrame, results_dir: str | os.PathLike, figures_dir: str | os.PathLike,
           csv_path: str | os.PathLike, batch_size: int = 32, resamples: int = S.DEFAULT_RESAMPLES,
           seed: int = S.DEFAULT_SEED, notes: list[str] | None = None) -> list[Path]:
    """Write verdicts.csv, ``tables/verdicts.md|.tex`` and the headline figure; returns the paths (CSV first)."""
    notes = notes if notes is not None else []
    vt = verdict_table(df, results_dir, batch_size, resamples, seed, notes=notes)
    csv_path = Path(csv_path)
    atomic_write_text(csv_path, vt.to_csv(index=False))
    out = [csv_path]
    if vt.empty:
        return out
    tables = Path(figures_dir) / "tables"
    disp = display_table(vt)
    how = (f"Δ = variant − finetune (same task, model and seed) on dev; 95 % interval: paired bootstrap over dev "
           f"examples ({resamples} resamples, seed {seed}) for 1–2 seeds, for ≥ 3 t over seeds plus the dev "
           "bootstrap variance with Welch–Satterthwaite degrees of freedom (axformer.stats.combine_seeds). "
           "Speedup: median over a run's timing passes, interval by bootstrap over the passes, never narrower "
           "than the median pass's own (records without passes: one interleaved job, interval by resampling its "
           "rounds); over seeds as Δ. Verdicts: the interval excludes 0 (accuracy) or 1 and the A/A band (speed) "
           "or not (\"within noise\"); (Holm): the same verdict where its Holm-adjusted p-value across this "
           "table's rows is below 0.05, else \"within noise\"; size: encoder parameters or bytes on disk below "
           "finetune's.")
    md = tables / "verdicts.md"
    atomic_write_text(md, "# Verdicts: each variant against its finetune\n\n" + R.to_markdown(disp) + "\n" + how + "\n")
    tex = tables / "verdicts.tex"
    text = R.to_latex(disp, None, caption="Verdicts against finetune: " + how)
    atomic_write_text(tex, text.replace("Δ", r"$\Delta$").replace("−", "$-$").replace("≥", r"$\geq$")
                      .replace("–", "--"))
    out += [md, tex]
    out += plot_verdicts(vt, figures_dir, notes)
    return out
