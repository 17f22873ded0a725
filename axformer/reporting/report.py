"""Collect run results into the report: tidy CSVs, tables and figures.

Reads ``results/<task>/<model>/<variant>/seed<k>/metrics.json`` through the typed record
(:class:`axformer.records.record.Run`; ``decisions.json`` beside it for AxFormer-like runs) and writes:

- ``summary.csv`` (narrow, one row per run) and the long ``latency.csv``, ``elements.csv`` and
  ``baseline_scores.csv`` beside it (:mod:`axformer.reporting.tidy`);
- ``figures/tables/<task>.md|.tex``, ``all_tasks.md``, ``search_cost.md|.tex`` (:mod:`axformer.reporting.tables`);
- ``figures/accuracy_vs_latency_<task>``, ``speedup_size_bars_<task>`` and
  ``removal_map_<task>_<model>_<variant>_seed<k>`` as PDF + PNG (:mod:`axformer.reporting.figures`);
- ``verdicts.csv`` with its table and figure (:mod:`axformer.reporting.verdicts`) and ``figures/README.md``, an index.

:func:`render` does all of it. Internally the runs are one frame (:func:`collect`: nested record keys joined
with ``_``, plus the run's ``family`` and ``commands`` read from its record) that the tables, figures and
verdicts share; only the tidy CSVs are written out.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from axformer.records import record_schema
from axformer.records.record import Run
from axformer.reporting import tidy
from axformer.reporting.figures import frame_styles, plot_accuracy_vs_latency, plot_removal_map, plot_speedup_size_bars
from axformer.utils import slug
from axformer.reporting.tables import (all_tasks_table, compute_table, families, search_cost_table, task_order,
                                       timing_summary_text, timing_table, to_latex, to_markdown, variant_sort_key,
                                       variant_table)
from axformer.utils import ConfigError, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["collect", "runs", "frame", "load_run", "render", "write_summary", "ID_COLUMNS"]

ID_COLUMNS: tuple[str, ...] = ("task", "model", "variant", "seed", "profile")
# Top-level blocks that are dicts (or null when not measured); a null block adds no columns.
_BLOCKS = ("metric", "size", "memory", "env", "train", "search")


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


def load_run(path: Path) -> Run:
    """One metrics.json as a :class:`Run` (ConfigError naming the file when it is not one)."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: malformed metrics.json (top level must be a JSON object, got {type(data).__name__}).")
    return Run.from_json(data, path)


# A metrics.json is trusted for nothing it could get wrong (issue 32): each metric within its metric's range,
# every latency > 0, and the run it claims to be is the run its folder says it is.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "macro_f1": (0.0, 1.0), "exact_match": (0.0, 1.0),
    "mcc": (-1.0, 1.0), "pearson": (-1.0, 1.0), "spearman": (-1.0, 1.0)}
_POSITIVE_LATENCY = ("p50_ms", "p90_ms", "mean_ms", "baseline_p50_ms", "baseline_p90_ms", "speedup")
_FIX = "delete the file (or the run folder) and re-run that job"


def _in_range(name: str, value: Any) -> bool:
    lo, hi = METRIC_RANGES.get(name, (-float("inf"), float("inf")))
    return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi


def check_run(run_dir: str, run: Run, path: Path) -> None:
    """ConfigError naming ``path`` unless the record is the run of its folder ``<task>/<model>/<variant>/seed<k>``
    and its numbers are possible: metric values in their metric's range, latencies and speedups > 0."""
    from axformer.records.results import model_name

    parts = Path(run_dir).parts
    if len(parts) != 4 or not re.fullmatch(r"seed(0|[1-9][0-9]*)", parts[3]):
        raise ConfigError(f"{path}: not in a <task>/<model>/<variant>/seed<k> folder (k without leading zeros); "
                          f"{_FIX}.")
    claims = {"task": run.task, "model": model_name(str(run.model)), "variant": run.variant, "seed": f"seed{run.seed}"}
    for (key, claim), folder in zip(claims.items(), parts):
        if claim != folder:
            raise ConfigError(f"{path}: says {key} {claim!r} but lies in the folder of {key} {folder!r}; {_FIX}.")
    m = run.metric
    values = {m.name: m.dev, f"{m.name} (search)": m.search, **(m.secondary or {})}
    for label, value in values.items():
        name = label.split(" ")[0]
        if value is None and label != m.name:
            continue
        if not _in_range(name, value):
            lo, hi = METRIC_RANGES.get(name, (None, None))
            raise ConfigError(f"{path}: metric {label} = {value!r} is outside [{lo}, {hi}]; {_FIX}.")
    for entry in run.latency or []:
        for key in _POSITIVE_LATENCY:
            v = getattr(entry, key)
            if v is not None and not (isinstance(v, (int, float)) and v > 0 and v < float("inf")):
                raise ConfigError(f"{path}: latency at batch {entry.batch_size}: {key} = {v!r} must be > 0; {_FIX}.")


