"""The AxFormer search: cached evaluation, planted harmful / important elements, decision log, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from axformer.taskdata import data
from axformer.surgery import elements, hard_attention
from axformer.encoders import models
from axformer.search import prune
from axformer.search import prune_config
from axformer.training import batches
from axformer.taskdata.tasks import get_task


def _cfg(**kw):
    return prune_config.PruneConfig(progress=False, batch_size=16, **kw)


def test_cached_evaluation_equals_full_forward(fitted):
    task, model, tok, ds = fitted
    model = copy.deepcopy(model)
    ev = prune.CachedEvaluator(model, ds, tok, task, batch_size=16)
    full, _ = batches.predict_logits(model, ds.select(ev.order), tok, batch_size=16)
    for layer in range(len(model.base_model.encoder.layer)):
        np.testing.assert_allclose(ev.logits(layer).numpy(), full, atol=1e-5)
    elements.remove(model, elements.Element(1, "head", 2))  # edits above the cache point are seen
    hard_attention.enable(model, [1], 3)
    full, _ = batches.predict_logits(model, ds.select(ev.order), tok, batch_size=16)
    np.testing.assert_allclose(ev.logits(1).numpy(), full, atol=1e-5)


def _plant_harmful_head(model, layer=1, head=3, scale=8.0):
    """Scramble one head's value projection so its contribution is loud noise."""
    sa = model.base_model.encoder.layer[layer].attention.self
    hs = sa.attention_head_size
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        rows = slice(head * hs, (head + 1) * hs)
        sa.value.weight[rows] = torch.randn(sa.value.weight[rows].shape, generator=g) * scale
        sa.value.bias[rows] = torch.randn(hs, generator=g) * scale


def test_search_removes_planted_harmful_head_and_keeps_important(fitted):
    task, model, tok, ds = fitted
    model = copy.deepcopy(model)
    _plant_harmful_head(model)
    ev = prune.CachedEvaluator(model, ds, tok, task, batch_size=16)
    base = ev.score(None)[0].mean()
    # the most important element: the one whose sole removal raises the search loss most
    worst, worst_loss = None, -1.0
    for el in elements.list_elements(model):
        m = copy.deepcopy(model)
        elements.remove(m, el)
        loss = prune.CachedEvaluator(m, ds, tok, task, batch_size=16).score(None)[0].mean()
        if loss > worst_loss:
            worst, worst_loss = el, loss
    assert worst_loss > 1.1 * base  # it really is important
    res = prune.search(model, ds, tok, task, _cfg(accept_rule="meanloss", mode="prune"))
    assert "L1.head3" in res.removed or "L1.attn" in res.removed
    assert worst.name not in res.removed
    assert res.final["loss"] < res.original["loss"]
    for c in res.candidates:
        assert c["accepted"] == (c["element"] in res.removed)
        assert c["class"] in ("harmful", "less_important", "important")
    assert res.passes == len(res.candidates) + 2  # one pass per candidate + original + final


def test_paper_rule_requires_fraction(fitted):
    """The planted head hurts most samples, so removing it leaves more than half of them no worse: the paper's
    rule must accept it (the test is never vacuous), and every candidate, accepted or not, follows the rule."""
    task, model, tok, ds = fitted
    planted = copy.deepcopy(model)
    _plant_harmful_head(planted)
    res = prune.search(planted, ds, tok, task, _cfg(accept_rule="paper", accept_frac=0.5, mode="prune"))
    accepted = [c for c in res.candidates if c["accepted"]]
    assert accepted, "the paper rule accepted nothing although a planted harmful head was there to remove"
    assert {"L1.head3", "L1.attn"} & set(res.removed)
    for c in res.candidates:
        assert c["accepted"] == (c["gain"] > c["margin"] and c["frac_no_worse"] > 0.5)
    for c in accepted:
        assert c["loss"] < c["best_loss_before"]


def test_blocks_granularity_and_hardattn_mode(fitted):
    task, model, tok, ds = fitted
    res = prune.search(copy.deepcopy(model), ds, tok, task, _cfg(accept_rule="meanloss", mode="prune",
                                                                 granularity="blocks"))
    assert {c["kind"] for c in res.candidates} <= {"ffn", "attn"}
    m = copy.deepcopy(model)
    res = prune.search(m, ds, tok, task, _cfg(accept_rule="meanloss", mode="hardattn", topk=2))
    assert {c["kind"] for c in res.candidates} == {"hardattn"}
    assert len(res.candidates) == 2 and res.removed == []
    assert hard_attention.enabled_layers(m) == res.hard_attention_layers


