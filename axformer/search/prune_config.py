"""The AxFormer search's knobs and their defaults (:class:`PruneConfig`: acceptance rule, granularity, top-K,
the latency guard), the one place they are set. Light on purpose: the CLI parser and the workflow's pre-run
check read it without importing torch; the search itself is :mod:`axformer.search.prune`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from axformer.surgery.topk import DEFAULT_FORM, FORMS, validate_k
from axformer.utils import ConfigError


@dataclass
class PruneConfig:
    """Search knobs: the one place of their defaults (the CLI and the `axformer` step of every profile use
    them); the paper's values where the paper has one."""

    accept_rule: Literal["guarded", "paper", "meanloss", "metric", "official"] = "guarded"
    accept_frac: float = 0.5  # N: fraction of search samples that must be no worse (paper §4: 0.5)
    accept_margin: float = 1e-4  # relative floor of the acceptance margin: gain must exceed this x best loss
    accept_z: float = 1.0  # ... and this many standard errors of the paired per-sample loss difference
    less_important: float = 1.1  # "less important" if loss < 1.1 x best loss (paper §4)
    n_groups: int = 12  # FFN neuron groups per layer (paper: 12)
    topk: int | float = 30  # hard attention K (paper: 30 at length 128); float in (0, 1] = fraction of length
    topk_form: Literal["official", "renorm"] = DEFAULT_FORM  # official = the paper's
    mode: Literal["full", "prune", "hardattn"] = "full"  # ablations: pruning only / hard attention only
    granularity: Literal["fine", "blocks"] = "fine"  # blocks only, or descend into heads / FFN groups
    batch_size: int = 128  # also the released eval batch of the `official` rule's loss (released_mean_loss)
    tolerance: float = 1e-6  # "no worse" allows float noise of this size
    progress: bool = True
    # latency-aware variant (axformer_lat): time hard-attention candidates on the measurement shape
    latency_aware: bool = False
    lat_batch_size: int = 32  # the measurement's throughput batch
    lat_seq_len: int = 128  # the measurement's padded length
    lat_warmup: int = 2  # untimed forwards per model before each timing
    lat_min_iters: int = 16  # timed forwards per model (at least): rounds of the rise's bootstrap interval
    lat_seconds: float = 1.5  # ... and at least this many seconds per timing

    def validate(self) -> None:
        import math

        for f in dataclasses.fields(self):  # NaN passes every `<` check below: refuse non-finite numbers first
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"axformer.{f.name} must be a finite number (got {v}).")
        if self.accept_rule not in ("guarded", "paper", "meanloss", "metric", "official"):
            raise ConfigError("axformer.accept_rule must be guarded | paper | meanloss | metric | official "
                              f"(got {self.accept_rule!r}).")
        if not 0.0 <= self.accept_frac < 1.0:
            raise ConfigError(f"axformer.accept_frac must be in [0, 1) (got {self.accept_frac}).")
        if not (self.accept_margin >= 0.0 and self.accept_z >= 0.0):
            raise ConfigError(f"axformer.accept_margin and accept_z must be >= 0 (got {self.accept_margin}, "
                              f"{self.accept_z}); 0 and 0 give the old rule without a margin.")
        if self.topk_form not in FORMS:
            raise ConfigError(f"axformer.topk_form must be one of {' | '.join(FORMS)} "
                              f"(got {self.topk_form!r}).")
        for name in ("lat_batch_size", "lat_seq_len", "lat_min_iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"axformer.{name} must be >= 1 (got {getattr(self, name)}).")
        if self.lat_warmup < 0 or self.lat_seconds < 0:
            raise ConfigError(f"axformer.lat_warmup and lat_seconds must be >= 0 (got {self.lat_warmup}, "
                              f"{self.lat_seconds}).")
        if self.less_important < 1.0:
            raise ConfigError(f"axformer.less_important must be >= 1 (got {self.less_important}).")
        if self.mode not in ("full", "prune", "hardattn"):
            raise ConfigError(f"axformer.mode must be full | prune | hardattn (got {self.mode!r}).")
        if self.granularity not in ("fine", "blocks"):
            raise ConfigError(f"axformer.granularity must be fine | blocks (got {self.granularity!r}).")
        if self.n_groups < 1:
            raise ConfigError(f"axformer.groups must be >= 1 (got {self.n_groups}).")
        try:
            validate_k(self.topk)
        except ValueError as exc:
            raise ConfigError(f"axformer.topk: {exc}") from None
