"""Memory a model needs, measured per model rather than per process (DESIGN §6, the ``memory`` block).

A process's peak memory mixes everything it ever held: the baseline model timed beside the variant, the
libraries, the evaluation data. So each model gets a phase of its own:

- CUDA: the other model is moved off the GPU, caches are emptied and the peak counters reset; then
  ``weights_bytes`` = the bytes of the model's own tensors on the device (parameters, buffers and, for LLM.int8,
  its quantisation state: :func:`tensor_bytes`; not ``memory_allocated``, which also holds what earlier work left
  there, e.g. the cuBLAS workspace; that figure is kept as ``allocated_before_bytes``) and
  ``activation_peak_bytes`` = ``max_memory_allocated`` over a few forwards minus ``memory_allocated`` before them. NVML's per-process figure is kept as a secondary number (it includes the CUDA context
  and the caching allocator's reserve, see nvml.NOTE).
- CPU: the model is pickled into a fresh subprocess (``python -m axformer.measurement.memory``) that has imported torch,
  transformers and the modules of the model's classes first (unpickling would import them: library memory);
  ``weights_bytes`` is that process's RSS growth from loading the model, ``activation_peak_bytes`` the peak RSS
  (``VmHWM``, reset after loading through ``/proc/self/clear_refs``) of the forwards above the loaded RSS. The
  measuring process's own peak RSS stays in the block as ``process_peak_rss_bytes`` (secondary).

``state_bytes`` (bytes of every tensor in the state dict, packed int8 weights included) is exact on both
devices and serves as a cross-check of ``weights_bytes``.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

CUDA_METHOD = ("torch.cuda allocations in a phase of its own: the other model moved off the GPU, caches emptied, "
               "peak counters reset; weights = bytes of the model's tensors on the device, activation peak = "
               "max_memory_allocated over the forwards minus memory_allocated before them (which also holds "
               "e.g. the cuBLAS workspace: allocated_before_bytes)")
CPU_METHOD = ("RSS of a fresh subprocess (python -m axformer.measurement.memory; torch, transformers and the modules of the "
              "model's classes imported first) "
              "holding only this model: "
              "weights = RSS growth from loading it, activation peak = peak RSS (VmHWM, reset after loading) over "
              "the forwards minus the loaded RSS")
SUBPROCESS_TIMEOUT_S = 600


def tensor_bytes(model: nn.Module, device: torch.device | None = None) -> int:
    """Bytes of every tensor in ``model.state_dict()`` (packed int8 weights of quantized Linears included);
    with ``device``, only the tensors that live on it."""
    dev = None if device is None else torch.device(device)

    def on(v: torch.Tensor) -> bool:
        if dev is None:
            return True
        return v.device.type == dev.type and (dev.index is None or v.device.index == dev.index)

    def size(v: Any) -> int:
        if torch.is_tensor(v):
            return v.numel() * v.element_size() if on(v) else 0
        if isinstance(v, (tuple, list)):
            return sum(size(x) for x in v)
        return 0

    return int(sum(size(v) for v in model.state_dict().values()))


def process_peak_rss_bytes() -> int:
    """Peak RSS of this whole process (ru_maxrss; Linux KiB, macOS bytes)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru) if sys.platform == "darwin" else int(ru) * 1024


# ----------------------------------------------------------------------------------------------- CUDA


def cuda_model_memory(model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device,
                      iters: int = 3) -> dict[str, Any]:
    """The model's memory on ``device``; the caller has moved every other model off that device.

    ``inputs`` may live anywhere; they are moved to the device after the weights are read.
    """
    from axformer.measurement import nvml

    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    # memory_allocated also holds what earlier work left on the device (the cuBLAS workspace, 32 MiB with
    # CUBLAS_WORKSPACE_CONFIG=:4096:8): the weights are the model's own tensors on it, the activations what the
    # forwards add on top of everything allocated before them
    before = int(torch.cuda.memory_allocated(device))
    weights = tensor_bytes(model, device)
    torch.cuda.reset_peak_memory_stats(device)
    dev_inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
    with torch.inference_mode():
        for _ in range(max(1, iters)):
            model(**dev_inputs)
    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device))
    reserved = int(torch.cuda.memory_reserved(device))
    q = nvml.query(device)
    del dev_inputs
    return {
        "peak_bytes": peak, "source": "torch.cuda", "method": CUDA_METHOD,
        "weights_bytes": weights, "allocated_before_bytes": before, "activation_peak_bytes": peak - before,
        "state_bytes": tensor_bytes(model),
        "torch_cuda_max_allocated": peak, "torch_cuda_reserved": reserved,
        "nvml_used_bytes": q["process_used_bytes"], "nvml_note": nvml.NOTE,
        "reason": None if q["process_used_bytes"] is not None else f"NVML figure unavailable: {q['reason']}",
    }


