"""Latency, memory, size, FLOPs and environment measurements for one (baseline, variant) pair.

Fills the ``latency``, ``memory``, ``size``, ``flops`` and ``env`` blocks of metrics.json (DESIGN §4).
The functions only look at module shapes and forward passes, so they do not care how a variant was made
(pruned, skipped, hard attention, int8 dynamic quantisation, ...).

Conventions
- Latency is wall time of one ``model(**inputs)`` call on fixed-shape inputs (padded to ``seq_len``), in ms.
- Baseline and variant are timed in the *same* job, alternating A B A B, so that drift in clock speed,
  thermal state or load from other processes hits both alike; ``speedup`` is computed from that job.
- Anything that cannot be measured is recorded as ``None`` together with a reason string, never as 0.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from axformer.measurement.cost import (bytes_on_disk, flops_block, is_quantized_module, param_counts,
                                       peak_flops_measured)
from axformer.measurement.measure_config import ROUND_ORDERS, MeasureConfig
from axformer.utils import ConfigError, env_info, git_commit

__all__ = [
    "MeasureConfig",
    "LatencyStats",
    "Latency",
    "Memory",
    "Size",
    "make_inputs",
    "time_interleaved",
    "compare",
    "measure_memory",
    "env_block",
    "measure_pair",
    "check_device",
    "cast_for_measure",
]

# ----------------------------------------------------------------------------------------------------------
# Configuration and result records
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LatencyStats:
    """Summary of per-iteration latencies in milliseconds."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    n_iters: int
    # the per-iteration times in the order they were taken (iteration i of every model in one interleaved job
    # is one A B round), for the speedup's bootstrap interval (axformer.stats.speedup_interval)
    samples_ms: list[float] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_values(cls, ms_list: Sequence[float]) -> "LatencyStats":
        samples = [float(v) for v in ms_list]
        vals = sorted(samples)
        n = len(vals)
        if n == 0:
            raise ValueError("LatencyStats.from_values needs at least one value")
        mean = sum(vals) / n
        # sample standard deviation (n-1); 0 for a single value
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        return cls(p50_ms=_percentile(vals, 50), p90_ms=_percentile(vals, 90), mean_ms=mean, std_ms=std, n_iters=n,
                   samples_ms=samples)


def _percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (same as numpy's default) of an already sorted list."""
    n = len(sorted_vals)
    if n == 1:
        return sorted_vals[0]
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


@dataclass
class Latency:
    """One ``latency`` block: the variant's figures plus the baseline's from the same interleaved job."""

    device: str
    batch_size: int
    seq_len: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    n_iters: int
    threads: int
    baseline_p50_ms: float
    baseline_p90_ms: float
    speedup: float  # baseline_p50_ms / p50_ms; > 1 means the variant is faster
    dtypes: dict[str, Any] | None = None  # float dtypes held by {"baseline": [...], "variant": [...]}
    tf32: dict[str, Any] | None = None  # TF32 state during the timing (device.tf32_state)
    library_log: dict[str, Any] | None = None  # a per-call library warning: first line once, count silenced

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Memory:
    """The ``memory`` block. ``None`` where a figure is unavailable, with ``reason`` saying why."""

    peak_bytes: int | None
    source: str | None  # "nvml" | "torch.cuda" | "rss"
    torch_cuda_max_allocated: int | None  # bytes
    nvml_used_bytes: int | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Size:
    """The ``size`` block."""

    params_total: int
    params_encoder: int
    bytes_on_disk: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Devices and inputs
# ----------------------------------------------------------------------------------------------------------


def check_device(cfg: MeasureConfig, models: Iterable[nn.Module] = ()) -> torch.device:
    """Return ``torch.device(cfg.device)`` or raise ``ConfigError`` if the models cannot run there."""
    if cfg.is_cuda:
        if not torch.cuda.is_available():
            raise ConfigError(
                f'measure.device is "{cfg.device}" but CUDA is not available on this machine '
                f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}). "
                'Set measure.device to "cpu" or run on a GPU machine.'
            )
        dev = torch.device(cfg.device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f'measure.device is "{cfg.device}" but only {torch.cuda.device_count()} CUDA device(s) exist.'
            )
        for model in models:
            if any(is_quantized_module(m) for m in model.modules()):
                raise ConfigError(
                    "an int8 dynamic-quantized model (torch.ao quantized Linear) runs on CPU only; "
                    'measure it with measure.device "cpu".'
                )
        return dev
    return torch.device("cpu")