def test_search_result_saves_and_reloads(fitted, tmp_path):
    task, model, tok, ds = fitted
    m = copy.deepcopy(model)
    _plant_harmful_head(m)
    prune.search(m, ds, tok, task, _cfg(accept_rule="meanloss", topk=0.5))
    ck = models.save_checkpoint(m, tok, tmp_path / "ck")
    m2, _ = models.load_checkpoint(ck)
    a, _ = batches.predict_logits(m, ds, tok, 16)
    b, _ = batches.predict_logits(m2, ds, tok, 16)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert elements.count_encoder_params(m2) < elements.count_encoder_params(model)


def test_regression_search_runs(data_dir):
    task = get_task("stsb")
    model, tok = models.load_pretrained(models.TINY, task, seed=0)
    ds = data.tokenize(data.load_split(task, "train", data_dir).select(range(24)), tok, task, max_length=32)
    res = prune.search(model, ds, tok, task, _cfg(accept_rule="meanloss", granularity="blocks"))
    assert res.candidates and all(np.isfinite(c["loss"]) for c in res.candidates)


def test_bad_config():
    from axformer.utils import ConfigError

    with pytest.raises(ConfigError, match="accept_frac"):
        prune_config.PruneConfig(accept_frac=1.5).validate()
    with pytest.raises(ConfigError, match="topk"):
        prune_config.PruneConfig(topk=0).validate()
    with pytest.raises(ConfigError, match="topk_form"):
        prune_config.PruneConfig(topk_form="softmax").validate()
    with pytest.raises(ConfigError, match="accept_margin"):
        prune_config.PruneConfig(accept_z=-1.0).validate()
    with pytest.raises(ConfigError, match="accept_rule"):
        prune_config.PruneConfig(accept_rule="loss").validate()


def test_cli_approximate_after_finetune(tmp_path, data_dir):
    from axformer.cli import main

    ft = ["finetune", "--task", "mrpc", "--model", models.TINY, "--data-dir", str(data_dir), "--train-max", "16",
          "--search-max", "16", "--dev-max", "8", "--epochs", "1", "--max-length", "32", "--no-progress",
          "--ckpt", str(tmp_path / "ft"), "--metrics", str(tmp_path / "ft.json")]
    assert main(ft) == 0
    ax = ["approximate", "--parent", str(tmp_path / "ft"), "--ckpt", str(tmp_path / "ax"), "--metrics",
          str(tmp_path / "ax.json"), "--decisions", str(tmp_path / "dec.json"), "--accept-rule", "meanloss",
          "--topk", "0.5", "--no-progress"]
    assert main(ax) == 0
    dec = json.loads((tmp_path / "dec.json").read_text())
    step = json.loads((tmp_path / "ax.json").read_text())
    assert dec["n_search"] == 16 and len(dec["candidates"]) == step["search"]["candidates"]
    assert not (tmp_path / "dec.partial.jsonl").exists()  # the search journal is gone once decisions are written
    assert "replayed" not in dec and "replayed" not in step["search"]  # nothing was resumed
    assert step["size"]["params_encoder"] <= json.loads((tmp_path / "ft.json").read_text())["size"]["params_encoder"]
    assert dec["hard_attention"]["topk_form"] == "official" and step["search"]["topk_form"] == "official"
    assert all({"gain", "se", "margin"} <= set(c) for c in dec["candidates"])
    # flags not given take PruneConfig's defaults (one place): only the given ones differ
    from dataclasses import asdict

    want = asdict(prune_config.PruneConfig(accept_rule="meanloss", topk=0.5, progress=False))
    assert dec["config"] == want and dec["acceptance"]["accept_margin"] == want["accept_margin"]
    models.load_checkpoint(tmp_path / "ax")
    assert main(ax[:2] + [str(tmp_path / "nothing")] + ax[3:]) == 2  # missing parent: clear error
    lat = ["approximate", "--parent", str(tmp_path / "ft"), "--ckpt", str(tmp_path / "lat"), "--metrics",
           str(tmp_path / "lat.json"), "--decisions", str(tmp_path / "lat_dec.json"), "--latency-aware", "--topk",
           "4", "--topk-form", "renorm", "--mode", "hardattn", "--lat-seq-len", "32", "--lat-seconds", "0",
           "--lat-min-iters", "2", "--no-progress"]
    assert main(lat) == 0
    dec = json.loads((tmp_path / "lat_dec.json").read_text())
    assert dec["config"]["latency_aware"] and dec["config"]["accept_rule"] == "guarded"
    assert dec["latency"]["seq_len"] == 32 and dec["latency"]["batch_size"] == 32
    assert all(c["latency"]["timed"] for c in dec["candidates"]) and dec["hard_attention"]["topk_form"] == "renorm"
    if dec["hard_attention"]["layers_selected"]:  # the form travels with the checkpoint
        assert models.load_checkpoint(tmp_path / "lat")[0].config.axformer["hard_attention"]["topk_form"] == "renorm"


