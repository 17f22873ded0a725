"""THE training / evaluation loop. Fine-tuning, distillation and every scoring step share it.

`evaluate` returns per-sample losses because the AxFormer search (prune.py) accepts a candidate on the
fraction of search samples it leaves no worse, not only on the mean loss.

Span QA (SQuAD) goes through the same loop: logits and losses of both task kinds are defined once in
taskdata/losses.py, batching in batches.py, and the scoring of a split by its task kind (taskdata/taskkinds.py;
per-question reduction and answer texts: squad.py). Import those names from the modules that define them.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from axformer.training.batches import make_loader, model_inputs, predict_logits
from axformer.taskdata.losses import output_logits, per_sample_loss
from axformer.taskdata.taskkinds import EvalResult, evaluate_logits
from axformer.taskdata.tasks import Task
from axformer.training.train_config import TrainConfig
from axformer.utils import set_seed

__all__ = ["TrainConfig", "train", "evaluate"]


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
            inputs = model_inputs(batch, device)
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


def evaluate(model: torch.nn.Module, ds, tokenizer, task: Task, batch_size: int = 128) -> EvalResult:
    """Predictions, per-sample losses and the task metrics of ``model`` on ``ds``.

    QA: ``losses`` has one span loss per question (see squad.py), ``answers`` the predicted texts.
    """
    logits, labels = predict_logits(model, ds, tokenizer, batch_size)
    return evaluate_logits(ds, logits, labels, task)
