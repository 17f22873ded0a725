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
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

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
    "nvml_info",
    "nvml_process_used_bytes",
    "param_counts",
    "bytes_on_disk",
    "forward_flops",
    "peak_flops_measured",
    "flops_block",
    "env_block",
    "measure_pair",
    "check_device",
]

# Files that hold weights in a checkpoint directory (tokenizer/config files are not counted).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# ----------------------------------------------------------------------------------------------------------
# Configuration and result records
# ----------------------------------------------------------------------------------------------------------


@dataclass
class MeasureConfig:
    """How to time a model.

    - ``batch_sizes`` [1, 32]: 1 is the online / per-request latency the AxFormer paper reports; 32 is a
      throughput-oriented batch where matmul efficiency, not per-op overhead, dominates.
    - ``seq_len`` 128: the max_length the GLUE fine-tuning uses (data.tokenize), inputs are padded to it so
      every iteration does identical work.
    - ``warmup`` 10: the first calls pay for allocator growth, oneDNN/cuBLAS kernel selection and lazy
      initialisation; they are run but not recorded.
    - ``min_iters`` 30 and ``min_seconds`` 2.0: enough samples for a stable median / p90 and a long enough
      window that short bursts of load from other processes do not dominate; timing stops only once both
      hold for every model.
    - ``threads``: intra-op threads. Default = ``torch.get_num_threads()`` when the config is made; it is
      recorded in results and applied with ``torch.set_num_threads`` (restored afterwards) because CPU
      latency depends on it strongly; more threads than free cores makes OpenMP workers spin-wait on each
      other and can inflate latency 100x on a shared host.
    - ``device``: "cpu" or "cuda" (or "cuda:N").
    """

    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    seq_len: int = 128
    warmup: int = 10
    min_iters: int = 30
    min_seconds: float = 2.0
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.threads is None:
            self.threads = torch.get_num_threads()
        if isinstance(self.batch_sizes, int):
            self.batch_sizes = [self.batch_sizes]
        self.batch_sizes = list(self.batch_sizes)
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"measure.batch_sizes must be a non-empty list of integers >= 1 (got {self.batch_sizes}).")
        for name in ("seq_len", "min_iters", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"measure.{name} must be an integer >= 1 (got {v!r}).")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"measure.warmup must be an integer >= 0 (got {self.warmup!r}).")
        if not isinstance(self.min_seconds, (int, float)) or self.min_seconds < 0:
            raise ConfigError(f"measure.min_seconds must be a number >= 0 (got {self.min_seconds!r}).")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f'measure.device must be "cpu" or "cuda" (got {self.device!r}).')

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass
class LatencyStats:
    """Summary of per-iteration latencies in milliseconds."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    n_iters: int

    @classmethod
    def from_values(cls, ms_list: Sequence[float]) -> "LatencyStats":
        vals = sorted(float(v) for v in ms_list)
        n = len(vals)
        if n == 0:
            raise ValueError("LatencyStats.from_values needs at least one value")
        mean = sum(vals) / n
        # sample standard deviation (n-1); 0 for a single value
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        return cls(p50_ms=_percentile(vals, 50), p90_ms=_percentile(vals, 90), mean_ms=mean, std_ms=std, n_iters=n)


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


def _is_quantized_module(m: nn.Module) -> bool:
    return hasattr(m, "_packed_params") or type(m).__module__.startswith("torch.ao.nn.quantized")


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
            if any(_is_quantized_module(m) for m in model.modules()):
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
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    model(**inputs)
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end))


def time_interleaved(
    models: dict[str, nn.Module],
    inputs: dict[str, torch.Tensor],
    cfg: MeasureConfig,
) -> dict[str, LatencyStats]:
    """Time several models on the same inputs, alternating A B A B ... each iteration.

    Every model is warmed up ``cfg.warmup`` times (also alternating, not recorded), then rounds of one forward
    per model continue until every model has ``>= cfg.min_iters`` samples and ``>= cfg.min_seconds`` of
    wall time have passed. CPU uses ``time.perf_counter``; CUDA uses CUDA events around each forward
    followed by ``torch.cuda.synchronize()``.
    """
    if not models:
        raise ConfigError("time_interleaved needs at least one model.")
    device = check_device(cfg, models.values())
    inputs = _inputs_to(inputs, device)
    names = list(models)
    for name in names:
        _to_device(models[name], device).eval()
    timer = _forward_ms_cuda if cfg.is_cuda else _forward_ms_cpu
    samples: dict[str, list[float]] = {name: [] for name in names}

    with _num_threads(cfg.threads), torch.inference_mode():
        for _ in range(cfg.warmup):
            for name in names:
                models[name](**inputs)
        if cfg.is_cuda:
            torch.cuda.synchronize()
        t_start = time.perf_counter()
        while True:
            for name in names:
                samples[name].append(timer(models[name], inputs))
            done_iters = min(len(v) for v in samples.values()) >= cfg.min_iters
            if done_iters and (time.perf_counter() - t_start) >= cfg.min_seconds:
                break
    return {name: LatencyStats.from_values(v) for name, v in samples.items()}


def compare(
    baseline: nn.Module,
    variant: nn.Module,
    inputs: dict[str, torch.Tensor],
    cfg: MeasureConfig,
    references: dict[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Time baseline and variant in one interleaved job; return the variant's ``latency`` block.

    ``references``: further models timed in the same loop (e.g. the runtime's own fp32 graph for an ONNX
    Runtime int8 variant); the block then gets ``references: {name: {p50_ms, p90_ms, speedup}}`` with
    speedup = reference p50 / variant p50.
    """
    refs = dict(references or {})
    if {"baseline", "variant"} & set(refs):
        raise ConfigError("reference models cannot be named 'baseline' or 'variant'.")
    stats = time_interleaved({"baseline": baseline, "variant": variant, **refs}, inputs, cfg)
    b, v = stats["baseline"], stats["variant"]
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


