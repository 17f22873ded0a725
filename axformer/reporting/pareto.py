"""The peers' frontier: is AxFormer above what a peer method buys at any budget? (issue 36; DESIGN §13)

Each peer method (baselines/: fisher, kprune, headprune, layerdrop, ...) run straight on the fine-tuned model at
several budgets traces a line of (speedup, Δ dev metric) and (encoder size, Δ dev metric) points. This module
reads the run frame (:func:`axformer.reporting.report.collect`) and the verdict table (:mod:`axformer.reporting.verdicts`: Δ and its
95 % interval, speedup and encoder ratio per variant, seeds combined there) and writes

- ``<results>/pareto.csv`` (:data:`COLUMNS`): one row per task × model × variant of the peers (single-step
  ``finetune+<peer step>`` chains) and of AxFormer (single-step ``finetune+<approximate step>`` chains), with the
  method, its budget, encoder and FLOPs ratios, speedup and Δ with intervals; AxFormer rows also carry the
  frontier verdicts at their speed and at their size;
- ``<figures>/pareto_<task>.pdf|png``: Δ against speedup and against encoder size, a line per peer method
  through its budgets, AxFormer's variants as points (:mod:`axformer.reporting.figures` conventions);
- ``<figures>/tables/pareto.md``: the verdicts.

The frontier at a point ``x0`` of an axis (speedup, or encoder size with smaller counted as better) is the best
Δ any peer reaches *at ``x0`` or better on that axis*: for each method the piecewise-linear curve through its
budgets (sorted on the axis) is evaluated at ``x0`` where its range covers ``x0`` and at each of its budgets
that is better than ``x0``; the largest Δ estimate wins, and its interval is the one interpolated at the same
place (the two neighbouring budgets' interval ends, linearly). The verdict compares intervals: *above* when the
variant's Δ interval lies entirely above the frontier's, *below* when entirely below, *on* when they overlap.
Where every peer budget is worse on the axis than the variant (no frontier at its speed / size), the variant is
*above* if its interval lies above the interval of every peer point, else *outside* (no peer reaches there).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from axformer.reporting import figures as F
from axformer.reporting import tables as R
from axformer.utils import atomic_write_text, slug

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "task", "model", "kind", "method", "variant", "budget", "seeds", "n_seeds", "metric", "encoder_ratio",
    "flops_ratio", "speed_batch", "speedup", "speedup_low", "speedup_high", "delta", "ci_low", "ci_high",
    "verdict_speed", "frontier_speed_method", "frontier_speed_delta", "frontier_speed_low", "frontier_speed_high",
    "verdict_size", "frontier_size_method", "frontier_size_delta", "frontier_size_low", "frontier_size_high",
)
VERDICTS = ("above", "on", "below", "outside", "n/a")
AXES = {"speed": ("speedup", True), "size": ("encoder_ratio", False)}  # column, higher is better


# ------------------------------------------------------------------------------------------------ the points
def budget_label(row: pd.Series) -> str:
    """The budget a peer run was given, from its recorded step arguments (``baseline.cfg``)."""
    def get(key: str) -> Any:
        v = row.get(f"baseline_cfg_{key}")
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    for key, name in (("flops_frac", "FLOPs"), ("params_frac", "params")):
        if get(key) is not None:
            return f"{name} {float(get(key)):g}"
    if get("k") is not None:
        return f"-{int(get('k'))} layers"
    if get("n_heads") is not None:
        return f"-{int(get('n_heads'))} heads"
    if get("target_params") is not None:
        return f"params {int(get('target_params'))}"
    if get("match") is not None or get("match_params") is not None:
        return f"AxFormer's {get('match_by') or 'size'}"
    return "?"


def _single_step(df: pd.DataFrame, command: str) -> pd.Series:
    return df["commands"].astype(str) == f"finetune>{command}" if "commands" in df else pd.Series(False, df.index)


def _flops(cell: Any, batch: int) -> float:
    """forward_flops at ``batch`` from a run frame's ``flops`` cell (the metrics.json list, JSON text)."""
    try:
        entries = json.loads(cell) if isinstance(cell, str) else cell
        return float(next(e["forward_flops"] for e in entries if int(e["batch_size"]) == batch))
    except (TypeError, ValueError, StopIteration, KeyError):
        return math.nan


