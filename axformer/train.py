"""THE training / evaluation loop. Fine-tuning, distillation and every scoring step share it.

`evaluate` returns per-sample losses because the AxFormer search (prune.py) accepts a candidate on the
fraction of search samples it leaves no worse, not only on the mean loss.

Span QA (SQuAD) goes through the same loop: its model returns start / end logits, which
:func:`output_logits` stacks into logits of shape (B, T, 2); its labels are [start, end] token positions, and
:func:`per_sample_loss` gives start CE + end CE per window. Per-question reduction and answer texts: squad.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from axformer import metrics as M
from axformer.tasks import Task
from axformer.utils import ConfigError, set_seed


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters (defaults: BERT fine-tuning recipe, Devlin et al. 2019, §A.3)."""

    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # linear warm-up over the first 10 % of steps, then linear decay
    grad_clip: float = 1.0
    seed: int = 0
    eval_batch_size: int = 128
    progress: bool = True

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be > 0 (got {getattr(self, key)}).")


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


# Logit given to positions a span can never use (padding): far below any real logit, yet finite, so that
# softmax gives them 0 and no 0 * inf NaN appears in a KL divergence; representable in fp16 too.
NEG = -1e4


def output_logits(out: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a model output: ``out.logits``, or for span QA start / end stacked to (B, T, 2) with the
    padding positions set to ``NEG``, so that a window's loss does not depend on how much its batch is padded."""
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    start, end = getattr(out, "start_logits", None), getattr(out, "end_logits", None)
    if start is None or end is None:
        raise TypeError(f"model output {type(out).__name__} has neither logits nor start/end logits.")
    logits = torch.stack([start, end], dim=-1)
    mask = inputs.get("attention_mask")
    if mask is not None:
        logits = logits.masked_fill(~mask.to(logits.device).bool()[..., None], NEG)
    return logits


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Loss of each sample, shape (B,): CE for classification, squared error for regression (STS-B), and for
    span QA (logits (B, T, 2), labels (B, 2)) start-position CE + end-position CE of each window."""
    if logits.dim() == 3:
        lg, y = logits.float(), labels.view(-1, 2).long()
        ce = torch.nn.functional.cross_entropy
        return ce(lg[..., 0], y[:, 0], reduction="none") + ce(lg[..., 1], y[:, 1], reduction="none")
    if is_regression:
        return (logits.view(-1).float() - labels.view(-1).float()) ** 2
    return torch.nn.functional.cross_entropy(logits.float(), labels.view(-1).long(), reduction="none")


BATCH_COLUMNS = ("input_ids", "token_type_ids", "attention_mask", "labels")


def make_loader(ds, tokenizer, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Dynamic padding: each batch is padded to its own longest row, not to max_length.

    Only model inputs and labels are batched; other columns (a QA window's offsets, context, answers) stay in
    the dataset for post-processing.
    """
    from transformers import DataCollatorWithPadding

    cols = getattr(ds, "column_names", None)
    if cols is not None and set(cols) - set(BATCH_COLUMNS):
        ds = ds.select_columns([c for c in BATCH_COLUMNS if c in cols])
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=gen, num_workers=0)


def _model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


# Training steps between reads of the loss back to the host (each read waits for the GPU to finish).
SYNC_EVERY = 50

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
# Scores a model after an epoch for checkpoint selection (higher is better): see `train(select=...)`.
SelectFn = Callable[[torch.nn.Module], float]


