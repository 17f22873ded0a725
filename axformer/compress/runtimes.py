"""The int8 runtimes' side (ONNX Runtime, OpenVINO): what each needs installed, its session / compiled-model
settings with every threading property explicit, and the models that run an exported graph as a drop-in for the
PyTorch model (:class:`OrtModel`, :class:`OvModel`: ``model(**inputs)`` returns the reference's output class).
Exporting and quantizing the graphs is :mod:`axformer.compress.export`; why the threading is pinned is
docs/RUNTIME_THREADS.md.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from axformer.utils import ConfigError


INSTALL = 'pip install -e ".[ort]"'


RUNTIME_PACKAGES = ("onnxruntime", "onnx", "onnxscript")


OV_INSTALL = 'pip install -e ".[ov]"'


OV_PACKAGES = ("openvino", "nncf", "onnx", "onnxscript")


# quantize step name (the CLI's --quantize value) -> ORT int8 scheme
ORT_MODES = {"int8_ort": "dynamic", "int8_ort_static": "static"}


OV_MODES = {"int8_ov": "static"}  # OpenVINO int8 through NNCF post-training quantization


RUNTIME_MODES = (*ORT_MODES, *OV_MODES)


def require_ort(what: str = "int8_ort", packages: Sequence[str] = RUNTIME_PACKAGES,
                install: str = INSTALL) -> dict[str, str]:
    """Versions of the runtime packages; ``ConfigError`` with the install command when one is missing."""
    versions = {}
    for name in packages:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except ImportError as exc:
            raise ConfigError(
                f"{what} needs the optional packages {', '.join(packages)} ({name}: {exc}); "
                f"install them with `{install}`."
            ) from exc
    return versions


def require_runtime(mode: str) -> dict[str, str]:
    """``require_ort`` for the packages quantize step ``mode`` (a key of RUNTIME_MODES) needs."""
    if mode in OV_MODES:
        return require_ort(f"--quantize {mode}", OV_PACKAGES, OV_INSTALL)
    if mode in ORT_MODES:
        return require_ort(f"--quantize {mode}")
    raise ConfigError(f"quantize mode {mode!r} is not one of {', '.join(RUNTIME_MODES)}.")


# OpenVINO threading properties set explicitly: until issue 31 they were the CPU plugin's defaults, and these are
# the values OpenVINO 2026.4 chose on this 2-core host (read back from the compiled model). Pinning and the static
# TBB partitioner were kept: with pinning off and the AUTO partitioner the int8 MiniLM was not faster or steadier
# in the interleaved loop (docs/RUNTIME_THREADS.md); what they are now is in every record (OvModel.threading()).
OV_THREADING: dict[str, Any] = {"ENABLE_CPU_PINNING": True, "SCHEDULING_CORE_TYPE": "ANY_CORE",
                                "ENABLE_HYPER_THREADING": False, "TBB_PARTITIONER": "STATIC",
                                "CPU_DENORMALS_OPTIMIZATION": False}


# ------------------------------------------------------------------------------------------------ running


# ORT session settings (values of :func:`ort_settings`); execution_mode / graph level are ORT enum names
ORT_EXECUTION_MODES = ("sequential", "parallel")


def ort_settings(threads: int, **overrides: Any) -> dict[str, Any]:
    """The ORT CPU session settings :func:`session` applies: ``threads`` intra-op threads, no inter-op pool
    (sequential execution), no spinning. ``overrides`` replace single keys (scripts/timing_repeatability.py
    times older settings with them); an unknown key is a ``ConfigError``."""
    _check_threads("ORT", threads)
    out: dict[str, Any] = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1,
                           "execution_mode": "sequential", "intra_op_allow_spinning": False,
                           "inter_op_allow_spinning": False, "graph_optimization_level": "all"}
    unknown = sorted(set(overrides) - set(out))
    if unknown:
        raise ConfigError(f"unknown ORT setting(s) {unknown}; known: {sorted(out)}.")
    out.update(overrides)
    if out["execution_mode"] not in ORT_EXECUTION_MODES:
        raise ConfigError(f"ORT execution_mode must be one of {ORT_EXECUTION_MODES} (got {out['execution_mode']!r}).")
    return out


def _check_threads(what: str, threads: Any) -> None:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"{what} threads must be an integer >= 1 (got {threads!r}).")


def session(path: str | os.PathLike, threads: int, settings: dict[str, Any] | None = None):
    """An ORT CPU ``InferenceSession`` with :func:`ort_settings` (``settings``: a full dict from it instead)."""
    require_ort()
    import onnxruntime as ort

    st = ort_settings(threads) if settings is None else ort_settings(threads, **settings)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(st["intra_op_num_threads"])
    opts.inter_op_num_threads = int(st["inter_op_num_threads"])
    opts.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if st["execution_mode"] == "sequential"
                           else ort.ExecutionMode.ORT_PARALLEL)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's workers otherwise spin after a call returns and take a core from the model timed next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if st["intra_op_allow_spinning"] else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if st["inter_op_allow_spinning"] else "0")
    opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_session_threading(sess: Any) -> dict[str, Any]:
    """The threading settings an ORT session actually holds, read back from its ``SessionOptions``."""
    import onnxruntime as ort

    opts = sess.get_session_options()
    level = str(opts.graph_optimization_level).rsplit(".", 1)[-1]
    mode = {ort.ExecutionMode.ORT_SEQUENTIAL: "sequential", ort.ExecutionMode.ORT_PARALLEL: "parallel"}
    return {"runtime": "onnxruntime", "version": ort.__version__,
            "intra_op_num_threads": int(opts.intra_op_num_threads),
            "inter_op_num_threads": int(opts.inter_op_num_threads),
            "execution_mode": mode.get(opts.execution_mode, str(opts.execution_mode)),
            "intra_op_allow_spinning": opts.get_session_config_entry("session.intra_op.allow_spinning") == "1",
            "inter_op_allow_spinning": opts.get_session_config_entry("session.inter_op.allow_spinning") == "1",
            "graph_optimization_level": {"ORT_ENABLE_ALL": "all", "ORT_ENABLE_EXTENDED": "extended",
                                         "ORT_ENABLE_BASIC": "basic", "ORT_DISABLE_ALL": "disabled"}.get(
                level, level),
            "providers": list(sess.get_providers())}


def _run(sess: Any, names: Sequence[str], outs: Sequence[str], inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    feed = {n: inputs[n].detach().cpu().numpy().astype(np.int64, copy=False) for n in names}
    return sess.run(list(outs), feed)


class RuntimeModel(nn.Module):
    """An exported graph run by a runtime, callable like the PyTorch model it was exported from.

    ``model(**inputs)`` returns ``reference``'s output class with the logits filled in (from numpy, on the
    CPU). ``reference`` is registered as a submodule only so that measure.py reads parameter counts and
    FLOPs off the same shapes; ``base_model`` points into it. Subclasses implement :meth:`infer` and
    :meth:`threading` (the runtime's effective thread settings, read back from the session / compiled model).
    ``settings``: overrides of the runtime's defaults (:func:`ort_settings` / :func:`ov_config` keys).
    """

    runtime = ""

    def __init__(self, reference: nn.Module, threads: int, output_type: type,
                 settings: dict[str, Any] | None = None):
        super().__init__()
        _check_threads(self.runtime, threads)
        self.threads = threads
        self.settings = dict(settings or {})
        self.output_type = output_type
        self.reference = reference.eval()

    @property
    def base_model(self) -> nn.Module:
        return self.reference.base_model

    @classmethod
    def like(cls, path: str | os.PathLike, reference: nn.Module, threads: int,
             sample: dict[str, torch.Tensor], settings: dict[str, Any] | None = None) -> "RuntimeModel":
        """Build with the output class ``reference`` returns for ``sample``."""
        with torch.inference_mode():
            out_type = type(reference(**sample))
        return cls(path, reference, threads, out_type, settings)

    def infer(self, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        raise NotImplementedError

    def threading(self) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> Any:
        outs = self.infer(inputs)
        return self.output_type(**{n: torch.from_numpy(np.ascontiguousarray(o)) for n, o in zip(self.output_names, outs)})


class OrtModel(RuntimeModel):
    """An ONNX graph in an ORT ``InferenceSession`` (:func:`session`: pinned threads, no spinning)."""

    runtime = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, reference: nn.Module, threads: int, output_type: type,
                 settings: dict[str, Any] | None = None):
        super().__init__(reference, threads, output_type, settings)
        self.path = str(onnx_path)
        self.session = session(onnx_path, self.threads, self.settings)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        return _run(self.session, self.input_names, self.output_names, inputs)

    def threading(self) -> dict[str, Any]:
        return ort_session_threading(self.session)


# OpenVINO CPU properties read back from a compiled model for the record (:func:`ov_compiled_threading`)
OV_READBACK = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT",
               "ENABLE_CPU_PINNING", "SCHEDULING_CORE_TYPE", "ENABLE_HYPER_THREADING", "ENABLE_CPU_RESERVATION",
               "TBB_PARTITIONER", "CPU_DENORMALS_OPTIMIZATION", "EXECUTION_MODE_HINT")


def ov_config(threads: int, **overrides: Any) -> dict[str, Any]:
    """OpenVINO CPU plugin settings, every threading property explicit (:data:`OV_THREADING`).

    ``threads`` inference threads in one stream (``PERFORMANCE_HINT`` LATENCY: one request at a time), fp32
    for every op that is not int8 (on CPUs with AMX / AVX-512 BF16 the plugin otherwise runs fp32 graphs in
    bf16: max |logit diff| 4e-4 vs PyTorch on the tiny test model instead of 1e-8). ``overrides`` replace
    single keys (an unknown key is a ``ConfigError``)."""
    _check_threads("OpenVINO", threads)
    out: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32",
                           "PERFORMANCE_HINT": "LATENCY", **OV_THREADING}
    unknown = sorted(set(overrides) - set(out) - set(OV_READBACK))
    if unknown:
        raise ConfigError(f"unknown OpenVINO setting(s) {unknown}; known: {sorted(set(out) | set(OV_READBACK))}.")
    out.update(overrides)
    return out


def ov_compiled_threading(compiled: Any) -> dict[str, Any]:
    """The threading properties an OpenVINO ``CompiledModel`` actually holds (OV_READBACK), as strings where
    the value is an enum."""
    import openvino as ov

    out: dict[str, Any] = {"runtime": "openvino", "version": ov.__version__}
    for key in OV_READBACK:
        try:
            v = compiled.get_property(key)
        except RuntimeError:  # a property this OpenVINO version does not know
            v = None
        if hasattr(v, "get_type_name"):  # an openvino Type (INFERENCE_PRECISION_HINT): "f32"
            v = v.get_type_name()
        elif not (isinstance(v, (bool, int, float, str)) or v is None):  # an enum: its name
            v = getattr(v, "name", str(v))
        out[key] = v
    return out


class OvModel(RuntimeModel):
    """An ONNX graph (``.onnx``) or OpenVINO IR (``.xml``) compiled for OpenVINO's CPU plugin (:func:`ov_config`)."""

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike, reference: nn.Module, threads: int, output_type: type,
                 settings: dict[str, Any] | None = None):
        super().__init__(reference, threads, output_type, settings)
        require_ort("OpenVINO", OV_PACKAGES, OV_INSTALL)
        import openvino as ov

        self.path = str(path)
        self.config = ov_config(self.threads, **self.settings)
        self.compiled = ov.Core().compile_model(self.path, "CPU", self.config)
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    def infer(self, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        feed = {n: inputs[n].detach().cpu().numpy().astype(np.int64, copy=False) for n in self.input_names}
        res = self.request.infer(feed)
        return [np.array(res[o]) for o in self.compiled.outputs]  # a copy: the request reuses its buffers

    def threading(self) -> dict[str, Any]:
        return ov_compiled_threading(self.compiled)


def runtime_threading(model: nn.Module | None = None) -> dict[str, Any]:
    """The effective threading of a timing process, for a timing pass's record: torch's (always: the fp32
    baseline is a torch model; :func:`axformer.device.torch_threading`) and, when ``model`` is an ORT / OpenVINO
    model, that runtime's settings read back from its session / compiled model (key ``onnxruntime`` /
    ``openvino``)."""
    from axformer.device import torch_threading

    out: dict[str, Any] = {"torch": torch_threading()}
    if isinstance(model, RuntimeModel):
        out[model.runtime] = model.threading()
    return out