def points(df: pd.DataFrame, vt: pd.DataFrame) -> pd.DataFrame:
    """The pareto.csv rows without verdicts: peers and AxFormer variants that are one step after finetune.

    ``df``: the run frame; ``vt``: the verdict table (one row per task × model × variant, seeds combined)."""
    if df.empty or vt.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    peer = _single_step(df, "baseline")
    ax = _single_step(df, "approximate")
    rows = []
    for (task, model, variant), g in df[peer | ax].groupby(["task", "model", "variant"], sort=False):
        v = vt[(vt["task"] == task) & (vt["model"] == model) & (vt["variant"] == variant)]
        if v.empty:
            continue
        v = v.iloc[0]
        is_peer = bool(peer.loc[g.index].all())
        b = int(v["speed_batch"]) if not pd.isna(v["speed_batch"]) else 32
        ft = df[(df["task"] == task) & (df["model"] == model) & (df["variant"] == "finetune")]
        ft = ft[ft["seed"].isin(g["seed"])]
        fl_v = np.nanmean([_flops(c, b) for c in g.get("flops", [])]) if "flops" in g and len(g) else math.nan
        fl_f = np.nanmean([_flops(c, b) for c in ft.get("flops", [])]) if "flops" in ft and len(ft) else math.nan
        rows.append({
            "task": task, "model": model, "kind": "peer" if is_peer else "AxFormer",
            "method": str(g["baseline_method"].dropna().iloc[0]) if is_peer and "baseline_method" in g else "axformer",
            "variant": variant, "budget": budget_label(g.iloc[0]) if is_peer else "search",
            "seeds": ";".join(str(int(s)) for s in sorted(g["seed"].unique())), "n_seeds": int(v["n_seeds"]),
            "metric": v["metric"], "encoder_ratio": v["encoder_ratio"],
            "flops_ratio": fl_v / fl_f if fl_f and not math.isnan(fl_f) else math.nan, "speed_batch": b,
            "speedup": v[f"speedup_b{b}"], "speedup_low": v[f"speedup_b{b}_low"],
            "speedup_high": v[f"speedup_b{b}_high"], "delta": v["delta"], "ci_low": v["ci_low"],
            "ci_high": v["ci_high"],
        })
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    return out.sort_values(["task", "model", "kind", "method", "encoder_ratio"], ascending=[True, True, True, True,
                                                                                            False], kind="stable")


# ------------------------------------------------------------------------------------------------ the frontier
def _curve(pts: pd.DataFrame, x: str, sign: float) -> pd.DataFrame:
    """One method's points on an axis oriented so that larger is better (``sign`` -1 flips encoder size);
    points at the same place are averaged, NaN coordinates dropped."""
    c = pd.DataFrame({"x": sign * pd.to_numeric(pts[x], errors="coerce"), "d": pd.to_numeric(pts["delta"], errors="coerce"),
                      "lo": pd.to_numeric(pts["ci_low"], errors="coerce"), "hi": pd.to_numeric(pts["ci_high"], errors="coerce")})
    c = c.dropna(subset=["x", "d"])
    return c.groupby("x", as_index=False).mean().sort_values("x")


def frontier_at(peers: pd.DataFrame, axis: str, x0: float) -> dict[str, Any] | None:
    """The best peer at ``x0`` or better on ``axis`` ("speed" | "size"): ``{"method", "x", "delta", "low",
    "high"}`` (x in the axis' own units), or None where every peer point is worse on the axis than ``x0``."""
    col, higher = AXES[axis]
    sign = 1.0 if higher else -1.0
    x0s = sign * x0
    best: dict[str, Any] | None = None
    for method, pts in peers.groupby("method", sort=True):
        c = _curve(pts, col, sign)
        if c.empty:
            continue
        cands = [float(x) for x in c["x"] if x >= x0s]
        if c["x"].iloc[0] <= x0s <= c["x"].iloc[-1]:
            cands.append(x0s)
        for xs in cands:
            d = float(np.interp(xs, c["x"], c["d"]))
            if best is None or d > best["delta"]:
                best = {"method": str(method), "x": sign * xs, "delta": d,
                        "low": float(np.interp(xs, c["x"], c["lo"])), "high": float(np.interp(xs, c["x"], c["hi"]))}
    return best


