"""GPU paths without a GPU (fakes) and with one (tests marked `cuda`, skipped where torch sees no GPU):
device choice, NVML through the device's UUID, per-model memory, dtypes / TF32 / determinism records,
bitsandbytes' per-call log line, and every step on the chosen device."""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import types
import warnings

import pytest
import torch
from torch import nn

from axformer import device as D
from axformer.measurement import measure as M
from axformer.measurement.measure_config import MeasureConfig
from axformer.measurement import memory, nvml
from axformer.utils import ConfigError
from tiny_models import tiny_bert

TEXTS_A = ["the movie was great", "a bad film"]


def tiny_model(seed: int = 0, inter: int = 32, hidden: int = 16, layers: int = 2, vocab: int = 40):
    return tiny_bert(seed, vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                     max_position_embeddings=64, num_labels=2)


def tiny_cfg(**kw) -> MeasureConfig:
    base = dict(batch_sizes=[2], seq_len=16, warmup=1, min_iters=3, min_seconds=0.0, threads=1,
                memory_isolation=False)
    base.update(kw)
    return MeasureConfig(**base)


# ------------------------------------------------------------------------------------------ a fake pynvml
class FakeNVMLError(Exception):
    pass


class FakeMismatch(Exception):  # like pynvml.NVMLLibraryMismatchError: NOT an NVMLError subclass
    pass


class Proc:
    def __init__(self, pid, used):
        self.pid, self.usedGpuMemory = pid, used


def fake_pynvml(uuids=("GPU-aaaa", "GPU-bbbb", "GPU-cccc"), procs=None, by_uuid=True, broken_index=(),
                process_error=None, v2=None, init_error=None, total=80 * 2**30):
    """A pynvml stand-in: devices by index with these UUIDs; ``procs[i]`` the process list of device i."""
    procs = procs or {}
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVMLLibraryMismatchError = FakeMismatch
    m.calls = []

    def init():
        if init_error is not None:
            raise init_error
    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: b"580.65.06"
    m.nvmlDeviceGetCount = lambda: len(uuids)

    def by_index(i):
        m.calls.append(("index", i))
        if i in broken_index:
            raise FakeNVMLError("Insufficient Permissions")
        return i
    m.nvmlDeviceGetHandleByIndex = by_index

    def by_uuid_fn(u):
        m.calls.append(("uuid", u))
        if not by_uuid or u not in uuids:
            raise FakeNVMLError("Not Found")
        return uuids.index(u)
    m.nvmlDeviceGetHandleByUUID = by_uuid_fn
    m.nvmlDeviceGetUUID = lambda h: uuids[h]
    m.nvmlDeviceGetName = lambda h: f"Fake GPU {h}".encode()
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=total, used=0, free=total)

    def processes(h):
        m.calls.append(("procs", h))
        if process_error is not None:
            raise process_error
        return procs.get(h, [])
    m.nvmlDeviceGetComputeRunningProcesses = processes
    if v2 is not None:
        m.nvmlDeviceGetComputeRunningProcesses_v2 = lambda h: v2.get(h, [])
    return m


@pytest.fixture
def use_fake(monkeypatch):
    def install(mod, uuid="bbbb"):
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        monkeypatch.setattr(nvml, "cuda_uuid", lambda device=None: uuid)
        return mod
    return install


def test_nvml_finds_the_device_by_uuid_and_queries_only_it(use_fake):
    me = os.getpid()
    fake = use_fake(fake_pynvml(procs={0: [Proc(me, 111)], 1: [Proc(me - 1, 5), Proc(me, 2 * 2**30)],
                                       2: [Proc(me, 333)]}, broken_index=(0, 2)))
    q = nvml.query("cuda:0")
    assert q["reason"] is None and q["gpu_name"] == "Fake GPU 1" and q["uuid"] == "GPU-bbbb"
    assert q["process_used_bytes"] == 2 * 2**30 and q["driver"] == "580.65.06"
    assert ("procs", 1) in fake.calls and ("procs", 0) not in fake.calls and ("procs", 2) not in fake.calls
    assert not any(c[0] == "index" for c in fake.calls)  # broken GPUs 0 and 2 were never opened


