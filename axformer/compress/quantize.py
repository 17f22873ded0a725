"""8-bit (int8) quantization of a loaded, possibly structurally pruned, BERT-style model.

Used by the ``finetune+int8`` style variants: the model is first fine-tuned / approximated (heads and FFN
neurons removed, blocks skipped, hard attention enabled), then its ``nn.Linear`` layers are swapped for
int8 ones. Only Linear layers are touched, so everything else the edit record built (odd Linear shapes,
modules standing in for skipped blocks, a custom attention function registered through transformers'
``AttentionInterface``) is kept as it is.

Backends
--------
``torch_dynamic`` (CPU)
    ``torch.ao.quantization.quantize_dynamic``: int8 weights with one scale per output row
    (``per_channel_dynamic_qconfig``; ``per_channel=False``: one per tensor), activations quantized per
    tensor on the fly, fbgemm/x86 kernels.
    In torch 2.13 the whole ``torch.ao.quantization`` namespace still works but warns at call time
    (``DeprecationWarning: torch.ao.quantization is deprecated ... migrate to torchao``) and the quantized
    tensor dtypes warn too (``UserWarning: torch.quantize_per_tensor ... are deprecated``). We do not
    silence them: they are caught, re-emitted unchanged through ``warnings``, and listed in
    ``info["warnings"]`` so metrics.json says which deprecated path produced the numbers.
``torchao`` (CPU or CUDA, optional dependency)
    ``torchao.quantization.quantize_`` with ``Int8DynamicActivationInt8WeightConfig`` (per-row int8
    weights, per-token int8 activations). torchao is not installed by default.
``bitsandbytes`` (CUDA; its CPU backend also runs ``Linear8bitLt`` here, with bitsandbytes 0.50.2)
    LLM.int8(): every Linear becomes ``bnb.nn.Linear8bitLt(has_fp16_weights=False, threshold=6.0)`` built
    from the fp32 weights of the model in memory, so pruned shapes need no special case. We cannot use
    ``from_pretrained(quantization_config=...)`` for edited models because their architecture is rebuilt
    from the edit record after loading; :func:`bnb_config` gives that config for unedited checkpoints.

``"auto"`` picks bitsandbytes on CUDA and the faster CPU backend on CPU.

CPU timing that chose the CPU default (this repo's host: 2 cores shared with other jobs, torch 2.13.0+cpu,
torchao 0.18.0, bitsandbytes 0.50.2; BERT hidden 384, 12 heads, 6 layers, intermediate 1536, random weights,
batch 32 x seq 128, eager ``inference_mode`` forward). Run A: separate processes, load ~1, best of 5-12.
Run B: all models timed round-robin in one process (8 rounds), load 3-5, so slower in absolute terms but
fairer between rows:

                                              run A min   run B min (median)   B vs fp32
    fp32 (no quantization)                    583 ms      1328 ms (1430)       1.00
    torch_dynamic per-channel (default here)      -        592 ms  (630)       0.45
    quantize_dynamic default per-tensor       283 ms       517 ms  (591)       0.39
    torchao Int8DynamicActivationInt8Weight   532 ms      1226 ms (1451)       0.92  (eager, no torch.compile)
    bitsandbytes Linear8bitLt on CPU          482 ms      1640 ms (1791)       1.23
All quantized variants agreed with fp32 argmax on all 32 inputs; max |logit error| 0.0054 per-channel vs
0.0091 per-tensor. So ``torch_dynamic`` is the CPU default, with per-channel weight scales (the same
per-row scheme as torchao and bitsandbytes, about half the error for ~5-15 % more time than per-tensor;
``per_channel=False`` gives the plain ``quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` scheme).

Task head: the ``classifier`` / ``qa_outputs`` Linear and the BERT pooler dense stay fp32 by default
(``DEFAULT_SKIP``). They act on one vector per sequence (the [CLS] token), so int8 saves almost no time
there, while their rounding error lands directly on the logits (the decision). Measured on the test's
tiny random BERT (200 inputs, classes balanced): argmax agreement with fp32 was 100 % with both kept fp32,
99.5 % with the classifier quantized, 98.5-99 % with the pooler (or both) quantized, for torch_dynamic and
bitsandbytes alike. Pass ``skip_modules=()`` to quantize them too; what was kept fp32 is recorded in
``info["skipped_modules"]``.

Quantized models are for inference only: :func:`quantize` returns them in ``eval()`` mode with gradients
off (bitsandbytes' CPU path even switches to a dequantize-then-matmul kernel in train mode).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import warnings
from typing import Any

import torch
from torch import nn

from axformer.compress.quantize_config import DEFAULT_SKIP, QuantizeConfig
from axformer.utils import ConfigError




# ----------------------------------------------------------------------------------------------- helpers


def name_matches(name: str, pattern: str) -> bool:
    """True when ``pattern`` is a run of whole dotted components of ``name``."""
    return f".{pattern}." in f".{name}."


def _is_torchao_int8(weight: Any) -> bool:
    # Check by duck type so this works without importing torchao.
    qdata = getattr(weight, "qdata", None)
    return isinstance(qdata, torch.Tensor) and qdata.dtype == torch.int8 and type(weight).__module__.startswith("torchao")


def is_quantized_linear(module: nn.Module) -> bool:
    """True for a Linear layer holding int8 weights from any of the three backends."""
    from torch.ao.nn.quantized import Linear as StaticQLinear
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQLinear

    if isinstance(module, (DynamicQLinear, StaticQLinear)):
        return True
    bnb = sys.modules.get("bitsandbytes")  # no import: bitsandbytes logs noise on import
    if bnb is not None and isinstance(module, bnb.nn.Linear8bitLt):
        return True
    return isinstance(module, nn.Linear) and _is_torchao_int8(module.weight)


def count_int8_linears(model: nn.Module) -> int:
    """Number of int8 Linear layers in ``model``."""
    return sum(1 for m in model.modules() if is_quantized_linear(m))


def int8_weight(module: nn.Module) -> torch.Tensor:
    """The int8 weight matrix (out_features x in_features, dtype torch.int8) of a quantized Linear."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQLinear

    if isinstance(module, DynamicQLinear):
        return module.weight().int_repr()  # module.weight() is the packed torch.qint8 tensor
    if isinstance(module, nn.Linear) and _is_torchao_int8(module.weight):
        return module.weight.qdata
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None and isinstance(module, bnb.nn.Linear8bitLt):
        w = module.weight.data
        if w.dtype != torch.int8 and module.state.CB is not None:
            w = module.state.CB
        return w
    raise TypeError(f"{type(module).__name__} is not an int8 Linear layer.")


