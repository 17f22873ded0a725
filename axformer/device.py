"""Where a step runs and in what numeric mode: device choice, dtypes, TF32, determinism (DESIGN §6).

Every step takes ``--device`` (config ``steps.<name>.device`` / ``measure.device``): ``auto`` is CUDA when
torch sees a GPU, else the CPU. The model and every tensor a step caches live on that device.

Determinism on CUDA: cuBLAS is only deterministic with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``), which
must be in the environment before CUDA initialises, so :func:`prepare_process` runs first in the CLI entry.
Timed sections run with deterministic algorithms off (:func:`timing_mode`): a deterministic kernel can be a
slower one, and latency is about the fast path a deployment would use.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

from axformer.utils import ConfigError

AUTO = "auto"
# torch dtype names by the short names config and CLI use (measure.dtype).
DTYPES = ("fp32", "fp16", "bf16")
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS' documented deterministic workspace setting (8 buffers of 4 MiB)


# torch's inter-op pool (torch.jit.fork, some parallel ops) is not used by any step; one thread keeps it from
# adding workers next to the intra-op OpenMP threads. torch only accepts it before its first parallel work.
TORCH_INTEROP_THREADS = 1
# OpenMP environment read by libgomp when torch loads it (so it must be set before ``import torch``).
# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP workers sleep when a parallel region ends instead of spinning for
# GOMP_SPINCOUNT (300,000 iterations by default). Measured (issue 31, docs/RUNTIME_THREADS.md): after every MiniLM
# forward the default burns 5-8 ms of CPU per 50 ms of idle time in the spinning worker (PASSIVE: 0.04 ms), CPU
# the next model in the interleaved timing loop (OpenVINO's TBB threads, ORT's) and other processes on a shared
# host then lack; on a loaded 2-core host the spinning also made torch itself 2-10x slower (batch 1 p50 0.8-2.2 s
# vs 0.18 s) by an amount that follows the load, so every speedup against it did too. ORT, which does not spin
# (session.intra_op.allow_spinning 0), was the stable runtime. setdefault: a value the user exported wins and is
# recorded as such.
OMP_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
# the state prepare_process left, for torch_threading()
_PROCESS: dict[str, Any] = {}


def prepare_process() -> None:
    """Process-wide settings that must precede CUDA's initialisation and torch's first parallel work: call
    first in a process (the CLI entry does), before anything imports torch (OMP_ENV is read by libgomp when
    torch loads it)."""
    import sys

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    _PROCESS["omp_env_before_torch"] = "torch" not in sys.modules
    for k, v in OMP_ENV.items():
        os.environ.setdefault(k, v)
    _PROCESS["interop"] = set_interop_threads(TORCH_INTEROP_THREADS)


def set_interop_threads(n: int = TORCH_INTEROP_THREADS) -> dict[str, Any]:
    """``torch.set_num_interop_threads(n)``; torch refuses it once its inter-op pool has started (any parallel
    work), which is recorded instead of raised: ``{"requested": n, "applied": bool, "reason": str | None}``."""
    import torch

    try:
        torch.set_num_interop_threads(int(n))
    except RuntimeError as exc:  # "Error: cannot set number of interop threads after parallel work has started"
        return {"requested": int(n), "applied": torch.get_num_interop_threads() == int(n),
                "reason": str(exc).strip().splitlines()[0]}
    return {"requested": int(n), "applied": True, "reason": None}


def torch_threading() -> dict[str, Any]:
    """torch's CPU threading as it is now: intra-op and inter-op threads, parallel backend, quantized engine,
    the OpenMP / MKL environment, and what :func:`prepare_process` did."""
    import torch

    info = torch.__config__.parallel_info()
    backend = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("ATen parallel backend")),
                   None)
    env_keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
                "OMP_PROC_BIND", "GOMP_CPU_AFFINITY")
    return {"runtime": "torch", "version": torch.__version__, "intra_op_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "parallel_backend": backend,
            "quantized_engine": torch.backends.quantized.engine,
            "env": {k: os.environ.get(k) for k in env_keys},
            "prepare_process": dict(_PROCESS) or None}


def resolve_device(spec: str | None, what: str = "--device"):
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> ``torch.device``; ConfigError naming ``what`` if unusable."""
    import torch

    spec = AUTO if spec in (None, "") else str(spec)
    if spec == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what} {spec!r} is not a device: use auto, cpu, cuda or cuda:N.") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} {spec!r}: only auto, cpu, cuda and cuda:N are supported.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {spec!r} but torch {torch.__version__} sees no CUDA GPU "
                              f"(torch.version.cuda={torch.version.cuda}); use --device cpu or auto, or install "
                              "a CUDA build of torch (docs/USAGE.md: GPU environment).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{what} {spec!r} but only {torch.cuda.device_count()} CUDA device(s) are visible.")
    return dev


