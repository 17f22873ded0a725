"""axformer.surgery.elements: structural removal of heads / FFN neuron groups / whole blocks on a tiny random BERT."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
)

from axformer.surgery import elements as el
from axformer.surgery import hard_attention as ha
from axformer.surgery.elements import Element
from tiny_models import tiny_bert, tiny_bert_config

HIDDEN, HEADS, LAYERS, INTER = 32, 4, 3, 48
D = HIDDEN // HEADS


def tiny_config(**kw) -> BertConfig:
    return tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)


def tiny_model(seed: int = 0, cls=BertForSequenceClassification, **kw) -> torch.nn.Module:
    m = tiny_bert(seed, cls, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    # Random init leaves LayerNorms at (1, 0) and biases at 0: perturb so every parameter matters in the checks.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def logits(model, inputs=None):
    return model(**(inputs or batch())).logits


def enc_layer(model, i):
    return model.base_model.encoder.layer[i]


# ---------------------------------------------------------------------------------------------------------- Element


def test_element_names_and_roundtrip():
    cases = {
        Element(5, "ffn"): "L5.ffn",
        Element(5, "ffn_group", 3): "L5.ffn_group3",
        Element(2, "head", 7): "L2.head7",
        Element(2, "attn"): "L2.attn",
    }
    for e, name in cases.items():
        assert e.name == name == str(e)
        assert Element.from_name(name) == e
        assert Element.from_dict(e.to_dict()) == e
    with pytest.raises(ValueError, match="kind"):
        Element(0, "mlp")
    with pytest.raises(ValueError, match="index"):
        Element(0, "head")
    with pytest.raises(ValueError, match="no index"):
        Element(0, "attn", 1)
    with pytest.raises(ValueError, match="layer"):
        Element(-1, "ffn")
    with pytest.raises(ValueError, match="cannot parse"):
        Element.from_name("layer2.head")


# ---------------------------------------------------------------------------------------------------------- heads


def zero_heads_by_value(model, layer, heads):
    """Zero a head's value-projection rows + bias: its attention output is then exactly 0."""
    v = enc_layer(model, layer).attention.self.value
    with torch.no_grad():
        for h in heads:
            v.weight[h * D : (h + 1) * D] = 0
            v.bias[h * D : (h + 1) * D] = 0


def test_remove_head_equals_zeroing_and_ids_are_original():
    m = tiny_model()
    ref = copy.deepcopy(m)
    zero_heads_by_value(ref, 1, [1])
    el.remove_heads(m, 1, [1])
    torch.testing.assert_close(logits(m), logits(ref), atol=1e-5, rtol=0)
    # second removal uses ORIGINAL id 3 (now at position 2)
    zero_heads_by_value(ref, 1, [3])
    el.remove(m, Element(1, "head", 3))
    torch.testing.assert_close(logits(m), logits(ref), atol=1e-5, rtol=0)
    sa = enc_layer(m, 1).attention.self
    assert sa.num_attention_heads == 2 and sa.all_head_size == 2 * D
    assert sa.query.weight.shape == (2 * D, HIDDEN)
    assert enc_layer(m, 1).attention.output.dense.weight.shape == (HIDDEN, 2 * D)
    assert m.config.axformer["arch"]["layers"][1]["heads"] == [0, 2]
    assert m.config.num_attention_heads == HEADS  # the config still describes the original model


def test_head_param_count():
    m = tiny_model()
    before_enc, before_all = el.count_encoder_params(m), el.count_params(m)
    el.remove_heads(m, 0, [0, 2])
    # q, k, v lose d rows (+ d bias) each; attention.output.dense loses d input columns, per head.
    per_head = 3 * (D * HIDDEN + D) + D * HIDDEN
    assert before_enc - el.count_encoder_params(m) == 2 * per_head
    assert before_all - el.count_params(m) == 2 * per_head