def train(
    model: torch.nn.Module,
    train_ds,
    tokenizer,
    task: Task,
    cfg: TrainConfig,
    loss_fn: LossFn | None = None,
    select: SelectFn | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with AdamW + linear schedule; returns the loss curve and wall time.

    ``loss_fn(logits, batch)`` replaces the task loss (distillation passes a KD loss that closes over
    the teacher); by default the mean of ``per_sample_loss``.

    ``select(model)`` (higher is better), when given, scores the model after every epoch and at the end; the
    model is left with the weights of the best-scoring epoch (the first on ties). Small, noisy tasks (RTE)
    need more epochs than a fixed budget can guess; the caller scores on the *search* split, never on dev.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg.validate()
    set_seed(cfg.seed)
    device = next(model.parameters()).device
    loader = make_loader(train_ds, tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed)
    total_steps = max(1, math.ceil(cfg.epochs * len(loader)))
    no_decay = ("bias", "LayerNorm.weight", "layernorm", "layer_norm")
    groups = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not any(s in n for s in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and any(s in n for s in no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)
    if loss_fn is None:
        def loss_fn(logits, batch):  # noqa: E306 — the default task loss
            return per_sample_loss(logits, batch["labels"].to(logits.device), task.is_regression).mean()

    curve: list[float] = []
    pending: list[torch.Tensor] = []  # losses still on the device: read back in chunks, not once per step

    def flush() -> None:
        if pending:
            curve.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()
            bar.set_postfix(loss=f"{np.mean(curve[-20:]):.4f}")

    step = 0
    scores: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None

    def checkpoint_score() -> None:
        nonlocal best
        score = float(select(model))
        model.train()
        scores.append({"step": step, "epoch": round(step / len(loader), 4), "score": score})
        if best is None or score > best[0]:
            # a copy, not a reference: the optimiser keeps updating the live tensors
            best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})

    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=total_steps, desc="train", disable=not cfg.progress, mininterval=2.0)
    while step < total_steps:
        if select is not None and step > 0:
            checkpoint_score()  # end of a full epoch
        for batch in loader:
            inputs = _model_inputs(batch, device)
            logits = output_logits(model(**inputs), inputs)
            loss = loss_fn(logits, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            pending.append(loss.detach())
            step += 1
            bar.update(1)
            if len(pending) >= SYNC_EVERY:
                flush()
            if step >= total_steps:
                break
    flush()
    bar.close()
    log: dict[str, Any] = {}
    if select is not None:
        checkpoint_score()  # the end of training (a fractional last epoch included)
        assert best is not None
        model.load_state_dict(best[1])
        chosen = max(range(len(scores)), key=lambda i: (scores[i]["score"], -i))
        log = {"select_scores": scores, "selected_step": scores[chosen]["step"],
               "selected_epoch": scores[chosen]["epoch"]}
    model.eval()
    return {"loss_curve": curve, "steps": step, "wall_s": time.perf_counter() - t0, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed, **log}


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, ds, tokenizer, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over ``ds`` in order (eval mode, no grad)."""
    model.eval()
    device = next(model.parameters()).device
    outs, labs = [], []
    for batch in make_loader(ds, tokenizer, batch_size, shuffle=False):
        inputs = _model_inputs(batch, device)
        outs.append(output_logits(model(**inputs), inputs).float().cpu())
        labs.append(batch["labels"])
    return concat_logits(outs).numpy(), torch.cat(labs).numpy()


def concat_logits(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch logits; span logits (B, T, 2) of dynamically padded batches are padded to the
    longest T with ``NEG`` first."""
    if parts and parts[0].dim() == 3:
        t = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0, 0, t - p.shape[1]), value=NEG) for p in parts]
    return torch.cat(parts)


def evaluate(model: torch.nn.Module, ds, tokenizer, task: Task, batch_size: int = 128) -> EvalResult:
    """Predictions, per-sample losses and the task metrics of ``model`` on ``ds``.

    QA: ``losses`` has one span loss per question (see squad.py), ``answers`` the predicted texts.
    """
    logits, labels = predict_logits(model, ds, tokenizer, batch_size)
    if task.is_qa:
        from axformer import squad

        return squad.evaluate_logits(ds, logits, labels, task)
    losses = per_sample_loss(torch.from_numpy(logits), torch.from_numpy(labels), task.is_regression).numpy()
    res = EvalResult(logits=logits, labels=labels, losses=losses)
    res.metrics = M.compute(task, res.predictions, labels)
    return res
