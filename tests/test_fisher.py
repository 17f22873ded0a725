"""The Fisher-based retraining-free pruning peer (baselines/fisher.py, Kwon et al. 2022) on a tiny random BERT."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import baselines
from axformer.taskdata import data
from axformer.surgery import elements
from axformer.measurement import cost
from axformer.encoders import models
from axformer.training import batches
from axformer.cli import main
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError
from baselines.fisher import block_loss, fisher_diag, mask_gradients, rearrange, search
from baselines.mask_tuning import apply_plan, tune_masks
from baselines.structure import Units, unit_costs
from baselines.headprune import planted_zero_head
from tiny_models import (assert_same_logits, same_splits, saved_and_reloaded, tiny_parent_checkpoint,
                         tiny_pretrained)

TASK = get_task("sst2")


@pytest.fixture(scope="module")
def rows(data_dir, tokenizer):
    """24 real SST-2 train rows, tokenized (length <= 32)."""
    return data.tokenize(data.load_split(TASK, "train", data_dir).select(range(24)), tokenizer, TASK, max_length=32)


def _hand_fisher(model, ds, tokenizer):
    """Sum over rows of squared mask gradients, one row at a time, with one shared (H,) / (N,) mask per layer."""
    layers = model.base_model.encoder.layer
    n_heads = model.config.num_attention_heads
    heads = {i: torch.zeros(n_heads, dtype=torch.float64) for i in range(len(layers))}
    neurons = {i: torch.zeros(model.config.intermediate_size, dtype=torch.float64) for i in range(len(layers))}
    for r in range(len(ds)):
        hm = [torch.ones(n_heads, dtype=torch.float64, requires_grad=True) for _ in layers]
        nm = [torch.ones(model.config.intermediate_size, dtype=torch.float64, requires_grad=True) for _ in layers]
        hooks = []
        for i, layer in enumerate(layers):
            def hh(_m, _a, out, i=i):
                ctx = out[0]
                b, t, d = ctx.shape
                return ((ctx.view(b, t, n_heads, d // n_heads) * hm[i][:, None]).view(b, t, d), *out[1:])
            hooks.append(layer.attention.self.register_forward_hook(hh))
            hooks.append(layer.intermediate.register_forward_hook(lambda _m, _a, out, i=i: out * nm[i]))
        batch = next(iter(batches.make_loader(ds.select([r]), tokenizer, 1, shuffle=False)))
        labels = batch.pop("labels")
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
        grads = torch.autograd.grad(loss, hm + nm)
        for h in hooks:
            h.remove()
        for i in range(len(layers)):
            heads[i] += grads[i].pow(2)
            neurons[i] += grads[len(layers) + i].pow(2)
    return heads, neurons


# ------------------------------------------------------------------------------------------------ 1. Fisher
def test_fisher_equals_hand_computed_squared_gradients(rows, tokenizer):
    model = tiny_pretrained(TASK).double()
    ds = rows.select(range(5))
    g = mask_gradients(model, ds, tokenizer, TASK, batch_size=3)  # per-sample grads from batched masks
    fh, fn = fisher_diag(g["head"]), fisher_diag(g["neuron"])
    hand_h, hand_n = _hand_fisher(model, ds, tokenizer)
    assert g["n_rows"] == 5 and set(fh) == set(fn) == {0, 1}
    for i in (0, 1):
        assert float(fh[i].min()) > 0
        torch.testing.assert_close(fh[i], hand_h[i], rtol=1e-6, atol=1e-14)
        torch.testing.assert_close(fn[i], hand_n[i], rtol=1e-6, atol=1e-14)
    assert not any(p.requires_grad is False for p in model.parameters())  # weights' flags restored


def test_planted_zero_head_has_zero_fisher(rows, tokenizer):
    model = tiny_pretrained(TASK)
    planted_zero_head(model, 1, 2)
    fh = fisher_diag(mask_gradients(model, rows, tokenizer, TASK, batch_size=8)["head"])
    assert float(fh[1][2]) == 0.0 and float(torch.cat([fh[0], fh[1][[0, 1, 3]]]).min()) > 0


# ------------------------------------------------------------------------------------------------ 2. search
def test_unit_costs_match_measured_flops_and_params():
    model = tiny_pretrained(TASK)
    c_h, c_n = unit_costs(model, "flops", 20)
    p_h, p_n = unit_costs(model, "params", 20)
    f0, p0 = cost.forward_flops(model, 1, 20), elements.count_encoder_params(model)
    elements.remove_heads(model, 0, [1])
    elements.remove_neurons(model, 1, [3, 7])
    assert cost.forward_flops(model, 1, 20) == f0 - c_h - 2 * c_n
    assert elements.count_encoder_params(model) == p0 - p_h - 2 * p_n


def test_search_is_the_best_count_split():
    g = torch.Generator().manual_seed(0)
    fh = {0: torch.rand(4, generator=g, dtype=torch.float64), 1: torch.rand(4, generator=g, dtype=torch.float64)}
    fn = {0: torch.rand(10, generator=g, dtype=torch.float64) / 4, 1: torch.rand(10, generator=g, dtype=torch.float64) / 4}
    c_h, c_n, budget = 5.0, 1.0, 23.0
    keep_h, keep_n, best = search(fh, fn, c_h, c_n, budget)
    nh, nn_ = sum(map(len, keep_h.values())), sum(map(len, keep_n.values()))
    assert nh * c_h + nn_ * c_n <= budget
    kept = sum(float(fh[i][k].sum()) for i, k in keep_h.items()) + sum(float(fn[i][k].sum()) for i, k in keep_n.items())
    assert kept == pytest.approx(best)
    hs = sorted(torch.cat(list(fh.values())).tolist(), reverse=True)
    ns = sorted(torch.cat(list(fn.values())).tolist(), reverse=True)
    brute = max(sum(hs[:a]) + sum(ns[:b]) for a in range(9) for b in range(21) if a * c_h + b * c_n <= budget)
    assert best == pytest.approx(brute)


def test_rearrange_prunes_a_cancelling_pair():
    """Units 1 and 2 have opposite gradients: pruning both nearly cancels under the block Fisher, where the
    diagonal Fisher alone prunes the two smallest (0 and 1)."""
    s = torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.stack([0.5 * s, 0.6 * s, -0.7 * s, 3 * s, 4 * s], dim=1)
    diag_keep = [2, 3, 4]
    new = rearrange(grads, 3)
    assert new == [0, 3, 4]
    assert block_loss(grads, new) < 0.01 * block_loss(grads, diag_keep)
    g = torch.randn(40, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    order = torch.argsort(g.pow(2).sum(0)).tolist()
    start = sorted(order[5:])
    new = rearrange(g, 7)
    assert len(new) == 7 and block_loss(g, new) <= block_loss(g, start) + 1e-12


# ------------------------------------------------------------------------------------------------ 3. tuning
def test_mask_tuning_lowers_reconstruction_error(rows, tokenizer):
    model = tiny_pretrained(TASK)
    keep_h = {0: [0, 2, 3], 1: [1, 3]}
    keep_n = {0: list(range(0, 128, 2)), 1: list(range(40, 128))}
    plain = tune_masks(model, rows, tokenizer, keep_h, keep_n, batch_size=8, tune=False)
    tuned = tune_masks(model, rows, tokenizer, keep_h, keep_n, batch_size=8, damp=1e-2)
    assert tuned["stopped"] is None and len(tuned["errors"]) == 4
    for e in tuned["errors"]:
        assert e["after"] <= e["before"] + 1e-9 and e["rel_after"] < 1
    assert any(e["after"] < 0.95 * e["before"] for e in tuned["errors"])
    assert tuned["final_rel_err"] < plain["final_rel_err"]
    assert all(bool((s[k] != 1).any()) for s, k in ((tuned["head_scale"][0], keep_h[0]),))
    for i in (0, 1):  # pruned units stay 0; kept units get real scales
        pruned = [p for p in range(4) if p not in keep_h[i]]
        assert bool((tuned["head_scale"][i][pruned] == 0).all()) and bool((tuned["head_scale"][i][keep_h[i]] != 0).all())

    # folding the scales and removing the units structurally gives the student the tuning computed
    pruned_model = copy.deepcopy(model)
    apply_plan(pruned_model, tuned["head_scale"], tuned["neuron_scale"])
    assert Units.of(pruned_model).heads == {0: [0, 2, 3], 1: [1, 3]}
    hooks, layers = [], model.base_model.encoder.layer
    for i, layer in enumerate(layers):
        hsc, nsc = tuned["head_scale"][i].float(), tuned["neuron_scale"][i].float()
        hooks.append(layer.attention.self.register_forward_hook(
            lambda _m, _a, out, s=hsc: ((out[0].view(*out[0].shape[:2], 4, -1) * s[:, None]).flatten(2), *out[1:])))
        hooks.append(layer.intermediate.register_forward_hook(lambda _m, _a, out, s=nsc: out * s))
    masked = batches.predict_logits(model, rows, tokenizer)[0]
    for h in hooks:
        h.remove()
    torch.testing.assert_close(torch.from_numpy(batches.predict_logits(pruned_model, rows, tokenizer)[0]),
                               torch.from_numpy(masked), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ the baseline
def _decisions(model, removed):
    ax = copy.deepcopy(model)
    for name in removed:
        elements.remove(ax, name)
    return {"removed": removed, "arch": elements.architecture(ax)}, ax


def test_constraints_are_met(rows, tokenizer, tmp_path):
    fisher = baselines.get("fisher")
    model = tiny_pretrained(TASK)
    _m, info = fisher(copy.deepcopy(model), tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "batch_size": 8})
    c_h, c_n = info["cost_head"], info["cost_neuron"]
    kept_cost = info["heads_after"] * c_h + info["neurons_after"] * c_n
    assert kept_cost <= 0.5 * (8 * c_h + 256 * c_n) + 1e-6
    assert info["flops_frac_after"] < 1 and info["heads_after"] + info["neurons_after"] < 8 + 256
    assert info["n_rows"] == 24 and info["seq_len"] == pytest.approx(sum(len(x) for x in rows["input_ids"]) / 24)
    json.dumps(info)

    dec, ax = _decisions(model, ["L1.ffn_group3", "L1.head0", "L0.head2", "L0.ffn_group1", "L0.ffn_group5"])
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(dec))
    m2, info = fisher(copy.deepcopy(model), tokenizer, TASK, same_splits(rows), {"match": str(path), "batch_size": 8})
    assert info["target"]["by"] == "params"
    assert info["params_encoder_after"] <= elements.count_encoder_params(ax) == info["target"]["params_encoder"]
    assert elements.count_encoder_params(m2) == info["params_encoder_after"]
    _m, info = fisher(copy.deepcopy(model), tokenizer, TASK, same_splits(rows),
                      {"match": str(path), "match_by": "flops", "seq_len": 32, "rearrange": False})
    assert info["flops_per_seq_after"] <= cost.forward_flops(ax, 1, 32) == info["target"]["flops_per_seq"]
    with pytest.raises(ConfigError, match="either flops_frac or a match target"):
        fisher(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "match": str(path)})
    with pytest.raises(ConfigError, match="needs an amount"):
        fisher(model, tokenizer, TASK, same_splits(rows), {})
    with pytest.raises(ConfigError, match="flops_frac must be"):
        fisher(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 1.5})
    with pytest.raises(ConfigError, match="dev is for reporting"):
        fisher(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "split": "dev"})
    with pytest.raises(ConfigError, match="unknown config keys"):
        fisher(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "nope": 1})


def test_pruned_model_reloads_with_identical_logits(rows, tokenizer, tmp_path):
    model = tiny_pretrained(TASK)
    pruned, info = baselines.get("fisher")(model, tokenizer, TASK, same_splits(rows),
                                           {"flops_frac": 0.4, "batch_size": 8, "max_rows": 16, "seed": 3})
    assert info["n_rows"] == 16 and info["params_encoder_after"] < info["params_encoder_before"]
    back = saved_and_reloaded(pruned, tokenizer, tmp_path / "ck")
    assert elements.architecture(back) == elements.architecture(pruned)
    assert elements.count_encoder_params(back) == info["params_encoder_after"]
    assert_same_logits(back, pruned, rows, tokenizer)


def test_cli_fisher_step(tmp_path, data_dir):
    parent = tiny_parent_checkpoint(tmp_path / "parent", data_dir, TASK)
    out = tmp_path / "f"
    assert main(["baseline", "--method", "fisher", "--parent", str(parent), "--ckpt", str(out / "ck"),
                 "--metrics", str(out / "step.json"), "--arg", "flops_frac=0.5", "--variant-name", "finetune+fisher_50",
                 "--no-progress"]) == 0
    rec = json.loads((out / "step.json").read_text())
    info = rec["baseline"]["info"]
    assert rec["baseline"]["method"] == "fisher" and info["n_rows"] == 16 and info["target"]["frac"] == 0.5
    assert set(info["timing"]) == {"fisher_s", "search_s", "rearrange_s", "tune_s"} and rec["baseline"]["wall_s"] > 0
    back, _ = models.load_checkpoint(out / "ck")
    assert rec["size"]["params_encoder"] == elements.count_encoder_params(back) == info["params_encoder_after"]


def test_edited_parent_and_full_mask_is_the_model(rows, tokenizer, tmp_path):
    """A parent with a skipped attention block and removed neurons: keeping every unit reproduces it exactly
    (the layer-by-layer pass equals the model's forward); pruning it further reloads."""
    model = tiny_pretrained(TASK)
    elements.skip_attention(model, 0)
    elements.remove_neurons(model, 1, list(range(10)))
    units = Units.of(model)
    assert set(units.heads) == {1} and len(units.neurons[1]) == 118
    full = tune_masks(model, rows, tokenizer, {i: list(range(len(h))) for i, h in units.heads.items()},
                      {i: list(range(len(n))) for i, n in units.neurons.items()}, batch_size=8, tune=False,
                      cls_only_last=False)
    assert full["final_rel_err"] < 1e-10 and all(abs(e["rel_before"]) < 1e-5 for e in full["errors"])  # float32 products
    pruned, info = baselines.get("fisher")(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "batch_size": 8})
    assert info["heads_before"] == 4 and info["neurons_before"] == 128 + 118
    back = saved_and_reloaded(pruned, tokenizer, tmp_path / "ck")
    assert elements.architecture(back)["layers"][0]["attn_skipped"]
    assert_same_logits(back, pruned, rows, tokenizer)
