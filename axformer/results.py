"""The result record (DESIGN §4): one metrics.json per run, same schema for every variant."""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

from axformer import record_schema
from axformer.record import Run
from axformer.utils import ConfigError, atomic_write_json, env_info, git_commit

SCHEMA_KEYS = ("task", "model", "variant", "seed", "profile", "git_commit", "created",
               "metric", "size", "latency", "memory", "env")


def model_name(spec: str) -> str:
    """Folder-safe name of a model spec: 'minilm', 'bert-base-uncased', 'org--name', or a folder's name."""
    p = Path(spec)
    if p.is_absolute() or spec.startswith("."):
        return p.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", spec)


def run_dir(results_dir: str | Path, task: str, model: str, variant: str, seed: int) -> Path:
    """results/<task>/<model>/<variant>/seed<k>/"""
    return Path(results_dir) / task / model_name(model) / variant / f"seed{seed}"


def new_record(task: str, model: str, variant: str, seed: int, profile: str) -> dict[str, Any]:
    """A metrics.json skeleton with every schema key present (unmeasured blocks are null)."""
    return {
        "task": task, "model": model_name(model), "variant": variant, "seed": seed, "profile": profile,
        "git_commit": git_commit(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "metric": None, "size": None, "latency": None, "memory": None, "env": env_info(),
    }


def metric_block(task, dev_metrics: dict[str, float], search_metrics: dict[str, float] | None, n_dev: int,
                 n_search: int | None = None) -> dict[str, Any]:
    """{name, dev, search, n_dev, secondary} for the task's headline metric."""
    return {
        "name": task.metric,
        "dev": dev_metrics[task.metric],
        "search": None if search_metrics is None else search_metrics[task.metric],
        "n_dev": n_dev,
        "n_search": n_search,
        "secondary": {k: v for k, v in dev_metrics.items() if k != task.metric},
    }


def write(path: str | Path, record: dict[str, Any] | Run) -> None:
    """Write a metrics.json atomically after checking it against the schema (axformer.record_schema), through
    :class:`axformer.record.Run` (a dict or a Run)."""
    if isinstance(record, Run):
        record = record.to_json()
    missing = [k for k in SCHEMA_KEYS if k not in record]
    if missing:
        raise ValueError(f"metrics record lacks keys {missing}")
    # through the typed record (axformer.record.Run): schema-checked, written in the shape it was given
    atomic_write_json(path, Run.from_json(record, path).to_json())


def write_step(path: str | Path, record: dict[str, Any]) -> None:
    """Write a step record (step.json, the blocks a step adds to metrics.json) after checking its schema."""
    record_schema.check(record, "step", path)
    atomic_write_json(path, record)


def read(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a metrics.json / step record; a corrupt file is a ConfigError naming it. With ``kind``
    ('metrics', 'step', 'ckpt_step') the record is also checked against that schema (axformer.record_schema)."""
    if kind is not None:
        return record_schema.load(path, kind)
    p = Path(path)
    try:
        return json.loads(p.read_text(), parse_constant=record_schema.refuse_constant)
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist: run the step that writes it first.") from None
    except ValueError as exc:  # JSONDecodeError, or a NaN / Infinity literal
        raise ConfigError(f"{p} is not valid JSON ({exc}); delete it and re-run the step that wrote it.") from exc


def size_block(model, ckpt_dir: str | Path | None) -> dict[str, Any]:
    """{params_total, params_encoder, bytes_on_disk} of a model (and its saved checkpoint folder)."""
    from axformer.cost import bytes_on_disk, param_counts

    total, encoder = param_counts(model)
    return {"params_total": total, "params_encoder": encoder,
            "bytes_on_disk": bytes_on_disk(ckpt_dir) if ckpt_dir is not None else None}
