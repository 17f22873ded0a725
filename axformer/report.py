"""Collect run results into tables and figures.

Reads ``results/<task>/<model>/<variant>/seed<k>/metrics.json`` (and ``decisions.json`` beside it for
AxFormer runs) and writes:

- ``results/summary.csv``: one flat row per run (:func:`collect`, :func:`write_summary`);
- ``figures/tables/<task>.md|.tex`` and ``figures/tables/all_tasks.md`` (:func:`variant_table`,
  :func:`all_tasks_table`, :func:`to_markdown`, :func:`to_latex`);
- ``figures/accuracy_vs_latency_<task>.pdf|png``, ``figures/speedup_size_bars_<task>.pdf|png`` and
  ``figures/removal_map_<task>_<model>_<variant>_seed<k>.pdf|png``;
- ``figures/README.md``: an index of everything produced.

:func:`render` does all of it. Figures are drawn on the Agg canvas without ``pyplot`` (no global state),
under one shared style (:func:`figure_style`) with the Okabe-Ito colour-blind-safe palette.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from axformer.tasks import TASKS
from axformer import record_schema
from axformer.utils import ConfigError, atomic_write_text

log = logging.getLogger(__name__)

# Okabe & Ito (2008) colour-blind-safe palette, ordered so the first colours contrast most on white.
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: weak on white)
)
# 12 markers against 8 colours: (colour, marker) pairs stay distinct for up to 24 variants
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")

ID_COLUMNS: tuple[str, ...] = ("task", "model", "variant", "seed", "profile")
# Top-level blocks that are dicts (or null when not measured); a null block adds no columns.
_BLOCKS = ("metric", "size", "memory", "env", "train", "search")
# Known variant components, in the order they are applied; used to order table rows.
_COMPONENT_RANK = {"distill": 0, "axformer": 1, "int8": 2, "int8_ort": 2, "int8_ort_static": 2, "int8_ov": 2, "headprune": 3}
_LAT_RE = re.compile(r"^latency_b(\d+)_(.+)$")
_ELEMENT_RE = re.compile(r"^L(\d+)\.(head|ffn_group|ffn|attn)(\d+)?$")
DASH = "–"


# ----------------------------------------------------------------------------------------------- collect


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with ``_``-joined keys; lists become JSON strings (CSV-safe)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _expand_latency(latency: Any, source: Path) -> dict[str, Any]:
    """Latency list -> ``latency_b<batch>_<field>`` columns.

    Entries on the first-listed device get ``latency_b<B>_...``; entries on any other device get
    ``latency_<device>_b<B>_...`` so a CPU+GPU run keeps both without clashing.
    """
    if latency is None:
        return {"latency_measured": False}
    if not isinstance(latency, list):
        raise ConfigError(f"{source}: 'latency' must be a list of measurements or null (got {type(latency).__name__}).")
    out: dict[str, Any] = {"latency_measured": bool(latency)}
    primary = None
    for entry in latency:
        if not isinstance(entry, dict) or "batch_size" not in entry:
            raise ConfigError(f"{source}: every 'latency' entry must be an object with a 'batch_size' key.")
        device = entry.get("device")
        primary = device if primary is None else primary
        stem = f"latency_b{int(entry['batch_size'])}" if device == primary else f"latency_{device}_b{int(entry['batch_size'])}"
        for key, value in _flatten({k: v for k, v in entry.items() if k != "batch_size"}).items():
            out[f"{stem}_{key}"] = value
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=record_schema.refuse_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                          "fix or delete the file and re-run that job.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc}); check the file and its permissions.") from exc
    except ValueError as exc:  # a NaN / Infinity literal: not JSON
        raise ConfigError(f"{path}: {exc}; fix or delete the file and re-run that job.") from exc


def _run_row(path: Path, results_dir: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: malformed metrics.json (top level must be a JSON object, got {type(data).__name__}).")
    record_schema.check(data, "metrics", path)
    rel = path.parent.relative_to(results_dir)
    parts = rel.parts
    from_path: dict[str, Any] = {}
    if len(parts) >= 4:
        from_path = {"task": parts[-4], "model": parts[-3], "variant": parts[-2]}
        m = re.fullmatch(r"seed(\d+)", parts[-1])
        if m:
            from_path["seed"] = int(m.group(1))
    row: dict[str, Any] = {}
    for key in ID_COLUMNS:
        value = data.get(key, from_path.get(key))
        if key in from_path and data.get(key) is not None and data.get(key) != from_path[key]:
            log.warning("%s: %s=%r in the file but %r in the path; using the file's value", path, key, data[key], from_path[key])
        row[key] = value
    for key, value in data.items():
        if key in ID_COLUMNS:
            continue
        if key == "latency":
            row.update(_expand_latency(value, path))
        elif key in _BLOCKS and value is None:
            continue
        elif isinstance(value, dict):
            row.update(_flatten(value, key))
        elif isinstance(value, (list, tuple)):
            row[key] = json.dumps(value)
        else:
            row[key] = value
    row.setdefault("latency_measured", False)
    row["run_dir"] = rel.as_posix()
    row["has_decisions"] = (path.parent / "decisions.json").is_file()
    return row


def collect(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Read every ``<task>/<model>/<variant>/seed<k>/metrics.json`` under ``results_dir`` into one DataFrame.

    Nested dicts become ``_``-joined columns (``metric_dev``, ``size_params_encoder``); the latency list
    becomes ``latency_b<batch>_<field>`` columns. Malformed JSON raises :class:`ConfigError` naming the file.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"results directory {root} does not exist; run the experiments first or pass the right --results.")
    # exactly the DESIGN layout <task>/<model>/<variant>/seed<k>/metrics.json: another profile's results
    # tree nested inside (results/bench/...) is not this profile's runs
    rows = [_run_row(p, root) for p in sorted(root.glob("*/*/*/seed*/metrics.json"))]
    if not rows:
        return pd.DataFrame(columns=[*ID_COLUMNS, "run_dir"])
    df = pd.DataFrame(rows)
    first = [c for c in ID_COLUMNS if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    df = df.sort_values(["task", "model", "variant", "seed"], key=_sort_key_series, kind="stable").reset_index(drop=True)
    return df


def _sort_key_series(s: pd.Series) -> pd.Series:
    if s.name == "variant":
        return s.map(lambda v: variant_sort_key(str(v)))
    return s.map(lambda v: (0, v) if isinstance(v, (int, np.integer)) else (1, str(v)))


def write_summary(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the flat run table as CSV atomically (temp file + rename); returns the path."""
    path = Path(path)
    atomic_write_text(path, df.to_csv(index=False))
    return path


