"""axformer.surgery.hard_attention: top-K sparse attention on selected layers of a tiny random BERT."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertForSequenceClassification
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from axformer.surgery import elements as el
from axformer.surgery import hard_attention as ha
from axformer.surgery import topk
from tiny_models import tiny_bert

HIDDEN, HEADS, LAYERS, INTER = 32, 4, 3, 48


def tiny_model(seed: int = 0, attn: str | None = None) -> BertForSequenceClassification:
    m = tiny_bert(seed)
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
    assert m.config.axformer["hard_attention"] == {"layers": [0, 1, 2], "k": k, "base": base, "topk_form": "official"}
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


@pytest.mark.parametrize("form", topk.FORMS)
def test_small_k_changes_output(form):
    m = tiny_model()
    ids, mask = padded_batch()
    with torch.no_grad():
        want = m.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        ha.enable(m, [0, 1, 2], 1, form)
        got = m.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - want).abs().max() > 0.02


@pytest.mark.parametrize("form", topk.FORMS)
@pytest.mark.parametrize("k", [1, 3, 100, 0.3, 1.0])
def test_padding_honoured(k, form):
    m = tiny_model()
    ha.enable(m, [0, 2], k, form)
    ids, mask = padded_batch()
    batched = logits(m, ids, mask)
    for i, n in enumerate(LENGTHS):
        alone = logits(m, ids[i : i + 1, :n], mask[i : i + 1, :n])
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("form", topk.FORMS)
def test_fraction_k_matches_absolute_k_per_sequence(form):
    m = tiny_model()
    ids, mask = padded_batch()
    ha.enable(m, [0, 1, 2], 0.4, form)
    got = [logits(m, ids[i : i + 1, :n], mask[i : i + 1, :n]) for i, n in enumerate(LENGTHS)]
    for i, n in enumerate(LENGTHS):
        ha.enable(m, [0, 1, 2], math.ceil(0.4 * n), form)
        torch.testing.assert_close(got[i], logits(m, ids[i : i + 1, :n], mask[i : i + 1, :n]), atol=1e-6, rtol=0)


def test_effective_k():
    assert ha.effective_k(8, [5, 20]) == [5, 8]
    assert ha.effective_k(0.25, [5, 20, 1]) == [2, 5, 1]
    assert ha.effective_k(0.1, 30) == 3  # 0.1 * 30 = 3.0000000000000004 must not round up to 4
    assert ha.effective_k(0.01, 10) == 1
    with pytest.raises(ValueError):
        ha.effective_k(0, [3])


def reference_topk(q, k, v, allowed, keep, form):
    """Plain loops: per (batch, head, query) over the real keys only. ``official``: softmax, then zero every
    probability below the row's K-th largest (no renormalisation); ``renorm``: softmax over the keys whose score
    is >= the row's K-th largest score. Ties at the threshold are kept (the documented semantics)."""
    B, H, T, _ = q.shape
    out = torch.zeros_like(q)
    scale = q.shape[-1] ** -0.5
    for b in range(B):
        real = allowed[b].nonzero().flatten()
        kk = ha.effective_k(keep, int(real.numel()))
        for h in range(H):
            for t in range(T):
                s = (k[b, h, real] @ q[b, h, t]) * scale
                if form == "official":
                    p = torch.softmax(s, dim=0)
                    p = torch.where(p >= p.sort(descending=True).values[kk - 1], p, 0.0)
                    out[b, h, t] = p @ v[b, h, real]
                else:
                    kept = s >= s.sort(descending=True).values[kk - 1]
                    out[b, h, t] = torch.softmax(s[kept], dim=0) @ v[b, h, real[kept]]
    return out.transpose(1, 2)


# the loop reference sums in another order than the batched kernel: on the H200 host's CPU (torch 2.11) they
# differ by up to 1.3e-6 on outputs of ~0.02; one wrong key moves an output by ~1e-1
REF_TOL = dict(atol=1e-5, rtol=1e-5)


