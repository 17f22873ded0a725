"""One numeric rule for every number a user gives: finite, and within a declared range that has an upper bound.

``FLAG_BOUNDS`` holds the range of every int / float flag of every ``axformer <step>`` (by argparse dest);
:func:`check_flags` applies it to a parsed namespace, so the CLI and the workflow's step-argument check
(``axformer.steps.stepargs``, before any job) refuse a NaN, an infinity or an absurd value with the flag named. A
new numeric flag without an entry here fails ``tests/test_security.py`` (it would escape the rule). The
workflow config's own numbers have their ranges in ``workflow/schemas/config.schema.yaml`` (``maximum`` on
every number) and ``workflow/rules/config.smk`` refuses non-finite values before the schema is consulted
(JSON Schema's ``minimum`` / ``maximum`` let NaN through); a baseline's ``arg`` values have theirs in the
method's ``ARGS`` declaration (``baselines/args.py``).

The upper bounds are far above any sensible run and far below what hangs or exhausts a machine: they are
there so that a typo (``seeds: 1000000``, ``min_seconds: .inf``) is refused in one line instead of running
for ever.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from axformer.utils import ConfigError

BIG_COUNT = 100_000_000  # rows, parameters: more than any GLUE split
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Bound:
    """``low <= x <= high`` (``<`` where exclusive); both ends declared."""

    low: float
    high: float
    exclusive_low: bool = False
    exclusive_high: bool = False

    def ok(self, x: float) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            return False
        lo = x > self.low if self.exclusive_low else x >= self.low
        hi = x < self.high if self.exclusive_high else x <= self.high
        return lo and hi

    def text(self) -> str:
        lo, hi = "(" if self.exclusive_low else "[", ")" if self.exclusive_high else "]"
        return f"{lo}{_num(self.low)}, {_num(self.high)}{hi}"

    def why(self, x: float) -> str:
        """What is wrong with ``x`` (not finite, below, above), in the words of the range."""
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            return f"a finite number in {self.text()}"
        if not (x > self.low if self.exclusive_low else x >= self.low):
            return f"{'>' if self.exclusive_low else '>='} {_num(self.low)}"
        return f"{'<' if self.exclusive_high else '<='} {_num(self.high)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# dest -> range. Where a step's own validate() is stricter (accept_frac < 1, less_important >= 1), both apply.
FLAG_BOUNDS: dict[str, Bound] = {
    "seed": Bound(0, MAX_SEED), "bootstrap_seed": Bound(0, MAX_SEED),
    "threads": Bound(1, 1024),
    "batch_size": Bound(1, 65_536), "batch_sizes": Bound(1, 65_536), "lat_batch_size": Bound(1, 65_536),
    "epochs": Bound(0, 1000, exclusive_low=True),  # baseline --epochs 0 is allowed by its own declaration
    "lr": Bound(0, 1, exclusive_low=True),
    "search_frac": Bound(0, 1, exclusive_low=True, exclusive_high=True),
    "search_max": Bound(1, BIG_COUNT), "train_max": Bound(1, BIG_COUNT), "dev_max": Bound(1, BIG_COUNT),
    "max_length": Bound(8, 100_000), "doc_stride": Bound(0, 100_000), "max_answer_len": Bound(1, 100_000),
    "seq_len": Bound(1, 100_000), "lat_seq_len": Bound(1, 100_000),
    "warmup": Bound(0, 1_000_000), "min_iters": Bound(1, 1_000_000), "lat_min_iters": Bound(1, 1_000_000),
    "min_seconds": Bound(0, 3600), "lat_seconds": Bound(0, 3600),
    "accept_frac": Bound(0, 1), "accept_margin": Bound(0, 100), "accept_z": Bound(0, 100),
    "less_important": Bound(1, 1000), "groups": Bound(1, 65_536),
    "temperature": Bound(0, 1000, exclusive_low=True), "alpha": Bound(0, 1), "layers": Bound(1, 10_000),
    "k": Bound(0, 10_000), "n_heads": Bound(0, 100_000), "target_params": Bound(0, 10**12),
    "resamples": Bound(1, 10_000_000),
    "passes": Bound(1, 100), "pass_retries": Bound(0, 100),  # timing passes (axformer/measurement/timing.py)
    "noise_max_other_cpu": Bound(0, 1), "noise_max_steal": Bound(0, 1),
    "weight_decay": Bound(0, 10), "warmup_ratio": Bound(0, 1, exclusive_high=True),  # the released recipe's keys
}
# text flags that may hold a number (parsed by the step): checked when they parse as one
NUMERIC_TEXT = {"topk": Bound(0, 1_000_000, exclusive_low=True)}
# baseline --epochs may be 0 (no re-training): its own range, the method's declaration is checked too
STEP_OVERRIDES: dict[tuple[str, str], Bound] = {("baseline", "epochs"): Bound(0, 1000)}


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_number(name: str, value: Any, bound: Bound) -> None:
    """ConfigError ``<name> must be a finite number in [low, high] (got v)`` unless ``value`` fits."""
    if not bound.ok(value):
        raise ConfigError(f"{name} must be {bound.why(value)} (got {value!r}); its range is {bound.text()}.")


def bound_of(step: str, dest: str) -> Bound | None:
    return STEP_OVERRIDES.get((step, dest)) or FLAG_BOUNDS.get(dest)


def check_flags(step: str, ns: argparse.Namespace) -> None:
    """Every numeric flag given in ``ns`` (not None) against its range; a list flag item by item."""
    for dest, value in vars(ns).items():
        if value is None or isinstance(value, bool):
            continue
        bound = bound_of(step, dest)
        if bound is not None:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, (int, float)):
                    check_number(flag_name(dest), v, bound)
        elif dest in NUMERIC_TEXT and isinstance(value, str):
            try:
                x = float(value)
            except ValueError:
                continue
            check_number(flag_name(dest), x, NUMERIC_TEXT[dest])


def check_finite_tree(tree: Any, path: str = "") -> tuple[str, float] | None:
    """The first non-finite float in a nested dict / list (``('measure.min_seconds', inf)``), else None."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            hit = check_finite_tree(v, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            hit = check_finite_tree(v, f"{path}[{i}]")
            if hit:
                return hit
    elif isinstance(tree, float) and not math.isfinite(tree):
        return path, tree
    return None
