"""What every CLI step shares: setup, the lineage of a checkpoint, the task and its splits, evaluation,
saving and the records. The commands in axformer/cli.py are these calls in a row.

A checkpoint carries its :class:`Lineage` (axformer_step.json): the task as it was fine-tuned (its resolved
declaration), the split arguments, the model spec and the variant. Every later step reads it, rebuilds the
same train' / search / dev rows from it and writes its own checkpoint with the lineage of its parent and its
own variant name, so a chain finetune -> axformer -> distill never re-reads a profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axformer.utils import ConfigError

LINEAGE_FILE = "axformer_step.json"
# Split arguments recorded in a fine-tuned checkpoint so every later step rebuilds the same splits (the task
# kind adds its own, e.g. SQuAD's protocol: taskkinds.TaskKind.split_keys).
SPLIT_KEYS = ("seed", "search_frac", "search_max", "train_max", "dev_max", "max_length", "data_dir", "allow_hub",
              "search_rows")
_NOT_SPLIT = ("task", "task_def")


# ------------------------------------------------------------------------------------------------ setup
def check_writable(*paths: str | os.PathLike | None) -> None:
    """Every output's folder can be created and written (ConfigError before any work)."""
    for p in paths:
        if p is None:
            continue
        probe = Path(p).resolve().parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise ConfigError(f"output {p} is not writable (no write permission on {probe}); choose another path.")


def nonneg(name: str, v: Any) -> None:
    if v is not None and v < 0:
        raise ConfigError(f"--{name} must be >= 0 (got {v}).")


def setup_threads(n: int | None) -> None:
    import torch

    if n is not None:
        if n < 1:
            raise ConfigError(f"--threads must be >= 1 (got {n}).")
        torch.set_num_threads(n)


def setup_device(args: argparse.Namespace):
    """``--device`` resolved (ConfigError before any loading if unusable); the resolved name is recorded."""
    from axformer.device import resolve_device

    dev = resolve_device(getattr(args, "device", None))
    args.device = str(dev)
    return dev


def setup(args: argparse.Namespace, *outputs: str | os.PathLike | None) -> None:
    """Outputs writable, CPU threads set: the first lines of every step."""
    check_writable(*outputs)
    setup_threads(getattr(args, "threads", None))


# ------------------------------------------------------------------------------------------------ task and splits
def resolve_task(args: argparse.Namespace):
    """The task of ``args.task`` with its QA settings from the arguments; fills in the split defaults
    (data.SplitConfig, for the split arguments ``args`` has), the task's ``max_length`` and the kind's own split
    arguments, so the values recorded are the values used."""
    from axformer.taskdata.splits import SplitConfig
    from axformer.taskdata.taskkinds import kind_of
    from axformer.taskdata.tasks import resolve, with_qa_settings

    # --task-def FILE (finetune, majority) or the declaration a checkpoint recorded (later steps); else built-in
    task = resolve(args.task, getattr(args, "task_def", None))
    task = with_qa_settings(task, getattr(args, "doc_stride", None), getattr(args, "max_answer_len", None))
    for f in dataclasses.fields(SplitConfig):
        if hasattr(args, f.name) and getattr(args, f.name) is None:
            setattr(args, f.name, f.default)
    if getattr(args, "max_length", None) is None:
        args.max_length = task.max_length
    kind_of(task).settle_split_args(task, args)
    return task


def make_splits(task, args: argparse.Namespace):
    """train' / search / dev from the split arguments (taskkinds.make_splits)."""
    from axformer.taskdata import taskkinds

    return taskkinds.make_splits(task, args.data_dir, args.seed, args.search_frac, args.search_max, args.train_max,
                                 args.dev_max, allow_hub=bool(getattr(args, "allow_hub", False)),
                                 protocol=getattr(args, "squad_protocol", None) or "standard",
                                 local_fractions=getattr(args, "squad_fractions", None),
                                 search_rows=getattr(args, "search_rows", None))


def lineage_rows(ckpt: str | os.PathLike, data_dir: str | None = None):
    """(task, splits, split arguments) checkpoint ``ckpt`` was made with: its lineage read, the task resolved and
    the train' / search / dev rows rebuilt (what a timing group needs; measurement.timing.time_group's rows_of)."""
    split = Lineage.read(ckpt, data_dir).args()
    task = resolve_task(split)
    return task, make_splits(task, split), split


def tokenize_splits(task, splits, tokenizer, max_length: int, names=("train", "search", "dev")) -> dict[str, Any]:
    from axformer.taskdata import taskkinds

    return {name: taskkinds.tokenize(getattr(splits, name), tokenizer, task, max_length) for name in names}


def load_task_data(args: argparse.Namespace, tokenizer):
    """Task, splits and tokenized splits, from the split arguments (shared by every step)."""
    task = resolve_task(args)
    splits = make_splits(task, args)
    return task, splits, tokenize_splits(task, splits, tokenizer, args.max_length)