def test_nvml_uuid_scan_skips_inaccessible_gpus(use_fake):
    me = os.getpid()
    use_fake(fake_pynvml(by_uuid=False, broken_index=(0,), procs={2: [Proc(me, 4096)]}), uuid="cccc")
    q = nvml.query("cuda:0")
    assert q["process_used_bytes"] == 4096 and q["found_by"].startswith("uuid scan") and q["gpu_name"] == "Fake GPU 2"


def test_nvml_no_pid_match_none_memory_and_implausible_give_reasons(use_fake):
    me = os.getpid()
    use_fake(fake_pynvml(procs={1: [Proc(me + 7, 100)]}))
    used, reason = nvml.nvml_process_used_bytes(device="cuda:0")
    assert used is None and f"pid {me}" in reason
    use_fake(fake_pynvml(procs={1: [Proc(me, None)]}))
    used, reason = nvml.nvml_process_used_bytes(device="cuda:0")
    assert used is None and "not available" in reason
    use_fake(fake_pynvml(procs={1: [Proc(me, 2**50)]}, total=2**30))
    used, reason = nvml.nvml_process_used_bytes(device="cuda:0")
    assert used is None and "implausible" in reason


def test_nvml_mismatch_error_is_a_reason_or_falls_back_to_v2(use_fake):
    me = os.getpid()
    err = FakeMismatch("Unversioned function called and the pyNVML version does not match the NVML lib version")
    use_fake(fake_pynvml(process_error=err))
    used, reason = nvml.nvml_process_used_bytes(device="cuda:0")
    assert used is None and "FakeMismatch" in reason and "process list" in reason
    use_fake(fake_pynvml(process_error=err, v2={1: [Proc(me, 1234)]}))
    assert nvml.nvml_process_used_bytes(device="cuda:0") == (1234, None)


def test_nvml_init_failure_and_missing_binding_never_raise(use_fake, monkeypatch):
    use_fake(fake_pynvml(init_error=RuntimeError("ctypes: libnvidia-ml.so.1 not found")))
    info = nvml.nvml_info("cuda:0")
    assert info["driver"] is None and "NVML unavailable" in info["reason"] and "RuntimeError" in info["reason"]
    env = M.env_block()
    assert env["driver"] is None and env["nvml_reason"]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    info = nvml.nvml_info()
    assert info["gpu_name"] is None and "not importable" in info["reason"] and "12.535.108" in info["reason"]


def test_cpu_env_block_names_no_gpu(use_fake, monkeypatch):
    """Issue 35 F: a CPU run on a host with a GPU (NVML works, torch even sees CUDA) names no GPU: no name, UUID
    or driver, and NVML is not asked; before, NVML's index-0 fallback put a GPU's UUID into CPU runs."""
    fake = use_fake(fake_pynvml())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU 0")
    for dev in (None, "cpu"):
        env = M.env_block(dev)
        assert env["gpu_name"] is None and env["gpu_uuid"] is None and env["driver"] is None
        assert env["nvml_found_by"] is None and "no GPU queried" in env["nvml_reason"]
    assert fake.calls == []


def test_nvml_without_torch_cuda_does_not_fall_back_to_index_0(use_fake, monkeypatch):
    """torch without CUDA exposes no UUID: NVML must not name GPU 0 as the run's GPU."""
    fake = use_fake(fake_pynvml(), uuid=None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    q = nvml.query(None)
    assert q["gpu_name"] is None and q["uuid"] is None and "no CUDA device" in q["reason"]
    assert not any(c[0] == "index" for c in fake.calls)


def test_cuda_env_block_keeps_nvml_found_by(use_fake, monkeypatch):
    use_fake(fake_pynvml())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU 1")
    env = M.env_block("cuda:0")
    assert env["driver"] == "580.65.06" and env["gpu_uuid"] == "GPU-bbbb" and env["nvml_reason"] is None
    assert env["gpu_name"] == "Fake GPU 1" and env["nvml_found_by"] == "uuid GPU-bbbb"


# ------------------------------------------------------------------------------------------ device / modes
def test_resolve_device():
    assert D.resolve_device("cpu").type == "cpu"
    assert D.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device 'tpu'"):
        D.resolve_device("tpu")
    with pytest.raises(ConfigError, match="only auto, cpu"):
        D.resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            D.resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="measure.dtype"):
        D.torch_dtype("int4")
    assert MeasureConfig(device="auto").device in ("cpu", "cuda")


