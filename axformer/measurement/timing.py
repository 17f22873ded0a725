"""Timing passes: the suite's speed measurement protocol (DESIGN §6, issue 31).

A speedup read from one interleaved job is not reproducible: the same int8 model read 2.99x in one job and 5.72x
in another, while the job's own bootstrap interval was 1-4 % wide. So a speedup is measured in ``R`` independent
*passes*, each a fresh Python process that loads the fine-tuned baseline and every variant of one (task, model,
seed) and times them round-robin on the same padded batch (finetune once per round, the round's order a fresh
seeded permutation, ``measure.round_order``, so no model always follows the same one). Inside a pass the figures are today's: median ms, the baseline's median
from the same rounds, the ratio and its paired-rounds bootstrap interval. Across passes:

- the reported speedup is the median of the counted passes' speedups, its interval a percentile bootstrap over
  those speedups, never narrower than the median pass's own interval (``stats.passes_interval``);
- every pass samples host noise over its window (``HostWindow``: foreign CPU use and steal from /proc/stat,
  load average, CPU model and MHz, busy foreign processes); a pass over the thresholds of ``MeasureConfig``
  (``noise_max_other_cpu``, ``noise_max_steal``) is marked ``noisy`` and repeated, at most ``pass_retries``
  times per job; the noisy pass stays in the record with ``superseded_by`` naming its repeat; nothing is dropped;
- a pass set has one id (``pass_set``: UTC time stamp + commit) stamped on every pass, so a report can tell
  which full re-time a figure came from.

Entry points: ``time_group`` (the parent: prepares runtime int8 graphs once, runs the passes, aggregates) and
``python -m axformer.measurement.timing SPEC OUT`` (one pass, the child). ``latency_blocks`` turns a group's record into the
``latency`` blocks of one variant's metrics.json (the record shape is in docs/CONTRACTS.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from axformer.measurement.measure_config import MeasureConfig
from axformer.utils import ConfigError, git_commit, slurm_allocation

BASELINE = "__baseline__"  # the fine-tuned model every speedup is relative to (timed once per round)
REF_SEP = "::"  # "<variant>::ort_fp32": a runtime's own fp32 graph timed beside its int8 variant
PASS_RESAMPLES = 2000  # bootstrap resamples of the within-pass and over-pass intervals
CI_METHOD = "passes-bootstrap"


# ----------------------------------------------------------------------------------------------- host noise
def _proc_stat() -> dict[str, int] | None:
    """The aggregate ``cpu`` line of /proc/stat in ticks (None where /proc is not Linux's)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    return dict(zip(names, (int(x) for x in fields[1:9])))


def cpu_identity() -> dict[str, Any]:
    """CPU model name and the mean current MHz of its cores from /proc/cpuinfo (None where unreadable)."""
    model, mhz = None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "cpu MHz":
                    try:
                        mhz.append(float(value))
                    except ValueError:
                        pass
    except OSError:
        pass
    return {"cpu_model": model, "cpu_mhz": round(sum(mhz) / len(mhz), 1) if mhz else None}


def _process_times() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every process we may read, by pid."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        ct = p.info.get("cpu_times")
        if ct is not None:
            out[p.pid] = (p.info.get("name") or "?", float(ct.user + ct.system))
    return out


def _own_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (the pass subprocesses)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class HostWindow:
    """Host noise over a window (one pass): open it before the pass, ``close()`` after.

    ``other_cpu_frac`` is the share of the host's CPU time that neither this process nor its waited-for children
    used (another job, a compiler, a browser...): the quantity that moves a CPU timing. ``steal_frac`` is the time
    the hypervisor gave to other guests; ``iowait_frac`` idle time waiting for I/O."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.stat0 = _proc_stat()
        self.own0 = _own_seconds()
        self.procs0 = _process_times()

    def close(self, threads: int) -> dict[str, Any]:
        stat1, own1, procs1 = _proc_stat(), _own_seconds(), _process_times()
        wall = time.monotonic() - self.t0
        out: dict[str, Any] = {"wall_s": round(wall, 3), "threads": int(threads)}
        if self.stat0 is not None and stat1 is not None:
            d = {k: stat1[k] - self.stat0[k] for k in stat1}
            total = sum(d.values()) or 1
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy_s = (d["user"] + d["nice"] + d["system"] + d["irq"] + d["softirq"]) / hz
            total_s = total / hz
            own = max(0.0, own1 - self.own0)
            out.update(other_cpu_frac=round(max(0.0, busy_s - own) / total_s, 4) if total_s > 0 else None,
                       steal_frac=round(d["steal"] / total, 4), iowait_frac=round(d["iowait"] / total, 4))
        else:
            out.update(other_cpu_frac=None, steal_frac=None, iowait_frac=None)
        try:
            out["loadavg_1m"] = round(os.getloadavg()[0], 2)
        except OSError:
            out["loadavg_1m"] = None
        out.update(cpu_identity())
        mine = {os.getpid()}
        busy = []
        for pid, (name, secs) in procs1.items():
            if pid in mine or pid not in self.procs0:
                continue
            share = (secs - self.procs0[pid][1]) / wall if wall > 0 else 0.0
            if share >= 0.05:  # >= 5 % of one core over the pass
                busy.append({"pid": pid, "name": name, "cpu_share": round(share, 3)})
        out["busy_processes"] = sorted(busy, key=lambda b: -b["cpu_share"])[:8]
        return out


def is_noisy(host: Mapping[str, Any], max_other_cpu: float, max_steal: float) -> bool:
    """Whether a pass's host window is over the documented thresholds (unknown fields never count as noisy)."""
    other, steal = host.get("other_cpu_frac"), host.get("steal_frac")
    return bool((other is not None and other > max_other_cpu) or (steal is not None and steal > max_steal))


# ------------------------------------------------------------------------------------------------- pass set
def pass_set_id(commit: str | None = None) -> str:
    """``ps-<UTC yyyymmddThhmmss>-<commit>``: one id per full re-time, stamped on each of its passes."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"ps-{stamp}-{(commit or git_commit() or 'nogit')[:12]}"


# --------------------------------------------------------------------------------------- one pass (the child)
def _build_entry(entry: Mapping[str, Any], cfg, device) -> tuple[Any, Any, dict[str, Any]]:
    """The timed model of one plan entry (checkpoint, torch int8 or a prepared runtime graph), its tokenizer and
    its reference models {"<runtime>_fp32": model}."""
    from axformer.measurement import measure
    from axformer.encoders import models

    model, tok = models.load_checkpoint(entry["ckpt"])
    mode = entry.get("quantize") or "none"
    refs: dict[str, Any] = {}
    if mode == "int8":
        from axformer.compress.quantize import quantize
        from axformer.compress.quantize_config import QuantizeConfig

        qkw = {} if entry.get("quantize_compute_dtype") is None else {"compute_dtype": entry["quantize_compute_dtype"]}
        model, _info = quantize(model, QuantizeConfig(backend=entry.get("quantize_backend") or "auto",
                                                      device=str(device), inplace=True, **qkw))
    elif mode != "none":
        from axformer.compress import runtimes

        files = entry["runtime_files"]
        cls = runtimes.OvModel if files["runtime"] == "ov" else runtimes.OrtModel
        sample = {k: v[:1] for k, v in measure.make_inputs(tok, ["a"], None, 1, 8).items()}
        ref = model.eval()
        qmodel = cls.like(files["int8"], ref, cfg.threads, sample)
        refs = {f"{files['runtime']}_fp32": cls.like(files["fp32"], ref, cfg.threads, sample)}
        model = qmodel
    else:
        model.to(device)
    measure.cast_for_measure(model, cfg)
    return model.eval(), tok, refs


def run_pass(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One timing pass in this process: load the baseline and every entry, time them round-robin per batch size.

    Returns {"samples": {bs: {name: [ms per round]}}, "dtypes": {name: [...]}, "library_log", "tf32",
    "threading"}. Names: ``BASELINE``, each entry's variant, and ``<variant>::<reference>``."""
    from axformer.measurement import measure
    from axformer.encoders import models
    from axformer.device import float_dtypes, quiet_logger, tf32_state

    cfg = MeasureConfig(**spec["measure"])
    device = measure.check_device(cfg)
    import torch

    torch.set_num_threads(int(cfg.threads))
    timed: dict[str, Any] = {}
    toks: dict[str, Any] = {}
    # one baseline per measure dtype of the group (a variant measured in fp16 is paired with finetune in fp16)
    for dtype in sorted({entry_dtype(e, cfg.dtype) for e in spec["entries"]} | {cfg.dtype}):
        baseline, btok = models.load_checkpoint(spec["baseline"])
        measure.cast_for_measure(baseline.to(device), dataclasses.replace(cfg, dtype=dtype))
        timed[baseline_key(dtype, cfg.dtype)] = baseline.eval()
        toks[baseline_key(dtype, cfg.dtype)] = btok
    for entry in spec["entries"]:
        model, tok, refs = _build_entry(entry, dataclasses.replace(cfg, dtype=entry_dtype(entry, cfg.dtype)), device)
        timed[entry["variant"]] = model
        toks[entry["variant"]] = tok
        for rname, rmodel in refs.items():
            timed[f"{entry['variant']}{REF_SEP}{rname}"] = rmodel
            toks[f"{entry['variant']}{REF_SEP}{rname}"] = tok
    texts_a, texts_b = spec["texts_a"], spec["texts_b"]
    samples: dict[str, dict[str, list[float]]] = {}
    orders: dict[str, list[list[int]]] = {}
    with quiet_logger("bitsandbytes") as flt:
        for bs in cfg.batch_sizes:
            inputs = {name: measure.make_inputs(toks[name], texts_a, texts_b, bs, cfg.seq_len) for name in timed}
            rounds: list[list[int]] = []
            stats = measure.time_interleaved(timed, inputs, cfg, order=cfg.round_order,
                                             seed=order_seed(spec.get("pass_index", 0), bs), orders_out=rounds)
            samples[str(bs)] = {name: s.samples_ms for name, s in stats.items()}
            orders[str(bs)] = rounds
    return {
        "samples": samples,
        "order_names": list(timed),
        "orders": orders,
        "dtypes": {name: float_dtypes(m) for name, m in timed.items() if REF_SEP not in name},
        "library_log": ({"logger": "bitsandbytes", "first": flt.first, "silenced": flt.dropped}
                        if flt.first is not None else None),
        "tf32": tf32_state(),
        "threading": threading_state(timed),
        "pid": os.getpid(),
    }


def entry_dtype(entry: Mapping[str, Any], default: str) -> str:
    """The float dtype an entry is timed in: its own (a measure-time step's `dtype` arg), else the group's."""
    return entry.get("dtype") or default


def baseline_key(dtype: str, group_dtype: str) -> str:
    """The name of the baseline an entry of ``dtype`` is paired with: ``BASELINE`` in the group's dtype."""
    return BASELINE if dtype == group_dtype else f"{BASELINE}@{dtype}"


def order_seed(pass_index: int, batch_size: int) -> int:
    """The seed of a pass's round orders at one batch size (``measure.round_order`` shuffle): fixed by the pass's
    index in its job and the batch size, so a pass set's orders can be regenerated and differ between passes."""
    return 1_000_003 * int(pass_index) + int(batch_size)


def threading_state(timed: Mapping[str, Any]) -> dict[str, Any]:
    """The thread settings a pass ran with: torch's (intra / inter-op, OpenMP wait policy, quantized engine) and,
    per runtime model, its session's settings read back (runtimes.runtime_threading)."""
    from axformer.compress.runtimes import runtime_threading

    out: dict[str, Any] = runtime_threading()
    runtimes = {}
    for name, model in timed.items():
        rt = runtime_threading(model)
        rt.pop("torch", None)
        if rt:
            runtimes[name] = rt
    if runtimes:
        out["runtimes"] = runtimes
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m axformer.measurement.timing SPEC OUT``: one pass in a fresh process, its result as JSON at OUT."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m axformer.measurement.timing SPEC.json OUT.json", file=sys.stderr)
        return 2
    from axformer.device import prepare_process

    prepare_process()  # as the CLI: CUBLAS_WORKSPACE_CONFIG before CUDA initialises
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = json.loads(Path(args[0]).read_text())
    out = run_pass(spec)
    tmp = Path(args[1]).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, allow_nan=False))
    os.replace(tmp, args[1])
    return 0