def _module(keep, form):
    module = torch.nn.Module()
    module.axformer_topk, module.axformer_topk_form = keep, form
    return module


def _mask(allowed, kind, T):
    B = allowed.shape[0]
    if kind == "bool":
        return allowed[:, None, None, :].expand(B, 1, T, T)
    if kind == "float":
        return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None, None, :].expand(B, 1, T, T)
    return None


@pytest.mark.parametrize("form", topk.FORMS)
@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
@pytest.mark.parametrize("keep", [1, 2, 4, 0.5, 0.3])
def test_function_matches_reference(mask_kind, keep, form):
    """Rows shorter and longer than K in one padded batch (per-sequence fallback + key trimming)."""
    torch.manual_seed(0)
    B, H, T, d = 4, 3, 9, 4
    q, k, v = (torch.randn(B, H, T, d) * 2 for _ in range(3))
    allowed = torch.ones(B, T, dtype=torch.bool)
    if mask_kind != "none":
        for b, n in enumerate([6, 2, 9, 3]):  # right padding; the longest top-K row is shorter than T in some cases
            allowed[b, n:] = False
    out, probs = ha.topk_attention_forward(_module(keep, form), q, k, v, _mask(allowed, mask_kind, T), scaling=d**-0.5)
    torch.testing.assert_close(out, reference_topk(q, k, v, allowed, keep, form), **REF_TOL)
    if probs is not None:  # the whole batch went through top-K over all keys
        n_real = allowed.sum(-1)
        want = torch.tensor(ha.effective_k(keep, n_real.tolist()))[:, None, None].expand(B, H, T)
        assert torch.equal((probs > 0).sum(-1), want)


@pytest.mark.parametrize("form", topk.FORMS)
@pytest.mark.parametrize("keep", [2, 4, 20, 0.5])
def test_static_graph_path_matches_reference(monkeypatch, keep, form):
    """The path CUDA and the ONNX export take (no host reads of tensor values: every sequence through top-K,
    K bounded by the key length) keeps the same keys as the reference, for rows shorter and longer than K."""
    monkeypatch.setattr(ha, "static_graph", lambda x: True)
    torch.manual_seed(1)
    B, H, T, d = 4, 2, 9, 4
    q, k, v = (torch.randn(B, H, T, d) * 2 for _ in range(3))
    allowed = torch.ones(B, T, dtype=torch.bool)
    for b, n in enumerate([6, 2, 9, 3]):
        allowed[b, n:] = False
    out, _ = ha.topk_attention_forward(_module(keep, form), q, k, v, _mask(allowed, "bool", T), scaling=d**-0.5)
    torch.testing.assert_close(out, reference_topk(q, k, v, allowed, keep, form), **REF_TOL)


@pytest.mark.parametrize("form", topk.FORMS)
def test_left_padding_and_ties_at_threshold(form):
    torch.manual_seed(1)
    B, H, T, d = 2, 2, 8, 4
    q, k, v = (torch.randn(B, H, T, d) for _ in range(3))
    k[:, :, 5] = k[:, :, 4]  # two identical keys: equal scores and probabilities in every row
    v[:, :, 5] = -v[:, :, 4]
    allowed = torch.ones(B, T, dtype=torch.bool)
    allowed[1, :3] = False  # left padding: trimming must keep the last real key
    out, _ = ha.topk_attention_forward(_module(2, form), q, k, v, _mask(allowed, "bool", T), scaling=0.5)
    torch.testing.assert_close(out, reference_topk(q, k, v, allowed, 2, form), **REF_TOL)
    # somewhere the tied pair sits at the threshold, so that row keeps 3 keys (ties are kept)
    s = (q @ k.transpose(-1, -2)).masked_fill(~allowed[:, None, None, :], -1e9)
    top = s.sort(dim=-1, descending=True).values
    assert (top[..., 1] == top[..., 2]).any()


