"""ONNX export of any variant, ONNX Runtime and OpenVINO int8: the runtimes behind the ``int8_ort`` /
``int8_ov`` quantize steps.

The PyTorch int8 path (:mod:`axformer.compress.quantize`) is not what a user who wants a fast CPU model picks; ONNX
Runtime (ORT) is. This module exports a loaded variant -- fine-tuned, structurally pruned (per-layer head
counts and FFN widths, skipped blocks, :mod:`axformer.surgery.elements`), with or without hard attention
(:mod:`axformer.surgery.hard_attention`) -- to ONNX and quantizes the ONNX graph with ORT's own tools.

Export
    ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript), opset 18, dynamic batch and sequence
    axes, weights inside the one ``.onnx`` file. The legacy TorchScript tracer is not used: with
    transformers 5.24 it bakes the attention-mask shortcut of the traced batch into the graph (max |logit
    diff| 0.03 on a padded batch of a tiny random BERT, checked), while the dynamo export matches PyTorch to
    ~1e-8 there. Hard attention exports through a data-independent path of
    :func:`axformer.surgery.hard_attention.topk_attention_forward` (ONNX ``TopK`` with K = min(k, sequence length),
    same kept keys). :func:`export_onnx` checks ORT fp32 logits against PyTorch on the rows it is given
    (max abs diff <= ``DEFAULT_ATOL``) and refuses an export that does not match.

int8
    ``dynamic`` (step ``int8_ort``): ``onnxruntime.quantization.quantize_dynamic``: int8 weights (one scale
    per output channel by default), uint8 activations quantized per tensor at run time (``MatMulInteger``),
    the same scheme as the torch ``int8`` step. ``static`` (step ``int8_ort_static``): ``quantize_static``
    in QDQ format, int8 weights per channel and int8 activations whose ranges are calibrated (min-max) on
    rows of the *search* split -- never on dev, which the metric is reported on.
    Only the MatMuls of ``nn.Linear`` layers are quantized (found through the exporter's per-node module
    names), not the attention score matmuls, embeddings or LayerNorms; the task head (classifier / QA
    head and pooler dense, :data:`axformer.compress.quantize_config.DEFAULT_SKIP`) stays fp32 for the reason given in
    :mod:`axformer.compress.quantize`.
    ``int8_ov``: OpenVINO reads the same fp32 ONNX graph; NNCF post-training quantization
    (``model_type=TRANSFORMER``, ranges from search-split rows, head kept fp32 through an ignored scope)
    writes an int8 IR. :class:`OvModel` runs it with ``INFERENCE_PRECISION_HINT=f32`` (see :func:`ov_config`).

Running
    :class:`OrtModel` wraps an ``InferenceSession`` as a model: ``model(**inputs)`` returns the same output
    class as the PyTorch model, so ``train.evaluate`` and the interleaved timing of :mod:`axformer.measurement.measure`
    run it unchanged. Its session uses exactly ``threads`` intra-op threads, no inter-op pool and no spinning
    (``session.intra_op.allow_spinning = 0``): ORT's workers otherwise keep spinning after a call returns and
    take cores from the PyTorch model timed next in the interleaved loop. The PyTorch model the graph was
    exported from is kept as the ``reference`` submodule so that parameter counts and FLOPs are read off the
    same shapes; the forward never touches it.

The packages are optional extras: ``pip install -e ".[ort]"`` (:data:`INSTALL`), ``pip install -e ".[ov]"``
(:data:`OV_INSTALL`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from axformer.compress.quantize import name_matches
from axformer.compress.quantize_config import DEFAULT_SKIP
from axformer.compress.runtimes import (ORT_MODES, OV_INSTALL, OV_MODES, OV_PACKAGES, OrtModel, OvModel, RuntimeModel,
                                       ort_settings, ov_config, require_ort, require_runtime)
from axformer.utils import ConfigError

OPSET = 18
DEFAULT_ATOL = 1e-4  # max |logit| difference ORT fp32 vs PyTorch accepted at export
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
CALIBRATION_ROWS = 256  # search-split rows the static scheme calibrates activation ranges on
CHECK_ROWS = 256  # dev rows the exported fp32 graph is checked on against PyTorch

__all__ = [
    "DEFAULT_ATOL",
    "export_onnx",
    "linear_matmul_nodes",
    "quantize_onnx",
    "quantize_ov",
    "max_abs_diff",
    "file_bytes",
    "text_batches",
    "runtime_variant",
]


# ------------------------------------------------------------------------------------------------ export


def _output_names(out: Any) -> tuple[str, ...]:
    if getattr(out, "logits", None) is not None:
        return ("logits",)
    if getattr(out, "start_logits", None) is not None:
        return ("start_logits", "end_logits")
    raise TypeError(f"model output {type(out).__name__} has neither logits nor start/end logits.")


class _Exportable(nn.Module):
    """Positional tensors in, a tuple of output tensors out: the signature torch.onnx.export wants."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], output_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.input_names, tensors)))
        return tuple(getattr(out, n) for n in self.output_names)


