"""Figures of the report (DESIGN §4), drawn for a paper: the accuracy-vs-latency scatter per task, the
speedup / size bars per task and the per-run removal map.

One visual family per kind of variant (:data:`axformer.records.record.FAMILIES`, read from each run's record):
references in greys, AxFormer and its ablations in blues, distillation / int8 chains in greens, peer methods
in oranges; within a family every variant has its own marker, and no colour repeats within a figure (shades
are drawn from the family's colour map when its palette runs out). Sizes are the two column widths of a
two-column paper (:data:`SINGLE_COLUMN_IN`, :data:`DOUBLE_COLUMN_IN`); legends sit below the axes in as many
columns as fit; fonts are embedded as TrueType (``pdf.fonttype`` 42); error bars are the sample std over
seeds where a variant has several. Figures are drawn on the Agg canvas without ``pyplot`` (no global state)
and saved as PDF + 300 dpi PNG, atomically and without timestamps.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from axformer.records.record import FAMILIES
from axformer.reporting.tables import families, num_column, pick_batch, variant_sort_key, variant_table
from axformer.utils import slug

log = logging.getLogger(__name__)

SINGLE_COLUMN_IN = 3.5
DOUBLE_COLUMN_IN = 7.0

# Okabe & Ito (2008) colour-blind-safe hues, one family each, darkest-contrast shades first.
FAMILY_COLOURS: dict[str, tuple[str, ...]] = {
    "reference": ("#000000", "#8C8C8C", "#4D4D4D"),
    "axformer": ("#0072B2", "#56B4E9", "#003F63", "#2F8FCF", "#7FB8DA", "#00518A"),
    "compression": ("#009E73", "#7BC8A4", "#00664A", "#3DB38C"),
    "peer": ("#D55E00", "#E69F00", "#CC79A7", "#A33F00", "#F0A070"),
}
# shades beyond the palette: evenly spaced in the family's colour map
FAMILY_CMAPS: dict[str, str] = {"reference": "Greys", "axformer": "Blues", "compression": "Greens", "peer": "Oranges"}
FAMILY_MARKERS: dict[str, tuple[str, ...]] = {
    "reference": ("o", "X", "8"),
    "axformer": ("s", "D", "^", "v", "<", ">", "p", "h", "H", "d"),
    "compression": ("^", "v", "<", ">", "D", "s"),
    "peer": ("P", "*", "d", "p", "h", "X"),
}
FAMILY_LABELS: dict[str, str] = {"reference": "references", "axformer": "AxFormer and ablations",
                                 "compression": "distillation / int8", "peer": "peer methods"}


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str
    family: str


def figure_style() -> dict[str, Any]:
    """The one rcParams set every figure is drawn under (8 pt text at column width, TrueType fonts, 300 dpi)."""
    return {
        "font.size": 8,
        "axes.titlesize": 8,
        "axes.labelsize": 8,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "legend.fontsize": 7,
        "legend.title_fontsize": 7,
        "figure.titlesize": 9,
        "axes.prop_cycle": matplotlib.cycler(color=list(FAMILY_COLOURS["axformer"])),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "grid.linewidth": 0.5,
        "lines.markersize": 5,
        "savefig.dpi": 300,
        "pdf.fonttype": 42,  # embed TrueType so text stays editable/searchable
        "ps.fonttype": 42,
        "errorbar.capsize": 2,
    }


def styles(variant_family: dict[str, str]) -> dict[str, Style]:
    """variant -> :class:`Style`: the family's colours in order (no colour used twice), its markers in order."""
    out: dict[str, Style] = {}
    for fam in (*FAMILIES, *sorted(set(variant_family.values()) - set(FAMILIES))):
        members = sorted((v for v, f in variant_family.items() if f == fam), key=lambda v: variant_sort_key(v, fam))
        if not members:
            continue
        palette = list(FAMILY_COLOURS.get(fam, FAMILY_COLOURS["reference"]))
        if len(members) > len(palette):
            cmap = matplotlib.colormaps[FAMILY_CMAPS.get(fam, "Greys")]
            palette = [matplotlib.colors.to_hex(cmap(x)) for x in np.linspace(0.95, 0.35, len(members))]
        markers = FAMILY_MARKERS.get(fam, FAMILY_MARKERS["reference"])
        for i, v in enumerate(members):
            out[v] = Style(palette[i], markers[i % len(markers)], fam)
    return out


