"""`axformer <step> ...`: the one entry point every workflow rule calls.

Each step reads its inputs, does one thing of the paper's pipeline and writes its outputs atomically.
Bad input ends in one line `axformer: error: ...` and exit status 2, never a traceback.

This module is dispatch: the arguments are in axformer/steps/cliargs.py (flags generated from the step config
dataclasses), what the steps share (lineage, splits, evaluation, saving, records) in axformer/steps/runs.py.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

INTERRUPTED = "axformer: interrupted; no partial outputs were written."


def _term_at_startup(signum, frame):  # noqa: ARG001 - signal handler signature
    """SIGTERM while the CLI is still importing (torch and transformers take seconds): nothing is open or
    written yet, so print the one line and leave with 143 at once; main() installs the cleaning handler."""
    sys.stderr.write(INTERRUPTED + "\n")
    sys.stderr.flush()
    os._exit(143)


if threading.current_thread() is threading.main_thread():  # before the heavy imports below
    signal.signal(signal.SIGTERM, _term_at_startup)

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

from axformer.steps import cliargs, runs  # noqa: E402
from axformer.steps.cliargs import build_parser, config_from, given, parse_k  # noqa: E402
# part of the CLI's public surface (tests, scripts)
from axformer.steps.runs import Terminated, install_signal_handlers, resolve_task, search_selector  # noqa: E402,F401
from axformer.utils import ConfigError  # noqa: E402

# step name -> (adds its arguments, runs it, help); the arguments are registered in cliargs.STEP_ARGS
STEPS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None], str]] = {}


def command(name: str):
    """Register ``fn`` as the command of ``axformer name`` (its arguments: cliargs.STEP_ARGS[name])."""

    def deco(fn: Callable[[argparse.Namespace], None]):
        add, help_ = cliargs.STEP_ARGS[name]
        STEPS[name] = (add, fn, help_)
        return fn

    return deco


# ---------------------------------------------------------------- finetune
@command("finetune")
def cmd_finetune(args: argparse.Namespace) -> None:
    from axformer.encoders import models
    from axformer.measurement import cost
    from axformer.records import results
    from axformer.training import train
    from axformer.training import train_config

    runs.nonneg("seed", args.seed)
    runs.setup(args, args.ckpt, args.metrics)
    device = runs.setup_device(args)
    task = resolve_task(args)  # bad task / QA settings fail before the model loads
    model, tokenizer = models.load_pretrained(args.model, task, seed=args.seed)
    model.to(device)
    task, splits, tok = runs.load_task_data(args, tokenizer)
    cfg = config_from(train_config.TrainConfig, args, cliargs.TRAIN_FLAGS, seed=args.seed, progress=not args.no_progress)
    select = search_selector(args.select, tok["search"], tokenizer, task)
    log = train.train(model, tok["train"], tokenizer, task, cfg, select=select)
    if select is not None:
        curve = ", ".join(f"{s['epoch']:g}: {s['score']:.4f}" for s in log["select_scores"])
        print(f"search-split {args.select} per epoch ({curve}) -> kept epoch {log['selected_epoch']:g}")
    dev, search = runs.evaluate(model, tok, tokenizer, task)
    ckpt = runs.save(model, tokenizer, args.ckpt, runs.Lineage.of_finetune(task, args, args.model))
    fit = {k: v for k, v in log.items() if k != "loss_curve"}
    fit.update(select=args.select, device=args.device, **runs.curve_summary(log["loss_curve"]))
    rec = runs.run_record(task, args.model, "finetune", args.seed, args.profile,
                          metric=runs.metric(task, dev, search, splits), size=cost.size_block(model, ckpt),
                          data=splits.info, train=fit)
    results.write(args.metrics, rec)
    print(f"{task.name} finetune seed {args.seed}: dev {task.metric} = {rec['metric']['dev']:.4f} "
          f"(train {log['wall_s']:.0f} s) -> {args.metrics}")


# ---------------------------------------------------------------- approximate (AxFormer)
@command("approximate")
def cmd_approximate(args: argparse.Namespace) -> None:
    from axformer.search import prune
    from axformer.search import prune_config
    from axformer.taskdata import taskkinds
    from axformer.utils import atomic_write_json

    runs.setup(args, args.ckpt, args.metrics, args.decisions)
    knobs = given(args, cliargs.PRUNE_NAMES, cliargs.PRUNE_FLAGS)
    if "topk" in knobs:
        knobs["topk"] = parse_k(knobs["topk"])
    cfg = prune_config.PruneConfig(progress=not args.no_progress, **knobs)
    cfg.validate()
    runs.setup_device(args)
    lineage = runs.Lineage.read(args.parent, args.data_dir)
    split = lineage.args()
    model, tokenizer = runs.load_model(args.parent, args.device)
    task, splits, tok = runs.load_task_data(split, tokenizer)
    if args.search_max is not None and args.search_max < len(splits.search):
        # a stratified subset of the same search split (SQuAD: questions with all their windows): still never
        # trained on, just cheaper per pass
        if args.search_max < 1:
            raise ConfigError(f"--search-max must be >= 1 (got {args.search_max}).")
        splits.search, tok["search"] = taskkinds.subsample(task, splits.search, tok["search"], args.search_max,
                                                           lineage.seed)
        splits.info["n_search_used"] = len(splits.search)
    timing_texts = None
    if cfg.latency_aware:  # the timing batch: search-split sentences (dev rows never take part in decisions)
        timing_texts = taskkinds.timing_texts(task, splits.search, cfg.lat_batch_size, lineage.seed)
    # the journal of judged candidates: a re-run of a killed search resumes from it (axformer.search.journal)
    journal = Path(args.decisions).with_name(Path(args.decisions).stem + ".partial.jsonl")
    res = prune.search(model, tok["search"], tokenizer, task, cfg, timing_texts, journal=journal)
    lengths = [len(x) for x in tok["search"]["input_ids"]]
    dec = prune.decisions_record(res, model, cfg, task, len(splits.search), lengths)
    variant = args.variant_name or f"{lineage.variant}+axformer"
    ckpt = runs.save(model, tokenizer, args.ckpt, lineage.child(task, split, variant))
    atomic_write_json(args.decisions, dec)
    search = {"wall_s": res.wall_s, "passes": res.passes, "candidates": len(res.candidates), "removed": res.removed,
              "hard_attention_layers": res.hard_attention_layers, "topk": cfg.topk, "topk_form": cfg.topk_form,
              "k_effective_mean": dec["hard_attention"]["k_effective_mean"],
              "frac_rows_noop": dec["hard_attention"]["frac_rows_noop"], "accept_rule": cfg.accept_rule,
              "accept_frac": cfg.accept_frac, "accept_margin": cfg.accept_margin, "accept_z": cfg.accept_z,
              "latency_aware": cfg.latency_aware, "mode": cfg.mode, "granularity": cfg.granularity,
              "loss_before": res.original["loss"], "loss_after": res.final["loss"],
              "search_metric_before": res.original["metric"], "search_metric_after": res.final["metric"],
              "device": args.device, **({"replayed": res.replayed} if res.replayed else {})}
    runs.step_record(args.metrics, model, ckpt, splits, search=search)
    journal.unlink(missing_ok=True)  # decisions and step record written: the journal has served
    print(f"{task.name} axformer: search loss {res.original['loss']:.4f} -> {res.final['loss']:.4f}, "
          f"removed {len(res.removed)} elements, hard attention in {res.hard_attention_layers}, "
          f"{res.passes} passes in {res.wall_s:.0f} s")


# ---------------------------------------------------------------- measure
def _ort_variant(args: argparse.Namespace, variant, tokenizer, task, splits, max_length: int, cfg):
    """X+int8_ort / int8_ov: export X to ONNX (checked against PyTorch on dev rows), quantize it with ONNX
    Runtime / OpenVINO (static ranges from search rows only); returns (int8 model, {"<runtime>_fp32": fp32
    model}, info)."""
    from axformer.compress import export
    from axformer.compress import runtimes
    from axformer.taskdata import taskkinds

    check = export.text_batches(tokenizer, *taskkinds.texts(task, splits.dev), max_length, export.CHECK_ROWS)
    calib = None
    if runtimes.ORT_MODES.get(args.quantize, "static") == "static":
        calib = export.text_batches(tokenizer, *taskkinds.texts(task, splits.search), max_length,
                                    export.CALIBRATION_ROWS)
    with export.scratch_dir() as work:  # the sessions hold the graphs in memory; the files are not kept
        return export.runtime_variant(variant, args.quantize, work, cfg.threads, check, calib)


def _timed_latency(args: argparse.Namespace, cfg) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The variant's latency blocks and per-round ms: from its group's timing record (``--timing``), else from
    passes of this pair alone (axformer.measurement.timing)."""
    from dataclasses import asdict

    from axformer.measurement import timing

    if args.timing:
        group = timing.read_group(args.timing)
        if group["measure"]["batch_sizes"] != list(cfg.batch_sizes) or group["measure"]["seq_len"] != cfg.seq_len:
            raise ConfigError(f"--timing {args.timing} timed batch sizes {group['measure']['batch_sizes']} at length "
                              f"{group['measure']['seq_len']}, this measure asks for {cfg.batch_sizes} at "
                              f"{cfg.seq_len}; re-run the timing job (snakemake --forcerun time, then --forcerun measure).")
        blocks = timing.latency_blocks(group, args.variant_name, args.timing)
        timed_dtype = group.get("variant_dtypes", {}).get(args.variant_name, group["measure"]["dtype"])
        if timed_dtype != cfg.dtype:
            raise ConfigError(f"--timing {args.timing} timed {args.variant_name} in {timed_dtype}, this measure runs "
                              f"in {cfg.dtype}; re-run the timing job (snakemake --forcerun time, then --forcerun measure).")
        return blocks, timing.iter_ms(Path(args.timing).with_suffix(".npz"), args.variant_name, cfg.batch_sizes,
                                      group.get("variant_baselines", {}).get(args.variant_name))
    plan = {"task": args.task, "seed": args.seed, "profile": args.profile, "baseline": args.baseline,
            "data_dir": args.data_dir, "measure": asdict(cfg),
            "entries": [{"variant": args.variant_name, "ckpt": args.variant, "quantize": args.quantize,
                         "quantize_backend": args.quantize_backend,
                         "quantize_compute_dtype": args.quantize_compute_dtype}]}
    group, samples = timing.time_group(plan, runs.lineage_rows)
    blocks = timing.latency_blocks(group, args.variant_name)
    per_bs = {int(bs): {"baseline": samples[f"b{bs}/{timing.BASELINE}"], "variant": samples[f"b{bs}/{args.variant_name}"],
                        "pass": samples[f"b{bs}/pass"]} for bs in cfg.batch_sizes}
    return blocks, per_bs