def test_removing_all_heads_skips_attention():
    m = tiny_model()
    el.remove_heads(m, 2, [0, 1])
    el.remove_heads(m, 2, [2, 3])
    rec = el.architecture(m)["layers"][2]
    assert rec["attn_skipped"] and rec["heads"] == []
    assert isinstance(enc_layer(m, 2).attention, el.SkippedAttention)


# ---------------------------------------------------------------------------------------------------------- FFN


def test_ffn_groups_cover_original_neurons():
    m = tiny_model()
    groups = el.ffn_groups(m, 0, 12)
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    assert sum(groups, []) == list(range(INTER))
    uneven = el.ffn_groups(m, 0, 5)  # 48 = 10+10+10+9+9
    assert [len(g) for g in uneven] == [10, 10, 10, 9, 9] and sum(uneven, []) == list(range(INTER))


def test_remove_ffn_group_equals_zeroing_and_param_count():
    m = tiny_model()
    ref = copy.deepcopy(m)
    groups = el.ffn_groups(m, 1, 12)
    before = el.count_encoder_params(m)

    def zero(neurons):
        dense = enc_layer(ref, 1).intermediate.dense
        with torch.no_grad():
            dense.weight[neurons] = 0
            dense.bias[neurons] = 0  # GELU(0) = 0: the neuron contributes nothing

    el.remove(m, Element(1, "ffn_group", 5))
    zero(groups[5])
    torch.testing.assert_close(logits(m), logits(ref), atol=1e-5, rtol=0)
    # partial overlap: remove a neuron of group 7 directly, then the group removes only what is left
    el.remove_neurons(m, 1, [groups[7][0]])
    el.remove(m, Element(1, "ffn_group", 7))
    zero(groups[7])
    torch.testing.assert_close(logits(m), logits(ref), atol=1e-5, rtol=0)
    n_removed = 8
    assert before - el.count_encoder_params(m) == n_removed * (2 * HIDDEN + 1)
    assert enc_layer(m, 1).intermediate.dense.weight.shape == (INTER - n_removed, HIDDEN)
    assert enc_layer(m, 1).output.dense.weight.shape == (HIDDEN, INTER - n_removed)
    kept = m.config.axformer["arch"]["layers"][1]["neurons"]
    assert kept == [n for n in range(INTER) if n not in groups[5] + groups[7]]
    assert m.config.intermediate_size == INTER


# ---------------------------------------------------------------------------------------------------------- skips


def capture_layer_io(model, layer):
    store = {}

    def hook(mod, args, kwargs, out):
        store["x"] = args[0] if args else kwargs["hidden_states"]
        store["y"] = out[0] if isinstance(out, tuple) else out

    h = enc_layer(model, layer).register_forward_hook(hook, with_kwargs=True)
    return store, h


def test_skip_attention_keeps_residual_layernorm():
    m = tiny_model()
    orig = copy.deepcopy(enc_layer(m, 1))
    before = el.count_encoder_params(m)
    el.remove(m, Element(1, "attn"))
    assert before - el.count_encoder_params(m) == 4 * (HIDDEN * HIDDEN + HIDDEN)
    store, h = capture_layer_io(m, 1)
    logits(m)
    h.remove()
    ln = orig.attention.output.LayerNorm
    x = store["x"]
    attn_out = F.layer_norm(x, (HIDDEN,), ln.weight, ln.bias, ln.eps)  # LayerNorm(residual), by hand
    with torch.no_grad():
        expected = orig.output(orig.intermediate(attn_out), attn_out)
    torch.testing.assert_close(store["y"], expected, atol=1e-6, rtol=0)
    # the skipped module returns (LayerNorm(x), None) directly too
    out, weights = enc_layer(m, 1).attention(x, None)
    assert weights is None
    torch.testing.assert_close(out, attn_out, atol=1e-6, rtol=0)


