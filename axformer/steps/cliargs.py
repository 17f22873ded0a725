"""The arguments of every `axformer <step>`: one parser, its flags generated from the step config dataclasses.

A flag that sets a config field (``--epochs`` -> ``TrainConfig.epochs``, ``--topk`` -> ``PruneConfig.topk``,
``--seq-len`` -> ``MeasureConfig.seq_len``, ``--search-frac`` -> ``data.SplitConfig.search_frac``) is made by
:func:`config_flags` from the dataclass field: its type, its choices (a ``Literal``) and its help, which quotes
the dataclass default. The flag's own default is None ("not given"), and :func:`config_from` builds the config
from the flags that were given, so each default lives once, in its dataclass.

The step registry (:data:`STEP_ARGS`) and :func:`build_parser` live here, below both the CLI (axformer/cli.py,
which dispatches) and the step-argument checks of the workflow (axformer/steps/stepargs.py), so neither imports the
other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from typing import Any, Callable

from axformer.utils import ConfigError

AddArgs = Callable[[argparse.ArgumentParser], None]
# step name -> (adds its arguments, one-line help); cli.py pairs each with its command
STEP_ARGS: dict[str, tuple[AddArgs, str]] = {}


def step_args(name: str, help: str):
    """Register ``add(parser)`` as the arguments of ``axformer name``."""

    def deco(add: AddArgs) -> AddArgs:
        STEP_ARGS[name] = (add, help)
        return add

    return deco


def build_parser() -> argparse.ArgumentParser:
    """The `axformer` parser with one sub-parser per registered step."""
    parser = argparse.ArgumentParser(prog="axformer", description="the one entry point every workflow rule calls")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, (add, help_) in STEP_ARGS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


# ------------------------------------------------------------------------------- flags from config dataclasses
def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _argparse_kw(hint: Any) -> dict[str, Any]:
    """argparse keywords for a field type: bool -> switch, Literal -> choices, list[int] -> nargs '+', X | None
    -> X; a union of two number types (topk: int or fraction) stays text, parsed by the step."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) > 1:
            return {}
        return _argparse_kw(rest[0])
    if hint is bool:
        return {"action": "store_true"}
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin is list:
        return {"type": args[0], "nargs": "+"}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no CLI flag form for the field type {hint!r}")