def runs(results_dir: str | os.PathLike) -> list[tuple[str, Run]]:
    """(run_dir relative to ``results_dir``, Run) of every ``<task>/<model>/<variant>/seed<k>/metrics.json``,
    each checked (:func:`check_run`), no two the same run (task, model, variant, seed)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"results directory {root} does not exist; run the experiments first or pass the right --results.")
    # exactly the DESIGN layout <task>/<model>/<variant>/seed<k>/metrics.json: another profile's results
    # tree nested inside (results/bench/...) is not this profile's runs
    out: list[tuple[str, Run]] = []
    seen: dict[tuple, Path] = {}
    for p in sorted(root.glob("*/*/*/seed*/metrics.json")):
        run_dir, run = p.parent.relative_to(root).as_posix(), load_run(p)
        check_run(run_dir, run, p)
        key = (run.task, run.model, run.variant, run.seed)
        if key in seen:
            raise ConfigError(f"{p}: the same run (task, model, variant, seed) as {seen[key]}; keep one of them.")
        seen[key] = p
        out.append((run_dir, run))
    return out


def read_all_predictions(results_dir: Path, found: list[tuple[str, Run]]) -> None:
    """Read every predictions.npz beside the runs' metrics.json (a run without one is allowed: older results),
    so a truncated or foreign file stops the report before it writes anything."""
    from axformer import stats

    for run_dir, _run in found:
        path = results_dir / run_dir / stats.PREDICTIONS_FILE
        if not path.exists():
            continue
        try:
            stats.read_predictions(path)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile, EOFError, KeyError...: one line naming it
            raise ConfigError(f"{path}: not a readable predictions.npz ({type(exc).__name__}: {exc}); "
                              "delete it and re-run the measure job.") from None


def _run_row(run_dir: str, run: Run, results_dir: Path) -> dict[str, Any]:
    data = run.to_json()
    parts = Path(run_dir).parts
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
            log.warning("%s: %s=%r in the file but %r in the path; using the file's value", run_dir, key, data[key], from_path[key])
        row[key] = value
    row["family"] = run.family()
    row["commands"] = ">".join(run.commands())
    for key, value in data.items():
        if key in ID_COLUMNS:
            continue
        if key == "latency":
            row.update(_expand_latency(value, Path(run_dir)))
        elif key in _BLOCKS and value is None:
            continue
        elif isinstance(value, dict):
            row.update(_flatten(value, key))
        elif isinstance(value, (list, tuple)):
            row[key] = json.dumps(value)
        else:
            row[key] = value
    row.setdefault("latency_measured", False)
    row["run_dir"] = run_dir
    row["has_decisions"] = (results_dir / run_dir / "decisions.json").is_file()
    return row


def frame(found: list[tuple[str, Run]], results_dir: str | os.PathLike) -> pd.DataFrame:
    """The run frame of :func:`runs`' output (see :func:`collect`)."""
    rows = [_run_row(d, r, Path(results_dir)) for d, r in found]
    if not rows:
        return pd.DataFrame(columns=[*ID_COLUMNS, "family", "commands", "run_dir"])
    df = pd.DataFrame(rows)
    first = [c for c in ID_COLUMNS if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    fam = families(df)
    keys = df["variant"].map(lambda v: variant_sort_key(str(v), fam.get(str(v))))
    order = sorted(range(len(df)), key=lambda i: (_plain(df["task"].iloc[i]), _plain(df["model"].iloc[i]), keys.iloc[i],
                                                 _plain(df["seed"].iloc[i])))
    return df.iloc[order].reset_index(drop=True)


def _plain(v: Any) -> tuple:
    return (0, v) if isinstance(v, (int, np.integer)) else (1, str(v))


def collect(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Read every ``<task>/<model>/<variant>/seed<k>/metrics.json`` under ``results_dir`` into one DataFrame
    (the internal run frame the tables, figures and verdicts share; summary.csv is :mod:`axformer.reporting.tidy`'s).

    Nested dicts become ``_``-joined columns (``metric_dev``, ``size_params_encoder``); the latency list
    becomes ``latency_b<batch>_<field>`` columns; ``family`` and ``commands`` come from the typed record.
    Malformed JSON or a record that breaks the schema raises :class:`ConfigError` naming the file.
    """
    return frame(runs(results_dir), results_dir)


def write_summary(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV atomically (temp file + rename); returns the path."""
    path = Path(path)
    atomic_write_text(path, df.to_csv(index=False))
    return path


# ----------------------------------------------------------------------------------------------- render


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


# The tasks the authors released a split and a search for (amrnag/Specialized-Transformers: CoLA, RTE, WNLI, "the
# three tasks where the conventional fine-tuned models achieve lowest accuracies"); their N = 0.5 is meant for them.
RELEASED_RULE_TASKS = ("cola", "rte", "wnli")


def extrapolation_notes(df) -> list[str]:
    """One note per task where an accept_rule=official variant ran outside the released tasks: there the
    released rule is our extrapolation (the authors' rule for high-accuracy tasks is not released)."""
    if df.empty or "variant" not in df:
        return []
    rows = df[df["variant"].astype(str).str.contains("axformer_official")]
    return [f"{task}: {', '.join(sorted(set(rows.loc[rows['task'] == task, 'variant'])))} is an extrapolation: the "
            "released acceptance rule (N = 0.5 of the search split no worse) is the authors' rule for the "
            "low-accuracy tasks CoLA, RTE and WNLI; their rule for high-accuracy tasks is not released"
            for task in sorted(set(rows["task"])) if task not in RELEASED_RULE_TASKS]


def _write_index(figures_dir: Path, produced: dict[str, list[Path]], notes: list[str]) -> Path:
    desc = {
        "accuracy_vs_latency": "Dev metric vs p50 latency per variant (mean ± std over seeds); dashed step = Pareto front.",
        "speedup_size_bars": "Speedup at each measured batch size and encoder parameters, relative to finetune.",
        "removal_map": "What AxFormer removed, per layer (heads, FFN groups, whole blocks) and where hard attention is on.",
        "tables": "Per-task variant tables (Markdown and LaTeX) and the all-task headline table.",
        "verdicts": "Each variant against finetune: Δ dev metric and speedup with 95 % intervals, verdicts "
                    "(table: tables/verdicts.md|.tex; data: verdicts.csv beside summary.csv).",
        "pareto": "Peers at several budgets against AxFormer: Δ dev metric vs speedup and vs encoder size, frontier "
                  "verdicts (table: tables/pareto.md; data: pareto.csv beside summary.csv).",
    }
    lines = ["# Figures and tables", "", "Generated by `axformer.reporting.report.render`; do not edit by hand.", ""]
    for kind in ("accuracy_vs_latency", "speedup_size_bars", "removal_map", "tables", "verdicts",
                 *(["pareto"] if "pareto" in produced else [])):
        files = produced.get(kind, [])
        lines += [f"## {kind}", "", desc[kind], ""]
        lines += [f"- [{_rel(p, figures_dir)}]({_rel(p, figures_dir)})" for p in files] or ["- (none produced)"]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path = figures_dir / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _decisions(run_dir: Path) -> dict[str, Any] | None:
    """decisions.json beside a run's metrics.json (AxFormer-like searches), or None."""
    path = run_dir / "decisions.json"
    if not path.is_file():
        return None
    decisions = _read_json(path)
    if not isinstance(decisions, dict):
        raise ConfigError(f"{path}: malformed decisions.json (top level must be a JSON object).")
    return decisions


def _in_frame_order(found: list[tuple[str, Run]], df: pd.DataFrame) -> list[tuple[str, Run]]:
    by_dir = dict(found)
    return [(d, by_dir[d]) for d in df["run_dir"]] if len(df) else []


_TIMING_NOTE = ("\nPass set: the id each pass of the group's time job carries (UTC start + commit). Passes (fewest): "
                "the fewest kept passes any figure of the group rests on. Noisy (repeated): passes over the noise "
                "thresholds, and how many of them were run again. Foreign CPU / Steal: the worst pass. Pass wall (s): "
                "the wall seconds of the group's pass processes, each loading and timing every model of the group. "
                "A/A: finetune timed against a second copy of itself, median over passes [interval].\n")


def _write_timing(df: pd.DataFrame, tables_dir: Path) -> list[Path]:
    """tables/timing.md|tex (the timing protocol as it ran, DESIGN §6), where some run carries timing passes."""
    timing, summary = timing_table(df)
    if not len(timing):
        return []
    md, tex = tables_dir / "timing.md", tables_dir / "timing.tex"
    atomic_write_text(md, "# Timing protocol: one row per timing group (task, model, seed), from the records\n\n"
                      + timing_summary_text(summary) + "\n" + to_markdown(timing) + _TIMING_NOTE)
    to_latex(timing, tex, caption="Timing protocol per group: pass sets, passes per figure, noisy passes, worst host "
                                  "noise, pass wall seconds and the A/A speedup.")
    return [md, tex]


def render(results_dir: str | os.PathLike, figures_dir: str | os.PathLike, summary_csv: str | os.PathLike,
           batch_size: int = 32, verdicts_csv: str | os.PathLike | None = None, resamples: int | None = None,
           bootstrap_seed: int | None = None, readme: str | os.PathLike | None = None) -> list[Path]:
    """Collect results and write summary.csv with the long tables beside it (:mod:`axformer.reporting.tidy`), the tables,
    figures and ``figures/README.md``.

    ``batch_size`` picks the latency used in plots and the headline table (falls back to 1). Runs with
    no latency are skipped in latency plots with a log line (also listed under Notes in the README).
    The verdict table (axformer.reporting.verdicts) goes to ``verdicts_csv`` (default: verdicts.csv beside the summary),
    its bootstrap drawing ``resamples`` resamples seeded with ``bootstrap_seed`` (axformer.stats defaults).
    ``readme``: a README whose verdict block is rewritten from that table (:mod:`axformer.reporting.readme_block`).
    Returns every file written.
    """
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    found = runs(results_dir)
    df = frame(found, results_dir)
    decisions = {d: _decisions(results_dir / d) for d, _ in found}
    read_all_predictions(results_dir, found)  # every input read before the first output is written
    tidy_tables = tidy.tables([(d, r, decisions[d]) for d, r in _in_frame_order(found, df)], batch_size)
    out: list[Path] = tidy.write(tidy_tables, summary_csv)
    produced: dict[str, list[Path]] = {}
    notes: list[str] = []
    style = frame_styles(df) if not df.empty else {}
    if df.empty:
        msg = f"no metrics.json found under {results_dir}; only an empty summary was written"
        log.info(msg)
        notes.append(msg)
    notes += extrapolation_notes(df)
    tables_dir = figures_dir / "tables"
    for task in task_order(df["task"].dropna().unique()) if not df.empty else []:
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
        produced.setdefault("accuracy_vs_latency", []).extend(plot_accuracy_vs_latency(df, task, figures_dir, batch_size, notes, style))
        produced.setdefault("speedup_size_bars", []).extend(plot_speedup_size_bars(df, task, figures_dir, notes, style))
    if not df.empty:
        for _, r in df[df["has_decisions"]].iterrows():
            name = f"removal_map_{slug(r['task'])}_{slug(r['model'])}_{slug(r['variant'])}_seed{r['seed']}"
            title = f"{r['task']} · {r['model']} · {r['variant']} · seed {r['seed']}"
            produced.setdefault("removal_map", []).extend(plot_removal_map(decisions[r["run_dir"]], figures_dir, name, title))
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
        compute = compute_table(df)
        cm = tables_dir / "compute.md"
        atomic_write_text(cm, "# Compute: minutes each step recorded, per task (every step counted once; model "
                              "loading and start-up not included)\n\n" + to_markdown(compute))
        cmt = tables_dir / "compute.tex"
        to_latex(compute, cmt, caption="Compute per task: minutes of fine-tuning, searches, distillation, peer "
                                       "methods and measurement jobs, each step counted once.")
        produced.setdefault("tables", []).extend([cm, cmt])
        produced.setdefault("tables", []).extend(_write_timing(df, tables_dir))
    from axformer import stats
    from axformer.reporting import verdicts

    vfiles = verdicts.render(df, results_dir, figures_dir,
                             verdicts_csv if verdicts_csv is not None else Path(summary_csv).with_name("verdicts.csv"),
                             batch_size, stats.DEFAULT_RESAMPLES if resamples is None else resamples,
                             stats.DEFAULT_SEED if bootstrap_seed is None else bootstrap_seed, notes)
    out.append(vfiles[0])
    if len(vfiles) > 1:
        produced["verdicts"] = vfiles[1:]
    from axformer.reporting import pareto  # the peers' frontier, where peer runs at several budgets exist (issue 36)

    pfiles = pareto.render(df, pd.read_csv(vfiles[0]), Path(vfiles[0]).with_name("pareto.csv"), figures_dir, notes,
                           style)
    if pfiles:
        out.append(pfiles[0])
        produced["pareto"] = pfiles[1:]
    for files in produced.values():
        out.extend(files)
    out.append(_write_index(figures_dir, produced, notes))
    if readme is not None:
        from axformer.reporting import readme_block

        out.append(readme_block.update(readme, vfiles[0]))
    return out

