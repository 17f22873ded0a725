"""Declared arguments of a baseline: one declaration per method module, one parser for every peer.

Each method module ``baselines/<name>.py`` declares the ``cfg`` keys it takes at module level::

    ARGS = {"flops_frac": ArgSpec(float, 0.0, 1.0, exclusive_low=True, help="kept FLOPs fraction"),
            "max_rows": ArgSpec(int, 1, 10**7, default=2048), **MATCH_ARGS, **COMMON_ARGS}

and parses its ``cfg`` with ``cfg = parse_args("<name>", ARGS, cfg)`` as the first thing it does. The same
declaration is what the workflow checks a step's ``arg: [key=value, ...]`` and flags against before any
job (``axformer.steps.stepargs``, via :func:`check_cfg`), so a key, type or range is written once and refused
both before the DAG and inside the job with the same one-line message.

Rules (one numeric rule for the whole project): a number must be finite and within ``[low, high]`` (both
bounds declared; ``exclusive_low`` / ``exclusive_high`` make them open); an ``int`` takes an integral
number (``3`` or ``3.0``), never a bool; ``bool`` takes true/false (or the words true/false/yes/no/1/0); a
``str`` value must be plain characters (letters, digits, ``_ . / : + , =`` and ``-`` not first): it may
reach a file name or, on a cluster, a shell line. ``words`` are the text values a numeric argument also
takes (fisher's ``seq_len: mean``); ``choices`` restrict a ``str``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from axformer.utils import ConfigError

# plain characters; never a leading '-' (it would read as an option where values are re-parsed)
PLAIN_TEXT = re.compile(r"^[A-Za-z0-9_./:+,=@][A-Za-z0-9_./:+,=@-]*$")
_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


@dataclass(frozen=True)
class ArgSpec:
    """One declared ``cfg`` key: its type (int, float, bool, str; a tuple for a union), bounds, choices."""

    type: type | tuple[type, ...]
    low: float | None = None
    high: float | None = None
    exclusive_low: bool = False
    exclusive_high: bool = False
    default: Any = None
    choices: tuple[str, ...] | None = None
    words: tuple[str, ...] = ()
    help: str = ""
    note: str = ""  # appended to a refusal (why the range is what it is)
    required: bool = False  # None (not given) is refused instead of becoming the default

    def __post_init__(self):
        types = self.types()
        if (int in types or float in types) and (self.low is None or self.high is None):
            raise TypeError("a numeric ArgSpec declares both bounds (low and high): every number has a range.")

    def types(self) -> tuple[type, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def describe(self) -> str:
        """'a number in (0, 1]', 'an integer in [1, 10000000]', 'true or false', 'one of search, train'."""
        parts = []
        for t in self.types():
            if t in (int, float):
                lo = "(" if self.exclusive_low else "["
                hi = ")" if self.exclusive_high else "]"
                kind = "an integer" if t is int else "a number"
                parts.append(f"{kind} in {lo}{_num(self.low)}, {_num(self.high)}{hi}")
            elif t is bool:
                parts.append("true or false")
            elif self.choices:
                parts.append("one of " + ", ".join(self.choices))
            else:
                parts.append("plain text (letters, digits, _ . / : + , = @; not starting with -)")
        if self.words:
            parts.append(" or ".join(repr(w) for w in self.words))
        return " or ".join(parts)

    def parse(self, method: str, key: str, value: Any) -> Any:
        """``value`` converted to the declared type, or ConfigError naming ``method: key``."""
        if value is None and not self.required:
            return self.default
        if isinstance(value, str) and value in self.words:
            return value
        for t in self.types():
            ok, out = _convert(t, value)
            if not ok:
                continue
            if t in (int, float) and not self._in_range(out):
                continue
            if t is str and self.choices is not None and out not in self.choices:
                continue
            return out
        note = f" {self.note}" if self.note else ""
        raise ConfigError(f"{method}: {key} must be {self.describe()} (got {value!r}).{note}")

    def _in_range(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        lo_ok = x > self.low if self.exclusive_low else x >= self.low
        hi_ok = x < self.high if self.exclusive_high else x <= self.high
        return lo_ok and hi_ok


def _num(x: float | None) -> str:
    return "-inf" if x is None else (str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}")


def _convert(t: type, value: Any) -> tuple[bool, Any]:
    if t is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return True, value.lower() in _TRUE
        return False, None
    if isinstance(value, bool):
        return False, None
    if t is int:
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return True, int(value)
        return False, None
    if t is float:
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, None
    if t is str:
        if isinstance(value, str) and PLAIN_TEXT.match(value):
            return True, value
        return False, None
    raise TypeError(f"ArgSpec type {t!r} is not one of int, float, bool, str")


# Keys every method gets from the CLI itself (baselines/__init__.py): the parent's split seed, progress output.
COMMON_ARGS: dict[str, ArgSpec] = {
    "seed": ArgSpec(int, 0, 2**31 - 1, default=0, help="the parent's split seed (set by the CLI)"),
    "progress": ArgSpec(bool, default=False, help="progress lines on stderr (set by the CLI)"),
}

# The equal-size matching keys of baselines.matching.resolve_target.
MATCH_ARGS: dict[str, ArgSpec] = {
    "match": ArgSpec(str, help="AxFormer decisions.json (the workflow's step key `match` sets it)"),
    "match_by": ArgSpec(str, choices=("heads", "params"), help="what to match AxFormer on"),
    "match_params": ArgSpec((bool, int, str), 0, 10**12,
                            help="shorthand for match_by=params: a parameter count, a decisions.json, or true"),
    "target_params": ArgSpec(int, 0, 10**12, help="an explicit target encoder parameter count"),
}


# The amount keys of a peer held to a head + FFN cost budget (fisher, kprune): a kept fraction of the parent's
# head + FFN FLOPs / parameters, or a match (AxFormer's parameters or FLOPs) / an explicit parameter count.
BUDGET_ARGS: dict[str, ArgSpec] = {
    "flops_frac": ArgSpec(float, 0.0, 1.0, exclusive_low=True, help="kept fraction of the parent's head + FFN FLOPs"),
    "params_frac": ArgSpec(float, 0.0, 1.0, exclusive_low=True,
                           help="kept fraction of the parent's head + FFN parameters"),
}


MATCH_COST_ARGS: dict[str, ArgSpec] = {
    **MATCH_ARGS,
    "match_by": ArgSpec(str, choices=("params", "flops"), help="match AxFormer's parameters or FLOPs"),
}


# the cfg keys this method takes (baselines/args.py; checked before any job by the workflow, and here)
FISHER_ARGS: dict[str, ArgSpec] = {
    **BUDGET_ARGS,
    "max_rows": ArgSpec(int, 1, 10_000_000, default=2048, help="rows of the sample (the paper's 2048)"),
    "batch_size": ArgSpec(int, 1, 65_536, default=32, help="gradient / tuning batch size"),
    "seq_len": ArgSpec(float, 1.0, 1_000_000.0, default="mean", words=("mean",),
                       help="cost length: 'mean' (of the sample) or a number"),
    "rearrange": ArgSpec(bool, default=True, help="mask rearrangement"),
    "tune": ArgSpec(bool, default=True, help="mask tuning"),
    "damp": ArgSpec(float, 0.0, 1e6, default=0.1, help="damping of the tuning solve (x mean normal diagonal)"),
    "split": ArgSpec(str, choices=("search", "train"), default="search", help="the data the sample comes from",
                     note="dev is for reporting only."),
    **MATCH_COST_ARGS,
    **COMMON_ARGS,
}


# The method's own arguments (baselines/args.py: checked before any job by the workflow, and in the job)
KPRUNE_ARGS: dict[str, ArgSpec] = {
    **BUDGET_ARGS,
    "num_tokens": ArgSpec(int, 1, 100_000_000, default=100_000, help="sample size in real tokens (the paper's)"),
    "batch_size": ArgSpec(int, 1, 65_536, default=32, help="measurement / tuning batch size"),
    "lam_pred": ArgSpec(float, 0.0, 1e6, default=1.0, help="weight of predictive knowledge (reference script: 1)"),
    "lam_rep": ArgSpec(float, 0.0, 1e6, default=2.5e-4,
                       help="weight of representational knowledge (reference script: 2.5e-4)"),
    "mu": ArgSpec(float, 0.0, 1e6, default=64.0, help="head-score multiplier (reference script: 64)"),
    "temperature": ArgSpec(float, 0.0, 1000.0, exclusive_low=True, default=2.0,
                           help="softmax temperature of the predictive knowledge (reference: 2)"),
    "tune": ArgSpec(bool, default=True, help="knowledge-preserving weight tuning (off: mask search only)"),
    "split": ArgSpec(str, choices=("search", "train"), default="search", help="the data the sample comes from",
                     note="dev is for reporting only."),
    **MATCH_COST_ARGS,
    **COMMON_ARGS,
}


# the cfg keys this method takes (baselines/args.py; checked before any job by the workflow, and here)
HEADPRUNE_ARGS: dict[str, ArgSpec] = {
    "n_heads": ArgSpec(int, 0, 100_000, help="heads to remove"),
    "params_frac": ArgSpec(float, 0.0, 1.0, help="kept fraction of the attention-head parameters (a sweep budget)"),
    "batch_size": ArgSpec(int, 1, 65_536, default=32, help="scoring batch size"),
    "normalize": ArgSpec(bool, default=True, help="L2-normalise the scores per layer"),
    "split": ArgSpec(str, choices=("search", "train"), default="search",
                     help="the data the scores come from", note="dev is for reporting only."),
    "step_heads": ArgSpec(int, 0, 100_000, default=0, help="0 = one-shot; k > 0 = re-score after every k removals"),
    **MATCH_ARGS, **COMMON_ARGS,
}


# the cfg keys this method takes (baselines/args.py; checked before any job by the workflow, and here)
LAYERDROP_ARGS: dict[str, ArgSpec] = {
    "k": ArgSpec(int, 0, 10_000, help="top layers to drop"),
    "epochs": ArgSpec(float, 0.0, 1000.0, default=3.0, help="re-training epochs (0 = none)"),
    "lr": ArgSpec(float, 0.0, 1.0, exclusive_low=True, default=5e-5, help="re-training learning rate"),
    "batch_size": ArgSpec(int, 1, 65_536, default=32, help="re-training batch size"),
    **MATCH_ARGS, **COMMON_ARGS,
}

# The built-in peers' declarations by method name: what the workflow's pre-run check reads (no torch import).
DECLARED: dict[str, dict[str, ArgSpec]] = {"fisher": FISHER_ARGS, "kprune": KPRUNE_ARGS, "headprune": HEADPRUNE_ARGS,
                                           "layerdrop": LAYERDROP_ARGS}


def declared(method: str) -> dict[str, ArgSpec] | None:
    """The ``ARGS`` declaration of baseline ``method``: a built-in's from :data:`DECLARED`, another (registered)
    method's from its module, which is imported; None when it declares none."""
    import sys

    if method in DECLARED:
        return DECLARED[method]

    import baselines

    fn = baselines.get(method)
    spec = getattr(sys.modules.get(fn.__module__), "ARGS", None)
    return spec if isinstance(spec, dict) else None


def parse_args(method: str, spec: dict[str, ArgSpec], cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` checked against ``spec``: unknown keys refused, every declared key present (its default when not
    given), each value converted and range-checked. ConfigError ``<method>: <key> must be ...`` otherwise."""
    unknown = sorted(set(cfg) - set(spec))
    if unknown:
        raise ConfigError(f"{method}: unknown config keys {unknown}; known: {sorted(spec)}.")
    return {key: s.parse(method, key, cfg.get(key)) for key, s in spec.items()}


def check_cfg(method: str, cfg: dict[str, Any]) -> None:
    """Before any job: the cfg the CLI would build for ``method`` against its declaration (keys set by the CLI
    itself, seed and progress, excepted). A method without ``ARGS`` is checked inside its job only."""
    spec = declared(method)
    if spec is not None:
        parse_args(method, spec, cfg)
