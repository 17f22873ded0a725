"""ONNX export and ONNX Runtime int8 (axformer.compress.export): pruned tiny BERTs with per-layer head counts, a skipped
block and hard attention match PyTorch through ORT; the int8_ort quantize step through the CLI; the error
when the `ort` extra is missing."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from axformer.surgery import elements, hard_attention
from axformer.compress import export
from axformer.compress import runtimes
from axformer.encoders import models
from axformer.cli import main
from axformer.utils import ConfigError

pytest.importorskip("onnxruntime", reason='the `ort` extra: pip install -e ".[ort]"')

VOCAB = 100


def pruned_model(hard: bool) -> BertForSequenceClassification:
    """3 layers with 2, 3 and 4 heads left, one FFN narrowed, layer 2's attention block skipped."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_hidden_layers=3,
                     intermediate_size=128, max_position_embeddings=64, num_labels=2)
    m = BertForSequenceClassification(cfg).eval()
    elements.remove_heads(m, 0, [1, 2])
    elements.remove_neurons(m, 0, list(range(40)))
    elements.remove_heads(m, 1, [3])
    elements.skip_attention(m, 2)
    if hard:
        hard_attention.enable(m, [0, 1], 5)  # K = 5 < the sequence lengths below: the top-K path is taken
    return m


