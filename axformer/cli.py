"""`axformer <step> ...`: the one entry point every workflow rule calls.

Each step reads its inputs, does one thing of the paper's pipeline and writes its outputs atomically.
Bad input ends in one line `axformer: error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from axformer.utils import ConfigError

STEPS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None], str]] = {}


def step(name: str, help: str):
    """Register ``cmd`` as ``axformer name``; ``add_args`` is the function's ``.args`` attribute."""

    def deco(fn):
        STEPS[name] = (getattr(fn, "args"), fn, help)
        return fn

    return deco


def with_args(add: Callable[[argparse.ArgumentParser], None]):
    def deco(fn):
        fn.args = add
        return fn

    return deco


# ---------------------------------------------------------------- shared argument groups
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="sst2 | mrpc | cola | rte | stsb | qnli | squad, or a declared task")
    p.add_argument("--task-def", default=None, metavar="FILE",
                   help="JSON task declaration with its name (the workflow writes one per profile task_defs entry; "
                        "default: the built-in registry, axformer/tasks.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with glue/ and squad/ (default: $AXFORMER_DATA)")
    p.add_argument("--profile", default="adhoc", help="name of the config profile, recorded in metrics.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded)")
    p.add_argument("--allow-hub", action="store_true", help="fetch missing GLUE files from the hub (needs internet)")


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search-frac", type=float, default=0.15, help="fraction of GLUE train held out for the search")
    p.add_argument("--search-max", type=int, default=2000, help="cap on search-split rows")
    p.add_argument("--train-max", type=int, default=None, help="subsample train' to this many rows (CPU budget)")
    p.add_argument("--dev-max", type=int, default=None, help="subsample dev (smoke runs only)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokenizer length (default: the task's, 128 for GLUE, 384 for SQuAD windows)")
    g = p.add_argument_group("SQuAD (task squad only; DESIGN §8)")
    g.add_argument("--squad-protocol", default=None, choices=list(SQUAD_PROTOCOLS),
                   help="standard: train-v1.1.json -> dev-v1.1.json (default); local: dev-v1.1.json split by article")
    g.add_argument("--squad-fractions", nargs="+", default=None, metavar="F",
                   help="local protocol: fine-tune,search,report fractions of the dev articles (default 0.6,0.1,0.3)")
    g.add_argument("--doc-stride", type=int, default=None,
                   help="context tokens shared by consecutive windows of a long context (default 128)")
    g.add_argument("--max-answer-len", type=int, default=None, help="longest predicted answer in tokens (default 30)")


SQUAD_PROTOCOLS = ("standard", "local")
# Split arguments recorded in a fine-tuned checkpoint (axformer_step.json) so every later step rebuilds the
# same splits; the QA ones only for QA tasks.
SPLIT_KEYS = ("seed", "search_frac", "search_max", "train_max", "dev_max", "max_length", "data_dir", "allow_hub")
QA_SPLIT_KEYS = ("squad_protocol", "squad_fractions", "doc_stride", "max_answer_len")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (cuda when torch sees a GPU, else cpu) | cpu | cuda | cuda:N: the model and every "
                        "cached tensor of the step live there (recorded)")


def _setup_device(args: argparse.Namespace):
    """``--device`` resolved (ConfigError before any loading if unusable); the resolved name is recorded."""
    from axformer.device import resolve_device

    dev = resolve_device(getattr(args, "device", None))
    args.device = str(dev)
    return dev


def _nonneg(name: str, v: Any) -> None:
    if v is not None and v < 0:
        raise ConfigError(f"--{name} must be >= 0 (got {v}).")


def _setup_threads(n: int | None) -> None:
    import torch

    if n is not None:
        if n < 1:
            raise ConfigError(f"--threads must be >= 1 (got {n}).")
        torch.set_num_threads(n)


def resolve_task(args: argparse.Namespace):
    """The task of ``args.task`` with its QA settings from the arguments; fills in the task's defaults for
    ``max_length`` and (QA) the SQuAD arguments, so the values recorded are the values used."""
    from axformer import squad
    from axformer.tasks import resolve, with_qa_settings

    # --task-def FILE (finetune, majority) or the declaration a checkpoint recorded (later steps); else built-in
    task = resolve(args.task, getattr(args, "task_def", None))
    task = with_qa_settings(task, getattr(args, "doc_stride", None), getattr(args, "max_answer_len", None))
    if getattr(args, "max_length", None) is None:
        args.max_length = task.max_length
    if task.is_qa:
        args.squad_protocol = getattr(args, "squad_protocol", None) or "standard"
        fr = getattr(args, "squad_fractions", None)
        args.squad_fractions = list(squad.parse_fractions(fr)) if args.squad_protocol == "local" else None
        args.doc_stride, args.max_answer_len = task.doc_stride, task.max_answer_len
        squad.question_budget(args.max_length, task.doc_stride)  # refuse impossible windows before any work
    return task