def test_cli_sets_cublas_workspace_before_any_step(monkeypatch):
    from axformer.cli import main

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with pytest.raises(SystemExit):
        main(["finetune"])  # argparse refuses it, after the process setup
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_timing_mode_turns_determinism_off_and_restores_it():
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        with D.timing_mode():
            assert not torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        state = D.determinism_state()
        assert state["deterministic_algorithms"] and state["deterministic_warn_only"]
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


def test_quiet_logger_keeps_the_first_line_and_drops_the_rest(caplog):
    log = logging.getLogger("bitsandbytes.autograd._functions")
    with caplog.at_level(logging.WARNING):
        with D.quiet_logger("bitsandbytes") as flt:
            for _ in range(5):
                log.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "torch.float32")
        assert flt.first.startswith("MatMul8bitLt: inputs will be cast from torch.float32")
        assert flt.dropped == 4
        assert sum("MatMul8bitLt" in r.getMessage() for r in caplog.records) == 1
        log.warning("MatMul8bitLt: after")  # the filter is gone again
        assert caplog.records[-1].getMessage() == "MatMul8bitLt: after"


@pytest.mark.slow
def test_dtype_recorded_and_applied(tiny_tokenizer):
    base, var = tiny_model(0), tiny_model(1)
    res = M.measure_pair(base, var, tiny_tokenizer, TEXTS_A, None, tiny_cfg(dtype="bf16"))
    lat = res["latency"][0]
    assert lat["dtypes"] == {"measure_dtype": "bf16", "baseline": ["bfloat16"], "variant": ["bfloat16"]}
    assert lat["tf32"]["float32_matmul_precision"] in ("highest", "high", "medium")
    assert res["env"]["tf32"] == lat["tf32"] and "determinism" in res["env"]
    assert res["memory"]["weights_bytes"] == memory.tensor_bytes(var)  # bf16: half of fp32's bytes
    assert memory.tensor_bytes(var) < memory.tensor_bytes(tiny_model(1))
    with pytest.raises(ConfigError, match="measure.dtype"):
        MeasureConfig(dtype="fp8")


def test_int8_variant_keeps_its_dtype_when_measuring_in_fp16():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(tiny_model(), {nn.Linear}, dtype=torch.qint8)
    M.cast_for_measure(q, tiny_cfg(dtype="fp16"))
    assert q.bert.embeddings.word_embeddings.weight.dtype == torch.float32  # untouched: int8 Linears want fp32
    m = M.cast_for_measure(tiny_model(), tiny_cfg(dtype="fp16"))
    assert m.bert.embeddings.word_embeddings.weight.dtype == torch.float16


def _bnb_cpu_reason():
    from axformer.compress.quantize import bitsandbytes_unavailable_reason

    return bitsandbytes_unavailable_reason("cpu")


@pytest.mark.skipif(_bnb_cpu_reason() is not None, reason=f"bitsandbytes on CPU: {_bnb_cpu_reason()}")
def test_bitsandbytes_cast_warning_recorded_once_in_latency_block(tiny_tokenizer):
    from axformer.compress.quantize import quantize
    from axformer.compress.quantize_config import QuantizeConfig

    base = tiny_model(0, inter=64, hidden=64)
    q, _ = quantize(copy.deepcopy(base), QuantizeConfig(backend="bitsandbytes", device="cpu"))  # fp32 inputs
    inputs = M.make_inputs(tiny_tokenizer, TEXTS_A, None, 2, 16)
    block = M.compare(base, q, inputs, tiny_cfg())
    log = block["library_log"]
    assert log is not None and "cast from torch.float32 to float16" in log["first"]
    assert log["silenced"] >= block["n_iters"]  # one line per Linear8bitLt call, all but the first dropped


# ------------------------------------------------------------------------------------------ memory
class FakeAllocator:
    """torch.cuda's allocator counters for a model whose forwards allocate ``act`` bytes on top of weights."""

    def __init__(self, weights: int, act: int):
        self.allocated, self.peak, self.act, self.events = weights, weights, act, []

    def forward_hook(self, *_):
        self.events.append("forward")
        self.peak = max(self.peak, self.allocated + self.act)