def _nvml():
    """Import pynvml (package nvidia-ml-py) or raise ImportError."""
    import pynvml  # noqa: PLC0415

    return pynvml


def _decode(s: Any) -> str:
    return s.decode() if isinstance(s, bytes) else str(s)


def nvml_info() -> dict[str, Any]:
    """GPU name and driver version from NVML: ``{"driver", "gpu_name", "reason"}``.

    Where NVML cannot be used (no library, no GPU, no pynvml) both values are None and ``reason`` says why.
    """
    try:
        pynvml = _nvml()
    except ImportError as exc:
        return {"driver": None, "gpu_name": None, "reason": f"pynvml not importable ({exc}); pip install nvidia-ml-py"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"driver": None, "gpu_name": None, "reason": f"NVML unavailable: {type(exc).__name__}: {exc}"}
    try:
        driver = _decode(pynvml.nvmlSystemGetDriverVersion())
        if pynvml.nvmlDeviceGetCount() < 1:
            return {"driver": driver, "gpu_name": None, "reason": "NVML reports no GPU"}
        index = _nvml_index()
        name = _decode(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index)))
        return {"driver": driver, "gpu_name": name, "reason": None}
    except pynvml.NVMLError as exc:
        return {"driver": None, "gpu_name": None, "reason": f"NVML query failed: {type(exc).__name__}: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _nvml_index() -> int:
    """NVML index of the current CUDA device (best effort: honour a numeric CUDA_VISIBLE_DEVICES)."""
    cur = torch.cuda.current_device() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if visible and visible[0] != "" and cur < len(visible) and visible[cur].strip().isdigit():
        return int(visible[cur].strip())
    return cur


def nvml_process_used_bytes(pid: int | None = None) -> tuple[int | None, str | None]:
    """GPU memory NVML attributes to process ``pid`` (default: this process), summed over all GPUs.

    Returns ``(bytes, None)`` or ``(None, reason)``. Inside a container the PID NVML sees can differ from
    ``os.getpid()``; then no entry matches and the reason says so.
    """
    pid = os.getpid() if pid is None else pid
    try:
        pynvml = _nvml()
    except ImportError as exc:
        return None, f"pynvml not importable ({exc}); pip install nvidia-ml-py"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable: {type(exc).__name__}: {exc}"
    try:
        total = 0
        found = False
        unknown = False
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if int(proc.pid) != pid:
                    continue
                found = True
                used = getattr(proc, "usedGpuMemory", None)
                if used is None:
                    unknown = True
                else:
                    total += int(used)
        if not found:
            return None, f"NVML lists no compute process with pid {pid} (container PID namespace?)"
        if unknown:
            return None, "NVML reports usedGpuMemory as not available for this process (e.g. MIG / WDDM)"
        return total, None
    except pynvml.NVMLError as exc:
        return None, f"NVML query failed: {type(exc).__name__}: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _rss_peak_bytes() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(ru) if sys.platform == "darwin" else int(ru) * 1024


def measure_memory(model: nn.Module, inputs: dict[str, torch.Tensor], cfg: MeasureConfig, iters: int = 3) -> dict[str, Any]:
    """Run ``iters`` forwards of ``model`` and return the ``memory`` block.

    CPU: peak RSS of this whole process (``ru_maxrss``; it never decreases, so it is an upper bound that
    includes everything loaded before, e.g. the baseline model). CUDA: ``torch.cuda.max_memory_allocated``
    over these forwards (peak counters reset first; other models resident on the GPU are included) and
    NVML's per-process used memory (includes the CUDA context and the caching allocator's reserve);
    ``peak_bytes`` is NVML's figure where available, else torch's.
    """
    device = check_device(cfg, [model])
    inputs = _inputs_to(inputs, device)
    model = _to_device(model, device).eval()
    if not cfg.is_cuda:
        with _num_threads(cfg.threads), torch.inference_mode():
            for _ in range(max(1, iters)):
                model(**inputs)
        return Memory(
            peak_bytes=_rss_peak_bytes(),
            source="rss",
            torch_cuda_max_allocated=None,
            nvml_used_bytes=None,
            reason="device is cpu: peak RSS of the whole process (ru_maxrss); no CUDA/NVML figures",
        ).to_dict()

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for _ in range(max(1, iters)):
            model(**inputs)
    torch.cuda.synchronize(device)
    torch_peak = int(torch.cuda.max_memory_allocated(device))
    nvml_used, nvml_reason = nvml_process_used_bytes()
    if nvml_used is not None:
        return Memory(nvml_used, "nvml", torch_peak, nvml_used, None).to_dict()
    return Memory(torch_peak, "torch.cuda", torch_peak, None, nvml_reason).to_dict()


# ----------------------------------------------------------------------------------------------------------
# Size
# ----------------------------------------------------------------------------------------------------------


def _packed_numel(m: nn.Module) -> int:
    """Elements of weights that ``parameters()`` does not see (int8 dynamic-quantized Linear etc.)."""
    n = 0
    weight = getattr(m, "weight", None)
    if callable(weight) and not isinstance(weight, torch.Tensor):
        try:
            w = weight()
            if torch.is_tensor(w):
                n += w.numel()
        except Exception:  # noqa: BLE001 - be defensive about exotic packed modules
            pass
        bias = getattr(m, "bias", None)
        if callable(bias) and not isinstance(bias, torch.Tensor):
            try:
                b = bias()
                if torch.is_tensor(b):
                    n += b.numel()
            except Exception:  # noqa: BLE001
                pass
    return n


def _count(module: nn.Module) -> int:
    total = sum(p.numel() for p in module.parameters())
    # modules() yields each module once. Only modules exposing weight() as a method are counted here (the
    # quantized Linear itself, not its LinearPackedParams child, which that weight() already covers).
    for m in module.modules():
        total += _packed_numel(m)
    return int(total)


def _encoder(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    enc = getattr(base, "encoder", None)
    if enc is None:
        raise ConfigError(f"{type(model).__name__} has no base_model.encoder; measure.py expects a BERT-style model.")
    return enc


def param_counts(model: nn.Module) -> tuple[int, int]:
    """``(total, encoder)`` parameter counts; encoder = ``model.base_model.encoder`` (no embeddings, pooler
    or head). int8 dynamic-quantized Linears are counted by their weight/bias element counts."""
    return _count(model), _count(_encoder(model))


def bytes_on_disk(ckpt_dir: str | os.PathLike) -> int:
    """Sum of the sizes of weight files (*.safetensors, *.bin, *.pt, *.pth) in a checkpoint directory."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise ConfigError(f"checkpoint directory {d} does not exist; pass the directory the variant was saved to.")
    files = [p for p in d.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise ConfigError(f"no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) in {d}.")
    return int(sum(p.stat().st_size for p in files))


# ----------------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------------


def _linear_shape(m: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear-like module (float or quantized), else None."""
    if isinstance(m, nn.Linear):
        out_f, in_f = m.weight.shape
        return int(in_f), int(out_f)
    if _is_quantized_module(m) and hasattr(m, "in_features") and hasattr(m, "out_features"):
        return int(m.in_features), int(m.out_features)
    return None


def forward_flops(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Analytic forward FLOPs (matmuls only; a multiply-add counts 2) for inputs of ``batch_size x seq_len``.

    - every Linear inside the encoder layers: ``2 * in * out * batch_size * seq_len`` from the actual weight
      shapes, so structurally pruned heads / neurons count less;
    - attention scores and context per layer whose attention block exists (``layer.attention.self``):
      ``2 * 2 * B * H * T * T * head_dim`` with H = ``num_attention_heads`` and head_dim =
      ``attention_head_size`` read off that module (skipped attention contributes nothing);
    - Linears outside the encoder (pooler, classifier) run on one vector per example: ``2 * in * out * B``;
      Linears inside the embeddings (none in BERT) and a span-QA head (``qa_outputs``, start/end logit of every
      token) run per token.
    Softmax, GELU, LayerNorm, bias adds and embedding lookups are not counted (they are O(B*T*hidden)).
    Hard (top-k) attention is not modelled: scores are still computed densely.
    """
    B, T = int(batch_size), int(seq_len)
    tokens = B * T
    encoder = _encoder(model)
    enc_ids = {id(m) for m in encoder.modules()}
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    per_token = {id(m) for m in emb.modules()} if isinstance(emb, nn.Module) else set()
    qa = getattr(model, "qa_outputs", None)
    if isinstance(qa, nn.Module):
        per_token |= {id(m) for m in qa.modules()}

    flops = 0
    for layer in getattr(encoder, "layer", []):
        for m in layer.modules():
            shape = _linear_shape(m)
            if shape is not None:
                flops += 2 * shape[0] * shape[1] * tokens
        attn = getattr(layer, "attention", None)
        sa = getattr(attn, "self", None) if attn is not None else None
        if sa is not None:
            heads = int(getattr(sa, "num_attention_heads", 0))
            head_dim = int(getattr(sa, "attention_head_size", 0))
            # QK^T (B,H,T,d)x(B,H,d,T) and probs x V (B,H,T,T)x(B,H,T,d): 2*B*H*T*T*d each.
            flops += 2 * 2 * B * heads * T * T * head_dim
    for m in model.modules():
        if id(m) in enc_ids:
            continue
        shape = _linear_shape(m)
        if shape is None:
            continue
        rows = tokens if id(m) in per_token else B
        flops += 2 * shape[0] * shape[1] * rows
    return int(flops)


_PEAK_CACHE: dict[tuple[str, int, int], float] = {}


def peak_flops_measured(device: str = "cpu", n: int | None = None, repeats: int = 5) -> float:
    """Achievable fp32 matmul throughput (FLOP/s) measured once per (device, threads, n) and cached.

    Times ``repeats`` products of two ``n x n`` fp32 matrices and takes the fastest: ``2 n^3 / t``. This is
    an *achievable* peak for the dtype the models run in (fp32; TF32 follows torch's current setting), not the
    datasheet figure, so ``floor_ms`` is a realistic lower bound for a matmul-bound forward.
    Defaults: n = 1024 on CPU (a few ms to tens of ms per product), 8192 on CUDA.
    """
    is_cuda = device.startswith("cuda")
    if is_cuda and not torch.cuda.is_available():
        raise ConfigError(f'peak_flops_measured(device="{device}") but CUDA is not available; use "cpu".')
    n = int(n or (8192 if is_cuda else 1024))
    key = (device, torch.get_num_threads(), n)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev)
    b = torch.randn(n, n, generator=gen).to(dev)
    best = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: kernel selection, allocation
        for _ in range(max(1, repeats)):
            if is_cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(dev)
                start.record()
                torch.mm(a, b)
                end.record()
                torch.cuda.synchronize(dev)
                secs = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                torch.mm(a, b)
                secs = time.perf_counter() - t0
            best = min(best, secs)
    peak = 2.0 * n**3 / best
    _PEAK_CACHE[key] = peak
    return peak


def flops_block(model: nn.Module, batch_size: int, seq_len: int, device_peak_flops: float | None) -> dict[str, Any]:
    """One ``flops`` entry: forward FLOPs, device peak and the compute-bound floor in ms."""
    f = forward_flops(model, batch_size, seq_len)
    floor = (f / device_peak_flops * 1e3) if device_peak_flops else None
    return {
        "batch_size": int(batch_size),
        "seq_len": int(seq_len),
        "forward_flops": f,
        "device_peak_flops": device_peak_flops,
        "floor_ms": floor,
    }


# ----------------------------------------------------------------------------------------------------------
# Environment and the whole pair
# ----------------------------------------------------------------------------------------------------------


def env_block() -> dict[str, Any]:
    """``utils.env_info()`` plus NVML driver / GPU name and the git commit."""
    env = env_info()
    info = nvml_info()
    env["driver"] = info["driver"]
    if env.get("gpu_name") is None and info["gpu_name"] is not None and torch.cuda.is_available():
        env["gpu_name"] = info["gpu_name"]
    env["nvml_reason"] = info["reason"]
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
) -> dict[str, Any]:
    """Measure ``variant_model`` against ``baseline_model`` on real sentences.

    Returns ``{"latency": [block per batch size], "memory": {...}, "size": {...}, "flops": [entry per batch
    size], "env": {...}}`` for the variant; each latency block carries the baseline's p50/p90 and the speedup
    from the same interleaved job (and ``references``' figures when given, see :func:`compare`).
    ``size.bytes_on_disk`` is None unless ``variant_dir`` is given.
    Models are moved to ``cfg.device`` and put in eval mode.
    """
    device = check_device(cfg, [baseline_model, variant_model])
    _to_device(baseline_model, device)
    _to_device(variant_model, device)
    with _num_threads(cfg.threads):
        return _measure_pair(baseline_model, variant_model, tokenizer, texts_a, texts_b, cfg, variant_dir, device,
                             references)


def _measure_pair(baseline_model, variant_model, tokenizer, texts_a, texts_b, cfg, variant_dir, device,
                  references=None):
    """Body of ``measure_pair``, run with ``cfg.threads`` applied."""
    latency: list[dict[str, Any]] = []
    flops: list[dict[str, Any]] = []
    try:
        peak = peak_flops_measured(cfg.device)
    except (RuntimeError, torch.cuda.OutOfMemoryError):  # pragma: no cover - e.g. a nearly full GPU
        peak = None
    last_inputs = None
    for bs in cfg.batch_sizes:
        inputs = _inputs_to(make_inputs(tokenizer, texts_a, texts_b, bs, cfg.seq_len), device)
        latency.append(compare(baseline_model, variant_model, inputs, cfg, references))
        flops.append(flops_block(variant_model, bs, cfg.seq_len, peak))
        if last_inputs is None or bs >= last_inputs["input_ids"].shape[0]:
            last_inputs = inputs
    memory = measure_memory(variant_model, last_inputs, cfg)
    total, encoder = param_counts(variant_model)
    size = Size(total, encoder, bytes_on_disk(variant_dir) if variant_dir is not None else None).to_dict()
    env = env_block()
    env["threads"] = int(cfg.threads)
    return {"latency": latency, "memory": memory, "size": size, "flops": flops, "env": env}