# ----------------------------------------------------------------------------------------------- tables


def variant_sort_key(variant: str) -> tuple:
    """Row order: ``finetune``, then ``finetune+...`` by number of components and pipeline order,
    then other (peer) baselines alphabetically, then ``majority`` last."""
    if variant == "finetune":
        return (0,)
    parts = variant.split("+")
    if parts[0] == "finetune":
        ranks = tuple(_COMPONENT_RANK.get(p, len(_COMPONENT_RANK)) for p in parts[1:])
        return (1, len(parts), ranks, variant)
    if variant == "majority":
        return (3,)
    return (2, variant)


def _task_order(tasks: Iterable[str]) -> list[str]:
    known = list(TASKS)
    return sorted(set(tasks), key=lambda t: (known.index(t) if t in known else len(known), t))


def _batch_sizes(df: pd.DataFrame, field: str = "p50_ms") -> list[int]:
    sizes = set()
    for col in df.columns:
        m = _LAT_RE.match(col)
        if m and m.group(2) == field and df[col].notna().any():
            sizes.add(int(m.group(1)))
    return sorted(sizes)


def pick_batch(df: pd.DataFrame, preferred: int = 32) -> int | None:
    """The batch size to plot: ``preferred`` if any run measured it, else 1, else the smallest measured."""
    sizes = _batch_sizes(df)
    for b in (preferred, 1):
        if b in sizes:
            return b
    return sizes[0] if sizes else None


def _speedup(sub: pd.DataFrame, b: int) -> pd.Series:
    """Per-run speedup at batch ``b``: the recorded value, else baseline_p50 / p50."""
    nan = pd.Series(np.nan, index=sub.index)
    rec = pd.to_numeric(sub.get(f"latency_b{b}_speedup", nan), errors="coerce")
    base = pd.to_numeric(sub.get(f"latency_b{b}_baseline_p50_ms", nan), errors="coerce")
    p50 = pd.to_numeric(sub.get(f"latency_b{b}_p50_ms", nan), errors="coerce")
    return rec.fillna(base / p50)


def _num(sub: pd.DataFrame, col: str) -> pd.Series:
    if col not in sub.columns:
        return pd.Series(np.nan, index=sub.index, dtype=float)
    return pd.to_numeric(sub[col], errors="coerce")