def test_cuda_memory_phase_order_and_arithmetic(monkeypatch):
    alloc = FakeAllocator(weights=10_000, act=2_500)
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(cuda, "empty_cache", lambda: alloc.events.append("empty_cache"))

    def read_alloc(*a):
        alloc.events.append("memory_allocated")
        return alloc.allocated

    def reset(*a):
        alloc.events.append("reset")
        alloc.peak = alloc.allocated
    monkeypatch.setattr(cuda, "memory_allocated", read_alloc)
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda *a: alloc.peak)
    monkeypatch.setattr(cuda, "memory_reserved", lambda *a: 3 * 2**20)
    monkeypatch.setattr(nvml, "query", lambda *a, **k: {"process_used_bytes": None, "reason": "fake: no NVML"})
    model = tiny_model()
    model.register_forward_hook(alloc.forward_hook)
    x = {"input_ids": torch.ones(2, 8, dtype=torch.long)}
    block = memory.cuda_model_memory(model, x, torch.device("cpu"), iters=2)
    assert alloc.events[:3] == ["empty_cache", "memory_allocated", "reset"] and alloc.events[3:] == ["forward"] * 2
    # the activations are what the forwards add to everything allocated before them; the weights are the
    # model's own tensors on the device (the allocator also holds e.g. the cuBLAS workspace)
    assert block["allocated_before_bytes"] == 10_000 and block["activation_peak_bytes"] == 2_500
    assert block["weights_bytes"] == memory.tensor_bytes(model, torch.device("cpu")) == memory.tensor_bytes(model)
    assert block["peak_bytes"] == 12_500 and block["source"] == "torch.cuda"
    assert block["nvml_used_bytes"] is None and "fake: no NVML" in block["reason"] and block["nvml_note"]


@pytest.mark.slow
def test_cpu_memory_per_model_differs_for_a_pruned_variant():
    """The subprocess figure tells a smaller model from a bigger one; the process peak cannot."""
    x = {"input_ids": torch.randint(1, 500, (8, 64)), "attention_mask": torch.ones(8, 64, dtype=torch.long)}
    big = memory.cpu_model_memory(tiny_model(inter=1536, hidden=384, layers=4, vocab=500), x, threads=1)
    small = memory.cpu_model_memory(tiny_model(inter=128, hidden=384, layers=4, vocab=500), x, threads=1)
    for b in (big, small):
        assert b["reason"] is None, b["reason"]
        assert b["source"] == "rss_subprocess" and b["peak_bytes"] == b["weights_bytes"] + b["activation_peak_bytes"]
        # RSS growth is at least the tensors, plus allocator slack well below the model size; not the library
        # modules that unpickling the model imports (~10 MB here, 110 MB on a GPU image, before the child
        # imported them ahead of its baseline reading)
        assert b["state_bytes"] * 0.9 <= b["weights_bytes"] <= b["state_bytes"] * 1.1 + 4 * 2**20
    saved = big["state_bytes"] - small["state_bytes"]
    assert saved > 10 * 2**20
    assert big["weights_bytes"] - small["weights_bytes"] > 0.7 * saved
    assert big["process_peak_rss_bytes"] > big["weights_bytes"]  # secondary figure kept