def make_task_splits(task, args: argparse.Namespace):
    """``data.make_splits`` from the split arguments (SQuAD: protocol and article fractions too)."""
    from axformer import data

    return data.make_splits(task, args.data_dir, args.seed, args.search_frac, args.search_max, args.train_max,
                            args.dev_max, allow_hub=bool(getattr(args, "allow_hub", False)),
                            protocol=getattr(args, "squad_protocol", None) or "standard",
                            local_fractions=getattr(args, "squad_fractions", None))


def step_info(task, split: argparse.Namespace | dict[str, Any], model_spec: str | None, variant: str,
              **extra: Any) -> dict[str, Any]:
    """What a checkpoint records (axformer_step.json): its split arguments, the task and its resolved
    declaration (so every later step reads the task as it was fine-tuned), the model spec and the variant."""
    keys = vars(split) if isinstance(split, argparse.Namespace) else split
    return {"split": {k: v for k, v in keys.items() if k not in ("task", "task_def", "model_spec", "variant")},
            "task": task.name, "task_def": task.decl, "model_spec": model_spec, "variant": variant, **extra}


def split_record(task, args: argparse.Namespace) -> dict[str, Any]:
    """The split arguments a checkpoint records (axformer_step.json)."""
    return vars_subset(args, SPLIT_KEYS + (QA_SPLIT_KEYS if task.is_qa else ()))


def load_task_data(args: argparse.Namespace, tokenizer):
    """Task, splits and tokenized splits, from the split arguments (shared by every step)."""
    from axformer import data

    task = resolve_task(args)
    splits = make_task_splits(task, args)
    tok = {name: data.tokenize(getattr(splits, name), tokenizer, task, args.max_length)
           for name in ("train", "search", "dev")}
    return task, splits, tok


def _check_writable(*paths: str | None) -> None:
    for p in paths:
        if p is None:
            continue
        parent = Path(p).resolve().parent
        probe = parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise ConfigError(f"output {p} is not writable (no write permission on {probe}); choose another path.")


# ---------------------------------------------------------------- finetune
def _finetune_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    _split_args(p)
    p.add_argument("--model", default="minilm", help="'minilm' (embedded), 'tiny-random', HF id or local folder")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--select", default="none", choices=SELECT_CHOICES,
                   help="keep the epoch with the best search-split headline metric ('metric') or mean loss "
                        "('loss') instead of the last one (scored after every epoch; dev is never used)")
    p.add_argument("--ckpt", required=True, help="output checkpoint folder")
    p.add_argument("--metrics", required=True, help="output metrics.json")
    p.add_argument("--no-progress", action="store_true")
    _device_arg(p)


SELECT_CHOICES = ("none", "metric", "loss")


def search_selector(kind: str, model_ds, tokenizer, task):
    """The ``train(select=...)`` scorer for ``--select`` on the search split (higher is better); None for
    'none'. 'metric' breaks ties between epochs of equal metric (accuracy on a few hundred rows ties often)
    by the lower mean loss."""
    from axformer import train

    if kind == "none":
        return None
    if kind not in SELECT_CHOICES:
        raise ConfigError(f"--select must be one of {', '.join(SELECT_CHOICES)} (got {kind!r}).")

    def score(model) -> float:
        res = train.evaluate(model, model_ds, tokenizer, task)
        if kind == "loss":
            return -res.mean_loss
        # the loss term is <= 1e-6: it only orders epochs whose metric is equal
        return float(res.metrics[task.metric]) - 1e-9 * min(res.mean_loss, 1e3)

    return score


@step("finetune", "fine-tune a pretrained encoder on train' (the baseline)")
@with_args(_finetune_args)
def cmd_finetune(args: argparse.Namespace) -> None:
    from axformer import models, results, train

    _nonneg("seed", args.seed)
    _check_writable(args.ckpt, args.metrics)
    _setup_threads(args.threads)
    device = _setup_device(args)
    task = resolve_task(args)  # bad task / QA settings fail before the model loads
    model, tokenizer = models.load_pretrained(args.model, task, seed=args.seed)
    model.to(device)
    task, splits, tok = load_task_data(args, tokenizer)
    cfg = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            progress=not args.no_progress)
    select = search_selector(args.select, tok["search"], tokenizer, task)
    log = train.train(model, tok["train"], tokenizer, task, cfg, select=select)
    if select is not None:
        curve = ", ".join(f"{s['epoch']:g}: {s['score']:.4f}" for s in log["select_scores"])
        print(f"search-split {args.select} per epoch ({curve}) -> kept epoch {log['selected_epoch']:g}")
    dev = train.evaluate(model, tok["dev"], tokenizer, task)
    search = train.evaluate(model, tok["search"], tokenizer, task)
    ck_info = step_info(task, split_record(task, args), args.model, "finetune")
    ckpt = models.save_checkpoint(model, tokenizer, args.ckpt, extra=ck_info)
    rec = results.new_record(task.name, args.model, "finetune", args.seed, args.profile)
    rec["metric"] = results.metric_block(task, dev.metrics, search.metrics, len(splits.dev), len(splits.search))
    rec["metric"]["search_loss"] = search.mean_loss
    rec["size"] = results.size_block(model, ckpt)
    rec["data"] = splits.info
    rec["train"] = {k: v for k, v in log.items() if k != "loss_curve"}
    rec["train"]["select"] = args.select
    rec["train"]["device"] = args.device
    rec["train"]["loss_first"] = log["loss_curve"][0]
    rec["train"]["loss_last20_mean"] = sum(log["loss_curve"][-20:]) / len(log["loss_curve"][-20:])
    results.write(args.metrics, rec)
    print(f"{task.name} finetune seed {args.seed}: dev {task.metric} = {rec['metric']['dev']:.4f} "
          f"(train {log['wall_s']:.0f} s) -> {args.metrics}")