def verdict(low: float, high: float, fr: dict[str, Any] | None, peers: pd.DataFrame) -> str:
    """above / on / below the frontier ``fr`` by the intervals; without a frontier point at or better than the
    variant: above if its interval lies above every peer point's, else outside; n/a without intervals."""
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "n/a"
    if fr is None:
        his = pd.to_numeric(peers["ci_high"], errors="coerce")
        if his.empty or his.isna().any():
            return "n/a" if not his.empty else "outside"
        return "above" if low > float(his.max()) else "outside"
    if math.isnan(fr["low"]) or math.isnan(fr["high"]):
        return "n/a"
    if low > fr["high"]:
        return "above"
    if high < fr["low"]:
        return "below"
    return "on"


def with_verdicts(pts: pd.DataFrame) -> pd.DataFrame:
    """Fill the frontier columns of every AxFormer row from the same task and model's peer rows."""
    out = pts.copy()
    for axis in AXES:
        for col in (f"verdict_{axis}", f"frontier_{axis}_method"):
            out[col] = out[col].astype(object)
        for col in (f"frontier_{axis}_delta", f"frontier_{axis}_low", f"frontier_{axis}_high"):
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    for (task, model), g in pts.groupby(["task", "model"], sort=False):
        peers = g[g["kind"] == "peer"]
        for i, r in g[g["kind"] == "AxFormer"].iterrows():
            for axis, (col, _higher) in AXES.items():
                x0 = float(r[col]) if not pd.isna(r[col]) else math.nan
                fr = None if math.isnan(x0) or peers.empty else frontier_at(peers, axis, x0)
                v = "n/a" if math.isnan(x0) or peers.empty else verdict(float(r["ci_low"]), float(r["ci_high"]), fr, peers)
                out.loc[i, f"verdict_{axis}"] = v
                if fr is not None:
                    out.loc[i, [f"frontier_{axis}_method", f"frontier_{axis}_delta", f"frontier_{axis}_low",
                                f"frontier_{axis}_high"]] = [fr["method"], fr["delta"], fr["low"], fr["high"]]
    return out


# ------------------------------------------------------------------------------------------------ the figure
def plot_task(pts: pd.DataFrame, task: str, figures_dir: str | os.PathLike,
              ax_style: dict[str, F.Style] | None = None) -> list[Path]:
    """Double column, two panels: Δ vs speedup and Δ vs encoder size; a line per peer method through its
    budgets (peer family colours), AxFormer's variants as points (their figure style), 95 % intervals."""
    sub = pts[pts["task"] == task]
    multi_model = sub["model"].nunique() > 1
    methods = sorted(sub.loc[sub["kind"] == "peer", "method"].unique())
    m_style = F.styles({m: "peer" for m in methods})
    ax_vars = [v for v in sub.loc[sub["kind"] == "AxFormer", "variant"].unique()]
    v_style = {v: (ax_style or {}).get(v) or F.styles({x: "axformer" for x in ax_vars})[v] for v in ax_vars}
    labels = [f"{m} (budgets)" for m in methods] + [F.short_label(v) for v in ax_vars]
    width = F.DOUBLE_COLUMN_IN
    metric = str(sub["metric"].dropna().iloc[0]) if sub["metric"].notna().any() else "metric"
    with matplotlib.rc_context(F.figure_style()):
        fig = F.new_figure(width, 2.6 + 0.16 * F.legend_rows(labels, width))
        panels = fig.subplots(1, 2, sharey=True)
        for axp, (col, lo, hi, xlabel) in zip(panels, (
                ("speedup", "speedup_low", "speedup_high", f"speedup (×, batch {int(sub['speed_batch'].iloc[0])})"),
                ("encoder_ratio", None, None, "encoder parameters (× finetune)"))):
            for model, gm in sub.groupby("model", sort=True):
                for m in methods:
                    g = gm[(gm["kind"] == "peer") & (gm["method"] == m)].sort_values(col)
                    g = g[g[col].notna() & g["delta"].notna()]
                    if g.empty:
                        continue
                    st = m_style[m]
                    axp.plot(g[col], g["delta"], color=st.colour, lw=1.0, zorder=2)
                    axp.errorbar(g[col], g["delta"], yerr=_err(g), xerr=_err(g, col, lo, hi) if lo else None,
                                 fmt=st.marker, color=st.colour, ms=5, elinewidth=0.7, mec="white", mew=0.4, zorder=3)
                for v in ax_vars:
                    g = gm[gm["variant"] == v]
                    g = g[g[col].notna() & g["delta"].notna()]
                    if g.empty:
                        continue
                    st = v_style[v]
                    axp.errorbar(g[col], g["delta"], yerr=_err(g), xerr=_err(g, col, lo, hi) if lo else None,
                                 fmt=st.marker, color=st.colour, ms=6, elinewidth=0.8, mec="white", mew=0.4, zorder=4)
            axp.axhline(0.0, color="0.3", lw=0.8, ls=":", zorder=1)
            axp.set_xlabel(xlabel)
            if col == "encoder_ratio":
                axp.invert_xaxis()  # smaller to the right: better is up and to the right on both panels
        panels[0].set_ylabel(f"Δ dev {metric} (95 % CI)")
        fig.suptitle(f"{task}" + (" (all models)" if multi_model else "")
                     + ": peers at several budgets vs AxFormer, each against finetune")
        handles = [Line2D([], [], color=m_style[m].colour, marker=m_style[m].marker, lw=1.0, ms=5) for m in methods]
        handles += [Line2D([], [], color=v_style[v].colour, marker=v_style[v].marker, ls="", ms=6) for v in ax_vars]
        F.legend_below(fig, handles, labels, width)
        return F.save(fig, Path(figures_dir), f"pareto_{slug(task)}")


