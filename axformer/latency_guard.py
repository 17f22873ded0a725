"""Latency-aware AxFormer (`axformer_lat`): hard attention only where it does not slow the model down.

The accuracy-driven search selects hard-attention layers for the search loss; on a CPU a top-K layer can cost
more than the ordinary attention it replaces (DESIGN §7). With ``PruneConfig.latency_aware`` every
hard-attention candidate is also timed on the measurement shape (batch ``lat_batch_size`` x length
``lat_seq_len``, search-split sentences padded like ``measure``, the job's CPU threads), interleaved against the
current model with :func:`axformer.measure.time_interleaved`, and rejected when its median latency rises by more
than the A/A noise of that timing: the relative difference of the medians of the current model and an
identical copy of it, timed once the same way. Structural removals only shrink matrices and are not timed.
After pruning, every kept hard-attention layer is timed again (the model with vs without it) and dropped
where it no longer pays; then all kept layers together are timed against none of them, since rises that each
stay inside the noise add up (``_Search.recheck_joint`` in :mod:`axformer.prune`).

Deterministic where it can be: if no row of the timing batch is longer than K, a hard-attention layer runs
the ordinary attention on every row of that batch (per-sequence fallback), so nothing is timed and the
candidate passes.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from axformer import hard_attention, measure


class LatencyGuard:
    """Times candidates against the current model on one fixed input batch (interleaved, median latency)."""

    def __init__(self, inputs: dict[str, torch.Tensor], cfg: measure.MeasureConfig, k: int | float):
        self.inputs, self.cfg = inputs, cfg
        lengths = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
        keff = hard_attention.effective_k(k, lengths)
        self.n_rows_topk = sum(int(e < n) for e, n in zip(keff, lengths))  # rows that take the top-K path
        self.aa: dict[str, Any] | None = None  # A/A timing, measured once on first need

    @classmethod
    def from_texts(cls, tokenizer: Any, texts_a: Sequence[str], texts_b: Sequence[str] | None, batch_size: int,
                   seq_len: int, k: int | float, **timing: Any) -> "LatencyGuard":
        """The measurement batch (``measure.make_inputs``: cycled texts padded to ``seq_len``) and its timing."""
        cfg = measure.MeasureConfig(batch_sizes=[batch_size], seq_len=seq_len, **timing)
        return cls(measure.make_inputs(tokenizer, texts_a, texts_b, batch_size, seq_len), cfg, k)

    def describe(self) -> dict[str, Any]:
        """The timing setup and the A/A noise, for decisions.json."""
        return {"batch_size": int(self.inputs["input_ids"].shape[0]), "seq_len": int(self.inputs["input_ids"].shape[1]),
                "threads": int(self.cfg.threads), "warmup": self.cfg.warmup, "min_iters": self.cfg.min_iters,
                "min_seconds": self.cfg.min_seconds, "rows_longer_than_k": self.n_rows_topk, "aa": self.aa}

    def _p50(self, a: nn.Module, b: nn.Module) -> tuple[float, float]:
        stats = measure.time_interleaved({"a": a, "b": b}, self.inputs, self.cfg)
        return stats["a"].p50_ms, stats["b"].p50_ms

    def noise(self, model: nn.Module) -> float:
        """A/A noise: |median(model) - median(copy)| / the smaller median, timed once and kept."""
        if self.aa is None:
            a, b = self._p50(model, copy.deepcopy(model))
            self.aa = {"a_p50_ms": a, "b_p50_ms": b, "noise": abs(a - b) / min(a, b)}
        return self.aa["noise"]

    def compare(self, current: nn.Module, candidate: nn.Module) -> dict[str, Any]:
        """Time ``candidate`` against ``current``; ``ok`` iff its median rises by no more than the A/A noise."""
        if self.n_rows_topk == 0:
            return {"timed": False, "ok": True,
                    "reason": "no row of the timing batch is longer than K: hard attention takes the ordinary path"}
        noise = self.noise(current)
        cur, cand = self._p50(current, candidate)
        rise = cand / cur - 1.0
        return {"timed": True, "current_p50_ms": cur, "candidate_p50_ms": cand, "rise": rise, "noise": noise,
                "ok": rise <= noise}
