"""Peer baselines (baselines/): registry, Michel et al. head pruning, top-layer dropping, matching, the CLI step."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import baselines
from axformer.taskdata import data
from axformer.surgery import elements, hard_attention
from axformer.encoders import models
from axformer.training import train
from axformer.training import batches
from axformer.cli import main
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError
from baselines.matching import encoder_params_of_arch, removed_heads
from baselines.headprune import head_importance, planted_zero_head
from baselines.layerdrop import drop_top_layers
from tiny_models import (assert_same_logits, same_splits, saved_and_reloaded, tiny_bert,
                         tiny_parent_checkpoint, tiny_pretrained)

TASK = get_task("sst2")


@pytest.fixture(scope="module")
def rows(data_dir, tokenizer):
    """32 real SST-2 train rows, tokenized (length <= 32)."""
    return data.tokenize(data.load_split(TASK, "train", data_dir).select(range(32)), tokenizer, TASK, max_length=32)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_builtin_and_unknown():
    assert {"headprune", "layerdrop"} <= set(baselines.available())
    assert baselines.get("headprune").__name__ == "headprune"
    with pytest.raises(ConfigError, match=r"unknown baseline method 'nope'.*headprune.*layerdrop"):
        baselines.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        baselines.register("headprune")(lambda *a: None)


# ------------------------------------------------------------------------------------------------ headprune
def test_importance_is_the_gate_gradient(rows, tokenizer):
    """|dL/dg_h| per sample, summed: equals a finite difference of scaling the head's value rows (context is
    linear in V), and does not depend on how samples are batched."""
    model = tiny_pretrained(TASK).double()
    ds = rows.select(range(3))
    imp = head_importance(model, ds, tokenizer, TASK, batch_size=2, normalize=False)["raw"]
    imp1 = head_importance(model, ds, tokenizer, TASK, batch_size=1, normalize=False)["raw"]
    for layer in imp:
        for h in imp[layer]:
            assert imp[layer][h] == pytest.approx(imp1[layer][h], rel=1e-6, abs=1e-12)
    layer, head, eps = 1, 2, 1e-3
    sa = model.base_model.encoder.layer[layer].attention.self
    rows_ = slice(head * sa.attention_head_size, (head + 1) * sa.attention_head_size)
    w0, b0 = sa.value.weight.detach().clone(), sa.value.bias.detach().clone()

    batch = next(iter(batches.make_loader(ds, tokenizer, batch_size=3, shuffle=False)))
    labels = batch.pop("labels")

    def losses(scale):  # per-sample CE in float64 (train.evaluate rounds to float32)
        with torch.no_grad():
            sa.value.weight[rows_] = w0[rows_] * scale
            sa.value.bias[rows_] = b0[rows_] * scale
            logits = model(**batch).logits
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")

    fd = ((losses(1 + eps) - losses(1 - eps)) / (2 * eps)).abs().sum().item()
    assert fd > 0
    assert imp[layer][head] == pytest.approx(fd, rel=1e-4)


def test_planted_useless_head_scores_lowest_and_is_pruned_first(rows, tokenizer):
    model = tiny_pretrained(TASK)
    planted_zero_head(model, 1, 2)
    before = batches.predict_logits(model, rows, tokenizer)[0]
    imp = head_importance(model, rows, tokenizer, TASK, batch_size=16)
    assert imp["raw"][1][2] == 0.0 and imp["normalized"][1][2] == 0.0
    others = [s for i, row in imp["raw"].items() for h, s in row.items() if (i, h) != (1, 2)]
    assert min(others) > 0
    model, info = baselines.get("headprune")(model, tokenizer, TASK, same_splits(rows), {"n_heads": 1, "batch_size": 16})
    assert info["removed"] == ["L1.head2"] and info["ranking"][0] == "L1.head2"
    assert info["scores"]["L1"]["head2"] == 0.0 and set(info["scores"]) == {"L0", "L1"}
    assert elements.architecture(model)["layers"][1]["heads"] == [0, 1, 3]
    assert info["params_encoder_after"] < info["params_encoder_before"]
    after = batches.predict_logits(model, rows, tokenizer)[0]
    torch.testing.assert_close(torch.from_numpy(after), torch.from_numpy(before), atol=1e-5, rtol=1e-5)
    json.dumps(info)  # lands in the step record


def _decisions(model, removed):
    """A hand-made decisions.json: the AxFormer removals applied to a copy of ``model``."""
    ax = copy.deepcopy(model)
    for name in removed:
        elements.remove(ax, name)
    return {"removed": removed, "arch": elements.architecture(ax), "n_heads": 4}, elements.count_encoder_params(ax)


def test_match_decisions_removes_same_number_of_heads(rows, tokenizer, tmp_path):
    model = tiny_pretrained(TASK)
    dec, ax_params = _decisions(model, ["L1.ffn_group3", "L1.head0", "L0.attn", "L0.ffn_group1"])
    assert removed_heads(dec, 4) == 5  # L0.attn counts as all 4 heads
    assert removed_heads({"removed": dec["removed"]}, 4) == 5  # without the arch record too
    assert encoder_params_of_arch(model, dec["arch"]) == ax_params
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(dec))
    m1, info = baselines.get("headprune")(copy.deepcopy(model), tokenizer, TASK, same_splits(rows), {"match": str(path)})
    assert info["n_removed"] == 5 and info["target"] == {"by": "heads", "n_heads": 5, "source": str(path)}
    arch = elements.architecture(m1)
    assert sum(len(r["heads"]) for r in arch["layers"]) == 8 - 5

    # by parameters: the fewest heads that bring the encoder to <= AxFormer's size
    m2, info = baselines.get("headprune")(copy.deepcopy(model), tokenizer, TASK, same_splits(rows),
                                          {"match": str(path), "match_by": "params"})
    n = info["n_removed"]
    assert info["params_encoder_after"] <= ax_params and n >= 1
    m3, info3 = baselines.get("headprune")(copy.deepcopy(model), tokenizer, TASK, same_splits(rows), {"n_heads": n - 1})
    assert info3["params_encoder_after"] > ax_params and info3["removed"] == info["removed"][: n - 1]
    with pytest.raises(ConfigError, match="even removing every attention head"):
        baselines.get("headprune")(copy.deepcopy(model), tokenizer, TASK, same_splits(rows), {"target_params": 1000})
    with pytest.raises(ConfigError, match="either n_heads or a match target"):
        baselines.get("headprune")(model, tokenizer, TASK, same_splits(rows), {"n_heads": 1, "match": str(path)})


# ------------------------------------------------------------------------------------------------ layerdrop
@pytest.mark.slow
def test_layerdrop_smaller_model_round_trips_and_trains(rows, tokenizer, tmp_path):
    parent = tiny_pretrained(TASK)
    elements.remove_heads(parent, 0, [1])  # an edited parent with hard attention: the records are trimmed
    hard_attention.enable(parent, [0, 1], 3)
    small = drop_top_layers(parent, 1)
    assert len(small.base_model.encoder.layer) == 1 and small.config.num_hidden_layers == 1
    assert small.config.axformer["hard_attention"]["layers"] == [0]
    assert elements.architecture(small)["layers"][0]["heads"] == [0, 2, 3]
    torch.testing.assert_close(small.base_model.encoder.layer[0].attention.self.query.weight,
                               parent.base_model.encoder.layer[0].attention.self.query.weight)
    assert parent.config.num_hidden_layers == 2  # the parent is untouched
    back = saved_and_reloaded(small, tokenizer, tmp_path / "edited")
    assert back.config.axformer["hard_attention"]["layers"] == [0] and back.config.num_hidden_layers == 1
    assert_same_logits(back, small, rows, tokenizer)

    plain = tiny_pretrained(TASK)
    before = train.evaluate(drop_top_layers(plain, 1), rows, tokenizer, TASK).mean_loss
    model, info = baselines.get("layerdrop")(plain, tokenizer, TASK, same_splits(rows),
                                             {"k": 1, "epochs": 6, "lr": 5e-3, "batch_size": 8, "progress": False})
    assert info["layers_after"] == 1 and info["dropped_layers"] == [1] and info["retrained"]
    after = train.evaluate(model, rows, tokenizer, TASK).mean_loss
    assert after < before - 0.1, (before, after)
    back = saved_and_reloaded(model, tokenizer, tmp_path / "ld")
    assert len(back.base_model.encoder.layer) == 1
    assert_same_logits(back, model, rows, tokenizer)
    json.dumps(info)


def test_matching_refusals_name_the_method_and_the_keys(rows, tokenizer):
    model = tiny_pretrained(TASK)
    cases = [("headprune", {"match_params": 123, "target_params": 456},
              r"^headprune: match_params=123 and target_params=456 give different targets"),
             ("layerdrop", {"target_params": 10**13}, r"^layerdrop: target_params must be an integer in \[0, "),
             ("fisher", {"match_by": "params"}, r"^fisher: match_by / match_params need --match")]
    for method, cfg, words in cases:
        with pytest.raises(ConfigError, match=words):
            baselines.get(method)(model, tokenizer, TASK, same_splits(rows), cfg)


def test_layerdrop_k_is_checked_by_the_declared_rule_with_the_encoders_bound():
    model = tiny_bert()  # 3 layers: k in [0, 2]
    for k in (3, -1, 1.5, True, None):
        with pytest.raises(ConfigError, match=r"^layerdrop: k must be an integer in \[0, 2\] \(got .*\)\. The encoder has 3"):
            drop_top_layers(model, k)
    assert len(drop_top_layers(model, 2).bert.encoder.layer) == 1


def test_layerdrop_match_picks_smallest_k(rows, tokenizer):
    model = tiny_pretrained(TASK)
    per_layer = elements.count_params(model.base_model.encoder.layer[0])
    total = elements.count_encoder_params(model)
    _m, info = baselines.get("layerdrop")(copy.deepcopy(model), tokenizer, TASK, same_splits(rows),
                                          {"target_params": total - 1, "epochs": 0})
    assert info["k"] == 1 and info["params_encoder_after"] == total - per_layer and not info["retrained"]
    _m, info = baselines.get("layerdrop")(copy.deepcopy(model), tokenizer, TASK, same_splits(rows),
                                          {"target_params": total, "epochs": 0})
    assert info["k"] == 0
    with pytest.raises(ConfigError, match="no k < 2"):
        baselines.get("layerdrop")(model, tokenizer, TASK, same_splits(rows), {"target_params": 10, "epochs": 0})


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def parent(tmp_path_factory, data_dir):
    """A (random tiny) parent checkpoint with the finetune step record, so the CLI re-creates its splits."""
    return tiny_parent_checkpoint(tmp_path_factory.mktemp("parent") / "ck", data_dir, TASK)


@pytest.mark.slow
def test_cli_registered_baseline_and_match(parent, tmp_path):
    calls = []

    @baselines.register("skipffn_test")
    def skipffn_test(model, tokenizer, task, splits_tokenized, cfg):
        calls.append((sorted(splits_tokenized), dict(cfg)))
        elements.skip_ffn(model, cfg["layer"])
        return model, {"layer": cfg["layer"], "n_search": len(splits_tokenized["search"])}

    try:
        assert baselines.get("skipffn_test") is skipffn_test
        out = tmp_path / "c"
        assert main(["baseline", "--method", "skipffn_test", "--parent", str(parent), "--ckpt", str(out / "ck"),
                     "--metrics", str(out / "step.json"), "--arg", "layer=1", "note=hi", "--no-progress"]) == 0
    finally:
        baselines.unregister("skipffn_test")
    assert calls[0][0] == ["dev", "search", "train"]
    assert calls[0][1] == {"layer": 1, "note": "hi", "seed": 0, "progress": False}
    rec = json.loads((out / "step.json").read_text())
    assert set(rec) >= {"baseline", "size", "data", "metric"}
    assert rec["baseline"]["method"] == "skipffn_test" and rec["baseline"]["info"] == {"layer": 1, "n_search": 16}
    assert rec["metric"]["name"] == "accuracy" and rec["metric"]["n_dev"] == 16 and rec["data"]["n_search"] == 16
    back, _ = models.load_checkpoint(out / "ck")
    assert elements.architecture(back)["layers"][1]["ffn_skipped"]
    assert rec["size"]["params_encoder"] == elements.count_encoder_params(back)
    step = json.loads((out / "ck" / "axformer_step.json").read_text())
    assert step["variant"] == "finetune+skipffn_test" and step["split"]["search_max"] == 16

    # headprune matched to a hand-made AxFormer decisions.json through the CLI
    model, _ = models.load_checkpoint(parent)
    dec, _p = _decisions(model, ["L1.head3", "L0.head0", "L0.head2"])
    (tmp_path / "decisions.json").write_text(json.dumps(dec))
    out = tmp_path / "h"
    assert main(["baseline", "--method", "headprune", "--parent", str(parent), "--ckpt", str(out / "ck"),
                 "--metrics", str(out / "step.json"), "--match", str(tmp_path / "decisions.json"),
                 "--no-progress"]) == 0
    rec = json.loads((out / "step.json").read_text())
    assert rec["baseline"]["info"]["n_removed"] == 3 and rec["baseline"]["info"]["n_rows"] == 16
    back, _ = models.load_checkpoint(out / "ck")
    assert sum(len(r["heads"]) for r in elements.architecture(back)["layers"]) == 5


def test_cli_unknown_method_and_bad_args(parent, tmp_path, capsys):
    out = tmp_path / "x"
    base = ["baseline", "--parent", str(parent), "--ckpt", str(out / "ck"), "--metrics", str(out / "step.json")]
    assert main([*base, "--method", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown baseline method 'nope'" in err and "headprune" in err and "Traceback" not in err
    assert main([*base, "--method", "headprune", "--arg", "novalue"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main([*base, "--method", "headprune", "--match", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--method", "headprune"]) == 2  # no amount given
    assert "needs an amount" in capsys.readouterr().err
    assert not out.exists()