def test_official_and_renorm_differ_and_grad_path():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(3))
    o_off, p_off = ha.topk_attention_forward(_module(2, "official"), q, k, v, None, scaling=0.5)
    o_ren, p_ren = ha.topk_attention_forward(_module(2, "renorm"), q, k, v, None, scaling=0.5)
    assert (p_off.sum(-1) < 1 - 1e-3).any() and torch.allclose(p_ren.sum(-1), torch.ones(1, 2, 6))
    assert not torch.allclose(o_off, o_ren, atol=1e-3)
    (o_off.sum() + o_ren.sum()).backward()  # training through hard attention: no in-place error, finite grads
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    with torch.no_grad():  # the in-place inference path computes the same
        torch.testing.assert_close(ha.topk_attention_forward(_module(2, "official"), q, k, v, None, scaling=0.5)[0],
                                   o_off.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("form", topk.FORMS)
def test_short_sequences_take_the_ordinary_path(form):
    """Per-sequence fallback: in a batch with one long row, the rows within K equal the model without hard
    attention; the long row changes."""
    m = tiny_model()
    ids, mask = padded_batch()  # lengths 12, 7, 4
    with torch.no_grad():
        want = m.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        ha.enable(m, [0, 1, 2], 7, form)
        got = m.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[1:], want[1:], atol=1e-6, rtol=0)
    assert (got[0] - want[0]).abs().max() > 1e-3


def test_record_without_form_loads_as_renorm(tmp_path, reload_checkpoint):
    """Checkpoints written before topk_form existed were made with the renorm form."""
    m = tiny_model()
    ha.enable(m, [0, 1], 3, "renorm")
    want = logits(m)
    del m.config.axformer["hard_attention"]["topk_form"]
    back = reload_checkpoint(m, tmp_path)
    assert back.config.axformer["hard_attention"]["topk_form"] == "renorm"
    torch.testing.assert_close(logits(back), want, atol=1e-6, rtol=0)
    ha.enable(m, [0, 1], 3, "official")  # the form is recorded and reproduced on reload
    back = reload_checkpoint(m, tmp_path / "b")
    assert back.config.axformer["hard_attention"]["topk_form"] == "official"
    torch.testing.assert_close(logits(back), logits(m), atol=1e-6, rtol=0)
    assert not torch.allclose(logits(back), want, atol=1e-6, rtol=0)


def test_save_reload_and_pruned_heads(tmp_path, reload_checkpoint):
    m = tiny_model()
    el.remove_heads(m, 1, [0, 2])
    el.skip_attention(m, 0)
    with pytest.raises(ValueError, match="no attention block"):
        ha.enable(m, [0, 1], 2)
    ha.enable(m, [1, 2], 2)
    assert ha.enabled_layers(m) == [1, 2]
    want = logits(m)
    back = reload_checkpoint(m, tmp_path)
    assert back.config._attn_implementation == ha.IMPL_NAME
    assert ha.enabled_layers(back) == [1, 2]
    torch.testing.assert_close(logits(back), want, atol=1e-6, rtol=0)
    # padding still honoured in the pruned hard layer
    ids, mask = padded_batch()
    n = LENGTHS[1]
    torch.testing.assert_close(want[1:2], logits(back, ids[1:2, :n], mask[1:2, :n]), atol=1e-5, rtol=0)
    # a layer whose attention is skipped after enabling is ignored on reload
    el.skip_attention(m, 2)
    assert ha.enabled_layers(reload_checkpoint(m, tmp_path / "b")) == [1]


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
    with pytest.raises(ValueError, match="topk_form"):
        ha.enable(m, [0], 2, "softmax")
    m.config.axformer["hard_attention"]["topk_form"] = "bogus"
    with pytest.raises(ValueError, match="topk_form"):
        ha.apply_from_config(m)
    m.config.axformer["hard_attention"]["topk_form"] = "renorm"
    m.config.axformer["hard_attention"]["k"] = 7.5
    with pytest.raises(ValueError, match="fraction"):
        ha.apply_from_config(m)