def frame_styles(df: pd.DataFrame) -> dict[str, Style]:
    """:func:`styles` of every variant of a run frame (the same style for a variant in every figure)."""
    fam = families(df)
    return styles({str(v): fam.get(str(v), "reference") for v in df["variant"].dropna().unique()})


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(fig: Figure, figures_dir: Path, name: str) -> list[Path]:
    """Save ``fig`` as ``<name>.pdf`` and ``<name>.png`` (300 dpi) atomically, with no timestamps."""
    paths = []
    # Embedding fonts in PDFs runs fontTools' subsetter, which logs dozens of INFO lines; keep them out of
    # the CLI's log without touching logging for the rest of the process.
    ft_log = logging.getLogger("fontTools")
    old_level = ft_log.level
    ft_log.setLevel(max(old_level, logging.WARNING))
    try:
        for fmt, meta in (("pdf", {"CreationDate": None, "Creator": "axformer.figures"}),
                          ("png", {"Software": "axformer.figures"})):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, metadata=meta)
            path = figures_dir / f"{name}.{fmt}"
            _write_bytes(path, buf.getvalue())
            paths.append(path)
    finally:
        ft_log.setLevel(old_level)
    return paths


def legend_below(fig: Figure, handles: list, labels: list[str], width: float) -> None:
    """One legend under the axes, in as many columns as the longest label lets fit in ``width`` inches."""
    if not handles:
        return
    longest = max(len(lab) for lab in labels)
    ncol = max(1, min(len(labels), int(width / (0.35 + 0.055 * longest))))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, columnspacing=1.0,
               handletextpad=0.4)