def variant_table(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (model, variant) of ``task``, aggregated over seeds.

    Columns: ``model``, ``variant``, ``metric`` (name), ``n_seeds``, ``metric_mean``, ``metric_std``
    (sample std, ddof=1; NaN for one seed), ``params_encoder_ratio`` and ``params_total_ratio`` (mean
    over seeds / mean of the same model's ``finetune``), ``speedup_b<B>`` (mean over seeds that measured
    it) for each batch size, ``size_mb`` (mean bytes on disk / 1e6). Rows: ``finetune`` first.
    QA tasks (SQuAD) also get ``<secondary>_mean`` per secondary metric (exact_match next to F1).
    """
    sub = df[df["task"] == task] if "task" in df.columns else df.iloc[0:0]
    extra = TASKS[task].secondary if task in TASKS and TASKS[task].is_qa else ()
    if sub.empty:
        raise ConfigError(f"no runs for task {task!r} in the results; tasks present: {sorted(df.get('task', pd.Series()).dropna().unique())}.")
    batches = _batch_sizes(sub, "speedup") or _batch_sizes(sub)
    rows = []
    for (model, variant), g in sub.groupby(["model", "variant"], sort=False):
        metric_names = g["metric_name"].dropna().unique() if "metric_name" in g.columns else []
        dev = _num(g, "metric_dev")
        row: dict[str, Any] = {
            "model": model,
            "variant": variant,
            "metric": metric_names[0] if len(metric_names) else "metric",
            "n_seeds": int(g["seed"].nunique()),
            "metric_mean": dev.mean(),
            "metric_std": dev.std(ddof=1) if dev.notna().sum() > 1 else np.nan,
            **{f"{name}_mean": _num(g, f"metric_secondary_{name}").mean() for name in extra},
            "_enc": _num(g, "size_params_encoder").mean(),
            "_tot": _num(g, "size_params_total").mean(),
        }
        for b in batches:
            row[f"speedup_b{b}"] = _speedup(g, b).mean()
        row["size_mb"] = _num(g, "size_bytes_on_disk").mean() / 1e6
        rows.append(row)
    table = pd.DataFrame(rows)
    for model, idx in table.groupby("model").groups.items():
        ft = table.loc[idx][table.loc[idx, "variant"] == "finetune"]
        if ft.empty:
            log.debug("task %s, model %s: no 'finetune' runs, so size ratios are left empty", task, model)
        enc0 = ft["_enc"].iloc[0] if not ft.empty else np.nan
        tot0 = ft["_tot"].iloc[0] if not ft.empty else np.nan
        table.loc[idx, "params_encoder_ratio"] = table.loc[idx, "_enc"] / enc0 if enc0 else np.nan
        table.loc[idx, "params_total_ratio"] = table.loc[idx, "_tot"] / tot0 if tot0 else np.nan
    cols = ["model", "variant", "metric", "n_seeds", "metric_mean", "metric_std",
            *[f"{name}_mean" for name in extra], "params_encoder_ratio",
            "params_total_ratio", *[f"speedup_b{b}" for b in batches], "size_mb"]
    table = table[cols]
    order = sorted(range(len(table)), key=lambda i: (str(table["model"].iloc[i]), variant_sort_key(str(table["variant"].iloc[i]))))
    return table.iloc[order].reset_index(drop=True)


def _fmt(x: Any, digits: int = 3, suffix: str = "") -> str:
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return DASH if x is None else str(x)
    return DASH if math.isnan(xf) else f"{xf:.{digits}f}{suffix}"


def _fmt_mean_std(mean: Any, std: Any, digits: int = 3) -> str:
    s = _fmt(mean, digits)
    if s != DASH and _fmt(std, digits) != DASH:
        s += f" ± {_fmt(std, digits)}"
    return s


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """Turn a :func:`variant_table` into display strings (``mean ± std``, ``1.37×``, ``–`` for missing)."""
    if "metric_mean" not in table.columns:
        return table.apply(lambda col: col.map(lambda v: _fmt(v) if isinstance(v, float) else (DASH if v is None else str(v))))
    metric = table["metric"].iloc[0] if len(table) else "metric"
    out = pd.DataFrame(index=table.index)
    if table["model"].nunique() > 1:
        out["Model"] = table["model"].astype(str)
    out["Variant"] = table["variant"].astype(str)
    out["Seeds"] = table["n_seeds"].astype(int).astype(str)
    out[f"Dev {metric}"] = [_fmt_mean_std(m, s) for m, s in zip(table["metric_mean"], table["metric_std"])]
    for col in table.columns:  # secondary metrics a table carries (SQuAD: exact_match)
        m = re.fullmatch(r"(.+)_mean", col)
        if m and col != "metric_mean":
            out[f"Dev {m.group(1)}"] = table[col].map(lambda v: _fmt(v))
    out["Encoder params (×FT)"] = table["params_encoder_ratio"].map(lambda v: _fmt(v, 2))
    out["Total params (×FT)"] = table["params_total_ratio"].map(lambda v: _fmt(v, 2))
    for col in table.columns:
        m = re.fullmatch(r"speedup_b(\d+)", col)
        if m:
            out[f"Speedup b{m.group(1)}"] = table[col].map(lambda v: _fmt(v, 2, "×"))
    out["Size (MB)"] = table["size_mb"].map(lambda v: _fmt(v, 1))
    return out


_TEXT_COLUMNS = {"Model", "Variant", "variant", "model", "metric", "Task", "Hard-attention layers"}


def to_markdown(table: pd.DataFrame, path: str | os.PathLike | None = None) -> str:
    """A GitHub-flavoured Markdown table (no third-party formatter); written atomically when ``path`` is given."""
    t = format_table(table)
    header = [str(c) for c in t.columns]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(":---" if h in _TEXT_COLUMNS else "---:" for h in header) + "|"]
    for _, row in t.iterrows():
        lines.append("| " + " | ".join(esc(v) for v in row.tolist()) + " |")
    text = "\n".join(lines) + "\n"
    if path is not None:
        atomic_write_text(path, text)
    return text


def _latex_escape(s: str) -> str:
    s = str(s).replace("\\", "\x00")
    for ch in "&%$#_{}":
        s = s.replace(ch, "\\" + ch)
    s = s.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}").replace("\x00", r"\textbackslash{}")
    return s.replace("±", r"$\pm$").replace("×", r"$\times$").replace(DASH, "--")


def to_latex(table: pd.DataFrame, path: str | os.PathLike | None = None, caption: str | None = None) -> str:
    """A booktabs ``tabular`` (wrapped in ``table`` with ``caption``); written atomically when ``path`` is given."""
    t = format_table(table)
    align = "".join("l" if c in _TEXT_COLUMNS else "r" for c in t.columns)
    lines = ["% generated by axformer.report; needs \\usepackage{booktabs}"]
    if caption:
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{_latex_escape(caption)}}}"]
    lines += [f"\\begin{{tabular}}{{{align}}}", "\\toprule",
              " & ".join(_latex_escape(c) for c in t.columns) + " \\\\", "\\midrule"]
    for _, row in t.iterrows():
        lines.append(" & ".join(_latex_escape(v) for v in row.tolist()) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption:
        lines.append("\\end{table}")
    text = "\n".join(lines) + "\n"
    if path is not None:
        atomic_write_text(path, text)
    return text


def all_tasks_table(df: pd.DataFrame, batch_size: int = 32) -> pd.DataFrame:
    """Headline table: rows = variants (``model: variant`` if several models), columns = tasks,
    cells ``"metric ± std (speedup×)"`` with speedup at ``batch_size`` (falling back to 1)."""
    tasks = _task_order(df["task"].dropna().unique()) if "task" in df.columns else []
    multi_model = df["model"].nunique() > 1 if "model" in df.columns else False
    cells: dict[str, dict[str, str]] = {}
    keys: dict[str, tuple] = {}
    for task in tasks:
        sub = df[df["task"] == task]
        b = pick_batch(sub, batch_size)
        vt = variant_table(df, task)
        for _, r in vt.iterrows():
            label = f"{r['model']}: {r['variant']}" if multi_model else str(r["variant"])
            keys[label] = (str(r["model"]), variant_sort_key(str(r["variant"])))
            cell = _fmt_mean_std(r["metric_mean"], r["metric_std"])
            sp = r.get(f"speedup_b{b}", np.nan) if b is not None else np.nan
            if _fmt(sp) != DASH:
                cell += f" ({_fmt(sp, 2, '×')})"
            cells.setdefault(label, {})[f"{task} ({r['metric']})"] = cell
    if not cells:
        return pd.DataFrame(columns=["variant"])
    out = pd.DataFrame.from_dict(cells, orient="index")
    out = out.loc[sorted(out.index, key=lambda k: keys[k])].fillna(DASH)
    out.index.name = "variant"
    return out.reset_index()


def _count_list(v: Any) -> float:
    """Length of a JSON list stored in a summary cell (``search_removed``), NaN when absent."""
    if isinstance(v, list):
        return float(len(v))
    if isinstance(v, str) and v.startswith("["):
        return float(len(json.loads(v)))
    return np.nan


def search_cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """What each AxFormer-like search did and what it cost, beside the fine-tuning it starts from.

    One row per (task, model, variant) that ran a search (``search_passes`` present), int8 / int8_ort copies left out
    (they share their parent's search); values are means over seeds. ``Search / fine-tune`` divides the
    search wall time by the wall time of the ``finetune`` training of the same task and model (the issue's
    cost target is < 1).
    """
    need = {"search_passes", "search_wall_s", "task", "variant"}
    if df.empty or not need <= set(df.columns):
        return pd.DataFrame(columns=["Task", "Variant"])
    sub = df[df["search_passes"].notna() & ~df["variant"].astype(str).str.contains(r"\+int8(?:_ort\w*|_ov)?$")]
    rows = _fisher_search_rows(df)  # the retraining-free Fisher peer: a search too, timed beside AxFormer's
    for (task, model, variant), g in sub.groupby(["task", "model", "variant"], sort=False):
        ft = df[(df["task"] == task) & (df["model"] == model) & (df["variant"] == "finetune")]
        ft_wall = _num(ft, "train_wall_s").mean() if "train_wall_s" in ft.columns else np.nan
        wall = _num(g, "search_wall_s").mean()
        ha = g["search_hard_attention_layers"].iloc[0] if "search_hard_attention_layers" in g.columns else None
        rows.append({
            "Task": str(task),
            "Variant": str(variant) if df["model"].nunique() == 1 else f"{model}: {variant}",
            "Removed": _fmt(g["search_removed"].map(_count_list).mean() if "search_removed" in g.columns else np.nan, 0),
            "Hard-attention layers": DASH if not isinstance(ha, str) else (ha if ha != "[]" else "none"),
            "Passes": _fmt(_num(g, "search_passes").mean(), 0),
            "Search loss": f"{_fmt(_num(g, 'search_loss_before').mean())} → {_fmt(_num(g, 'search_loss_after').mean())}",
            "Search (s)": _fmt(wall, 0),
            "Fine-tune (s)": _fmt(ft_wall, 0),
            "Search / fine-tune": _fmt(wall / ft_wall if ft_wall else np.nan, 2),
            "_key": (task, variant_sort_key(str(variant))),
        })
    if not rows:
        return pd.DataFrame(columns=["Task", "Variant"])
    out = pd.DataFrame(rows)
    order = _task_order(out["Task"].unique())
    out["_t"] = out["Task"].map(order.index)
    out = out.sort_values(["_t", "_key"], kind="stable").drop(columns=["_t", "_key"])
    return out.reset_index(drop=True)


def _fisher_search_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """search_cost rows of the Fisher mask-search peer (``baseline_method == "fisher"``, baselines/fisher.py):
    heads / FFN neurons removed, its wall time (``baseline_wall_s``) and the search-split loss of the parent
    ``finetune`` -> the pruned model (the whole search split, from metrics.json; no passes count)."""
    if "baseline_method" not in df.columns or "baseline_wall_s" not in df.columns:
        return []
    sub = df[(df["baseline_method"] == "fisher") & ~df["variant"].astype(str).str.endswith("+int8")]
    rows = []
    for (task, model, variant), g in sub.groupby(["task", "model", "variant"], sort=False):
        ft = df[(df["task"] == task) & (df["model"] == model) & (df["variant"] == "finetune")]
        ft_wall = _num(ft, "train_wall_s").mean() if "train_wall_s" in ft.columns else np.nan
        wall = _num(g, "baseline_wall_s").mean()
        removed = [(_num(g, f"baseline_info_{k}_before") - _num(g, f"baseline_info_{k}_after")).mean()
                   if f"baseline_info_{k}_after" in g.columns else np.nan for k in ("heads", "neurons")]
        rows.append({
            "Task": str(task),
            "Variant": str(variant) if df["model"].nunique() == 1 else f"{model}: {variant}",
            "Removed": f"{_fmt(removed[0], 0)} heads, {_fmt(removed[1], 0)} neurons",
            "Hard-attention layers": DASH,
            "Passes": DASH,
            "Search loss": f"{_fmt(_num(ft, 'metric_search_loss').mean())} → {_fmt(_num(g, 'metric_search_loss').mean())}",
            "Search (s)": _fmt(wall, 0),
            "Fine-tune (s)": _fmt(ft_wall, 0),
            "Search / fine-tune": _fmt(wall / ft_wall if ft_wall else np.nan, 2),
            "_key": (task, variant_sort_key(str(variant))),
        })
    return rows


# ----------------------------------------------------------------------------------------------- figures


def figure_style() -> dict[str, Any]:
    """The one rcParams set every figure is drawn under (fonts >= 9 pt, Okabe-Ito cycle, 300 dpi PNG)."""
    return {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "legend.fontsize": 9,
        "legend.title_fontsize": 9,
        "figure.titlesize": 11,
        "axes.prop_cycle": matplotlib.cycler(color=list(OKABE_ITO)),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "grid.linewidth": 0.6,
        "savefig.dpi": 300,
        "savefig.bbox": "tight",
        "pdf.fonttype": 42,  # embed TrueType so text stays editable/searchable
        "ps.fonttype": 42,
        "errorbar.capsize": 3,
    }


def _new_figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size)
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


def _save(fig: Figure, figures_dir: Path, name: str) -> list[Path]:
    """Save ``fig`` as ``<name>.pdf`` and ``<name>.png`` (300 dpi) atomically, with no timestamps."""
    paths = []
    # Embedding fonts in PDFs runs fontTools' subsetter, which logs dozens of INFO lines; keep them out of
    # the CLI's log without touching logging for the rest of the process.
    ft_log = logging.getLogger("fontTools")
    old_level = ft_log.level
    ft_log.setLevel(max(old_level, logging.WARNING))
    try:
        for fmt, meta in (("pdf", {"CreationDate": None, "Creator": "axformer.report"}), ("png", {"Software": "axformer.report"})):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, metadata=meta)
            path = figures_dir / f"{name}.{fmt}"
            _write_bytes(path, buf.getvalue())
            paths.append(path)
    finally:
        ft_log.setLevel(old_level)
    return paths


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)).strip("-")


def _variant_styles(variants: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Stable (colour, marker) per variant, shared by every figure."""
    ordered = sorted(set(variants), key=variant_sort_key)
    return {v: (OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]) for i, v in enumerate(ordered)}


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


def plot_accuracy_vs_latency(df: pd.DataFrame, task: str, figures_dir: str | os.PathLike,
                             batch_size: int = 32, notes: list[str] | None = None) -> list[Path]:
    """Dev metric vs p50 latency, one point per (model, variant) with seed error bars, Pareto front as a step line."""
    notes = notes if notes is not None else []
    sub = df[df["task"] == task]
    b = pick_batch(sub, batch_size)
    styles = _variant_styles(df["variant"].dropna().unique())
    multi_model = sub["model"].nunique() > 1
    pts: list[tuple[str, str, float, float, float, float]] = []
    for (model, variant), g in sub.groupby(["model", "variant"], sort=False):
        lat = _num(g, f"latency_b{b}_p50_ms") if b is not None else pd.Series(np.nan, index=g.index)
        if lat.notna().sum() == 0:
            msg = f"accuracy_vs_latency_{task}: skipped {model}/{variant}: no latency measured" + (f" at batch {b}" if b else "")
            log.info(msg)
            notes.append(msg)
            continue
        if lat.isna().any():
            msg = f"accuracy_vs_latency_{task}: {model}/{variant}: {int(lat.isna().sum())} seed(s) without latency left out of the x mean"
            log.info(msg)
            notes.append(msg)
        dev = _num(g, "metric_dev")
        sd = lambda s: float(s.std(ddof=1)) if s.notna().sum() > 1 else 0.0  # noqa: E731
        pts.append((str(model), str(variant), float(lat.mean()), sd(lat), float(dev.mean()), sd(dev)))
    pts.sort(key=lambda p: (p[0], variant_sort_key(p[1])))
    with matplotlib.rc_context(figure_style()):
        fig = _new_figure((5.6, 3.8))
        ax = fig.add_subplot()
        device = None
        if b is not None and f"latency_b{b}_device" in sub.columns:
            devs = sub[f"latency_b{b}_device"].dropna().unique()
            device = ", ".join(map(str, devs)) if len(devs) else None
        ax.set_xlabel(f"p50 latency per batch (ms), batch size {b}" + (f", {device}" if device else "") if b else "p50 latency (ms)")
        ax.set_ylabel(_metric_label(sub))
        ax.set_title(f"{task}: accuracy vs latency")
        if not pts:
            ax.text(0.5, 0.5, "no latency measurements for this task", ha="center", va="center", transform=ax.transAxes)
        front = pareto_front([(p[2], p[4]) for p in pts])
        for (model, variant, x, xs, y, ys), on in zip(pts, front):
            colour, marker = styles[variant]
            label = f"{model}: {variant}" if multi_model else variant
            ax.errorbar(x, y, xerr=xs, yerr=ys, fmt=marker, color=colour, ms=7, elinewidth=1, label=label, zorder=3)
        fx = [(p[2], p[4]) for p, on in zip(pts, front) if on]
        if fx:
            fx.sort()
            xs_, ys_ = zip(*fx)
            xmax = max(p[2] for p in pts)
            ax.step(list(xs_) + [max(xmax, xs_[-1])], list(ys_) + [ys_[-1]], where="post", color="0.35",
                    lw=1.2, ls="--", zorder=2)
            ax.scatter(xs_, ys_, s=170, facecolors="none", edgecolors="0.2", linewidths=1.0, zorder=4)
        if pts:
            handles, labels = ax.get_legend_handles_labels()
            handles.append(Line2D([], [], color="0.35", ls="--", marker="o", mfc="none", mec="0.2", ms=9, lw=1.2))
            labels.append("Pareto front")
            ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        return _save(fig, Path(figures_dir), f"accuracy_vs_latency_{_slug(task)}")


def plot_speedup_size_bars(df: pd.DataFrame, task: str, figures_dir: str | os.PathLike,
                           notes: list[str] | None = None) -> list[Path]:
    """Grouped bars per variant: speedup at each measured batch size and encoder-size ratio vs finetune."""
    notes = notes if notes is not None else []
    vt = variant_table(df, task)
    multi_model = vt["model"].nunique() > 1
    series: list[tuple[str, str]] = [(c, f"speedup, batch {c.split('_b')[1]}") for c in vt.columns if c.startswith("speedup_b")]
    series.append(("params_encoder_ratio", "encoder params (fraction of finetune)"))
    keep = vt[vt[[c for c, _ in series]].notna().any(axis=1)]
    for _, r in vt[~vt.index.isin(keep.index)].iterrows():
        msg = f"speedup_size_bars_{task}: skipped {r['model']}/{r['variant']}: no speedup or size recorded"
        log.info(msg)
        notes.append(msg)
    hatches = ("", "//", "..", "xx", "\\\\")
    with matplotlib.rc_context(figure_style()):
        n = max(len(keep), 1)
        fig = _new_figure((max(4.8, 1.0 + 1.1 * n), 3.8))
        ax = fig.add_subplot()
        width = 0.8 / len(series)
        x = np.arange(len(keep))
        for i, (col, label) in enumerate(series):
            vals = keep[col].to_numpy(dtype=float)
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(vals, nan=0.0), width,
                          label=label, color=OKABE_ITO[i % len(OKABE_ITO)], hatch=hatches[i % len(hatches)],
                          edgecolor="white", linewidth=0.5, zorder=3)
            for bar, v in zip(bars, vals):
                txt = "n/a" if np.isnan(v) else f"{v:.2f}"
                ax.text(bar.get_x() + bar.get_width() / 2, (0 if np.isnan(v) else v) + 0.02, txt,
                        ha="center", va="bottom", fontsize=9, rotation=90)
        ax.axhline(1.0, color="0.3", lw=0.8, ls=":", zorder=2)
        labels = [f"{m}:\n{v}" if multi_model else str(v) for m, v in zip(keep["model"], keep["variant"])]
        ax.set_xticks(x, [lab.replace("+", "+\n") for lab in labels])
        ax.set_ylabel("ratio to finetune (×)")
        ax.set_xlabel("variant")
        ax.set_title(f"{task}: speedup and encoder size vs finetune")
        top = np.nanmax(keep[[c for c, _ in series]].to_numpy(dtype=float)) if len(keep) else 1.0
        ax.set_ylim(0, max(1.2, float(top) * 1.3))
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        return _save(fig, Path(figures_dir), f"speedup_size_bars_{_slug(task)}")


