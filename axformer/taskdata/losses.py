"""Logits and per-sample losses: the one definition every step that scores or trains a model shares.

Fine-tuning (train.py), distillation (distill.py), the AxFormer search (prune.py), the peer methods
(baselines/) and the QA scorer (squad.py) all read model outputs through :func:`output_logits` and compare
them through :func:`per_sample_loss`, so a loss means the same thing in every step without any of them
importing another step's module for it.

Span QA (SQuAD): the model returns start / end logits, which :func:`output_logits` stacks into logits of
shape (B, T, 2); its labels are [start, end] token positions and the loss is start CE + end CE per window.
"""

from __future__ import annotations

from typing import Any

import torch

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


def concat_logits(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch logits; span logits (B, T, 2) of dynamically padded batches are padded to the
    longest T with ``NEG`` first."""
    if parts and parts[0].dim() == 3:
        t = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0, 0, t - p.shape[1]), value=NEG) for p in parts]
    return torch.cat(parts)