def vars_subset(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in keys}


# ---------------------------------------------------------------- approximate (AxFormer)
def _parent_split_args(parent: str | os.PathLike, args: argparse.Namespace) -> argparse.Namespace:
    """Split/data arguments of the fine-tuning run that produced ``parent``, so the search split is the same."""
    from axformer import results

    step = results.read(Path(parent) / "axformer_step.json", kind="ckpt_step")
    ns = argparse.Namespace(**step["split"])
    ns.task = step["task"]
    ns.task_def = step.get("task_def")  # None in checkpoints from before task declarations: the built-in task
    if getattr(args, "data_dir", None):
        ns.data_dir = args.data_dir
    ns.model_spec = step.get("model_spec")
    ns.variant = step.get("variant", "finetune")
    return ns


def _parse_k(raw: str) -> int | float:
    try:
        return int(raw)
    except ValueError:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--topk must be an int (keys per query) or a fraction in (0, 1] (got {raw!r}).") from None


def _approximate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parent", required=True, help="checkpoint to approximate (e.g. the finetune checkpoint)")
    p.add_argument("--ckpt", required=True, help="output checkpoint folder")
    p.add_argument("--metrics", required=True, help="output step record (JSON)")
    p.add_argument("--decisions", required=True, help="output decisions.json")
    # None = PruneConfig's default (the search defaults live in the dataclass only)
    p.add_argument("--mode", default=None, choices=["full", "prune", "hardattn"])
    p.add_argument("--granularity", default=None, choices=["fine", "blocks"])
    p.add_argument("--accept-rule", default=None, choices=["guarded", "paper", "meanloss", "metric"],
                   help="guarded (default): loss beats the best by the margin and search metric no worse")
    p.add_argument("--accept-frac", type=float, default=None, help="N: fraction of search samples no worse")
    p.add_argument("--accept-margin", type=float, default=None,
                   help="relative floor of the acceptance margin (x best loss); 0 with --accept-z 0: no margin")
    p.add_argument("--accept-z", type=float, default=None,
                   help="margin in standard errors of the paired per-sample loss difference")
    p.add_argument("--less-important", type=float, default=None)
    p.add_argument("--groups", type=int, default=None)
    p.add_argument("--topk", default=None, help="hard attention K: int, or fraction of the real length")
    p.add_argument("--topk-form", default=None, choices=["official", "renorm"],
                   help="official (the paper's: top-K of the softmax probabilities, not renormalised) | renorm")
    p.add_argument("--latency-aware", action="store_true", default=None,
                   help="time every hard-attention candidate; reject it where it slows the model down")
    p.add_argument("--lat-batch-size", type=int, default=None, help="latency timing batch size")
    p.add_argument("--lat-seq-len", type=int, default=None, help="latency timing length (padded)")
    p.add_argument("--lat-seconds", type=float, default=None, help="minimum seconds per latency timing")
    p.add_argument("--lat-min-iters", type=int, default=None, help="minimum timed forwards per model")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--variant-name", default=None, help="variant label (default: <parent variant>+axformer)")
    p.add_argument("--search-max", type=int, default=None,
                   help="use at most this many rows of the parent's search split (stratified, seeded)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    _device_arg(p)


@step("approximate", "AxFormer search on the search split: hard attention, then accuracy-driven pruning")
@with_args(_approximate_args)
def cmd_approximate(args: argparse.Namespace) -> None:
    from axformer import data, models, prune, results
    from axformer.utils import atomic_write_json

    _check_writable(args.ckpt, args.metrics, args.decisions)
    _setup_threads(args.threads)
    given = {"accept_rule": args.accept_rule, "accept_frac": args.accept_frac, "accept_margin": args.accept_margin,
             "accept_z": args.accept_z, "less_important": args.less_important, "n_groups": args.groups,
             "topk": None if args.topk is None else _parse_k(args.topk), "topk_form": args.topk_form,
             "mode": args.mode, "granularity": args.granularity, "batch_size": args.batch_size,
             "latency_aware": args.latency_aware, "lat_batch_size": args.lat_batch_size,
             "lat_seq_len": args.lat_seq_len, "lat_seconds": args.lat_seconds, "lat_min_iters": args.lat_min_iters}
    cfg = prune.PruneConfig(progress=not args.no_progress, **{k: v for k, v in given.items() if v is not None})
    cfg.validate()
    device = _setup_device(args)
    split = _parent_split_args(args.parent, args)
    model, tokenizer = models.load_checkpoint(args.parent)
    model.to(device)
    task, splits, tok = load_task_data(split, tokenizer)
    if args.search_max is not None and args.search_max < len(splits.search):
        # a stratified subset of the same search split (SQuAD: questions with all their windows): still never
        # trained on, just cheaper per pass
        if args.search_max < 1:
            raise ConfigError(f"--search-max must be >= 1 (got {args.search_max}).")
        splits.search, tok["search"] = data.subsample(task, splits.search, tok["search"], args.search_max, split.seed)
        splits.info["n_search_used"] = len(splits.search)
    timing_texts = None
    if cfg.latency_aware:  # the timing batch: search-split sentences (dev rows never take part in decisions)
        timing_texts = data.timing_texts(task, splits.search, cfg.lat_batch_size, split.seed)
    res = prune.search(model, tok["search"], tokenizer, task, cfg, timing_texts)
    lengths = [len(x) for x in tok["search"]["input_ids"]]
    dec = prune.decisions_record(res, model, cfg, task, len(splits.search), lengths)
    variant = args.variant_name or f"{split.variant}+axformer"
    ckpt = models.save_checkpoint(model, tokenizer, args.ckpt, extra=step_info(task, split, split.model_spec, variant))
    atomic_write_json(args.decisions, dec)
    record = {
        "search": {"wall_s": res.wall_s, "passes": res.passes, "candidates": len(res.candidates),
                   "removed": res.removed, "hard_attention_layers": res.hard_attention_layers,
                   "topk": cfg.topk, "topk_form": cfg.topk_form,
                   "k_effective_mean": dec["hard_attention"]["k_effective_mean"],
                   "frac_rows_noop": dec["hard_attention"]["frac_rows_noop"],
                   "accept_rule": cfg.accept_rule, "accept_frac": cfg.accept_frac,
                   "accept_margin": cfg.accept_margin, "accept_z": cfg.accept_z,
                   "latency_aware": cfg.latency_aware, "mode": cfg.mode,
                   "granularity": cfg.granularity, "loss_before": res.original["loss"],
                   "loss_after": res.final["loss"], "search_metric_before": res.original["metric"],
                   "search_metric_after": res.final["metric"], "device": args.device},
        "size": results.size_block(model, ckpt),
        "data": splits.info,
    }
    results.write_step(args.metrics, record)
    print(f"{task.name} axformer: search loss {res.original['loss']:.4f} -> {res.final['loss']:.4f}, "
          f"removed {len(res.removed)} elements, hard attention in {res.hard_attention_layers}, "
          f"{res.passes} passes in {res.wall_s:.0f} s")


# ---------------------------------------------------------------- measure, majority, report
def _measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task name (its declaration comes from the baseline checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="adhoc", help="name of the config profile, recorded in metrics.json")
    p.add_argument("--model", default=None, help="model spec recorded in metrics.json (default: the baseline's)")
    p.add_argument("--variant-name", required=True,
                   help="variant name recorded in metrics.json, e.g. finetune+axformer+int8")
    p.add_argument("--baseline", required=True, help="finetune checkpoint: timed interleaved with the variant")
    p.add_argument("--variant", required=True, help="checkpoint of the variant (for X+int8: X's checkpoint)")
    # int8_ort / int8_ort_static: ONNX Runtime int8, int8_ov: OpenVINO int8 (axformer.export; extras ort / ov)
    p.add_argument("--quantize", default="none", choices=["none", "int8", "int8_ort", "int8_ort_static", "int8_ov"],
                   help="quantize the variant before measuring")
    p.add_argument("--quantize-backend", default="auto", help="auto | torch_dynamic | torchao | bitsandbytes")
    p.add_argument("--step-json", nargs="+", action="extend", default=[], metavar="STEP.json",
                   help="step records whose extra blocks (train, search, data, distill, ...) are copied in")
    p.add_argument("--metrics", required=True, help="output metrics.json")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="float dtype of the baseline and float variants during evaluation and timing (default fp32)")
    p.add_argument("--quantize-compute-dtype", default=None, choices=["float32", "float16"],
                   help="bitsandbytes int8: dtype of activations and non-Linear parts (default float32)")
    p.add_argument("--memory-isolation", default=None, choices=["on", "off"],
                   help="CPU: measure the variant's memory in a subprocess of its own (on, default) or record only "
                        "its tensor bytes (off, fast)")
    # None = MeasureConfig's default (the defaults live in the dataclass only)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--min-iters", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for evaluation and timing (recorded)")
    p.add_argument("--data-dir", default=None, help="overrides the data_dir stored in the baseline checkpoint")


