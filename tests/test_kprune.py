"""The K-prune peer (baselines/kprune.py, Park et al. 2024) on a tiny random BERT."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import baselines
from axformer.taskdata import data
from axformer.surgery import elements
from axformer.encoders import models
from axformer.training import batches
from axformer.cli import main
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError
from baselines.structure import Units
from baselines.headprune import planted_zero_head
from baselines.args import parse_args
from baselines.kprune import ARGS, _err, distill_loss, measure_knowledge, select, sublayers, tune_weights
from tiny_models import (assert_same_logits, same_splits, saved_and_reloaded, tiny_parent_checkpoint,
                         tiny_pretrained)

TASK = get_task("sst2")


@pytest.fixture(scope="module")
def rows(data_dir, tokenizer):
    """24 real SST-2 train rows, tokenized (length <= 32)."""
    return data.tokenize(data.load_split(TASK, "train", data_dir).select(range(24)), tokenizer, TASK, max_length=32)


def _batches(model, ds, tokenizer, bs=8):
    bs_ = [batches.model_inputs(b, "cpu") for b in batches.make_loader(ds, tokenizer, bs, shuffle=False)]
    with torch.no_grad():
        return bs_, [model(**b).logits for b in bs_]


def test_distill_loss_by_hand():
    s, t = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]])
    # T = 2: p_t = (1/2, 1/2), p_s = softmax(0, 1); KL = sum p_t log(p_t / p_s), times T^2
    ps = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    hand = 4 * float(0.5 * math.log(0.5 / ps[0]) + 0.5 * math.log(0.5 / ps[1]))
    assert float(distill_loss(s, t, False, 2.0)[0]) == pytest.approx(hand, rel=1e-6)
    assert float(distill_loss(t, t, False, 2.0)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(distill_loss(torch.tensor([[3.0]]), torch.tensor([[1.0]]), True, 2.0)[0]) == 4.0


def test_select_keeps_the_best_prefix_that_fits():
    scores = {(0, "mha"): torch.tensor([5.0, 1.0]), (0, "ffn"): torch.tensor([4.0, 3.0, 0.5]),
              (1, "mha"): torch.tensor([2.0, 6.0])}
    costs = {"mha": 10.0, "ffn": 1.0}
    # ranking: 6 (L1 head, 10), 5 (L0 head, 10), 4, 3 (L0 neurons, 1 each), 2 (L1 head, 10) ...: budget 22
    # buys 6, 5, 4, 3 (cost 22); the next unit (cost 10) does not fit
    assert select(scores, costs, 22.0, (0, "mha")) == [0]
    assert select(scores, costs, 22.0, (0, "ffn")) == [0, 1]
    assert select(scores, costs, 9.0, (0, "mha")) == []
    assert select(scores, costs, 1e9, (0, "ffn")) == [0, 1, 2]


def test_knowledge_at_the_first_sublayer(rows, tokenizer):
    """Student = teacher: no predictive knowledge (the KL is at its minimum); the representational knowledge is
    the per-token squared contribution, by hand; a planted zero head carries none; keeping every unit
    reconstructs the teacher exactly (the original weights solve the least squares with zero error)."""
    model = tiny_pretrained(TASK)
    planted_zero_head(model, 0, 2)
    batches, z = _batches(model, rows, tokenizer)
    k = measure_knowledge(model, copy.deepcopy(model), batches, z, TASK, (0, "mha"), 2.0)
    assert set(k["pred"]) == set(sublayers(model)) and k["n_rows"] == 24
    assert all(float(v.abs().max()) < 1e-12 for v in k["pred"].values())
    # by hand: the attention output projection's input, real tokens only
    layer = model.base_model.encoder.layer[0]
    got = []
    h = layer.attention.output.dense.register_forward_pre_hook(lambda _m, a: got.append(a[0]))
    with torch.no_grad():
        for b in batches:
            model(**b)
    h.remove()
    f = torch.cat([g[b["attention_mask"].bool()] for g, b in zip(got, batches)]).double()
    w = layer.attention.output.dense.weight.double()
    hand = ((f ** 2).sum(0) * (w ** 2).mean(0)).view(4, -1).mean(1) / f.shape[0]
    torch.testing.assert_close(k["rep"][(0, "mha")], hand, rtol=1e-5, atol=1e-12)
    assert float(k["rep"][(0, "mha")][2]) == 0.0 and float(k["rep"][(0, "mha")].min(0).values) == 0.0
    assert k["n_tokens"] == f.shape[0]
    dims = list(range(k["w_target"].shape[1]))
    assert _err(k["gram"], k["cross"], k["bnorm"], dims, k["w_target"].T) == pytest.approx(0.0, abs=1e-6 * k["bnorm"] + 1e-9)
    assert k["bnorm"] > 0


def test_tuning_lowers_the_reconstruction_error():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    b = f @ w
    gram, cross = f.T @ f, f.T @ b
    sol = tune_weights(gram, cross, [0, 2, 3, 5])
    direct = torch.linalg.lstsq(f[:, [0, 2, 3, 5]], b).solution
    torch.testing.assert_close(sol, direct)
    assert tune_weights(gram, cross, []) is None
    torch.testing.assert_close(tune_weights(gram, cross, list(range(6))), w)


def test_constraints_are_met_and_tuning_helps(rows, tokenizer):
    kprune = baselines.get("kprune")
    model = tiny_pretrained(TASK)
    for key in ("flops_frac", "params_frac"):
        _m, info = kprune(copy.deepcopy(model), tokenizer, TASK, same_splits(rows), {key: 0.5, "batch_size": 8})
        c_h, c_n = info["cost_head"], info["cost_neuron"]
        assert info["cost_by"] == key.split("_")[0]
        assert info["kept_cost"] == info["heads_after"] * c_h + info["neurons_after"] * c_n
        assert info["kept_cost"] <= info["budget"] + 1e-6 and info["budget"] == pytest.approx(0.5 * (8 * c_h + 256 * c_n))
        assert info["heads_after"] + info["neurons_after"] < 8 + 256 and len(info["sublayers"]) == 4
        for e in info["sublayers"]:
            assert e["rel_err_after"] <= e["rel_err_before"] + 1e-9
        json.dumps(info)
    assert info["n_rows"] == 24 and info["n_tokens"] == sum(len(x) for x in rows["input_ids"])
    assert info["params_encoder_after"] < info["params_encoder_before"]
    # the sample size: num_tokens real tokens' worth of rows
    _m, info = kprune(copy.deepcopy(model), tokenizer, TASK, same_splits(rows), {"flops_frac": 0.9, "num_tokens": 100})
    assert info["n_rows"] == math.ceil(100 / (sum(len(x) for x in rows["input_ids"]) / 24)) < 24
    with pytest.raises(ConfigError, match="either flops_frac or params_frac"):
        kprune(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "params_frac": 0.5})
    with pytest.raises(ConfigError, match="needs an amount"):
        kprune(model, tokenizer, TASK, same_splits(rows), {})
    with pytest.raises(ConfigError, match="flops_frac must be a number in \\(0, 1\\]"):
        kprune(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 1.5})
    with pytest.raises(ConfigError, match="dev is for reporting"):
        kprune(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "split": "dev"})
    with pytest.raises(ConfigError, match="unknown config keys"):
        kprune(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "nope": 1})
    with pytest.raises(ConfigError, match="num_tokens must be an integer"):
        parse_args("kprune", ARGS, {"num_tokens": 0.5})
    assert parse_args("kprune", ARGS, {"tune": "false"})["tune"] is False


def test_matched_to_axformers_size(rows, tokenizer, tmp_path):
    """The bench's `finetune+kprune`: no larger than AxFormer's encoder (match_by params; the FLOPs match is
    baselines.structure.budget_of's, shared with Fisher and tested there)."""
    kprune = baselines.get("kprune")
    model = tiny_pretrained(TASK)
    ax = copy.deepcopy(model)
    removed = ["L1.ffn_group3", "L1.head0", "L0.head2", "L0.ffn_group1", "L0.ffn_group5"]
    for name in removed:
        elements.remove(ax, name)
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps({"removed": removed, "arch": elements.architecture(ax)}))
    m2, info = kprune(copy.deepcopy(model), tokenizer, TASK, same_splits(rows),
                      {"match": str(path), "match_by": "params", "batch_size": 8})
    target = elements.count_encoder_params(ax)
    assert info["target"]["by"] == "params" and info["target"]["params_encoder"] == target
    assert elements.count_encoder_params(m2) == info["params_encoder_after"] <= target
    # the selection stops at the first unit that does not fit: less than one unit below AxFormer's size
    assert target - info["params_encoder_after"] < info["cost_head"] + info["cost_neuron"]
    with pytest.raises(ConfigError, match="either flops_frac or"):
        kprune(model, tokenizer, TASK, same_splits(rows), {"flops_frac": 0.5, "match": str(path)})


