"""The kind of a task, picked once: a text task (one label per row: GLUE and declared tasks, :mod:`axformer.taskdata.data`)
or span question answering (SQuAD v1.1, :mod:`axformer.taskdata.squad`) behind one small interface.

A :class:`TaskKind` reads a split, carves train' / search / dev, tokenizes, subsamples, gives the texts a
timing batch is made of, scores logits (:class:`EvalResult`) and settles its own split arguments. Every
caller that takes any task (the CLI steps, the training loop's ``evaluate``, the AxFormer search) goes through
:func:`kind_of` instead of branching on ``task.is_qa``; the two kind modules import neither this module nor a
step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from axformer.taskdata import data, squad
from axformer.taskdata import splits
from axformer.taskdata import metrics as M
from axformer.taskdata.losses import per_sample_loss
from axformer.taskdata.tasks import Task
from axformer.utils import ConfigError

# Scores logits of a fixed split (the search split, scored once per candidate): (logits, labels) on the
# model's device -> (per-sample losses, task metrics). Built once per split by ``TaskKind.scorer``.
Scorer = Callable[[torch.Tensor, torch.Tensor], tuple[np.ndarray, dict[str, float]]]


@dataclass
class EvalResult:
    """Everything a scoring step needs from one pass over a dataset."""

    logits: np.ndarray  # QA: (windows, T, 2) start / end logits, padded with NEG past each window
    labels: np.ndarray  # QA: (windows, 2) gold start / end token
    losses: np.ndarray  # per sample: cross-entropy, squared error for regression, span loss per QA question
    metrics: dict[str, float] = field(default_factory=dict)
    answers: list[str] | None = None  # QA: predicted answer text per question
    question_ids: np.ndarray | None = None  # QA: which question each entry of `losses` / `answers` is

    @property
    def predictions(self) -> np.ndarray:
        if self.answers is not None:
            return np.asarray(self.answers, dtype=object)
        return self.logits[:, 0] if self.logits.shape[1] == 1 else self.logits.argmax(-1)

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean())


class TaskKind:
    """What differs between task kinds; the methods of the text kind (GLUE-like tasks)."""

    name = "text"
    split_keys: tuple[str, ...] = ()  # split arguments beyond splits.SplitConfig a checkpoint records
    has_constant_predictor = True  # the `majority` row exists

    def load_split(self, task: Task, split: str, data_dir: str | os.PathLike | None = None, allow_hub: bool = False):
        return data.load_split(task, split, data_dir, allow_hub)

    def make_splits(self, task: Task, data_dir, seed: int, search_frac: float, search_max: int | None,
                    train_max: int | None, dev_max: int | None, allow_hub: bool, protocol: str | None,
                    local_fractions: Any, search_rows: str | None = None) -> splits.Splits:
        return splits.make_splits(task, data_dir, seed, search_frac, search_max, train_max, dev_max, allow_hub,
                                search_rows)

    def tokenize(self, ds, tokenizer, task: Task, max_length: int):
        return data.tokenize(ds, tokenizer, task, max_length)

    def subsample(self, task: Task, ds, tokenized, n: int, seed: int):
        return data.subsample(task, ds, tokenized, n, seed)

    def texts(self, task: Task, ds) -> tuple[list[str], list[str] | None]:
        return data.texts(task, ds)

    def evaluate_logits(self, ds, logits: np.ndarray, labels: np.ndarray, task: Task) -> EvalResult:
        losses = per_sample_loss(torch.from_numpy(logits), torch.from_numpy(labels), task.is_regression).numpy()
        res = EvalResult(logits=logits, labels=labels, losses=losses)
        res.metrics = M.compute(task, res.predictions, labels)
        return res

    def scorer(self, task: Task, ds) -> Scorer:
        def score(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, dict[str, float]]:
            # losses and predictions on the device, one copy to the host per pass
            losses = per_sample_loss(logits, labels, task.is_regression).cpu().numpy()
            preds = (logits[:, 0] if task.is_regression else logits.argmax(-1)).cpu().numpy()
            return losses, M.compute(task, preds, labels.cpu().numpy())

        return score

    def n_scored(self, ds) -> int:
        """Samples a scorer returns a loss for (text: rows)."""
        return len(ds)

    def settle_split_args(self, task: Task, args: Any) -> None:
        """Fill in the kind's own split arguments on ``args`` (the values recorded are the values used)."""