def batch(b: int, t: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, t // 2:] = 0  # one padded row: the mask path must survive the export
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.slow
@pytest.mark.parametrize("hard", [False, True])
def test_pruned_export_matches_pytorch_and_int8_is_close(tmp_path, hard):
    m = pruned_model(hard)
    arch = elements.architecture(m)["layers"]
    assert [len(x["heads"]) for x in arch] == [2, 3, 0] and arch[2]["attn_skipped"]
    assert hard_attention.enabled_layers(m) == ([0, 1] if hard else [])
    info = export.export_onnx(m, tmp_path / "f.onnx", batch(2, 8, 0), check=[batch(4, 16, 1), batch(3, 40, 2)])
    assert info["check_rows"] == 7 and info["check_max_abs_diff"] <= export.DEFAULT_ATOL
    assert info["bytes"] == (tmp_path / "f.onnx").stat().st_size  # weights inside the one file

    fp32 = runtimes.OrtModel.like(tmp_path / "f.onnx", m, 1, batch(2, 8, 0))
    x = batch(5, 23, 3)  # batch and length never seen at export: dynamic axes
    with torch.inference_mode():
        ref = m(**x).logits
        got = fp32(**x).logits
    assert type(fp32(**x)) is type(m(**x)) and got.shape == ref.shape
    diff = export.max_abs_diff(ref, got)
    assert diff <= export.DEFAULT_ATOL
    if hard:  # hard attention changes the logits (tiny here: random weights), and ORT follows the hard model
        hard_attention.disable(m)
        with torch.inference_mode():
            dense_diff = export.max_abs_diff(m(**x).logits, got)
        assert dense_diff > 1e-5 and dense_diff > 100 * diff

    q = export.quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx")
    # Linear layers left: layer 0 and 1: q, k, v, attention out, FFN in, FFN out; layer 2: FFN in, out
    assert q["n_linear_quantized"] == 14 and q["n_linear_total"] == 16 and len(q["skipped_nodes"]) == 2
    assert q["bytes"] < info["bytes"]
    int8 = runtimes.OrtModel.like(tmp_path / "q.onnx", m, 1, batch(2, 8, 0))
    with torch.inference_mode():
        qlogits = int8(**x).logits
    err = export.max_abs_diff(got, qlogits)
    assert 0 < err < 0.05 * float(got.abs().max()) + 1e-3  # int8 rounding: not exact, but close


def test_static_int8_calibrates_on_given_rows(tmp_path):
    m = pruned_model(False)
    export.export_onnx(m, tmp_path / "f.onnx", batch(2, 8, 0))
    q = export.quantize_onnx(tmp_path / "f.onnx", tmp_path / "s.onnx", "static",
                             calibration=[batch(8, 16, 5), batch(8, 12, 6)])
    assert q["calibration_rows"] == 16 and q["calibration_split"] == "search" and q["n_linear_quantized"] == 14
    x = batch(4, 16, 7)
    int8 = runtimes.OrtModel.like(tmp_path / "s.onnx", m, 1, x)
    with torch.inference_mode():
        ref = m(**x).logits
    assert 0 < export.max_abs_diff(ref, int8(**x).logits) < 0.05 * float(ref.abs().max()) + 1e-3
    with pytest.raises(ConfigError, match="calibration"):
        export.quantize_onnx(tmp_path / "f.onnx", tmp_path / "t.onnx", "static")


@pytest.mark.slow
def test_openvino_int8_of_a_pruned_hard_attention_model(tmp_path):
    pytest.importorskip("openvino", reason='the `ov` extra: pip install -e ".[ov]"')
    pytest.importorskip("nncf", reason='the `ov` extra: pip install -e ".[ov]"')
    m = pruned_model(True)
    info = export.export_onnx(m, tmp_path / "f.onnx", batch(2, 8, 0), check=[batch(4, 16, 1)], runtime="ov")
    assert info["check_runtime"] == "ov" and info["check_max_abs_diff"] <= export.DEFAULT_ATOL
    q = export.quantize_ov(tmp_path / "f.onnx", tmp_path / "q.xml", [batch(8, 16, 5), batch(8, 12, 6)])
    assert q["calibration_rows"] == 16 and q["fake_quantize_ops"] > 0 and len(q["skipped_nodes"]) == 2
    x = batch(5, 23, 3)
    int8 = runtimes.OvModel.like(tmp_path / "q.xml", m, 1, x)
    with torch.inference_mode():
        ref = m(**x).logits
        got = int8(**x).logits
    assert got.shape == ref.shape
    assert 0 < export.max_abs_diff(ref, got) < 0.1 * float(ref.abs().max()) + 1e-3


def test_export_refuses_a_mismatch(tmp_path, monkeypatch):
    m = pruned_model(False)
    real = runtimes._run
    monkeypatch.setattr(runtimes, "_run", lambda *a: [o + 1e-3 for o in real(*a)])
    with pytest.raises(RuntimeError, match="does not match PyTorch"):
        export.export_onnx(m, tmp_path / "f.onnx", batch(2, 8, 0), check=[batch(2, 8, 1)])


def _hide_ort(monkeypatch):
    # None in sys.modules makes every import of the name fail with ImportError, as when it is not installed
    for name in runtimes.RUNTIME_PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch, capsys):
    _hide_ort(monkeypatch)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[ort\]"'):
        runtimes.require_ort()
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[ov\]"'):
        runtimes.require_runtime("int8_ov")
    # the CLI stops before loading any checkpoint (these paths do not exist)
    rc = main(["measure", "--task", "sst2", "--variant-name", "finetune+int8_ort", "--baseline",
               str(tmp_path / "nope"), "--variant", str(tmp_path / "nope"), "--quantize", "int8_ort",
               "--metrics", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert rc == 2 and 'pip install -e ".[ort]"' in err and "nope" not in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_cli_measure_int8_ort_of_a_pruned_checkpoint(tmp_path, data_dir):
    """finetune (tiny random BERT, real SST-2 rows) -> pruned + hard attention checkpoint -> measure int8_ort."""
    common = ["--data-dir", str(data_dir), "--threads", "1"]
    assert main(["finetune", "--task", "sst2", "--model", models.TINY, "--train-max", "16", "--search-max", "16",
                 "--dev-max", "24", "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--no-progress",
                 "--ckpt", str(tmp_path / "ft"), "--metrics", str(tmp_path / "ft.json"), *common]) == 0
    m, tok = models.load_checkpoint(tmp_path / "ft")
    elements.remove_heads(m, 0, [0, 3])
    elements.skip_ffn(m, 1)
    hard_attention.enable(m, [0], 4)
    models.save_checkpoint(m, tok, tmp_path / "pr")
    modes = ["int8_ort", "int8_ort_static"]
    try:
        runtimes.require_runtime("int8_ov")
        modes.append("int8_ov")
    except ConfigError:  # the `ov` extra is not installed: ORT only
        pass
    for mode in modes:
        out = tmp_path / mode / "metrics.json"
        assert main(["measure", "--task", "sst2", "--variant-name", f"finetune+{mode}", "--baseline",
                     str(tmp_path / "ft"), "--variant", str(tmp_path / "pr"), "--quantize", mode, "--step-json",
                     str(tmp_path / "ft.json"), "--metrics", str(out), "--batch-sizes", "2", "--seq-len", "16",
                     "--warmup", "1", "--min-iters", "3", "--min-seconds", "0", "--passes", "1",
                     "--pass-retries", "0", *common]) == 0  # one pass, in a fresh process: the runtime files reload
        rec = json.loads(out.read_text())
        q = rec["quantize"]
        runtime = "ov" if mode == "int8_ov" else "ort"
        (lat,) = rec["latency"]
        assert lat["n_passes"] == 1 and lat["passes"][0]["n_iters"] >= 3 and set(lat["references"]) == {f"{runtime}_fp32"}
        backend = "openvino_nncf" if mode == "int8_ov" else f"onnxruntime_{runtimes.ORT_MODES[mode]}"
        assert q["backend"] == backend and q["threads"] == 1
        assert q["export"]["check_rows"] == 24 and q["export"]["check_max_abs_diff"] <= export.DEFAULT_ATOL
        assert q["calibration_rows"] == (None if mode == "int8_ort" else 16)  # the search split's 16 rows
        assert rec["size"]["bytes_on_disk"] == q["bytes"] < q["fp32_bytes"]
        lat = rec["latency"][0]
        ref = lat["references"][f"{runtime}_fp32"]
        assert lat["speedup"] > 0 and ref["p50_ms"] > 0 and ref["speedup"] == pytest.approx(ref["p50_ms"] / lat["p50_ms"])
        assert 0.0 <= rec["metric"]["dev"] <= 1.0 and rec["metric"]["n_dev"] == 24


@pytest.mark.slow
def test_workflow_stops_before_any_job_without_the_extra(tmp_path, data_dir):
    """bench.yaml has int8_ort variants: with onnxruntime hidden, snakemake fails at config check time."""
    import os
    import subprocess

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    hide = tmp_path / "hide"
    hide.mkdir()
    # sitecustomize runs at interpreter start: None in sys.modules makes find_spec / import see no package
    (hide / "sitecustomize.py").write_text("import sys\nfor n in ('onnxruntime', 'onnx', 'onnxscript', 'openvino'):\n"
                                           "    sys.modules[n] = None\n")
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(hide), str(repo), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory",
                          str(tmp_path / "w"), "--configfile", str(repo / "workflow" / "config" / "bench.yaml"),
                          "-n"], capture_output=True, text=True, env=env, timeout=300)
    err = res.stdout + res.stderr
    assert res.returncode != 0
    # the first offending step (sorted) is named: int8_ort before int8_ov
    assert "config key 'steps.int8_ort.args.quantize'" in err and 'pip install -e ".[ort]"' in err, err[-2000:]
    assert "Building DAG" not in err


