"""Tests for axformer.measurement.measure (CPU only, tiny models, tiny timing budgets)."""

from __future__ import annotations

import copy
import json
import os
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification

from axformer.measurement import measure as M
from axformer.measurement.measure_config import MeasureConfig
from axformer.measurement import cost, nvml
from axformer.utils import ConfigError, atomic_write_json
from tiny_models import tiny_bert

H, HEADS, INTER, LAYERS, LABELS = 16, 4, 32, 2, 2


def tiny_model(seed: int = 0) -> BertForSequenceClassification:
    return tiny_bert(seed, vocab_size=40, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=INTER, max_position_embeddings=64, num_labels=LABELS)


def tiny_cfg(**kw) -> MeasureConfig:
    # one thread: the test host's cores are shared, and oversubscribed OpenMP threads make timings erratic
    base = dict(batch_sizes=[1, 2], seq_len=16, warmup=2, min_iters=5, min_seconds=0.2, threads=1,
                memory_isolation=False)
    base.update(kw)
    return MeasureConfig(**base)


TEXTS_A = ["the movie was great", "a bad film"]
TEXTS_B = ["a film", "the movie"]


class Recorder(nn.Module):
    """Wraps a model; appends its name to a shared list on each forward; optional sleep to be slow."""

    def __init__(self, model: nn.Module, name: str, log: list | None = None, sleep_s: float = 0.0):
        super().__init__()
        self.model, self.name, self.log, self.sleep_s = model, name, log, sleep_s

    def forward(self, **inputs):
        out = self.model(**inputs)
        if self.log is not None:
            self.log.append(self.name)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return out


# --------------------------------------------------------------------------------------------- inputs/stats


def test_make_inputs_pads_and_cycles(tiny_tokenizer):
    enc = M.make_inputs(tiny_tokenizer, TEXTS_A, TEXTS_B, batch_size=5, seq_len=12)
    assert enc["input_ids"].shape == (5, 12)
    assert enc["attention_mask"].shape == (5, 12)
    # cycling: row 2 is the same text pair as row 0
    assert torch.equal(enc["input_ids"][0], enc["input_ids"][2])
    single = M.make_inputs(tiny_tokenizer, TEXTS_A, None, batch_size=1, seq_len=8)
    assert single["input_ids"].shape == (1, 8)
    with pytest.raises(ConfigError):
        M.make_inputs(tiny_tokenizer, [], None, 1, 8)