def test_skip_ffn_keeps_residual_layernorm_and_both_skipped():
    m = tiny_model()
    orig = copy.deepcopy(enc_layer(m, 0))
    before = el.count_encoder_params(m)
    el.skip_ffn(m, 0)
    assert before - el.count_encoder_params(m) == 2 * HIDDEN * INTER + INTER + HIDDEN
    store, h = capture_layer_io(m, 0)
    logits(m)
    h.remove()
    x = store["x"]
    with torch.no_grad():  # the (untouched) attention block, with the same padding mask the model used
        attn_out = orig.attention(x, _padding_mask(m, x))[0]
    ln = orig.output.LayerNorm
    torch.testing.assert_close(store["y"], F.layer_norm(attn_out, (HIDDEN,), ln.weight, ln.bias, ln.eps), atol=1e-6, rtol=0)

    # both blocks skipped: layer = LN_ffn(LN_attn(x))
    el.skip_attention(m, 0)
    store, h = capture_layer_io(m, 0)
    logits(m)
    h.remove()
    ln_a = orig.attention.output.LayerNorm
    x = store["x"]
    y = F.layer_norm(F.layer_norm(x, (HIDDEN,), ln_a.weight, ln_a.bias, ln_a.eps), (HIDDEN,), ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(store["y"], y, atol=1e-6, rtol=0)


def _padding_mask(model, x):
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=x, attention_mask=batch()["attention_mask"])


# ---------------------------------------------------------------------------------------------------------- records


def apply_edits(m, kind):
    if kind in ("head", "mixed"):
        el.remove_heads(m, 0, [1, 2])
    if kind in ("ffn_group", "mixed"):
        el.remove(m, Element(2, "ffn_group", 0))
        el.remove(m, Element(2, "ffn_group", 11))
    if kind in ("attn", "mixed"):
        el.skip_attention(m, 1)
    if kind in ("ffn", "mixed"):
        el.skip_ffn(m, 1 if kind == "ffn" else 0)
    if kind == "mixed":
        ha.enable(m, [0, 2], 3)


@pytest.mark.parametrize("kind", ["head", "ffn_group", "attn", "ffn", "mixed"])
def test_save_load_identical_logits(tmp_path, reload_checkpoint, kind):
    m = tiny_model()
    apply_edits(m, kind)
    want = logits(m)
    back = reload_checkpoint(m, tmp_path)
    torch.testing.assert_close(logits(back), want, atol=1e-6, rtol=0)
    assert el.architecture(back) == el.architecture(m)
    assert el.count_params(back) == el.count_params(m)
    assert back.config.axformer == m.config.axformer


def test_edited_config_needs_apply_architecture(tmp_path, reload_checkpoint):
    """A model freshly built from an edited config is refused by the removers until it is shrunk; the one loader
    (models.load_checkpoint) shrinks it, restores hard attention and reproduces the logits."""
    m = tiny_model()
    apply_edits(m, "mixed")
    want = logits(m)
    back = reload_checkpoint(m, tmp_path)
    torch.testing.assert_close(logits(back), want, atol=1e-6, rtol=0)
    assert ha.enabled_layers(back) == ha.enabled_layers(m) == [0, 2]
    fresh = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tmp_path))
    with pytest.raises(ValueError, match="apply_architecture"):
        el.remove_heads(fresh, 2, [0])


def test_apply_architecture_on_unedited_reproduces_edit():
    m = tiny_model()
    pristine = copy.deepcopy(m)
    apply_edits(m, "head")
    el.remove(m, Element(2, "ffn_group", 4))
    el.skip_attention(m, 1)
    el.apply_architecture(pristine, el.architecture(m))
    torch.testing.assert_close(logits(pristine), logits(m), atol=0, rtol=0)
    # applying further: superset -> subset works, restoring removed elements does not
    target = el.architecture(pristine)
    target["layers"][0]["heads"] = [0]
    el.apply_architecture(pristine, target)
    assert el.architecture(pristine)["layers"][0]["heads"] == [0]
    target["layers"][0]["heads"] = [0, 1]
    with pytest.raises(ValueError, match="already removed"):
        el.apply_architecture(pristine, target)