def legend_rows(labels: Sequence[str], width: float) -> int:
    """Rows :func:`legend_below` will need (to size the figure's height)."""
    if not labels:
        return 0
    ncol = max(1, min(len(labels), int(width / (0.35 + 0.055 * max(len(lab) for lab in labels)))))
    return math.ceil(len(labels) / ncol)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (latency, metric) points are Pareto-optimal (lower latency and higher metric are better).

    A point is on the front unless another point is no worse on both axes and strictly better on one.
    Points with a NaN coordinate are never on the front. Returns one bool per input point, in order.
    """
    pts = [(float(x), float(y)) for x, y in points]
    flags = []
    for i, (xi, yi) in enumerate(pts):
        if math.isnan(xi) or math.isnan(yi):
            flags.append(False)
            continue
        dominated = any(
            j != i and not (math.isnan(xj) or math.isnan(yj)) and xj <= xi and yj >= yi and (xj < xi or yj > yi)
            for j, (xj, yj) in enumerate(pts)
        )
        flags.append(not dominated)
    return flags


def _metric_label(sub: pd.DataFrame) -> str:
    names = sub["metric_name"].dropna().unique() if "metric_name" in sub.columns else []
    return f"dev {names[0]}" if len(names) else "dev metric"


def _sd(s: pd.Series) -> float | None:
    """Sample std over seeds, None with fewer than two (no error bar)."""
    return float(s.std(ddof=1)) if s.notna().sum() > 1 else None


def short_label(variant: str) -> str:
    """A variant as figures name it: the steps after ``finetune`` (every chain starts there), so legends fit."""
    return variant if variant == "finetune" else variant.removeprefix("finetune+")


def _label(model: str, variant: str, multi_model: bool) -> str:
    return f"{model}: {short_label(variant)}" if multi_model else short_label(variant)


def plot_accuracy_vs_latency(df: pd.DataFrame, task: str, figures_dir: str | os.PathLike,
                             batch_size: int = 32, notes: list[str] | None = None,
                             style: dict[str, Style] | None = None) -> list[Path]:
    """Single column: dev metric vs p50 latency, one point per (model, variant) with seed error bars, the
    Pareto front as a dashed step line, legend below grouped by family."""
    notes = notes if notes is not None else []
    sub = df[df["task"] == task]
    b = pick_batch(sub, batch_size)
    style = style or frame_styles(df)
    multi_model = sub["model"].nunique() > 1
    pts: list[tuple[str, str, float, float | None, float, float | None]] = []
    for (model, variant), g in sub.groupby(["model", "variant"], sort=False):
        lat = num_column(g, f"latency_b{b}_p50_ms") if b is not None else pd.Series(np.nan, index=g.index)
        if lat.notna().sum() == 0:
            msg = f"accuracy_vs_latency_{task}: skipped {model}/{variant}: no latency measured" + (f" at batch {b}" if b else "")
            log.info(msg)
            notes.append(msg)
            continue
        if lat.isna().any():
            msg = f"accuracy_vs_latency_{task}: {model}/{variant}: {int(lat.isna().sum())} seed(s) without latency left out of the x mean"
            log.info(msg)
            notes.append(msg)
        dev = num_column(g, "metric_dev")
        pts.append((str(model), str(variant), float(lat.mean()), _sd(lat), float(dev.mean()), _sd(dev)))
    pts.sort(key=lambda p: (p[0], FAMILIES.index(style[p[1]].family) if style[p[1]].family in FAMILIES else 9,
                            variant_sort_key(p[1], style[p[1]].family)))
    labels = [_label(p[0], p[1], multi_model) for p in pts] + (["Pareto front"] if pts else [])
    width = SINGLE_COLUMN_IN
    with matplotlib.rc_context(figure_style()):
        fig = new_figure(width, 2.5 + 0.16 * legend_rows(labels, width))
        ax = fig.add_subplot()
        device = None
        if b is not None and f"latency_b{b}_device" in sub.columns:
            devs = sub[f"latency_b{b}_device"].dropna().unique()
            device = ", ".join(map(str, devs)) if len(devs) else None
        ax.set_xlabel(f"p50 latency (ms), batch {b}" + (f", {device}" if device else "") if b else "p50 latency (ms)")
        ax.set_ylabel(_metric_label(sub))
        ax.set_title(task)
        if not pts:
            ax.text(0.5, 0.5, "no latency measurements for this task", ha="center", va="center", transform=ax.transAxes)
        handles = []
        for model, variant, x, xs, y, ys in pts:
            st = style[variant]
            h = ax.errorbar(x, y, xerr=xs, yerr=ys, fmt=st.marker, color=st.colour, mec="white", mew=0.4, ms=6,
                            elinewidth=0.8, zorder=4 if st.family == "reference" else 3)
            handles.append(h)
        front = pareto_front([(p[2], p[4]) for p in pts])
        fx = sorted((p[2], p[4]) for p, on in zip(pts, front) if on)
        if fx:
            xs_, ys_ = zip(*fx)
            xmax = max(p[2] for p in pts)
            ax.step(list(xs_) + [max(xmax, xs_[-1])], list(ys_) + [ys_[-1]], where="post", color="0.45",
                    lw=0.9, ls="--", zorder=2)
            handles.append(Line2D([], [], color="0.45", ls="--", lw=0.9))
        legend_below(fig, handles, labels, width)
        return save(fig, Path(figures_dir), f"accuracy_vs_latency_{slug(task)}")


_BATCH_HATCHES = ("", "////", "....", "xxxx")


def plot_speedup_size_bars(df: pd.DataFrame, task: str, figures_dir: str | os.PathLike,
                           notes: list[str] | None = None, style: dict[str, Style] | None = None) -> list[Path]:
    """Double column, two panels sharing the variant axis (horizontal bars, so labels never overlap): speedup
    vs finetune at each timed batch size (hatch = batch size), and encoder parameters as a fraction of
    finetune's; bars in the variant's colour, error bars = std over seeds."""
    notes = notes if notes is not None else []
    style = style or frame_styles(df)
    vt = variant_table(df, task)
    sub = df[df["task"] == task]
    multi_model = vt["model"].nunique() > 1
    speed_cols = [c for c in vt.columns if c.startswith("speedup_b")]
    keep = vt[vt[[*speed_cols, "params_encoder_ratio"]].notna().any(axis=1)]
    for _, r in vt[~vt.index.isin(keep.index)].iterrows():
        msg = f"speedup_size_bars_{task}: skipped {r['model']}/{r['variant']}: no speedup or size recorded"
        log.info(msg)
        notes.append(msg)
    keep = keep.iloc[::-1]  # first table row on top
    n = max(len(keep), 1)
    width = DOUBLE_COLUMN_IN
    with matplotlib.rc_context(figure_style()):
        fig = new_figure(width, 1.0 + 0.22 * n * max(1, len(speed_cols)) ** 0.5)
        ax_s, ax_z = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
        y = np.arange(len(keep))
        colours = [style[str(v)].colour if str(v) in style else "0.5" for v in keep["variant"]]
        h = 0.8 / max(len(speed_cols), 1)
        for i, col in enumerate(speed_cols):
            b = int(col.split("_b")[1])
            vals, errs = [], []
            for _, r in keep.iterrows():
                g = sub[(sub["model"] == r["model"]) & (sub["variant"] == r["variant"])]
                sp = num_column(g, f"latency_b{b}_speedup").fillna(num_column(g, f"latency_b{b}_baseline_p50_ms") / num_column(g, f"latency_b{b}_p50_ms"))
                vals.append(r[col])
                errs.append(_sd(sp) or 0.0)
            pos = y + ((len(speed_cols) - 1) / 2 - i) * h  # the first batch size on top
            ax_s.barh(pos, np.nan_to_num(np.asarray(vals, dtype=float)), h, xerr=errs if any(errs) else None, color=colours,
                      hatch=_BATCH_HATCHES[i % len(_BATCH_HATCHES)], edgecolor="white", linewidth=0.4, zorder=3,
                      error_kw={"elinewidth": 0.7, "capsize": 1.5})
            for p, v in zip(pos, vals):
                ax_s.text(0.02 if np.isnan(v) else v + 0.02, p, "n/a" if np.isnan(v) else f"{v:.2f}",
                          va="center", fontsize=6)
        ax_s.axvline(1.0, color="0.3", lw=0.7, ls=":", zorder=2)
        ax_s.set_xlabel("speedup vs finetune (×)")
        enc = keep["params_encoder_ratio"].to_numpy(dtype=float)
        ax_z.barh(y, np.nan_to_num(enc), 0.6, color=colours, edgecolor="white", linewidth=0.4, zorder=3)
        for p, v in zip(y, enc):
            ax_z.text(0.02 if np.isnan(v) else v + 0.02, p, "n/a" if np.isnan(v) else f"{v:.2f}", va="center", fontsize=6)
        ax_z.axvline(1.0, color="0.3", lw=0.7, ls=":", zorder=2)
        ax_z.set_xlabel("encoder parameters (× finetune)")
        ax_s.set_yticks(y, [_label(m, v, multi_model) for m, v in zip(keep["model"], keep["variant"])])
        for tick, c in zip(ax_s.get_yticklabels(), colours):
            tick.set_color(c)
        for ax in (ax_s, ax_z):
            ax.grid(axis="y", visible=False)
            top = np.nanmax(np.r_[keep[speed_cols].to_numpy(dtype=float).ravel() if ax is ax_s else enc, 1.0])
            ax.set_xlim(0, float(top) * 1.18)
        fig.suptitle(f"{task}: speedup and size vs finetune")
        handles = [Patch(facecolor="0.6", edgecolor="white", hatch=_BATCH_HATCHES[i % len(_BATCH_HATCHES)])
                   for i in range(len(speed_cols))]
        handles += [Patch(facecolor=FAMILY_COLOURS[f][0]) for f in FAMILIES if any(s.family == f for v, s in style.items() if v in set(keep["variant"]))]
        labels = [f"batch {c.split('_b')[1]}" for c in speed_cols]
        labels += [FAMILY_LABELS[f] for f in FAMILIES if any(s.family == f for v, s in style.items() if v in set(keep["variant"]))]
        legend_below(fig, handles, labels, width)
        return save(fig, Path(figures_dir), f"speedup_size_bars_{slug(task)}")


# Cell states of the removal grid.
KEPT, REMOVED, IMPLIED, TRIED, HARD = 0, 1, 2, 3, 4
# What decisions.json records (axformer.search.prune.decisions_record): the size of each indexed element kind, and
# which indexed kind a whole-block removal takes with it. Hard attention is the candidate kind "hardattn".
_COUNT_KEYS = {"head": "n_heads", "ffn_group": "n_groups"}
_INSIDE = {"attn": "head", "ffn": "ffn_group"}
_HARD_KIND = "hardattn"


def removal_grid(decisions: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The per-layer removal map as an int array (rows = layers), from the search's candidates (their
    ``layer``, ``kind``, ``index`` and ``accepted``; element names are not parsed).

    Columns: one per index of each indexed kind (heads, FFN groups; as many as decisions.json records), then
    one per whole-block kind (attn, ffn), then hard attention. Cell states: KEPT, REMOVED, IMPLIED (inside a
    removed block), TRIED (a candidate evaluated and kept), HARD (hard attention on). Returns (grid, dims):
    dims has ``n_layers``, ``columns`` (kind, index) per column and the per-kind widths.
    """
    cands = [c for c in decisions.get("candidates") or [] if isinstance(c, dict) and c.get("layer") is not None]
    hard = decisions.get("hard_attention") or {}
    hard_layers = {int(x) for x in hard.get("layers_selected") or []}
    hard_layers |= {int(c["layer"]) for c in cands if c.get("kind") == _HARD_KIND and c.get("accepted")}
    layers = [int(c["layer"]) for c in cands] + list(hard_layers)
    arch_layers = (decisions.get("arch") or {}).get("layers") or []
    n_layers = int(decisions.get("n_layers") or len(arch_layers) or (max(layers) + 1 if layers else 0))
    indexed = {c["kind"] for c in cands if c.get("index") is not None}
    blocks = {c["kind"] for c in cands if c.get("index") is None and c.get("kind") != _HARD_KIND}
    indexed_order = [k for k in _COUNT_KEYS if k in indexed or decisions.get(_COUNT_KEYS[k])] + sorted(indexed - set(_COUNT_KEYS))
    block_order = [k for k in _INSIDE if k in blocks or _INSIDE[k] in indexed_order] + sorted(blocks - set(_INSIDE))
    widths = {}
    for k in indexed_order:
        seen = [int(c["index"]) for c in cands if c.get("kind") == k and c.get("index") is not None]
        widths[k] = int(decisions.get(_COUNT_KEYS.get(k, "")) or (max(seen) + 1 if seen else 0))
    columns: list[tuple[str, int | None]] = [(k, i) for k in indexed_order for i in range(widths[k])]
    columns += [(k, None) for k in block_order] + [(_HARD_KIND, None)]
    where = {c: j for j, c in enumerate(columns)}
    grid = np.full((n_layers, len(columns)), KEPT, dtype=int)
    for c in cands:
        key = (c["kind"], None if c.get("index") is None else int(c["index"]))
        layer = int(c["layer"])
        if c["kind"] == _HARD_KIND:
            key = (_HARD_KIND, None)  # accepted ones are drawn as HARD below
        if key not in where or not 0 <= layer < n_layers:
            log.warning("removal map: candidate %s outside the %d-layer grid; ignored", c.get("element"), n_layers)
            continue
        if c["kind"] == _HARD_KIND and c.get("accepted"):
            continue
        if c.get("accepted"):
            grid[layer, where[key]] = REMOVED
            inner = [j for (k, _), j in where.items() if k == _INSIDE.get(c["kind"])]
            grid[layer, inner] = np.where(grid[layer, inner] == REMOVED, REMOVED, IMPLIED)
        elif grid[layer, where[key]] == KEPT:
            grid[layer, where[key]] = TRIED
    for layer in hard_layers:
        if 0 <= layer < n_layers:
            grid[layer, where[(_HARD_KIND, None)]] = HARD
    return grid, {"n_layers": n_layers, "columns": columns, **{f"n_{k}": w for k, w in widths.items()}}


