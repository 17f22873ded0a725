"""Distillation's knobs and their defaults (:class:`DistillConfig`: student depth, layer choice, temperature,
loss weights; :data:`TRAIN_DEFAULTS`, the student's own recipe), the one place they are set. Light on
purpose: the CLI parser and the pre-run check read them without importing torch; the student and the loss
are :mod:`axformer.compress.distill`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from axformer.utils import ConfigError

if TYPE_CHECKING:
    from torch import nn


STRATEGIES = ("every_other", "evenly", "first")


INITS = ("teacher", "pretrained")


# The student's training settings where they differ from TrainConfig's (fine-tuning) defaults: a student
# re-learns more than a fine-tuned model moves, so it takes a larger learning rate.
TRAIN_DEFAULTS: dict[str, Any] = {"lr": 1e-4}


@dataclass
class DistillConfig:
    """Distillation settings.

    ``n_layers``: student depth (None = half the teacher's, at least 1). ``temperature`` / ``alpha``: see
    :func:`kd_loss`. ``init``: ``"teacher"`` = layers copied from the fine-tuned teacher (:func:`make_student`);
    ``"pretrained"`` = start from the pretrained checkpoint ``pretrained`` (any supported encoder family, e.g.
    ``minilm`` under an ``mpnet-base`` teacher; another vocabulary than the teacher's is distilled
    cross-tokenizer, :func:`pretrained_student`).
    """

    n_layers: int | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    strategy: str = "every_other"
    init: str = "teacher"
    pretrained: str | None = None

    def validate(self) -> None:
        if self.n_layers is not None and (isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int)):
            raise ConfigError(f"distill.n_layers must be an int (got {self.n_layers!r}).")
        t = self.temperature
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ConfigError(f"distill.temperature must be > 0 (got {self.temperature}).")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ConfigError(f"distill.alpha must be in [0, 1] (got {self.alpha}).")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"distill.strategy must be one of {', '.join(STRATEGIES)} (got {self.strategy!r}).")
        if self.init not in INITS:
            raise ConfigError(f"distill.init must be one of {', '.join(INITS)} (got {self.init!r}).")
        if self.init == "pretrained" and not self.pretrained:
            raise ConfigError("distill.init = 'pretrained' needs distill.pretrained (a model spec, e.g. minilm).")

    def resolve_layers(self, teacher: nn.Module) -> int:
        """The student depth: ``n_layers``, or half the teacher's (at least 1)."""
        from axformer.surgery import families  # torch: only when a teacher is at hand

        return self.n_layers if self.n_layers is not None else max(1, len(families.layers(teacher)) // 2)
