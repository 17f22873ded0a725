"""Latency-aware AxFormer (`axformer_lat`): hard attention only where it does not slow the model down.

The accuracy-driven search selects hard-attention layers for the search loss; on a CPU a top-K layer can cost
more than the ordinary attention it replaces (DESIGN §7). With ``PruneConfig.latency_aware`` every
hard-attention candidate is also timed on the measurement shape (batch ``lat_batch_size`` x length
``lat_seq_len``, search-split sentences padded like ``measure``, the job's CPU threads), interleaved against the
current model with :func:`axformer.measurement.measure.time_interleaved`, and rejected when its median latency rises by more
than the A/A noise of that timing (the relative difference of the medians of the current model and an
identical copy of it, timed once the same way) *or* the rise is significant within its own timing: the lower
end of a 95 % bootstrap interval of the median ratio over the interleaved rounds
(:func:`axformer.stats.speedup_interval`) is above 0. One A/A pair is a single draw (2.8 % on one SST-2 search,
0.15 % on another), so on its own it lets consistent 1 % rises through; the paired interval catches those.
Structural removals only shrink matrices and are not timed.
After pruning, every kept hard-attention layer is timed again (the model with vs without it) and dropped
where it no longer pays; then all kept layers together are timed against none of them, since rises that each
stay inside the noise add up (``_Search.recheck_joint`` in :mod:`axformer.search.prune`).

Device: the guard times on the search's own device (``from_texts(device=...)``, the device the searched
model and its cached batches live on), so the decisions rest on that device's timings, and it never moves a
model: a model found elsewhere is a device mismatch and raises (:meth:`LatencyGuard._time`) instead of being
copied across (``measure.time_interleaved`` moves what it times to its config's device, in place).

Deterministic where it can be: if no row of the timing batch is longer than K, a hard-attention layer runs
the ordinary attention on every row of that batch (per-sequence fallback), so nothing is timed and the
candidate passes.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from torch import nn

from axformer.surgery import hard_attention
from axformer.measurement import measure
from axformer.measurement import measure_config
from axformer import stats
from axformer.device import model_device


RESAMPLES = 1000  # bootstrap resamples of one timing's rise (a few ms over its >= lat_min_iters rounds)


class LatencyGuard:
    """Times candidates against the current model on one fixed input batch (interleaved, median latency)."""

    def __init__(self, inputs: dict[str, torch.Tensor], cfg: measure_config.MeasureConfig, k: int | float):
        self.inputs, self.cfg = inputs, cfg
        lengths = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
        keff = hard_attention.effective_k(k, lengths)
        self.n_rows_topk = sum(int(e < n) for e, n in zip(keff, lengths))  # rows that take the top-K path
        self.aa: dict[str, Any] | None = None  # A/A timing, measured once on first need

    @classmethod
    def from_texts(cls, tokenizer: Any, texts_a: Sequence[str], texts_b: Sequence[str] | None, batch_size: int,
                   seq_len: int, k: int | float, device: str | torch.device = "cpu",
                   **timing: Any) -> "LatencyGuard":
        """The measurement batch (``measure.make_inputs``: cycled texts padded to ``seq_len``) and its timing on
        ``device``: the search's device (the searched model's), never a default."""
        cfg = measure_config.MeasureConfig(batch_sizes=[batch_size], seq_len=seq_len, device=str(torch.device(device)),
                                    **timing)
        return cls(measure.make_inputs(tokenizer, texts_a, texts_b, batch_size, seq_len), cfg, k)

    def describe(self) -> dict[str, Any]:
        """The timing setup and the A/A noise, for decisions.json."""
        return {"device": self.cfg.device, "batch_size": int(self.inputs["input_ids"].shape[0]), "seq_len": int(self.inputs["input_ids"].shape[1]),
                "threads": int(self.cfg.threads), "warmup": self.cfg.warmup, "min_iters": self.cfg.min_iters,
                "min_seconds": self.cfg.min_seconds, "rows_longer_than_k": self.n_rows_topk, "aa": self.aa}

    def _time(self, a: nn.Module, b: nn.Module) -> dict[str, Any]:
        """Interleaved timing of ``a`` and ``b``: their medians and the rise of ``b`` over ``a`` with its
        bootstrap interval over the rounds (round i of both models resampled together).

        Both models must already be on the guard's device: timing moves models in place, and the searched
        model must stay where its cached evaluation expects it."""
        want = torch.device(self.cfg.device)
        for name, m in (("current", a), ("candidate", b)):
            got = model_device(m)
            if got.type != want.type or (want.index is not None and got.index != want.index):
                raise RuntimeError(f"latency guard: the {name} model is on {got} but the guard times on "
                                   f"{self.cfg.device}; build the guard with the search's device (from_texts(device=...)).")
        t = measure.time_interleaved({"a": a, "b": b}, self.inputs, self.cfg)
        sa, sb = t["a"].samples_ms, t["b"].samples_ms
        out = {"a_p50_ms": t["a"].p50_ms, "b_p50_ms": t["b"].p50_ms, "rounds": min(len(sa), len(sb))}
        out["rise"] = out["b_p50_ms"] / out["a_p50_ms"] - 1.0
        if out["rounds"] >= 2:
            n = out["rounds"]
            iv = stats.speedup_interval(sa[:n], sb[:n], resamples=RESAMPLES)  # speedup = a / b
            out["rise_low"], out["rise_high"] = 1.0 / iv.high - 1.0, 1.0 / iv.low - 1.0
        else:  # one round has no interval: only the A/A rule applies
            out["rise_low"] = out["rise_high"] = math.nan
        return out

    def noise(self, model: nn.Module) -> float:
        """A/A noise: |median(model) - median(copy)| / the smaller median, timed once and kept."""
        if self.aa is None:
            t = self._time(model, copy.deepcopy(model))
            a, b = t["a_p50_ms"], t["b_p50_ms"]
            self.aa = {"a_p50_ms": a, "b_p50_ms": b, "noise": abs(a - b) / min(a, b),
                       "rise_low": t["rise_low"], "rise_high": t["rise_high"]}
        return self.aa["noise"]

    def compare(self, current: nn.Module, candidate: nn.Module) -> dict[str, Any]:
        """Time ``candidate`` against ``current``; ``ok`` iff its median rises by no more than the A/A noise
        and the rise is not significant in its own timing (the interval's lower end is <= 0)."""
        if self.n_rows_topk == 0:
            return {"timed": False, "ok": True,
                    "reason": "no row of the timing batch is longer than K: hard attention takes the ordinary path"}
        noise = self.noise(current)
        t = self._time(current, candidate)
        rise, low = t["rise"], t["rise_low"]
        significant = not math.isnan(low) and low > 0.0
        return {"timed": True, "current_p50_ms": t["a_p50_ms"], "candidate_p50_ms": t["b_p50_ms"], "rise": rise,
                "rise_low": low, "rise_high": t["rise_high"], "rounds": t["rounds"], "noise": noise,
                "beyond_noise": rise > noise, "significant": significant,
                "ok": rise <= noise and not significant}
