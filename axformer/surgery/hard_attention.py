"""Top-K sparse ("hard") self-attention for selected encoder layers (AxFormer, sparse-attention approximation).

For a hard-attention layer every query keeps only its K largest attention entries among the real (unpadded)
keys. Two forms (``topk_form``):

* ``official`` (default, the paper's; the authors' ``modeling_bert.py``): softmax over the ordinary masked
  scores, then every probability below the row's K-th largest probability is set to 0. The kept
  probabilities are NOT renormalised (a row sums to less than 1).
* ``renorm`` (ablation; the only form before ``topk_form`` existed): scores below the row's K-th largest
  score are set to the dtype's most negative value (exp -> exactly 0, like -inf but never NaN), then softmax,
  i.e. the kept keys' probabilities are renormalised to sum to 1.

Ties: a row keeps every entry ``>=`` its K-th largest value, so it keeps more than K keys only where values
tie exactly at the threshold. Then dropout and ``@ V`` as usual. Other layers run the model's ordinary
attention (``eager`` or ``sdpa``) with identical numerics.

K is either an int (absolute number of keys) or a float in (0, 1] (fraction of each row's real key count,
``k_eff = max(1, ceil(frac * n_real))``); in both cases ``k_eff <= n_real``. When ``k_eff`` covers all real keys
of a sequence, that sequence runs the ordinary attention function (per sequence, not per batch), so its
result equals the unmodified model's; only the other sequences go through top-K.

How it hooks into transformers 5.x:

* The function is registered under the attention implementation name :data:`IMPL_NAME` with
  ``AttentionInterface.register`` and a matching mask function with ``AttentionMaskInterface.register``.
  ``create_bidirectional_mask`` early-exits (returns no mask, i.e. padding silently ignored!) for an
  implementation name without a registered mask function, so the mask registration is essential. The registered
  mask function delegates to the mask function of the *base* implementation (``eager``: additive float mask,
  ``sdpa``: boolean mask or None), so non-hard layers get exactly the mask they would get without hard attention.
* ``model.set_attn_implementation(IMPL_NAME)`` switches the model. ``config._attn_implementation`` is NOT saved by
  ``save_pretrained`` (it is in ``_remove_keys_not_serialized``), so after a reload the model comes back with its
  default (``sdpa``) — :func:`apply_from_config` re-installs hard attention from the JSON record
  ``model.config.axformer["hard_attention"] = {"layers": [...], "k": K, "base": "sdpa"|"eager",
  "topk_form": "official"|"renorm"}``. A record without ``topk_form`` (checkpoints written before it existed)
  loads as ``renorm``, the form it was made with.
* The per-layer setting is the attributes ``axformer_topk`` (K, None = off) and ``axformer_topk_form`` on each
  layer's self-attention module (``BertSelfAttention`` and the like; :mod:`axformer.surgery.families` says which).
* Families whose attention runs through transformers' AttentionInterface (BERT/MiniLM, RoBERTa, ELECTRA,
  DistilBERT) switch implementation as above. MPNet computes attention inline and adds a relative-position bias
  to the scores: only its hard layers get a patched forward (:func:`_mpnet_topk_forward`, the bias joins the
  additive mask), the others keep the model's own forward; the implementation name is not switched.

Works with :mod:`axformer.surgery.elements`: heads can be removed from a hard-attention layer (top-K is per head);
a layer whose attention block was skipped has no attention to sparsify and is ignored by
:func:`apply_from_config` (``enable`` refuses it).
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from axformer.surgery import families
from axformer.surgery.topk import DEFAULT_FORM, validate_form, validate_k
from axformer.surgery.families import axformer_state as _axformer_state

IMPL_NAME = "axformer_topk"
SUPPORTED_BASES = ("eager", "sdpa")
_ATTR = "axformer_topk"
_FORM_ATTR = "axformer_topk_form"
LEGACY_FORM = "renorm"  # what a record without "topk_form" was made with
_EPS = 1e-9  # guards ceil(frac * n) against float round-up, e.g. 0.1 * 30 = 3.0000000000000004

__all__ = [
    "IMPL_NAME",
    "SUPPORTED_BASES",
    "effective_k",
    "enable",
    "disable",
    "apply_from_config",
    "enabled_layers",
    "topk_attention_forward",
]


# --------------------------------------------------------------------------------------------------------------
# K
# --------------------------------------------------------------------------------------------------------------


def _k_eff_tensor(k: int | float, lengths: torch.Tensor) -> torch.Tensor:
    """Per-row number of kept keys for real key counts ``lengths`` (long tensor, any shape)."""
    lengths = lengths.long()
    if isinstance(k, float):
        keff = torch.ceil(lengths.double() * k - _EPS).long().clamp(min=1)
    else:
        keff = torch.full_like(lengths, k)
    return torch.minimum(keff, lengths.clamp(min=1))


def effective_k(k: int | float, lengths: int | Sequence[int] | torch.Tensor) -> int | list[int]:
    """The number of keys each query keeps for sequences with ``lengths`` real tokens (for reporting).

    ``effective_k(8, [5, 20]) == [5, 8]``; ``effective_k(0.25, [5, 20]) == [2, 5]``; an int length gives an int.
    """
    k = validate_k(k)
    scalar = isinstance(lengths, int) and not isinstance(lengths, bool)
    t = torch.as_tensor([lengths] if scalar else lengths, dtype=torch.long)
    if (t < 0).any():
        raise ValueError(f"lengths must be >= 0 (got {lengths!r}).")
    out = _k_eff_tensor(k, t).tolist()
    return out[0] if scalar else out


# --------------------------------------------------------------------------------------------------------------
# Attention + mask functions registered with transformers
# --------------------------------------------------------------------------------------------------------------


def _base_name(config: Any) -> str:
    ax = getattr(config, "axformer", None) if config is not None else None
    rec = ax.get("hard_attention") if isinstance(ax, dict) else None
    base = rec.get("base") if isinstance(rec, dict) else None
    return base if base in SUPPORTED_BASES else "sdpa"


def _eager_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Same arithmetic as BERT's ``eager_attention_forward`` (used only when the model module has none)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = nn.functional.softmax(w, dim=-1)
    w = nn.functional.dropout(w, p=dropout, training=module.training)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


def _mpnet_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """MPNet's own attention arithmetic (``MPNetSelfAttention.forward``: scores / sqrt(d), then the additive
    mask, which here already holds the relative-position bias)."""
    w = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(module.attention_head_size)
    if attention_mask is not None:
        w = w + attention_mask
    w = nn.functional.softmax(w, dim=-1)
    w = nn.functional.dropout(w, p=dropout, training=module.training)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


def _mpnet_topk_forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False,
                        **kwargs):
    """Forward of a hard-attention MPNet layer: MPNet's Q/K/V and output projection around
    :func:`topk_attention_forward`. The (per-layer sliced) relative-position bias is added to the mask; on real
    keys the mask is 0, so the scores equal MPNet's ``scores + bias + mask``; padded keys get probability 0."""
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q = self.q(hidden_states).view(shape).transpose(1, 2)
    k = self.k(hidden_states).view(shape).transpose(1, 2)
    v = self.v(hidden_states).view(shape).transpose(1, 2)
    mask = attention_mask
    if position_bias is not None:
        mask = position_bias if mask is None else position_bias + mask
    out, probs = topk_attention_forward(self, q, k, v, mask, scaling=self.attention_head_size ** -0.5,
                                        dropout=self.dropout.p if self.training else 0.0, score_bias=position_bias)
    o = self.o(out.reshape(*hidden_states.shape[:-1], -1))
    return (o, probs) if output_attentions else (o,)