# ------------------------------------------------------------------------------------------------ threading


def tiny_matmul_onnx(path) -> str:
    """A one-MatMul ONNX graph (dynamic batch): enough for a session / compiled model to carry settings."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return str(path)


def test_ort_session_carries_the_threading_settings(tmp_path):
    path = tiny_matmul_onnx(tmp_path / "t.onnx")
    got = runtimes.ort_session_threading(runtimes.session(path, 3))
    assert {k: got[k] for k in runtimes.ort_settings(3)} == runtimes.ort_settings(3)
    assert (got["intra_op_num_threads"], got["inter_op_num_threads"], got["execution_mode"]) == (3, 1, "sequential")
    assert got["intra_op_allow_spinning"] is False and got["inter_op_allow_spinning"] is False
    # an override reaches the session (the "before" settings of scripts/timing_repeatability.py use this path)
    other = runtimes.ort_session_threading(runtimes.session(path, 2, {"intra_op_allow_spinning": True,
                                                                  "execution_mode": "parallel",
                                                                  "inter_op_num_threads": 2}))
    assert other["intra_op_allow_spinning"] is True and other["execution_mode"] == "parallel"
    assert (other["intra_op_num_threads"], other["inter_op_num_threads"]) == (2, 2)
    with pytest.raises(ConfigError, match="unknown ORT setting"):
        runtimes.ort_settings(2, spin=True)
    with pytest.raises(ConfigError, match="execution_mode"):
        runtimes.ort_settings(2, execution_mode="fast")
    with pytest.raises(ConfigError, match="threads must be an integer"):
        runtimes.session(path, 0)


def test_openvino_compiled_model_carries_the_threading_settings(tmp_path):
    ov = pytest.importorskip("openvino", reason='the `ov` extra: pip install -e ".[ov]"')
    path = tiny_matmul_onnx(tmp_path / "t.onnx")
    cfg = runtimes.ov_config(1)
    assert {"INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "ENABLE_CPU_PINNING", "SCHEDULING_CORE_TYPE",
            "ENABLE_HYPER_THREADING"} <= set(cfg)
    got = runtimes.ov_compiled_threading(ov.Core().compile_model(path, "CPU", cfg))
    assert got["INFERENCE_NUM_THREADS"] == 1 and got["NUM_STREAMS"] == 1 and got["PERFORMANCE_HINT"] == "LATENCY"
    assert got["INFERENCE_PRECISION_HINT"] == "f32"
    for key, value in runtimes.OV_THREADING.items():
        assert got[key] == value, key
    flipped = runtimes.ov_config(2, ENABLE_CPU_PINNING=not runtimes.OV_THREADING["ENABLE_CPU_PINNING"],
                               TBB_PARTITIONER="AUTO")
    got2 = runtimes.ov_compiled_threading(ov.Core().compile_model(path, "CPU", flipped))
    assert got2["INFERENCE_NUM_THREADS"] == 2 and got2["TBB_PARTITIONER"] == "AUTO"
    assert got2["ENABLE_CPU_PINNING"] is (not runtimes.OV_THREADING["ENABLE_CPU_PINNING"])
    with pytest.raises(ConfigError, match="unknown OpenVINO setting"):
        runtimes.ov_config(1, PINNING=False)


def test_runtime_models_report_their_threading(tmp_path):
    m = pruned_model(False)
    export.export_onnx(m, tmp_path / "f.onnx", batch(2, 8, 0))
    ort_model = runtimes.OrtModel.like(tmp_path / "f.onnx", m, 2, batch(2, 8, 0))
    thr = runtimes.runtime_threading(ort_model)
    assert thr["onnxruntime"]["intra_op_num_threads"] == 2 and thr["onnxruntime"]["intra_op_allow_spinning"] is False
    assert thr["torch"]["intra_op_threads"] == torch.get_num_threads()
    assert set(runtimes.runtime_threading(m)) == {"torch"}  # a torch model: torch's settings only
    if pytest.importorskip("openvino") is not None:
        ov_model = runtimes.OvModel.like(tmp_path / "f.onnx", m, 1, batch(2, 8, 0), {"ENABLE_CPU_PINNING": False})
        got = ov_model.threading()
        assert got["INFERENCE_NUM_THREADS"] == 1 and got["ENABLE_CPU_PINNING"] is False


def test_prepare_process_sets_interop_threads_and_omp_env_before_torch():
    """In a fresh process (torch's inter-op pool can only be sized before parallel work, libgomp reads its
    environment when torch loads it)."""
    import subprocess

    code = ("import os, json\n"
            "os.environ.pop('OMP_WAIT_POLICY', None)\n"
            "from axformer import device\n"
            "device.prepare_process()\n"
            "import torch\n"
            "torch.ones(64, 64) @ torch.ones(64, 64)\n"
            "late = device.set_interop_threads(2)\n"
            "print(json.dumps({'thr': device.torch_threading(), 'late': late}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    thr = res["thr"]
    from axformer.device import OMP_ENV, TORCH_INTEROP_THREADS

    assert thr["interop_threads"] == TORCH_INTEROP_THREADS
    assert thr["prepare_process"]["interop"]["applied"] is True
    assert thr["prepare_process"]["omp_env_before_torch"] is True
    assert all(thr["env"][k] == v for k, v in OMP_ENV.items())
    # torch refuses a late change; it is recorded, not raised, and the pool keeps its size
    assert res["late"]["applied"] is False and res["late"]["reason"]


def test_torch_int8_uses_the_explicit_engine():
    from axformer.compress.quantize import TORCH_INT8_ENGINE, quantize
    from axformer.compress.quantize_config import QuantizeConfig

    prev = torch.backends.quantized.engine
    other = next((e for e in torch.backends.quantized.supported_engines if e not in (TORCH_INT8_ENGINE, "none")), None)
    if other is None:
        pytest.skip("only one quantized engine in this torch build")
    torch.backends.quantized.engine = other  # an earlier import left another engine set
    try:
        _, info = quantize(pruned_model(False), QuantizeConfig(backend="torch_dynamic", device="cpu"))
    finally:
        torch.backends.quantized.engine = prev
    assert info["engine"] == TORCH_INT8_ENGINE