# ----------------------------------------------------------------------------------------- acceptance margin
class _StubEvaluator:
    """Returns preset (per-sample losses, metric) pairs: the first is the original model's score."""

    def __init__(self, scores):
        self.scores = list(scores)

    def score(self, layer=None):
        return self.scores.pop(0)


def _judge_all(cfg, base, *cands):
    s = prune._Search(None, _StubEvaluator([base, *cands]), cfg)
    return s, [s.judge(f"c{i}", 0, "ffn", None, "prune")[0] for i in range(len(cands))]


def test_margin_rejects_float_noise_that_the_old_rule_accepted():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 1.0, 500)
    noisy = base + rng.normal(0, 1e-7, 500)
    noisy -= max(0.0, noisy.mean() - base.mean()) + 1e-9  # mean loss lower by rounding-size amounts only
    old = _cfg(accept_rule="meanloss", accept_margin=0.0, accept_z=0.0)
    assert _judge_all(old, (base, 0.8), (noisy, 0.8))[1] == [True]  # the old default accepted it
    for rule in ("guarded", "meanloss", "paper"):
        s, acc = _judge_all(_cfg(accept_rule=rule), (base, 0.8), (noisy, 0.8))
        c = s.res.candidates[0]
        assert acc == [False] and not c["accepted"]
        assert 0 < c["gain"] < c["margin"] and c["margin"] >= 1e-4 * base.mean() and c["se"] > 0


