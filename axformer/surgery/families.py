"""Encoder families behind one surgery interface: where each keeps its layers, projections and LayerNorms.

AxFormer's element surgery (:mod:`axformer.surgery.elements`), hard attention (:mod:`axformer.surgery.hard_attention`), the
search's cached layer-by-layer evaluation (:mod:`axformer.search.prune`) and the peer baselines only ask a
:class:`Family` for a layer's parts; what differs between transformers' encoder implementations lives here:

* ``bert`` (BERT, MiniLM), ``roberta`` and ``electra``: ``layer.attention.self.{query,key,value}``,
  ``attention.output.{dense,LayerNorm}``, ``intermediate.dense``, ``output.{dense,LayerNorm}``.
* ``mpnet``: ``layer.attention.attn.{q,k,v,o}`` (the output projection sits inside the self-attention),
  ``attention.LayerNorm``. Its relative-position bias is ONE embedding shared by all layers and computed once per
  forward with every original head; a layer that lost heads keeps the ORIGINAL positions of its surviving heads in
  a non-persistent buffer and a forward pre-hook slices the shared bias to them (:func:`_slice_position_bias`).
  MPNet computes attention inline (no transformers AttentionInterface): hard attention patches its forward.
* ``distilbert``: ``layer.attention.{q_lin,k_lin,v_lin,out_lin}``, ``ffn.{lin1,lin2}``, LayerNorms on the layer
  (``sa_layer_norm``, ``output_layer_norm``) applied to ``sublayer + residual``: a skipped block becomes a
  parameter-free module returning zeros, so the layer computes ``LayerNorm(0 + x) = LayerNorm(x)`` as elsewhere.

Skipped blocks keep the residual and the LayerNorm in every family (AxFormer's patched BERT): skipped attention
gives ``LayerNorm(hidden_states)``, a skipped FFN ``LayerNorm(attention_output)``. The state-dict keys of the
kept LayerNorms do not change, so a pruned checkpoint reloads strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

FAMILIES = ("bert", "mpnet", "roberta", "electra", "distilbert")
_HEADS_BUFFER = "axformer_head_index"  # MPNet: original positions of the kept heads (into the shared bias)


# ------------------------------------------------------------------------------------------ stand-in modules
class _LayerNormHolder(nn.Module):
    """Holds only a LayerNorm, so state-dict keys stay ``...attention.output.LayerNorm.*``."""

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        self.LayerNorm = layer_norm


class SkippedAttention(nn.Module):
    """BERT layout: replaces ``layer.attention``; returns ``(LayerNorm(hidden_states), None)`` (residual kept)."""

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        self.output = _LayerNormHolder(layer_norm)

    @property
    def layer_norm(self) -> nn.LayerNorm:
        return self.output.LayerNorm

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any):
        return self.output.LayerNorm(hidden_states), None


class SkippedMPNetAttention(nn.Module):
    """MPNet: replaces ``layer.attention`` (keys ``attention.LayerNorm.*``); returns ``(LayerNorm(x),)``."""

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        self.LayerNorm = layer_norm

    @property
    def layer_norm(self) -> nn.LayerNorm:
        return self.LayerNorm

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        return (self.LayerNorm(hidden_states),)


class ZeroAttention(nn.Module):
    """DistilBERT: replaces ``layer.attention``; the layer then computes ``sa_layer_norm(0 + x)``."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        return torch.zeros_like(hidden_states), None


class FFNPassThrough(nn.Module):
    """Parameter-free stand-in for ``BertIntermediate`` of a skipped FFN block."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


class SkippedFFNOutput(nn.Module):
    """Stand-in for ``BertOutput`` / ``MPNetOutput`` of a skipped FFN: ``LayerNorm(input_tensor)``."""

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor)


class ZeroFFN(nn.Module):
    """DistilBERT: replaces ``layer.ffn``; the layer then computes ``output_layer_norm(0 + a)``."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


SKIPPED_ATTENTION = (SkippedAttention, SkippedMPNetAttention, ZeroAttention)
SKIPPED_FFN = (SkippedFFNOutput, ZeroFFN)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj: Any, path: str, value: Any) -> None:
    head, _, last = path.rpartition(".")
    setattr(_get(obj, head) if head else obj, last, value)