def _serialized_bytes(model) -> int | None:
    """Bytes of ``torch.save(model.state_dict())``: the on-disk size of a variant that is never saved (int8)."""
    import io

    import torch

    buf = io.BytesIO()
    try:
        torch.save(model.state_dict(), buf)
    except Exception:  # noqa: BLE001 - an exotic backend without a serialisable state dict: size unknown
        return None
    return buf.tell()


def _ort_variant(args: argparse.Namespace, variant, tokenizer, task, splits, split, cfg):
    """X+int8_ort / int8_ov: export X to ONNX (checked against PyTorch on dev rows), quantize it with ONNX
    Runtime / OpenVINO (static ranges from search rows only); returns (int8 model, {"<runtime>_fp32": fp32
    model}, info)."""
    from axformer import export, squad

    def texts(ds):
        if task.is_qa:
            return squad.measure_texts(ds)
        return list(ds["text_a"]), (list(ds["text_b"]) if task.is_pair else None)

    check = export.text_batches(tokenizer, *texts(splits.dev), split.max_length, export.CHECK_ROWS)
    calib = None
    if export.ORT_MODES.get(args.quantize, "static") == "static":
        calib = export.text_batches(tokenizer, *texts(splits.search), split.max_length, export.CALIBRATION_ROWS)
    with export.scratch_dir() as work:  # the sessions hold the graphs in memory; the files are not kept
        return export.runtime_variant(variant, args.quantize, work, cfg.threads, check, calib)


