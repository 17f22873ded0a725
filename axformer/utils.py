"""Small shared helpers: errors with a fix, atomic writes, seeding, environment facts."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A user-facing error: bad input, missing file, bad config value.

    The CLI prints only the message (no traceback) and exits with status 2, so the message must name
    the file or key at fault and say how to fix it.
    """


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}. Choose a writable output directory.") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # rename is atomic on POSIX: readers see the old file or the whole new one, never a half.
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` through a temp file + rename."""
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically; NaN / Infinity are refused (they are not JSON)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=json_default, allow_nan=False)
    except ValueError as exc:
        raise ConfigError(f"{path}: key '{nonfinite_key(obj)}' is not a finite number ({exc}); "
                          "JSON has no NaN / Infinity: fix the value before writing.") from exc
    atomic_write_text(path, text + "\n")


def slug(s: str) -> str:
    """A file-name part: every run of characters other than letters, digits and ``_.-`` becomes one ``-``
    (figure files; here, not in axformer.reporting.figures, so the workflow names them without importing matplotlib)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)).strip("-")


def key_path(path: Any) -> str:
    """deque(['metric', 'dev']) / ['latency', 0, 'p50_ms'] -> 'metric.dev' / 'latency[0].p50_ms'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def nonfinite_key(obj: Any, _path: tuple = ()) -> str | None:
    """The key path of the first NaN / inf float in ``obj`` (nested dicts and lists), or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else key_path(_path)
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = nonfinite_key(v, (*_path, k))
        if found:
            return found
    return None


def json_default(o: Any) -> Any:
    """``json.dumps`` default: numpy / torch scalars and arrays, and paths (they show up in records), as plain JSON."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch; make CPU kernels deterministic."""
    import numpy as np
    import torch

    if seed < 0:
        raise ConfigError(f"seed must be >= 0 (got {seed}).")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def git_commit() -> str | None:
    """The commit of the checkout this code runs from, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _env_int(environ: dict[str, str], key: str) -> int | None:
    """An integer SLURM variable ('4'; SLURM_JOB_CPUS_PER_NODE may read '4(x2)': the first count), else None."""
    value = environ.get(key, "").strip()
    head = value.split("(", 1)[0].split(",", 1)[0]
    return int(head) if head.isdigit() else None


_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def _job_tres(job_id: str) -> dict[str, str]:
    """The allocated TRES of a running job from slurmctld (``scontrol show job``: ``TRES=cpu=1,mem=2000M,...``);
    {} where scontrol is missing or does not answer. Snakemake's job step drops the SLURM_MEM_* variables, so
    this is where the memory a job got is known."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    for word in out.stdout.split():
        if word.startswith("TRES="):
            return dict(kv.split("=", 1) for kv in word[len("TRES="):].split(",") if "=" in kv)
    return {}


def slurm_allocation(environ: dict[str, str] | None = None, query: bool = True) -> dict[str, Any]:
    """What a SLURM job was given: job id, node, partition, CPUs and memory in MB, from the controller's record
    of the job (``query``) or else the variables slurmstepd sets. Every value is None outside a SLURM job."""
    env = dict(os.environ if environ is None else environ)
    job_id = env.get("SLURM_JOB_ID") or None
    if job_id is None:
        return {"slurm_job_id": None, "slurm_node": None, "slurm_partition": None, "slurm_cpus": None,
                "slurm_mem_mb": None}
    cpus = _env_int(env, "SLURM_CPUS_ON_NODE") or _env_int(env, "SLURM_JOB_CPUS_PER_NODE")
    mem = _env_int(env, "SLURM_MEM_PER_NODE")
    if mem is None and _env_int(env, "SLURM_MEM_PER_CPU") is not None and cpus is not None:
        mem = _env_int(env, "SLURM_MEM_PER_CPU") * cpus
    tres = _job_tres(job_id) if query else {}
    if tres.get("cpu", "").isdigit():
        cpus = int(tres["cpu"])
    unit = tres.get("mem", "")[-1:]
    if unit in _MEM_UNITS and tres["mem"][:-1].replace(".", "", 1).isdigit():
        mem = round(float(tres["mem"][:-1]) * _MEM_UNITS[unit])
    return {"slurm_job_id": job_id, "slurm_node": env.get("SLURMD_NODENAME") or None,
            "slurm_partition": env.get("SLURM_JOB_PARTITION") or None, "slurm_cpus": cpus, "slurm_mem_mb": mem}


def env_info() -> dict[str, Any]:
    """Library versions and host facts for the ``env`` block of metrics.json (GPU facts: measure.py), and the
    SLURM allocation the job ran in (all None when not under SLURM)."""
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "driver": None,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **slurm_allocation(),
    }
