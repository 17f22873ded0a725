# Config loading and validation, before any job (included first by the Snakefile): the profile's steps are laid
# over the shared step registry (workflow/config/steps.yaml, axformer/steps/profiles.py), command-line values are
# typed, a non-finite number is refused, then the schema (workflow/schemas/config.schema.yaml) checks every key
# and fills in its defaults. Every refusal is one line naming the config key (_config_error). The cross-key and
# data checks follow in checks.smk; paths and input functions in paths.smk.

import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from axformer.bounds import check_finite_tree
from axformer.steps.profiles import load_registry, resolve_steps

SCHEMA = "../schemas/config.schema.yaml"
STEP_REGISTRY = os.path.join(workflow.basedir, "workflow", "config", "steps.yaml")

# ------------------------------------------------------------------------------------------ validation
def _config_error(key, msg):
    # One line and exit status 1: raising WorkflowError here would make Snakemake print its own frames of this
    # file after the message. Every call is at parse time, before the DAG, locks or any job, so nothing needs
    # cleaning up.
    print(f"config key '{key}': {msg}", file=sys.stderr)
    raise SystemExit(1)


def _schema_path(err):
    """'$.steps.foo.threads' -> 'steps.foo.threads' (the key a jsonschema error is about)."""
    path = getattr(err, "json_path", "$").lstrip("$").lstrip(".")
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        if extra:
            path = ".".join(p for p in (path, extra[0]) if p)
    elif err.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", err.message)
        if missing:
            path = ".".join(p for p in (path, missing[0]) if p)
    return path or "<top level>"


def _typed_cli_values():
    """Snakemake reads nested --config values (`split={search_frac: 0.2}`) as strings ('0.2'); parse each string
    leaf that came from the command line as YAML (safe_load: plain data only) so it meets the schema typed."""
    import yaml

    def walk(given, path):
        if isinstance(given, dict):
            for k, v in given.items():
                walk(v, (*path, k))
            return
        if isinstance(given, list):
            for i, v in enumerate(given):
                walk(v, (*path, i))
            return
        if not isinstance(given, str) or not path:
            return
        node = config
        try:
            for k in path[:-1]:
                node = node[k]
            if node[path[-1]] != given:
                return  # a profile value, not the command line's
        except (KeyError, IndexError, TypeError):
            return
        try:
            value = yaml.safe_load(given)
        except yaml.YAMLError:
            return  # left as text: the schema names the key if text is wrong there
        # typed scalars only ('0.2' -> 0.2, 'null' -> None, 'true' -> True); Snakemake already split {...} / [...]
        if not isinstance(value, (dict, list)):
            node[path[-1]] = value

    settings = getattr(workflow, "config_settings", None)
    walk(getattr(settings, "overwrite_config", None) or {}, ())


_typed_cli_values()

# The shared step registry under the config's steps (profile, further --configfile and --config already merged
# by Snakemake): each entry laid over the registry entry of its name (docs/DESIGN.md §2, "Profiles")
if isinstance(config.get("steps"), dict):
    config["steps"] = resolve_steps(config["steps"], load_registry(STEP_REGISTRY))

# JSON Schema's minimum / maximum let NaN through (every comparison with NaN is false) and YAML has .inf / .nan:
# refuse a non-finite number anywhere in the config first, naming its key (axformer/bounds.py, the numeric rule)
_non_finite = check_finite_tree(config)
if _non_finite:
    _config_error(_non_finite[0], f"must be a finite number (got {_non_finite[1]}); see the key's range in "
                  "workflow/schemas/config.schema.yaml.")

try:
    validate(config, schema=SCHEMA)
except WorkflowError as exc:
    import jsonschema

    err = exc.__context__  # snakemake raises its WorkflowError while handling jsonschema's error
    if not isinstance(err, jsonschema.exceptions.ValidationError):
        raise
    _config_error(_schema_path(err), f"{err.message} (keys and allowed values: workflow/schemas/config.schema.yaml)")

STEPS = config["steps"]
# What each CLI command does in the DAG: root (no parent), builds a checkpoint, writes decisions.json.
COMMANDS = {
    "finetune": {"checkpoint": True, "decisions": False},
    "approximate": {"checkpoint": True, "decisions": True},
    "distill": {"checkpoint": True, "decisions": False},
    "baseline": {"checkpoint": True, "decisions": False},
    "quantize": {"checkpoint": False, "decisions": False},
}