@command("time")
def cmd_time(args: argparse.Namespace) -> None:
    import json

    from axformer.measurement import timing

    try:
        plan = json.loads(args.plan_json)
    except ValueError as exc:
        raise ConfigError(f"--plan-json is not JSON ({exc}).") from exc
    if not isinstance(plan, dict) or not plan.get("entries") or "baseline" not in plan:
        raise ConfigError("--plan-json needs a baseline checkpoint and at least one entry.")
    runs.check_writable(args.out)
    for e in plan["entries"]:
        if not Path(e["ckpt"], "config.json").is_file():
            raise ConfigError(f"checkpoint {e['ckpt']} of variant {e['variant']!r} has no config.json: run the step "
                              "that produces it.")
    record, samples = timing.time_group(plan, runs.lineage_rows, log=sys.stdout)
    timing.write_group(record, samples, args.out)
    noisy = sum(p["noisy"] for p in record["passes"])
    print(f"{plan['task']} seed {plan['seed']}: {len(record['variants'])} variants x {len(record['passes'])} passes "
          f"({noisy} noisy) in {record['wall_s']:.0f} s -> {args.out}")


@command("measure")
def cmd_measure(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from axformer.measurement import measure
    from axformer.measurement import measure_config
    from axformer.encoders import models
    from axformer.records import record, results
    from axformer import stats
    from axformer.taskdata import taskkinds
    from axformer.taskdata.tasks import canonical_name

    t0 = time.perf_counter()  # the job's own time, for the report's compute table (measure.wall_s)
    runs.nonneg("seed", args.seed)
    predictions = Path(args.metrics).with_name("predictions.npz")  # per-example dev output (axformer.stats)
    runs.setup(args, args.metrics, str(predictions))
    knobs = given(args, cliargs.MEASURE_FLAGS)
    if args.memory_isolation is not None:
        knobs["memory_isolation"] = args.memory_isolation == "on"
    runs.setup_device(args)  # "auto" resolved before the config records it
    cfg = measure_config.MeasureConfig(device=args.device, **knobs)
    device = measure.check_device(cfg)  # fail before loading anything
    runtime_int8 = args.quantize.startswith(("int8_ort", "int8_ov"))
    if runtime_int8:
        from axformer.compress.runtimes import require_runtime

        require_runtime(args.quantize)
        if device.type != "cpu":
            raise ConfigError(f"--quantize {args.quantize} runs on the runtime's CPU backend; use --device cpu.")
    lineage = runs.Lineage.read(args.baseline, args.data_dir)  # the baseline's split: the same dev and search rows
    if canonical_name(lineage.task) != canonical_name(args.task):
        raise ConfigError(f"--task {args.task} but the baseline checkpoint {args.baseline} was fine-tuned on "
                          f"{lineage.task}; pass that task's finetune checkpoint.")
    split = lineage.args()
    resolve_task(lineage.args())  # a bad recorded declaration fails before any loading
    step_records = [(p, results.read(p, kind="step")) for p in args.step_json]  # read first: a missing file fails early

    baseline, tokenizer = models.load_checkpoint(args.baseline)
    # For the finetune variant the two paths are equal: this is a second, independent model object, so the
    # interleaved speedup of finetune vs itself shows the noise floor of the timing.
    variant, vtok = models.load_checkpoint(args.variant)
    quant_info = None
    if args.quantize == "int8":
        from axformer.compress.quantize import quantize
        from axformer.compress.quantize_config import QuantizeConfig

        qkw = {} if args.quantize_compute_dtype is None else {"compute_dtype": args.quantize_compute_dtype}
        variant, quant_info = quantize(variant, QuantizeConfig(backend=args.quantize_backend, device=str(device),
                                                               inplace=True, **qkw))
    else:
        variant.to(device)
    measure.cast_for_measure(variant, cfg)  # evaluated in the dtype it is timed in

    task = resolve_task(split)  # the QA settings the baseline was fine-tuned with
    splits = runs.make_splits(task, split)
    references = None  # int8_ort / int8_ov: the runtime's own fp32 graph, timed in the same interleaved loop
    if runtime_int8:
        variant, references, quant_info = _ort_variant(args, variant, vtok, task, splits, split.max_length, cfg)
    tok = runs.tokenize_splits(task, splits, vtok, split.max_length, names=("dev", "search"))
    dev, search = runs.evaluate(variant, tok, vtok, task)

    # a seeded random sample of dev rows (the same for every variant of a seed): SQuAD question + context
    # pairs are truncated into one window of the timing length
    texts_a, texts_b = taskkinds.timing_texts(task, splits.dev, max(cfg.batch_sizes), split.seed)
    # int8 variants are never saved: their size on disk is what torch.save of the quantized weights takes
    m = measure.measure_pair(baseline, variant, tokenizer, texts_a, texts_b, cfg,
                             variant_dir=None if quant_info else args.variant, references=references, timed=False)
    m["latency"], m["iter_ms"] = _timed_latency(args, cfg)
    if references:
        m["size"]["bytes_on_disk"] = quant_info["bytes"]
        m["size"]["bytes_on_disk_source"] = (f"the {args.quantize} model file(s) (.onnx, or OpenVINO .xml + .bin; "
                                             "written at measurement, not kept); the fp32 .onnx is quantize.fp32_bytes")
    elif quant_info:
        m["size"]["bytes_on_disk"] = runs.serialized_bytes(variant)
        m["size"]["bytes_on_disk_source"] = ("torch.save(state_dict) of the quantized model "
                                             "(int8 is applied at measurement, never saved)")

    rec = runs.run_record(task, args.model or lineage.model_spec or "unknown", args.variant_name, args.seed,
                          args.profile)
    for _path, srec in step_records:  # later records (nearer the variant) win
        rec.update({k: v for k, v in srec.items() if k not in results.SCHEMA_KEYS})
    # the lineage with each step's command (read off the block it wrote) and its name in the variant's chain
    names = args.variant_name.split("+")
    names = names if len(names) >= len(step_records) else [None] * len(step_records)
    rec["steps"] = [record.step_entry(p, srec, n) for (p, srec), n in zip(step_records, names)]
    rec["metric"] = runs.metric(task, dev, search, splits, dev_loss=True)
    rec.update({k: m[k] for k in ("size", "latency", "memory", "flops", "env")})
    rec["data"] = splits.info
    rec["measure"] = {**asdict(cfg), "wall_s": time.perf_counter() - t0}
    rec["checkpoints"] = {"baseline": str(args.baseline), "variant": str(args.variant)}
    if quant_info is not None:
        rec["quantize"] = quant_info
    results.write(args.metrics, rec)
    stats.write_dev_predictions(predictions, task, splits.dev, dev, m["iter_ms"])
    lat = rec["latency"][0]
    print(f"{task.name} {args.variant_name} seed {args.seed}: dev {task.metric} = {rec['metric']['dev']:.4f}, "
          f"p50 {lat['p50_ms']:.2f} ms at batch {lat['batch_size']} (speedup {lat['speedup']:.2f}x) -> {args.metrics}")


# ---------------------------------------------------------------- majority, report
@command("majority")
def cmd_majority(args: argparse.Namespace) -> None:
    import numpy as np

    from axformer.taskdata import metrics
    from axformer.records import results
    from axformer import stats
    from axformer.taskdata.taskkinds import kind_of
    from axformer.taskdata.tasks import resolve

    runs.nonneg("seed", args.seed)
    predictions = Path(args.metrics).with_name("predictions.npz")  # per-example dev output (axformer.stats)
    runs.check_writable(args.metrics, str(predictions))
    if not kind_of(resolve(args.task, args.task_def)).has_constant_predictor:
        raise ConfigError(f"task {args.task}: span question answering has no majority-class / constant predictor "
                          "row; leave `majority` out for it (the workflow skips it for QA tasks).")
    task = resolve_task(args)
    splits = runs.make_splits(task, args)
    train_labels = np.asarray(splits.train["label"])
    dev = metrics.constant_baseline(task, train_labels, np.asarray(splits.dev["label"]))
    search = metrics.constant_baseline(task, train_labels, np.asarray(splits.search["label"]))
    if task.is_regression:
        predictor = {"kind": "train' mean", "value": float(train_labels.mean())}
    else:
        values, counts = np.unique(train_labels, return_counts=True)
        predictor = {"kind": "majority class of train'", "value": int(values[np.argmax(counts)]),
                     "share_train": float(counts.max() / counts.sum())}
    # no model: size, latency and memory stay null (never 0)
    rec = runs.run_record(task, args.model, "majority", args.seed, args.profile, note="constant predictor",
                          predictor=predictor, data=splits.info,
                          metric=results.metric_block(task, dev, search, len(splits.dev), len(splits.search)))
    results.write(args.metrics, rec)
    dev_labels = np.asarray(splits.dev["label"])
    stats.write_predictions(predictions, task, splits.dev["idx"], labels=dev_labels,
                            preds=np.full(len(dev_labels), predictor["value"], dtype=dev_labels.dtype))
    print(f"{task.name} majority seed {args.seed}: dev {task.metric} = {rec['metric']['dev']:.4f} -> {args.metrics}")


@command("report")
def cmd_report(args: argparse.Namespace) -> None:
    from axformer.reporting import report
    from axformer.stats import MIN_RESAMPLES

    if args.resamples is not None and args.resamples < MIN_RESAMPLES:
        raise ConfigError(f"--resamples must be >= {MIN_RESAMPLES} (got {args.resamples}): the 2.5 % tail of the "
                          "bootstrap needs at least 25 resamples.")
    runs.nonneg("bootstrap-seed", args.bootstrap_seed)
    summary = args.summary or str(Path(args.results) / "summary.csv")
    verdicts = args.verdicts or str(Path(summary).with_name("verdicts.csv"))
    runs.check_writable(summary, verdicts, str(Path(args.figures) / "README.md"))
    if args.readme is not None:  # its markers are checked before anything renders
        from axformer.reporting import readme_block

        readme_block.check(args.readme)
    kw = {} if args.batch_size is None else {"batch_size": args.batch_size}
    written = report.render(args.results, args.figures, summary, verdicts_csv=verdicts, resamples=args.resamples,
                            bootstrap_seed=args.bootstrap_seed, readme=args.readme, **kw)
    print(f"report: {len(written)} files written (summary {summary}, figures in {args.figures})")


# ---------------------------------------------------------------- distill
@command("distill")
def cmd_distill(args: argparse.Namespace) -> None:
    from axformer.compress import distill
    from axformer.compress import distill_config
    from axformer.training import train_config

    runs.setup(args, args.ckpt, args.metrics)
    dcfg = config_from(distill_config.DistillConfig, args, cliargs.DISTILL_NAMES, cliargs.DISTILL_FLAGS)
    dcfg.validate()
    runs.setup_device(args)
    lineage = runs.Lineage.read(args.parent, args.data_dir)
    cfg = config_from(train_config.TrainConfig, args, cliargs.TRAIN_FLAGS, base=distill_config.TRAIN_DEFAULTS, seed=lineage.seed,
                      progress=not args.no_progress)
    cfg.validate()
    split = lineage.args()
    teacher, tokenizer = runs.load_model(args.parent, args.device)
    distill.check_unedited(teacher)
    task, splits, tok = runs.load_task_data(split, tokenizer)
    teacher_data = None
    if dcfg.init == "pretrained":
        student, own_tok = distill.pretrained_student(dcfg.pretrained, task, tokenizer, seed=lineage.seed)
        if own_tok is not None:  # another vocabulary (e.g. MPNet -> MiniLM): each model reads its own tokens
            teacher_data, tokenizer = (tok["train"], tokenizer), own_tok
            task, splits, tok = runs.load_task_data(split, tokenizer)
        if dcfg.n_layers is not None and dcfg.n_layers != student.config.num_hidden_layers:
            raise ConfigError(f"--layers {dcfg.n_layers} but the pretrained student {dcfg.pretrained!r} has "
                              f"{student.config.num_hidden_layers} layers; drop --layers with --init pretrained.")
    else:
        student = distill.make_student(teacher, dcfg.resolve_layers(teacher), dcfg.strategy)
    student.to(args.device)
    log = distill.distill(teacher, student, tok["train"], tokenizer, task, cfg, dcfg.temperature, dcfg.alpha,
                          teacher_data=teacher_data)
    dev, search = runs.evaluate(student, tok, tokenizer, task)
    ckpt = runs.save(student, tokenizer, args.ckpt, lineage.child(task, split, f"{lineage.variant}+distill"))
    block = {"n_layers": student.config.num_hidden_layers,
             "teacher_layers": student.config.axformer_distill.get("teacher_layers"),
             "teacher_num_layers": teacher.config.num_hidden_layers,
             # layer selection applies only to a student copied from the teacher
             "strategy": dcfg.strategy if dcfg.init != "pretrained" else None, "init": dcfg.init,
             "pretrained": dcfg.pretrained, "temperature": dcfg.temperature, "alpha": dcfg.alpha,
             "wall_s": log["wall_s"], "steps": log["steps"], **runs.curve_summary(log["loss_curve"]),
             "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "device": args.device}
    record = runs.step_record(args.metrics, student, ckpt, splits, distill=block,
                              metric=runs.metric(task, dev, search, splits))
    student_desc = f"{dcfg.pretrained} ({block['n_layers']} layers)" if dcfg.init == "pretrained" else \
        f"{block['n_layers']} layers"
    print(f"{task.name} distill: {block['teacher_num_layers']} -> {student_desc}, "
          f"dev {task.metric} = {record['metric']['dev']:.4f} (train {log['wall_s']:.0f} s) -> {args.metrics}")


# ---------------------------------------------------------------- baseline (peer compression methods, baselines/)
@command("baseline")
def cmd_baseline(args: argparse.Namespace) -> None:
    import baselines

    runs.setup(args, args.ckpt, args.metrics)
    fn = baselines.get(args.method)  # unknown name: ConfigError listing the available ones, before any loading
    runs.setup_device(args)
    cfg: dict[str, Any] = {k: getattr(args, k) for k in cliargs.BASELINE_FLAGS if getattr(args, k) is not None}
    extra = cliargs.parse_kv(args.arg)
    clash = sorted(set(extra) & set(cfg))
    if clash:
        raise ConfigError(f"--arg sets {clash}, which a flag already sets; give each value once.")
    cfg.update(extra)
    if args.match is not None and not Path(args.match).is_file():
        raise ConfigError(f"--match {args.match} does not exist: run `axformer approximate` on the same parent first.")
    lineage = runs.Lineage.read(args.parent, args.data_dir)
    split = lineage.args()
    cfg.setdefault("seed", lineage.seed)
    cfg.setdefault("progress", not args.no_progress)
    model, tokenizer = runs.load_model(args.parent, args.device)  # the method follows the model's device
    task, splits, tok = runs.load_task_data(split, tokenizer)
    t0 = time.perf_counter()
    out = fn(model, tokenizer, task, dict(tok), dict(cfg))
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise TypeError(f"baseline {args.method!r} must return (model, info: dict), got {type(out).__name__}.")
    model, info = out
    wall = time.perf_counter() - t0
    dev, search = runs.evaluate(model, tok, tokenizer, task)
    variant = args.variant_name or f"{lineage.variant}+{args.method}"
    child = lineage.child(task, split, variant, baseline={"method": args.method, "cfg": cfg})
    ckpt = runs.save(model, tokenizer, args.ckpt, child)
    block = {"method": args.method, "cfg": cfg, "wall_s": wall, "parent": str(args.parent), "info": info,
             "device": args.device}
    record = runs.step_record(args.metrics, model, ckpt, splits, baseline=block,
                              metric=runs.metric(task, dev, search, splits, dev_loss=True))
    print(f"{task.name} baseline {args.method}: encoder params {record['size']['params_encoder']}, "
          f"dev {task.metric} = {record['metric']['dev']:.4f} ({wall:.0f} s) -> {args.metrics}")


# ---------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    try:
        install_signal_handlers()  # from here SIGTERM raises Terminated, so every cleanup runs
        from axformer.device import prepare_process
        from axformer.steps.stepargs import check_namespace

        prepare_process()  # CUBLAS_WORKSPACE_CONFIG must be set before CUDA initialises (determinism)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        args = build_parser().parse_args(argv)  # imports the step modules (torch): seconds in which TERM may come
        check_namespace(args.step, args)  # the value checks the workflow runs on config step args, before any work
        STEPS[args.step][1](args)
    except ConfigError as exc:
        print(f"axformer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        print(INTERRUPTED, file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    print(f"axformer {args.step}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