@step("measure", "metric (dev + search), size, latency vs the baseline, memory and FLOPs of a variant -> metrics.json")
@with_args(_measure_args)
def cmd_measure(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from axformer import data, measure, models, results, train
    from axformer.tasks import canonical_name

    _nonneg("seed", args.seed)
    predictions = Path(args.metrics).with_name("predictions.npz")  # per-example dev output (axformer.stats)
    _check_writable(args.metrics, str(predictions))
    _setup_threads(args.threads)
    knobs = ("batch_sizes", "seq_len", "warmup", "min_iters", "min_seconds", "threads", "dtype")
    given = {k: getattr(args, k) for k in knobs if getattr(args, k) is not None}
    if args.memory_isolation is not None:
        given["memory_isolation"] = args.memory_isolation == "on"
    _setup_device(args)  # "auto" resolved before the config records it
    cfg = measure.MeasureConfig(device=args.device, **given)
    device = measure.check_device(cfg)  # fail before loading anything
    runtime_int8 = args.quantize.startswith(("int8_ort", "int8_ov"))
    if runtime_int8:
        from axformer.export import require_runtime

        require_runtime(args.quantize)
        if device.type != "cpu":
            raise ConfigError(f"--quantize {args.quantize} runs on the runtime's CPU backend; use --device cpu.")
    split = _parent_split_args(args.baseline, args)  # the baseline's split: the same dev and search rows
    if canonical_name(split.task) != canonical_name(args.task):
        raise ConfigError(f"--task {args.task} but the baseline checkpoint {args.baseline} was fine-tuned on "
                          f"{split.task}; pass that task's finetune checkpoint.")
    resolve_task(argparse.Namespace(**vars(split)))  # a bad recorded declaration fails before any loading
    step_records = [(p, results.read(p, kind="step")) for p in args.step_json]  # read first: a missing file fails early

    baseline, tokenizer = models.load_checkpoint(args.baseline)
    # For the finetune variant the two paths are equal: this is a second, independent model object, so the
    # interleaved speedup of finetune vs itself shows the noise floor of the timing.
    variant, vtok = models.load_checkpoint(args.variant)
    quant_info = None
    if args.quantize == "int8":
        from axformer.quantize import QuantizeConfig, quantize

        qkw = {} if args.quantize_compute_dtype is None else {"compute_dtype": args.quantize_compute_dtype}
        variant, quant_info = quantize(variant, QuantizeConfig(backend=args.quantize_backend, device=str(device),
                                                               inplace=True, **qkw))
    else:
        variant.to(device)
    measure.cast_for_measure(variant, cfg)  # evaluated in the dtype it is timed in

    task = resolve_task(split)  # the QA settings the baseline was fine-tuned with
    splits = make_task_splits(task, split)
    references = None  # int8_ort / int8_ov: the runtime's own fp32 graph, timed in the same interleaved loop
    if runtime_int8:
        variant, references, quant_info = _ort_variant(args, variant, vtok, task, splits, split, cfg)
    dev = train.evaluate(variant, data.tokenize(splits.dev, vtok, task, split.max_length), vtok, task)
    search = train.evaluate(variant, data.tokenize(splits.search, vtok, task, split.max_length), vtok, task)

    # a seeded random sample of dev rows (the same for every variant of a seed): SQuAD question + context
    # pairs are truncated into one window of the timing length
    texts_a, texts_b = data.timing_texts(task, splits.dev, max(cfg.batch_sizes), split.seed)
    # int8 variants are never saved: their size on disk is what torch.save of the quantized weights takes
    m = measure.measure_pair(baseline, variant, tokenizer, texts_a, texts_b, cfg,
                             variant_dir=None if quant_info else args.variant, references=references)
    if references:
        m["size"]["bytes_on_disk"] = quant_info["bytes"]
        m["size"]["bytes_on_disk_source"] = (f"the {args.quantize} model file(s) (.onnx, or OpenVINO .xml + .bin; "
                                             "written at measurement, not kept); the fp32 .onnx is quantize.fp32_bytes")
    elif quant_info:
        m["size"]["bytes_on_disk"] = _serialized_bytes(variant)
        m["size"]["bytes_on_disk_source"] = ("torch.save(state_dict) of the quantized model "
                                             "(int8 is applied at measurement, never saved)")

    rec = results.new_record(task.name, args.model or split.model_spec or "unknown", args.variant_name, args.seed,
                             args.profile)
    for _path, srec in step_records:  # later records (nearer the variant) win
        rec.update({k: v for k, v in srec.items() if k not in results.SCHEMA_KEYS})
    rec["steps"] = [str(p) for p, _ in step_records]
    rec["metric"] = results.metric_block(task, dev.metrics, search.metrics, len(splits.dev), len(splits.search))
    rec["metric"]["dev_loss"] = dev.mean_loss
    rec["metric"]["search_loss"] = search.mean_loss
    rec.update({k: m[k] for k in ("size", "latency", "memory", "flops", "env")})
    rec["data"] = splits.info
    rec["measure"] = asdict(cfg)
    rec["checkpoints"] = {"baseline": str(args.baseline), "variant": str(args.variant)}
    if quant_info is not None:
        rec["quantize"] = quant_info
    results.write(args.metrics, rec)
    from axformer import stats

    stats.write_dev_predictions(predictions, task, splits.dev, dev, m["iter_ms"])
    lat = rec["latency"][0]
    print(f"{task.name} {args.variant_name} seed {args.seed}: dev {task.metric} = {rec['metric']['dev']:.4f}, "
          f"p50 {lat['p50_ms']:.2f} ms at batch {lat['batch_size']} (speedup {lat['speedup']:.2f}x) -> {args.metrics}")


def _majority_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    _split_args(p)
    p.add_argument("--model", default="none", help="model folder the row is filed under (the predictor uses none)")
    p.add_argument("--metrics", required=True, help="output metrics.json")


@step("majority", "constant predictor row: majority class of train' (train' mean for regression) scored on dev")
@with_args(_majority_args)
def cmd_majority(args: argparse.Namespace) -> None:
    import numpy as np

    from axformer import metrics, results
    from axformer.tasks import resolve

    _nonneg("seed", args.seed)
    predictions = Path(args.metrics).with_name("predictions.npz")  # per-example dev output (axformer.stats)
    _check_writable(args.metrics, str(predictions))
    if resolve(args.task, args.task_def).is_qa:
        raise ConfigError(f"task {args.task}: span question answering has no majority-class / constant predictor "
                          "row; leave `majority` out for it (the workflow skips it for QA tasks).")
    task = resolve_task(args)
    splits = make_task_splits(task, args)
    train_labels = np.asarray(splits.train["label"])
    dev = metrics.constant_baseline(task, train_labels, np.asarray(splits.dev["label"]))
    search = metrics.constant_baseline(task, train_labels, np.asarray(splits.search["label"]))
    if task.is_regression:
        predictor = {"kind": "train' mean", "value": float(train_labels.mean())}
    else:
        values, counts = np.unique(train_labels, return_counts=True)
        predictor = {"kind": "majority class of train'", "value": int(values[np.argmax(counts)]),
                     "share_train": float(counts.max() / counts.sum())}
    rec = results.new_record(task.name, args.model, "majority", args.seed, args.profile)
    rec["metric"] = results.metric_block(task, dev, search, len(splits.dev), len(splits.search))
    # no model: size, latency and memory stay null (never 0)
    rec["note"] = "constant predictor"
    rec["predictor"] = predictor
    rec["data"] = splits.info
    results.write(args.metrics, rec)
    from axformer import stats

    dev_labels = np.asarray(splits.dev["label"])
    stats.write_predictions(predictions, task, splits.dev["idx"], labels=dev_labels,
                            preds=np.full(len(dev_labels), predictor["value"], dtype=dev_labels.dtype))
    print(f"{task.name} majority seed {args.seed}: dev {task.metric} = {rec['metric']['dev']:.4f} -> {args.metrics}")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="folder with <task>/<model>/<variant>/seed<k>/metrics.json")
    p.add_argument("--figures", default="figures", help="output folder for tables and figures")
    p.add_argument("--summary", default=None, help="output CSV (default: RESULTS/summary.csv)")
    p.add_argument("--batch-size", type=int, default=None, help="latency batch size used in plots (default: report's)")
    p.add_argument("--verdicts", default=None, help="output verdict table CSV (default: verdicts.csv beside --summary)")
    p.add_argument("--resamples", type=int, default=None,
                   help="bootstrap resamples of the verdict intervals, >= 1000 (default 2000)")
    p.add_argument("--bootstrap-seed", type=int, default=None, help="seed of the verdict bootstrap (default 0)")


