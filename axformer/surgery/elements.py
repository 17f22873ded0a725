"""Structural removal of encoder elements from encoder models (AxFormer §3, "approximation of elements").

AxFormer (arXiv 2010.03688, §3) approximates a fine-tuned Transformer by removing *elements* that the
accuracy-driven search finds unhelpful for the downstream task: whole attention blocks, whole feed-forward
blocks, single attention heads and groups of feed-forward neurons. This module implements those removals for
sequence-classification / question-answering models of the families in :mod:`axformer.surgery.families` (BERT/MiniLM,
MPNet, RoBERTa, ELECTRA, DistilBERT); the family adapter says where each layer's parts live.

Deliberate deviation from a masking implementation: elements are removed *structurally* — the weight rows /
columns are sliced out of the ``nn.Linear`` layers (or whole sub-modules are replaced by LayerNorm-only
stand-ins), so the parameter count really drops and the saved checkpoint is smaller. Removing a head or a neuron
group is numerically identical to zeroing its contribution (tests check this).

Skipped blocks keep the residual path and the LayerNorm, as in the paper's patched BERT (stand-in modules in
:mod:`axformer.surgery.families`):

* skipped attention: ``attention_output = LayerNorm_attn(hidden_states)``
* skipped FFN:       ``layer_output     = LayerNorm_ffn(attention_output)``

Edit record. The edits live in the HF config as plain JSON so that they survive ``save_pretrained``::

    model.config.axformer = {
        "arch": {"layers": [{"heads": [...original head ids kept...],
                             "neurons": [...original FFN neuron ids kept...],
                             "attn_skipped": bool, "ffn_skipped": bool}, ...]},
        ...  # other keys (e.g. "hard_attention") belong to other modules and are preserved
    }

``config.num_attention_heads`` / ``config.intermediate_size`` keep describing the ORIGINAL model; all ids in
the record and in the public functions are ORIGINAL ids. To reload, build the unedited model from the config,
call :func:`apply_architecture` and then load the weights strictly (``models.load_checkpoint`` does all of it).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
from torch import nn

from axformer.surgery import families
from axformer.surgery.families import FFNPassThrough, SkippedAttention, SkippedFFNOutput

Kind = Literal["ffn", "ffn_group", "attn", "head"]
KINDS: tuple[str, ...] = ("ffn", "ffn_group", "attn", "head")
DEFAULT_N_GROUPS = 12

__all__ = [
    "Element",
    "KINDS",
    "DEFAULT_N_GROUPS",
    "SkippedAttention",
    "SkippedFFNOutput",
    "FFNPassThrough",
    "architecture",
    "apply_architecture",
    "remove_heads",
    "remove_neurons",
    "skip_attention",
    "skip_ffn",
    "ffn_groups",
    "remove",
    "list_elements",
    "count_encoder_params",
    "count_params",
]


# --------------------------------------------------------------------------------------------------------------
# Element
# --------------------------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^L(\d+)\.(attn|ffn|head(\d+)|ffn_group(\d+))$")


@dataclass(frozen=True, order=True)
class Element:
    """One removable element: ``layer`` (0-based), ``kind`` and ``index`` (head id / FFN group id, else None)."""

    layer: int
    kind: Kind
    index: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"Element.layer must be an int >= 0 (got {self.layer!r}).")
        if self.kind not in KINDS:
            raise ValueError(f"Element.kind must be one of {list(KINDS)} (got {self.kind!r}).")
        if self.kind in ("head", "ffn_group"):
            if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
                raise ValueError(f"Element of kind {self.kind!r} needs an int index >= 0 (got {self.index!r}).")
        elif self.index is not None:
            raise ValueError(f"Element of kind {self.kind!r} takes no index (got {self.index!r}).")

    @property
    def name(self) -> str:
        """Readable name: ``L5.ffn``, ``L5.ffn_group3``, ``L2.head7``, ``L2.attn``."""
        suffix = self.kind if self.index is None else f"{self.kind}{self.index}"
        return f"L{self.layer}.{suffix}"

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind, "index": self.index}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Element":
        if not isinstance(d, dict) or "layer" not in d or "kind" not in d:
            raise ValueError(f"an Element dict needs keys 'layer' and 'kind' (got {d!r}).")
        return cls(layer=d["layer"], kind=d["kind"], index=d.get("index"))

    @classmethod
    def from_name(cls, name: str) -> "Element":
        """Parse a name produced by :attr:`name` (e.g. ``"L2.head7"``)."""
        m = _NAME_RE.match(name.strip()) if isinstance(name, str) else None
        if m is None:
            raise ValueError(
                f"cannot parse element name {name!r}; expected e.g. 'L5.ffn', 'L5.ffn_group3', 'L2.head7', 'L2.attn'."
            )
        layer, body = int(m.group(1)), m.group(2)
        if m.group(3) is not None:
            return cls(layer, "head", int(m.group(3)))
        if m.group(4) is not None:
            return cls(layer, "ffn_group", int(m.group(4)))
        return cls(layer, body, None)


# --------------------------------------------------------------------------------------------------------------
# Model access and the edit record (the family adapter knows where each part lives)
# --------------------------------------------------------------------------------------------------------------


def _family(model: nn.Module) -> families.Family:
    return families.of(model)


def _n_orig_heads(model: nn.Module) -> int:
    return _family(model).n_heads(model.config)


def _n_orig_neurons(model: nn.Module) -> int:
    return _family(model).n_neurons(model.config)


def _head_size(model: nn.Module) -> int:
    return _family(model).head_size(model.config)


def _full_layer_record(model: nn.Module) -> dict[str, Any]:
    return {
        "heads": list(range(_n_orig_heads(model))),
        "neurons": list(range(_n_orig_neurons(model))),
        "attn_skipped": False,
        "ffn_skipped": False,
    }


def _module_sizes(model: nn.Module, layer: nn.Module) -> tuple[int | None, int | None]:
    """(#heads or None if attention skipped, #FFN neurons or None if FFN skipped) as the modules really are."""
    fam = _family(model)
    return fam.n_heads_now(layer), fam.n_neurons_now(layer)


def is_unedited(model: nn.Module) -> bool:
    """True when every layer still has all the heads and FFN neurons its config declares."""
    full = (_n_orig_heads(model), _n_orig_neurons(model))
    return all(_module_sizes(model, layer) == full for layer in families.layers(model))


def _record(model: nn.Module) -> dict[str, Any]:
    """The live ``config.axformer["arch"]`` record, created for an unedited model, checked against the modules."""
    layers = families.layers(model)
    ax = families.axformer_state(model)
    arch = ax.get("arch")
    if arch is None:
        if not is_unedited(model):
            raise ValueError(
                "the model's encoder was edited outside axformer.surgery.elements (module sizes differ from the config) and "
                "has no config.axformer['arch'] record; edit models only through axformer.surgery.elements."
            )
        arch = {"layers": [_full_layer_record(model) for _ in layers]}
        ax["arch"] = arch
        return arch
    _validate_record(model, arch)
    for i, (layer, rec) in enumerate(zip(layers, arch["layers"])):
        expected = (
            None if rec["attn_skipped"] else len(rec["heads"]),
            None if rec["ffn_skipped"] else len(rec["neurons"]),
        )
        if _module_sizes(model, layer) != expected:
            raise ValueError(
                f"layer {i}: config.axformer['arch'] says (heads, neurons) = {expected} but the modules have "
                f"{_module_sizes(model, layer)}. A model freshly built from an edited config must first be shrunk with "
                "axformer.surgery.elements.apply_architecture(model, model.config.axformer['arch'])."
            )
    return arch


def _validate_record(model: nn.Module, arch: Any) -> None:
    """Check a record's structure (no module check). Raises ValueError naming the problem."""
    n_layers = len(families.layers(model))
    if isinstance(arch, dict) and "arch" in arch and "layers" not in arch:
        raise ValueError("pass the record config.axformer['arch'] (with key 'layers'), not config.axformer itself.")
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list):
        raise ValueError(f"an architecture record must be a dict with a list under 'layers' (got {arch!r:.200}).")
    if len(arch["layers"]) != n_layers:
        raise ValueError(f"architecture record has {len(arch['layers'])} layers but the model has {n_layers}.")
    n_heads, n_neurons = _n_orig_heads(model), _n_orig_neurons(model)
    for i, rec in enumerate(arch["layers"]):
        if not isinstance(rec, dict):
            raise ValueError(f"architecture record layer {i} must be a dict (got {rec!r}).")
        missing = {"heads", "neurons", "attn_skipped", "ffn_skipped"} - rec.keys()
        if missing:
            raise ValueError(f"architecture record layer {i} lacks keys {sorted(missing)}.")
        for key, n in (("heads", n_heads), ("neurons", n_neurons)):
            ids = rec[key]
            if not isinstance(ids, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in ids):
                raise ValueError(f"architecture record layer {i}: '{key}' must be a list of ints.")
            if ids != sorted(set(ids)) or (ids and (ids[0] < 0 or ids[-1] >= n)):
                raise ValueError(
                    f"architecture record layer {i}: '{key}' must be sorted unique ids in [0, {n}) (got {ids})."
                )
        for key, ids_key in (("attn_skipped", "heads"), ("ffn_skipped", "neurons")):
            if not isinstance(rec[key], bool):
                raise ValueError(f"architecture record layer {i}: '{key}' must be a bool.")
            if rec[key] != (len(rec[ids_key]) == 0):
                raise ValueError(
                    f"architecture record layer {i}: '{key}'={rec[key]} contradicts '{ids_key}'={rec[ids_key]} "
                    "(a block is skipped exactly when none of its heads/neurons is kept)."
                )