def torch_dtype(name: str):
    """fp32 | fp16 | bf16 -> the torch dtype (ConfigError otherwise)."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise ConfigError(f"measure.dtype must be one of {', '.join(DTYPES)} (got {name!r}).")
    return table[name]


def model_device(model) -> Any:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    import torch

    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def float_dtypes(model) -> list[str]:
    """Sorted names of the floating dtypes the model's parameters and buffers hold (int8 weights excluded)."""
    import itertools

    names = {str(t.dtype).replace("torch.", "") for t in itertools.chain(model.parameters(), model.buffers())
             if t.is_floating_point()}
    return sorted(names)


def tf32_state() -> dict[str, Any]:
    """Whether fp32 matmuls / convolutions may use TF32 on this process (they do on Ampere+ when allowed)."""
    import torch

    return {"matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def determinism_state() -> dict[str, Any]:
    """The settings that decide whether repeated runs give bit-identical numbers (env block of metrics.json)."""
    import torch

    return {"deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
            "deterministic_warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


@contextmanager
def timing_mode() -> Iterator[None]:
    """Deterministic algorithms off for a timed section; the previous setting is restored afterwards."""
    import torch

    prev = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=warn_only)


@contextmanager
def on_device(device) -> Iterator[None]:
    """``torch.cuda.device(device)`` for a CUDA device (events and synchronize then target it), else nothing."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        with torch.cuda.device(device):
            yield
    else:
        yield


def synchronize(device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    import torch

    if getattr(device, "type", None) == "cuda":
        torch.cuda.synchronize(device)


class OnceFilter(logging.Filter):
    """Lets the first record of a logger through, keeps its text, drops the rest (see :func:`quiet_logger`)."""

    def __init__(self) -> None:
        super().__init__()
        self.first: str | None = None
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.first is None:
            self.first = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
            return True
        self.dropped += 1
        return False


@contextmanager
def quiet_logger(name: str = "bitsandbytes") -> Iterator[OnceFilter]:
    """Record a chatty library's log line once, then silence it (bitsandbytes logs a cast warning on every
    ``Linear8bitLt`` call with non-fp16 input, i.e. inside timed loops). The filter sits on the logger and on
    its handlers' path through ``logging.Logger.filter``; it is removed on exit."""
    log = logging.getLogger(name)
    flt = OnceFilter()
    log.addFilter(flt)
    # child loggers (bitsandbytes.autograd._functions, ...) do not consult the parent's filters: attach to
    # every existing child too
    children = [lg for n, lg in logging.root.manager.loggerDict.items()
                if isinstance(lg, logging.Logger) and n.startswith(name + ".")]
    if name == "bitsandbytes":  # the cast warning's logger, made here in case bitsandbytes is imported later
        children.append(logging.getLogger("bitsandbytes.autograd._functions"))
    children = list({id(c): c for c in children}.values())
    for child in children:
        child.addFilter(flt)
    try:
        yield flt
    finally:
        log.removeFilter(flt)
        for child in children:
            child.removeFilter(flt)