# ------------------------------------------------------------------------------------------------ lineage
@dataclass
class Lineage:
    """Where a checkpoint comes from (axformer_step.json; schema ``ckpt_step`` in record_schema.py)."""

    task: str
    split: dict[str, Any]
    task_def: dict[str, Any] | None = None  # None in checkpoints from before task declarations: the built-in task
    model_spec: str | None = None
    variant: str = "finetune"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a peer method's {"baseline": {method, cfg}}

    @classmethod
    def of_finetune(cls, task, args: argparse.Namespace, model_spec: str) -> "Lineage":
        """The lineage a fine-tuning run starts: its (resolved) split arguments."""
        from axformer.taskdata.taskkinds import kind_of

        keys = SPLIT_KEYS + kind_of(task).split_keys
        return cls(task=task.name, split={k: getattr(args, k) for k in keys}, task_def=task.decl,
                   model_spec=model_spec, variant="finetune")

    @classmethod
    def read(cls, ckpt: str | os.PathLike, data_dir: str | None = None) -> "Lineage":
        """The lineage recorded in checkpoint ``ckpt``; ``data_dir`` (a step's --data-dir) replaces the recorded one."""
        from axformer.records import results

        step = results.read(Path(ckpt) / LINEAGE_FILE, kind="ckpt_step")
        split = dict(step["split"])
        if data_dir:
            split["data_dir"] = data_dir
        return cls(task=step["task"], split=split, task_def=step.get("task_def"),
                   model_spec=step.get("model_spec"), variant=step.get("variant", "finetune"))

    @property
    def seed(self) -> int:
        return self.split["seed"]

    def args(self) -> argparse.Namespace:
        """The split arguments as a namespace (what resolve_task / make_splits read)."""
        return argparse.Namespace(**self.split, task=self.task, task_def=self.task_def)

    def child(self, task, args: argparse.Namespace, variant: str, **extra: Any) -> "Lineage":
        """The lineage of a checkpoint made from this one: the task as resolved, the split arguments as used."""
        split = {k: v for k, v in vars(args).items() if k not in _NOT_SPLIT}
        return Lineage(task=task.name, split=split, task_def=task.decl, model_spec=self.model_spec, variant=variant,
                       extra=extra)

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "task": self.task, "task_def": self.task_def, "model_spec": self.model_spec,
                "variant": self.variant, **self.extra}


def load_model(ckpt: str | os.PathLike, device: str):
    """(model on ``device``, tokenizer) of a checkpoint (models.load_checkpoint: the one loader)."""
    from axformer.encoders import models

    model, tokenizer = models.load_checkpoint(ckpt)
    model.to(device)
    return model, tokenizer


def save(model, tokenizer, path: str | os.PathLike, lineage: Lineage) -> Path:
    """Checkpoint folder with its lineage (models.save_checkpoint: atomic, schema-checked)."""
    from axformer.encoders import models

    return models.save_checkpoint(model, tokenizer, path, extra=lineage.to_json())


# ------------------------------------------------------------------------------------------------ evaluate, record
def evaluate(model, tok: dict[str, Any], tokenizer, task):
    """(dev, search) EvalResults of a model."""
    from axformer.training import train

    return train.evaluate(model, tok["dev"], tokenizer, task), train.evaluate(model, tok["search"], tokenizer, task)


def metric(task, dev, search, splits, dev_loss: bool = False) -> dict[str, Any]:
    """The ``metric`` block of a record from dev / search EvalResults (search loss; dev loss when asked)."""
    from axformer.records import results

    block = results.metric_block(task, dev.metrics, search.metrics, len(splits.dev), len(splits.search))
    if dev_loss:
        block["dev_loss"] = dev.mean_loss
    block["search_loss"] = search.mean_loss
    return block


def step_record(path: str | os.PathLike, model, ckpt: Path, splits, **blocks: Any) -> dict[str, Any]:
    """Write a step record (step.json: the blocks a step adds to metrics.json): ``blocks``, size and data."""
    from axformer.measurement import cost
    from axformer.records import results

    record = {**blocks, "size": cost.size_block(model, ckpt), "data": splits.info}
    results.write_step(path, record)
    return record


def run_record(task, model_spec: str, variant: str, seed: int, profile: str, **blocks: Any) -> dict[str, Any]:
    """A metrics.json record (results.new_record) with ``blocks`` set."""
    from axformer.records import results

    rec = results.new_record(task.name, model_spec, variant, seed, profile)
    rec.update(blocks)
    return rec


def search_selector(kind: str, model_ds, tokenizer, task):
    """The ``train(select=...)`` scorer for ``--select`` on the search split (higher is better); None for
    'none'. 'metric' breaks ties between epochs of equal metric (accuracy on a few hundred rows ties often)
    by the lower mean loss."""
    from axformer.training import train
    from axformer.steps.cliargs import SELECT_CHOICES

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


def serialized_bytes(model) -> int | None:
    """Bytes of ``torch.save(model.state_dict())``: the on-disk size of a variant that is never saved (int8)."""
    import io

    import torch

    buf = io.BytesIO()
    try:
        torch.save(model.state_dict(), buf)
    except Exception:  # noqa: BLE001 - an exotic backend without a serialisable state dict: size unknown
        return None
    return buf.tell()


def curve_summary(curve: list[float]) -> dict[str, float]:
    """First loss and mean of the last 20 of a training loss curve."""
    return {"loss_first": curve[0], "loss_last20_mean": sum(curve[-20:]) / len(curve[-20:])}


# ------------------------------------------------------------------------------------------------ signals
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