@contextmanager
def _num_threads(n: int):
    """Apply ``torch.set_num_threads(n)`` for the measurement, restore the previous value afterwards."""
    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _has_int8(model: nn.Module) -> bool:
    from axformer.compress.quantize import count_int8_linears

    return any(is_quantized_module(m) for m in model.modules()) or count_int8_linears(model) > 0


def cast_for_measure(model: nn.Module, cfg: MeasureConfig) -> nn.Module:
    """Cast a float model to ``cfg.dtype`` in place; an int8 model keeps the compute dtype it was built with
    (its int8 weights and their scales must not be cast)."""
    from axformer.device import torch_dtype

    if not _has_int8(model):
        model.to(dtype=torch_dtype(cfg.dtype))
    return model


def _to_device(model: nn.Module, device: torch.device) -> nn.Module:
    # Dynamic-quantized modules have no CUDA kernels and .to() is a no-op for their packed weights;
    # check_device already refused that case for CUDA, so .to() here only moves float tensors.
    return model.to(device)


def _inputs_to(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}


def make_inputs(
    tokenizer: Any,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None,
    batch_size: int,
    seq_len: int,
) -> dict[str, torch.Tensor]:
    """Tokenize real sentences into one batch padded/truncated to exactly ``seq_len`` tokens.

    Texts are cycled when fewer than ``batch_size`` are given. ``texts_b`` is None for single-sentence tasks.
    """
    texts_a = list(texts_a)
    if not texts_a:
        raise ConfigError("make_inputs needs at least one text (texts_a is empty).")
    if texts_b is not None:
        texts_b = list(texts_b)
        if len(texts_b) != len(texts_a):
            raise ConfigError(f"texts_b has {len(texts_b)} entries but texts_a has {len(texts_a)}; they must match.")
    if batch_size < 1 or seq_len < 1:
        raise ConfigError(f"batch_size and seq_len must be >= 1 (got {batch_size}, {seq_len}).")
    idx = [i % len(texts_a) for i in range(batch_size)]
    a = [texts_a[i] for i in idx]
    b = [texts_b[i] for i in idx] if texts_b is not None else None
    enc = tokenizer(
        a,
        b,
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="pt",
    )
    out = {k: v for k, v in dict(enc).items() if torch.is_tensor(v)}
    if tuple(out["input_ids"].shape) != (batch_size, seq_len):
        raise ConfigError(
            f"tokenizer produced input_ids of shape {tuple(out['input_ids'].shape)}, expected ({batch_size}, {seq_len})."
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# Latency
# ----------------------------------------------------------------------------------------------------------


def _forward_ms_cpu(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    t0 = time.perf_counter()
    model(**inputs)
    return (time.perf_counter() - t0) * 1e3


def _forward_ms_cuda(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    # called inside torch.cuda.device(model device): events are recorded on that device's current stream
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    model(**inputs)
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def round_orders(n: int, rounds: int, policy: str = "fixed", seed: int = 0) -> list[list[int]]:
    """The model order of each of ``rounds`` rounds over ``n`` models (indices), per ``ROUND_ORDERS`` policy:
    ``fixed`` 0..n-1 every round; ``rotate`` round r starts at model r (each model's predecessor inside a round
    is still always the same one); ``shuffle`` a fresh permutation per round from ``seed`` (every model follows
    every other about equally often, so a neighbour's after-effect -- a runtime's threads still waking, a cache
    it evicted -- is spread over all models instead of always landing on the same one)."""
    if policy not in ROUND_ORDERS:
        raise ConfigError(f"round order must be one of {', '.join(ROUND_ORDERS)} (got {policy!r}).")
    if policy == "fixed":
        return [list(range(n)) for _ in range(rounds)]
    if policy == "rotate":
        return [[(r + i) % n for i in range(n)] for r in range(rounds)]
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[int(i) for i in rng.permutation(n)] for _ in range(rounds)]


def time_interleaved(
    models: dict[str, nn.Module],
    inputs: dict[str, torch.Tensor] | dict[str, dict[str, torch.Tensor]],
    cfg: MeasureConfig,
    order: str = "fixed",
    seed: int = 0,
    orders_out: list[list[int]] | None = None,
) -> dict[str, LatencyStats]:
    """Time several models on the same inputs, alternating A B A B ... each iteration.

    Every model is warmed up ``cfg.warmup`` times (also alternating, not recorded), then rounds of one forward
    per model continue until every model has ``>= cfg.min_iters`` samples and ``>= cfg.min_seconds`` of
    wall time have passed. CPU uses ``time.perf_counter``; CUDA uses CUDA events around each forward
    followed by ``torch.cuda.synchronize()``. ``inputs`` is one batch for all models or one per model name
    (models with their own tokenizer; same shapes). ``order``: the order of the models inside each timed round
    (:func:`round_orders`; ``seed`` for ``shuffle``); ``orders_out``, when given, receives each timed round's
    order as indices into ``list(models)``.
    """
    if not models:
        raise ConfigError("time_interleaved needs at least one model.")
    device = check_device(cfg, models.values())
    names = list(models)
    per_model = all(isinstance(inputs.get(n), dict) for n in names)
    feeds = {n: _inputs_to(inputs[n] if per_model else inputs, device) for n in names}
    for name in names:
        _to_device(models[name], device).eval()
    timer = _forward_ms_cuda if cfg.is_cuda else _forward_ms_cpu
    samples: dict[str, list[float]] = {name: [] for name in names}
    from axformer.device import on_device, synchronize, timing_mode

    # orders drawn ahead in blocks, between rounds (never inside a timed forward); extended while rounds go on
    plan: list[list[int]] = []
    with _num_threads(cfg.threads), torch.inference_mode(), on_device(device), timing_mode():
        for _ in range(cfg.warmup):
            for name in names:
                models[name](**feeds[name])
        synchronize(device)
        t_start = time.perf_counter()
        r = 0
        while True:
            if r == len(plan):
                plan = round_orders(len(names), 2 * len(plan) + 64, order, seed)
            for i in plan[r]:
                samples[names[i]].append(timer(models[names[i]], feeds[names[i]]))
            r += 1
            done_iters = min(len(v) for v in samples.values()) >= cfg.min_iters
            if done_iters and (time.perf_counter() - t_start) >= cfg.min_seconds:
                break
    if orders_out is not None:
        orders_out.extend(plan[:r])
    return {name: LatencyStats.from_values(v) for name, v in samples.items()}


def compare(
    baseline: nn.Module,
    variant: nn.Module,
    inputs: dict[str, torch.Tensor],
    cfg: MeasureConfig,
    samples: dict[str, list[float]] | None = None,
    references: dict[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Time baseline and variant in one interleaved job; return the variant's ``latency`` block.

    ``samples``, when given, receives the per-iteration times (ms, in round order) under "baseline" and
    "variant"; they are kept out of the block (metrics.json stays small) and go to predictions.npz.
    ``references``: further models timed in the same loop (e.g. the runtime's own fp32 graph for an ONNX
    Runtime int8 variant); the block then gets ``references: {name: {p50_ms, p90_ms, speedup}}`` with
    speedup = reference p50 / variant p50.
    """
    from axformer.device import float_dtypes, quiet_logger, tf32_state

    refs = dict(references or {})
    if {"baseline", "variant"} & set(refs):
        raise ConfigError("reference models cannot be named 'baseline' or 'variant'.")
    # bitsandbytes logs a cast warning on every Linear8bitLt call with non-fp16 input: kept once, then silenced
    with quiet_logger("bitsandbytes") as flt:
        stats = time_interleaved({"baseline": baseline, "variant": variant, **refs}, inputs, cfg)
    b, v = stats["baseline"], stats["variant"]
    if samples is not None:
        samples.update(baseline=b.samples_ms, variant=v.samples_ms)
    batch_size, seq_len = (int(s) for s in inputs["input_ids"].shape[:2])
    block = Latency(
        device=cfg.device,
        batch_size=batch_size,
        seq_len=seq_len,
        p50_ms=v.p50_ms,
        p90_ms=v.p90_ms,
        mean_ms=v.mean_ms,
        std_ms=v.std_ms,
        n_iters=v.n_iters,
        threads=int(cfg.threads),
        baseline_p50_ms=b.p50_ms,
        baseline_p90_ms=b.p90_ms,
        speedup=(b.p50_ms / v.p50_ms) if v.p50_ms > 0 else float("nan"),
        dtypes={"measure_dtype": cfg.dtype, "baseline": float_dtypes(baseline), "variant": float_dtypes(variant)},
        tf32=tf32_state(),
        library_log=({"logger": "bitsandbytes", "first": flt.first, "silenced": flt.dropped}
                     if flt.first is not None else None),
    ).to_dict()
    if refs:
        block["references"] = {
            name: {"p50_ms": stats[name].p50_ms, "p90_ms": stats[name].p90_ms,
                   "speedup": (stats[name].p50_ms / v.p50_ms) if v.p50_ms > 0 else float("nan")}
            for name in refs
        }
    return block


# ----------------------------------------------------------------------------------------------------------
# Memory and NVML
# ----------------------------------------------------------------------------------------------------------


def measure_memory(model: nn.Module, inputs: dict[str, torch.Tensor], cfg: MeasureConfig,
                   iters: int = 3) -> dict[str, Any]:
    """The ``memory`` block of ``model`` alone (memory.py): the caller has moved every other model off the GPU.

    CUDA: weights (the model's tensor bytes on the device), activation peak and NVML as a secondary figure.
    CPU: with ``cfg.memory_isolation`` the model's RSS in a subprocess of its own, else only the exact tensor
    bytes of its state (``peak_bytes`` None). Every block keeps the measuring process's own peak RSS as
    ``process_peak_rss_bytes`` (secondary: it includes everything the process ever held).
    """
    from axformer.measurement import memory

    device = check_device(cfg, [model])
    if cfg.is_cuda:
        model = _to_device(model, device).eval()
        block = memory.cuda_model_memory(model, inputs, device, iters)
        block["process_peak_rss_bytes"] = memory.process_peak_rss_bytes()
        return block
    model = model.eval()
    if cfg.memory_isolation:
        return memory.cpu_model_memory(model, inputs, cfg.threads, iters)
    return {"peak_bytes": None, "source": "tensors", "method": "in-process tensor bytes of the state dict only",
            "weights_bytes": memory.tensor_bytes(model), "activation_peak_bytes": None,
            "state_bytes": memory.tensor_bytes(model), "torch_cuda_max_allocated": None, "nvml_used_bytes": None,
            "process_peak_rss_bytes": memory.process_peak_rss_bytes(),
            "reason": "measure.memory_isolation is off: no per-model peak on CPU (the process peak RSS includes "
                      "every model this process loaded)"}


# ----------------------------------------------------------------------------------------------------------
# Environment and the whole pair
# ----------------------------------------------------------------------------------------------------------


def env_block(device: str | torch.device | None = None) -> dict[str, Any]:
    """``utils.env_info()`` plus NVML driver / GPU name / UUID of ``device``'s GPU, determinism and TF32 settings
    and the git commit. A run on the CPU (or with no device given) names no GPU: NVML is not queried and
    ``gpu_name`` / ``gpu_uuid`` / ``driver`` stay None, even on a host that has one (issue 35 F)."""
    from axformer.device import determinism_state, tf32_state
    from axformer.measurement import nvml

    env = env_info()
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        env["gpu_name"] = torch.cuda.get_device_name(dev)
        info = nvml.nvml_info(dev)
    else:
        env["gpu_name"] = None  # env_info names CUDA device 0 whenever torch sees one; not this run's device
        info = {"driver": None, "uuid": None, "found_by": None,
                "reason": f"measured on {dev if dev is not None else 'no device'}: no GPU queried"}
    env["driver"] = info["driver"]
    env["gpu_uuid"] = info.get("uuid")
    env["nvml_found_by"] = info.get("found_by")  # how NVML's device was matched to the CUDA one (nvml.py)
    env["nvml_reason"] = info["reason"]
    env["device"] = str(dev) if dev is not None else None
    env["determinism"] = determinism_state()
    env["tf32"] = tf32_state()
    env["git_commit"] = git_commit()
    return env


def measure_pair(
    baseline_model: nn.Module,
    variant_model: nn.Module,
    tokenizer: Any,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None,
    cfg: MeasureConfig,
    variant_dir: str | os.PathLike | None = None,
    references: dict[str, nn.Module] | None = None,
    timed: bool = True,
) -> dict[str, Any]:
    """Measure ``variant_model`` against ``baseline_model`` on real sentences.

    Returns ``{"latency": [block per batch size], "memory": {...}, "size": {...}, "flops": [entry per batch
    size], "env": {...}, "iter_ms": {batch size: {"baseline": [...], "variant": [...]}}}`` for the variant;
    each latency block carries the baseline's p50/p90 and the speedup from the same interleaved job (and
    ``references``' figures when given, see :func:`compare`); ``iter_ms`` holds the per-iteration times of
    those jobs (not a metrics.json block). ``size.bytes_on_disk`` is None unless ``variant_dir`` is given.
    Models are moved to ``cfg.device``, cast to ``cfg.dtype`` (int8 variants keep theirs) and put in eval
    mode. Memory is the variant's alone: on CUDA the baseline leaves the GPU for that phase (memory.py).
    ``timed`` False: no latency here (``latency`` is [] and ``iter_ms`` {}): the timing passes of the run's group
    (axformer.measurement.timing) give it.
    """
    device = check_device(cfg, [baseline_model, variant_model])
    cast_for_measure(_to_device(baseline_model, device), cfg)
    cast_for_measure(_to_device(variant_model, device), cfg)
    with _num_threads(cfg.threads):
        return _measure_pair(baseline_model, variant_model, tokenizer, texts_a, texts_b, cfg, variant_dir, device,
                             references, timed)


def _measure_pair(baseline_model, variant_model, tokenizer, texts_a, texts_b, cfg, variant_dir, device,
                  references=None, timed=True):
    """Body of ``measure_pair``, run with ``cfg.threads`` applied."""
    latency: list[dict[str, Any]] = []
    flops: list[dict[str, Any]] = []
    try:
        peak = peak_flops_measured(cfg.device, dtype=cfg.dtype)
    except (RuntimeError, torch.cuda.OutOfMemoryError):  # pragma: no cover - e.g. a nearly full GPU
        peak = None
    last_inputs = None
    iter_ms: dict[int, dict[str, list[float]]] = {}
    for bs in cfg.batch_sizes:
        inputs = _inputs_to(make_inputs(tokenizer, texts_a, texts_b, bs, cfg.seq_len), device)
        if timed:
            latency.append(compare(baseline_model, variant_model, inputs, cfg, samples=iter_ms.setdefault(int(bs), {}),
                                   references=references))
        flops.append(flops_block(variant_model, bs, cfg.seq_len, peak))
        if last_inputs is None or bs >= last_inputs["input_ids"].shape[0]:
            last_inputs = inputs
    last_inputs = _inputs_to(last_inputs, torch.device("cpu"))
    del inputs
    if cfg.is_cuda:  # the memory phase sees the variant alone on the GPU
        baseline_model.to("cpu")
    memory = measure_memory(variant_model, last_inputs, cfg)
    if cfg.is_cuda:
        baseline_model.to(device)
    total, encoder = param_counts(variant_model)
    size = Size(total, encoder, bytes_on_disk(variant_dir) if variant_dir is not None else None).to_dict()
    env = env_block(device)
    env["threads"] = int(cfg.threads)
    return {"latency": latency, "memory": memory, "size": size, "flops": flops, "env": env, "iter_ms": iter_ms}
