"""Tidy result tables (DESIGN §4): the narrow summary.csv and the long tables beside it.

- ``summary.csv``: one row per run, the fixed columns :data:`SUMMARY_COLUMNS` (the same in every profile, so
  the summaries of all profiles ``pandas.concat``); the latency columns are those of the headline batch size;
- ``latency.csv``: one row per run × timed batch size (:data:`LATENCY_COLUMNS`);
- ``elements.csv``: one row per run × element decision of an AxFormer-like search (:data:`ELEMENT_COLUMNS`,
  from the candidates in the run's decisions.json);
- ``baseline_scores.csv``: one row per run × scored unit of a peer method (:data:`SCORE_COLUMNS`, from the
  ``baseline.info.scores`` the method recorded, e.g. head importance).

Every value comes from the typed record (:class:`axformer.records.record.Run`) and the decisions beside it; a cell is
a number, a short string or empty, never JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from axformer.records.record import Run
from axformer.utils import atomic_write_text

ID: tuple[str, ...] = ("task", "model", "variant", "seed")

# One row per run. Names say which reference a number is against: `finetune_*` is the finetune run timed in
# the same job (the speedup's denominator); `peer_*` is the peer compression method of a baseline step.
SUMMARY_COLUMNS: tuple[str, ...] = (
    *ID, "profile", "family", "commands", "peer_method", "quantize_compute_dtype",
    "metric_name", "metric_dev", "metric_search", "metric2_name", "metric2_dev", "dev_loss", "search_loss",
    "n_dev", "n_search", "n_train",
    "params_total", "params_encoder", "bytes_on_disk",
    "latency_device", "measure_dtype", "tf32", "latency_batch", "latency_p50_ms", "latency_finetune_p50_ms",
    "speedup_vs_finetune", "forward_gflops", "memory_peak_bytes",
    "train_wall_s", "search_wall_s", "search_n_removed", "search_n_hard_attention_layers", "distill_layers",
    "peer_wall_s", "env_torch", "env_device", "git_commit",
)
# Issue 35 made room for the dtype columns (measure_dtype, tf32, quantize_compute_dtype) by dropping three that
# said nothing new: quantize_dtype (always "int8"; `commands` ends in quantize), run_dir (<task>/<model>/
# <variant>/seed<seed> of the ID columns) and created (in every metrics.json; git_commit stays).
assert len(SUMMARY_COLUMNS) <= 40, "summary.csv is narrow by contract (issue 18): <= 40 columns"

LATENCY_COLUMNS: tuple[str, ...] = (
    *ID, "device", "batch_size", "seq_len", "threads", "n_iters", "p50_ms", "p90_ms", "mean_ms", "std_ms",
    "finetune_p50_ms", "finetune_p90_ms", "speedup", "forward_gflops", "floor_ms",
    "measure_dtype", "finetune_dtypes", "variant_dtypes", "tf32", "compute_dtype",
)
ELEMENT_COLUMNS: tuple[str, ...] = (
    *ID, "phase", "element", "layer", "kind", "index", "accepted", "class", "loss", "metric", "gain", "margin",
    "se", "frac_no_worse",
)
SCORE_COLUMNS: tuple[str, ...] = (*ID, "peer_method", "scores", "group", "unit", "score")


def _block_get(block: dict[str, Any] | None, key: str) -> Any:
    return None if block is None else block.get(key)


def _count(v: Any) -> int | None:
    return len(v) if isinstance(v, (list, tuple)) else None


def _flops_at(run: Run, batch_size: int | None) -> dict[str, Any]:
    for f in run.blocks.get("flops") or []:
        if isinstance(f, dict) and f.get("batch_size") == batch_size:
            return f
    return {}


def _dtypes(entry: Any, run: Run) -> dict[str, Any]:
    """The dtypes a latency entry was timed in (``dtypes`` of its block; the run's ``measure.dtype`` where an
    older block lacks them): ``{"measure", "finetune", "variant"}``, lists joined with ``|``."""
    held = (entry.extra.get("dtypes") if entry is not None else None) or {}
    join = lambda v: "|".join(v) if isinstance(v, (list, tuple)) else None  # noqa: E731
    return {"measure": held.get("measure_dtype", _block_get(run.block("measure"), "dtype")),
            "finetune": join(held.get("baseline")), "variant": join(held.get("variant"))}


def _tf32(entry: Any) -> bool | None:
    """Whether fp32 matmuls could use TF32 during the timing (``tf32.matmul_allow_tf32`` of the block)."""
    t = entry.extra.get("tf32") if entry is not None else None
    return t.get("matmul_allow_tf32") if isinstance(t, dict) else None


def headline_batch(run: Run, preferred: int) -> int | None:
    """The batch size summary.csv reports: ``preferred`` if the run timed it, else the smallest timed."""
    sizes = sorted({e.batch_size for e in run.latency or []})
    return preferred if preferred in sizes else (sizes[0] if sizes else None)


def summary_row(run: Run, run_dir: str, batch_size: int = 32) -> dict[str, Any]:
    """The :data:`SUMMARY_COLUMNS` of one run."""
    m, size, env = run.metric, run.size, run.env
    second = next(iter(m.secondary.items()), (None, None))
    b = headline_batch(run, batch_size)
    lat = run.latency_at(b) if b is not None else None
    gflops = _flops_at(run, b).get("forward_flops")
    search, distill, peer = run.block("search"), run.block("distill"), run.block("baseline")
    row = {
        "task": run.task, "model": run.model, "variant": run.variant, "seed": run.seed, "profile": run.profile,
        "family": run.family(), "commands": ">".join(run.commands()), "peer_method": run.peer_method(),
        "quantize_compute_dtype": _block_get(run.block("quantize"), "compute_dtype"),
        "metric_name": m.name, "metric_dev": m.dev, "metric_search": m.search,
        "metric2_name": second[0], "metric2_dev": second[1], "dev_loss": m.dev_loss, "search_loss": m.search_loss,
        "n_dev": m.n_dev, "n_search": m.n_search, "n_train": run.data.n_train if run.data else None,
        "params_total": size.params_total if size else None, "params_encoder": size.params_encoder if size else None,
        "bytes_on_disk": size.bytes_on_disk if size else None,
        "latency_device": lat.device if lat else None,
        "measure_dtype": _dtypes(lat, run)["measure"], "tf32": _tf32(lat),
        "latency_batch": b, "latency_p50_ms": lat.p50_ms if lat else None,
        "latency_finetune_p50_ms": lat.baseline_p50_ms if lat else None,
        "speedup_vs_finetune": lat.speedup if lat else None,
        "forward_gflops": None if gflops is None else gflops / 1e9,
        "memory_peak_bytes": run.memory.peak_bytes if run.memory else None,
        "train_wall_s": _block_get(run.block("train"), "wall_s"),
        "search_wall_s": _block_get(search, "wall_s"),
        "search_n_removed": _count(_block_get(search, "removed")),
        "search_n_hard_attention_layers": _count(_block_get(search, "hard_attention_layers")),
        "distill_layers": _block_get(distill, "n_layers"),
        "peer_wall_s": _block_get(peer, "wall_s"),
        "env_torch": env.torch, "env_device": env.gpu_name or env.cpu,
        "git_commit": run.git_commit,
    }
    return {c: row[c] for c in SUMMARY_COLUMNS}


def latency_rows(run: Run) -> list[dict[str, Any]]:
    """One :data:`LATENCY_COLUMNS` row per timed batch size (and device) of a run."""
    rows = []
    for e in run.latency or []:
        f = _flops_at(run, e.batch_size)
        dt = _dtypes(e, run)
        rows.append({
            "task": run.task, "model": run.model, "variant": run.variant, "seed": run.seed, "device": e.device,
            "batch_size": e.batch_size, "seq_len": e.seq_len, "threads": e.threads, "n_iters": e.n_iters,
            "p50_ms": e.p50_ms, "p90_ms": e.p90_ms, "mean_ms": e.mean_ms, "std_ms": e.std_ms,
            "finetune_p50_ms": e.baseline_p50_ms, "finetune_p90_ms": e.baseline_p90_ms, "speedup": e.speedup,
            "forward_gflops": None if f.get("forward_flops") is None else f["forward_flops"] / 1e9,
            "floor_ms": f.get("floor_ms"), "measure_dtype": dt["measure"], "finetune_dtypes": dt["finetune"],
            "variant_dtypes": dt["variant"], "tf32": _tf32(e),
            "compute_dtype": _block_get(run.block("quantize"), "compute_dtype"),
        })
    return rows


def element_rows(run: Run, decisions: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One :data:`ELEMENT_COLUMNS` row per candidate the run's search decided on (decisions.json)."""
    rows = []
    for c in (decisions or {}).get("candidates") or []:
        if not isinstance(c, dict):
            continue
        rows.append({"task": run.task, "model": run.model, "variant": run.variant, "seed": run.seed,
                     **{k: c.get(k) for k in ELEMENT_COLUMNS[len(ID):]}})
    return rows