def _err(g: pd.DataFrame, col: str = "delta", lo: str = "ci_low", hi: str = "ci_high"):
    low, high = pd.to_numeric(g[lo], errors="coerce"), pd.to_numeric(g[hi], errors="coerce")
    if low.isna().all():
        return None
    v = pd.to_numeric(g[col], errors="coerce")
    return [(v - low).clip(lower=0).fillna(0).to_numpy(), (high - v).clip(lower=0).fillna(0).to_numpy()]


# ------------------------------------------------------------------------------------------------ render
def has_budgets(pts: pd.DataFrame) -> bool:
    """True where some peer method has runs at two or more budgets on one task and model (a line to draw)."""
    peers = pts[pts["kind"] == "peer"]
    return bool(len(peers)) and int(peers.groupby(["task", "model", "method"])["budget"].nunique().max()) >= 2


def render(df: pd.DataFrame, vt: pd.DataFrame, csv_path: str | os.PathLike, figures_dir: str | os.PathLike,
           notes: list[str] | None = None, style: dict[str, F.Style] | None = None) -> list[Path]:
    """``csv_path`` (pareto.csv), the per-task figures and tables/pareto.md, where peer runs with budgets exist;
    else nothing (a note says why). Returns the files written (CSV first)."""
    notes = notes if notes is not None else []
    pts = points(df, vt)
    if not has_budgets(pts):
        if (pts["kind"] == "peer").any():  # peers measured at one budget each: say why there is no frontier
            notes.append("pareto: no peer method has runs at two or more budgets; no frontier report written")
        return []
    pts = with_verdicts(pts)
    csv = Path(csv_path)
    atomic_write_text(csv, pts.to_csv(index=False))
    out = [csv]
    for task in R.task_order(pts["task"].dropna().unique()):
        if (pts["task"] == task).any():
            out += plot_task(pts, task, figures_dir, style)
    ax = pts[pts["kind"] == "AxFormer"]
    if len(ax):
        def fmt(r: pd.Series, axis: str) -> str:
            m = r[f"frontier_{axis}_method"]
            return r[f"verdict_{axis}"] + ("" if pd.isna(m) else f" ({m} {r[f'frontier_{axis}_delta']:+.3f})")
        disp = pd.DataFrame({
            "task": ax["task"], "model": ax["model"], "variant": ax["variant"].map(F.short_label),
            "Δ [95 % CI]": [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in zip(ax["delta"], ax["ci_low"], ax["ci_high"])],
            "speedup": ax["speedup"].map(lambda v: f"{v:.2f}"), "encoder ×": ax["encoder_ratio"].map(lambda v: f"{v:.2f}"),
            "at its speed": [fmt(r, "speed") for _, r in ax.iterrows()],
            "at its size": [fmt(r, "size") for _, r in ax.iterrows()],
        })
        md = Path(figures_dir) / "tables" / "pareto.md"
        atomic_write_text(md, "# AxFormer against the peers' frontier\n\n" + R.to_markdown(disp) + "\n"
                          "Frontier at a variant's speed (size): the best Δ a peer method reaches at that speedup or "
                          "faster (that encoder size or smaller), linear between a method's budgets, with its "
                          "interval; above / below: the intervals do not overlap; on: they do (DESIGN §13).\n")
        out.append(md)
    return out


__all__ = ["COLUMNS", "points", "frontier_at", "verdict", "with_verdicts", "plot_task", "render", "budget_label",
           "has_budgets"]