@step("report", "collect every metrics.json into summary.csv, tables and figures")
@with_args(_report_args)
def cmd_report(args: argparse.Namespace) -> None:
    from axformer import report

    from axformer.stats import MIN_RESAMPLES

    if args.resamples is not None and args.resamples < MIN_RESAMPLES:
        raise ConfigError(f"--resamples must be >= {MIN_RESAMPLES} (got {args.resamples}): the 2.5 % tail of the "
                          "bootstrap needs at least 25 resamples.")
    if args.bootstrap_seed is not None:
        _nonneg("bootstrap-seed", args.bootstrap_seed)
    summary = args.summary or str(Path(args.results) / "summary.csv")
    verdicts = args.verdicts or str(Path(summary).with_name("verdicts.csv"))
    _check_writable(summary, verdicts, str(Path(args.figures) / "README.md"))
    kw = {} if args.batch_size is None else {"batch_size": args.batch_size}
    written = report.render(args.results, args.figures, summary, verdicts_csv=verdicts, resamples=args.resamples,
                            bootstrap_seed=args.bootstrap_seed, **kw)
    print(f"report: {len(written)} files written (summary {summary}, figures in {args.figures})")


# ---------------------------------------------------------------- distill
def _distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parent", required=True, help="fine-tuned teacher checkpoint (unedited: the finetune checkpoint)")
    p.add_argument("--ckpt", required=True, help="output student checkpoint folder")
    p.add_argument("--metrics", required=True, help="output step record (JSON)")
    p.add_argument("--layers", type=int, default=None, help="student depth (default: half the teacher's, min 1)")
    p.add_argument("--strategy", default="every_other", choices=["every_other", "evenly", "first"],
                   help="which teacher layers initialise the student (see axformer/distill.py)")
    p.add_argument("--init", default="teacher", choices=["teacher", "pretrained"])
    p.add_argument("--pretrained", default=None, help="with --init pretrained: a BERT-architecture model spec")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the soft (teacher) loss")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    _device_arg(p)