def _base_function(module: nn.Module, base: str) -> Callable:
    if type(module).__name__ == "MPNetSelfAttention":
        return _mpnet_eager  # MPNet has no AttentionInterface: its hard layers fall back to its own arithmetic
    if base == "eager":
        # The model's own eager function (e.g. modeling_bert.eager_attention_forward): identical numerics.
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        return fn if callable(fn) else _eager_reference
    return ALL_ATTENTION_FUNCTIONS[base]


def _allowed_keys(attention_mask: torch.Tensor | None, kv_len: int) -> torch.Tensor | None:
    """Boolean "key may be attended" mask broadcastable to (B, H, Tq, Tk) from an sdpa (bool) / eager (float) mask."""
    if attention_mask is None:
        return None
    m = attention_mask[..., :kv_len]
    if m.dtype == torch.bool:
        return m
    return m > torch.finfo(m.dtype).min / 2


def static_graph(x: torch.Tensor) -> bool:
    """True where the top-K path must not read tensor values on the host: under ``torch.export`` (the ONNX
    exporter cannot branch on values) and on CUDA (each host read waits for the GPU). Every sequence then takes
    the top-K path with K bounded by the key length; the kept keys are the same (top-K keeps every real key of a
    row no longer than K), only the per-sequence sdpa fallback and the key trimming are skipped."""
    return torch.compiler.is_exporting() or x.is_cuda


