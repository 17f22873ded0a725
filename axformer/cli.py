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
    p.add_argument("--task", required=True, help="sst2 | mrpc | cola | rte | stsb | qnli")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with glue/ (default: $AXFORMER_DATA)")
    p.add_argument("--profile", default="adhoc", help="name of the config profile, recorded in metrics.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded)")
    p.add_argument("--allow-hub", action="store_true", help="fetch missing GLUE files from the hub (needs internet)")


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search-frac", type=float, default=0.15, help="fraction of GLUE train held out for the search")
    p.add_argument("--search-max", type=int, default=2000, help="cap on search-split rows")
    p.add_argument("--train-max", type=int, default=None, help="subsample train' to this many rows (CPU budget)")
    p.add_argument("--dev-max", type=int, default=None, help="subsample dev (smoke runs only)")
    p.add_argument("--max-length", type=int, default=128)


def _nonneg(name: str, v: Any) -> None:
    if v is not None and v < 0:
        raise ConfigError(f"--{name} must be >= 0 (got {v}).")


def _setup_threads(n: int | None) -> None:
    import torch

    if n is not None:
        if n < 1:
            raise ConfigError(f"--threads must be >= 1 (got {n}).")
        torch.set_num_threads(n)


def load_task_data(args: argparse.Namespace, tokenizer):
    """Task, splits and tokenized splits, from the split arguments (shared by every step)."""
    from axformer import data
    from axformer.tasks import get_task

    task = get_task(args.task)
    splits = data.make_splits(task, args.data_dir, args.seed, args.search_frac, args.search_max,
                              args.train_max, args.dev_max, allow_hub=args.allow_hub)
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
    p.add_argument("--ckpt", required=True, help="output checkpoint folder")
    p.add_argument("--metrics", required=True, help="output metrics.json")
    p.add_argument("--no-progress", action="store_true")


@step("finetune", "fine-tune a pretrained encoder on train' (the baseline)")
@with_args(_finetune_args)
def cmd_finetune(args: argparse.Namespace) -> None:
    from axformer import models, results, train
    from axformer.tasks import get_task

    _nonneg("seed", args.seed)
    _check_writable(args.ckpt, args.metrics)
    _setup_threads(args.threads)
    task = get_task(args.task)
    model, tokenizer = models.load_pretrained(args.model, task, seed=args.seed)
    task, splits, tok = load_task_data(args, tokenizer)
    cfg = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            progress=not args.no_progress)
    log = train.train(model, tok["train"], tokenizer, task, cfg)
    dev = train.evaluate(model, tok["dev"], tokenizer, task)
    search = train.evaluate(model, tok["search"], tokenizer, task)
    step_info = {"split": vars_subset(args, ("seed", "search_frac", "search_max", "train_max", "dev_max",
                                             "max_length", "data_dir", "allow_hub")),
                 "task": task.name, "model_spec": args.model, "variant": "finetune"}
    ckpt = models.save_checkpoint(model, tokenizer, args.ckpt, extra=step_info)
    rec = results.new_record(task.name, args.model, "finetune", args.seed, args.profile)
    rec["metric"] = results.metric_block(task, dev.metrics, search.metrics, len(splits.dev), len(splits.search))
    rec["metric"]["search_loss"] = search.mean_loss
    rec["size"] = results.size_block(model, ckpt)
    rec["data"] = splits.info
    rec["train"] = {k: v for k, v in log.items() if k != "loss_curve"}
    rec["train"]["loss_first"] = log["loss_curve"][0]
    rec["train"]["loss_last20_mean"] = sum(log["loss_curve"][-20:]) / len(log["loss_curve"][-20:])
    results.write(args.metrics, rec)
    print(f"{task.name} finetune seed {args.seed}: dev {task.metric} = {rec['metric']['dev']:.4f} "
          f"(train {log['wall_s']:.0f} s) -> {args.metrics}")


def vars_subset(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in keys}


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="axformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, (add, _fn, help_) in STEPS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        STEPS[args.step][1](args)
    except ConfigError as exc:
        print(f"axformer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("axformer: interrupted; no partial outputs were written.", file=sys.stderr)
        return 130
    print(f"axformer {args.step}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
