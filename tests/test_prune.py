"""The AxFormer search: cached evaluation, planted harmful / important elements, decision log, CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from axformer import data, elements, hard_attention, models, prune, train
from axformer.tasks import get_task


@pytest.fixture(scope="module")
def fitted(data_dir):
    """A tiny BERT fitted on 48 real SST-2 rows; those rows serve as its search split (test only)."""
    task = get_task("sst2")
    model, tok = models.load_pretrained(models.TINY, task, seed=0)
    ds = data.tokenize(data.load_split(task, "train", data_dir).select(range(48)), tok, task, max_length=32)
    train.train(model, ds, tok, task, train.TrainConfig(epochs=30, batch_size=16, lr=1e-3, progress=False))
    return task, model, tok, ds


def _cfg(**kw):
    return prune.PruneConfig(progress=False, batch_size=16, **kw)


def test_cached_evaluation_equals_full_forward(fitted):
    task, model, tok, ds = fitted
    model = copy.deepcopy(model)
    ev = prune.CachedEvaluator(model, ds, tok, task, batch_size=16)
    full, _ = train.predict_logits(model, ds.select(ev.order), tok, batch_size=16)
    for layer in range(len(model.base_model.encoder.layer)):
        np.testing.assert_allclose(ev.logits(layer).numpy(), full, atol=1e-5)
    elements.remove(model, elements.Element(1, "head", 2))  # edits above the cache point are seen
    hard_attention.enable(model, [1], 3)
    full, _ = train.predict_logits(model, ds.select(ev.order), tok, batch_size=16)
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
    task, model, tok, ds = fitted
    model = copy.deepcopy(model)
    _plant_harmful_head(model)
    res = prune.search(model, ds, tok, task, _cfg(accept_rule="paper", accept_frac=0.5, mode="prune"))
    for c in res.candidates:
        if c["accepted"]:
            assert c["frac_no_worse"] > 0.5 and c["loss"] < c["best_loss_before"]


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
    a, _ = train.predict_logits(m, ds, tok, 16)
    b, _ = train.predict_logits(m2, ds, tok, 16)
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
        prune.PruneConfig(accept_frac=1.5).validate()
    with pytest.raises(ConfigError, match="topk"):
        prune.PruneConfig(topk=0).validate()


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
    assert step["size"]["params_encoder"] <= json.loads((tmp_path / "ft.json").read_text())["size"]["params_encoder"]
    models.load_checkpoint(tmp_path / "ax")
    assert main(ax[:2] + [str(tmp_path / "nothing")] + ax[3:]) == 2  # missing parent: clear error
