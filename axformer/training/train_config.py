"""The fine-tuning recipe's knobs and their defaults (:class:`TrainConfig`), the one place they are set. Light
on purpose: the CLI parser and the workflow's pre-run check read them without importing torch; the loop itself
is :mod:`axformer.training.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from axformer.utils import ConfigError


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
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0):  # NaN / inf refused too (axformer/bounds.py has the upper bounds)
                raise ConfigError(f"train.{key} must be > 0 and finite (got {v}).")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0 and 0 <= self.warmup_ratio < 1):
            raise ConfigError(f"train.weight_decay must be >= 0 and warmup_ratio in [0, 1) (got {self.weight_decay}, "
                              f"{self.warmup_ratio}).")
