"""axformer.hard_attention: top-K sparse attention on selected layers of a tiny random BERT."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from axformer import elements as el
from axformer import hard_attention as ha

HIDDEN, HEADS, LAYERS, INTER = 32, 4, 3, 48


def tiny_model(seed: int = 0, attn: str | None = None) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=60,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_hidden_layers=LAYERS,
        intermediate_size=INTER,
        max_position_embeddings=32,
        num_labels=3,
    )
    m = BertForSequenceClassification(cfg)
    with torch.no_grad():  # bigger attention logits so top-K visibly matters
        for layer in m.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(4)
            layer.attention.self.key.weight.mul_(4)
    if attn is not None:
        m.set_attn_implementation(attn)
    return m.eval()


LENGTHS = [12, 7, 4]


def padded_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 60, (len(LENGTHS), max(LENGTHS)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


@torch.no_grad()
def logits(model, ids=None, mask=None):
    if ids is None:
        ids, mask = padded_batch()
    return model(input_ids=ids, attention_mask=mask).logits


def test_registered_with_transformers():
    assert ha.IMPL_NAME in ALL_ATTENTION_FUNCTIONS
    assert ha.IMPL_NAME in ALL_MASK_ATTENTION_FUNCTIONS  # else padding would be silently dropped


@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("k", [1000, 12, 1.0])
def test_k_covering_length_equals_softmax_attention(base, k):
    m = tiny_model(attn=base)
    want = logits(m)
    ha.enable(m, list(range(LAYERS)), k)
    assert m.config._attn_implementation == ha.IMPL_NAME
    assert m.config.axformer["hard_attention"] == {"layers": [0, 1, 2], "k": k, "base": base}
    torch.testing.assert_close(logits(m), want, atol=1e-6, rtol=0)


def test_non_hard_layers_are_bit_identical():
    m = tiny_model()
    ids, mask = padded_batch()
    with torch.no_grad():
        want = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    ha.enable(m, [2], 1)
    with torch.no_grad():
        got = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for i in range(3):  # embeddings, layer 0, layer 1 outputs
        assert torch.equal(got[i], want[i])
    assert not torch.allclose(got[3], want[3], atol=1e-3)


def test_small_k_changes_output():
    m = tiny_model()
    ids, mask = padded_batch()
    with torch.no_grad():
        want = m.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        ha.enable(m, [0, 1, 2], 1)
        got = m.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - want).abs().max() > 0.05


@pytest.mark.parametrize("k", [1, 3, 100, 0.3, 1.0])
def test_padding_honoured(k):
    m = tiny_model()
    ha.enable(m, [0, 2], k)
    ids, mask = padded_batch()
    batched = logits(m, ids, mask)
    for i, n in enumerate(LENGTHS):
        alone = logits(m, ids[i : i + 1, :n], mask[i : i + 1, :n])
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_fraction_k_matches_absolute_k_per_sequence():
    m = tiny_model()
    ids, mask = padded_batch()
    ha.enable(m, [0, 1, 2], 0.4)
    got = [logits(m, ids[i : i + 1, :n], mask[i : i + 1, :n]) for i, n in enumerate(LENGTHS)]
    for i, n in enumerate(LENGTHS):
        ha.enable(m, [0, 1, 2], math.ceil(0.4 * n))
        torch.testing.assert_close(got[i], logits(m, ids[i : i + 1, :n], mask[i : i + 1, :n]), atol=1e-6, rtol=0)


def test_effective_k():
    assert ha.effective_k(8, [5, 20]) == [5, 8]
    assert ha.effective_k(0.25, [5, 20, 1]) == [2, 5, 1]
    assert ha.effective_k(0.1, 30) == 3  # 0.1 * 30 = 3.0000000000000004 must not round up to 4
    assert ha.effective_k(0.01, 10) == 1
    with pytest.raises(ValueError):
        ha.effective_k(0, [3])


def reference_topk(q, k, v, allowed, keep):
    """Brute force: per (batch, head, query) keep the `keep` best real keys, softmax over them."""
    B, H, T, _ = q.shape
    out = torch.zeros_like(q)
    scale = q.shape[-1] ** -0.5
    for b in range(B):
        for h in range(H):
            for t in range(T):
                real = allowed[b].nonzero().flatten()
                s = (k[b, h, real] @ q[b, h, t]) * scale
                kk = ha.effective_k(keep, int(real.numel()))
                top = s.topk(kk).indices
                p = torch.softmax(s[top], dim=0)
                out[b, h, t] = p @ v[b, h, real[top]]
    return out.transpose(1, 2)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
@pytest.mark.parametrize("keep", [1, 2, 0.5])
def test_function_matches_brute_force(mask_kind, keep):
    torch.manual_seed(0)
    B, H, T, d = 2, 3, 6, 4
    q, k, v = (torch.randn(B, H, T, d) for _ in range(3))
    allowed = torch.ones(B, T, dtype=torch.bool)
    if mask_kind != "none":
        allowed[1, 4:] = False
    if mask_kind == "bool":
        mask = allowed[:, None, None, :].expand(B, 1, T, T)
    elif mask_kind == "float":
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None, None, :].expand(B, 1, T, T)
    else:
        mask = None
    module = torch.nn.Module()
    module.axformer_topk = keep
    out, probs = ha.topk_attention_forward(module, q, k, v, mask, scaling=d**-0.5)
    torch.testing.assert_close(out, reference_topk(q, k, v, allowed, keep), atol=1e-6, rtol=0)
    n_kept = (probs > 0).sum(-1)
    assert n_kept[0].eq(ha.effective_k(keep, T)).all()


def test_save_reload_and_pruned_heads(tmp_path):
    m = tiny_model()
    el.remove_heads(m, 1, [0, 2])
    el.skip_attention(m, 0)
    with pytest.raises(ValueError, match="no attention block"):
        ha.enable(m, [0, 1], 2)
    ha.enable(m, [1, 2], 2)
    assert ha.enabled_layers(m) == [1, 2]
    want = logits(m)
    m.save_pretrained(tmp_path)
    back = el.rebuild_from_dir(tmp_path)
    assert back.config._attn_implementation == ha.IMPL_NAME
    assert ha.enabled_layers(back) == [1, 2]
    torch.testing.assert_close(logits(back), want, atol=1e-6, rtol=0)
    # padding still honoured in the pruned hard layer
    ids, mask = padded_batch()
    n = LENGTHS[1]
    torch.testing.assert_close(want[1:2], logits(back, ids[1:2, :n], mask[1:2, :n]), atol=1e-5, rtol=0)
    # a layer whose attention is skipped after enabling is ignored on reload
    el.skip_attention(m, 2)
    m.save_pretrained(tmp_path / "b")
    assert ha.enabled_layers(el.rebuild_from_dir(tmp_path / "b")) == [1]


def test_disable_restores_ordinary_attention():
    m = tiny_model()
    want = logits(m)
    ha.enable(m, [0, 1], 1)
    ha.disable(m, [0])
    assert m.config.axformer["hard_attention"]["layers"] == [1] and ha.enabled_layers(m) == [1]
    ha.disable(m)
    assert "hard_attention" not in m.config.axformer
    assert m.config._attn_implementation == "sdpa" and ha.enabled_layers(m) == []
    assert torch.equal(logits(m), want)
    ha.disable(m)  # no-op when off
    assert ha.apply_from_config(m) == []


def test_bad_inputs_raise_value_errors():
    m = tiny_model()
    for bad_k in (0, -2, 1.5, 0.0, True, "3", None, float("nan")):
        with pytest.raises(ValueError, match="k"):
            ha.enable(m, [0], bad_k)
    with pytest.raises(ValueError, match="not an int in"):
        ha.enable(m, [LAYERS], 2)
    with pytest.raises(ValueError, match="no layers"):
        ha.enable(m, [], 2)
    with pytest.raises(ValueError, match="list of ints"):
        ha.enable(m, 1, 2)
    with pytest.raises(ValueError, match="not enabled"):
        ha.disable(m, [0])
    ha.enable(m, [0], 2)
    with pytest.raises(ValueError, match="not enabled on layers"):
        ha.disable(m, [1])
    m.config.axformer["hard_attention"]["k"] = 7.5
    with pytest.raises(ValueError, match="fraction"):
        ha.apply_from_config(m)