def test_latency_stats():
    s = M.LatencyStats.from_values([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s.p50_ms == 3.0 and s.n_iters == 5 and s.mean_ms == 3.0
    assert s.p90_ms == pytest.approx(4.6)
    assert s.std_ms == pytest.approx(1.5811388, rel=1e-6)


# --------------------------------------------------------------------------------------------- schema


def test_measure_pair_schema_complete(tiny_tokenizer, tmp_path):
    base, var = tiny_model(0), tiny_model(1)
    var.save_pretrained(tmp_path / "ckpt")
    cfg = tiny_cfg(min_seconds=0.1)
    res = M.measure_pair(base, var, tiny_tokenizer, TEXTS_A, TEXTS_B, cfg, variant_dir=tmp_path / "ckpt")
    assert set(res) == {"latency", "memory", "size", "flops", "env", "iter_ms"}
    # the per-iteration times of each interleaved job (round order) are what the latency block summarises
    for block in res["latency"]:
        it = res["iter_ms"][block["batch_size"]]
        assert len(it["baseline"]) == len(it["variant"]) == block["n_iters"]
        assert np.median(it["variant"]) == pytest.approx(block["p50_ms"])
        assert np.median(it["baseline"]) == pytest.approx(block["baseline_p50_ms"])
    lat_keys = {"device", "batch_size", "seq_len", "p50_ms", "p90_ms", "mean_ms", "std_ms", "n_iters", "threads",
                "baseline_p50_ms", "baseline_p90_ms", "speedup"}
    assert [b["batch_size"] for b in res["latency"]] == [1, 2]
    for block in res["latency"]:
        assert lat_keys <= set(block)
        assert block["seq_len"] == 16 and block["n_iters"] >= 5 and block["device"] == "cpu"
        assert block["threads"] == cfg.threads
        assert block["speedup"] == pytest.approx(block["baseline_p50_ms"] / block["p50_ms"])
        assert block["dtypes"] == {"measure_dtype": "fp32", "baseline": ["float32"], "variant": ["float32"]}
        assert set(block["tf32"]) >= {"matmul_allow_tf32", "cudnn_allow_tf32"} and block["library_log"] is None
    mem = res["memory"]
    assert {"peak_bytes", "source", "torch_cuda_max_allocated", "nvml_used_bytes", "reason"} <= set(mem)
    # memory_isolation off: the exact tensor bytes of the variant, no per-model peak, the process peak secondary
    assert mem["source"] == "tensors" and mem["peak_bytes"] is None and mem["reason"]
    assert mem["weights_bytes"] == sum(t.numel() * t.element_size() for t in var.state_dict().values())
    assert mem["process_peak_rss_bytes"] > mem["weights_bytes"]
    assert mem["torch_cuda_max_allocated"] is None and mem["nvml_used_bytes"] is None
    size = res["size"]
    assert {"params_total", "params_encoder", "bytes_on_disk"} <= set(size)
    assert size["params_total"] == sum(p.numel() for p in var.parameters())
    assert size["bytes_on_disk"] == (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    for f in res["flops"]:
        assert {"forward_flops", "device_peak_flops", "floor_ms"} <= set(f)
        assert f["forward_flops"] > 0 and f["device_peak_flops"] > 0
        assert f["floor_ms"] == pytest.approx(f["forward_flops"] / f["device_peak_flops"] * 1e3)
    env = res["env"]
    assert {"torch", "transformers", "cuda", "gpu_name", "driver", "cpu", "threads", "git_commit"} <= set(env)
    assert env["threads"] == cfg.threads
    assert env["determinism"]["cublas_workspace_config"] == os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    assert {"deterministic_algorithms", "cudnn_benchmark"} <= set(env["determinism"]) and env["tf32"]
    # the whole result is plain JSON
    atomic_write_json(tmp_path / "metrics.json", res)
    assert json.loads((tmp_path / "metrics.json").read_text())["size"] == size


# --------------------------------------------------------------------------------------------- timing


def test_loop_interleaves(tiny_tokenizer):
    log: list[str] = []
    model = tiny_model()
    models = {"A": Recorder(model, "A", log), "B": Recorder(copy.deepcopy(model), "B", log)}
    inputs = M.make_inputs(tiny_tokenizer, TEXTS_A, TEXTS_B, 1, 16)
    cfg = tiny_cfg(min_seconds=0.0)
    stats = M.time_interleaved(models, inputs, cfg)
    assert stats["A"].n_iters == stats["B"].n_iters >= cfg.min_iters
    assert len(log) == 2 * (cfg.warmup + stats["A"].n_iters)
    assert log == ["A", "B"] * (len(log) // 2)


def test_slow_variant_has_speedup_below_one(tiny_tokenizer):
    base = tiny_model()
    slow = Recorder(copy.deepcopy(base), "slow", sleep_s=0.005)
    inputs = M.make_inputs(tiny_tokenizer, TEXTS_A, TEXTS_B, 1, 16)
    block = M.compare(base, slow, inputs, tiny_cfg())
    assert block["speedup"] < 1.0
    assert block["p50_ms"] >= 5.0


def test_reference_models_are_timed_in_the_same_loop(tiny_tokenizer):
    log: list[str] = []
    base = tiny_model()
    slow_ref = Recorder(copy.deepcopy(base), "ref", log, sleep_s=0.005)
    inputs = M.make_inputs(tiny_tokenizer, TEXTS_A, TEXTS_B, 1, 16)
    block = M.compare(Recorder(base, "A", log), Recorder(copy.deepcopy(base), "B", log), inputs, tiny_cfg(),
                      references={"slow": slow_ref})
    assert log[:3] == ["A", "B", "ref"] and log == ["A", "B", "ref"] * (len(log) // 3)
    ref = block["references"]["slow"]
    assert ref["p50_ms"] >= 5.0 and ref["speedup"] > 1.0
    assert ref["speedup"] == pytest.approx(ref["p50_ms"] / block["p50_ms"])
    assert "references" not in M.compare(base, copy.deepcopy(base), inputs, tiny_cfg())
    with pytest.raises(ConfigError, match="baseline"):
        M.compare(base, base, inputs, tiny_cfg(), references={"baseline": base})


def test_speedup_is_the_ratio_of_medians_over_the_same_rounds(tiny_tokenizer):
    """No timing window is asserted (the host is shared): what holds on any host is that both models are timed
    in the same rounds and the speedup is the ratio of the two medians of those rounds."""
    base = tiny_model()
    inputs = M.make_inputs(tiny_tokenizer, TEXTS_A, TEXTS_B, 2, 16)
    samples: dict[str, list[float]] = {}
    block = M.compare(base, copy.deepcopy(base), inputs, tiny_cfg(), samples=samples)
    assert len(samples["baseline"]) == len(samples["variant"]) == block["n_iters"] >= tiny_cfg().min_iters
    assert block["p50_ms"] == pytest.approx(float(np.median(samples["variant"])))
    assert block["baseline_p50_ms"] == pytest.approx(float(np.median(samples["baseline"])))
    assert block["speedup"] == pytest.approx(block["baseline_p50_ms"] / block["p50_ms"])
    assert all(t > 0 for t in samples["baseline"] + samples["variant"])


# --------------------------------------------------------------------------------------------- devices / NVML


def test_nvml_absent_gives_null_and_reason():
    pynvml = pytest.importorskip("pynvml")
    try:  # the real library call: this test is about a machine without NVML
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("NVML is available on this machine")
    except pynvml.NVMLError:
        pass
    info = nvml.nvml_info()
    assert info["driver"] is None and info["gpu_name"] is None
    assert "NVML" in info["reason"]
    used, reason = nvml.nvml_process_used_bytes()
    assert used is None and "NVML" in reason
    env = M.env_block()
    assert env["driver"] is None and env["nvml_reason"]


def test_cuda_without_cuda_is_config_error(tiny_tokenizer):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    cfg = tiny_cfg(device="cuda")
    base = tiny_model()
    inputs = M.make_inputs(tiny_tokenizer, TEXTS_A, TEXTS_B, 1, 16)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        M.time_interleaved({"a": base}, inputs, cfg)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        M.measure_pair(base, base, tiny_tokenizer, TEXTS_A, TEXTS_B, cfg)
    with pytest.raises(ConfigError):
        MeasureConfig(device="tpu")


# --------------------------------------------------------------------------------------------- size / FLOPs


def hand_flops(B: int, T: int, inters=(INTER,) * LAYERS, attn=(True,) * LAYERS) -> int:
    tok = B * T
    total = 0
    for inter, has_attn in zip(inters, attn):
        if has_attn:
            total += 4 * 2 * H * H * tok  # Q, K, V, attention output
            total += 2 * 2 * B * HEADS * T * T * (H // HEADS)  # scores + context
        total += 2 * H * inter * tok + 2 * inter * H * tok  # FFN in + out
    total += 2 * H * H * B + 2 * H * LABELS * B  # pooler + classifier
    return total


def test_forward_flops_matches_hand_computation():
    model = tiny_model()
    assert cost.forward_flops(model, 2, 8) == hand_flops(2, 8)
    # literal for the default shapes, B=2 T=8: per layer 32768 + 4096 + 32768 ; heads 4096 ; pooler+cls 1152
    assert hand_flops(2, 8) == 2 * (32768 + 8192 + 32768) + 1152


def test_shrinking_linear_reduces_params_and_flops():
    model = tiny_model()
    total0, enc0 = cost.param_counts(model)
    assert total0 == sum(p.numel() for p in model.parameters())
    assert enc0 == sum(p.numel() for p in model.bert.encoder.parameters())
    f0 = cost.forward_flops(model, 2, 8)

    layer = model.bert.encoder.layer[0]
    layer.intermediate.dense = nn.Linear(H, 8)
    layer.output.dense = nn.Linear(8, H)
    total1, enc1 = cost.param_counts(model)
    removed = (H * INTER + INTER) - (H * 8 + 8) + (INTER * H) - (8 * H)
    assert total0 - total1 == removed and enc0 - enc1 == removed
    assert cost.forward_flops(model, 2, 8) == hand_flops(2, 8, inters=(8, INTER)) < f0
    # the pruned model still runs
    model(input_ids=torch.ones(1, 8, dtype=torch.long))

    class NoAttention(nn.Module):  # a skipped attention block: no `.self`
        def forward(self, hidden_states, *args, **kwargs):
            return (hidden_states, None)

    model.bert.encoder.layer[1].attention = NoAttention()
    assert cost.forward_flops(model, 2, 8) == hand_flops(2, 8, inters=(8, INTER), attn=(True, False))


def test_quantized_model_counts_packed_params():
    model = tiny_model()
    total0, enc0 = cost.param_counts(model)
    f0 = cost.forward_flops(model, 1, 8)
    with warnings.catch_warnings():  # torch.ao.quantization deprecation noise
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    assert sum(p.numel() for p in q.parameters()) < total0  # parameters() misses packed weights...
    assert cost.param_counts(q) == (total0, enc0)  # ...param_counts does not
    assert cost.forward_flops(q, 1, 8) == f0
    cfg = tiny_cfg(device="cuda")
    if not torch.cuda.is_available():
        return
    with pytest.raises(ConfigError, match="CPU only"):
        M.check_device(cfg, [q])


def test_bytes_on_disk(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 10)
    (tmp_path / "tokenizer.json").write_text("{}" * 50)
    assert cost.bytes_on_disk(tmp_path) == 110
    with pytest.raises(ConfigError):
        cost.bytes_on_disk(tmp_path / "missing")