def config_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, names: list[str],
                 flags: dict[str, str] | None = None, helps: dict[str, str] | None = None,
                 choices: dict[str, tuple] | None = None, defaults: dict[str, Any] | None = None) -> None:
    """Add ``--<flag>`` for each field ``names`` of dataclass ``cls`` (flag = field name unless ``flags``
    renames it), default None; the help quotes the dataclass default (or ``defaults``' value, a step's own
    default kept beside its step, e.g. distill.TRAIN_DEFAULTS)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        flag = (flags or {}).get(name, name)
        kw = _argparse_kw(hints[name])
        if choices and name in choices:
            kw["choices"] = list(choices[name])
        default = (defaults or {}).get(name, _default(fields[name]))
        shown = "off" if kw.get("action") == "store_true" and default is False else default
        if isinstance(shown, (list, tuple)):
            shown = " ".join(map(str, shown))
        text = (helps or {}).get(name, "")
        kw["help"] = f"{text} (default: {shown})" if text else f"default: {shown}"
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, **kw)


def given(args: argparse.Namespace, names: list[str], flags: dict[str, str] | None = None) -> dict[str, Any]:
    """{field: value} of the config fields ``names`` whose flags were given (not None)."""
    out = {}
    for name in names:
        value = getattr(args, (flags or {}).get(name, name), None)
        if value is not None:
            out[name] = value
    return out


def config_from(cls: type, args: argparse.Namespace, names: list[str], flags: dict[str, str] | None = None,
                base: dict[str, Any] | None = None, **fixed: Any) -> Any:
    """``cls(**base, **given flags, **fixed)``: fields not given keep the dataclass default (or ``base``, a
    step's own default kept beside it); ``fixed`` are values the step sets itself (seed, progress)."""
    return cls(**{**(base or {}), **given(args, names, flags), **fixed})


# ------------------------------------------------------------------------------- value parsers shared with stepargs
def parse_k(raw: str) -> int | float:
    """``--topk``: an int (keys per query) or a fraction in (0, 1] of the real length."""
    try:
        return int(raw)
    except ValueError:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--topk must be an int (keys per query) or a fraction in (0, 1] (got {raw!r}).") from None


def parse_kv(items: list[str]) -> dict[str, Any]:
    """``--arg key=value`` pairs -> cfg dict; values are JSON when they parse (3, 0.5, true, null, [1,2]), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier() or key.startswith("_"):
            raise ConfigError(f"--arg takes key=value pairs (got {item!r}), e.g. --arg step_heads=4.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if isinstance(out[key], str) and out[key].lstrip().startswith("-"):
            raise ConfigError(f"--arg {key}: a value may not begin with '-' (got {raw!r}); it reads as an option.")
        if isinstance(out[key], float) and not math.isfinite(out[key]):  # json reads NaN / Infinity
            raise ConfigError(f"--arg {key} must be a finite number (got {raw!r}).")
    return out


# ------------------------------------------------------------------------------- shared argument groups
def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="sst2 | mrpc | cola | rte | stsb | qnli | squad, or a declared task")
    p.add_argument("--task-def", default=None, metavar="FILE",
                   help="JSON task declaration with its name (the workflow writes one per profile task_defs entry; "
                        "default: the built-in registry, axformer/taskdata/tasks.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with glue/ and squad/ (default: $AXFORMER_DATA)")
    p.add_argument("--profile", default="adhoc", help="name of the config profile, recorded in metrics.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded)")
    p.add_argument("--allow-hub", action="store_true", help="fetch missing GLUE files from the hub (needs internet)")


SPLIT_HELP = {"search_frac": "fraction of GLUE train held out for the search", "search_max": "cap on search-split rows",
              "train_max": "subsample train' to this many rows (CPU budget)",
              "dev_max": "subsample dev (smoke runs only)",
              "search_rows": "split index file (workflow/splits/*.json): its train rows are the search split",
              "max_length": "tokenizer length (none: the task's, 128 for GLUE, 384 for SQuAD windows)"}


def split_args(p: argparse.ArgumentParser) -> None:
    """The split flags (data.SplitConfig; SQuAD's own below, defaults in squad.py / tasks.Task)."""
    from axformer.taskdata import squad
    from axformer.taskdata.splits import SplitConfig
    from axformer.taskdata.tasks import Task

    config_flags(p, SplitConfig, [f.name for f in dataclasses.fields(SplitConfig)], helps=SPLIT_HELP)
    g = p.add_argument_group("SQuAD (task squad only; DESIGN §8)")
    g.add_argument("--squad-protocol", default=None, choices=list(squad.PROTOCOLS),
                   help="standard: train-v1.1.json -> dev-v1.1.json (default); local: dev-v1.1.json split by article")
    g.add_argument("--squad-fractions", nargs="+", default=None, metavar="F",
                   help="local protocol: fine-tune,search,report fractions of the dev articles (default "
                        f"{','.join(map(str, squad.DEFAULT_FRACTIONS))})")
    g.add_argument("--doc-stride", type=int, default=None, help="context tokens shared by consecutive windows of a "
                                                                f"long context (default {Task.doc_stride})")
    g.add_argument("--max-answer-len", type=int, default=None,
                   help=f"longest predicted answer in tokens (default {Task.max_answer_len})")


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (cuda when torch sees a GPU, else cpu) | cpu | cuda | cuda:N: the model and every "
                        "cached tensor of the step live there (recorded)")


def step_outputs(p: argparse.ArgumentParser, parent: str) -> None:
    """--parent, --ckpt, --metrics of a step that makes a checkpoint from another."""
    p.add_argument("--parent", required=True, help=parent)
    p.add_argument("--ckpt", required=True, help="output checkpoint folder")
    p.add_argument("--metrics", required=True, help="output step record (JSON)")


def run_args(p: argparse.ArgumentParser) -> None:
    """--data-dir, --threads, --no-progress, --device of a step on a parent checkpoint."""
    p.add_argument("--data-dir", default=None, help="overrides the data_dir stored in the parent checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded)")
    p.add_argument("--no-progress", action="store_true")
    device_arg(p)


TRAIN_FLAGS = ["epochs", "batch_size", "lr", "weight_decay", "warmup_ratio"]
SELECT_CHOICES = ("none", "metric", "loss")


# ------------------------------------------------------------------------------- the steps
@step_args("finetune", "fine-tune a pretrained encoder on train' (the baseline)")
def finetune_args(p: argparse.ArgumentParser) -> None:
    from axformer.training.train_config import TrainConfig

    common_args(p)
    split_args(p)
    p.add_argument("--model", default="minilm", help="'minilm' (embedded), 'tiny-random', HF id or local folder")
    config_flags(p, TrainConfig, TRAIN_FLAGS)
    p.add_argument("--select", default="none", choices=SELECT_CHOICES,
                   help="keep the epoch with the best search-split headline metric ('metric') or mean loss "
                        "('loss') instead of the last one (scored after every epoch; dev is never used)")
    p.add_argument("--ckpt", required=True, help="output checkpoint folder")
    p.add_argument("--metrics", required=True, help="output metrics.json")
    p.add_argument("--no-progress", action="store_true")
    device_arg(p)


PRUNE_NAMES = ["mode", "granularity", "accept_rule", "accept_frac", "accept_margin", "accept_z", "less_important",
               "n_groups", "topk", "topk_form", "latency_aware", "lat_batch_size", "lat_seq_len", "lat_seconds",
               "lat_min_iters", "batch_size"]
PRUNE_FLAGS = {"n_groups": "groups"}
PRUNE_HELP = {
    "mode": "full | prune (pruning only) | hardattn (hard attention only): the ablations",
    "granularity": "blocks only, or descend into heads / FFN neuron groups (fine)",
    "accept_rule": "guarded: loss beats the best by the margin and search metric no worse; official: the "
                   "authors' released rule (loss < best, more than int(N x n) samples no worse, no margin)",
    "accept_frac": "N: fraction of search samples no worse",
    "accept_margin": "relative floor of the acceptance margin (x best loss); 0 with --accept-z 0: no margin",
    "accept_z": "margin in standard errors of the paired per-sample loss difference",
    "less_important": "'less important' below this x best loss", "n_groups": "FFN neuron groups per layer",
    "topk": "hard attention K: int, or fraction of the real length",
    "topk_form": "official (the paper's: top-K of the softmax probabilities, not renormalised) | renorm",
    "latency_aware": "time every hard-attention candidate; reject it where it slows the model down",
    "lat_batch_size": "latency timing batch size", "lat_seq_len": "latency timing length (padded)",
    "lat_seconds": "minimum seconds per latency timing", "lat_min_iters": "minimum timed forwards per model",
    "batch_size": "search batch size",
}


@step_args("approximate", "AxFormer search on the search split: hard attention, then accuracy-driven pruning")
def approximate_args(p: argparse.ArgumentParser) -> None:
    from axformer.search.prune_config import PruneConfig

    step_outputs(p, "checkpoint to approximate (e.g. the finetune checkpoint)")
    p.add_argument("--decisions", required=True, help="output decisions.json")
    config_flags(p, PruneConfig, PRUNE_NAMES, flags=PRUNE_FLAGS, helps=PRUNE_HELP)
    p.add_argument("--variant-name", default=None, help="variant label (default: <parent variant>+axformer)")
    p.add_argument("--search-max", type=int, default=None,
                   help="use at most this many rows of the parent's search split (stratified, seeded)")
    run_args(p)


MEASURE_FLAGS = ["batch_sizes", "seq_len", "warmup", "min_iters", "min_seconds", "threads", "dtype", "passes",
                 "pass_retries", "noise_max_other_cpu", "noise_max_steal", "pass_process", "round_order"]
MEASURE_HELP = {"threads": "torch CPU threads for evaluation and timing (recorded; none: torch's)",
                "dtype": "float dtype of the baseline and float variants during evaluation and timing",
                "batch_sizes": "timed batch sizes", "seq_len": "padded timing length",
                "warmup": "untimed forwards per model", "min_iters": "timed forwards per model (at least)",
                "min_seconds": "... and at least this many seconds (per timing pass)",
                "passes": "independent timing passes, each a fresh process; the speedup is their median",
                "pass_retries": "noisy passes a timing job may repeat (bounded)",
                "noise_max_other_cpu": "a pass is noisy when other processes used more than this share of the CPU",
                "noise_max_steal": "... or the hypervisor stole more than this share",
                "pass_process": "fresh: each pass in a new process; inline: in this one (tests, quick looks)",
                "round_order": "order of the models in each timing round: shuffle (seeded per round), rotate, fixed"}
QUANTIZE_CHOICES = ("none", "int8", "int8_ort", "int8_ort_static", "int8_ov")


@step_args("measure",
           "metric (dev + search), size, latency vs the baseline, memory and FLOPs of a variant -> metrics.json")
def measure_args(p: argparse.ArgumentParser) -> None:
    from axformer.device import DTYPES
    from axformer.measurement.measure_config import ROUND_ORDERS, MeasureConfig

    p.add_argument("--task", required=True, help="task name (its declaration comes from the baseline checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="adhoc", help="name of the config profile, recorded in metrics.json")
    p.add_argument("--model", default=None, help="model spec recorded in metrics.json (default: the baseline's)")
    p.add_argument("--variant-name", required=True,
                   help="variant name recorded in metrics.json, e.g. finetune+axformer+int8")
    p.add_argument("--baseline", required=True, help="finetune checkpoint: timed interleaved with the variant")
    p.add_argument("--variant", required=True, help="checkpoint of the variant (for X+int8: X's checkpoint)")
    # int8_ort / int8_ort_static: ONNX Runtime int8, int8_ov: OpenVINO int8 (axformer.compress.export; extras ort / ov)
    p.add_argument("--quantize", default="none", choices=list(QUANTIZE_CHOICES),
                   help="quantize the variant before measuring")
    p.add_argument("--quantize-backend", default="auto", help="auto | torch_dynamic | torchao | bitsandbytes")
    p.add_argument("--step-json", nargs="+", action="extend", default=[], metavar="STEP.json",
                   help="step records whose extra blocks (train, search, data, distill, ...) are copied in")
    p.add_argument("--metrics", required=True, help="output metrics.json")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--quantize-compute-dtype", default=None, choices=["float32", "float16"],
                   help="bitsandbytes int8: dtype of activations and non-Linear parts (default float32)")
    p.add_argument("--memory-isolation", default=None, choices=["on", "off"],
                   help="CPU: measure the variant's memory in a subprocess of its own (on, default) or record only "
                        "its tensor bytes (off, fast)")
    config_flags(p, MeasureConfig, MEASURE_FLAGS, helps=MEASURE_HELP,
                 choices={"dtype": DTYPES, "pass_process": ("fresh", "inline"), "round_order": ROUND_ORDERS})
    p.add_argument("--data-dir", default=None, help="overrides the data_dir stored in the baseline checkpoint")
    p.add_argument("--timing", default=None, metavar="TIMING.json",
                   help="the timing record of the run's (task, model, seed) group (axformer time): its passes give "
                        "the latency blocks; without it the pair is timed here in its own passes")


@step_args("time", "timing passes of every variant of one (task, model, seed) against its finetune -> timing.json")
def time_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan-json", required=True,
                   help='JSON: {"task", "model", "seed", "profile", "baseline": CKPT, "data_dir", "entries": '
                        '[{"variant", "ckpt", "quantize", "quantize_backend", "quantize_compute_dtype"}], '
                        '"measure": {MeasureConfig fields}} (the workflow writes it from the profile)')
    p.add_argument("--out", required=True, help="output timing.json (timing.npz beside it)")