def score_rows(run: Run) -> list[dict[str, Any]]:
    """One :data:`SCORE_COLUMNS` row per unit a peer method scored (``baseline.info.scores`` and other
    ``scores*`` maps: ``{group: {unit: score}}``, e.g. ``{"L0": {"head3": 0.27}}``)."""
    info = _block_get(run.block("baseline"), "info") or {}
    rows = []
    for name, groups in info.items():
        if not (str(name).startswith("scores") and isinstance(groups, dict)):
            continue
        for group, units in groups.items():
            items = units.items() if isinstance(units, dict) else enumerate(units if isinstance(units, list) else [])
            for unit, score in items:
                rows.append({"task": run.task, "model": run.model, "variant": run.variant, "seed": run.seed,
                             "peer_method": run.peer_method(), "scores": name, "group": group, "unit": unit,
                             "score": score})
    return rows


def _frame(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=list(columns), dtype=object)
    for c in df.columns:  # counts stay integers in the CSV where a run left the cell empty
        vals = df[c].dropna()
        if len(vals) and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            df[c] = df[c].astype("Int64")
        elif len(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            df[c] = df[c].astype(float)
    return df


def tables(runs: list[tuple[str, Run, dict[str, Any] | None]], batch_size: int = 32) -> dict[str, pd.DataFrame]:
    """``{summary, latency, elements, baseline_scores}`` of ``runs`` ((run_dir, Run, decisions or None),
    in report order)."""
    return {
        "summary": _frame((summary_row(r, d, batch_size) for d, r, _ in runs), SUMMARY_COLUMNS),
        "latency": _frame((x for _, r, _ in runs for x in latency_rows(r)), LATENCY_COLUMNS),
        "elements": _frame((x for _, r, dec in runs for x in element_rows(r, dec)), ELEMENT_COLUMNS),
        "baseline_scores": _frame((x for _, r, _ in runs for x in score_rows(r)), SCORE_COLUMNS),
    }


def write(tabs: dict[str, pd.DataFrame], summary_csv: str | Path) -> list[Path]:
    """Write summary.csv at ``summary_csv`` and the long tables beside it (``<name>.csv``); returns the paths."""
    summary_csv = Path(summary_csv)
    out = []
    for name, df in tabs.items():
        path = summary_csv if name == "summary" else summary_csv.with_name(f"{name}.csv")
        atomic_write_text(path, df.to_csv(index=False))
        out.append(path)
    return out
