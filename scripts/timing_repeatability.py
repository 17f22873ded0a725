#!/usr/bin/env python
"""Repeatability of the interleaved speedup across separate processes, per backend (issue 31, item 2).

For each backend the *same* model pair is timed in ``--processes`` fresh Python processes (default 5), each
doing what one measure job does: the fp32 PyTorch MiniLM baseline interleaved with the variant (A B A B,
:func:`axformer.measurement.measure.time_interleaved`, warm-up first) at every batch size. Backends:

* ``torch_fp32``: the fp32 model against an independent second copy of itself (the A/A noise floor);
* ``torch_int8``: torch dynamic int8 (:func:`axformer.compress.quantize.quantize`, backend ``torch_dynamic``);
* ``ort_int8``: ONNX Runtime dynamic int8 of the exported graph (:class:`axformer.compress.runtimes.OrtModel`);
* ``ov_int8``: OpenVINO NNCF int8 IR (:class:`axformer.compress.runtimes.OvModel`);
* ``hard_attention``: the fp32 model with top-K hard attention (K = 30) in layer 4.

The model is the embedded MiniLM (``minilm``) with a seeded random 2-class head (latency does not depend on
the head's values); the inputs are seeded random token ids with a full attention mask, padded to
``--seq-len`` like measure's timing batch. The graphs are exported / quantized once, in the parent, with the
suite's own functions, and loaded by every worker.

Every backend is timed under two settings, each in its own processes: ``before`` -- the threading the code
had before issue 31 (ORT: explicit threads, sequential, no spinning; OpenVINO: threads, one stream, LATENCY,
everything else the plugin's defaults; torch: intra-op threads only, inter-op pool and OpenMP environment as
torch leaves them) -- and ``after`` -- what the code sets now (:data:`axformer.device.OMP_ENV`,
:data:`axformer.device.TORCH_INTEROP_THREADS`, :func:`axformer.compress.runtimes.ort_settings`,
:func:`axformer.compress.runtimes.ov_config`). Processes run round-robin over backends and settings so that a change
of host load hits every row alike. Each process records the effective threading (read back from torch,
the ORT session and the compiled OpenVINO model) and host noise over its timing window: load average
before / after, the /proc/stat split (user+system, steal, iowait, idle) of the whole host, the CPU MHz, and
the foreign processes that used more than 10 % of a core.

Output (``--out``, default results/bench/timing_repeatability.json): per setting and backend the speedup
per process, their median and coefficient of variation (population std / mean), per batch size. Do not
commit a file taken on a loaded host; the ``host`` block says how loaded it was.

``--background-load N`` adds N busy-loop processes during every timing window (a controlled stand-in for
other tenants of the host, to see which runtime's speedup depends on foreign load).

Usage (default: 5 processes x 5 backends x 2 settings, batch 32 and 1, seq 128; estimated 10-12 min on 2 idle
cores -- about 12 s a process, most of it start-up and loading -- not yet measured on a quiet host; ``--settings
after`` halves it, ``--batch-sizes 32`` saves a little):
    PYTHONPATH=. python scripts/timing_repeatability.py
Quick check that it runs end to end:
    PYTHONPATH=. python scripts/timing_repeatability.py --processes 2 --iters 3 --batch-sizes 2 --seq-len 16 \\
        --out /tmp/timing_repeatability_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the worktree's axformer, also in workers

BACKENDS = ("torch_fp32", "torch_int8", "ort_int8", "ov_int8", "hard_attention")
SETTINGS = ("before", "after", "short_spin")
SHORT_SPIN = 10_000  # libgomp busy-wait iterations (its default is 300,000; PASSIVE means 0)
HARD_LAYER, HARD_K = 4, 30
SEED = 0


# ------------------------------------------------------------------------------------------------ host noise


def _proc_stat() -> dict[str, int]:
    """Aggregate CPU jiffies from /proc/stat (user, nice, system, idle, iowait, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    keys = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {k: int(v) for k, v in zip(keys, parts[1:9])}


def _proc_cpu() -> dict[int, tuple[str, int]]:
    """pid -> (command, utime+stime jiffies) of every readable process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1: s.rindex(")")]
        fields = s[s.rindex(")") + 2:].split()
        out[int(d)] = (comm, int(fields[11]) + int(fields[12]))
    return out


def _cpu_mhz() -> list[float]:
    try:
        with open("/proc/cpuinfo") as f:
            return [float(ln.split(":")[1]) for ln in f if ln.startswith("cpu MHz")]
    except OSError:
        return []


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        return None


class HostNoise:
    """Host load over a window: start with :meth:`start`, read with :meth:`stop` (``own``: pids to leave out
    of the foreign-process list)."""

    def start(self) -> "HostNoise":
        self.t0, self.load0, self.stat0, self.procs0 = time.time(), os.getloadavg(), _proc_stat(), _proc_cpu()
        return self

    def stop(self, own: set[int]) -> dict[str, Any]:
        dt = max(time.time() - self.t0, 1e-9)
        stat1, procs1 = _proc_stat(), _proc_cpu()
        d = {k: stat1[k] - self.stat0[k] for k in stat1}
        total = max(sum(d.values()), 1)
        hz = os.sysconf("SC_CLK_TCK")
        foreign = []
        for pid, (comm, t1) in procs1.items():
            if pid in own or pid not in self.procs0:
                continue
            share = (t1 - self.procs0[pid][1]) / hz / dt
            if share > 0.10:
                foreign.append({"pid": pid, "comm": comm, "cpu_share": round(share, 3)})
        foreign.sort(key=lambda x: -x["cpu_share"])
        return {"wall_s": round(dt, 2), "loadavg_before": [round(x, 2) for x in self.load0],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "busy_frac": round((d["user"] + d["nice"] + d["system"] + d["irq"] + d["softirq"]) / total, 3),
                "steal_frac": round(d["steal"] / total, 4), "iowait_frac": round(d["iowait"] / total, 4),
                "idle_frac": round(d["idle"] / total, 3), "cpu_mhz": _cpu_mhz(),
                "foreign_busy": foreign[:8], "foreign_cpu_share": round(sum(x["cpu_share"] for x in foreign), 3)}


# ------------------------------------------------------------------------------------------------ settings


def settings_of(name: str, threads: int) -> dict[str, Any]:
    """The threading settings of ``name`` ("before" / "after") as the worker applies them."""
    from axformer import device
    from axformer.compress import quantize, runtimes

    if name == "before":  # the code before issue 31 (axformer/compress/export.py, device.py at 16911be)
        return {"omp_env": {}, "interop_threads": None,
                "ort": {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "execution_mode": "sequential",
                        "intra_op_allow_spinning": False, "inter_op_allow_spinning": False},
                "ov": {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32",
                       "PERFORMANCE_HINT": "LATENCY"},
                "ov_plugin_defaults": True, "quantized_engine": None}
    if name in ("after", "short_spin"):
        # short_spin: as after, but torch's OpenMP workers spin SHORT_SPIN iterations before they sleep instead
        # of sleeping at once (PASSIVE): hot inside one forward's parallel regions, asleep soon after it
        omp_env = dict(device.OMP_ENV) if name == "after" else {"GOMP_SPINCOUNT": str(SHORT_SPIN)}
        return {"omp_env": omp_env, "interop_threads": device.TORCH_INTEROP_THREADS,
                "ort": runtimes.ort_settings(threads), "ov": runtimes.ov_config(threads), "ov_plugin_defaults": False,
                "quantized_engine": quantize.TORCH_INT8_ENGINE}
    raise SystemExit(f"timing_repeatability: unknown setting {name!r} ({', '.join(SETTINGS)})")


# ------------------------------------------------------------------------------------------------ worker


def _inputs(batch: int, seq_len: int, vocab: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(SEED + batch)
    ids = torch.randint(1000, vocab, (batch, seq_len), generator=g)
    ids[:, 0] = 101  # [CLS]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def _load_fp32():
    from axformer.encoders import models
    from axformer.taskdata import tasks

    model, tok = models.load_pretrained("minilm", tasks.get_task("sst2"), seed=SEED)
    return model.eval(), tok


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One process: build the pair of ``spec["backend"]`` under ``spec["settings"]``, time it at every batch
    size like measure does, return speedups, threading and host noise."""
    st = spec["settings"]
    from axformer import device

    interop = None
    if spec["setting_name"] == "after":  # first thing in the process, like the CLI entry
        device.prepare_process()
    elif st["interop_threads"] is not None:
        interop = device.set_interop_threads(st["interop_threads"])
    import torch

    from axformer.compress import runtimes
    from axformer.measurement import measure
    from axformer.measurement import measure_config

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(SEED)
    backend = spec["backend"]
    base, _ = _load_fp32()
    variant: Any
    if backend in ("torch_fp32", "hard_attention"):
        variant, _ = _load_fp32()
        if backend == "hard_attention":
            from axformer.surgery import hard_attention

            hard_attention.enable(variant, [HARD_LAYER], HARD_K)
    elif backend == "torch_int8":
        from axformer.compress.quantize import quantize
        from axformer.compress.quantize_config import QuantizeConfig

        if st.get("quantized_engine"):
            torch.backends.quantized.engine = st["quantized_engine"]
        variant, _ = quantize(_load_fp32()[0], QuantizeConfig(backend="torch_dynamic", device="cpu", inplace=True))
    elif backend == "ort_int8":
        ref, _ = _load_fp32()
        variant = runtimes.OrtModel.like(spec["ort_path"], ref, spec["threads"], _inputs(2, 8, 30000), st["ort"])
    elif backend == "ov_int8":
        ref, _ = _load_fp32()
        if st["ov_plugin_defaults"]:  # the old config: four keys, the rest left to the plugin
            variant = _old_ov(spec["ov_path"], ref, spec["threads"], _inputs(2, 8, 30000), st["ov"])
        else:
            variant = runtimes.OvModel.like(spec["ov_path"], ref, spec["threads"], _inputs(2, 8, 30000), st["ov"])
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    if st.get("flush_denormal") is not None:
        torch.set_flush_denormal(bool(st["flush_denormal"]))
    vocab = int(base.config.vocab_size)
    out: dict[str, Any] = {"backend": backend, "setting": spec["setting_name"], "pid": os.getpid(), "batches": {}}
    for bs in spec["batch_sizes"]:
        x = _inputs(bs, spec["seq_len"], vocab)
        first = {}
        with torch.inference_mode():
            for name, m in (("baseline", base), ("variant", variant)):
                t0 = time.perf_counter()
                m(**x)
                first[name] = (time.perf_counter() - t0) * 1e3
        cfg = measure_config.MeasureConfig(batch_sizes=[bs], seq_len=spec["seq_len"], warmup=spec["warmup"],
                                    min_iters=spec["iters"] * (1 if bs >= 8 else 5), min_seconds=0.0,
                                    threads=spec["threads"],
                                    memory_isolation=False)
        pair = {"baseline": base, "variant": variant}
        if spec.get("order") == "variant_first":
            pair = {"variant": variant, "baseline": base}
        noise = HostNoise().start()
        stats = measure.time_interleaved(pair, x, cfg)
        host = noise.stop(own={os.getpid(), os.getppid(), *spec.get("own_pids", [])})
        b, v = stats["baseline"], stats["variant"]
        out["batches"][str(bs)] = {"speedup": b.p50_ms / v.p50_ms, "baseline_p50_ms": b.p50_ms,
                                   "variant_p50_ms": v.p50_ms, "baseline_min_ms": min(b.samples_ms),
                                   "variant_min_ms": min(v.samples_ms), "n_iters": v.n_iters,
                                   "first_call_ms": first, "host": host}
    thr: dict[str, Any] = {"torch": device.torch_threading(), "interop_request": interop}
    if hasattr(variant, "threading"):
        thr[variant.runtime] = variant.threading()
    out["threading"] = thr
    return out


def _old_ov(path: str, reference: Any, threads: int, sample: dict[str, Any], config: dict[str, Any]):
    """An OvModel compiled with exactly ``config`` (the pre-issue-31 four keys; the rest the plugin's defaults)."""
    import openvino as ov

    from axformer.compress import runtimes

    m = runtimes.OvModel.like(path, reference, threads, sample)
    m.config = dict(config)
    m.compiled = ov.Core().compile_model(str(path), "CPU", m.config)
    m.request = m.compiled.create_infer_request()
    return m


# ------------------------------------------------------------------------------------------------ parent


def prepare(work: Path, threads: int) -> dict[str, Any]:
    """Export the fp32 graph and quantize it for ORT and OpenVINO (once; reused when ``work`` has them)."""
    from axformer.compress import export

    fp32, ort_q, ov_q = work / "model_fp32.onnx", work / "model_int8_ort.onnx", work / "model_int8_ov.xml"
    info: dict[str, Any] = {}
    if not (fp32.is_file() and ort_q.is_file() and ov_q.is_file()):
        model, _ = _load_fp32()
        vocab = int(model.config.vocab_size)
        check = [_inputs(4, 32, vocab)]
        info["export"] = export.export_onnx(model, fp32, _inputs(2, 16, vocab), check=check, threads=threads)
        info["ort_int8"] = export.quantize_onnx(fp32, ort_q, "dynamic")
        calib = [_inputs(8, 128, vocab) for _ in range(2)]
        info["ov_int8"] = export.quantize_ov(fp32, ov_q, calib)
    return {"workdir": str(work), "fp32": str(fp32), "ort": str(ort_q), "ov": str(ov_q), "made": info}


def run_worker(spec: dict[str, Any], env_extra: dict[str, str], timeout: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env.update(env_extra)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['backend']}/{spec['setting_name']} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def cv(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = statistics.fmean(xs)
    return statistics.pstdev(xs) / m if m else None


def summarise(runs: list[dict[str, Any]], batch_sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in runs:
        s = out.setdefault(r["setting"], {}).setdefault(r["backend"], {"per_batch": {}, "threading": r["threading"]})
        for bs in batch_sizes:
            e = r["batches"][str(bs)]
            pb = s["per_batch"].setdefault(str(bs), {"speedup_per_process": [], "baseline_p50_ms": [],
                                                     "variant_p50_ms": [], "host": []})
            pb["speedup_per_process"].append(round(e["speedup"], 4))
            pb["baseline_p50_ms"].append(round(e["baseline_p50_ms"], 3))
            pb["variant_p50_ms"].append(round(e["variant_p50_ms"], 3))
            pb["host"].append(e["host"])
    for setting in out.values():
        for b in setting.values():
            for pb in b["per_batch"].values():
                sp = pb["speedup_per_process"]
                pb["median_speedup"] = round(statistics.median(sp), 4)
                for key, xs in (("cv_speedup", sp), ("cv_baseline_p50", pb["baseline_p50_ms"]),
                                ("cv_variant_p50", pb["variant_p50_ms"])):
                    c = cv(xs)
                    pb[key] = None if c is None else round(c, 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, default=5, help="processes per backend and setting (>= 5 for the file)")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--settings", default="before,after", help="before,after,short_spin (any of them)")
    ap.add_argument("--batch-sizes", default="32,1")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5, help="timed rounds per batch size of batch >= 8 (x5 below 8)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds after the timed first call of each model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--order", choices=("baseline_first", "variant_first"), default="baseline_first")
    ap.add_argument("--background-load", type=int, default=0, help="busy-loop processes during the timing")
    ap.add_argument("--workdir", default=None, help="keep / reuse the exported graphs here (default: a temp dir)")
    ap.add_argument("--override", default=None, help='JSON merged into both settings, e.g. {"ov": {...}}')
    ap.add_argument("--out", default="results/bench/timing_repeatability.json")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    backends = [b for b in args.backends.split(",") if b]
    settings = [s for s in args.settings.split(",") if s]
    bad = sorted(set(backends) - set(BACKENDS)) + sorted(set(settings) - set(SETTINGS))
    if bad or args.processes < 1 or args.threads < 1 or args.iters < 1:
        ap.error(f"bad value(s): {bad or 'processes, threads and iters must be >= 1'}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    t0 = time.time()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="axformer-timing-")
        work = Path(tmp.name)
    else:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    paths = prepare(work, args.threads)
    specs = {s: settings_of(s, args.threads) for s in settings}
    if args.override:
        for s in specs.values():
            for k, v in json.loads(args.override).items():
                if isinstance(v, dict) and isinstance(s.get(k), dict):
                    s[k].update(v)
                else:
                    s[k] = v
    bg = [subprocess.Popen([sys.executable, "-c", "x = 0\nwhile True: x = (x * 1103515245 + 12345) & 0xFFFFFFFF"])
          for _ in range(args.background_load)]
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.processes):
            for setting in settings:
                for backend in backends:
                    spec = {"backend": backend, "setting_name": setting, "settings": specs[setting],
                            "batch_sizes": batch_sizes, "seq_len": args.seq_len, "threads": args.threads,
                            "warmup": args.warmup, "iters": args.iters, "order": args.order,
                            "ort_path": paths["ort"], "ov_path": paths["ov"], "own_pids": [p.pid for p in bg]}
                    r = run_worker(spec, specs[setting]["omp_env"], timeout=600)
                    r["process_index"] = rep
                    runs.append(r)
                    sp = ", ".join(f"b{k} {v['speedup']:.3f}" for k, v in r["batches"].items())
                    print(f"[{time.time() - t0:5.0f} s] {setting:6s} {backend:14s} #{rep}: {sp} "
                          f"(load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    finally:
        for p in bg:
            p.kill()
    from axformer.utils import atomic_write_json

    result = {"what": "speedup of the same model pair in separate processes, per backend and threading setting",
              "model": "minilm (embedded MiniLM-L6-H384), seeded random 2-class head; random token ids, full mask",
              "args": {k: v for k, v in vars(args).items() if k != "worker"},
              "host": {"cpu_model": _cpu_model(), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
              "settings": specs, "backends": summarise(runs, batch_sizes), "runs": runs,
              "wall_s": round(time.time() - t0, 1),
              "hard_attention": {"layer": HARD_LAYER, "k": HARD_K}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out} in {result['wall_s']:.0f} s", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