@step_args("majority", "constant predictor row: majority class of train' (train' mean for regression) scored on dev")
def majority_args(p: argparse.ArgumentParser) -> None:
    common_args(p)
    split_args(p)
    p.add_argument("--model", default="none", help="model folder the row is filed under (the predictor uses none)")
    p.add_argument("--metrics", required=True, help="output metrics.json")


@step_args("report", "collect every metrics.json into summary.csv, tables and figures")
def report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="folder with <task>/<model>/<variant>/seed<k>/metrics.json")
    p.add_argument("--figures", default="figures", help="output folder for tables and figures")
    p.add_argument("--summary", default=None, help="output CSV (default: RESULTS/summary.csv)")
    p.add_argument("--batch-size", type=int, default=None, help="latency batch size used in plots (default: report's)")
    p.add_argument("--verdicts", default=None, help="output verdict table CSV (default: verdicts.csv beside --summary)")
    p.add_argument("--resamples", type=int, default=None,
                   help="bootstrap resamples of the verdict intervals, >= 1000 (default 2000)")
    p.add_argument("--bootstrap-seed", type=int, default=None, help="seed of the verdict bootstrap (default 0)")
    p.add_argument("--readme", default=None,
                   help="README whose verdict block (between its verdicts:begin / verdicts:end markers) is rewritten "
                        "from the verdict table (axformer.reporting.readme_block; the default profile passes README.md)")