def _linear_targets(model: nn.Module, skip: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Names of plain Linear layers to quantize, and names of Linear layers kept fp32 by ``skip``."""
    targets, skipped = [], []
    for name, mod in model.named_modules():
        if is_quantized_linear(mod):
            raise ConfigError(f"module {name!r} is already int8 ({type(mod).__name__}); quantize an fp32 model.")
        if isinstance(mod, nn.Linear):
            (skipped if any(name_matches(name, p) for p in skip) else targets).append(name)
    return targets, skipped


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"quantize device {device!r} is not a torch device (use 'cpu' or 'cuda').") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"quantize device {device!r} asked for, but torch sees no CUDA GPU; use device 'cpu'.")
    return dev


def _resolve_backend(backend: str, dev: torch.device) -> str:
    if backend == "auto":
        return "bitsandbytes" if dev.type == "cuda" else "torch_dynamic"
    if backend == "torch_dynamic" and dev.type != "cpu":
        raise ConfigError(
            f"backend 'torch_dynamic' runs on CPU only (got device {dev}); use backend 'bitsandbytes' or 'torchao'."
        )
    return backend


def _reemit(caught: list[warnings.WarningMessage]) -> list[str]:
    """Re-issue caught warnings under the caller's filters and return their first lines for metrics."""
    lines = []
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        line = f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}"
        if line not in lines:
            lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------- backends


# The quantized engine torch_dynamic packs its int8 weights for (and so runs with): set explicitly rather than
# left to whatever an earlier import chose. "x86" (torch's default on x86) dispatches to fbgemm; on this host's
# AVX2 EPYC oneDNN was not faster for the dynamic int8 MiniLM (issue 31, docs/RUNTIME_THREADS.md).
TORCH_INT8_ENGINE = "x86"