# ------------------------------------------------------------------------------------------------ CPU


def _rss_now() -> int:
    """Current RSS of this process in bytes (/proc/self/statm; psutil elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _child(job_path: str) -> dict[str, Any]:
    """Subprocess body (``python -m axformer.measurement.memory JOB``): the libraries first, then the pickled model."""
    import transformers  # noqa: F401 - imported before the baseline RSS reading on purpose

    import axformer.surgery.elements  # noqa: F401 - edited and hard-attention models unpickle through these
    import axformer.surgery.hard_attention  # noqa: F401

    spec = torch.load(job_path, weights_only=True)  # threads, iters, module names and the input tensors only
    # the modules of the model's classes too: unpickling imports them (transformers' modeling files pull in
    # whatever optional packages the host has; 110 MB on a GPU image), which is library, not model, memory
    for name in spec.get("modules", []):
        importlib.import_module(name)
    torch.set_num_threads(int(spec["threads"]))
    torch.ones(64, 64) @ torch.ones(64, 64)  # start the intra-op thread pool before the reading
    x = spec["inputs"]
    gc.collect()
    rss0 = _rss_now()
    # our own pickle, written by the parent process a moment ago (not a file from elsewhere)
    model = torch.load(spec["model_path"], weights_only=False)
    gc.collect()
    rss_loaded = _rss_now()
    reset = _reset_hwm()
    with torch.inference_mode():
        for _ in range(max(1, int(spec["iters"]))):
            model(**x)
    hwm = _hwm() if reset else None
    return {"rss_before": rss0, "rss_loaded": rss_loaded, "rss_peak": hwm, "hwm_reset": reset}


def cpu_model_memory(model: nn.Module, inputs: dict[str, torch.Tensor], threads: int, iters: int = 3,
                     timeout_s: float = SUBPROCESS_TIMEOUT_S) -> dict[str, Any]:
    """The model's memory on CPU, measured in a subprocess of its own (see the module docstring)."""
    state = tensor_bytes(model)
    out: dict[str, Any] = {
        "peak_bytes": None, "source": "rss_subprocess", "method": CPU_METHOD, "weights_bytes": None,
        "activation_peak_bytes": None, "state_bytes": state, "torch_cuda_max_allocated": None,
        "nvml_used_bytes": None, "process_peak_rss_bytes": None, "reason": None,
    }
    with tempfile.TemporaryDirectory(prefix="axformer-mem-") as tmp:
        try:
            torch.save(model, os.path.join(tmp, "model.pt"))
        except Exception as exc:  # noqa: BLE001 - a model that cannot be pickled: no subprocess figure
            out["reason"] = f"model cannot be pickled into a subprocess ({type(exc).__name__}: {exc})"
            out["process_peak_rss_bytes"] = process_peak_rss_bytes()
            return out
        cpu_inputs = {k: v.detach().cpu() for k, v in inputs.items() if torch.is_tensor(v)}
        job = os.path.join(tmp, "job.pt")
        modules = sorted({type(m).__module__ for m in model.modules()})
        torch.save({"inputs": cpu_inputs, "threads": int(threads), "iters": int(iters), "modules": modules,
                    "model_path": os.path.join(tmp, "model.pt")}, job)
        # a plain subprocess, not multiprocessing: spawn would re-import the caller's __main__
        try:
            proc = subprocess.run([sys.executable, "-m", "axformer.measurement.memory", job], capture_output=True, text=True,
                                  timeout=timeout_s, env={**os.environ, "PYTHONPATH": _pythonpath()})
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                res = {"error": f"exit status {proc.returncode}: {tail}"}
            else:
                res = json.loads(lines[-1])
        except subprocess.TimeoutExpired:
            res = {"error": f"no answer within {timeout_s:.0f} s"}
    out["process_peak_rss_bytes"] = process_peak_rss_bytes()
    if "error" in res:
        out["reason"] = f"subprocess measurement failed: {res['error']}"
        return out
    out["weights_bytes"] = int(res["rss_loaded"] - res["rss_before"])
    if res["rss_peak"] is None:
        out["reason"] = "peak RSS could not be reset after loading (/proc/self/clear_refs): no activation figure"
        out["peak_bytes"] = out["weights_bytes"]
        return out
    out["activation_peak_bytes"] = int(max(0, res["rss_peak"] - res["rss_loaded"]))
    out["peak_bytes"] = out["weights_bytes"] + out["activation_peak_bytes"]
    return out


def _pythonpath() -> str:
    """The parent's import path for the child, so it imports this same axformer (a worktree, an editable
    install)."""
    here = str(Path(__file__).resolve().parents[2])
    parts = [here, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return os.pathsep.join(dict.fromkeys(parts))


if __name__ == "__main__":
    try:
        print(json.dumps(_child(sys.argv[1])))
    except BaseException as exc:  # noqa: BLE001 - the parent records the reason
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
