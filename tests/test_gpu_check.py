"""scripts/gpu_check.py: the summary it writes, that one failed stage does not stop the others, where it finds
MPNet-base, the stage order a budget cut leaves and the deadline. The whole check on CPU (tiny random BERT and
MPNet models, a few rows) is an integration test; on a GPU it is run by hand."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their annotations through sys.modules
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
    rows = (("fp32", "minilm", "finetune", 2.0, 90 * 2**20), ("fp32", "minilm", "finetune+axformer", 1.0, 60 * 2**20),
            ("int8", "minilm", "finetune+int8", 1.5, 30 * 2**20),
            ("fp32", gc.MPNET_LABEL, "finetune+axformer", 4.0, 300 * 2**20))
    for round_, label, variant, p50, w in rows:
        path = gc.metrics_path(tmp_path, round_, variant, label)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(fake_metrics(variant, p50, 2.0, w, "float32")))
    bad = gc.metrics_path(tmp_path, "fp16", "finetune", "minilm")
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    env = {"gpu_name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06", "torch": "2.11.0", "torch_cuda": "13.0",
           "device": "cuda", "models": {"minilm": {"spec": "/root/pay/minilm", "reason": None},
                                        gc.MPNET_LABEL: {"spec": None, "reason": "no MPNet-base folder"}}}
    stages = [{"stage": "finetune", "status": "ok", "wall_s": 12.0},
              {"stage": "measure_bf16_finetune", "status": "failed", "wall_s": 3.0, "reason": "exit 1: boom"}]
    summary = gc.write_summary(tmp_path, env, stages, {"device": "cuda"})
    assert summary["card"] == "NVIDIA H100 80GB HBM3" and summary["ok"] is False
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    rows = {(r.get("round"), r.get("model"), r.get("variant")): r for r in on_disk["rows"]}
    assert rows[("fp32", "minilm", "finetune+axformer")]["speedup_b1"] == 2.0
    assert rows[("fp32", "minilm", "finetune+axformer")]["weights_bytes"] == 60 * 2**20
    assert rows[("int8", "minilm", "finetune+int8")]["p50_ms_b32"] == 1.5 * 32
    assert rows[("fp32", gc.MPNET_LABEL, "finetune+axformer")]["speedup_b1"] == 0.5
    assert any("error" in r for r in on_disk["rows"])  # the corrupt file is reported, not fatal
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# GPU check: NVIDIA H100 80GB HBM3") and "driver 580.65.06" in md
    assert "| measure_bf16_finetune | failed | 3.0 | exit 1: boom |" in md
    assert "| fp32 | minilm | finetune+axformer | 0.8750 | 1000 | 1.00 | 2.00 | 2.00 |" in md
    assert f"| fp32 | {gc.MPNET_LABEL} | finetune+axformer | 0.8750 | 1000 | 4.00 | 2.00 | 0.50 |" in md
    assert "- model minilm: /root/pay/minilm" in md and f"- model {gc.MPNET_LABEL}: not run: no MPNet-base folder" in md
    assert "60.0" in md and "300.0" in md and "error:" in md
    # a later run into the same folder lists only its own files, not the earlier run's (maybe another card)
    later = gc.write_summary(tmp_path, env, stages, {"device": "cuda"}, since=time.time() + 60)
    assert later["rows"] == [] and "| fp32 | minilm |" not in (tmp_path / "summary.md").read_text()


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_find_mpnet_folder_cache_parts_or_reason(tmp_path, monkeypatch):
    from axformer.encoders import mpnet_parts

    gc = load_script()
    monkeypatch.setenv(mpnet_parts.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(mpnet_parts, "available", lambda: False)
    shipped = _model_folder(tmp_path / "shipped")
    assert gc.find_mpnet(str(shipped)) == (str(shipped.resolve()), None, False)
    # a given path that is not a model folder is the user's error: the MPNet stages fail, naming it
    spec, reason, error = gc.find_mpnet(str(tmp_path / "nope"))
    assert spec is None and error and "nope" in reason and "model.safetensors" in reason
    assert gc.find_mpnet("none") == (None, "MPNet stages turned off (--mpnet none)", False)
    # auto with nothing there: skipped (not an error), the reason says how to provide it
    spec, reason, error = gc.find_mpnet("auto")
    assert spec is None and not error and "GPU_CHECK_MPNET" in reason and mpnet_parts.INSTALL in reason
    assert gc.find_mpnet(gc.MPNET_LABEL)[2] is True  # asked for by name, and absent
    # an interrupted extraction (no marker) is not taken; the verified one is
    cached = _model_folder(tmp_path / "cache" / mpnet_parts.FOLDER)
    assert gc.find_mpnet("auto")[0] is None
    (cached / mpnet_parts._DONE).write_text("x")
    assert gc.find_mpnet("auto") == (str(cached), None, False)
    (cached / mpnet_parts._DONE).unlink()
    monkeypatch.setattr(mpnet_parts, "available", lambda: True)  # the parts: the CLI extracts them itself
    assert gc.find_mpnet("auto") == (gc.MPNET_LABEL, None, False)


def test_stage_plan_puts_mpnet_before_minilm_extra_rounds():
    gc = load_script()
    minilm = gc.ModelRun("minilm", "minilm", dtypes=["fp32", "int8", "fp16", "bf16"])
    mpnet = gc.ModelRun(gc.MPNET_LABEL, "x", gc.MPNET_PREFIX, dtypes=["fp32", "int8", "fp16"])
    names = [m.stage(kind if kind == "finetune" or kind == "approximate" else f"measure_{r}_{v}")
             for m, kind, r, v in gc.stage_plan([minilm, mpnet])]
    assert names[:4] == ["finetune", "approximate", "measure_fp32_finetune", "measure_fp32_finetune+axformer"]
    assert names[4:6] == ["mpnet_finetune", "mpnet_approximate"]
    mp = [n for n in names if n.startswith("mpnet_measure_")]
    assert mp == [f"mpnet_measure_{d}_{v}" for d in ("fp32", "int8", "fp16") for v in ("finetune", "finetune+axformer")]
    last_mpnet = max(i for i, n in enumerate(names) if n.startswith("mpnet_"))
    assert names[last_mpnet + 1:] == [f"measure_{d}_{v}" for d in ("int8", "fp16", "bf16")
                                      for v in ("finetune", "finetune+axformer")]
    assert len(names) == len(set(names)) == 2 + 2 + 2 + 6 + 6
    # the MiniLM run keeps the committed layout; MPNet's files go beside it under its label
    out = Path("/o")
    assert minilm.ckpt(out, "finetune") == out / "checkpoints" / "finetune"
    assert mpnet.ckpt(out, "finetune") == out / "checkpoints" / gc.MPNET_LABEL / "finetune"
    assert minilm.decisions(out) != mpnet.decisions(out)


def test_deadline_stops_a_running_stage_and_no_stage_starts_after_it(tmp_path):
    gc = load_script()
    run = gc.Runner(tmp_path, budget_s=100, timeout_s=100, deadline_s=3)
    run.MIN_STAGE_S = 0.5
    t = time.perf_counter()
    assert not run.run("slow", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.perf_counter() - t < 20
    assert run.stages[-1]["status"] == "failed" and "deadline 3 s" in run.stages[-1]["reason"]
    assert not run.run("next", [sys.executable, "-c", "pass"])
    assert run.stages[-1]["status"] == "skipped" and "deadline" in run.stages[-1]["reason"]
    late = gc.Runner(tmp_path, budget_s=0, timeout_s=100)
    time.sleep(0.01)
    assert not late.run("late", [sys.executable, "-c", "pass"]) and "budget" in late.stages[-1]["reason"]


def _run(tmp_path, data_dir, *extra, timeout=900):
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("GPU_CHECK_MPNET", None)
    # never the real MPNet-base on CPU here: --mpnet none unless the test names one
    mpnet = () if "--mpnet" in extra else ("--mpnet", "none")
    return subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "out"),
                           "--device", "cpu", "--no-pytest", "--threads", "1", *mpnet, *extra],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_failed_stage_is_logged_and_the_summary_still_written(tmp_path, data_dir):
    proc = _run(tmp_path, data_dir, "--model", str(tmp_path / "no-such-model"), "--mpnet", str(tmp_path / "no-mpnet"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    status = {s["stage"]: s for s in summary["stages"]}
    assert status["finetune"]["status"] == "failed" and "does not exist" in status["finetune"]["reason"]
    assert status["approximate"]["status"] == "skipped" and "needs finetune" in status["approximate"]["reason"]
    assert status["measure_fp32_finetune"]["status"] == "skipped"
    assert "does not exist" in (out / "logs" / "finetune.log").read_text()
    assert "finetune: failed" in proc.stdout and (out / "summary.md").is_file()
    # a given MPNet path that is no model folder: every MPNet stage fails with that reason, nothing runs
    mp = {k: v for k, v in status.items() if k.startswith("mpnet_")}
    assert len(mp) == 2 + 2 * 3 and all(v["status"] == "failed" and "no-mpnet" in v["reason"] for v in mp.values())
    assert not (out / "logs" / "mpnet_finetune.log").exists()
    assert summary["env"]["models"]["mpnet-base"]["spec"] is None


@pytest.mark.slow
def test_absent_mpnet_is_skipped_with_the_reason(tmp_path, data_dir):
    proc = _run(tmp_path, data_dir, "--model", str(tmp_path / "no-such-model"), "--dtypes", "fp32")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    mp = [s for s in summary["stages"] if s["stage"].startswith("mpnet_")]
    assert mp and all(s["status"] == "skipped" and "--mpnet none" in s["reason"] for s in mp), proc.stdout[-2000:]
    assert "mpnet-base: not run: MPNet stages turned off" in (tmp_path / "out" / "summary.md").read_text()


def _tiny_mpnet_folder(path: Path) -> Path:
    """A random 2-layer MPNet classifier saved as a model folder (safetensors), with MiniLM's tokenizer files: the
    MPNet family's code path through every stage without the 438 MB weights."""
    import shutil

    import torch
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from axformer.encoders.models import embedded_model_dir

    src = Path(embedded_model_dir())
    path.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, path / name)
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, pad_token_id=0, num_labels=2)
    MPNetForSequenceClassification(cfg).save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.slow