_STATE_COLOURS = {KEPT: "#EDEDED", REMOVED: "#D55E00", IMPLIED: "#F2B999", TRIED: "#56B4E9", HARD: "#0072B2"}
_STATE_LABELS = {KEPT: "kept", REMOVED: "removed", IMPLIED: "removed with its block",
                 TRIED: "tried, kept (hurt the search loss)", HARD: "hard attention on"}
_KIND_LABELS = {"head": "attention heads", "ffn_group": "FFN neuron groups", "attn": "attn", "ffn": "FFN",
                _HARD_KIND: "HA"}


def plot_removal_map(decisions: dict[str, Any], figures_dir: str | os.PathLike, name: str, title: str) -> list[Path]:
    """Double column: :func:`removal_grid` as a layer × element map, saved as ``<name>.pdf|png``."""
    grid, d = removal_grid(decisions)
    n_layers, columns = d["n_layers"], d["columns"]
    rgb = np.array([[matplotlib.colors.to_rgb(_STATE_COLOURS[int(s)]) for s in row] for row in grid]).reshape(n_layers, -1, 3)
    ncol = grid.shape[1]
    hard = decisions.get("hard_attention") or {}
    width = DOUBLE_COLUMN_IN
    with matplotlib.rc_context(figure_style()):
        fig = new_figure(width, 1.5 + min(0.24, width / max(ncol, 1)) * n_layers)
        ax = fig.add_subplot()
        ax.imshow(rgb, aspect="equal", interpolation="nearest", origin="upper")
        ax.grid(False)
        ax.set_xticks(np.arange(-0.5, ncol, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n_layers, 1), minor=True)
        ax.grid(which="minor", color="white", lw=0.8)
        ax.tick_params(which="minor", length=0)
        kinds = [k for k, _ in columns]
        for j in range(1, ncol):  # a rule between element kinds
            if kinds[j] != kinds[j - 1] and (columns[j][1] is not None or columns[j - 1][1] is not None):
                ax.axvline(j - 0.5, color="0.1", lw=1.0)
        ticks = [str(i) if i is not None else _KIND_LABELS.get(k, k) for k, i in columns]
        ax.set_xticks(np.arange(ncol), ticks, rotation=90, fontsize=6)
        ax.set_yticks(np.arange(n_layers), [f"L{i}" for i in range(n_layers)])
        ax.set_ylabel("encoder layer")
        groups = [_KIND_LABELS.get(k, k) for k in dict.fromkeys(k for k, i in columns if i is not None)]
        ax.set_xlabel("  |  ".join([*groups, "whole blocks, hard attention (HA)"]))
        for spine in ax.spines.values():
            spine.set_visible(False)
        sub = f"hard attention k={hard.get('k')}" if hard.get("layers_selected") else "no hard attention"
        ax.set_title(f"{title} ({sub})")
        present = sorted(set(int(s) for s in np.unique(grid)) | {KEPT, REMOVED})
        handles = [Patch(facecolor=_STATE_COLOURS[s], edgecolor="0.5", label=_STATE_LABELS[s]) for s in present]
        legend_below(fig, handles, [_STATE_LABELS[s] for s in present], width)
        return save(fig, Path(figures_dir), name)