def _input_names(inputs: dict[str, torch.Tensor]) -> list[str]:
    unknown = sorted(set(inputs) - set(INPUT_ORDER))
    if unknown or "input_ids" not in inputs:
        raise ConfigError(f"export inputs must be input_ids [+ attention_mask, token_type_ids] (got {sorted(inputs)}).")
    return [n for n in INPUT_ORDER if n in inputs]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    sample: dict[str, torch.Tensor],
    check: Iterable[dict[str, torch.Tensor]] = (),
    atol: float = DEFAULT_ATOL,
    threads: int = 1,
    runtime: str = "ort",
) -> dict[str, Any]:
    """Export ``model`` (eval mode, CPU) to ``path`` with dynamic batch and sequence axes; return the info.

    ``sample``: one tokenized batch (batch and length >= 2, else torch.export specialises the axis to 1).
    ``check``: batches whose fp32 logits in ``runtime`` ("ort" or "ov") must match PyTorch within ``atol``
    (real dev rows in the CLI);
    a larger difference raises ``RuntimeError``. info: exporter, opset, inputs, outputs, check_max_abs_diff,
    check_rows, atol, bytes.
    """
    versions = require_ort("ONNX export", ("onnx", "onnxscript"))
    model = model.eval().cpu()
    names = _input_names(sample)
    if min(sample["input_ids"].shape[:2]) < 2:
        raise ConfigError("export sample must have batch size and sequence length >= 2 (dynamic axes).")
    with torch.inference_mode():
        outs = _output_names(model(**sample))
    max_len = int(getattr(getattr(model, "config", None), "max_position_embeddings", 512))
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=max_len)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # the exporter's notes on its own internals (axis renaming, pytree deprecations), not about the model
        warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
        torch.onnx.export(
            _Exportable(model, names, outs),
            tuple(sample[n] for n in names),
            str(path),
            dynamo=True,
            dynamic_shapes=(tuple({0: batch, 1: seq} for _ in names),),
            input_names=names,
            output_names=list(outs),
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    info: dict[str, Any] = {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": OPSET,
        "inputs": names,
        "outputs": list(outs),
        "dynamic_axes": {"0": "batch", "1": "sequence"},
        **versions,
    }
    diff, rows = 0.0, 0
    runner = None
    for batch_inputs in check:
        if runner is None:
            runner = (OvModel if runtime == "ov" else OrtModel).like(path, model, threads, batch_inputs)
        with torch.inference_mode():
            ref = model(**batch_inputs)
        got = runner.infer(batch_inputs)
        for n, arr in zip(outs, got):
            diff = max(diff, max_abs_diff(getattr(ref, n), arr))
        rows += int(batch_inputs["input_ids"].shape[0])
    info.update(check_runtime=runtime, check_rows=rows, check_max_abs_diff=diff if rows else None, atol=atol,
                bytes=file_bytes(path))
    if rows and not diff <= atol:
        raise RuntimeError(
            f"ONNX export of {type(model).__name__} does not match PyTorch in {runtime}: max |logit diff| "
            f"{diff:.3g} > {atol:g} on {rows} rows ({path})."
        )
    return info


def max_abs_diff(ref: torch.Tensor, got: np.ndarray | torch.Tensor) -> float:
    """max |ref - got| over all elements (as fp32)."""
    got_t = got if torch.is_tensor(got) else torch.from_numpy(np.asarray(got))
    return float((ref.detach().float().cpu() - got_t.float()).abs().max())


def file_bytes(path: str | os.PathLike) -> int:
    """Size of an .onnx file plus its external-data file(s) if it has any (same folder, ``<name>.data``)."""
    p = Path(path)
    extra = [q for q in p.parent.glob(p.name + ".data") if q.is_file()]
    return int(p.stat().st_size + sum(q.stat().st_size for q in extra))


# ------------------------------------------------------------------------------------------------ int8


def _module_path(node: Any) -> tuple[str | None, bool]:
    """(module path, is an nn.Linear) of an exported node, from the exporter's ``namespace`` metadata:
    ': W/model: ...BertForSequenceClassification/model.bert: ...BertModel/.../model.classifier: ...Linear/linear_37: aten...'.
    """
    meta = {p.key: p.value for p in node.metadata_props}
    ns = meta.get("namespace")
    if not ns:
        return None, False
    scopes = [s.split(": ", 1) for s in ns.split("/")]
    mods = [(s[0].strip(), s[1].strip()) for s in scopes if len(s) == 2]
    linear = [name for name, cls in mods if cls == "torch.nn.modules.linear.Linear"]
    if not linear:
        return None, False
    name = linear[-1]
    return (name.split(".", 1)[1] if "." in name else name), True  # drop the wrapper's attribute ("model.")


def linear_matmul_nodes(onnx_path: str | os.PathLike, skip: Sequence[str] = DEFAULT_SKIP) -> tuple[list[str], list[str]]:
    """Names of the MatMul/Gemm nodes of ``nn.Linear`` layers to quantize, and of those kept fp32 by ``skip``."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    init = {t.name for t in graph.initializer}
    targets, kept = [], []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        module, is_linear = _module_path(node)
        if not is_linear or not any(i in init for i in node.input[1:2]):  # the weight must be a constant
            continue
        (kept if any(name_matches(module, p) for p in skip) else targets).append(node.name)
    return targets, kept


class _Calibration:
    """``CalibrationDataReader`` over tokenized batches (numpy feeds); ORT duck-types ``get_next``."""

    def __init__(self, batches: Iterable[dict[str, torch.Tensor]], names: Sequence[str]):
        self._feeds = iter([{n: b[n].cpu().numpy() for n in names} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    scheme: str = "dynamic",
    per_channel: bool = True,
    skip: Sequence[str] = DEFAULT_SKIP,
    calibration: Iterable[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """int8 copy of the fp32 graph ``src`` at ``dst``; ``scheme`` "dynamic" or "static" (needs ``calibration``,
    batches of search-split rows). Returns the ``quantize`` info for metrics.json."""
    versions = require_ort()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    targets, kept = linear_matmul_nodes(src, skip)
    if not targets:
        raise RuntimeError(f"{src}: found no nn.Linear MatMul nodes to quantize (exporter metadata missing?).")
    common = dict(per_channel=per_channel, nodes_to_quantize=targets, op_types_to_quantize=["MatMul", "Gemm"],
                  weight_type=QuantType.QInt8)
    if scheme == "dynamic":
        quantize_dynamic(str(src), str(dst), **common)
        desc = (f"int8 weights {'per output channel' if per_channel else 'per tensor'}, uint8 activations per "
                "tensor at run time (MatMulInteger)")
        n_calib = None
    elif scheme == "static":
        if calibration is None:
            raise ConfigError("static int8 needs calibration batches (rows of the search split).")
        names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]
        batches = list(calibration)
        n_calib = int(sum(b["input_ids"].shape[0] for b in batches))
        if not n_calib:
            raise ConfigError("static int8: the calibration set (search split) is empty.")
        quantize_static(str(src), str(dst), _Calibration(batches, names), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        **common)
        desc = (f"int8 weights {'per output channel' if per_channel else 'per tensor'}, int8 activations per "
                "tensor with min-max ranges calibrated on search-split rows (QDQ)")
    else:
        raise ConfigError(f"ORT int8 scheme {scheme!r} is not 'dynamic' or 'static'.")
    return {
        "backend": f"onnxruntime_{scheme}",
        "dtype": "int8",
        "scheme": desc,
        "per_channel": per_channel,
        "n_linear_quantized": len(targets),
        "n_linear_total": len(targets) + len(kept),
        "skipped_nodes": kept,
        "skip_patterns": list(skip),
        "calibration_rows": n_calib,
        "calibration_split": "search" if scheme == "static" else None,
        "bytes": file_bytes(dst),
        **versions,
    }


# ------------------------------------------------------------------------------------------------ running


def quantize_ov(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Iterable[dict[str, torch.Tensor]],
    skip: Sequence[str] = DEFAULT_SKIP,
) -> dict[str, Any]:
    """OpenVINO int8 IR (``dst``: .xml + .bin) of the fp32 graph ``src`` by NNCF post-training quantization
    (``model_type=TRANSFORMER``: int8 weights per channel and int8 activations with ranges from
    ``calibration``, SmoothQuant, bias correction). The task head (``skip``) stays fp32."""
    versions = require_ort("int8_ov", OV_PACKAGES, OV_INSTALL)
    import re

    import nncf
    import openvino as ov

    batches = list(calibration)
    n_calib = int(sum(b["input_ids"].shape[0] for b in batches))
    if not n_calib:
        raise ConfigError("int8_ov: the calibration set (search split) is empty.")
    targets, kept = linear_matmul_nodes(src, skip)
    model = ov.Core().read_model(str(src))
    names = [i.get_any_name() for i in model.inputs]
    feeds = [{n: b[n].cpu().numpy() for n in names} for b in batches]
    # OpenVINO keeps the ONNX node names (a Gemm becomes "<name>/WithoutBiases" + an Add)
    ignored = nncf.IgnoredScope(patterns=[rf"^{re.escape(n)}(/.*)?$" for n in kept], validate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        qmodel = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                               subset_size=len(feeds), ignored_scope=ignored)
    dst = Path(dst)
    ov.save_model(qmodel, str(dst), compress_to_fp16=False)
    n_fq = sum(1 for op in qmodel.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
    return {
        "backend": "openvino_nncf",
        "dtype": "int8",
        "scheme": "NNCF post-training int8 (model_type TRANSFORMER): int8 weights per output channel, int8 "
                  "activations per tensor with ranges calibrated on search-split rows, SmoothQuant, fast bias "
                  "correction; attention matmuls quantized too (NNCF's transformer scheme); head fp32",
        "n_linear_total": len(targets) + len(kept),
        "skipped_nodes": kept,
        "skip_patterns": list(skip),
        "fake_quantize_ops": n_fq,
        "calibration_rows": n_calib,
        "calibration_split": "search",
        "bytes": int(dst.stat().st_size + dst.with_suffix(".bin").stat().st_size),
        **versions,
    }


def text_batches(tokenizer: Any, texts_a: Sequence[str], texts_b: Sequence[str] | None, max_length: int,
                 rows: int, batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    """The first ``rows`` texts tokenized in batches (padded to each batch's longest row, truncated)."""
    n = min(rows, len(texts_a))
    out = []
    for i in range(0, n, batch_size):
        a = list(texts_a[i: min(i + batch_size, n)])
        b = list(texts_b[i: i + len(a)]) if texts_b is not None else None
        enc = tokenizer(a, b, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append({k: v for k, v in dict(enc).items() if k in INPUT_ORDER})
    return out


def runtime_variant(
    model: nn.Module,
    mode: str,
    workdir: str | os.PathLike,
    threads: int,
    check: list[dict[str, torch.Tensor]],
    calibration: list[dict[str, torch.Tensor]] | None = None,
    atol: float = DEFAULT_ATOL,
) -> tuple[RuntimeModel, dict[str, RuntimeModel], dict[str, Any]]:
    """Export ``model`` (fp32, checked against PyTorch on ``check`` in the runtime ``mode`` uses), quantize it
    per ``mode`` (a key of :data:`RUNTIME_MODES`) and return ``(int8 model, {"<runtime>_fp32": fp32 model},
    info)``; info goes into metrics.json as the ``quantize`` block (with the export's record under ``export``)."""
    require_runtime(mode)
    if not check:
        raise ConfigError("runtime_variant needs at least one batch of real rows to check the export on.")
    runtime = "ov" if mode in OV_MODES else "ort"
    cls = OvModel if runtime == "ov" else OrtModel
    work = Path(workdir)
    fp32_path = work / "model_fp32.onnx"
    sample = {k: v[:2] for k, v in check[0].items()}
    exp = export_onnx(model, fp32_path, sample, check=check, atol=atol, threads=threads, runtime=runtime)
    if runtime == "ov":
        if calibration is None:
            raise ConfigError("int8_ov needs calibration batches (rows of the search split).")
        int8_path = work / f"model_{mode}.xml"
        info = quantize_ov(fp32_path, int8_path, calibration)
        info.update(ov_config=ov_config(threads))
    else:
        int8_path = work / f"model_{mode}.onnx"
        info = quantize_onnx(fp32_path, int8_path, ORT_MODES[mode], calibration=calibration)
        info.update(inter_op_threads=1, allow_spinning=False, ort_settings=ort_settings(threads))
    info.update(requested_backend=mode, device="cpu", threads=threads, fp32_bytes=exp["bytes"], export=exp)
    qmodel = cls.like(int8_path, model, threads, sample)
    fmodel = cls.like(fp32_path, model, threads, sample)
    info["threading"] = qmodel.threading()  # read back from the session / compiled model, not the request
    return qmodel, {f"{runtime}_fp32": fmodel}, info


def scratch_dir(prefix: str = "axformer-onnx-") -> tempfile.TemporaryDirectory:
    """A temporary folder for the exported graphs of one measure job (they are never kept)."""
    return tempfile.TemporaryDirectory(prefix=prefix)