# Cell states of the removal grid.
KEPT, REMOVED, IMPLIED, TRIED, HARD = 0, 1, 2, 3, 4


def parse_element(name: str) -> tuple[int, str, int | None]:
    """``"L4.head3"`` -> ``(4, "head", 3)``; kinds: head, ffn_group, ffn, attn. Raises ValueError otherwise."""
    m = _ELEMENT_RE.match(str(name).strip())
    if not m:
        raise ValueError(f"not an element name: {name!r} (expected e.g. L4.head3, L3.ffn_group2, L5.ffn, L2.attn)")
    return int(m.group(1)), m.group(2), (int(m.group(3)) if m.group(3) is not None else None)


def removal_grid(decisions: dict[str, Any]) -> tuple[np.ndarray, dict[str, int]]:
    """The per-layer removal map as an int array (rows = layers).

    Columns: ``n_heads`` heads, ``n_groups`` FFN groups, then ``attn`` (block skipped), ``ffn`` (block
    skipped), ``hard`` (sparse hard attention on). Cell states: KEPT, REMOVED, IMPLIED (inside a skipped
    block), TRIED (a candidate evaluated and kept), HARD (hard attention on). Returns (grid, dims).
    """
    removed: list[tuple[int, str, int | None]] = []
    names = decisions.get("removed")
    cands = decisions.get("candidates") or []
    if names is None:
        names = [c.get("element") for c in cands if c.get("accepted")]
    for n in names or []:
        try:
            removed.append(parse_element(n))
        except ValueError as exc:
            log.warning("removal map: %s; ignored", exc)
    tried: list[tuple[int, str, int | None]] = []
    for c in cands:
        if c.get("accepted"):
            continue
        try:
            tried.append((int(c["layer"]), str(c["kind"]), c.get("index")) if "layer" in c and "kind" in c
                         else parse_element(c.get("element", "")))
        except (ValueError, TypeError):
            continue
    hard = decisions.get("hard_attention") or {}
    hard_layers = [int(x) for x in (hard.get("layers_selected") or [])]
    every = removed + tried
    n_layers = int(decisions.get("n_layers") or max([e[0] for e in every] + hard_layers + [-1]) + 1)
    n_heads = int(decisions.get("n_heads") or max([e[2] for e in every if e[1] == "head" and e[2] is not None] + [11]) + 1)
    n_groups = int(decisions.get("n_groups") or max([e[2] for e in every if e[1] == "ffn_group" and e[2] is not None] + [-1]) + 1)
    dims = {"n_layers": n_layers, "n_heads": n_heads, "n_groups": n_groups}
    grid = np.full((n_layers, n_heads + n_groups + 3), KEPT, dtype=int)
    a_col, f_col, h_col = n_heads + n_groups, n_heads + n_groups + 1, n_heads + n_groups + 2

    def col(kind: str, index: int | None) -> int | None:
        if kind == "head" and index is not None and index < n_heads:
            return index
        if kind == "ffn_group" and index is not None and index < n_groups:
            return n_heads + index
        return {"attn": a_col, "ffn": f_col}.get(kind)

    for layer, kind, index in tried:
        c = col(kind, index)
        if c is not None and 0 <= layer < n_layers:
            grid[layer, c] = TRIED
    for layer, kind, index in removed:
        c = col(kind, index)
        if c is None or not 0 <= layer < n_layers:
            log.warning("removal map: element L%s.%s%s is outside the %d-layer grid; ignored", layer, kind, index or "", n_layers)
            continue
        grid[layer, c] = REMOVED
        if kind == "attn":
            grid[layer, :n_heads] = np.where(grid[layer, :n_heads] == REMOVED, REMOVED, IMPLIED)
        if kind == "ffn":
            grid[layer, n_heads:a_col] = np.where(grid[layer, n_heads:a_col] == REMOVED, REMOVED, IMPLIED)
    for layer in hard_layers:
        if 0 <= layer < n_layers:
            grid[layer, h_col] = HARD
    return grid, dims


