"""One-GPU check of the CUDA paths (issues 15 item 5 and 21), in about six minutes on an H100 / H200.

Stages, each a ``python -m axformer.cli`` subprocess (no console script, no Snakemake needed):

  env            torch / CUDA / card / driver / NVML facts, which optional packages import
  finetune       MiniLM on an SST-2 subset (train' 4,000 rows, 1 epoch, length 128) on --device
  approximate    the AxFormer search on the search split, on --device
  measure_*      finetune and finetune+axformer with CUDA events, per-model memory and NVML, in fp32, then
                 int8 (bitsandbytes LLM.int8, fp16 compute) timed against an fp16 baseline, then fp16, bf16
  pytest_*       the tests marked `cuda` and the bitsandbytes tests (where pytest is installed)

A failed stage is logged (OUT/logs/<stage>.log) and the others still run where their inputs exist; the
summary (OUT/summary.json, OUT/summary.md) is always written and names the card. Stages past --budget-s
are skipped, so the whole check stays inside a device lease.

Usage: python scripts/gpu_check.py [--out results/gpu] [--model FOLDER|minilm] [--data-dir DIR] [--device cuda]
Environment: GPU_CHECK_OUT, GPU_CHECK_MODEL, AXFORMER_DATA, GPU_CHECK_DEVICE, GPU_CHECK_BUDGET_S.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TASK = "sst2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=env("GPU_CHECK_OUT", "results/gpu"), help="output folder")
    p.add_argument("--model", default=env("GPU_CHECK_MODEL", "minilm"),
                   help="model spec: 'minilm' (embedded package) or a local model folder (a copy of it)")
    p.add_argument("--model-label", default="minilm", help="model name the metrics are filed under")
    p.add_argument("--data-dir", default=env("AXFORMER_DATA"), help="folder holding glue/ (default $AXFORMER_DATA)")
    p.add_argument("--device", default=env("GPU_CHECK_DEVICE", "cuda"), help="cuda | cuda:N | cpu (tests)")
    p.add_argument("--train-max", type=int, default=4000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--search-max", type=int, default=500)
    p.add_argument("--dev-max", type=int, default=None, help="dev rows (default: all 872)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="latency batch sizes")
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-iters", type=int, default=30)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "int8", "fp16", "bf16"],
                   help="measure rounds in this order; int8 = bitsandbytes LLM.int8 against an fp16 baseline")
    p.add_argument("--budget-s", type=float, default=float(env("GPU_CHECK_BUDGET_S", "330")),
                   help="skip stages that would start after this many seconds")
    p.add_argument("--stage-timeout-s", type=float, default=240)
    p.add_argument("--no-pytest", action="store_true", help="skip the pytest -m cuda stage")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--memory-isolation", default="on", choices=["on", "off"],
                   help="CPU runs only: per-model memory in a subprocess (on) or tensor bytes only (off, fast)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- stages
class Runner:
    """Runs stages in order; records status, wall time and the log path of each."""

    def __init__(self, out: Path, budget_s: float, timeout_s: float):
        self.out, self.budget_s, self.timeout_s = out, budget_s, timeout_s
        self.t0 = time.perf_counter()
        self.stages: list[dict[str, Any]] = []
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def record(self, name: str, status: str, wall_s: float = 0.0, **extra: Any) -> dict[str, Any]:
        rec = {"stage": name, "status": status, "wall_s": round(wall_s, 2), **extra}
        self.stages.append(rec)
        note = f" ({extra['reason']})" if extra.get("reason") else ""
        print(f"[gpu_check {self.elapsed():6.1f} s] {name}: {status} in {wall_s:.1f} s{note}", flush=True)
        return rec

    def ok(self, name: str) -> bool:
        return any(s["stage"] == name and s["status"] == "ok" for s in self.stages)

    def run(self, name: str, cmd: list[str], needs: tuple[str, ...] = (), env: dict[str, str] | None = None) -> bool:
        missing = [n for n in needs if not self.ok(n)]
        if missing:
            self.record(name, "skipped", reason=f"needs {', '.join(missing)}")
            return False
        if self.elapsed() > self.budget_s:
            self.record(name, "skipped", reason=f"time budget {self.budget_s:.0f} s spent")
            return False
        log = self.out / "logs" / f"{name}.log"
        t = time.perf_counter()
        try:
            with open(log, "w") as fh:
                fh.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
                fh.flush()
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                      timeout=self.timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            self.record(name, "failed", time.perf_counter() - t, reason=f"timeout {self.timeout_s:.0f} s",
                        log=str(log))
            return False
        except OSError as exc:
            self.record(name, "failed", time.perf_counter() - t, reason=str(exc), log=str(log))
            return False
        wall = time.perf_counter() - t
        if rc != 0:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            self.record(name, "failed", wall, reason=f"exit {rc}: {tail[0][:300] if tail else ''}", log=str(log))
            return False
        self.record(name, "ok", wall, log=str(log))
        return True


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "axformer.cli", *args]


def metrics_path(out: Path, round_: str, variant: str, label: str) -> Path:
    return out / round_ / TASK / label / variant / "seed0" / "metrics.json"


# ------------------------------------------------------------------------------------------- env
def env_facts(device: str) -> dict[str, Any]:
    """Facts about the host and card; every probe guarded (the summary must not depend on them)."""
    import importlib.util
    import platform

    facts: dict[str, Any] = {"python": platform.python_version(), "device": device,
                             "packages": {m: importlib.util.find_spec(m) is not None
                                          for m in ("datasets", "bitsandbytes", "pynvml", "pytest", "accelerate")}}
    try:
        import torch

        facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available() and device.startswith("cuda"):
            dev = torch.device(device)
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(idx)
            facts.update(gpu_name=torch.cuda.get_device_name(idx), gpu_memory_bytes=int(props.total_memory),
                         capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
            from axformer import nvml

            q = nvml.query(dev, processes=False)
            facts.update(driver=q["driver"], gpu_uuid=q["uuid"], nvml_gpu_name=q["gpu_name"], nvml_reason=q["reason"])
            from axformer.quantize import bitsandbytes_unavailable_reason

            facts["bitsandbytes_cuda"] = bitsandbytes_unavailable_reason(str(dev)) or "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
        facts["env_error"] = f"{type(exc).__name__}: {exc}"
    return facts


# ------------------------------------------------------------------------------------------- summary
def _lat(rec: dict[str, Any], bs: int) -> dict[str, Any] | None:
    return next((b for b in rec.get("latency") or [] if b.get("batch_size") == bs), None)


def summary_rows(out: Path) -> list[dict[str, Any]]:
    """One row per metrics.json under OUT/<round>/: the figures the summary names."""
    rows = []
    for path in sorted(out.glob(f"*/{TASK}/*/*/seed*/metrics.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            rows.append({"file": str(path.relative_to(out)), "error": f"{type(exc).__name__}: {exc}"})
            continue
        mem = rec.get("memory") or {}
        row: dict[str, Any] = {
            "round": path.relative_to(out).parts[0], "variant": rec.get("variant"),
            "file": str(path.relative_to(out)),
            "dev_accuracy": (rec.get("metric") or {}).get("dev"),
            "params_encoder": (rec.get("size") or {}).get("params_encoder"),
            "memory_source": mem.get("source"), "weights_bytes": mem.get("weights_bytes"),
            "activation_peak_bytes": mem.get("activation_peak_bytes"), "nvml_used_bytes": mem.get("nvml_used_bytes"),
            "memory_reason": mem.get("reason"),
            "int8": (rec.get("quantize") or {}).get("backend"),
        }
        for block in rec.get("latency") or []:
            bs = block.get("batch_size")
            row[f"p50_ms_b{bs}"] = block.get("p50_ms")
            row[f"baseline_p50_ms_b{bs}"] = block.get("baseline_p50_ms")
            row[f"speedup_b{bs}"] = block.get("speedup")
            row["dtypes"] = block.get("dtypes")
            row["tf32"] = (block.get("tf32") or {}).get("matmul_allow_tf32")
            if block.get("library_log"):
                row["library_log"] = block["library_log"]
        rows.append(row)
    return rows


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if kind == "mib":
        return f"{v / 2**20:.1f}"
    if isinstance(v, float):
        return f"{v:.4f}" if kind == "acc" else f"{v:.2f}"
    return str(v)


def write_summary(out: Path, env: dict[str, Any], stages: list[dict[str, Any]], args: dict[str, Any]) -> dict:
    """OUT/summary.json and OUT/summary.md from the stage records and every metrics.json written."""
    rows = summary_rows(out)
    card = env.get("gpu_name") or env.get("nvml_gpu_name") or f"no GPU ({env.get('device')})"
    summary = {"card": card, "driver": env.get("driver"), "env": env, "args": args, "stages": stages,
               "rows": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "ok": bool(stages) and all(s["status"] == "ok" for s in stages)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    bss = sorted({int(k.rsplit("b", 1)[1]) for r in rows for k in r if k.startswith("p50_ms_b")})
    lines = [f"# GPU check: {card}", "",
             f"driver {env.get('driver')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"device {env.get('device')}, created {summary['created']}", "",
             "| stage | status | wall s | note |", "|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['wall_s']:.1f} | {s.get('reason') or ''} |" for s in stages]
    head = ["round", "variant", "dev acc", "enc params"]
    for bs in bss:
        head += [f"p50 ms b{bs}", f"baseline b{bs}", f"speedup b{bs}"]
    head += ["weights MiB", "activ. MiB", "NVML MiB", "memory"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['file']} | error: {r['error']} |")
            continue
        cells = [r["round"], r["variant"], _fmt(r["dev_accuracy"], "acc"), _fmt(r["params_encoder"])]
        for bs in bss:
            cells += [_fmt(r.get(f"{k}_b{bs}")) for k in ("p50_ms", "baseline_p50_ms", "speedup")]
        cells += [_fmt(r["weights_bytes"], "mib"), _fmt(r["activation_peak_bytes"], "mib"),
                  _fmt(r["nvml_used_bytes"], "mib"), r["memory_source"] or "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Rounds: fp32 / fp16 / bf16 = baseline and variant in that dtype; int8 = bitsandbytes LLM.int8 "
              "(fp16 compute) timed against the fp16 baseline. Memory: torch.cuda allocations of the variant alone "
              "(weights = its tensors on the GPU, activation peak = what the forwards add); NVML = the process on that GPU, CUDA "
              "context and allocator reserve included.", ""]
    (out / "summary.md").write_text("\n".join(lines))
    return summary


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.data_dir:
        print("gpu_check: error: set --data-dir or AXFORMER_DATA (the folder holding glue/)", file=sys.stderr)
        return 2
    data_dir = str(Path(args.data_dir).resolve())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    run = Runner(out, args.budget_s, args.stage_timeout_s)

    t = time.perf_counter()
    facts = env_facts(args.device)
    (out / "env.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    run.record("env", "ok" if "env_error" not in facts else "failed", time.perf_counter() - t,
               reason=facts.get("env_error"))

    ck = out / "checkpoints"
    steps = out / "steps"
    label = args.model_label
    run.run("finetune", cli(
        "finetune", "--task", TASK, "--model", args.model, "--seed", "0", "--profile", "gpu-check",
        "--data-dir", data_dir, "--train-max", str(args.train_max), "--search-max", str(args.search_max),
        *(["--dev-max", str(args.dev_max)] if args.dev_max else []), "--max-length", str(args.max_length),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
        "--device", args.device, "--ckpt", str(ck / "finetune"), "--metrics", str(steps / "finetune.json"),
        "--no-progress"), env=env)
    run.run("approximate", cli(
        "approximate", "--parent", str(ck / "finetune"), "--ckpt", str(ck / "finetune+axformer"),
        "--metrics", str(steps / "finetune+axformer.json"), "--decisions", str(out / "decisions.json"),
        "--data-dir", data_dir, "--threads", str(args.threads),
        "--device", args.device, "--no-progress"), needs=("finetune",), env=env)

    timing = ["--batch-sizes", *map(str, args.batch_sizes), "--seq-len", str(args.max_length),
              "--warmup", str(args.warmup), "--min-iters", str(args.min_iters),
              "--min-seconds", str(args.min_seconds), "--threads", str(args.threads),
              "--memory-isolation", args.memory_isolation]
    for round_ in args.dtypes:
        for variant in ("finetune", "finetune+axformer"):
            needs = ("finetune",) if variant == "finetune" else ("finetune", "approximate")
            name = f"measure_{round_}_{variant}"
            records = [str(steps / f"{v}.json") for v in dict.fromkeys(("finetune", variant))]
            extra = ["--dtype", round_]
            vname = variant
            if round_ == "int8":
                if not facts.get("packages", {}).get("bitsandbytes"):
                    run.record(name, "skipped", reason="bitsandbytes is not importable")
                    continue
                extra = ["--dtype", "fp16", "--quantize", "int8", "--quantize-backend", "bitsandbytes",
                         "--quantize-compute-dtype", "float16"]
                vname = f"{variant}+int8"
            run.run(name, cli(
                "measure", "--task", TASK, "--seed", "0", "--profile", "gpu-check", "--model", label,
                "--variant-name", vname, "--baseline", str(ck / "finetune"), "--variant", str(ck / variant),
                "--step-json", *records, "--device", args.device, *extra, *timing, "--data-dir", data_dir,
                "--metrics", str(metrics_path(out, round_, vname, label))), needs=needs, env=env)

    if not args.no_pytest:
        if not facts.get("packages", {}).get("pytest"):
            run.record("pytest_cuda", "skipped", reason="pytest is not installed")
        else:
            penv = {**env, "AXFORMER_DATA": data_dir}
            run.run("pytest_cuda", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                                    "tests/test_gpu.py"], env=penv)
            run.run("pytest_bnb", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "tests/test_quantize.py", "-k", "bnb or bitsandbytes"], env=penv)

    summary = write_summary(out, facts, run.stages, {k: v for k, v in vars(args).items()})
    failed = [s["stage"] for s in run.stages if s["status"] == "failed"]
    print(f"gpu_check: {summary['card']}: {len(run.stages) - len(failed)} of {len(run.stages)} stages not failed, "
          f"{run.elapsed():.0f} s; summary in {out / 'summary.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