class QAKind(TaskKind):
    """Span question answering (SQuAD v1.1): article-level splits, question/context windows, per-question scores."""

    name = "qa"
    split_keys = ("squad_protocol", "squad_fractions", "doc_stride", "max_answer_len")
    has_constant_predictor = False

    def load_split(self, task, split, data_dir=None, allow_hub=False):
        return squad.load_split(task, split, data_dir, allow_hub)

    def make_splits(self, task, data_dir, seed, search_frac, search_max, train_max, dev_max, allow_hub, protocol,
                    local_fractions, search_rows=None):
        if search_rows:
            raise ConfigError(f"split.search_rows is for text tasks (GLUE rows); task {task.name} splits by article: "
                              "drop the key for it.")
        return squad.make_splits(task, data_dir, seed, protocol or "standard", local_fractions, search_frac,
                                 search_max, train_max, dev_max, allow_hub)

    def tokenize(self, ds, tokenizer, task, max_length):
        return squad.tokenize(ds, tokenizer, task, max_length)

    def subsample(self, task, ds, tokenized, n, seed):
        keep = squad.pick_questions(len(ds), n, np.random.default_rng(seed))  # n questions with all their windows
        return ds.select(keep), tokenized.select(squad.windows_of(tokenized, keep))

    def texts(self, task, ds):
        return squad.measure_texts(ds)

    def evaluate_logits(self, ds, logits, labels, task):
        view = squad.QAView.of(ds)
        losses, answers, metrics = squad.score(logits, labels, view, task)
        return EvalResult(logits=logits, labels=labels, losses=losses, metrics=metrics, answers=answers,
                          question_ids=view.questions)

    def scorer(self, task, ds):
        view = squad.QAView.of(ds)  # windows of one question may sit in different batches: regroup per question

        def score(logits, labels):
            losses, _answers, metrics = squad.score(logits.cpu(), labels.cpu(), view, task)
            return losses, metrics

        return score

    def n_scored(self, ds) -> int:
        return len(np.unique(np.asarray(list(ds["example_idx"]))))

    def settle_split_args(self, task, args):
        args.squad_protocol = getattr(args, "squad_protocol", None) or "standard"
        fr = getattr(args, "squad_fractions", None)
        args.squad_fractions = list(squad.parse_fractions(fr)) if args.squad_protocol == "local" else None
        args.doc_stride, args.max_answer_len = task.doc_stride, task.max_answer_len
        squad.question_budget(args.max_length, task.doc_stride)  # refuse impossible windows before any work


KINDS: dict[str, TaskKind] = {"text": TaskKind(), "qa": QAKind()}


def kind_of(task: Task) -> TaskKind:
    """The kind of ``task`` (``Task.kind``)."""
    return KINDS[task.kind]


# ----------------------------------------------------------------------------- the interface for any task
def load_split(task: Task, split: str, data_dir: str | os.PathLike | None = None, allow_hub: bool = False):
    """One split ("train" or "dev") as a `datasets.Dataset`: text tasks (text_a, text_b, label, idx); SQuAD one
    row per question (``squad.EXAMPLE_COLUMNS``)."""
    return kind_of(task).load_split(task, split, data_dir, allow_hub)


def make_splits(task: Task, data_dir: str | os.PathLike | None, seed: int,
                search_frac: float = splits.SplitConfig.search_frac,
                search_max: int | None = splits.SplitConfig.search_max, train_max: int | None = None,
                dev_max: int | None = None, allow_hub: bool = False, protocol: str | None = "standard",
                local_fractions: Any = None, search_rows: str | None = None) -> splits.Splits:
    """train' / search / dev of any task (DESIGN §2; SQuAD: article-level, ``protocol`` and ``local_fractions``;
    ``search_rows``: a split index file fixing the search split, splits.load_split_index)."""
    return kind_of(task).make_splits(task, data_dir, seed, search_frac, search_max, train_max, dev_max, allow_hub,
                                     protocol, local_fractions, search_rows)


def tokenize(ds, tokenizer, task: Task, max_length: int = 128):
    """Model inputs + labels of a split (SQuAD: question/context windows and their post-processing columns)."""
    return kind_of(task).tokenize(ds, tokenizer, task, max_length)


def subsample(task: Task, ds, tokenized, n: int, seed: int):
    """A seeded subset of ``n`` samples of a split and the matching rows of its tokenized form (text: stratified
    on the label; SQuAD: ``n`` questions with all their windows)."""
    return kind_of(task).subsample(task, ds, tokenized, n, seed)


def texts(task: Task, ds) -> tuple[list[str], list[str] | None]:
    """The texts of a split's rows a timing batch is tokenized from (SQuAD: question, context pairs)."""
    return kind_of(task).texts(task, ds)


def timing_texts(task: Task, ds, n: int, seed: int) -> tuple[list[str], list[str] | None]:
    """The texts of a latency timing batch: a seeded random sample of ``n`` rows (data.timing_rows)."""
    return texts(task, data.timing_rows(ds, n, seed))


def evaluate_logits(ds, logits: np.ndarray, labels: np.ndarray, task: Task) -> EvalResult:
    """Per-sample losses (SQuAD: per question), predictions and the task metrics of logits over ``ds``."""
    return kind_of(task).evaluate_logits(ds, logits, labels, task)