_STATE_COLOURS = {
    KEPT: "#EDEDED",
    REMOVED: "#D55E00",  # vermillion
    IMPLIED: "#F2B999",  # vermillion tint
    TRIED: "#56B4E9",  # sky blue
    HARD: "#0072B2",  # blue
}
_STATE_LABELS = {
    KEPT: "kept",
    REMOVED: "removed",
    IMPLIED: "removed with its block",
    TRIED: "tried, kept (hurt accuracy)",
    HARD: "hard attention on",
}


def plot_removal_map(decisions: dict[str, Any], figures_dir: str | os.PathLike, name: str, title: str) -> list[Path]:
    """Draw :func:`removal_grid` as a layer × element map and save ``<name>.pdf|png``."""
    grid, d = removal_grid(decisions)
    n_layers, n_heads, n_groups = d["n_layers"], d["n_heads"], d["n_groups"]
    rgb = np.array([[matplotlib.colors.to_rgb(_STATE_COLOURS[int(s)]) for s in row] for row in grid]).reshape(n_layers, -1, 3)
    ncol = grid.shape[1]
    hard = decisions.get("hard_attention") or {}
    with matplotlib.rc_context(figure_style()):
        fig = _new_figure((max(5.0, 1.4 + 0.3 * ncol), max(2.6, 1.9 + 0.32 * n_layers)))
        ax = fig.add_subplot()
        ax.imshow(rgb, aspect="equal", interpolation="nearest", origin="upper")
        ax.grid(False)
        ax.set_xticks(np.arange(-0.5, ncol, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n_layers, 1), minor=True)
        ax.grid(which="minor", color="white", lw=1.0)
        ax.tick_params(which="minor", length=0)
        for x in (n_heads - 0.5, n_heads + n_groups - 0.5):
            ax.axvline(x, color="0.1", lw=1.4)
        ticks = list(range(n_heads)) + list(range(n_groups)) + ["attn", "FFN", "HA"]
        ax.set_xticks(np.arange(ncol), [str(t) for t in ticks], rotation=90)
        ax.set_yticks(np.arange(n_layers), [f"L{i}" for i in range(n_layers)])
        ax.set_ylabel("encoder layer")
        ax.set_xlabel("attention heads  |  FFN neuron groups  |  whole blocks, hard attention (HA)")
        for spine in ax.spines.values():
            spine.set_visible(False)
        sub = f"hard attention k={hard.get('k')}" if hard.get("layers_selected") else "no hard attention"
        ax.set_title(f"{title}\n{sub}")
        present = sorted(set(int(s) for s in np.unique(grid)) | {KEPT, REMOVED})
        handles = [Patch(facecolor=_STATE_COLOURS[s], edgecolor="0.5", label=_STATE_LABELS[s]) for s in present]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        return _save(fig, Path(figures_dir), name)