def _slice_position_bias(module: nn.Module, args: tuple, kwargs: dict):
    """MPNet forward pre-hook: keep the shared relative-position bias rows of this layer's surviving heads."""
    idx = getattr(module, _HEADS_BUFFER)
    if len(args) > 2 and args[2] is not None:
        args = (*args[:2], args[2].index_select(1, idx), *args[3:])
    elif kwargs.get("position_bias") is not None:
        kwargs = {**kwargs, "position_bias": kwargs["position_bias"].index_select(1, idx)}
    return args, kwargs


# ------------------------------------------------------------------------------------------ the adapter
@dataclass(frozen=True)
class Family:
    """Attribute paths (relative to one encoder layer) of a family's parts, and its quirks."""

    name: str
    encoder: str  # attribute of model.base_model holding the layer list as `.layer`
    self_attn: str  # the module that owns Q/K/V and the head count
    qkv: tuple[str, str, str]  # Q, K, V Linear names on self_attn
    attn_out: str  # attention output projection (input = per-head context, concatenated)
    attn_ln: str
    ffn_in: str
    ffn_out: str
    ffn_ln: str
    heads_attr: str = "num_attention_heads"
    interface: bool = True  # attention goes through transformers' AttentionInterface (else: patched forward)

    # ---- config
    def n_heads(self, config: Any) -> int:
        return int(config.num_attention_heads)

    def n_neurons(self, config: Any) -> int:
        return int(config.hidden_dim if self.name == "distilbert" else config.intermediate_size)

    def head_size(self, config: Any) -> int:
        return int(config.hidden_size) // self.n_heads(config)

    # ---- modules
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model.base_model, self.encoder).layer

    def encoder_module(self, model: nn.Module) -> nn.Module:
        return _get(model.base_model, self.encoder)

    def attn_skipped(self, layer: nn.Module) -> bool:
        return isinstance(layer.attention, SKIPPED_ATTENTION)

    def ffn_skipped(self, layer: nn.Module) -> bool:
        return isinstance(layer.ffn if self.name == "distilbert" else layer.output, SKIPPED_FFN)

    def self_attention(self, layer: nn.Module) -> nn.Module | None:
        """The module owning Q/K/V (where hard attention and head counts live); None if attention is skipped."""
        return None if self.attn_skipped(layer) else _get(layer, self.self_attn)

    def linear(self, layer: nn.Module, part: str) -> nn.Linear:
        """``part`` in q, k, v, attn_out, ffn_in, ffn_out."""
        if part in ("q", "k", "v"):
            return getattr(_get(layer, self.self_attn), self.qkv["qkv".index(part)])
        return _get(layer, getattr(self, part))

    def set_linear(self, layer: nn.Module, part: str, new: nn.Linear) -> None:
        if part in ("q", "k", "v"):
            setattr(_get(layer, self.self_attn), self.qkv["qkv".index(part)], new)
        else:
            _set(layer, getattr(self, part), new)

    def layer_norm(self, layer: nn.Module, block: str) -> nn.LayerNorm:
        """The LayerNorm after the ``attn`` / ``ffn`` block (kept when the block is skipped)."""
        if block == "attn" and self.attn_skipped(layer) and self.name != "distilbert":
            return layer.attention.layer_norm
        return _get(layer, self.attn_ln if block == "attn" else self.ffn_ln)

    def n_heads_now(self, layer: nn.Module) -> int | None:
        sa = self.self_attention(layer)
        return None if sa is None else int(getattr(sa, self.heads_attr))

    def n_neurons_now(self, layer: nn.Module) -> int | None:
        return None if self.ffn_skipped(layer) else int(self.linear(layer, "ffn_in").out_features)

    def ffn_act(self, layer: nn.Module, a: torch.Tensor) -> torch.Tensor:
        """FFN intermediate activations (the input of the FFN output projection)."""
        if self.name == "distilbert":
            return layer.ffn.activation(layer.ffn.lin1(a))
        return layer.intermediate(a)

    # ---- surgery
    def set_heads(self, layer: nn.Module, kept_pos: list[int], original_pos: list[int]) -> None:
        """Record the head count after Q/K/V were sliced to ``kept_pos`` (current positions); ``original_pos``:
        the same heads' original ids (MPNet slices the shared bias with them)."""
        sa = _get(layer, self.self_attn)
        d = int(sa.attention_head_size)
        setattr(sa, self.heads_attr, len(kept_pos))
        if hasattr(sa, "all_head_size"):
            sa.all_head_size = len(kept_pos) * d
        if self.name == "mpnet":
            idx = torch.tensor(original_pos, dtype=torch.long, device=sa.q.weight.device)
            if _HEADS_BUFFER not in sa._buffers:
                sa.register_forward_pre_hook(_slice_position_bias, with_kwargs=True)
            sa.register_buffer(_HEADS_BUFFER, idx, persistent=False)

    def skip_attention(self, layer: nn.Module) -> None:
        if self.name == "distilbert":
            layer.attention = ZeroAttention()
        elif self.name == "mpnet":
            layer.attention = SkippedMPNetAttention(layer.attention.LayerNorm)
        else:
            layer.attention = SkippedAttention(layer.attention.output.LayerNorm)

    def skip_ffn(self, layer: nn.Module) -> None:
        if self.name == "distilbert":
            layer.ffn = ZeroFFN()
        else:
            layer.intermediate = FFNPassThrough()
            layer.output = SkippedFFNOutput(layer.output.LayerNorm)

    # ---- layer-by-layer running (the search's cache, mask tuning)
    def layer_context(self, model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        """What every layer receives besides the hidden states, built as the model's own forward builds it:
        the attention mask in the format of the current attention implementation (and MPNet's shared bias)."""
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        ctx: dict[str, Any] = {"mask": mask}
        if self.name == "mpnet":
            ctx["position_bias"] = self.encoder_module(model).compute_position_bias(hidden)
        return ctx

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, ctx: dict) -> torch.Tensor:
        if self.name == "mpnet":
            return layer(hidden, ctx["mask"], ctx["position_bias"])[0]
        out = layer(hidden, ctx["mask"])
        return out[0] if isinstance(out, tuple) else out

    def run_self_attention(self, layer: nn.Module, hidden: torch.Tensor, ctx: dict) -> torch.Tensor:
        """The per-head context (B, T, H, d) that enters the attention output projection."""
        box: dict[str, torch.Tensor] = {}
        sa = _get(layer, self.self_attn)
        if not self.attn_out.startswith(self.self_attn + "."):  # BERT layout: the module returns the context
            box["c"] = sa(hidden, attention_mask=ctx["mask"])[0]
        else:  # MPNet / DistilBERT apply the output projection inside: read its input

            def grab(_mod, args):
                box["c"] = args[0]

            handle = self.linear(layer, "attn_out").register_forward_pre_hook(grab)
            try:
                if self.name == "mpnet":
                    sa(hidden, ctx["mask"], ctx["position_bias"])
                else:
                    sa(hidden, attention_mask=ctx["mask"])
            finally:
                handle.remove()
        c, n = box["c"], self.n_heads_now(layer)
        return c.view(*c.shape[:2], n, c.shape[-1] // n)

    def head(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The task head on the last hidden states as the model's forward applies it (eval mode): logits, or
        (start, end) logits for span QA."""
        if hasattr(model, "qa_outputs"):
            lg = model.qa_outputs(hidden)
            return lg[..., 0], lg[..., 1]
        if self.name == "bert":
            return model.classifier(model.dropout(model.base_model.pooler(hidden)))
        if self.name == "distilbert":
            pooled = nn.functional.relu(model.pre_classifier(hidden[:, 0]))
            return model.classifier(model.dropout(pooled))
        return model.classifier(hidden)  # roberta / electra / mpnet heads read features[:, 0] themselves

    def has_task_head(self, model: nn.Module) -> bool:
        if hasattr(model, "qa_outputs"):
            return True
        if self.name == "bert":
            return hasattr(model, "classifier") and getattr(model.base_model, "pooler", None) is not None
        return hasattr(model, "classifier")


_BERT = dict(self_attn="attention.self", qkv=("query", "key", "value"), attn_out="attention.output.dense",
             attn_ln="attention.output.LayerNorm", ffn_in="intermediate.dense", ffn_out="output.dense",
             ffn_ln="output.LayerNorm")
_TABLE: dict[str, Family] = {
    "bert": Family("bert", "encoder", **_BERT),
    "roberta": Family("roberta", "encoder", **_BERT),
    "electra": Family("electra", "encoder", **_BERT),
    "mpnet": Family("mpnet", "encoder", self_attn="attention.attn", qkv=("q", "k", "v"), attn_out="attention.attn.o",
                    attn_ln="attention.LayerNorm", ffn_in="intermediate.dense", ffn_out="output.dense",
                    ffn_ln="output.LayerNorm", interface=False),
    "distilbert": Family("distilbert", "transformer", self_attn="attention", qkv=("q_lin", "k_lin", "v_lin"),
                         attn_out="attention.out_lin", attn_ln="sa_layer_norm", ffn_in="ffn.lin1",
                         ffn_out="ffn.lin2", ffn_ln="output_layer_norm", heads_attr="n_heads"),
}


def axformer_state(model: nn.Module) -> dict[str, Any]:
    """The model's ``config.axformer`` dict (created empty where absent): what surgery and hard attention record."""
    ax = getattr(model.config, "axformer", None)
    if ax is None:
        ax = {}
        model.config.axformer = ax
    elif not isinstance(ax, dict):
        raise ValueError(f"model.config.axformer must be a dict (got {type(ax).__name__}).")
    return ax


def of(model_or_config: Any) -> Family:
    """The :class:`Family` of a model (or its config), by ``config.model_type``; ValueError if unsupported."""
    config = getattr(model_or_config, "config", model_or_config)
    name = getattr(config, "model_type", None)
    if name not in _TABLE:
        raise ValueError(f"model_type {name!r} is not a supported encoder family; AxFormer's surgery supports "
                         f"{list(FAMILIES)}.")
    return _TABLE[name]


def layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's layer list of ``model``; ValueError naming the supported families where it has none."""
    try:
        return of(model).layers(model)
    except (ValueError, AttributeError) as exc:
        raise ValueError(
            f"{type(model).__name__} has no encoder layer list the surgery knows ({exc}); supported: "
            f"{list(FAMILIES)} encoders with a sequence-classification or question-answering head."
        ) from None


def supported(model_type: str | None) -> bool:
    return model_type in _TABLE


def encoder_inputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """(embedding output, attention mask as the layers receive it) of one batch: the model's own forward runs up
    to its encoder (a pre-hook stops it there), so every family's embedding quirks are kept."""
    box: dict[str, Any] = {}

    class _Stop(Exception):
        pass

    def pre(_mod, args, kwargs):
        box["x"] = args[0] if args else kwargs["hidden_states"]
        box["am"] = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        raise _Stop

    handle = of(model).encoder_module(model).register_forward_pre_hook(pre, with_kwargs=True)
    try:
        model(**inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box["x"], box["am"]


def encoder_or_none(model: nn.Module) -> nn.Module | None:
    """The module holding the encoder layers (``base_model.encoder``; DistilBERT ``transformer``), or None for a
    model of no known family (callers then fall back to ``base_model.encoder``)."""
    try:
        return of(model).encoder_module(model)
    except (ValueError, AttributeError):
        return None


def attention_shape(model: nn.Module, layer: nn.Module) -> tuple[int, int] | None:
    """(current heads, head size) of ``layer``'s self-attention, None when its attention block is gone. Models
    of no known family are read with BERT's names (``attention.self.num_attention_heads``)."""
    try:
        fam = of(model)
        sa, attr = fam.self_attention(layer), fam.heads_attr
    except (ValueError, AttributeError):
        sa, attr = getattr(getattr(layer, "attention", None), "self", None), "num_attention_heads"
    if sa is None:
        return None
    return int(getattr(sa, attr, 0)), int(getattr(sa, "attention_head_size", 0))


def encoder_context(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """(embedding output, what each layer receives besides it) of one batch, as the model's forward builds them:
    the mask the encoder gets, and MPNet's shared relative-position bias (computed by its encoder)."""
    x, mask = encoder_inputs(model, inputs)
    ctx: dict[str, Any] = {"mask": mask}
    if of(model).name == "mpnet":
        ctx["position_bias"] = of(model).encoder_module(model).compute_position_bias(x)
    return x, ctx