def test_pruned_model_reloads_with_identical_logits(rows, tokenizer, tmp_path):
    model = tiny_pretrained(TASK)
    pruned, info = baselines.get("kprune")(model, tokenizer, TASK, same_splits(rows),
                                           {"flops_frac": 0.3, "batch_size": 8, "seed": 3})
    assert elements.architecture(pruned) != elements.architecture(tiny_pretrained(TASK))
    assert Units.of(pruned).n_heads() == info["heads_after"]
    back = saved_and_reloaded(pruned, tokenizer, tmp_path / "ck")
    assert elements.architecture(back) == elements.architecture(pruned)
    assert elements.count_encoder_params(back) == info["params_encoder_after"]
    assert_same_logits(back, pruned, rows, tokenizer)


def test_cli_kprune_step(tmp_path, data_dir):
    parent = tiny_parent_checkpoint(tmp_path / "parent", data_dir, TASK)
    out = tmp_path / "k"
    assert main(["baseline", "--method", "kprune", "--parent", str(parent), "--ckpt", str(out / "ck"),
                 "--metrics", str(out / "step.json"), "--arg", "flops_frac=0.6", "--variant-name",
                 "finetune+kprune_f60", "--no-progress"]) == 0
    rec = json.loads((out / "step.json").read_text())
    info = rec["baseline"]["info"]
    assert rec["baseline"]["method"] == "kprune" and info["n_rows"] == 16 and info["target"]["frac"] == 0.6
    assert set(info["timing"]) == {"measure_s", "tune_s"} and rec["baseline"]["wall_s"] > 0
    back, _ = models.load_checkpoint(out / "ck")
    assert rec["size"]["params_encoder"] == elements.count_encoder_params(back) == info["params_encoder_after"]


