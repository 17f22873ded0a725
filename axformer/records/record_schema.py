"""JSON Schemas of the files the steps hand to each other (DESIGN §4, CONTRACTS): metrics.json, the step
record a job writes next to its checkpoint (step.json) and the checkpoint's own axformer_step.json.

Each is checked when written and when read, so a wrong or truncated file stops the step that meets it with
one line naming the file and the key, instead of a blank report row or a KeyError. The schemas type-check
the core keys only: every block allows additional keys, so new measurements (predictions, latency
intervals, other backends' blocks) need no schema change. Non-finite numbers are refused everywhere: JSON
has no NaN, and a NaN metric is a bug upstream, not a result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from axformer.taskdata.tasks import NAME_RE

# a built-in task or one declared in a profile (task_defs): any valid task name
TASK_NAME = NAME_RE.pattern
from axformer.utils import ConfigError, nonfinite_key
from axformer.utils import key_path as _key_path

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_COUNT_OR_NULL = {"type": ["integer", "null"], "minimum": 0}

METRIC_BLOCK: dict[str, Any] = {
    "type": "object",
    "required": ["name", "dev", "n_dev"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "dev": _NUM,
        "search": _NUM_OR_NULL,
        "n_dev": _COUNT,
        "n_search": _COUNT_OR_NULL,
        "secondary": {"type": "object", "additionalProperties": _NUM_OR_NULL},
        "dev_loss": _NUM_OR_NULL,
        "search_loss": _NUM_OR_NULL,
    },
}

SIZE_BLOCK: dict[str, Any] = {
    "type": "object",
    "required": ["params_total", "params_encoder"],
    "properties": {
        "params_total": _COUNT_OR_NULL,
        "params_encoder": _COUNT_OR_NULL,
        "bytes_on_disk": _COUNT_OR_NULL,
    },
}

LATENCY_BLOCK: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["batch_size"],
        "properties": {
            "batch_size": {"type": "integer", "minimum": 1},
            "seq_len": {"type": "integer", "minimum": 1},
            "device": {"type": "string"},
            "p50_ms": _NUM_OR_NULL,
            "p90_ms": _NUM_OR_NULL,
            "mean_ms": _NUM_OR_NULL,
            "std_ms": _NUM_OR_NULL,
            "n_iters": _COUNT_OR_NULL,
            "threads": _COUNT_OR_NULL,
            "baseline_p50_ms": _NUM_OR_NULL,
            "baseline_p90_ms": _NUM_OR_NULL,
            "speedup": _NUM_OR_NULL,
        },
    },
}

METRICS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "metrics.json: one run (task, model, variant, seed)",
    "type": "object",
    "required": ["task", "model", "variant", "seed", "profile", "git_commit", "created",
                 "metric", "size", "latency", "memory", "env"],
    "properties": {
        "task": {"type": "string", "pattern": TASK_NAME},
        "model": {"type": "string", "minLength": 1},
        "variant": {"type": "string", "pattern": r"^(majority|finetune(\+[A-Za-z0-9_]+)*)$"},
        "seed": _COUNT,
        "profile": {"type": "string"},
        "git_commit": {"type": ["string", "null"]},
        "created": {"type": "string"},
        "metric": METRIC_BLOCK,
        "size": {"anyOf": [{"type": "null"}, SIZE_BLOCK]},
        "latency": {"anyOf": [{"type": "null"}, LATENCY_BLOCK]},
        "memory": {"type": ["object", "null"], "properties": {"peak_bytes": _COUNT_OR_NULL}},
        "env": {"type": "object"},
        "flops": {"type": ["array", "null"]},
        "data": {"type": ["object", "null"], "properties": {
            k: _COUNT_OR_NULL for k in ("n_train", "n_search", "n_dev", "split_seed")}},
        # the lineage (axformer.records.record.Step): step.json paths (records so far) or {name, command, record}
        "steps": {"type": ["array", "null"], "items": {"anyOf": [
            {"type": "string"},
            {"type": "object", "properties": {"name": {"type": ["string", "null"]},
                                              "command": {"type": ["string", "null"]},
                                              "record": {"type": ["string", "null"]}}}]}},
        # the blocks the step commands write (axformer.records.record.STEP_BLOCKS)
        **{k: {"type": ["object", "null"]} for k in ("train", "search", "distill", "baseline", "quantize")},
    },
}

# What a step job writes with --metrics next to its checkpoint (finetune: a whole metrics record; approximate /
# distill / baseline: their own block plus size and data). Its blocks are merged into metrics.json by measure.
STEP_RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "step record (step.json): the blocks a step adds to metrics.json",
    "type": "object",
    "minProperties": 1,
    "properties": {
        "metric": METRIC_BLOCK,
        "size": SIZE_BLOCK,
        "data": {"type": "object"},
        "train": {"type": "object"},
        "search": {"type": "object"},
        "distill": {"type": "object"},
        "baseline": {"type": "object"},
    },
}

# axformer_step.json inside a checkpoint folder: how the checkpoint was made, and the split every later step
# rebuilds from it.
CKPT_STEP_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "axformer_step.json: the split and lineage of a checkpoint",
    "type": "object",
    "required": ["split", "task", "variant"],
    "properties": {
        "task": {"type": "string", "pattern": TASK_NAME},
        "variant": {"type": "string", "minLength": 1},
        "model_spec": {"type": ["string", "null"]},
        "split": {
            "type": "object",
            "required": ["seed", "search_frac", "search_max"],
            "properties": {
                "seed": _COUNT,
                "search_frac": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "search_max": {"type": "integer", "minimum": 1},
                "train_max": {"type": ["integer", "null"], "minimum": 1},
                "dev_max": {"type": ["integer", "null"], "minimum": 1},
                "max_length": {"type": ["integer", "null"], "minimum": 1},
                "data_dir": {"type": ["string", "null"]},
                "allow_hub": {"type": ["boolean", "null"]},
                "search_rows": {"type": ["string", "null"]},
            },
        },
    },
}

SCHEMAS = {"metrics": METRICS_SCHEMA, "step": STEP_RECORD_SCHEMA, "ckpt_step": CKPT_STEP_SCHEMA}


def check(record: Any, kind: str, source: str | Path) -> None:
    """Raise :class:`ConfigError` ``<source>: key '<key>': <problem>`` if ``record`` breaks schema ``kind``."""
    import jsonschema

    schema = SCHEMAS[kind]
    bad = nonfinite_key(record)
    if bad:
        raise ConfigError(f"{source}: key '{bad}': not a finite number (JSON has no NaN / Infinity); "
                          "fix the step that wrote it and re-run it.")
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(record))
    if err is None:
        return
    key = _key_path(err.absolute_path)
    if err.validator == "required":
        missing = [k for k in err.validator_value if isinstance(err.instance, dict) and k not in err.instance]
        if missing:
            key = f"{key}.{missing[0]}" if err.absolute_path else missing[0]
            raise ConfigError(f"{source}: key '{key}' is missing ({schema['title']}; schema in "
                              "axformer/records/record_schema.py); re-run the step that wrote it.")
    msg = err.message if len(err.message) < 200 else err.message[:200] + "..."
    raise ConfigError(f"{source}: key '{key}': {msg} ({schema['title']}; schema in axformer/records/record_schema.py); "
                      "re-run the step that wrote it.")


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load(path: str | Path, kind: str) -> dict[str, Any]:
    """Read and check a JSON file of schema ``kind``; every failure is one :class:`ConfigError` naming it."""
    p = Path(path)
    try:
        record = json.loads(p.read_text(encoding="utf-8"), parse_constant=refuse_constant)
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist: run the step that writes it first.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({exc}); check the file and its permissions.") from exc
    except ValueError as exc:  # JSONDecodeError, or a NaN / Infinity literal
        raise ConfigError(f"{p} is not valid JSON ({exc}); delete it and re-run the step that wrote it.") from exc
    check(record, kind, p)
    return record
