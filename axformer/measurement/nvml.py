"""NVML (nvidia-ml-py) queries for the one GPU a model runs on; a failure is a recorded reason, never a crash.

The NVML device is found through the CUDA device's UUID (``torch.cuda.get_device_properties(i).uuid``): CUDA
and NVML may number GPUs differently (CUDA_VISIBLE_DEVICES, UUID or MIG ids, CUDA_DEVICE_ORDER), the UUID is
the same in both. Only that device is queried, so a GPU this process may not open (cgroups) does not matter.

Every call into the binding is guarded by ``except Exception``: besides ``pynvml.NVMLError`` the binding raises
``NVMLLibraryMismatchError`` (not an NVMLError subclass) when the driver lacks a function it calls unversioned,
e.g. the ``_v3`` process list on drivers older than R510, and ctypes errors on broken installs. Binding
versions 12.535.77 to before 12.535.108 read the process list with a struct layout most drivers do not use
(pids and bytes come back scrambled); pyproject excludes them and :func:`query` also refuses implausible
entries.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a query needs it: reading NVML needs no torch
    import torch

NOTE = ("NVML: memory the driver attributes to this process on this GPU, CUDA context (~0.3-0.5 GiB) and the "
        "caching allocator's reserve included; a secondary figure beside torch.cuda's allocations")


def _import():
    import pynvml  # noqa: PLC0415 - optional at run time

    return pynvml


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _norm_uuid(u: Any) -> str:
    """'GPU-1a2b...' / 'MIG-...' / '1a2b...' -> '1a2b...' (lower case, no prefix)."""
    u = _s(u).strip().lower()
    for prefix in ("gpu-", "mig-"):
        if u.startswith(prefix):
            u = u[len(prefix):]
    return u


def cuda_uuid(device) -> str | None:
    """UUID of a CUDA device as torch sees it (None without CUDA or where torch does not expose it)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        idx = torch.device(device).index
        idx = torch.cuda.current_device() if idx is None else idx
        u = getattr(torch.cuda.get_device_properties(idx), "uuid", None)
        return None if u is None else _norm_uuid(u)
    except Exception:  # noqa: BLE001 - a missing UUID only costs the NVML figures
        return None


def _handle(pynvml, uuid: str | None, fallback_index: int | None):
    """(handle, how it was found) of the NVML device with this UUID; only that device is opened."""
    if uuid is not None:
        for prefix in ("GPU-", "MIG-"):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(f"{prefix}{uuid}"), f"uuid {prefix}{uuid}"
            except Exception:  # noqa: BLE001 - try the other prefix, then a scan
                pass
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception:  # noqa: BLE001
            count = 0
        for i in range(count):
            try:  # a GPU we may not open (cgroup) is skipped, not fatal
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                if _norm_uuid(pynvml.nvmlDeviceGetUUID(h)) == uuid:
                    return h, f"uuid scan (NVML index {i})"
            except Exception:  # noqa: BLE001
                continue
        raise LookupError(f"no NVML device has the CUDA device's UUID {uuid}")
    if fallback_index is None:
        raise LookupError("torch sees no CUDA device: no GPU to look up")
    return pynvml.nvmlDeviceGetHandleByIndex(fallback_index), f"NVML index {fallback_index} (no UUID)"