def architecture(model: nn.Module) -> dict[str, Any]:
    """A copy of the edit record ``model.config.axformer["arch"]`` (created for an unedited model)."""
    return copy.deepcopy(_record(model))


def _check_layer(model: nn.Module, layer: int) -> nn.Module:
    layers = families.layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(layers):
        raise ValueError(f"layer must be an int in [0, {len(layers)}) (got {layer!r}).")
    return layers[layer]


def _check_ids(ids: Iterable[int], n: int, what: str) -> list[int]:
    if isinstance(ids, (int, str)) or ids is None:
        raise ValueError(f"{what} ids must be a list of ints (got {ids!r}).")
    out = list(ids)
    if not out:
        raise ValueError(f"no {what} ids given.")
    for x in out:
        if isinstance(x, bool) or not isinstance(x, (int, torch.Tensor)) or not 0 <= int(x) < n:
            raise ValueError(f"{what} id {x!r} is not an int in [0, {n}) (ids are ORIGINAL ids).")
    return sorted({int(x) for x in out})


# --------------------------------------------------------------------------------------------------------------
# Surgery
# --------------------------------------------------------------------------------------------------------------


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` of the weight (0 = output rows, 1 = input columns).

    Like ``transformers.pytorch_utils.prune_linear_layer`` but keeps dtype/device and requires_grad flags.
    """
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = None
    if linear.bias is not None:
        bias = linear.bias.detach()[index].clone() if dim == 0 else linear.bias.detach().clone()
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def remove_heads(model: nn.Module, layer: int, head_ids: Iterable[int]) -> None:
    """Remove attention heads (ORIGINAL ids) of ``layer``; removing all remaining heads = :func:`skip_attention`."""
    layer_mod = _check_layer(model, layer)
    ids = _check_ids(head_ids, _n_orig_heads(model), f"layer {layer} head")
    rec = _record(model)["layers"][layer]
    if rec["attn_skipped"]:
        raise ValueError(f"layer {layer}: attention is already skipped; no heads left to remove.")
    kept = rec["heads"]
    gone = [h for h in ids if h not in kept]
    if gone:
        raise ValueError(f"layer {layer}: heads {gone} were already removed (kept heads: {kept}).")
    if len(ids) == len(kept):
        skip_attention(model, layer)
        return

    fam = _family(model)
    d = _head_size(model)
    remove_set = set(ids)
    keep_pos = [p for p, h in enumerate(kept) if h not in remove_set]  # current positions of surviving heads
    # Q/K/V weights are (n_cur_heads * d, hidden); head at current position p owns rows [p*d, (p+1)*d).
    # The attention output projection's weight is (hidden, n_cur_heads * d): the same head owns those columns.
    index = torch.cat([torch.arange(p * d, (p + 1) * d) for p in keep_pos])  # (n_keep * d,)
    for part in ("q", "k", "v"):
        fam.set_linear(layer_mod, part, _slice_linear(fam.linear(layer_mod, part), index, dim=0))
    fam.set_linear(layer_mod, "attn_out", _slice_linear(fam.linear(layer_mod, "attn_out"), index, dim=1))
    # the forwards reshape with -1 heads; the bookkeeping attributes (and MPNet's bias rows) are kept right
    fam.set_heads(layer_mod, keep_pos, [kept[p] for p in keep_pos])
    rec["heads"] = [kept[p] for p in keep_pos]


def remove_neurons(model: nn.Module, layer: int, neuron_ids: Iterable[int]) -> None:
    """Remove FFN neurons (ORIGINAL ids) of ``layer``; removing all remaining neurons = :func:`skip_ffn`."""
    layer_mod = _check_layer(model, layer)
    ids = _check_ids(neuron_ids, _n_orig_neurons(model), f"layer {layer} FFN neuron")
    rec = _record(model)["layers"][layer]
    if rec["ffn_skipped"]:
        raise ValueError(f"layer {layer}: FFN is already skipped; no neurons left to remove.")
    kept = rec["neurons"]
    kept_set = set(kept)
    gone = [n for n in ids if n not in kept_set]
    if gone:
        shown = gone if len(gone) <= 10 else gone[:10] + ["..."]
        raise ValueError(f"layer {layer}: FFN neurons {shown} were already removed.")
    if len(ids) == len(kept):
        skip_ffn(model, layer)
        return
    remove_set = set(ids)
    keep_pos = [p for p, n in enumerate(kept) if n not in remove_set]
    index = torch.tensor(keep_pos, dtype=torch.long)
    # FFN-in weight (n_cur, hidden): neuron = row; FFN-out weight (hidden, n_cur): neuron = column.
    fam = _family(model)
    fam.set_linear(layer_mod, "ffn_in", _slice_linear(fam.linear(layer_mod, "ffn_in"), index, dim=0))
    fam.set_linear(layer_mod, "ffn_out", _slice_linear(fam.linear(layer_mod, "ffn_out"), index, dim=1))
    rec["neurons"] = [kept[p] for p in keep_pos]


def skip_attention(model: nn.Module, layer: int) -> None:
    """Remove the whole attention block of ``layer``; keeps residual + LayerNorm: out = LayerNorm(hidden_states)."""
    layer_mod = _check_layer(model, layer)
    rec = _record(model)["layers"][layer]
    if rec["attn_skipped"]:
        raise ValueError(f"layer {layer}: attention is already skipped.")
    if getattr(layer_mod, "add_cross_attention", False):
        raise ValueError(f"layer {layer} has cross-attention; only encoder self-attention layers are supported.")
    _family(model).skip_attention(layer_mod)
    rec["heads"] = []
    rec["attn_skipped"] = True


def skip_ffn(model: nn.Module, layer: int) -> None:
    """Remove the whole FFN block of ``layer``; keeps residual + LayerNorm: out = LayerNorm(attention_output)."""
    layer_mod = _check_layer(model, layer)
    rec = _record(model)["layers"][layer]
    if rec["ffn_skipped"]:
        raise ValueError(f"layer {layer}: FFN is already skipped.")
    _family(model).skip_ffn(layer_mod)
    rec["neurons"] = []
    rec["ffn_skipped"] = True


def ffn_groups(model: nn.Module, layer: int, n_groups: int = DEFAULT_N_GROUPS) -> list[list[int]]:
    """ORIGINAL FFN neuron ids of ``layer`` split into ``n_groups`` contiguous groups.

    Groups are over the original ``config.intermediate_size`` and do not change as neurons are removed. When the
    size is not divisible by ``n_groups`` the first groups get one neuron more (sizes differ by at most one).
    """
    _check_layer(model, layer)
    n = _n_orig_neurons(model)
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= n:
        raise ValueError(f"n_groups must be an int in [1, {n}] (intermediate_size={n}); got {n_groups!r}.")
    base, extra = divmod(n, n_groups)
    groups, start = [], 0
    for g in range(n_groups):
        size = base + (1 if g < extra else 0)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def remove(model: nn.Module, element: Element, n_groups: int = DEFAULT_N_GROUPS) -> None:
    """Remove one :class:`Element` (head, FFN neuron group, whole attention, whole FFN)."""
    if isinstance(element, str):
        element = Element.from_name(element)
    elif isinstance(element, dict):
        element = Element.from_dict(element)
    if not isinstance(element, Element):
        raise ValueError(f"expected an Element (got {type(element).__name__}).")
    _check_layer(model, element.layer)
    if element.kind == "head":
        if element.index >= _n_orig_heads(model):
            raise ValueError(f"{element.name}: head index must be < {_n_orig_heads(model)}.")
        remove_heads(model, element.layer, [element.index])
    elif element.kind == "attn":
        skip_attention(model, element.layer)
    elif element.kind == "ffn":
        skip_ffn(model, element.layer)
    else:  # ffn_group
        groups = ffn_groups(model, element.layer, n_groups)
        if element.index >= len(groups):
            raise ValueError(f"{element.name}: group index must be < n_groups={n_groups}.")
        kept = set(_record(model)["layers"][element.layer]["neurons"])
        present = [n for n in groups[element.index] if n in kept]
        if not present:
            raise ValueError(f"{element.name}: all neurons of this FFN group were already removed.")
        remove_neurons(model, element.layer, present)


def list_elements(model: nn.Module, n_groups: int = DEFAULT_N_GROUPS) -> list[Element]:
    """Currently removable elements, ordered by layer: per layer ``attn`` + its remaining heads, then ``ffn`` +
    the FFN groups that still have neurons. (Removing the last head / group equals removing the whole block.)"""
    rec = _record(model)
    out: list[Element] = []
    for i, lr in enumerate(rec["layers"]):
        if not lr["attn_skipped"]:
            out.append(Element(i, "attn"))
            out.extend(Element(i, "head", h) for h in lr["heads"])
        if not lr["ffn_skipped"]:
            out.append(Element(i, "ffn"))
            kept = set(lr["neurons"])
            for g, group in enumerate(ffn_groups(model, i, n_groups)):
                if any(n in kept for n in group):
                    out.append(Element(i, "ffn_group", g))
    return out


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_encoder_params(model: nn.Module) -> int:
    """Number of parameters in the encoder layers (``base_model.encoder``; DistilBERT: ``transformer``);
    embeddings, pooler and head excluded. MPNet's shared relative-position bias sits in its encoder and counts."""
    families.layers(model)
    return count_params(_family(model).encoder_module(model))


# --------------------------------------------------------------------------------------------------------------
# Rebuild
# --------------------------------------------------------------------------------------------------------------


def apply_architecture(model: nn.Module, record: dict[str, Any]) -> None:
    """Shrink ``model`` to the architecture in ``record`` (a ``config.axformer["arch"]`` dict).

    ``model`` must be unedited (e.g. freshly built from a config that already holds the edited record, as after
    ``from_config``) or already edited to a superset of ``record``. The surviving heads/neurons are selected by
    their ORIGINAL ids, so applying a record to the unedited fine-tuned model reproduces the edited model exactly;
    on a fresh model the weights are then overwritten by ``load_state_dict(strict=True)``.
    """
    if isinstance(record, dict) and "arch" in record and "layers" not in record:
        record = record["arch"]  # accept config.axformer itself too
    target = copy.deepcopy(record)  # `record` may be the live dict inside model.config
    _validate_record(model, target)
    ax = families.axformer_state(model)
    if is_unedited(model):
        # Freshly built model: whatever the config says, the modules are full size -> start from a full record.
        ax["arch"] = {"layers": [_full_layer_record(model) for _ in families.layers(model)]}
    current = _record(model)
    for i, (cur, tgt) in enumerate(zip(current["layers"], target["layers"])):
        for key, what in (("heads", "heads"), ("neurons", "FFN neurons")):
            missing = sorted(set(tgt[key]) - set(cur[key]))
            if missing:
                raise ValueError(
                    f"layer {i}: the record keeps {what} {missing[:10]} that this model already removed; "
                    "apply_architecture can only remove elements (start from an unedited model)."
                )
    for i, tgt in enumerate(target["layers"]):
        cur = current["layers"][i]
        if tgt["attn_skipped"]:
            if not cur["attn_skipped"]:
                skip_attention(model, i)
        elif len(tgt["heads"]) < len(cur["heads"]):
            remove_heads(model, i, sorted(set(cur["heads"]) - set(tgt["heads"])))
        if tgt["ffn_skipped"]:
            if not cur["ffn_skipped"]:
                skip_ffn(model, i)
        elif len(tgt["neurons"]) < len(cur["neurons"]):
            remove_neurons(model, i, sorted(set(cur["neurons"]) - set(tgt["neurons"])))
    if _record(model) != target:  # pragma: no cover - internal consistency guard
        raise RuntimeError("apply_architecture: resulting record differs from the target record.")
