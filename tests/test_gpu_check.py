"""scripts/gpu_check.py: the summary it writes, and that one failed stage does not stop the others.
The whole check on CPU (tiny random model, a few rows) is an integration test; on a GPU it is run by hand."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_metrics(variant: str, p50: float, base: float, weights: int, dtype: str) -> dict:
    return {"variant": variant, "metric": {"dev": 0.875}, "size": {"params_encoder": 1000},
            "latency": [{"batch_size": bs, "p50_ms": p50 * bs, "baseline_p50_ms": base * bs, "speedup": base / p50,
                         "dtypes": {"measure_dtype": dtype, "baseline": [dtype], "variant": [dtype]},
                         "tf32": {"matmul_allow_tf32": False}, "library_log": None} for bs in (1, 32)],
            "memory": {"source": "torch.cuda", "weights_bytes": weights, "activation_peak_bytes": 2**20,
                       "nvml_used_bytes": 500 * 2**20, "reason": None}}


def test_summary_names_the_card_and_every_row(tmp_path):
    gc = load_script()
    rows = (("fp32", "finetune", 2.0, 90 * 2**20), ("fp32", "finetune+axformer", 1.0, 60 * 2**20),
            ("int8", "finetune+int8", 1.5, 30 * 2**20))
    for round_, variant, p50, w in rows:
        path = gc.metrics_path(tmp_path, round_, variant, "minilm")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(fake_metrics(variant, p50, 2.0, w, "float32")))
    bad = gc.metrics_path(tmp_path, "fp16", "finetune", "minilm")
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    env = {"gpu_name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06", "torch": "2.11.0", "torch_cuda": "13.0",
           "device": "cuda"}
    stages = [{"stage": "finetune", "status": "ok", "wall_s": 12.0},
              {"stage": "measure_bf16_finetune", "status": "failed", "wall_s": 3.0, "reason": "exit 1: boom"}]
    summary = gc.write_summary(tmp_path, env, stages, {"device": "cuda"})
    assert summary["card"] == "NVIDIA H100 80GB HBM3" and summary["ok"] is False
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    rows = {(r.get("round"), r.get("variant")): r for r in on_disk["rows"]}
    assert rows[("fp32", "finetune+axformer")]["speedup_b1"] == 2.0
    assert rows[("fp32", "finetune+axformer")]["weights_bytes"] == 60 * 2**20
    assert rows[("int8", "finetune+int8")]["p50_ms_b32"] == 1.5 * 32
    assert any("error" in r for r in on_disk["rows"])  # the corrupt file is reported, not fatal
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# GPU check: NVIDIA H100 80GB HBM3") and "driver 580.65.06" in md
    assert "| measure_bf16_finetune | failed | 3.0 | exit 1: boom |" in md
    assert "| fp32 | finetune+axformer | 0.8750 | 1000 | 1.00 | 2.00 | 2.00 |" in md
    assert "60.0" in md and "error:" in md


def _run(tmp_path, data_dir, *extra, timeout=900):
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "out"),
                           "--device", "cpu", "--no-pytest", "--threads", "1", *extra],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_failed_stage_is_logged_and_the_summary_still_written(tmp_path, data_dir):
    proc = _run(tmp_path, data_dir, "--model", str(tmp_path / "no-such-model"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    status = {s["stage"]: s for s in summary["stages"]}
    assert status["finetune"]["status"] == "failed" and "does not exist" in status["finetune"]["reason"]
    assert status["approximate"]["status"] == "skipped" and "needs finetune" in status["approximate"]["reason"]
    assert status["measure_fp32_finetune"]["status"] == "skipped"
    assert "does not exist" in (out / "logs" / "finetune.log").read_text()
    assert "finetune: failed" in proc.stdout and (out / "summary.md").is_file()


@pytest.mark.integration
def test_whole_check_on_cpu_with_a_tiny_model(tmp_path, data_dir):
    proc = _run(tmp_path, data_dir, "--model", "tiny-random", "--train-max", "32", "--search-max", "16",
                "--dev-max", "16", "--max-length", "32", "--batch-size", "8", "--batch-sizes", "1", "2",
                "--min-seconds", "0", "--warmup", "1", "--min-iters", "3", "--dtypes", "fp32", "bf16",
                "--memory-isolation", "off", timeout=1500)
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["card"] == "no GPU (cpu)"
    rows = {(r["round"], r["variant"]) for r in summary["rows"]}
    assert rows == {(d, v) for d in ("fp32", "bf16") for v in ("finetune", "finetune+axformer")}
    rec = json.loads(load_script().metrics_path(out, "bf16", "finetune+axformer", "minilm").read_text())
    assert rec["latency"][0]["dtypes"]["baseline"] == ["bfloat16"] and rec["search"]["device"] == "cpu"
    assert (out / "decisions.json").is_file() and (out / "env.json").is_file()
