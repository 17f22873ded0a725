"""The static cost of a model: parameter counts, bytes on disk, analytic forward FLOPs and the device's
achievable matmul peak (the ``size`` and ``flops`` blocks of metrics.json, DESIGN §4).

Counted from module shapes only, so they do not care how a variant was made (pruned, skipped, int8 dynamic
quantisation, ...). :mod:`axformer.measurement.measure` re-exports every public name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from axformer.utils import ConfigError

# Files that hold weights in a checkpoint directory (tokenizer/config files are not counted).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def is_quantized_module(m: nn.Module) -> bool:
    """True for a PyTorch int8 (torch.ao quantized / packed-parameter) module."""
    return hasattr(m, "_packed_params") or type(m).__module__.startswith("torch.ao.nn.quantized")


# ----------------------------------------------------------------------------------------------------------
# Size
# ----------------------------------------------------------------------------------------------------------


def _packed_numel(m: nn.Module) -> int:
    """Elements of weights that ``parameters()`` does not see (int8 dynamic-quantized Linear etc.)."""
    if not _is_packed(getattr(m, "weight", None)):
        return 0
    return sum(_packed_tensor_numel(getattr(m, name, None)) for name in ("weight", "bias"))


def _is_packed(attr: Any) -> bool:
    """A packed module exposes weight() / bias() as methods, not tensors."""
    return callable(attr) and not isinstance(attr, torch.Tensor)


def _packed_tensor_numel(accessor: Any) -> int:
    if not _is_packed(accessor):
        return 0
    try:
        t = accessor()
    except Exception:  # noqa: BLE001 - be defensive about exotic packed modules
        return 0
    return t.numel() if torch.is_tensor(t) else 0


def _count(module: nn.Module) -> int:
    total = sum(p.numel() for p in module.parameters())
    # modules() yields each module once. Only modules exposing weight() as a method are counted here (the
    # quantized Linear itself, not its LinearPackedParams child, which that weight() already covers).
    for m in module.modules():
        total += _packed_numel(m)
    return int(total)


def _encoder(model: nn.Module) -> nn.Module:
    from axformer.surgery.families import encoder_or_none

    if encoder_or_none(model) is not None:  # DistilBERT keeps its layers under base_model.transformer
        return encoder_or_none(model)
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
    if is_quantized_module(m) and hasattr(m, "in_features") and hasattr(m, "out_features"):
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

    from axformer.surgery.families import attention_shape

    flops = 0
    for layer in getattr(encoder, "layer", []):
        for m in layer.modules():
            shape = _linear_shape(m)
            if shape is not None:
                flops += 2 * shape[0] * shape[1] * tokens
        shape = attention_shape(model, layer)
        if shape is not None:  # the family adapter knows where each layer's heads live (None: attention skipped)
            heads, head_dim = shape
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


_PEAK_CACHE: dict[tuple[str, int, int, str], float] = {}


def peak_flops_measured(device: str = "cpu", n: int | None = None, repeats: int = 5, dtype: str = "fp32") -> float:
    """Achievable fp32 matmul throughput (FLOP/s) measured once per (device, threads, n) and cached.

    Times ``repeats`` products of two ``n x n`` fp32 matrices and takes the fastest: ``2 n^3 / t``. This is
    an *achievable* peak for the dtype the models run in (fp32; TF32 follows torch's current setting), not the
    datasheet figure, so ``floor_ms`` is a realistic lower bound for a matmul-bound forward.
    Defaults: n = 1024 on CPU (a few ms to tens of ms per product), 8192 on CUDA. ``dtype`` (fp32 | fp16 |
    bf16) is the models' measure.dtype; on CUDA the matrices are freed and the allocator's cache emptied
    afterwards so the memory phase starts clean.
    """
    is_cuda = device.startswith("cuda")
    if is_cuda and not torch.cuda.is_available():
        raise ConfigError(f'peak_flops_measured(device="{device}") but CUDA is not available; use "cpu".')
    n = int(n or (8192 if is_cuda else 1024))
    key = (device, torch.get_num_threads(), n, dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    from axformer.device import on_device, timing_mode, torch_dtype

    dt = torch_dtype(dtype)
    a = torch.randn(n, n, generator=gen).to(dev, dt)
    b = torch.randn(n, n, generator=gen).to(dev, dt)
    best = float("inf")
    with torch.inference_mode(), on_device(dev), timing_mode():
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
    del a, b
    if is_cuda:
        torch.cuda.empty_cache()
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


def size_block(model, ckpt_dir: str | Path | None) -> dict[str, Any]:
    """{params_total, params_encoder, bytes_on_disk} of a model (and its saved checkpoint folder)."""
    total, encoder = param_counts(model)
    return {"params_total": total, "params_encoder": encoder,
            "bytes_on_disk": bytes_on_disk(ckpt_dir) if ckpt_dir is not None else None}