# ----------------------------------------------------------------------------------------------- render


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _write_index(figures_dir: Path, produced: dict[str, list[Path]], notes: list[str]) -> Path:
    desc = {
        "accuracy_vs_latency": "Dev metric vs p50 latency per variant (mean ± std over seeds); dashed step = Pareto front.",
        "speedup_size_bars": "Speedup at each measured batch size and encoder parameters, relative to finetune.",
        "removal_map": "What AxFormer removed, per layer (heads, FFN groups, whole blocks) and where hard attention is on.",
        "tables": "Per-task variant tables (Markdown and LaTeX) and the all-task headline table.",
        "verdicts": "Each variant against finetune: Δ dev metric and speedup with 95 % intervals, verdicts "
                    "(table: tables/verdicts.md|.tex; data: verdicts.csv beside summary.csv).",
    }
    lines = ["# Figures and tables", "", "Generated by `axformer.report.render`; do not edit by hand.", ""]
    for kind in ("accuracy_vs_latency", "speedup_size_bars", "removal_map", "tables", "verdicts"):
        files = produced.get(kind, [])
        lines += [f"## {kind}", "", desc[kind], ""]
        lines += [f"- [{_rel(p, figures_dir)}]({_rel(p, figures_dir)})" for p in files] or ["- (none produced)"]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path = figures_dir / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def render(results_dir: str | os.PathLike, figures_dir: str | os.PathLike, summary_csv: str | os.PathLike,
           batch_size: int = 32, verdicts_csv: str | os.PathLike | None = None, resamples: int | None = None,
           bootstrap_seed: int | None = None) -> list[Path]:
    """Collect results and write the summary CSV, tables, figures and ``figures/README.md``.

    ``batch_size`` picks the latency used in plots and the headline table (falls back to 1). Runs with
    no latency are skipped in latency plots with a log line (also listed under Notes in the README).
    The verdict table (axformer.verdicts) goes to ``verdicts_csv`` (default: verdicts.csv beside the summary),
    its bootstrap drawing ``resamples`` resamples seeded with ``bootstrap_seed`` (axformer.stats defaults).
    Returns every file written.
    """
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    df = collect(results_dir)
    out: list[Path] = [write_summary(df, summary_csv)]
    produced: dict[str, list[Path]] = {}
    notes: list[str] = []
    if df.empty:
        msg = f"no metrics.json found under {results_dir}; only an empty summary was written"
        log.info(msg)
        notes.append(msg)
    tables_dir = figures_dir / "tables"
    for task in _task_order(df["task"].dropna().unique()) if not df.empty else []:
        vt = variant_table(df, task)
        metric = vt["metric"].iloc[0]
        for model in sorted(set(vt["model"]) - set(vt.loc[vt["variant"] == "finetune", "model"])):
            msg = f"tables/{task}: model {model} has no 'finetune' runs, so its size ratios are left empty"
            log.info(msg)
            notes.append(msg)
        md = tables_dir / f"{task}.md"
        atomic_write_text(md, f"# {task}: variants (dev {metric}, mean ± sample std over seeds)\n\n" + to_markdown(vt)
                          + "\nSpeedup: p50 latency of finetune / p50 of the variant (same batch size, mean over seeds). "
                            "×FT: parameters relative to finetune of the same model.\n")
        tex = tables_dir / f"{task}.tex"
        to_latex(vt, tex, caption=f"{task}: dev {metric} (mean ± std over seeds), size and speedup relative to finetune.")
        produced.setdefault("tables", []).extend([md, tex])
        produced.setdefault("accuracy_vs_latency", []).extend(plot_accuracy_vs_latency(df, task, figures_dir, batch_size, notes))
        produced.setdefault("speedup_size_bars", []).extend(plot_speedup_size_bars(df, task, figures_dir, notes))
    if not df.empty:
        for _, r in df[df["has_decisions"]].iterrows():
            dpath = results_dir / r["run_dir"] / "decisions.json"
            decisions = _read_json(dpath)
            if not isinstance(decisions, dict):
                raise ConfigError(f"{dpath}: malformed decisions.json (top level must be a JSON object).")
            name = f"removal_map_{_slug(r['task'])}_{_slug(r['model'])}_{_slug(r['variant'])}_seed{r['seed']}"
            title = f"{r['task']} · {r['model']} · {r['variant']} · seed {r['seed']}"
            produced.setdefault("removal_map", []).extend(plot_removal_map(decisions, figures_dir, name, title))
        headline = all_tasks_table(df, batch_size)
        at = tables_dir / "all_tasks.md"
        atomic_write_text(at, "# All tasks: dev metric ± std over seeds (speedup vs finetune)\n\n" + to_markdown(headline))
        produced.setdefault("tables", []).append(at)
        cost = search_cost_table(df)
        if len(cost):
            sc = tables_dir / "search_cost.md"
            atomic_write_text(sc, "# AxFormer searches: elements removed, passes over the search split, wall time vs fine-tuning\n\n"
                              + to_markdown(cost))
            sct = tables_dir / "search_cost.tex"
            to_latex(cost, sct, caption="AxFormer searches: elements removed, passes, search-split loss before and after, wall time vs fine-tuning.")
            produced.setdefault("tables", []).extend([sc, sct])
    from axformer import stats, verdicts

    vfiles = verdicts.render(df, results_dir, figures_dir,
                             verdicts_csv if verdicts_csv is not None else Path(summary_csv).with_name("verdicts.csv"),
                             batch_size, stats.DEFAULT_RESAMPLES if resamples is None else resamples,
                             stats.DEFAULT_SEED if bootstrap_seed is None else bootstrap_seed, notes)
    out.append(vfiles[0])
    if len(vfiles) > 1:
        produced["verdicts"] = vfiles[1:]
    for files in produced.values():
        out.extend(files)
    out.append(_write_index(figures_dir, produced, notes))
    return out