def _processes(pynvml, handle):
    """The compute process list; the v2 call where the unversioned (v3) one is missing in the driver."""
    try:
        return pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception as exc:  # noqa: BLE001 - e.g. NVMLLibraryMismatchError on drivers without _v3
        v2 = getattr(pynvml, "nvmlDeviceGetComputeRunningProcesses_v2", None)
        if v2 is None:
            raise
        try:
            return v2(handle)
        except Exception:  # noqa: BLE001
            raise exc from None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def query(device=None, pid: int | None = None, processes: bool = True) -> dict[str, Any]:
    """Driver, GPU name and UUID, and this process's memory on the GPU of ``device`` (a CUDA device).

    Returns ``{"driver", "gpu_name", "uuid", "found_by", "process_used_bytes", "reason"}``; a value NVML cannot
    give is None and ``reason`` says why (the first failure). ``processes=False`` skips the process list.
    """
    out: dict[str, Any] = {"driver": None, "gpu_name": None, "uuid": None, "found_by": None,
                           "process_used_bytes": None, "reason": None}
    pid = os.getpid() if pid is None else int(pid)
    try:
        pynvml = _import()
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken binding failing at import
        out["reason"] = f"pynvml not importable ({_why(exc)}); pip install 'nvidia-ml-py>=12.535.108'"
        return out
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        out["reason"] = f"NVML unavailable: {_why(exc)}"
        return out
    try:
        try:
            out["driver"] = _s(pynvml.nvmlSystemGetDriverVersion())
        except Exception as exc:  # noqa: BLE001
            out["reason"] = f"driver version: {_why(exc)}"
        uuid = cuda_uuid(device if device is not None else "cuda")
        idx = None
        if uuid is None:
            # torch exposes no UUID: fall back to the CUDA index (recorded in found_by) only while torch sees a
            # CUDA device at all; without one there is no GPU of this run to name (issue 35 F)
            try:
                import torch

                if torch.cuda.is_available():
                    idx = torch.device(device).index if device is not None else None
                    idx = torch.cuda.current_device() if idx is None else idx
            except Exception:  # noqa: BLE001
                idx = None
        try:
            handle, out["found_by"] = _handle(pynvml, uuid, idx)
        except Exception as exc:  # noqa: BLE001
            out["reason"] = out["reason"] or f"device lookup: {_why(exc)}"
            return out
        try:
            out["gpu_name"] = _s(pynvml.nvmlDeviceGetName(handle))
            out["uuid"] = _s(pynvml.nvmlDeviceGetUUID(handle))
        except Exception as exc:  # noqa: BLE001
            out["reason"] = out["reason"] or f"device name: {_why(exc)}"
        if not processes:
            return out
        try:
            procs = list(_processes(pynvml, handle))
            total_mem = None
            try:
                total_mem = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            except Exception:  # noqa: BLE001 - only used for the plausibility check
                pass
        except Exception as exc:  # noqa: BLE001
            out["reason"] = out["reason"] or f"process list: {_why(exc)}"
            return out
        mine = [p for p in procs if int(getattr(p, "pid", -1)) == pid]
        if not mine:
            out["reason"] = out["reason"] or (f"NVML lists no compute process with pid {pid} on this GPU "
                                              f"({len(procs)} listed; container PID namespace?)")
            return out
        used = [getattr(p, "usedGpuMemory", None) for p in mine]
        if any(u is None for u in used):
            out["reason"] = out["reason"] or "NVML reports usedGpuMemory as not available (MIG / WDDM / permissions)"
            return out
        total = int(sum(int(u) for u in used))
        if total_mem is not None and total > total_mem:
            out["reason"] = out["reason"] or (f"NVML's process entry is implausible ({total} B > the GPU's "
                                              f"{total_mem} B): binding and driver disagree on the struct layout")
            return out
        out["process_used_bytes"] = total
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def nvml_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """GPU name and driver version from NVML for the GPU of ``device`` (found by UUID, nvml.py):
    ``{"driver", "gpu_name", "uuid", "found_by", "reason"}``. Where NVML cannot be used the values are None and
    ``reason`` says why; NVML never raises out of here."""
    q = query(device, processes=False)
    return {"driver": q["driver"], "gpu_name": q["gpu_name"], "uuid": q["uuid"], "found_by": q["found_by"],
            "reason": q["reason"]}


def nvml_process_used_bytes(pid: int | None = None, device: str | torch.device | None = None
                            ) -> tuple[int | None, str | None]:
    """GPU memory NVML attributes to process ``pid`` (default: this one) on the GPU of ``device`` only.

    Returns ``(bytes, None)`` or ``(None, reason)``. Inside a container the PID NVML sees can differ from
    ``os.getpid()``; then no entry matches and the reason says so.
    """
    q = query(device, pid=pid)
    return q["process_used_bytes"], (None if q["process_used_bytes"] is not None else q["reason"])