@pytest.mark.integration
def test_whole_check_on_cpu_with_tiny_models(tmp_path, data_dir):
    mpnet = _tiny_mpnet_folder(tmp_path / "tiny-mpnet")
    proc = _run(tmp_path, data_dir, "--model", "tiny-random", "--train-max", "32", "--search-max", "16",
                "--dev-max", "16", "--max-length", "32", "--batch-size", "8", "--batch-sizes", "1", "2",
                "--min-seconds", "0", "--warmup", "1", "--min-iters", "3", "--dtypes", "fp32", "bf16",
                "--mpnet", str(mpnet), "--mpnet-search-max", "12", "--mpnet-dtypes", "fp32",
                "--memory-isolation", "off", "--budget-s", "1400", "--deadline-s", "1450", timeout=1500)
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["card"] == "no GPU (cpu)"
    rows = {(r["round"], r["model"], r["variant"]) for r in summary["rows"]}
    assert rows == {(d, "minilm", v) for d in ("fp32", "bf16") for v in ("finetune", "finetune+axformer")} | \
        {("fp32", "mpnet-base", v) for v in ("finetune", "finetune+axformer")}
    gc = load_script()
    rec = json.loads(gc.metrics_path(out, "bf16", "finetune+axformer", "minilm").read_text())
    assert rec["latency"][0]["dtypes"]["baseline"] == ["bfloat16"] and rec["search"]["device"] == "cpu"
    assert (out / "decisions.json").is_file() and (out / "env.json").is_file()
    mp = json.loads(gc.metrics_path(out, "fp32", "finetune+axformer", "mpnet-base").read_text())
    assert mp["model"] == "mpnet-base" and mp["data"]["n_search"] == 12
    assert (out / "decisions_mpnet-base.json").is_file()
    assert [s["stage"] for s in summary["stages"]].index("mpnet_finetune") < \
        [s["stage"] for s in summary["stages"]].index("measure_bf16_finetune")