# ------------------------------------------------------------------------------------------ the group (parent)
def _one_pass(spec_path: Path, out_path: Path, spec: Mapping[str, Any], fresh: bool, log) -> dict[str, Any]:
    if not fresh:
        return run_pass(spec)
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "axformer.measurement.timing", str(spec_path), str(out_path)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log is not None and proc.stdout:
        log.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise RuntimeError(f"timing pass exited {proc.returncode}:\n{tail}")
    return json.loads(out_path.read_text())


def run_passes(spec: Mapping[str, Any], cfg, workdir: str | os.PathLike, pass_set: str,
               log=None) -> list[dict[str, Any]]:
    """``cfg.passes`` counted passes (fresh processes unless ``cfg.pass_process`` is inline), a noisy one repeated
    while ``cfg.pass_retries`` allow; every pass is returned, superseded ones marked."""
    work = Path(workdir)
    passes: list[dict[str, Any]] = []
    retries = int(cfg.pass_retries)
    counted = 0
    while counted < cfg.passes:
        i = len(passes)
        pspec = {**spec, "pass_index": i}  # the pass's own round orders (order_seed)
        spec_path = work / f"pass{i}_spec.json"
        spec_path.write_text(json.dumps(pspec, allow_nan=False))
        window = HostWindow()
        res = _one_pass(spec_path, work / f"pass{i}.json", pspec, cfg.pass_process == "fresh", log)
        res["host"] = window.close(cfg.threads)
        res.update({"pass": i, "pass_set": pass_set, "round_order": cfg.round_order,
                    "order_seeds": {str(bs): order_seed(i, bs) for bs in cfg.batch_sizes},
                    "noisy": is_noisy(res["host"], cfg.noise_max_other_cpu, cfg.noise_max_steal),
                    "superseded_by": None})
        passes.append(res)
        if res["noisy"] and retries > 0:
            retries -= 1
            res["superseded_by"] = i + 1  # the repeat is the next pass; this one stays in the record
        else:
            counted += 1
    return passes