# ------------------------------------------------------------------------------------------ CLI --device
@pytest.mark.slow
def test_cli_device_refused_without_cuda_and_recorded(tmp_path, data_dir, capsys):
    from axformer.encoders import models
    from axformer.cli import main

    ft = ["finetune", "--task", "sst2", "--model", models.TINY, "--train-max", "16", "--search-max", "8",
          "--dev-max", "8", "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--no-progress",
          "--data-dir", str(data_dir), "--ckpt", str(tmp_path / "ck"), "--metrics", str(tmp_path / "m.json")]
    if not torch.cuda.is_available():
        assert main([*ft, "--device", "cuda"]) == 2
        assert "--device 'cuda'" in capsys.readouterr().err and not (tmp_path / "ck").exists()
    assert main([*ft, "--device", "auto"]) == 0
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["train"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert main(["approximate", "--parent", str(tmp_path / "ck"), "--ckpt", str(tmp_path / "ax"), "--metrics",
                 str(tmp_path / "ax.json"), "--decisions", str(tmp_path / "dec.json"), "--mode", "prune",
                 "--granularity", "blocks", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "ax.json").read_text())["search"]["device"] == "cpu"


# ------------------------------------------------------------------------------------------ real GPU
@pytest.mark.cuda
def test_cuda_measure_pair_memory_nvml_and_timing(tiny_tokenizer):
    base, var = tiny_model(0), tiny_model(1, inter=8)
    res = M.measure_pair(base, var, tiny_tokenizer, TEXTS_A, None, tiny_cfg(device="cuda:0", dtype="fp16"))
    mem = res["memory"]
    assert mem["source"] == "torch.cuda" and mem["weights_bytes"] >= memory.tensor_bytes(var)
    assert mem["weights_bytes"] < memory.tensor_bytes(var) + memory.tensor_bytes(base)  # baseline was off the GPU
    assert mem["activation_peak_bytes"] > 0 and (mem["nvml_used_bytes"] is not None or mem["reason"])
    lat = res["latency"][0]
    assert lat["p50_ms"] > 0 and lat["dtypes"]["variant"] == ["float16"] and lat["tf32"] is not None
    assert res["env"]["gpu_name"] == torch.cuda.get_device_name(0) and res["env"]["device"] == "cuda:0"
    assert next(base.parameters()).device.type == "cuda"  # back on the device after the memory phase


@pytest.mark.cuda
def test_cuda_search_runs_on_the_gpu(data_dir, tiny_tokenizer):
    """The AxFormer search's cached evaluation on CUDA (real SST-2 rows, a tiny model: no embedded MiniLM
    needed on the GPU host)."""
    from axformer.taskdata import data
    from axformer.taskdata import splits
    from axformer.search import prune
    from axformer.search import prune_config
    from axformer.taskdata.tasks import get_task

    task = get_task("sst2")
    model = tiny_model(0).to("cuda")
    rows = splits.make_splits(task, data_dir, 0, 0.15, 32, 16, 8)
    ds = data.tokenize(rows.search, tiny_tokenizer, task, 32)
    ev = prune.CachedEvaluator(model, ds, tiny_tokenizer, task, batch_size=16)
    assert all(v.device.type == "cuda" for b in ev.batches for v in b.values())
    losses, metric = ev.score(None)
    assert losses.shape == (len(rows.search),) and 0.0 <= metric <= 1.0
    res = prune.search(model, ds, tiny_tokenizer, task, prune_config.PruneConfig(accept_rule="meanloss", granularity="blocks",
                                                                     progress=False))
    assert res.passes > 1 and next(model.parameters()).device.type == "cuda"


@pytest.mark.cuda
def test_cuda_cli_latency_aware_search(tmp_path, data_dir):
    """Issue 35 A on a real GPU: `axformer approximate --latency-aware --device cuda` times its candidates on the
    GPU the search runs on (the guard's device is the model's) and finishes without a device mismatch."""
    from axformer.encoders import models
    from axformer.cli import main

    assert main(["finetune", "--task", "sst2", "--model", models.TINY, "--train-max", "64", "--search-max", "32",
                 "--dev-max", "16", "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--no-progress",
                 "--data-dir", str(data_dir), "--ckpt", str(tmp_path / "ck"), "--metrics", str(tmp_path / "m.json"),
                 "--device", "cuda"]) == 0
    assert main(["approximate", "--parent", str(tmp_path / "ck"), "--ckpt", str(tmp_path / "ax"), "--metrics",
                 str(tmp_path / "ax.json"), "--decisions", str(tmp_path / "dec.json"), "--latency-aware",
                 "--mode", "hardattn", "--topk", "2", "--accept-rule", "metric", "--lat-batch-size", "8",
                 "--lat-seq-len", "32", "--lat-min-iters", "4", "--lat-seconds", "0", "--no-progress",
                 "--data-dir", str(data_dir), "--device", "cuda"]) == 0
    dec = json.loads((tmp_path / "dec.json").read_text())
    assert dec["latency"]["device"].startswith("cuda") and dec["latency"]["rows_longer_than_k"] > 0
    timed = [c["latency"] for c in dec["candidates"] if c["kind"] == "hardattn"]
    assert timed and all(t["timed"] and t["current_p50_ms"] > 0 for t in timed)
    assert json.loads((tmp_path / "ax.json").read_text())["search"]["device"].startswith("cuda")