def _threshold(x: torch.Tensor, k: int | float, keff: torch.Tensor) -> torch.Tensor:
    """Per query row, the ``keff``-th largest value of ``x`` (B, H, Tq, Tk) along the keys: (B, H, Tq, 1).

    Int K: one unsorted top-K of values only (no indices kept) and its minimum. A row with fewer than K
    allowed keys then gets a masked value as threshold (the dtype minimum / probability 0), i.e. keeps every
    allowed key, which is ``keff = n_real``. Float K (per-row ``keff``): sorted top-``max keff`` and a gather.
    Under ``torch.export`` (the ONNX exporter, axformer.compress.export) K is bounded by the symbolic key length and the
    float form sorts whole rows: an exported graph cannot depend on tensor values.
    """
    exporting = static_graph(x)
    if isinstance(k, int):
        kk = (torch.sym_min(k, x.shape[-1]) if torch.compiler.is_exporting() else min(k, x.shape[-1])) \
            if exporting else k
        return x.topk(kk, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    vals = x.topk(x.shape[-1] if exporting else int(keff.max()), dim=-1, sorted=True).values
    idx = (keff - 1).expand(*vals.shape[:-1], 1)
    return vals.gather(-1, idx)


def _topk_core(
    q: torch.Tensor,
    k_: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None,
    keff: torch.Tensor,
    k: int | float,
    form: str,
    scaling: float,
    dropout: float,
    training: bool,
    score_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K attention of one (sub-)batch; every row keeps the keys whose value is >= its threshold.

    ``official``: softmax over the masked scores, then probabilities below the row's K-th largest are zeroed
    (no renormalisation). ``renorm``: scores below the row's K-th largest score are masked, then softmax.
    The score tensor is the only full-size float buffer: masks and thresholds are applied in place, except
    where autograd needs the un-modified tensor (training through hard attention).
    """
    inplace = not (torch.is_grad_enabled() and (q.requires_grad or k_.requires_grad or v.requires_grad))
    scores = torch.matmul(q, k_.transpose(-1, -2))
    scores = scores.mul_(scaling) if inplace else scores * scaling
    if score_bias is not None:  # MPNet's relative-position bias (of this layer's heads)
        scores = scores.add_(score_bias) if inplace else scores + score_bias
    neg = torch.finfo(scores.dtype).min
    if allowed is not None:  # padded keys can never be among the top K
        scores = scores.masked_fill_(~allowed, neg) if inplace else scores.masked_fill(~allowed, neg)
    if form == "official":
        probs = nn.functional.softmax(scores, dim=-1)
        with torch.no_grad():  # the selection is not differentiated; gradients flow through kept entries
            drop = probs < _threshold(probs, k, keff)
        probs = probs.masked_fill_(drop, 0.0) if inplace else probs.masked_fill(drop, 0.0)
    else:
        with torch.no_grad():
            drop = scores < _threshold(scores, k, keff)
        scores = scores.masked_fill_(drop, neg) if inplace else scores.masked_fill(drop, neg)
        probs = nn.functional.softmax(scores, dim=-1)
    del drop
    probs = nn.functional.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, v).transpose(1, 2).contiguous(), probs


def _rows(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Batch rows ``idx`` of ``t`` (all when idx is None; a broadcast batch dimension of 1 is kept)."""
    return t if idx is None or t.shape[0] == 1 else t.index_select(0, idx)


def topk_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    score_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention function registered as :data:`IMPL_NAME`.

    ``score_bias`` (B|1, H, Tq, Tk): an additive term of the scores the top-K path adds (MPNet's relative bias);
    ``attention_mask`` must then already include it, for the base implementation's fallback rows.

    query/key/value: (B, H, T, d) with H the layer's current (possibly pruned) head count. Returns the attention
    output as (B, Tq, H, d) and the attention probabilities (B, H, Tq, Tk) when the whole batch went through
    top-K over all keys, else None (as sdpa does).

    Speed (DESIGN §7): the fallback is per sequence: sequences where K covers every real key of every query
    row run the base implementation (``sdpa``/``eager``) unchanged, only the others run top-K; those have
    their keys trimmed to the sub-batch's longest real row (padded keys get probability 0 either way).
    """
    k = getattr(module, _ATTR, None)
    base_fn = _base_function(module, _base_name(getattr(module, "config", None)))
    if k is None:
        return base_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    form = getattr(module, _FORM_ATTR, DEFAULT_FORM)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    training = module.training
    B, kv_len = query.shape[0], key.shape[-2]

    allowed = _allowed_keys(attention_mask, kv_len)  # (B|1, 1|H, Tq|1, Tk) bool or None
    if static_graph(query):
        # no host reads of tensor values (export; CUDA): every sequence goes through top-K, which keeps the
        # same keys (top-K is a no-op for a row whose real length is <= K).
        lengths = (allowed.sum(dim=-1, keepdim=True) if allowed is not None else
                   torch.full((1, 1, 1, 1), kv_len, dtype=torch.long, device=query.device))
        return _topk_core(query, key, value, allowed, _k_eff_tensor(k, lengths), k, form, scaling, dropout, training,
                          score_bias)
    if allowed is None:
        keff = _k_eff_tensor(k, torch.full((1, 1, 1, 1), kv_len, dtype=torch.long, device=query.device))
        if int(keff) >= kv_len:
            return base_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        return _topk_core(query, key, value, None, keff, k, form, scaling, dropout, training, score_bias)

    lengths = allowed.sum(dim=-1, keepdim=True)  # real keys per query row
    keff = _k_eff_tensor(k, lengths)
    need = (keff < lengths).flatten(1).any(dim=1).expand(B)  # (B,): sequences where top-K drops a key
    n_need = int(need.sum())
    if n_need == 0:  # K covers every real key: ordinary attention, bit-identical to the model without it
        return base_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    long_idx = None if n_need == B else need.nonzero().flatten()
    # trim keys to the longest real row of the top-K sub-batch (works for left and right padding)
    seen = _rows(allowed, long_idx).flatten(1, 2).any(dim=1)  # (b, Tk): key is real for some row
    pos = torch.arange(1, kv_len + 1, device=seen.device)
    tk = int((seen * pos).amax())
    a_l = _rows(allowed, long_idx)[..., :tk]
    out_l, probs = _topk_core(_rows(query, long_idx), _rows(key, long_idx)[..., :tk, :],
                              _rows(value, long_idx)[..., :tk, :], a_l, _rows(keff, long_idx), k, form, scaling,
                              dropout, training, None if score_bias is None else _rows(score_bias, long_idx)[..., :tk])
    if long_idx is None:
        return out_l, (probs if tk == kv_len else None)

    short_idx = (~need).nonzero().flatten()
    out_s, _ = base_fn(module, _rows(query, short_idx), _rows(key, short_idx), _rows(value, short_idx),
                       _rows(attention_mask, short_idx), scaling=scaling, dropout=dropout, **kwargs)
    out = out_l.new_empty((B, *out_l.shape[1:]))
    out.index_copy_(0, long_idx, out_l)
    out.index_copy_(0, short_idx, out_s.to(out.dtype))
    return out, None


def topk_attention_mask(*args: Any, **kwargs: Any):
    """Mask function registered as :data:`IMPL_NAME`: the base implementation's mask (eager float / sdpa bool)."""
    return ALL_MASK_ATTENTION_FUNCTIONS[_base_name(kwargs.get("config"))](*args, **kwargs)


AttentionInterface.register(IMPL_NAME, topk_attention_forward)
AttentionMaskInterface.register(IMPL_NAME, topk_attention_mask)


# --------------------------------------------------------------------------------------------------------------
# Public switches
# --------------------------------------------------------------------------------------------------------------


def _family(model: nn.Module):
    from .families import of

    return of(model)


def _self_attention(model: nn.Module, layer: nn.Module) -> nn.Module | None:
    """The layer's self-attention module (BertSelfAttention and the like), or None if the block was skipped."""
    return _family(model).self_attention(layer)


def _patch(model: nn.Module, sa: nn.Module, on: bool) -> None:
    """Families without AttentionInterface (MPNet): a hard layer's self-attention gets the top-K forward."""
    if _family(model).interface:
        return
    if on:
        sa.forward = types.MethodType(_mpnet_topk_forward, sa)
    else:
        sa.__dict__.pop("forward", None)


def _check_layers(model: nn.Module, layers: Iterable[int]) -> list[int]:
    mods = families.layers(model)
    if isinstance(layers, (int, str)) or layers is None:
        raise ValueError(f"layers must be a list of ints (got {layers!r}).")
    out = list(layers)
    if not out:
        raise ValueError("no layers given for hard attention.")
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(mods):
            raise ValueError(f"layer {i!r} is not an int in [0, {len(mods)}).")
    return sorted(set(out))


def _current_base(model: nn.Module) -> str:
    impl = model.config._attn_implementation
    if impl == IMPL_NAME:
        return _base_name(model.config)
    if impl in SUPPORTED_BASES:
        return impl
    raise ValueError(
        f"hard attention needs the model's attention implementation to be one of {list(SUPPORTED_BASES)} "
        f"(got {impl!r}); load the model with attn_implementation='sdpa' or 'eager'."
    )


def _install(model: nn.Module, layers: list[int], k: int | float, base: str, form: str) -> list[int]:
    active = []
    for i, layer in enumerate(families.layers(model)):
        sa = _self_attention(model, layer)
        if sa is None:
            continue
        if i in layers:
            setattr(sa, _ATTR, k)
            setattr(sa, _FORM_ATTR, form)
            _patch(model, sa, True)
            active.append(i)
        else:
            for attr in (_ATTR, _FORM_ATTR):
                if hasattr(sa, attr):
                    delattr(sa, attr)
            _patch(model, sa, False)
    if not _family(model).interface:
        return active
    if model.config._attn_implementation != IMPL_NAME:
        model.set_attn_implementation(IMPL_NAME)
    if model.config._attn_implementation != IMPL_NAME:  # pragma: no cover - transformers refused silently
        raise RuntimeError(f"could not switch {type(model).__name__} to attention implementation {IMPL_NAME!r}.")
    return active


def _uninstall(model: nn.Module, base: str) -> None:
    for layer in families.layers(model):
        sa = _self_attention(model, layer)
        for attr in (_ATTR, _FORM_ATTR):
            if sa is not None and hasattr(sa, attr):
                delattr(sa, attr)
        if sa is not None:
            _patch(model, sa, False)
    if model.config._attn_implementation == IMPL_NAME:
        model.set_attn_implementation(base)


def enable(model: nn.Module, layers: Iterable[int], k: int | float, topk_form: str = DEFAULT_FORM) -> None:
    """Use top-``k`` hard attention in ``layers`` (0-based). Replaces any previous hard-attention setting.

    ``k``: int = absolute number of keys per query, float in (0, 1] = fraction of each row's real length.
    ``topk_form``: ``official`` (the paper's, no renormalisation) or ``renorm`` (module docstring).
    Raises ValueError for bad k / form / layers, or a layer whose attention block was removed.
    """
    k = validate_k(k)
    topk_form = validate_form(topk_form)
    layers = _check_layers(model, layers)
    mods = families.layers(model)
    skipped = [i for i in layers if _self_attention(model, mods[i]) is None]
    if skipped:
        raise ValueError(f"layers {skipped} have no attention block (skipped by axformer.surgery.elements); drop them.")
    base = _current_base(model)
    ax = _axformer_state(model)
    ax["hard_attention"] = {"layers": layers, "k": k, "base": base, "topk_form": topk_form}
    _install(model, layers, k, base, topk_form)


def disable(model: nn.Module, layers: Iterable[int] | None = None) -> None:
    """Turn hard attention off in ``layers`` (default: all) and restore ordinary attention when none remain."""
    ax = _axformer_state(model)
    rec = ax.get("hard_attention")
    if not rec:
        if layers is not None:
            raise ValueError("hard attention is not enabled on this model.")
        return
    base = _base_name(model.config)
    if layers is None:
        remaining: list[int] = []
    else:
        drop = _check_layers(model, layers)
        not_on = [i for i in drop if i not in rec["layers"]]
        if not_on:
            raise ValueError(f"hard attention is not enabled on layers {not_on} (enabled: {rec['layers']}).")
        remaining = [i for i in rec["layers"] if i not in drop]
    if remaining:
        rec["layers"] = remaining
        _install(model, remaining, rec["k"], base, rec.get("topk_form", LEGACY_FORM))
    else:
        del ax["hard_attention"]
        _uninstall(model, base)


def apply_from_config(model: nn.Module) -> list[int]:
    """(Re-)install hard attention from ``model.config.axformer["hard_attention"]`` (call after a reload, after
    ``elements.apply_architecture``). Returns the layers now using hard attention ([] when there is no record).
    Layers whose attention block was skipped are ignored. The base implementation is the model's current one.
    A record without ``topk_form`` (written before it existed) is ``renorm``, the form it was made with."""
    ax = getattr(model.config, "axformer", None)
    rec = ax.get("hard_attention") if isinstance(ax, dict) else None
    if not rec:
        if model.config._attn_implementation == IMPL_NAME or not _family(model).interface:
            _uninstall(model, _base_name(model.config))
        return []
    if not isinstance(rec, dict) or "layers" not in rec or "k" not in rec:
        raise ValueError(f"config.axformer['hard_attention'] must hold 'layers' and 'k' (got {rec!r}).")
    k = validate_k(rec["k"])
    form = validate_form(rec.get("topk_form", LEGACY_FORM))
    layers = _check_layers(model, rec["layers"])
    base = _current_base(model)
    rec.update({"layers": layers, "k": k, "base": base, "topk_form": form})
    return _install(model, layers, k, base, form)


def enabled_layers(model: nn.Module) -> list[int]:
    """Layers whose attention currently runs top-K (empty when hard attention is off)."""
    if model.config._attn_implementation != IMPL_NAME and _family(model).interface:
        return []
    return [i for i, layer in enumerate(families.layers(model))
            if getattr(_self_attention(model, layer), _ATTR, None) is not None]