def test_sweep_budgets_of_fisher_and_headprune(rows, tokenizer):
    """The other peers' sweep budgets: Fisher's params_frac (kept fraction of the head + FFN parameters) and
    head pruning's params_frac (kept fraction of the heads: 4 of 8 at 0.5, 2 of 8 at 0.3)."""
    model = tiny_pretrained(TASK)
    _m, info = baselines.get("fisher")(copy.deepcopy(model), tokenizer, TASK, same_splits(rows),
                                       {"params_frac": 0.5, "batch_size": 8, "rearrange": False, "tune": False})
    c_h, c_n = info["cost_head"], info["cost_neuron"]
    assert info["cost_by"] == "params" and info["target"] == {"by": "params_frac", "frac": 0.5}
    assert info["heads_after"] * c_h + info["neurons_after"] * c_n <= 0.5 * (8 * c_h + 256 * c_n)
    assert info["params_encoder_after"] < info["params_encoder_before"]
    for frac, kept in ((0.5, 4), (0.3, 2), (1.0, 8)):
        _m, info = baselines.get("headprune")(copy.deepcopy(model), tokenizer, TASK, same_splits(rows),
                                              {"params_frac": frac, "batch_size": 8})
        assert info["heads_after"] == kept and info["target"]["source"] == "params_frac"
    with pytest.raises(ConfigError, match="either params_frac or another amount"):
        baselines.get("headprune")(model, tokenizer, TASK, same_splits(rows), {"params_frac": 0.5, "n_heads": 2})
    with pytest.raises(ConfigError, match="params_frac must be"):
        baselines.get("headprune")(model, tokenizer, TASK, same_splits(rows), {"params_frac": 2})
