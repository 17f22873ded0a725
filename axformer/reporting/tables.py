"""Display tables of the report (DESIGN §4): per-task variant tables, the all-task headline table, the
search-cost table, the compute table and the timing-protocol table, as DataFrames and as Markdown / LaTeX
(booktabs).

They read the run frame :func:`axformer.reporting.report.collect` builds (one row per run, nested record keys joined
with ``_``, plus ``family`` and ``commands`` from the typed record); variant order and grouping come from the
record (the family of each run), not from step names.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from axformer.records.record import STEP_BLOCKS
from axformer.taskdata.tasks import TASKS
from axformer.utils import ConfigError, atomic_write_text

log = logging.getLogger(__name__)

_LAT_RE = re.compile(r"^latency_b(\d+)_(.+)$")
DASH = "–"

# Row order of the families (axformer.records.record.FAMILIES) after finetune; majority comes last.
FAMILY_ORDER: dict[str, int] = {"reference": 0, "axformer": 1, "compression": 2, "peer": 3}


def variant_sort_key(variant: str, family: str | None = None) -> tuple:
    """Row order: ``finetune`` first, ``majority`` last; the others by family (the kind of variant the record
    says it is, when given), then by the number of steps in the chain, then by name."""
    if variant == "finetune":
        return (0,)
    if variant == "majority":
        return (9,)
    return (1, FAMILY_ORDER.get(family or "", len(FAMILY_ORDER)), variant.count("+"), variant)


def families(df: pd.DataFrame) -> dict[str, str]:
    """variant -> family (first run's) of a run frame; empty without a ``family`` column."""
    if "family" not in df.columns or df.empty:
        return {}
    return {str(v): str(f) for v, f in df.drop_duplicates("variant")[["variant", "family"]].itertuples(index=False)}


def is_quantized(df: pd.DataFrame) -> pd.Series:
    """Runs whose chain ends in a quantize step (they share their parent's search)."""
    if "commands" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["commands"].map(lambda c: "quantize" in str(c).split(">"))


def task_order(tasks: Iterable[str]) -> list[str]:
    """``tasks`` once each, the built-in tasks in their declared order first, then the others by name."""
    known = list(TASKS)
    return sorted(set(tasks), key=lambda t: (known.index(t) if t in known else len(known), t))


def measured_batch_sizes(df: pd.DataFrame, field: str = "p50_ms") -> list[int]:
    sizes = set()
    for col in df.columns:
        m = _LAT_RE.match(col)
        if m and m.group(2) == field and df[col].notna().any():
            sizes.add(int(m.group(1)))
    return sorted(sizes)


def pick_batch(df: pd.DataFrame, preferred: int = 32) -> int | None:
    """The batch size to plot: ``preferred`` if any run measured it, else 1, else the smallest measured."""
    sizes = measured_batch_sizes(df)
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


def num_column(sub: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` of ``sub`` as numbers (NaN where missing or not numeric; all NaN when absent)."""
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
    batches = measured_batch_sizes(sub, "speedup") or measured_batch_sizes(sub)
    rows = []
    for (model, variant), g in sub.groupby(["model", "variant"], sort=False):
        metric_names = g["metric_name"].dropna().unique() if "metric_name" in g.columns else []
        dev = num_column(g, "metric_dev")
        row: dict[str, Any] = {
            "model": model,
            "variant": variant,
            "metric": metric_names[0] if len(metric_names) else "metric",
            "n_seeds": int(g["seed"].nunique()),
            "metric_mean": dev.mean(),
            "metric_std": dev.std(ddof=1) if dev.notna().sum() > 1 else np.nan,
            **{f"{name}_mean": num_column(g, f"metric_secondary_{name}").mean() for name in extra},
            "_enc": num_column(g, "size_params_encoder").mean(),
            "_tot": num_column(g, "size_params_total").mean(),
        }
        for b in batches:
            row[f"speedup_b{b}"] = _speedup(g, b).mean()
        row["size_mb"] = num_column(g, "size_bytes_on_disk").mean() / 1e6
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
    fam = families(sub)
    order = sorted(range(len(table)), key=lambda i: (str(table["model"].iloc[i]),
                                                     variant_sort_key(str(table["variant"].iloc[i]), fam.get(str(table["variant"].iloc[i])))))
    return table.iloc[order].reset_index(drop=True)


def format_number(x: Any, digits: int = 3, suffix: str = "") -> str:
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return DASH if x is None else str(x)
    return DASH if math.isnan(xf) else f"{xf:.{digits}f}{suffix}"


def format_mean_std(mean: Any, std: Any, digits: int = 3) -> str:
    s = format_number(mean, digits)
    if s != DASH and format_number(std, digits) != DASH:
        s += f" ± {format_number(std, digits)}"
    return s


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """Turn a :func:`variant_table` into display strings (``mean ± std``, ``1.37×``, ``–`` for missing)."""
    if "metric_mean" not in table.columns:
        return table.apply(lambda col: col.map(lambda v: format_number(v) if isinstance(v, float) else (DASH if v is None else str(v))))
    metric = table["metric"].iloc[0] if len(table) else "metric"
    out = pd.DataFrame(index=table.index)
    if table["model"].nunique() > 1:
        out["Model"] = table["model"].astype(str)
    out["Variant"] = table["variant"].astype(str)
    out["Seeds"] = table["n_seeds"].astype(int).astype(str)
    out[f"Dev {metric}"] = [format_mean_std(m, s) for m, s in zip(table["metric_mean"], table["metric_std"])]
    for col in table.columns:  # secondary metrics a table carries (SQuAD: exact_match)
        m = re.fullmatch(r"(.+)_mean", col)
        if m and col != "metric_mean":
            out[f"Dev {m.group(1)}"] = table[col].map(lambda v: format_number(v))
    out["Encoder params (×FT)"] = table["params_encoder_ratio"].map(lambda v: format_number(v, 2))
    out["Total params (×FT)"] = table["params_total_ratio"].map(lambda v: format_number(v, 2))
    for col in table.columns:
        m = re.fullmatch(r"speedup_b(\d+)", col)
        if m:
            out[f"Speedup b{m.group(1)}"] = table[col].map(lambda v: format_number(v, 2, "×"))
    out["Size (MB)"] = table["size_mb"].map(lambda v: format_number(v, 1))
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
    lines = ["% generated by axformer.reporting.report; needs \\usepackage{booktabs}"]
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
    tasks = task_order(df["task"].dropna().unique()) if "task" in df.columns else []
    multi_model = df["model"].nunique() > 1 if "model" in df.columns else False
    fam = families(df)
    cells: dict[str, dict[str, str]] = {}
    keys: dict[str, tuple] = {}
    for task in tasks:
        sub = df[df["task"] == task]
        b = pick_batch(sub, batch_size)
        vt = variant_table(df, task)
        for _, r in vt.iterrows():
            label = f"{r['model']}: {r['variant']}" if multi_model else str(r["variant"])
            keys[label] = (str(r["model"]), variant_sort_key(str(r["variant"]), fam.get(str(r["variant"]))))
            cell = format_mean_std(r["metric_mean"], r["metric_std"])
            sp = r.get(f"speedup_b{b}", np.nan) if b is not None else np.nan
            if format_number(sp) != DASH:
                cell += f" ({format_number(sp, 2, '×')})"
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

    One row per (task, model, variant) that ran a search (``search_passes`` present), quantized copies left out
    (they share their parent's search); values are means over seeds. ``Search / fine-tune`` divides the
    search wall time by the wall time of the ``finetune`` training of the same task and model (the issue's
    cost target is < 1).
    """
    need = {"search_passes", "search_wall_s", "task", "variant"}
    if df.empty or not need <= set(df.columns):
        return pd.DataFrame(columns=["Task", "Variant"])
    sub = df[df["search_passes"].notna() & ~is_quantized(df)]
    fam = families(df)
    rows = _peer_search_rows(df)  # peers that score and remove heads / neurons (Fisher, ...): searches too
    for (task, model, variant), g in sub.groupby(["task", "model", "variant"], sort=False):
        ft = df[(df["task"] == task) & (df["model"] == model) & (df["variant"] == "finetune")]
        ft_wall = num_column(ft, "train_wall_s").mean() if "train_wall_s" in ft.columns else np.nan
        wall = num_column(g, "search_wall_s").mean()
        ha = g["search_hard_attention_layers"].iloc[0] if "search_hard_attention_layers" in g.columns else None
        rows.append({
            "Task": str(task),
            "Variant": str(variant) if df["model"].nunique() == 1 else f"{model}: {variant}",
            "Removed": format_number(g["search_removed"].map(_count_list).mean() if "search_removed" in g.columns else np.nan, 0),
            "Hard-attention layers": DASH if not isinstance(ha, str) else (ha if ha != "[]" else "none"),
            "Passes": format_number(num_column(g, "search_passes").mean(), 0),
            "Search loss": f"{format_number(num_column(g, 'search_loss_before').mean())} → {format_number(num_column(g, 'search_loss_after').mean())}",
            "Search (s)": format_number(wall, 0),
            "Fine-tune (s)": format_number(ft_wall, 0),
            "Search / fine-tune": format_number(wall / ft_wall if ft_wall else np.nan, 2),
            "_key": (task, variant_sort_key(str(variant), fam.get(str(variant)))),
        })
    if not rows:
        return pd.DataFrame(columns=["Task", "Variant"])
    out = pd.DataFrame(rows)
    order = task_order(out["Task"].unique())
    out["_t"] = out["Task"].map(order.index)
    out = out.sort_values(["_t", "_key"], kind="stable").drop(columns=["_t", "_key"])
    return out.reset_index(drop=True)


def _peer_search_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """search_cost rows of the peers that removed heads / FFN neurons by a score (their ``baseline.info``
    records ``heads_before``/``_after`` or ``neurons_before``/``_after``: the Fisher mask search, head
    pruning): units removed, their wall time (``baseline_wall_s``) and the search-split loss of the parent
    ``finetune`` -> the pruned model (the whole search split, from metrics.json; no passes count).
    Quantized copies are left out (they share their parent's search)."""
    counted = [c for c in ("baseline_info_heads_before", "baseline_info_neurons_before") if c in df.columns]
    if not counted or "baseline_wall_s" not in df.columns:
        return []
    sub = df[df[counted].notna().any(axis=1) & df["baseline_wall_s"].notna() & ~is_quantized(df)]
    fam = families(df)
    rows = []
    for (task, model, variant), g in sub.groupby(["task", "model", "variant"], sort=False):
        ft = df[(df["task"] == task) & (df["model"] == model) & (df["variant"] == "finetune")]
        ft_wall = num_column(ft, "train_wall_s").mean() if "train_wall_s" in ft.columns else np.nan
        wall = num_column(g, "baseline_wall_s").mean()
        removed = [(num_column(g, f"baseline_info_{k}_before") - num_column(g, f"baseline_info_{k}_after")).mean()
                   if f"baseline_info_{k}_after" in g.columns else np.nan for k in ("heads", "neurons")]
        rows.append({
            "Task": str(task),
            "Variant": str(variant) if df["model"].nunique() == 1 else f"{model}: {variant}",
            "Removed": ", ".join(f"{format_number(n, 0)} {k}" for n, k in zip(removed, ("heads", "neurons"))
                                 if not math.isnan(n)),
            "Hard-attention layers": DASH,
            "Passes": DASH,
            "Search loss": f"{format_number(num_column(ft, 'metric_search_loss').mean())} → {format_number(num_column(g, 'metric_search_loss').mean())}",
            "Search (s)": format_number(wall, 0),
            "Fine-tune (s)": format_number(ft_wall, 0),
            "Search / fine-tune": format_number(wall / ft_wall if ft_wall else np.nan, 2),
            "_key": (task, variant_sort_key(str(variant), fam.get(str(variant)))),
        })
    return rows


# The step blocks whose wall time the compute table adds up, with the command that writes each
# (axformer.records.record.STEP_BLOCKS, the record's contract) and the table's column.
_COMPUTE_COLUMNS: dict[str, str] = {"train": "Fine-tuning", "search": "Searches", "distill": "Distillation",
                                    "baseline": "Peers"}
_COMPUTE_STEPS: tuple[tuple[str, str, str], ...] = tuple((b, STEP_BLOCKS[b], c) for b, c in _COMPUTE_COLUMNS.items())


def _step_records(cell: Any) -> dict[str, str]:
    """command -> step record path of a run's lineage (the ``steps`` cell, JSON); the last step of a command
    wins, as its block is the one metrics.json holds."""
    try:
        steps = json.loads(cell) if isinstance(cell, str) else None
    except ValueError:
        steps = None
    out: dict[str, str] = {}
    for s in steps if isinstance(steps, list) else []:
        if isinstance(s, dict) and s.get("command") and s.get("record"):
            out[str(s["command"])] = str(s["record"])
    return out


def compute_table(df: pd.DataFrame) -> pd.DataFrame:
    """Compute per task and model, in minutes: the wall time each step recorded (fine-tuning loop, search,
    distillation, peer method), every step counted once although its block is copied into each descendant's
    record (a step is its record path in the lineage or, in older records without the step's command, its
    block value within the seed), plus the measurement jobs where the record has ``measure.wall_s``. Model
    loading and process start-up are outside these clocks, so the sum is a lower bound of the job time."""
    if df.empty or "task" not in df.columns:
        return pd.DataFrame(columns=["Task", "Model"])
    rows = []
    for (task, model), g in df.groupby(["task", "model"], sort=False):
        seen: set[str] = set()
        total = {col: 0.0 for _, _, col in _COMPUTE_STEPS}
        for _, r in g.iterrows():
            lineage = _step_records(r.get("steps"))
            for block, command, col in _COMPUTE_STEPS:
                wall = pd.to_numeric(r.get(f"{block}_wall_s"), errors="coerce")
                if pd.isna(wall):
                    continue
                # a step is known by its record path; older records name their steps by bare path (no command),
                # and there the same block value in the same seed is the same step, copied into each descendant
                keys = {f"{r.get('seed')}#{block}#{float(wall)!r}", *filter(None, [lineage.get(command)])}
                if not keys & seen:
                    total[col] += float(wall)
                seen |= keys
        measured = num_column(g, "measure_wall_s")
        row = {"Task": str(task), "Model": str(model), "Runs": str(len(g)),
               "Seeds": str(g["seed"].nunique()) if "seed" in g.columns else DASH}
        row.update({col: format_number(v / 60, 1) for col, v in total.items()})
        row["Measurement"] = (f"{format_number(measured.sum() / 60, 1)} ({int(measured.notna().sum())} of {len(g)} runs)"
                              if measured.notna().any() else DASH)
        row["Total"] = format_number((sum(total.values()) + measured.sum()) / 60, 1)
        rows.append(row)
    out = pd.DataFrame(rows)
    order = task_order(out["Task"].unique())
    out["_t"] = out["Task"].map(order.index)
    out = out.sort_values(["_t", "Model"], kind="stable").drop(columns="_t").reset_index(drop=True)
    return out if df["model"].nunique() > 1 else out.drop(columns="Model")


# ----------------------------------------------------------------------------------------- timing protocol


def latency_passes(row: pd.Series | dict[str, Any], b: int, where: str) -> list[dict[str, Any]] | None:
    """Every timing pass of a run's latency block at batch ``b`` (superseded noisy passes included), or None
    for a record without passes (a single interleaved job). ``passes`` reaches the run frame as a JSON string
    (report._flatten keeps lists as JSON); ConfigError naming ``where`` when it is not a list of passes."""
    raw = row.get(f"latency_b{b}_passes")
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    try:
        passes = json.loads(raw) if isinstance(raw, str) else list(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: latency batch {b} 'passes' is not a JSON list ({exc}); "
                          "re-run its timing.") from exc
    if not isinstance(passes, list) or not all(isinstance(p, dict) and "speedup" in p for p in passes):
        raise ConfigError(f"{where}: latency batch {b} 'passes' must be a list of objects with a 'speedup'; "
                          "re-run its timing.")
    return passes


def _ci_text(value: Any, ci: Any) -> str:
    """``1.234 [1.200, 1.250]`` from a value and its JSON interval (the value alone without one)."""
    text = format_number(value)
    try:
        lo, hi = json.loads(ci) if isinstance(ci, str) else ci
        return f"{text} [{format_number(lo)}, {format_number(hi)}]"
    except (TypeError, ValueError):
        return text


def timing_table(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The timing protocol as it ran (DESIGN §6), from the records alone: one row per timing group (task,
    model, seed) with its pass set(s), the fewest passes any of its figures rests on (against the
    ``measure.passes`` it was configured with), its noisy passes and how many were repeated, the worst host
    noise of its passes, the wall seconds of its pass processes, and the A/A reading (``finetune`` against
    itself) at each batch. Also a summary over the profile: groups, timed runs, runs whose figure rests on fewer passes
    than configured or on none, distinct pass sets, the A/A range. Empty when no run has timing passes."""
    batches = measured_batch_sizes(df, "passes")
    if df.empty or not batches:
        return pd.DataFrame(columns=["Task", "Seed"]), {}
    rows, aa_all, short, single, sets_all = [], [], 0, 0, set()
    timed_all = 0
    for (task, model, seed), g in df.groupby(["task", "model", "seed"], sort=False):
        timed = g[g["latency_measured"].eq(True)] if "latency_measured" in g.columns else g.iloc[0:0]
        if timed.empty:
            continue
        timed_all += len(timed)
        # a pass is one process that times every run of its group at every batch: count it once
        unique: dict[tuple, dict[str, Any]] = {}
        fewest: list[int] = []  # per run with passes: the fewest kept passes over its batches
        for _, r in timed.iterrows():
            want = pd.to_numeric(r.get("measure_passes"), errors="coerce")
            kept_min = None
            for b in batches:
                passes = latency_passes(r, b, str(r.get("run_dir")))
                if passes is None:
                    continue
                kept = sum(p.get("superseded_by") is None for p in passes)
                kept_min = kept if kept_min is None else min(kept_min, kept)
                for p in passes:
                    unique[(p.get("pass_set"), p.get("pass"))] = p
            if kept_min is None:
                single += 1
                continue
            short += int(not pd.isna(want) and kept_min < want)
            fewest.append(kept_min)
        hosts = [p.get("host") or {} for p in unique.values()]
        sets = sorted({str(k[0]) for k in unique if k[0]})
        sets_all.update(sets)
        other = [h["other_cpu_frac"] for h in hosts if isinstance(h.get("other_cpu_frac"), (int, float))]
        steal = [h["steal_frac"] for h in hosts if isinstance(h.get("steal_frac"), (int, float))]
        wall = [h["wall_s"] for h in hosts if isinstance(h.get("wall_s"), (int, float))]
        row = {"Task": str(task), "Model": str(model), "Seed": str(seed), "Pass set": ", ".join(sets) or DASH,
               "Timed runs": str(len(timed)), "Passes (fewest)": str(min(fewest)) if fewest else DASH,
               "Noisy (repeated)": f"{sum(bool(p.get('noisy')) for p in unique.values())} "
                                   f"({sum(p.get('superseded_by') is not None for p in unique.values())})",
               "Foreign CPU (max)": format_number(max(other), 3) if other else DASH,
               "Steal (max)": format_number(max(steal), 3) if steal else DASH,
               "Pass wall (s)": format_number(sum(wall), 0) if wall else DASH,
               "CPU": next((str(h["cpu_model"]) for h in hosts if h.get("cpu_model")), DASH)}
        ft = timed[timed["variant"] == "finetune"]
        for b in batches:
            sp = num_column(ft, f"latency_b{b}_speedup")
            ci_col = f"latency_b{b}_speedup_ci"
            ci = ft[ci_col].iloc[0] if ci_col in ft.columns and len(ft) else None
            row[f"A/A b{b}"] = _ci_text(sp.iloc[0], ci) if len(sp) and not pd.isna(sp.iloc[0]) else DASH
            aa_all.extend(float(v) for v in sp.dropna())
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=["Task", "Seed"]), {}
    order = task_order(out["Task"].unique())
    out["_t"] = out["Task"].map(order.index)
    out = out.sort_values(["_t", "Model", "Seed"], kind="stable").drop(columns="_t").reset_index(drop=True)
    if out["Model"].nunique() == 1:
        out = out.drop(columns="Model")
    summary = {"groups": len(out), "timed_runs": timed_all, "runs_without_passes": single,
               "runs_short_of_passes": short, "pass_sets": sorted(sets_all),
               "aa_min": min(aa_all) if aa_all else None, "aa_max": max(aa_all) if aa_all else None,
               "aa_within_3pct": sum(0.97 <= v <= 1.03 for v in aa_all), "aa_readings": len(aa_all)}
    return out, summary


def timing_summary_text(summary: dict[str, Any]) -> str:
    """The timing table's summary as one Markdown paragraph. Each group's time job stamps its own pass-set id
    (``ps-<UTC start>-<commit>``), so the ids say when and from which commit the profile was timed."""
    sets = summary["pass_sets"]
    stamps = sorted(m.group(1) for s in sets if (m := re.match(r"^ps-(\d{8}T\d{6})-", s)))
    commits = sorted({s.rsplit("-", 1)[-1] for s in sets if s.count("-") >= 2})
    when = (f", started {_stamp(stamps[0])} to {_stamp(stamps[-1])} UTC" if stamps else "")
    aa = (f"A/A speedups (finetune against itself) {format_number(summary['aa_min'])}–"
          f"{format_number(summary['aa_max'])}, {summary['aa_within_3pct']} of {summary['aa_readings']} readings in "
          f"[0.97, 1.03]" if summary["aa_readings"] else "no A/A readings")
    return (f"{summary['groups']} timing groups, {summary['timed_runs']} timed runs: "
            f"{summary['runs_without_passes']} without timing passes (a single interleaved job), "
            f"{summary['runs_short_of_passes']} resting on fewer passes than configured; "
            f"{len(sets)} pass-set id{'s' if len(sets) != 1 else ''} (one per time job) from commit"
            f"{'s' if len(commits) != 1 else ''} {', '.join(commits) or DASH}{when}; {aa}.\n")


def _stamp(s: str) -> str:
    """``20261206T225906`` -> ``2026-12-06 22:59``."""
    return f"{s[0:4]}-{s[4:6]}-{s[6:8]} {s[9:11]}:{s[11:13]}"
