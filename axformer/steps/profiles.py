"""Workflow profiles and the shared step registry they start from (workflow/config/steps.yaml).

The registry defines every step once (its command and the args that make it the method its name says); a
profile's ``steps:`` names the steps it uses and states only what it adds or changes. Every entry -- from the
profile, a further ``--configfile`` or ``--config`` -- is laid over the registry entry of the same name
(:func:`merge`: mappings key by key, anything else replaced); a name the registry lacks is a new step and
brings its own ``command``. The workflow resolves the merged config this way before its schema check
(workflow/rules/config.smk); tests and scripts read a profile as the workflow sees it with :func:`load_profile`.

Plain data only (PyYAML): the workflow imports this while it parses, before any job.
"""

from __future__ import annotations

import copy
import os
from typing import Any


def merge(base: Any, over: Any) -> Any:
    """``over`` laid over ``base``: two mappings merge key by key (recursively); otherwise ``over`` wins.
    Neither argument is changed."""
    if isinstance(base, dict) and isinstance(over, dict):
        # key order: the base's, new keys after it; an ``over`` that names every key of the base keeps its own
        # order (a step's args reach its command line in this order, and Snakemake re-runs a finished job whose
        # command line changed)
        out = {} if set(base) <= set(over) else copy.deepcopy(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def resolve_steps(steps: Any, registry: dict[str, Any]) -> Any:
    """A config's ``steps`` with each entry laid over the registry entry of its name, in the config's order.
    Only the names the config lists are resolved (the registry's others are not part of the run); an entry
    that is not a mapping is returned as it is, for the schema to name."""
    if not isinstance(steps, dict):
        return steps
    return {name: merge(registry[name], entry) if name in registry and isinstance(entry, dict) else entry
            for name, entry in steps.items()}


def load_registry(path: str | os.PathLike) -> dict[str, Any]:
    """The ``steps`` mapping of the registry file ``path`` (workflow/config/steps.yaml)."""
    import yaml

    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    steps = doc.get("steps") if isinstance(doc, dict) else None
    if not isinstance(steps, dict):
        raise ValueError(f"{path}: the step registry must be a mapping with one key, `steps`.")
    return steps


def load_profile(path: str | os.PathLike, registry: str | os.PathLike) -> dict[str, Any]:
    """The profile file ``path`` with its ``steps`` resolved against the registry file ``registry``, as the
    workflow sees it before the schema check (no schema defaults filled in)."""
    import yaml

    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    cfg["steps"] = resolve_steps(cfg.get("steps", {}), load_registry(registry))
    return cfg
