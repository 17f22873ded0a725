"""Timing passes (axformer/measurement/timing.py, issue 31): pass statistics, the repeat-a-noisy-pass rule, aggregation into
latency blocks, and the round-robin order inside a pass. Fake passes: no model is timed here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from axformer.measurement import measure, timing
from axformer.measurement import measure_config
from axformer.utils import ConfigError


# ----------------------------------------------------------------------------------- noisy passes are repeated
def _cfg(**kw):
    base = dict(batch_sizes=[1], seq_len=8, warmup=0, min_iters=3, min_seconds=0.0, threads=1, passes=3,
                pass_retries=2, pass_process="inline", memory_isolation=False)
    return measure_config.MeasureConfig(**{**base, **kw})


def _fake_pass(speedup: float, n: int = 6):
    base = [10.0 + 0.1 * i for i in range(n)]
    return {"samples": {"1": {timing.BASELINE: base, "v": [b / speedup for b in base]}},
            "dtypes": {}, "library_log": None, "tf32": {}, "threading": {}, "pid": 1}


def _patch_passes(monkeypatch, others: list[float], speedups: list[float]):
    """Pass i sees foreign CPU share others[i] and times speedup speedups[i]."""
    calls = {"n": 0}

    class Window:
        def __init__(self):
            self.i = calls["n"]

        def close(self, threads):
            return {"other_cpu_frac": others[self.i], "steal_frac": 0.0, "threads": threads}

    def one_pass(spec_path, out_path, spec, fresh, log):
        i = calls["n"]
        calls["n"] += 1
        return _fake_pass(speedups[i])

    monkeypatch.setattr(timing, "HostWindow", Window)
    monkeypatch.setattr(timing, "_one_pass", one_pass)
    return calls


def test_noisy_pass_is_repeated_and_kept(monkeypatch, tmp_path):
    _patch_passes(monkeypatch, others=[0.0, 0.5, 0.0, 0.0], speedups=[2.0, 9.0, 2.1, 2.2])
    passes = timing.run_passes({}, _cfg(), tmp_path, "ps-test")
    assert [p["pass"] for p in passes] == [0, 1, 2, 3]  # 3 counted + the noisy one, none dropped
    assert [p["noisy"] for p in passes] == [False, True, False, False]
    assert passes[1]["superseded_by"] == 2 and all(p["superseded_by"] is None for p in (passes[0], *passes[2:]))
    agg = timing.aggregate(passes, ["v"], [1], resamples=200)["v"]["1"]
    assert agg["n_passes"] == 3 and len(agg["passes"]) == 4
    assert agg["speedup"] == pytest.approx(2.1)  # the superseded 9x pass does not count
    assert all(p["pass_set"] == "ps-test" for p in agg["passes"])


def test_each_pass_has_its_own_recorded_round_orders(monkeypatch, tmp_path):
    seen = []
    _patch_passes(monkeypatch, others=[0.0, 0.5, 0.0, 0.0], speedups=[2.0] * 4)
    one = timing._one_pass
    monkeypatch.setattr(timing, "_one_pass", lambda sp, op, spec, fresh, log: seen.append(spec) or one(sp, op, spec,
                                                                                                       fresh, log))
    passes = timing.run_passes({"x": 1}, _cfg(batch_sizes=[1, 4]), tmp_path, "ps")
    assert [s["pass_index"] for s in seen] == [0, 1, 2, 3] and all(s["x"] == 1 for s in seen)  # a repeat too
    seeds = [p["order_seeds"] for p in passes]
    assert all(p["round_order"] == "shuffle" for p in passes)
    assert seeds[0] == {"1": timing.order_seed(0, 1), "4": timing.order_seed(0, 4)}
    assert len({s[b] for s in seeds for b in s}) == 8  # no two (pass, batch size) share a seed


def test_repeats_are_bounded(monkeypatch, tmp_path):
    # a host that is always busy: two repeats, then the noisy passes are counted and stay marked
    _patch_passes(monkeypatch, others=[0.9] * 10, speedups=[2.0] * 10)
    passes = timing.run_passes({}, _cfg(passes=3, pass_retries=2), tmp_path, "ps")
    assert len(passes) == 5
    assert sum(p["superseded_by"] is not None for p in passes) == 2
    assert all(p["noisy"] for p in passes)


def test_is_noisy_thresholds():
    assert timing.is_noisy({"other_cpu_frac": 0.11, "steal_frac": 0.0}, 0.10, 0.05)
    assert timing.is_noisy({"other_cpu_frac": 0.0, "steal_frac": 0.06}, 0.10, 0.05)
    assert not timing.is_noisy({"other_cpu_frac": 0.10, "steal_frac": 0.05}, 0.10, 0.05)
    assert not timing.is_noisy({"other_cpu_frac": None, "steal_frac": None}, 0.10, 0.05)  # unknown is not noisy


def test_host_window_reads_this_host():
    w = timing.HostWindow()
    sum(i * i for i in range(20000))
    h = w.close(threads=2)
    assert h["threads"] == 2 and h["wall_s"] >= 0
    if h["other_cpu_frac"] is not None:  # Linux
        assert 0.0 <= h["other_cpu_frac"] <= 1.0 and 0.0 <= h["steal_frac"] <= 1.0
    assert isinstance(h["busy_processes"], list)


# --------------------------------------------------------------------------------- latency blocks from a group
def test_latency_blocks_from_group(monkeypatch, tmp_path):
    _patch_passes(monkeypatch, others=[0.0] * 3, speedups=[2.0, 2.5, 3.0])
    cfg = _cfg()
    passes = timing.run_passes({}, cfg, tmp_path, "ps-x")
    from dataclasses import asdict

    group = {"results": timing.aggregate(passes, ["v"], [1], resamples=200), "measure": asdict(cfg),
             "pass_set": "ps-x", "variants": ["v"], "dtypes": {timing.BASELINE: ["float32"], "v": ["float32"]},
             "tf32": {}, "library_log": None}
    (block,) = timing.latency_blocks(group, "v")
    assert block["speedup"] == pytest.approx(2.5) and block["n_passes"] == 3 and block["pass_set"] == "ps-x"
    assert block["speedup_ci"][0] <= 2.5 <= block["speedup_ci"][1]
    assert block["baseline_p50_ms"] / block["p50_ms"] == pytest.approx(2.5, rel=1e-6)
    with pytest.raises(ConfigError, match="no timing for variant"):
        timing.latency_blocks(group, "w")


def test_write_and_read_group(tmp_path):
    rec = {"results": {}, "measure": {}, "variants": []}
    out = timing.write_group(rec, {"b1/pass": np.zeros(3, np.int16)}, tmp_path / "t" / "timing.json")
    assert timing.read_group(out) == rec and out.with_suffix(".npz").is_file()
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="bad.json"):
        timing.read_group(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------ round-robin inside a pass
class _Recorder(nn.Module):
    def __init__(self, name: str, log: list[str]):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, **inputs):
        self.log.append(self.name)
        return inputs["input_ids"]


def test_round_robin_rotates_the_order():
    log: list[str] = []
    models = {n: _Recorder(n, log) for n in ("a", "b", "c")}
    cfg = _cfg(min_iters=3, warmup=0)
    stats = measure.time_interleaved(models, {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, cfg, order="rotate")
    assert all(s.n_iters == 3 for s in stats.values())
    assert log == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_shuffled_rounds_vary_each_models_neighbour_and_are_seeded():
    names = [f"m{i}" for i in range(6)]
    log: list[str] = []
    models = {n: _Recorder(n, log) for n in names}
    rounds: list[list[int]] = []
    cfg = _cfg(min_iters=200, warmup=0)
    measure.time_interleaved(models, {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, cfg, order="shuffle",
                             seed=7, orders_out=rounds)
    assert len(rounds) == 200 and all(sorted(r) == list(range(6)) for r in rounds)  # each round times every model once
    assert log == [names[i] for r in rounds for i in r]  # the recorded orders are the orders that ran
    # inside a round, model 0's predecessor is each of the 5 others about equally often (rotate: always the same)
    before = [r[r.index(0) - 1] for r in rounds if r.index(0) > 0]
    counts = np.bincount(before, minlength=6)[1:]
    assert counts.min() > 0.5 * counts.mean()
    assert measure.round_orders(6, 200, "shuffle", seed=7) == rounds  # regenerated from the seed
    assert measure.round_orders(6, 200, "shuffle", seed=8) != rounds
    rot = measure.round_orders(6, 12, "rotate")
    assert {r[r.index(0) - 1] for r in rot if r.index(0) > 0} == {5}
    with pytest.raises(ConfigError, match="round order"):
        measure.round_orders(3, 2, "random")


def test_per_model_inputs():
    log: list[str] = []
    models = {n: _Recorder(n, log) for n in ("a", "b")}
    feeds = {"a": {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, "b": {"input_ids": torch.ones(1, 4, dtype=torch.long)}}
    stats = measure.time_interleaved(models, feeds, _cfg(min_iters=2))
    assert set(stats) == {"a", "b"}


@pytest.mark.parametrize("key,value", [("passes", 0), ("passes", 101), ("pass_retries", -1), ("min_seconds", float("nan")),
                                       ("min_seconds", float("inf")), ("noise_max_other_cpu", 1.5),
                                       ("pass_process", "thread"), ("round_order", "random")])
def test_measure_config_refuses_bad_pass_settings(key, value):
    with pytest.raises(ConfigError, match=f"measure.{key}"):
        _cfg(**{key: value})


def test_a_variant_in_another_dtype_is_paired_with_the_baseline_in_that_dtype():
    """gpu profile: finetune+axformer+fp16 is timed against finetune cast to fp16, not the group's fp32 one."""
    assert timing.baseline_key("fp32", "fp32") == timing.BASELINE
    assert timing.baseline_key("fp16", "fp32") == f"{timing.BASELINE}@fp16"
    assert timing.entry_dtype({"dtype": None}, "fp32") == "fp32" and timing.entry_dtype({"dtype": "bf16"}, "fp32") == "bf16"
    base32, base16, v16 = [10.0, 10.2, 10.1], [5.0, 5.1, 5.05], [2.5, 2.55, 2.525]
    p = {"samples": {"1": {timing.BASELINE: base32, f"{timing.BASELINE}@fp16": base16, "v16": v16}}, "pass": 0,
         "pass_set": "ps", "host": {}, "noisy": False, "superseded_by": None}
    agg = timing.aggregate([p], ["v16"], [1], resamples=100, baselines={"v16": f"{timing.BASELINE}@fp16"})
    assert agg["v16"]["1"]["speedup"] == pytest.approx(2.0)  # against fp16 finetune, not 4.0 against fp32