DISTILL_NAMES = ["n_layers", "strategy", "init", "pretrained", "temperature", "alpha"]
DISTILL_FLAGS = {"n_layers": "layers"}
DISTILL_HELP = {"n_layers": "student depth (none: half the teacher's, min 1)",
                "strategy": "which teacher layers initialise the student (see axformer/compress/distill.py)",
                "init": "teacher layers, or a pretrained BERT", "pretrained": "with --init pretrained: a model spec",
                "alpha": "weight of the soft (teacher) loss", "temperature": "softmax temperature of the soft loss"}


@step_args("distill", "knowledge distillation of the fine-tuned model into a shallower BERT student on train'")
def distill_args(p: argparse.ArgumentParser) -> None:
    from axformer.compress.distill_config import INITS, STRATEGIES, TRAIN_DEFAULTS, DistillConfig
    from axformer.training.train_config import TrainConfig

    step_outputs(p, "fine-tuned teacher checkpoint (unedited: the finetune checkpoint)")
    config_flags(p, DistillConfig, DISTILL_NAMES, flags=DISTILL_FLAGS, helps=DISTILL_HELP, choices={"strategy": STRATEGIES, "init": INITS})
    config_flags(p, TrainConfig, TRAIN_FLAGS, defaults=TRAIN_DEFAULTS)
    run_args(p)


