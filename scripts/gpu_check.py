"""One-GPU check of the CUDA paths (issues 15 item 5 and 21), in under eight minutes on an H100 / H200.

Stages, each a ``python -m axformer.cli`` subprocess (no console script, no Snakemake needed), for the 6-layer
MiniLM and, where its folder is found, the 12-layer MPNet-base (stages prefixed ``mpnet_``):

  env            torch / CUDA / card / driver / NVML facts, which optional packages import
  finetune       an SST-2 subset (train' 4,000 rows, 1 epoch, length 128) on --device
  approximate    the AxFormer search on the search split (MPNet: --mpnet-search-max rows), on --device
  measure_*      finetune and finetune+axformer with CUDA events, per-model memory and NVML, one round per dtype:
                 fp32 / fp16 / bf16, and int8 = bitsandbytes LLM.int8 (fp16 compute) timed against an fp16
                 baseline
  pytest_*       the tests marked `cuda` and the bitsandbytes tests (where pytest is installed)

Order (:func:`stage_plan`): MiniLM's fine-tune, search and first round; then every MPNet stage; then MiniLM's
other rounds (committed before from an H200, results/gpu) and the tests. No stage starts after --budget-s and a
running stage is stopped at --deadline-s, so the whole check ends inside a device lease; what did not run is
recorded as skipped with the reason.

MPNet-base (``--mpnet``, default ``$GPU_CHECK_MPNET``, else ``auto``): a local copy of the extracted
all-mpnet-base-v2 folder (config.json + model.safetensors; a GPU machine without network gets it shipped), or
``mpnet-base`` (the five PyPI parts installed), or ``auto`` (the verified folder under ``$AXFORMER_CACHE``, else
the installed parts), or ``none``. When none is found its stages are skipped with the reason; a given path that
is not a model folder fails them.

A failed stage is logged (OUT/logs/<stage>.log) and the others still run where their inputs exist; the
summary (OUT/summary.json, OUT/summary.md) is always written and names the card.

Usage: python scripts/gpu_check.py [--out results/gpu] [--model FOLDER|minilm] [--mpnet FOLDER|mpnet-base|auto|none]
       [--data-dir DIR] [--device cuda]
Environment: GPU_CHECK_OUT, GPU_CHECK_MODEL, GPU_CHECK_MPNET, AXFORMER_DATA, GPU_CHECK_DEVICE, GPU_CHECK_BUDGET_S,
GPU_CHECK_DEADLINE_S.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python scripts/gpu_check.py` without PYTHONPATH: axformer from this checkout
    sys.path.insert(0, str(REPO))
TASK = "sst2"
MPNET_LABEL = "mpnet-base"  # the model name MPNet's metrics are filed under
MPNET_PREFIX = "mpnet_"  # stage-name prefix of the MPNet stages


DTYPE_ROUNDS = ("fp32", "int8", "fp16", "bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=env("GPU_CHECK_OUT", "results/gpu"), help="output folder")
    p.add_argument("--model", default=env("GPU_CHECK_MODEL", "minilm"),
                   help="model spec: 'minilm' (embedded package) or a local model folder (a copy of it)")
    p.add_argument("--model-label", default="minilm", help="model name the metrics are filed under")
    p.add_argument("--mpnet", default=env("GPU_CHECK_MPNET") or "auto",
                   help="MPNet-base: an extracted all-mpnet-base-v2 folder, 'mpnet-base' (installed PyPI parts), "
                        "'auto' (the cache folder, else the parts) or 'none' (default $GPU_CHECK_MPNET, else auto)")
    p.add_argument("--mpnet-search-max", type=int, default=300,
                   help="search rows of the MPNet search (12 layers: twice MiniLM's candidates)")
    p.add_argument("--mpnet-dtypes", nargs="+", default=["fp32", "int8", "fp16"], choices=DTYPE_ROUNDS,
                   help="MPNet's measure rounds, in this order")
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
    p.add_argument("--dtypes", nargs="+", default=["fp32", "int8", "fp16", "bf16"], choices=DTYPE_ROUNDS,
                   help="MiniLM's measure rounds in this order; int8 = bitsandbytes LLM.int8 against an fp16 baseline")
    p.add_argument("--budget-s", type=float, default=float(env("GPU_CHECK_BUDGET_S", "420")),
                   help="skip stages that would start after this many seconds")
    p.add_argument("--deadline-s", type=float, default=float(env("GPU_CHECK_DEADLINE_S", "465")),
                   help="stop a stage still running at this many seconds (the check then writes its summary)")
    p.add_argument("--stage-timeout-s", type=float, default=240)
    p.add_argument("--no-pytest", action="store_true", help="skip the pytest -m cuda stage")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--memory-isolation", default="on", choices=["on", "off"],
                   help="CPU runs only: per-model memory in a subprocess (on) or tensor bytes only (off, fast)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- stages
class Runner:
    """Runs stages in order; records status, wall time and the log path of each. No stage starts after
    ``budget_s``; a stage still running at ``deadline_s`` (or after ``timeout_s`` of its own) is killed."""

    # a stage that could run less than this before the deadline is not started (it could not finish)
    MIN_STAGE_S = 10.0

    def __init__(self, out: Path, budget_s: float, timeout_s: float, deadline_s: float = float("inf")):
        self.out, self.budget_s, self.timeout_s, self.deadline_s = out, budget_s, timeout_s, deadline_s
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
        left = self.deadline_s - self.elapsed()
        if left < self.MIN_STAGE_S:
            self.record(name, "skipped", reason=f"deadline {self.deadline_s:.0f} s too close")
            return False
        timeout = min(self.timeout_s, left)
        why = f"timeout {self.timeout_s:.0f} s" if timeout == self.timeout_s else \
            f"stopped at the deadline {self.deadline_s:.0f} s"
        log = self.out / "logs" / f"{name}.log"
        t = time.perf_counter()
        try:
            with open(log, "w") as fh:
                fh.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
                fh.flush()
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                      timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            self.record(name, "failed", time.perf_counter() - t, reason=why, log=str(log))
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


# ------------------------------------------------------------------------------------------- models
@dataclass
class ModelRun:
    """One model's stages: its spec (None = not available, ``reason`` says why), the name its metrics are filed
    under, the stage-name prefix, its search rows and measure rounds. ``error``: the reason is a user error (a
    given path that is no model folder), so its stages fail instead of being skipped."""

    label: str
    spec: str | None
    prefix: str = ""
    search_max: int = 500
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    reason: str | None = None
    error: bool = False

    def stage(self, name: str) -> str:
        return self.prefix + name

    def ckpt(self, out: Path, variant: str) -> Path:
        # the first model keeps the layout of the committed run (checkpoints/<variant>, steps/<variant>.json)
        return out / "checkpoints" / (self.label if self.prefix else "") / variant

    def step_json(self, out: Path, variant: str) -> Path:
        return out / "steps" / (self.label if self.prefix else "") / f"{variant}.json"

    def decisions(self, out: Path) -> Path:
        return out / (f"decisions_{self.label}.json" if self.prefix else "decisions.json")


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def find_mpnet(arg: str | None) -> tuple[str | None, str | None, bool]:
    """(model spec, reason when none, whether that reason is a user error) for ``--mpnet``.

    ``none`` turns MPNet off; ``auto`` takes the verified extraction under ``$AXFORMER_CACHE`` (what
    ``mpnet_parts.model_dir`` wrote), else the installed PyPI parts; ``mpnet-base`` needs one of the two; any
    other value is a folder that must hold config.json and model.safetensors (e.g. the extracted folder shipped
    to a GPU machine without network)."""
    from axformer.encoders import mpnet_parts

    arg = (arg or "auto").strip()
    if arg.lower() in ("none", "off", "no"):
        return None, f"MPNet stages turned off (--mpnet {arg})", False
    cached = mpnet_parts.cache_root() / mpnet_parts.FOLDER
    if arg in ("auto", MPNET_LABEL):
        if _is_model_folder(cached) and (cached / mpnet_parts._DONE).is_file():
            return str(cached), None, False
        if mpnet_parts.available():
            return MPNET_LABEL, None, False
        return None, (f"no MPNet-base folder: pass --mpnet PATH or set GPU_CHECK_MPNET to the extracted "
                      f"all-mpnet-base-v2 folder (found none at {cached}), or install the parts: "
                      f"{mpnet_parts.INSTALL}"), arg == MPNET_LABEL
    path = Path(arg).expanduser()
    if _is_model_folder(path):
        return str(path.resolve()), None, False
    return None, f"--mpnet {arg}: not a model folder (needs config.json and model.safetensors)", True


def stage_plan(models: list[ModelRun]) -> list[tuple[ModelRun, str, str | None, str | None]]:
    """The stage order, as (model, kind, round, variant) with kind finetune | approximate | measure: the first
    model's fine-tune, search and first round (the reference), then every stage of each further model, then
    the first model's other rounds. What comes first is what a budget cut leaves."""
    variants = ("finetune", "finetune+axformer")

    def build(m: ModelRun) -> list:
        return [(m, "finetune", None, None), (m, "approximate", None, None)]

    def rounds(m: ModelRun, dtypes: list[str]) -> list:
        return [(m, "measure", r, v) for r in dtypes for v in variants]

    first, *others = models
    plan = build(first) + rounds(first, first.dtypes[:1])
    for m in others:
        plan += build(m) + rounds(m, m.dtypes)
    return plan + rounds(first, first.dtypes[1:])


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
            from axformer.measurement import nvml

            q = nvml.query(dev, processes=False)
            facts.update(driver=q["driver"], gpu_uuid=q["uuid"], nvml_gpu_name=q["gpu_name"], nvml_reason=q["reason"])
            from axformer.compress.quantize import bitsandbytes_unavailable_reason

            facts["bitsandbytes_cuda"] = bitsandbytes_unavailable_reason(str(dev)) or "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
        facts["env_error"] = f"{type(exc).__name__}: {exc}"
    return facts