def aggregate(passes: Sequence[Mapping[str, Any]], names: Sequence[str], batch_sizes: Sequence[int],
              resamples: int = PASS_RESAMPLES, baselines: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per variant and batch size: each pass's figures and the figures over the counted passes. ``baselines``:
    the baseline key each name is paired with (default ``BASELINE``)."""
    from axformer import stats

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        bkey = (baselines or {}).get(name, BASELINE)
        per_bs = {}
        for bs in batch_sizes:
            key = str(bs)
            rows, counted = [], []
            for p in passes:
                smp = p["samples"][key]
                b, v = np.asarray(smp[bkey]), np.asarray(smp[name])
                boot = stats.speedup_interval(b, v, resamples=resamples, seed=0)
                row = {"pass": p["pass"], "pass_set": p["pass_set"], "speedup": boot.estimate,
                       "speedup_ci": [boot.low, boot.high], "p50_ms": float(np.median(v)),
                       "p90_ms": float(np.percentile(v, 90)), "baseline_p50_ms": float(np.median(b)),
                       "baseline_p90_ms": float(np.percentile(b, 90)), "n_iters": int(len(v)),
                       "host": p["host"], "noisy": p["noisy"], "superseded_by": p["superseded_by"]}
                refs = {r.split(REF_SEP, 1)[1]: float(np.median(smp[r])) for r in smp
                        if r.startswith(name + REF_SEP)}
                if refs:
                    row["references_p50_ms"] = refs
                rows.append(row)
                if p["superseded_by"] is None:
                    counted.append((row, v, b))
            iv = stats.passes_interval([r["speedup"] for r, _, _ in counted],
                                       [tuple(r["speedup_ci"]) for r, _, _ in counted], resamples=resamples)
            est, lo, hi = iv.estimate, iv.low, iv.high
            allv = np.concatenate([v for _, v, _ in counted])
            per_bs[key] = {
                "speedup": est, "speedup_ci": [lo, hi], "ci_method": CI_METHOD,
                "p50_ms": float(np.median([r["p50_ms"] for r, _, _ in counted])),
                "p90_ms": float(np.median([r["p90_ms"] for r, _, _ in counted])),
                "baseline_p50_ms": float(np.median([r["baseline_p50_ms"] for r, _, _ in counted])),
                "baseline_p90_ms": float(np.median([r["baseline_p90_ms"] for r, _, _ in counted])),
                "mean_ms": float(allv.mean()), "std_ms": float(allv.std(ddof=1)) if len(allv) > 1 else 0.0,
                "n_iters": int(len(allv)), "n_passes": len(counted), "passes": rows,
            }
            ref_names = sorted({k for r, _, _ in counted for k in r.get("references_p50_ms", {})})
            if ref_names:
                per_bs[key]["references"] = {}
                for rn in ref_names:
                    rp50 = float(np.median([r["references_p50_ms"][rn] for r, _, _ in counted]))
                    per_bs[key]["references"][rn] = {
                        "p50_ms": rp50, "speedup": rp50 / per_bs[key]["p50_ms"] if per_bs[key]["p50_ms"] > 0
                        else float("nan")}
        out[name] = per_bs
    return out


def time_group(plan: Mapping[str, Any], rows_of: Callable[[str, str | None], tuple[Any, Any, Any]],
               log=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Time every entry of ``plan`` against its baseline in ``measure.passes`` passes.

    ``plan``: {"task", "seed", "baseline": ckpt, "data_dir", "entries": [{"variant", "ckpt", "quantize",
    "quantize_backend", "quantize_compute_dtype"}], "measure": MeasureConfig fields}. ``rows_of(baseline,
    data_dir)`` gives (task, splits, split arguments) of the baseline's lineage (``steps.runs.lineage_rows``:
    the timing texts and a runtime variant's check / calibration rows come from them). Returns the group's
    timing record (timing.json) and its raw samples (name -> float32 array, for timing.npz)."""
    from axformer.compress.export import scratch_dir
    from axformer.measurement import measure
    from axformer.taskdata import taskkinds

    cfg = MeasureConfig(**plan["measure"])
    measure.check_device(cfg)
    task, splits, split = rows_of(plan["baseline"], plan.get("data_dir"))
    texts_a, texts_b = taskkinds.timing_texts(task, splits.dev, max(cfg.batch_sizes), split.seed)
    pass_set = plan.get("pass_set") or pass_set_id()
    t0 = time.perf_counter()
    with scratch_dir("axformer-timing-") as work:
        entries = [dict(e) for e in plan["entries"]]
        for i, e in enumerate(entries):
            if (e.get("quantize") or "none").startswith(("int8_ort", "int8_ov")):
                e["runtime_files"] = _prepare_runtime(e, task, splits, split.max_length, cfg, Path(work) / f"rt{i}")
        spec = {"baseline": plan["baseline"], "entries": entries, "texts_a": list(texts_a),
                "texts_b": list(texts_b) if texts_b is not None else None, "measure": asdict(cfg)}
        passes = run_passes(spec, cfg, work, pass_set, log)
    names = [e["variant"] for e in plan["entries"]]
    dtypes = {e["variant"]: entry_dtype(e, cfg.dtype) for e in plan["entries"]}
    bkeys = {n: baseline_key(d, cfg.dtype) for n, d in dtypes.items()}
    agg = aggregate(passes, names, cfg.batch_sizes, baselines=bkeys)
    record = {
        "task": plan["task"], "model": plan.get("model"), "seed": plan["seed"], "profile": plan.get("profile"),
        "pass_set": pass_set, "git_commit": git_commit(), "created": datetime.now(timezone.utc).isoformat(),
        "measure": asdict(cfg), "baseline": plan["baseline"], "variants": names, "wall_s": time.perf_counter() - t0,
        "variant_dtypes": dtypes, "variant_baselines": bkeys, "slurm": slurm_allocation(),
        "passes": [{k: p[k] for k in ("pass", "pass_set", "host", "noisy", "superseded_by", "threading", "pid",
                                      "round_order", "order_seeds", "order_names")} for p in passes],
        "dtypes": passes[-1]["dtypes"], "tf32": passes[-1]["tf32"], "library_log": passes[-1]["library_log"],
        "results": agg,
    }
    samples: dict[str, np.ndarray] = {}
    for bs in cfg.batch_sizes:
        for name in [*sorted(set(bkeys.values())), *names]:
            samples[f"b{bs}/{name}"] = np.concatenate([np.asarray(p["samples"][str(bs)][name], np.float32)
                                                       for p in passes])
        samples[f"b{bs}/pass"] = np.concatenate([np.full(len(p["samples"][str(bs)][BASELINE]), p["pass"], np.int16)
                                                 for p in passes])
        # each timed round's model order (indices into the pass's order_names), so a neighbour effect can be read
        samples[f"b{bs}/order"] = np.concatenate([np.asarray(p["orders"][str(bs)], np.int16).reshape(
            len(p["orders"][str(bs)]), len(p["order_names"])) for p in passes])
    return record, samples


def _prepare_runtime(entry: Mapping[str, Any], task, splits, max_length: int, cfg, work: Path) -> dict[str, str]:
    """Export and quantize a runtime int8 entry once per job (the passes load the files): {"runtime", "int8",
    "fp32"}. The calibration rows are the search split's, as at measurement (export.runtime_variant)."""
    from axformer.compress import export, runtimes
    from axformer.encoders import models
    from axformer.taskdata import taskkinds

    work.mkdir(parents=True, exist_ok=True)
    model, tok = models.load_checkpoint(entry["ckpt"])
    mode = entry["quantize"]
    check = export.text_batches(tok, *taskkinds.texts(task, splits.dev), max_length, export.CHECK_ROWS)
    calib = None
    if runtimes.ORT_MODES.get(mode, "static") == "static":
        calib = export.text_batches(tok, *taskkinds.texts(task, splits.search), max_length, export.CALIBRATION_ROWS)
    export.runtime_variant(model, mode, work, cfg.threads, check, calib)
    runtime = "ov" if mode in runtimes.OV_MODES else "ort"
    int8 = work / (f"model_{mode}.xml" if runtime == "ov" else f"model_{mode}.onnx")
    return {"runtime": runtime, "int8": str(int8), "fp32": str(work / "model_fp32.onnx")}


def write_group(record: Mapping[str, Any], samples: Mapping[str, np.ndarray], out: str | os.PathLike) -> Path:
    """timing.json and timing.npz (raw per-round ms of every pass), both written atomically."""
    import io

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **samples)
    npz = out.with_suffix(".npz")
    tmp = npz.with_name(f".{npz.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, npz)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, out)
    return out


def read_group(path: str | os.PathLike) -> dict[str, Any]:
    """A timing.json written by ``write_group`` (one clear error for a missing or malformed file)."""
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"timing file {p} cannot be read ({exc}); re-run its timing job "
                          "(snakemake --forcerun time, then --forcerun measure).") from exc
    if not isinstance(rec, dict) or not isinstance(rec.get("results"), dict) or "measure" not in rec:
        raise ConfigError(f"timing file {p} is not a timing record; re-run its timing job "
                          "(snakemake --forcerun time, then --forcerun measure).")
    return rec


