"""Step arguments checked before any work: `steps.<name>.args` of the workflow config, and the CLI's own flags.

One source of truth: the allowed argument names, their types and choices come from the `axformer` argument
parser (:func:`axformer.steps.cliargs.build_parser`, the flags of the step config dataclasses), and the ranges from the config dataclasses' ``validate()`` the
steps themselves use (TrainConfig, PruneConfig, DistillConfig, QuantizeConfig) and the baselines registry.
A new CLI flag is therefore a valid step argument without any change here.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable

from axformer.utils import ConfigError

# config `command` -> the CLI step that receives its args (a quantize step's args go to `axformer measure`)
CLI_STEP = {"finetune": "finetune", "approximate": "approximate", "distill": "distill", "baseline": "baseline",
            "quantize": "measure"}

# Flags a workflow rule sets itself on every job (paths, wildcards, other config keys): a step's args may not
# set them too. Each maps to where the value comes from, for the error message.
_PATHS = "set by the rule (paths and wildcards)"
RULE_FLAGS: dict[str, dict[str, str]] = {
    "finetune": {"task": _PATHS, "model": "config `models`", "seed": "config `seeds`", "profile": "config `profile`",
                 "data_dir": "config `data_dir`", "threads": "the step's `threads` key", "ckpt": _PATHS,
                 "metrics": _PATHS, "no_progress": _PATHS, "allow_hub": "config `allow_hub`"},
    "approximate": {"parent": _PATHS, "ckpt": _PATHS, "metrics": _PATHS, "decisions": _PATHS, "data_dir":
                    "config `data_dir`", "threads": "the step's `threads` key", "variant_name": _PATHS,
                    "no_progress": _PATHS},
    "distill": {"parent": _PATHS, "ckpt": _PATHS, "metrics": _PATHS, "data_dir": "config `data_dir`",
                "threads": "the step's `threads` key", "no_progress": _PATHS},
    "baseline": {"parent": _PATHS, "ckpt": _PATHS, "metrics": _PATHS, "variant_name": _PATHS,
                 "match": "the step's `match` key", "data_dir": "config `data_dir`",
                 "threads": "the step's `threads` key", "no_progress": _PATHS},
    "measure": {"task": _PATHS, "seed": "config `seeds`", "profile": "config `profile`", "model": "config `models`",
                "variant_name": _PATHS, "baseline": _PATHS, "variant": _PATHS, "step_json": _PATHS,
                "metrics": _PATHS, "data_dir": "config `data_dir`", "device": "config `measure.device`",
                "batch_sizes": "config `measure.batch_sizes`", "seq_len": "config `measure.seq_len`",
                "warmup": "config `measure.warmup`", "min_iters": "config `measure.min_iters`",
                "min_seconds": "config `measure.min_seconds`", "threads": "config `measure.threads`"},
}


class StepArgError(ConfigError):
    """A bad step argument; ``key`` is the argument name (``topk``), the message says what is wrong."""

    def __init__(self, key: str, msg: str):
        super().__init__(msg)
        self.key = key


class _ParseError(Exception):
    pass


def _raise_parse_error(msg: str):
    raise _ParseError(msg)


def subparser(cli_step: str) -> argparse.ArgumentParser:
    """The argument parser of ``axformer <cli_step>`` (from cliargs.build_parser), raising instead of exiting."""
    from axformer.steps.cliargs import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if cli_step not in sub.choices:
        raise ConfigError(f"unknown CLI step {cli_step!r}")
    p = sub.choices[cli_step]
    p.error = _raise_parse_error  # argparse would print usage and exit
    return p


def _actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.option_strings and a.dest != "help"}


def allowed_args(command: str) -> list[str]:
    """Names a config step of ``command`` may set in ``args``: the CLI step's flags minus the rule-set ones
    (and minus the split arguments for finetune, which come from config `split`)."""
    cli_step = CLI_STEP[command]
    return sorted(set(_actions(subparser(cli_step))) - set(_reserved(cli_step)))


def _reserved(cli_step: str) -> dict[str, str]:
    out = dict(RULE_FLAGS.get(cli_step, {}))
    if cli_step == "finetune":
        from axformer.steps.cliargs import split_args

        split = argparse.ArgumentParser(add_help=False)
        split_args(split)
        out.update({d: "config `split` / `split_per_task`" for d in _actions(split)})
    return out


def to_argv(args: dict[str, Any]) -> list[str]:
    """{'accept_frac': 0.5, 'fast': True, 'sizes': [1, 32]} -> ['--accept-frac', '0.5', '--fast', '--sizes', '1',
    '32'] (the workflow's cli_flags, unquoted: true -> bare flag, false / null -> omitted)."""
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, *(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def _type_name(action: argparse.Action) -> str:
    t = action.type
    return {int: "an integer", float: "a number"}.get(t, getattr(t, "__name__", "a value"))


def _check_value(key: str, value: Any, action: argparse.Action) -> None:
    """One argument against its argparse action: flag vs value, one value vs a list, type, choices."""
    if value is None:
        return
    takes_value = action.nargs != 0
    if not takes_value:
        if not isinstance(value, bool):
            raise StepArgError(key, f"a switch: true or false (got {value!r}).")
        return
    if isinstance(value, bool):
        raise StepArgError(key, f"takes a value, not {str(value).lower()}.")
    many = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and not many:
        raise StepArgError(key, f"takes one value, not a list (got {value!r}).")
    if isinstance(value, dict) or any(isinstance(v, (dict, list, tuple)) for v in items):
        raise StepArgError(key, f"takes plain values (got {value!r}).")
    if many and not items and action.nargs == "+":
        raise StepArgError(key, "needs at least one value.")
    check_content(key, items)
    for v in items:
        if isinstance(v, bool):
            raise StepArgError(key, f"takes {_type_name(action)}, not {str(v).lower()}.")
        conv: Any = str(v)
        if action.type is not None:
            try:
                conv = action.type(str(v))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                raise StepArgError(key, f"must be {_type_name(action)} (got {v!r}).") from None
        if action.choices is not None and conv not in action.choices:
            raise StepArgError(key, f"must be one of {', '.join(map(str, action.choices))} (got {v!r}).")


def check_content(key: str, items: list[Any]) -> None:
    """What a value may contain, whatever its flag: no text starting with ``-`` (argparse would read it as an
    option: ``arg: [k=1, --ckpt=/elsewhere]`` would set the rule's own --ckpt), no non-finite number."""
    import math

    for v in items:
        if isinstance(v, str) and v.lstrip().startswith("-"):
            raise StepArgError(key, f"a value may not begin with '-' (got {v!r}): it would be read as another "
                               "option; give a negative number as a number (-1, not '-1').")
        if isinstance(v, float) and not math.isfinite(v):
            raise StepArgError(key, f"must be a finite number (got {v!r}).")


# ------------------------------------------------------------------------------- ranges (the steps' own checks)
def _from_ns(cls: type, ns: argparse.Namespace, renames: dict[str, str] | None = None, **extra: Any):
    """``cls(**fields)`` from the namespace entries named like its dataclass fields (after ``renames``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {}
    for dest, value in vars(ns).items():
        field = (renames or {}).get(dest, dest)
        if field in names and value is not None:
            kw[field] = value
    kw.update(extra)
    return cls(**kw)


def _check_model(spec: str, allow_hub: bool | None) -> None:
    from axformer.encoders import models

    if allow_hub is None:  # the CLI: the hub is tried unless HF_HUB_OFFLINE
        models.resolve_model_spec(spec)
    else:  # the workflow: the profile says whether the hub may be used
        models.check_model_spec(spec, allow_hub=allow_hub)


def _finetune(ns: argparse.Namespace, allow_hub: bool | None) -> None:
    from axformer.training.train_config import TrainConfig

    _from_ns(TrainConfig, ns).validate()
    if getattr(ns, "model", None) is not None:
        _check_model(ns.model, allow_hub)


def _approximate(ns: argparse.Namespace, allow_hub: bool | None) -> None:
    from axformer.steps.cliargs import parse_k
    from axformer.search.prune_config import PruneConfig

    # flags left out are None and take PruneConfig's defaults, as in cmd_approximate
    topk = {} if ns.topk is None else {"topk": parse_k(str(ns.topk))}
    _from_ns(PruneConfig, ns, {"groups": "n_groups"}, **topk).validate()
    if ns.search_max is not None and ns.search_max < 1:
        raise ConfigError(f"--search-max must be >= 1 (got {ns.search_max}).")
    if ns.batch_size is not None and ns.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {ns.batch_size}).")


def _distill(ns: argparse.Namespace, allow_hub: bool | None) -> None:
    from axformer.compress.distill_config import DistillConfig
    from axformer.training.train_config import TrainConfig

    dcfg = _from_ns(DistillConfig, ns, {"layers": "n_layers"})
    dcfg.validate()
    if dcfg.n_layers is not None and dcfg.n_layers < 1:
        raise ConfigError(f"--layers must be >= 1 (got {dcfg.n_layers}).")
    _from_ns(TrainConfig, ns).validate()
    if dcfg.init == "pretrained":
        _check_model(dcfg.pretrained, allow_hub)


def _baseline(ns: argparse.Namespace, allow_hub: bool | None) -> None:
    import baselines
    from axformer.steps.cliargs import BASELINE_FLAGS, parse_kv
    from baselines.args import DECLARED, check_cfg

    if ns.method not in DECLARED:  # a built-in's declaration needs no import of its module (and so no torch)
        baselines.get(ns.method)  # unknown name: ConfigError listing the registered ones
    extra = parse_kv(ns.arg)
    # the cfg the job would build (cli.cmd_baseline), against the method's own declared keys, types and ranges
    cfg = {k: getattr(ns, k) for k in BASELINE_FLAGS if getattr(ns, k, None) is not None}
    clash = sorted(set(extra) & set(cfg))
    if clash:
        raise ConfigError(f"--arg sets {clash}, which a flag already sets; give each value once.")
    check_cfg(ns.method, {**cfg, **extra})  # ranges of n_heads, k, epochs, lr, ...: the method's and bounds.py's


def _measure(ns: argparse.Namespace, allow_hub: bool | None) -> None:
    from axformer.compress.quantize_config import QuantizeConfig

    if ns.quantize != "none":
        QuantizeConfig(backend=ns.quantize_backend)  # checks the backend name


VALIDATORS: dict[str, Callable[[argparse.Namespace, bool | None], None]] = {
    "finetune": _finetune, "approximate": _approximate, "distill": _distill, "baseline": _baseline,
    "measure": _measure,
}


def check_namespace(cli_step: str, ns: argparse.Namespace, allow_hub: bool | None = None) -> None:
    """The value checks of ``axformer <cli_step>`` on parsed arguments; ConfigError before any work."""
    from axformer.bounds import check_flags

    fn = VALIDATORS.get(cli_step)
    if fn is not None:
        fn(ns, allow_hub)
    check_flags(cli_step, ns)  # then every number finite and within its declared range (axformer/bounds.py)


def _parse(p: argparse.ArgumentParser, args: dict[str, Any]) -> argparse.Namespace:
    given = set(args)
    dummies: list[str] = []
    for dest, action in _actions(p).items():
        if action.required and dest not in given:
            dummies += [action.option_strings[0], "X"]  # rule-set paths: any value parses
    return p.parse_args(dummies + to_argv(args))


def check_step_args(command: str, args: dict[str, Any], allow_hub: bool = False) -> None:
    """Check the ``args`` of a config step of ``command`` as the CLI would, before any job.

    Raises :class:`StepArgError` (``.key`` = the argument at fault): unknown or rule-set argument, wrong type,
    value not among the choices, value out of range, unknown baseline method, model not loadable offline.
    """
    cli_step = CLI_STEP.get(command)
    if cli_step is None:  # a command this module does not know yet: the CLI checks it when the job runs
        return
    p = subparser(cli_step)
    actions = _actions(p)
    reserved = _reserved(cli_step)
    for key, value in args.items():
        if key in reserved:
            raise StepArgError(key, f"not a step argument: {reserved[key]} sets --{key.replace('_', '-')}.")
        if key not in actions:
            raise StepArgError(key, f"unknown argument of `axformer {cli_step}`; known: "
                               f"{', '.join(allowed_args(command))} (see `axformer {cli_step} --help`).")
        _check_value(key, value, actions[key])
    try:
        ns = _parse(p, args)
        check_namespace(cli_step, ns, allow_hub)
    except (_ParseError, ConfigError) as exc:
        raise StepArgError(_blame(p, args, actions, allow_hub, cli_step, str(exc)), str(exc)) from None


def _blame(p, args: dict[str, Any], actions: dict[str, argparse.Action], allow_hub: bool, cli_step: str,
           msg: str) -> str:
    """The argument an error is about: one whose text value or name the message quotes, else the first that
    fails on its own (required ones such as a baseline's method kept, the others at their defaults); '' when
    only a combination fails."""
    import re

    for key, value in args.items():
        if isinstance(value, str) and repr(value) in msg:
            return key
    for key in args:
        if re.search(rf"(?<![A-Za-z0-9_-])(--{re.escape(key.replace('_', '-'))}|{re.escape(key)})(?![A-Za-z0-9_])", msg):
            return key

    def fails(sub: dict[str, Any]) -> bool:
        try:
            check_namespace(cli_step, _parse(p, sub), allow_hub)
        except (_ParseError, ConfigError):
            return True
        return False

    base = {k: v for k, v in args.items() if actions[k].required}
    if base and fails(base):
        return next(iter(base))
    for key in args:
        if key not in base and fails({**base, key: args[key]}):
            return key
    return ""