# ------------------------------------------------------------------------------------------- summary
def _lat(rec: dict[str, Any], bs: int) -> dict[str, Any] | None:
    return next((b for b in rec.get("latency") or [] if b.get("batch_size") == bs), None)


def summary_rows(out: Path, since: float | None = None) -> list[dict[str, Any]]:
    """One row per metrics.json under OUT/<round>/: the figures the summary names. ``since`` (a time.time()):
    files older than it are left out (an earlier run into the same OUT, maybe on another card)."""
    rows = []
    for path in sorted(out.glob(f"*/{TASK}/*/*/seed*/metrics.json")):
        if since is not None and path.stat().st_mtime < since:
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            rows.append({"file": str(path.relative_to(out)), "error": f"{type(exc).__name__}: {exc}"})
            continue
        mem = rec.get("memory") or {}
        parts = path.relative_to(out).parts
        row: dict[str, Any] = {
            "round": parts[0], "model": parts[2], "variant": rec.get("variant"),
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


def write_summary(out: Path, env: dict[str, Any], stages: list[dict[str, Any]], args: dict[str, Any],
                  since: float | None = None) -> dict:
    """OUT/summary.json and OUT/summary.md from the stage records and every metrics.json written (since
    ``since``, when given)."""
    rows = summary_rows(out, since)
    card = env.get("gpu_name") or env.get("nvml_gpu_name") or f"no GPU ({env.get('device')})"
    summary = {"card": card, "driver": env.get("driver"), "env": env, "args": args, "stages": stages,
               "rows": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "ok": bool(stages) and all(s["status"] == "ok" for s in stages)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    bss = sorted({int(k.rsplit("b", 1)[1]) for r in rows for k in r if k.startswith("p50_ms_b")})
    lines = [f"# GPU check: {card}", "",
             f"driver {env.get('driver')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"device {env.get('device')}, created {summary['created']}", "",
             *[f"- model {label}: {m.get('spec') or 'not run: ' + str(m.get('reason'))}"
               for label, m in (env.get("models") or {}).items()], "",
             "| stage | status | wall s | note |", "|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['wall_s']:.1f} | {s.get('reason') or ''} |" for s in stages]
    head = ["round", "model", "variant", "dev acc", "enc params"]
    for bs in bss:
        head += [f"p50 ms b{bs}", f"baseline b{bs}", f"speedup b{bs}"]
    head += ["weights MiB", "activ. MiB", "NVML MiB", "memory"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['file']} | error: {r['error']} |")
            continue
        cells = [r["round"], r["model"], r["variant"], _fmt(r["dev_accuracy"], "acc"), _fmt(r["params_encoder"])]
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
    run = Runner(out, args.budget_s, args.stage_timeout_s, args.deadline_s)
    started = time.time() - 1.0  # metrics.json older than this run are not its rows (file times are coarse)

    t = time.perf_counter()
    facts = env_facts(args.device)
    run.record("env", "ok" if "env_error" not in facts else "failed", time.perf_counter() - t,
               reason=facts.get("env_error"))

    try:
        spec, reason, error = find_mpnet(args.mpnet)
    except Exception as exc:  # noqa: BLE001 - the MiniLM stages and the summary must not depend on it
        spec, reason, error = None, f"looking for MPNet-base failed: {type(exc).__name__}: {exc}", True
    models = [ModelRun(args.model_label, args.model, search_max=args.search_max, dtypes=list(args.dtypes)),
              ModelRun(MPNET_LABEL, spec, MPNET_PREFIX, args.mpnet_search_max, list(args.mpnet_dtypes), reason, error)]
    facts["models"] = {m.label: {"spec": m.spec, "reason": m.reason} for m in models}
    (out / "env.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    timing = ["--batch-sizes", *map(str, args.batch_sizes), "--seq-len", str(args.max_length),
              "--warmup", str(args.warmup), "--min-iters", str(args.min_iters),
              "--min-seconds", str(args.min_seconds), "--threads", str(args.threads),
              "--memory-isolation", args.memory_isolation]
    for m, kind, round_, variant in stage_plan(models):
        name = m.stage(kind if kind != "measure" else f"measure_{round_}_{variant}")
        if m.spec is None:
            run.record(name, "failed" if m.error else "skipped", reason=m.reason)
            continue
        if kind == "finetune":
            run.run(name, cli(
                "finetune", "--task", TASK, "--model", m.spec, "--seed", "0", "--profile", "gpu-check",
                "--data-dir", data_dir, "--train-max", str(args.train_max), "--search-max", str(m.search_max),
                *(["--dev-max", str(args.dev_max)] if args.dev_max else []), "--max-length", str(args.max_length),
                "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                "--device", args.device, "--ckpt", str(m.ckpt(out, "finetune")),
                "--metrics", str(m.step_json(out, "finetune")), "--no-progress"), env=env)
            continue
        if kind == "approximate":
            run.run(name, cli(
                "approximate", "--parent", str(m.ckpt(out, "finetune")),
                "--ckpt", str(m.ckpt(out, "finetune+axformer")),
                "--metrics", str(m.step_json(out, "finetune+axformer")), "--decisions", str(m.decisions(out)),
                "--data-dir", data_dir, "--threads", str(args.threads),
                "--device", args.device, "--no-progress"), needs=(m.stage("finetune"),), env=env)
            continue
        needs = tuple(m.stage(s) for s in (("finetune",) if variant == "finetune" else ("finetune", "approximate")))
        records = [str(m.step_json(out, v)) for v in dict.fromkeys(("finetune", variant))]
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
            "measure", "--task", TASK, "--seed", "0", "--profile", "gpu-check", "--model", m.label,
            "--variant-name", vname, "--baseline", str(m.ckpt(out, "finetune")), "--variant", str(m.ckpt(out, variant)),
            "--step-json", *records, "--device", args.device, *extra, *timing, "--data-dir", data_dir,
            "--metrics", str(metrics_path(out, round_, vname, m.label))), needs=needs, env=env)

    if not args.no_pytest:
        if not facts.get("packages", {}).get("pytest"):
            run.record("pytest_cuda", "skipped", reason="pytest is not installed")
        else:
            penv = {**env, "AXFORMER_DATA": data_dir}
            run.run("pytest_cuda", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                                    "tests/test_gpu.py"], env=penv)
            run.run("pytest_bnb", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "tests/test_quantize.py", "-k", "bnb or bitsandbytes"], env=penv)

    summary = write_summary(out, facts, run.stages, {k: v for k, v in vars(args).items()}, since=started)
    failed = [s["stage"] for s in run.stages if s["status"] == "failed"]
    print(f"gpu_check: {summary['card']}: {len(run.stages) - len(failed)} of {len(run.stages)} stages not failed, "
          f"{run.elapsed():.0f} s; summary in {out / 'summary.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