def test_margin_uses_the_paired_standard_error_against_the_current_best():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 1.0, 400)
    better = base - 0.01  # a clear, uniform gain: SE 0, accepted
    noisy = better + rng.normal(0, 0.2, 400)  # large per-sample scatter around the new best
    noisy -= noisy.mean() - better.mean() + 0.002  # mean gain 0.002 vs the new best, well below z x SE
    s, acc = _judge_all(_cfg(accept_rule="meanloss"), (base, 0.8), (better, 0.8), (noisy, 0.8))
    assert acc == [True, False]
    c = s.res.candidates[1]
    assert c["gain"] == pytest.approx(0.002) and c["se"] > c["gain"] and c["margin"] == pytest.approx(c["se"])
    assert s.res.candidates[0]["se"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(s.best_losses, better)  # the margin is paired with the current best


def test_guarded_rule_never_trades_the_metric_for_loss():
    base = np.full(100, 0.5)
    lower_loss_worse_metric = (base - 0.1, 0.7)
    s, acc = _judge_all(_cfg(), (base, 0.8), lower_loss_worse_metric, (base - 0.05, 0.8))
    assert prune_config.PruneConfig().accept_rule == "guarded"
    assert acc == [False, True]  # the first lowers the loss a lot but the metric too
    assert _judge_all(_cfg(accept_rule="meanloss"), (base, 0.8), lower_loss_worse_metric)[1] == [True]


@pytest.mark.parametrize("rule", ["guarded", "meanloss", "paper"])
def test_noop_hard_attention_is_never_accepted(fitted, rule):
    """K above every search row's length: hard attention changes nothing, so no layer may be accepted."""
    task, model, tok, ds = fitted
    assert max(len(x) for x in ds["input_ids"]) < 40
    m = copy.deepcopy(model)
    res = prune.search(m, ds, tok, task, _cfg(accept_rule=rule, mode="hardattn", topk=40))
    assert len(res.candidates) == len(m.base_model.encoder.layer)
    for c in res.candidates:
        assert not c["accepted"] and c["gain"] == 0.0 and c["margin"] > 0
    assert res.hard_attention_layers == [] and hard_attention.enabled_layers(m) == []


# ----------------------------------------------------------------------------------------- latency-aware
def _fake_timing(monkeypatch, factor):
    """time_interleaved stand-in: a model's median is 10 ms x factor per hard-attention layer it runs."""
    from axformer.measurement import measure

    calls = []

    def fake(models, inputs, cfg):
        calls.append(tuple(models))
        return {n: measure.LatencyStats.from_values([10.0 * factor ** len(hard_attention.enabled_layers(m))])
                for n, m in models.items()}

    monkeypatch.setattr(measure, "time_interleaved", fake)
    return calls


def _texts(data_dir):
    return list(data.load_split(get_task("sst2"), "train", data_dir).select(range(48))["text_a"]), None


@pytest.mark.parametrize("factor", [0.8, 1.5])
def test_latency_aware_rejects_hard_attention_that_slows_the_model(fitted, data_dir, monkeypatch, factor):
    task, model, tok, ds = fitted
    kw = dict(accept_rule="metric", less_important=10.0, mode="hardattn", topk=2)
    plain = prune.search(copy.deepcopy(model), ds, tok, task, _cfg(**kw))
    assert plain.hard_attention_layers  # precondition: the accuracy rule alone accepts some layer
    calls = _fake_timing(monkeypatch, factor)
    res = prune.search(copy.deepcopy(model), ds, tok, task,
                       _cfg(latency_aware=True, lat_batch_size=4, lat_seq_len=16, **kw), _texts(data_dir))
    hard = [c for c in res.candidates if c["kind"] == "hardattn"]
    assert hard and all(c["latency"]["timed"] for c in hard)
    assert calls[0] == ("a", "b") and res.latency["aa"]["noise"] == 0.0  # A/A once, first
    if factor < 1:  # faster: the decisions are the accuracy rule's
        assert res.hard_attention_layers == plain.hard_attention_layers
        assert all(c["latency"]["ok"] and c["latency"]["rise"] < 0 for c in hard)
    else:  # slower: every hard-attention candidate is rejected, whatever its loss
        assert res.hard_attention_layers == [] and not any(c["accepted"] for c in hard)
        assert all(c["latency"]["rise"] == pytest.approx(0.5) for c in hard)


def test_latency_aware_full_search_times_only_hard_attention_and_rechecks(fitted, data_dir):
    """Real interleaved timing (tiny shape, short): structural candidates are not timed; kept hard-attention
    layers are re-checked after pruning; the timing setup is recorded."""
    task, model, tok, ds = fitted
    res = prune.search(copy.deepcopy(model), ds, tok, task,
                       _cfg(latency_aware=True, topk=2, granularity="blocks", accept_rule="metric",
                            less_important=10.0, lat_batch_size=4, lat_seq_len=16,
                            lat_warmup=0, lat_min_iters=2, lat_seconds=0.0), _texts(data_dir))
    for c in res.candidates:
        assert ("latency" in c) == (c["kind"] == "hardattn")
    lat = res.latency
    assert lat["batch_size"] == 4 and lat["seq_len"] == 16 and lat["rows_longer_than_k"] > 0
    assert lat["aa"]["noise"] >= 0
    # which layers survive depends on real timings on a shared host: check consistency, not outcomes (the
    # search may keep no hard-attention layer at all when this host is busy)
    checked = [r["layer"] for r in lat["recheck"]]
    assert checked == sorted(set(checked))  # every layer kept by the search, once
    assert [r["layer"] for r in lat["recheck"] if not r["dropped"]] == res.hard_attention_layers
    for r in lat["recheck"]:
        assert r["timed"] and r["beyond_noise"] == (r["rise"] > r["noise"])
        assert r["dropped"] == (r["beyond_noise"] or r["significant"]) and ("loss_after" in r) == r["dropped"]


def test_latency_guard_skips_timing_when_no_row_is_longer_than_k(tokenizer):
    from axformer.search import latency_guard

    g = latency_guard.LatencyGuard.from_texts(tokenizer, ["a short one", "two"], None, 4, 16, 30)
    assert g.n_rows_topk == 0
    assert g.compare(None, None) == {"timed": False, "ok": True, "reason": g.compare(None, None)["reason"]}
    assert g.aa is None  # nothing was timed


def _guard_with_rounds(tokenizer, monkeypatch, aa_rise, cand_rise, jitter=0.02, rounds=16):
    """A LatencyGuard whose timings are fake rounds: the host's jitter (shared by both models of a round, as
    in an interleaved job) times 10 ms, the copy in the A/A timing ``aa_rise`` slower, the candidate
    ``cand_rise`` slower than the current model."""
    from axformer.search import latency_guard
    from axformer.measurement import measure

    g = latency_guard.LatencyGuard.from_texts(tokenizer, ["a short one", "two"], None, 4, 16, 30)
    g.n_rows_topk = 1  # pretend a row takes the top-K path: the guard times
    host = 10.0 * (1 + jitter * np.sin(np.arange(rounds)))  # slow and fast phases of the host
    rng = np.random.default_rng(0)
    calls = []

    def fake(models, inputs, cfg):
        calls.append(tuple(models))
        rise = aa_rise if len(calls) == 1 else cand_rise
        own = 1 + 0.003 * rng.standard_normal((2, rounds))  # each forward's own noise
        return {"a": measure.LatencyStats.from_values(host * own[0]),
                "b": measure.LatencyStats.from_values(host * own[1] * (1 + rise))}

    monkeypatch.setattr(measure, "time_interleaved", fake)
    return g


def test_latency_guard_rejects_a_consistent_rise_inside_a_wide_aa_noise(tokenizer, monkeypatch):
    """One A/A pair read 3 % (a noisy draw); the candidate is 1 % slower in every round: inside the A/A
    noise, but its own interval excludes 0, so it is rejected."""
    g = _guard_with_rounds(tokenizer, monkeypatch, aa_rise=0.03, cand_rise=0.01)
    r = g.compare(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    assert r["noise"] == pytest.approx(0.03, abs=0.005) and r["rise"] == pytest.approx(0.01, abs=0.003)
    assert not r["beyond_noise"] and r["significant"] and r["rise_low"] > 0 and not r["ok"]
    assert r["rounds"] == 16 and g.describe()["aa"]["rise_low"] > 0


def test_latency_guard_passes_a_candidate_that_changes_nothing(tokenizer, monkeypatch):
    g = _guard_with_rounds(tokenizer, monkeypatch, aa_rise=0.0, cand_rise=0.0)
    r = g.compare(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    assert abs(r["rise"]) < 0.003 and r["rise_low"] <= 0 <= r["rise_high"] and not r["significant"] and r["ok"]


def test_latency_guard_rejects_a_rise_beyond_the_aa_noise(tokenizer, monkeypatch):
    g = _guard_with_rounds(tokenizer, monkeypatch, aa_rise=0.005, cand_rise=0.02)
    r = g.compare(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    assert r["beyond_noise"] and not r["ok"]


def test_latency_aware_joint_recheck_drops_layers_whose_small_rises_add_up(fitted, data_dir, monkeypatch):
    """Each hard-attention layer rises 0.6 % against a 1 % A/A noise (each passes alone); both together rise
    1.2 % (> noise), so the joint check drops the one whose own rise was larger (layer 0: 10.06 / 10 against
    layer 1's 10.12 / 10.06) and the pair is not kept."""
    from axformer.measurement import measure

    task, model, tok, ds = fitted
    kw = dict(accept_rule="metric", less_important=10.0, mode="hardattn", topk=2)
    plain = prune.search(copy.deepcopy(model), ds, tok, task, _cfg(**kw))
    assert plain.hard_attention_layers == [0, 1]  # precondition: the accuracy rule alone keeps both
    calls = []

    def fake(models, inputs, cfg):
        calls.append(tuple(models))
        aa = 0.01 if len(calls) == 1 else 0.0  # the first timing is the A/A one: 1 % noise
        return {n: measure.LatencyStats.from_values(
            [10.0 * (1 + 0.006 * len(hard_attention.enabled_layers(m))) * (1 + aa * (n == "b"))])
            for n, m in models.items()}

    monkeypatch.setattr(measure, "time_interleaved", fake)
    m = copy.deepcopy(model)
    res = prune.search(m, ds, tok, task, _cfg(latency_aware=True, lat_batch_size=4, lat_seq_len=16, **kw),
                       _texts(data_dir))
    hard = [c for c in res.candidates if c["kind"] == "hardattn"]
    assert [c["accepted"] for c in hard] == [True, True]  # alone, each passes
    joint = res.latency["joint"]
    assert joint[0]["layers"] == [0, 1] and joint[0]["rise"] == pytest.approx(0.012) and not joint[0]["ok"]
    assert joint[0]["dropped"] == 0 and "loss_after" in joint[0]
    assert res.hard_attention_layers == [1] == hard_attention.enabled_layers(m)
    assert len(joint) == 1  # one layer left: nothing to check jointly


def test_latency_aware_joint_recheck_keeps_layers_that_pay_together(fitted, data_dir, monkeypatch):
    task, model, tok, ds = fitted
    _fake_timing(monkeypatch, 0.9)  # each layer makes the model faster
    res = prune.search(copy.deepcopy(model), ds, tok, task,
                       _cfg(latency_aware=True, lat_batch_size=4, lat_seq_len=16, accept_rule="metric",
                            less_important=10.0, mode="hardattn", topk=2), _texts(data_dir))
    assert res.hard_attention_layers == [0, 1]
    [entry] = res.latency["joint"]
    assert entry["ok"] and entry["rise"] < 0 and "dropped" not in entry


# ----------------------------------------------------------------------------------------- the released rule
class _OrderedStub(_StubEvaluator):
    """A stub whose scores come in split order (the real evaluator's ``order`` maps its sorted batches back)."""

    def __init__(self, scores, order=None):
        super().__init__(scores)
        n = len(self.scores[0][0])
        self.order = np.arange(n) if order is None else np.asarray(order)


def _ocfg(batch_size):
    return prune_config.PruneConfig(progress=False, accept_rule="official", batch_size=batch_size)


def _judge_official(cfg, base, *cands, order=None):
    s = prune._Search(None, _OrderedStub([base, *cands], order), cfg)
    return s, [s.judge(f"c{i}", 0, "ffn", None, "prune")[0] for i in range(len(cands))]


def test_official_accepts_a_candidate_the_guarded_rule_rejects_for_its_margin_only():
    base = np.random.default_rng(2).uniform(0.2, 1.0, 400)
    cand = base.copy()
    cand[:300] -= 0.01   # three quarters of the samples a little better ...
    cand[300:] += 0.028  # ... a quarter worse: mean gain 0.0005, below one paired SE (~0.0008)
    assert np.sum(cand <= base) > 200  # the released fraction test passes ...
    s, acc = _judge_all(_cfg(accept_rule="guarded"), (base, 0.8), (cand, 0.8))
    g = s.res.candidates[0]
    assert acc == [False]
    # ... and the guarded rule's only objection is the margin: lower loss, metric no worse, half no worse
    assert 0 < g["gain"] < g["margin"] and g["metric"] >= g["best_metric_before"] and g["frac_no_worse"] > 0.5
    assert _judge_all(_cfg(accept_rule="paper"), (base, 0.8), (cand, 0.8))[1] == [False]  # margin kept there
    s, acc = _judge_official(_ocfg(400), (base, 0.8), (cand, 0.8))
    assert acc == [True] and s.res.candidates[0]["margin"] == 0.0
    assert s.best_loss == pytest.approx(cand.mean())


def _released_loop(base, cands, batch):
    """The released loop's test, written out from run_predictions.py for this table: mean of per-batch means
    (eval batches in file order), ``loss < min_loss`` and ``(losses <= base).sum() > int(0.5 * n)``."""
    def mean(x):
        return float(np.mean([np.mean(x[i:i + batch]) for i in range(0, len(x), batch)]))
    min_loss, out = mean(base), []
    for c in cands:
        ok = mean(c) < min_loss and int(np.sum(np.asarray(c) <= base)) > int(0.5 * len(base))
        min_loss = mean(c) if ok else min_loss
        out.append(ok)
    return out


def test_official_rule_reproduces_the_released_rule_on_a_hand_made_loss_table():
    base = np.array([0.5, 0.5, 0.5, 0.5, 0.5])  # n = 5: more than int(2.5) = 2 samples must be no worse
    table = [  # per-sample losses, eval batches of 2 in split order: [0:2], [2:4], [4]
        [0.3, 0.3, 0.5, 0.5, 0.75],   # batch means .3 .5 .75 -> .5167 >= .5: rejected (plain mean .47 would pass)
        [0.1, 0.1, 0.6, 0.6, 0.6],    # -> .4333 < .5 but only 2 samples no worse (not > 2): rejected
        [0.45, 0.45, 0.5, 0.7, 0.4],  # -> .4833, 4 no worse (0.5 <= 0.5 counts): accepted, worse metric and all
        [0.45, 0.45, 0.5, 0.7, 0.4],  # the same loss again: not < best: rejected
        [0.5 + 1e-9, 0.5 + 1e-9, 0.2, 0.6, 0.4],  # -> .4333; 2 no worse exactly (no tolerance): rejected
        [0.4, 0.4, 0.45, 0.45, 0.5],  # -> .45 < .4833, all no worse: accepted
        [0.9, 0.9, 0.9, 0.9, 0.9],    # -> .9 >= 1.1 x .45: rejected and important (the 1.1 x gate)
    ]
    want = [False, False, True, False, False, True, False]
    assert _released_loop(base, [np.array(c) for c in table], 2) == want
    metrics = [0.8, 0.8, 0.2, 0.8, 0.8, 0.8, 0.8]  # the released rule has no metric check
    s, acc = _judge_official(_ocfg(2), (base, 0.8),
                             *[(np.array(c), m) for c, m in zip(table, metrics)])
    assert acc == want
    assert [c["class"] for c in s.res.candidates] == ["less_important", "less_important", "harmful",
                                                      "less_important", "less_important", "harmful", "important"]
    assert [round(c["loss"], 4) for c in s.res.candidates] == [0.5167, 0.4333, 0.4833, 0.4833, 0.4333, 0.45, 0.9]
    assert s.best_loss == pytest.approx(0.45)
    # the guarded rule, with its margin and tolerance, decides this table differently
    assert _judge_all(_cfg(accept_rule="guarded"), (base, 0.8),
                      *[(np.array(c), m) for c, m in zip(table, metrics)])[1] != want


def test_official_loss_is_taken_in_split_order_not_the_evaluators_sorted_order():
    """The evaluator scores length-sorted batches; the released batch-mean needs the split's own order."""
    in_split = np.array([0.3, 0.3, 0.5, 0.5, 0.75])
    order = np.array([4, 0, 3, 1, 2])  # evaluator position j holds split row order[j]
    sorted_losses = in_split[order]
    s = prune._Search(None, _OrderedStub([(sorted_losses, 0.8)], order), _ocfg(2))
    assert s.best_loss == pytest.approx(prune.released_mean_loss(in_split, 2)) == pytest.approx(1.55 / 3)
    assert prune.released_mean_loss(in_split, 5) == pytest.approx(in_split.mean())


def test_official_search_follows_the_released_rule_on_a_tiny_model(fitted):
    """A planted harmful head on a tiny model: the official rule removes it, and every candidate's decision is
    the released test on its recorded numbers (no margin, more than int(0.5 n) samples no worse)."""
    task, model, tok, ds = fitted
    planted = copy.deepcopy(model)
    _plant_harmful_head(planted)
    res = prune.search(planted, ds, tok, task, _cfg(accept_rule="official", mode="prune"))
    assert {"L1.head3", "L1.attn"} & set(res.removed)
    n = len(ds)
    for c in res.candidates:
        no_worse = round(c["frac_no_worse"] * n)
        assert c["accepted"] == (c["loss"] < c["best_loss_before"] and no_worse > int(0.5 * n))
        assert c["margin"] == 0.0
    m = copy.deepcopy(model)  # K above every row's length: hard attention is a no-op, never accepted
    res = prune.search(m, ds, tok, task, _cfg(accept_rule="official", mode="hardattn", topk=40))
    assert not any(c["accepted"] for c in res.candidates) and res.hard_attention_layers == []


def test_cli_official_on_the_released_rte_split(tmp_path, data_dir):
    """finetune with the released split index, then the official search: the split travels with the checkpoint
    (all 362 released search rows, in their order), the decisions record the released rule, and a finetune
    whose data folder holds another RTE train file is refused before any work."""
    from axformer.cli import main

    index = str(Path(__file__).resolve().parents[1] / "workflow/splits/official_rte.json")
    ft = ["finetune", "--task", "rte", "--model", models.TINY, "--data-dir", str(data_dir), "--train-max", "16",
          "--dev-max", "8", "--epochs", "1", "--max-length", "32", "--search-rows", index, "--weight-decay", "0",
          "--warmup-ratio", "0", "--lr", "2e-5", "--no-progress", "--ckpt", str(tmp_path / "ft"), "--metrics",
          str(tmp_path / "ft.json")]
    assert main(ft) == 0
    assert json.loads((tmp_path / "ft.json").read_text())["data"]["n_search"] == 362
    ax = ["approximate", "--parent", str(tmp_path / "ft"), "--ckpt", str(tmp_path / "ax"), "--metrics",
          str(tmp_path / "ax.json"), "--decisions", str(tmp_path / "dec.json"), "--accept-rule", "official",
          "--mode", "prune", "--granularity", "blocks", "--no-progress"]
    assert main(ax) == 0
    dec = json.loads((tmp_path / "dec.json").read_text())
    assert dec["n_search"] == 362 and dec["acceptance"]["rule"] == "official"
    assert dec["acceptance"]["margin"].startswith("none") and all(c["margin"] == 0.0 for c in dec["candidates"])
    other = tmp_path / "data"
    (other / "glue/RTE").mkdir(parents=True)
    for split in ("train", "dev"):
        text = (Path(data_dir) / f"glue/RTE/{split}.tsv").read_text(encoding="utf-8")
        (other / f"glue/RTE/{split}.tsv").write_text(text.replace("Iraq", "Irak", 1), encoding="utf-8")
    bad = ft[:6] + [str(other)] + ft[7:]
    bad[bad.index("--ckpt") + 1] = str(tmp_path / "ft2")
    assert main(bad) == 2 and not (tmp_path / "ft2").exists()


# ------------------------------------------------------------- latency guard: the search's device (issue 35 A)
class _FakeCudaModel(torch.nn.Module):
    """A module whose parameters report cuda:0 (no GPU needed): stands in for a model the search holds on CUDA."""

    class _P:
        device = torch.device("cuda", 0)

    def parameters(self, recurse=True):
        yield self._P()


def test_latency_guard_times_on_the_search_device_and_never_moves_models(tokenizer, monkeypatch):
    """Built with the search's device, the guard hands time_interleaved a config on that device, so nothing is
    moved; before issue 35 the config defaulted to cpu and time_interleaved moved the searched model there."""
    from axformer.search import latency_guard
    from axformer.measurement import measure

    seen = []

    def fake(models, inputs, cfg):
        for m in models.values():  # what time_interleaved would do: move to cfg.device, here a failure instead
            assert str(next(m.parameters()).device) == cfg.device, "the guard would move a model"
        seen.append(cfg.device)
        return {n: measure.LatencyStats.from_values([10.0, 10.0]) for n in models}

    monkeypatch.setattr(measure, "time_interleaved", fake)
    g = latency_guard.LatencyGuard.from_texts(tokenizer, ["a short one", "two"], None, 4, 16, 30,
                                              device=torch.device("cuda", 0))
    g.n_rows_topk = 1
    assert g.compare(_FakeCudaModel(), _FakeCudaModel())["ok"]
    assert seen == ["cuda:0", "cuda:0"] and g.describe()["device"] == "cuda:0"


def test_latency_guard_refuses_a_model_on_another_device(tokenizer, monkeypatch):
    """The pre-fix wiring (guard on the default cpu, searched model on CUDA) is a device mismatch, raised before
    any timing, not a silent move of the searched model."""
    from axformer.search import latency_guard
    from axformer.measurement import measure

    monkeypatch.setattr(measure, "time_interleaved", lambda *a: pytest.fail("timed across devices"))
    g = latency_guard.LatencyGuard.from_texts(tokenizer, ["a short one", "two"], None, 4, 16, 30)
    g.n_rows_topk = 1
    with pytest.raises(RuntimeError, match="cuda:0 but the guard times on cpu"):
        g.compare(_FakeCudaModel(), _FakeCudaModel())


def test_latency_aware_search_builds_its_guard_on_the_model_device(fitted, data_dir, monkeypatch):
    """prune.search takes the guard's device from the searched model (model_device), and the real interleaved
    timing leaves the searched model's tensors where they were (same storage)."""
    from axformer.search import latency_guard

    task, model, tok, ds = fitted
    m = copy.deepcopy(model)
    ptrs = {n: p.data_ptr() for n, p in m.named_parameters()}
    built = []
    orig = latency_guard.LatencyGuard.from_texts.__func__

    def spy(cls, *a, **kw):
        g = orig(cls, *a, **kw)
        built.append((kw["device"], g.cfg.device))
        return g

    monkeypatch.setattr(latency_guard.LatencyGuard, "from_texts", classmethod(spy))
    res = prune.search(m, ds, tok, task, _cfg(latency_aware=True, mode="hardattn", topk=2, accept_rule="metric",
                                              lat_batch_size=4, lat_seq_len=16, lat_warmup=0, lat_min_iters=2,
                                              lat_seconds=0.0), _texts(data_dir))
    assert built == [(next(model.parameters()).device, "cpu")] and res.latency["device"] == "cpu"
    assert {n: p.data_ptr() for n, p in m.named_parameters()} == ptrs