@step("distill", "knowledge distillation of the fine-tuned model into a shallower BERT student on train'")
@with_args(_distill_args)
def cmd_distill(args: argparse.Namespace) -> None:
    from axformer import distill, models, results, train

    _check_writable(args.ckpt, args.metrics)
    _setup_threads(args.threads)
    dcfg = distill.DistillConfig(n_layers=args.layers, temperature=args.temperature, alpha=args.alpha,
                                 strategy=args.strategy, init=args.init, pretrained=args.pretrained)
    dcfg.validate()
    device = _setup_device(args)
    split = _parent_split_args(args.parent, args)
    cfg = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=split.seed,
                            progress=not args.no_progress)
    cfg.validate()
    teacher, tokenizer = models.load_checkpoint(args.parent)
    teacher.to(device)
    distill.check_unedited(teacher)
    task, splits, tok = load_task_data(split, tokenizer)
    teacher_data = None
    if dcfg.init == "pretrained":
        student, own_tok = distill.pretrained_student(dcfg.pretrained, task, tokenizer, seed=split.seed)
        if own_tok is not None:  # another vocabulary (e.g. MPNet -> MiniLM): each model reads its own tokens
            teacher_data, tokenizer = (tok["train"], tokenizer), own_tok
            task, splits, tok = load_task_data(split, tokenizer)
        if dcfg.n_layers is not None and dcfg.n_layers != student.config.num_hidden_layers:
            raise ConfigError(f"--layers {dcfg.n_layers} but the pretrained student {dcfg.pretrained!r} has "
                              f"{student.config.num_hidden_layers} layers; drop --layers with --init pretrained.")
    else:
        student = distill.make_student(teacher, dcfg.resolve_layers(teacher), dcfg.strategy)
    student.to(device)
    log = distill.distill(teacher, student, tok["train"], tokenizer, task, cfg, dcfg.temperature, dcfg.alpha,
                          teacher_data=teacher_data)
    dev = train.evaluate(student, tok["dev"], tokenizer, task)
    search = train.evaluate(student, tok["search"], tokenizer, task)
    ck_info = step_info(task, split, split.model_spec, f"{split.variant}+distill")
    ckpt = models.save_checkpoint(student, tokenizer, args.ckpt, extra=ck_info)
    curve = log["loss_curve"]
    record = {
        "distill": {"n_layers": student.config.num_hidden_layers,
                    "teacher_layers": student.config.axformer_distill.get("teacher_layers"),
                    "teacher_num_layers": teacher.config.num_hidden_layers, "strategy": dcfg.strategy,
                    "init": dcfg.init, "pretrained": dcfg.pretrained,
                    "temperature": dcfg.temperature, "alpha": dcfg.alpha, "wall_s": log["wall_s"],
                    "steps": log["steps"], "loss_first": curve[0],
                    "loss_last20_mean": sum(curve[-20:]) / len(curve[-20:]),
                    "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "device": args.device},
        "size": results.size_block(student, ckpt),
        "data": splits.info,
        "metric": results.metric_block(task, dev.metrics, search.metrics, len(splits.dev), len(splits.search)),
    }
    record["metric"]["search_loss"] = search.mean_loss
    results.write_step(args.metrics, record)
    print(f"{task.name} distill: {record['distill']['teacher_num_layers']} -> {record['distill']['n_layers']} layers, "
          f"dev {task.metric} = {record['metric']['dev']:.4f} (train {log['wall_s']:.0f} s) -> {args.metrics}")


# ---------------------------------------------------------------- baseline (peer compression methods, baselines/)
def _parse_kv(items: list[str]) -> dict[str, Any]:
    """``--arg key=value`` pairs -> cfg dict; values are JSON when they parse (3, 0.5, true, null, [1,2]), else text."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--arg takes key=value pairs (got {item!r}), e.g. --arg step_heads=4.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _baseline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="registered baseline name (baselines/: headprune, layerdrop, ...)")
    p.add_argument("--parent", required=True, help="checkpoint to compress (e.g. the finetune checkpoint)")
    p.add_argument("--ckpt", required=True, help="output checkpoint folder")
    p.add_argument("--metrics", required=True, help="output step record (JSON)")
    p.add_argument("--match", default=None, metavar="DECISIONS.json",
                   help="AxFormer decisions.json: remove as much as AxFormer did (equal-size comparison)")
    p.add_argument("--match-by", default=None, choices=["heads", "params"],
                   help="with --match: count removed heads, or encoder parameters (default: the method's)")
    p.add_argument("--target-params", type=int, default=None, help="target encoder parameter count")
    p.add_argument("--n-heads", type=int, default=None, help="headprune: heads to remove")
    p.add_argument("--k", type=int, default=None, help="layerdrop: top layers to drop")
    p.add_argument("--epochs", type=float, default=None, help="re-training epochs (methods that re-train)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--arg", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="extra method arguments passed into cfg (value parsed as JSON when it can be)")
    p.add_argument("--variant-name", default=None, help="variant recorded in the checkpoint (default: parent+method)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    _device_arg(p)


@step("baseline", "a peer compression method from baselines/ (head pruning, layer dropping, ...) on a checkpoint")
@with_args(_baseline_args)
def cmd_baseline(args: argparse.Namespace) -> None:
    import baselines
    from axformer import models, results, train

    _check_writable(args.ckpt, args.metrics)
    _setup_threads(args.threads)
    fn = baselines.get(args.method)  # unknown name: ConfigError listing the available ones, before any loading
    device = _setup_device(args)
    flags = {"match": args.match, "match_by": args.match_by, "target_params": args.target_params,
             "n_heads": args.n_heads, "k": args.k, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    cfg = {k: v for k, v in flags.items() if v is not None}
    extra = _parse_kv(args.arg)
    clash = sorted(set(extra) & set(cfg))
    if clash:
        raise ConfigError(f"--arg sets {clash}, which a flag already sets; give each value once.")
    cfg.update(extra)
    if args.match is not None and not Path(args.match).is_file():
        raise ConfigError(f"--match {args.match} does not exist: run `axformer approximate` on the same parent first.")
    split = _parent_split_args(args.parent, args)
    cfg.setdefault("seed", split.seed)
    cfg.setdefault("progress", not args.no_progress)
    model, tokenizer = models.load_checkpoint(args.parent)
    model.to(device)  # the method follows the model's device
    task, splits, tok = load_task_data(split, tokenizer)
    t0 = time.perf_counter()
    out = fn(model, tokenizer, task, dict(tok), dict(cfg))
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise TypeError(f"baseline {args.method!r} must return (model, info: dict), got {type(out).__name__}.")
    model, info = out
    wall = time.perf_counter() - t0
    dev = train.evaluate(model, tok["dev"], tokenizer, task)
    search = train.evaluate(model, tok["search"], tokenizer, task)
    variant = args.variant_name or f"{split.variant}+{args.method}"
    ck_info = step_info(task, split, split.model_spec, variant, baseline={"method": args.method, "cfg": cfg})
    ckpt = models.save_checkpoint(model, tokenizer, args.ckpt, extra=ck_info)
    record = {
        "baseline": {"method": args.method, "cfg": cfg, "wall_s": wall, "parent": str(args.parent), "info": info,
                     "device": args.device},
        "size": results.size_block(model, ckpt),
        "data": splits.info,
        "metric": results.metric_block(task, dev.metrics, search.metrics, len(splits.dev), len(splits.search)),
    }
    record["metric"]["search_loss"] = search.mean_loss
    record["metric"]["dev_loss"] = dev.mean_loss
    results.write_step(args.metrics, record)
    print(f"{task.name} baseline {args.method}: encoder params {record['size']['params_encoder']}, "
          f"dev {task.metric} = {record['metric']['dev']:.4f} ({wall:.0f} s) -> {args.metrics}")


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="axformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, (add, _fn, help_) in STEPS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (Snakemake or SLURM cancelling a job), raised where the process is, so every ``finally`` /
    ``except BaseException`` cleanup (temp checkpoint folders, temp files) runs before exit."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated()


def install_signal_handlers() -> None:
    """Turn SIGTERM into :class:`Terminated` (only the main thread may set handlers)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def main(argv: list[str] | None = None) -> int:
    from axformer.device import prepare_process

    prepare_process()  # CUBLAS_WORKSPACE_CONFIG must be set before CUDA initialises (determinism)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    install_signal_handlers()
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        from axformer.stepargs import check_namespace

        check_namespace(args.step, args)  # the value checks the workflow runs on config step args, before any work
        STEPS[args.step][1](args)
    except ConfigError as exc:
        print(f"axformer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        print("axformer: interrupted; no partial outputs were written.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    print(f"axformer {args.step}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