def latency_blocks(group: Mapping[str, Any], variant: str, path: str = "timing file") -> list[dict[str, Any]]:
    """The ``latency`` blocks (one per batch size) of ``variant`` from its group's timing record."""
    res = group["results"].get(variant)
    if res is None:
        raise ConfigError(f"{path} has no timing for variant {variant!r} (it timed {', '.join(group['variants'])}); "
                          "re-run the group's timing job (snakemake --forcerun time, then --forcerun measure).")
    m = group["measure"]
    blocks = []
    for bs in m["batch_sizes"]:
        r = res[str(bs)]
        block = {"device": m["device"], "batch_size": int(bs), "seq_len": m["seq_len"], "threads": m["threads"],
                 **{k: r[k] for k in ("p50_ms", "p90_ms", "mean_ms", "std_ms", "n_iters", "baseline_p50_ms",
                                      "baseline_p90_ms", "speedup", "speedup_ci", "ci_method", "n_passes", "passes")},
                 "pass_set": group["pass_set"],
                 "dtypes": {"measure_dtype": group.get("variant_dtypes", {}).get(variant, m["dtype"]),
                            "baseline": group["dtypes"].get(group.get("variant_baselines", {}).get(variant, BASELINE)),
                            "variant": group["dtypes"].get(variant)},
                 "tf32": group["tf32"], "library_log": group["library_log"]}
        if "references" in r:
            block["references"] = r["references"]
        blocks.append(block)
    return blocks


def iter_ms(group_npz: str | os.PathLike, variant: str, batch_sizes: Sequence[int],
            baseline: str | None = None) -> dict[int, dict[str, Any]]:
    """Per batch size the per-round ms of the baseline and ``variant`` over every pass (round order) and the pass
    index of each round, for predictions.npz."""
    with np.load(group_npz, allow_pickle=False) as z:
        base = BASELINE if baseline is None else baseline
        return {int(bs): {"baseline": z[f"b{bs}/{base}"], "variant": z[f"b{bs}/{variant}"],
                          "pass": z[f"b{bs}/pass"]} for bs in batch_sizes}


if __name__ == "__main__":
    sys.exit(main())
