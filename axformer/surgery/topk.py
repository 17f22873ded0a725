"""The settings of top-K hard attention that a config names (DESIGN §3): its forms (``official`` = the authors'
top-K then softmax, ``renorm``) and valid K. Light on purpose: the workflow's pre-run check and the step
configs read them without importing torch; the attention itself is :mod:`axformer.surgery.hard_attention`.
"""

from __future__ import annotations

import math
from typing import Any


FORMS = ("official", "renorm")


DEFAULT_FORM = "official"  # the paper's; prune.PruneConfig.topk_form takes its default from here


def validate_k(k: Any) -> int | float:
    """Return ``k`` if it is an int >= 1 or a float in (0, 1]; else raise ValueError."""
    if isinstance(k, bool):
        raise ValueError(f"hard-attention k must be an int >= 1 or a float fraction in (0, 1] (got {k!r}).")
    if isinstance(k, int):
        if k < 1:
            raise ValueError(f"hard-attention k as an int must be >= 1 (got {k}).")
        return int(k)
    if isinstance(k, float):
        if not (math.isfinite(k) and 0.0 < k <= 1.0):
            raise ValueError(
                f"hard-attention k as a float is a fraction of the sequence length and must be in (0, 1] (got {k}); "
                "pass an int for an absolute number of keys."
            )
        return float(k)
    raise ValueError(f"hard-attention k must be an int >= 1 or a float in (0, 1] (got {type(k).__name__} {k!r}).")


def validate_form(form: Any) -> str:
    """Return ``form`` if it is one of :data:`FORMS`; else raise ValueError."""
    if form not in FORMS:
        raise ValueError(f"hard-attention topk_form must be one of {list(FORMS)} (got {form!r}).")
    return form