@step_args("baseline", "a peer compression method from baselines/ (head pruning, layer dropping, ...) on a checkpoint")
def baseline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="registered baseline name (baselines/: headprune, layerdrop, ...)")
    step_outputs(p, "checkpoint to compress (e.g. the finetune checkpoint)")
    p.add_argument("--match", default=None, metavar="DECISIONS.json",
                   help="AxFormer decisions.json: remove as much as AxFormer did (equal-size comparison)")
    p.add_argument("--match-by", default=None, choices=["heads", "params"],
                   help="with --match: count removed heads, or encoder parameters (default: the method's)")
    # the method's own defaults live with the method (baselines/): unset flags are not passed
    p.add_argument("--target-params", type=int, default=None, help="target encoder parameter count")
    p.add_argument("--n-heads", type=int, default=None, help="headprune: heads to remove")
    p.add_argument("--k", type=int, default=None, help="layerdrop: top layers to drop")
    p.add_argument("--epochs", type=float, default=None, help="re-training epochs (methods that re-train)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--arg", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="extra method arguments passed into cfg (value parsed as JSON when it can be)")
    p.add_argument("--variant-name", default=None, help="variant recorded in the checkpoint (default: parent+method)")
    run_args(p)


BASELINE_FLAGS = ("match", "match_by", "target_params", "n_heads", "k", "epochs", "lr", "batch_size")