def _quantize_torch_dynamic(model: nn.Module, targets: list[str], per_channel: bool) -> dict[str, Any]:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if TORCH_INT8_ENGINE in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = TORCH_INT8_ENGINE
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig

    # quantize_dynamic / torch.quantize_per_channel warn as deprecated in torch 2.13 (see module
    # docstring); record and re-emit, never blanket-suppress.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_dynamic(model, {name: qconfig for name in targets}, dtype=torch.qint8, inplace=True)
    return {
        "engine": torch.backends.quantized.engine,
        "scheme": f"int8 weights {'per output channel, symmetric' if per_channel else 'per tensor'}, "
        "uint8 activations per tensor at run time",
        "warnings": _reemit(caught),
    }


def _quantize_torchao(model: nn.Module, targets: list[str]) -> dict[str, Any]:
    try:
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise ConfigError(
            f"backend 'torchao' needs the torchao package ({exc}); `pip install torchao` (tested: 0.18.0) "
            "or use backend 'torch_dynamic' on CPU / 'bitsandbytes' on CUDA."
        ) from exc
    wanted = set(targets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in wanted)
    return {
        "torchao": torchao.__version__,
        "scheme": "int8 weights per output row, int8 activations per token at run time",
        "warnings": _reemit(caught),
    }


def _import_bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ConfigError(
            f"backend 'bitsandbytes' needs the bitsandbytes package ({exc}); `pip install bitsandbytes`."
        ) from exc
    return bnb


def _to_fp32_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _keep_fp32(model: nn.Module, names: list[str]) -> None:
    """Cast the Linear layers ``names`` (the skipped head: classifier, qa_outputs, pooler.dense) back to fp32
    after ``model.half()``, with a pre-hook that casts their fp16 input up: the task head keeps fp32 weights and
    gives fp32 logits, as ``skipped_modules`` records."""
    for name in names:
        mod = model.get_submodule(name)
        mod.float()
        if not getattr(mod, "_axformer_fp32_inputs", False):
            mod.register_forward_pre_hook(_to_fp32_inputs)
            mod._axformer_fp32_inputs = True


def _quantize_bitsandbytes(model: nn.Module, targets: list[str], cfg: QuantizeConfig, dev: torch.device):
    bnb = _import_bnb()
    # Int8Params quantizes when a CPU-resident fp weight is moved with .to(device), so build every new
    # layer on the CPU and move the whole model at the end. Shapes come from the layer itself, so pruned
    # (odd-sized) layers need nothing special.
    model.to("cpu")
    if cfg.compute_dtype == "float16":
        model.half()  # before the swap: .half() on an Int8Params would turn the int8 codes into floats
        _keep_fp32(model, [n for n, m in model.named_modules()
                           if isinstance(m, nn.Linear) and n not in targets])  # the skipped head stays fp32
    for name in targets:
        old = model.get_submodule(name)
        new = bnb.nn.Linear8bitLt(
            old.in_features,
            old.out_features,
            bias=old.bias is not None,
            has_fp16_weights=False,
            threshold=cfg.threshold,
        )
        new.weight = bnb.nn.Int8Params(old.weight.detach().clone(), requires_grad=False, has_fp16_weights=False)
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.detach().clone(), requires_grad=False)
        _set_submodule(model, name, new)
    model.to(dev)
    return {
        "bitsandbytes": bnb.__version__,
        "threshold": cfg.threshold,
        "scheme": "LLM.int8(): int8 weights per output row, int8 activations per token, fp16 outlier columns "
        f"above |x| > {cfg.threshold}",
        "warnings": [],
    }


# ------------------------------------------------------------------------------------------------ public