def test_other_axformer_keys_preserved_and_record_initialised():
    m = tiny_model()
    assert getattr(m.config, "axformer", None) is None
    m.config.axformer = {"foo": {"bar": 1}}
    rec = el.architecture(m)
    assert len(rec["layers"]) == LAYERS and rec["layers"][0]["heads"] == list(range(HEADS))
    el.remove_heads(m, 0, [0])
    assert m.config.axformer["foo"] == {"bar": 1}
    assert "axformer" in m.config.to_dict()


def test_list_elements_tracks_edits():
    m = tiny_model()
    names = [e.name for e in el.list_elements(m, n_groups=4)]
    assert names[:6] == ["L0.attn", "L0.head0", "L0.head1", "L0.head2", "L0.head3", "L0.ffn"]
    assert len(names) == LAYERS * (1 + HEADS + 1 + 4)
    el.skip_attention(m, 0)
    el.remove(m, Element(1, "ffn_group", 2), n_groups=4)
    el.remove_heads(m, 1, [3])
    names = {e.name for e in el.list_elements(m, n_groups=4)}
    assert not any(n.startswith("L0.attn") or n.startswith("L0.head") for n in names)
    assert "L1.ffn_group2" not in names and "L1.head3" not in names and "L1.head2" in names


def test_question_answering_model(tmp_path, reload_checkpoint):
    m = tiny_model(cls=BertForQuestionAnswering, num_labels=2)
    el.remove_heads(m, 1, [0])
    el.skip_ffn(m, 2)
    out = m(**batch())
    back = reload_checkpoint(m, tmp_path)
    assert isinstance(back, BertForQuestionAnswering)
    torch.testing.assert_close(back(**batch()).start_logits, out.start_logits, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_value_errors():
    m = tiny_model()
    with pytest.raises(ValueError, match="layer"):
        el.remove_heads(m, LAYERS, [0])
    with pytest.raises(ValueError, match="head id"):
        el.remove_heads(m, 0, [HEADS])
    with pytest.raises(ValueError, match="no layer 0 head ids"):
        el.remove_heads(m, 0, [])
    with pytest.raises(ValueError, match="list of ints"):
        el.remove_heads(m, 0, 1)
    el.remove_heads(m, 0, [1])
    with pytest.raises(ValueError, match="already removed"):
        el.remove_heads(m, 0, [1])
    with pytest.raises(ValueError, match="already removed"):
        el.remove(m, Element(0, "head", 1))
    with pytest.raises(ValueError, match="FFN neuron id"):
        el.remove_neurons(m, 0, [INTER])
    el.remove(m, Element(0, "ffn_group", 0))
    with pytest.raises(ValueError, match="already removed"):
        el.remove(m, Element(0, "ffn_group", 0))
    with pytest.raises(ValueError, match="group index"):
        el.remove(m, Element(0, "ffn_group", 12))
    with pytest.raises(ValueError, match="n_groups"):
        el.ffn_groups(m, 0, 0)
    with pytest.raises(ValueError, match="head index"):
        el.remove(m, Element(0, "head", HEADS))
    el.skip_attention(m, 2)
    with pytest.raises(ValueError, match="already skipped"):
        el.skip_attention(m, 2)
    with pytest.raises(ValueError, match="already skipped"):
        el.remove_heads(m, 2, [0])
    el.skip_ffn(m, 2)
    with pytest.raises(ValueError, match="already skipped"):
        el.remove(m, Element(2, "ffn"))
    with pytest.raises(ValueError, match="already skipped"):
        el.remove_neurons(m, 2, [0])
    bad = el.architecture(m)
    bad["layers"] = bad["layers"][:2]
    with pytest.raises(ValueError, match="layers"):
        el.apply_architecture(tiny_model(), bad)
    bad = el.architecture(m)
    bad["layers"][1]["attn_skipped"] = True
    with pytest.raises(ValueError, match="contradicts"):
        el.apply_architecture(tiny_model(), bad)
    bad = el.architecture(m)
    bad["layers"][1]["heads"] = [3, 0]
    with pytest.raises(ValueError, match="sorted unique"):
        el.apply_architecture(tiny_model(), bad)