def quantize(model: nn.Module, cfg: QuantizeConfig | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(int8 model in eval mode, info)``; ``info`` goes into metrics.json.

    info: backend (resolved), requested_backend, device, dtype "int8", compute_dtype, n_linear_quantized,
    n_linear_total, skipped_modules (Linear layers kept fp32), skip_patterns, quantized_params
    (weights now int8), float_params (Linear weights left unquantized), scheme, warnings, library versions.
    """
    cfg = cfg or QuantizeConfig()
    dev = _resolve_device(cfg.device)
    backend = _resolve_backend(cfg.backend, dev)
    if cfg.compute_dtype != "float32" and backend != "bitsandbytes":
        raise ConfigError(f"compute_dtype {cfg.compute_dtype!r} is only supported by backend 'bitsandbytes'.")

    qmodel = model if cfg.inplace else copy.deepcopy(model)
    qmodel.eval()
    for p in qmodel.parameters():
        p.requires_grad_(False)
    targets, skipped = _linear_targets(qmodel, cfg.skip_modules)
    quantized_params = sum(qmodel.get_submodule(n).weight.numel() for n in targets)
    float_params = sum(qmodel.get_submodule(n).weight.numel() for n in skipped)

    if backend == "torch_dynamic":
        qmodel.to(dev)
        extra = _quantize_torch_dynamic(qmodel, targets, cfg.per_channel)
    elif backend == "torchao":
        qmodel.to(dev)
        extra = _quantize_torchao(qmodel, targets)
    else:
        extra = _quantize_bitsandbytes(qmodel, targets, cfg, dev)
    qmodel.eval()

    not_converted = [n for n in targets if not is_quantized_linear(qmodel.get_submodule(n))]
    if not_converted:
        raise RuntimeError(f"{backend} left these Linear layers unquantized: {not_converted}")

    info: dict[str, Any] = {
        "backend": backend,
        "requested_backend": cfg.backend,
        "device": str(dev),
        "dtype": "int8",
        "compute_dtype": cfg.compute_dtype,
        "n_linear_quantized": count_int8_linears(qmodel),
        "n_linear_total": len(targets) + len(skipped),
        "skipped_modules": skipped,
        "skip_patterns": list(cfg.skip_modules),
        "quantized_params": quantized_params,
        "float_params": float_params,
        "torch": torch.__version__,
    }
    info.update(extra)
    return qmodel, info


def bnb_config(skip_modules: tuple[str, ...] | list[str] = DEFAULT_SKIP, threshold: float = 6.0):
    """``BitsAndBytesConfig(load_in_8bit=True, ...)`` for ``from_pretrained`` of an *unedited* checkpoint.

    The task head must be in ``llm_int8_skip_modules``: when a pre-trained encoder is loaded into
    ``...ForSequenceClassification`` the head has no saved weights and is newly initialised; if it was
    converted it ends up as a ``Linear8bitLt`` holding a plain fp32 Parameter and the first forward fails
    with ``AttributeError: 'Parameter' object has no attribute 'CB'`` (checked with transformers 5.24,
    bitsandbytes 0.50.2, both with ``BitsAndBytesConfig(load_in_8bit=True)`` alone, whose default skips
    miss BERT's head, and with a skip list that omits the head). So the head names are always added here. Patterns follow transformers' rule (prefix up to a dot, regex, or suffix): the
    defaults match ``classifier``, ``qa_outputs`` and ``bert.pooler.dense``.
    Needs ``accelerate`` and, in practice, a CUDA GPU. Edited (pruned) models: use :func:`quantize`.
    """
    from transformers import BitsAndBytesConfig

    skip = list(dict.fromkeys([*skip_modules, "classifier", "qa_outputs"]))
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold, llm_int8_skip_modules=skip)


def bitsandbytes_unavailable_reason(device: str = "cpu") -> str | None:
    """None when an ``Linear8bitLt`` forward works on ``device``; else the error, as ``Type: message``."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "ModuleNotFoundError: bitsandbytes is not installed"
    try:
        bnb = _import_bnb()
        lin = bnb.nn.Linear8bitLt(8, 4, bias=True, has_fp16_weights=False, threshold=6.0)
        lin.weight = bnb.nn.Int8Params(torch.randn(4, 8), requires_grad=False, has_fp16_weights=False)
        lin = lin.to(device).eval()
        with torch.inference_mode():
            out = lin(torch.randn(2, 8, device=device))
        if out.shape != (2, 4) or not torch.isfinite(out).all():
            return f"RuntimeError: Linear8bitLt forward on {device} gave a bad result {tuple(out.shape)}"
    except Exception as exc:  # noqa: BLE001 - the reason string is the point
        return f"{type(exc).__name__}: {exc}"
    return None
