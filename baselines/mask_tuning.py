"""Mask tuning (Kwon et al. 2022, §4.3; the third stage of baselines/fisher.py): least-squares rescaling of the kept
heads and FFN neurons, folded into the weights, then structural removal of the pruned ones.

Layer by layer, real-valued scales of the kept heads / neurons are fitted by damped linear least squares so that
the pruned layer's pre-LayerNorm output (sublayer output + residual, with the pruned model's own inputs)
reconstructs the original model's on the sample. The damping pulls the scales towards 1 (the paper solves for
``scale - 1`` with a damped LSMR); a solve that fails or gives a scale outside [-10, 10] stops tuning, as in the
authors' code. :func:`apply_plan` folds the scales into the weights (columns of the attention output projection /
FFN output projection) and removes the pruned heads and neurons structurally (``axformer.surgery.elements``), so the
saved model is smaller and reloads like any other variant.

Deviations (docs/DESIGN.md §10): the teacher is the unpruned parent (the paper's description; the authors' script
uses an intermediate-constraint model); the MHA block of layer 0 is tuned too; in the last layer of a sequence
classifier only the [CLS] position is reconstructed (the only one the head reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from axformer.surgery import elements, families
from axformer.training.batches import make_loader, model_inputs
from baselines.lstsq import solve_normal
from baselines.structure import Units, frozen

SCALE_BOUND = 10.0  # a tuned scale beyond +-10 means a degenerate solve: keep the binary mask (authors' code)


# ---------------------------------------------------------------------------------------------- the blocks
def _attention(fam: families.Family, layer: nn.Module, x: torch.Tensor, ctx: dict, scale: torch.Tensor | None):
    """(context per head (B, T, H, hs) or None, attention-block output). ``scale`` multiplies each head's
    context; all-zero = the block removed (output = LayerNorm(x), the structural skip, no output bias)."""
    c = None if fam.attn_skipped(layer) else fam.run_self_attention(layer, x, ctx)
    return c, _attention_from(fam, layer, x, c, scale)


def _attention_from(fam: families.Family, layer: nn.Module, x: torch.Tensor, ctx: torch.Tensor | None,
                    scale: torch.Tensor | None):
    """The attention-block output from an already computed context (see :func:`_attention`)."""
    ln = fam.layer_norm(layer, "attn")
    if fam.attn_skipped(layer) or ctx is None:
        return ln(x)
    if scale is not None and not bool(scale.any()):
        return ln(x)
    c = ctx if scale is None else ctx * scale.to(device=ctx.device, dtype=ctx.dtype)[None, None, :, None]
    return ln(fam.linear(layer, "attn_out")(c.flatten(2)) + x)


def _ffn(fam: families.Family, layer: nn.Module, a: torch.Tensor, scale: torch.Tensor | None):
    """(intermediate activations or None, layer output); all-zero ``scale`` = FFN removed (LayerNorm(a))."""
    ln = fam.layer_norm(layer, "ffn")
    if fam.ffn_skipped(layer):
        return None, ln(a)
    h = fam.ffn_act(layer, a)
    if scale is not None and not bool(scale.any()):
        return h, ln(a)
    hh = h if scale is None else h * scale.to(device=h.device, dtype=h.dtype)
    return h, ln(fam.linear(layer, "ffn_out")(hh) + a)


def _solve(ata: torch.Tensor, atb: torch.Tensor, damp: float) -> torch.Tensor:
    """argmin_s ||A s - b||^2 + lam ||s - 1||^2 from the normal equations, lam = damp * mean(diag(A^T A))."""
    k = ata.shape[0]
    lam = damp * float(torch.diagonal(ata).mean()) if k else 0.0
    lhs = ata + lam * torch.eye(k, dtype=ata.dtype)
    rhs = atb + lam * torch.ones(k, dtype=ata.dtype)
    return solve_normal(lhs, rhs)  # bit-reproducible (baselines/lstsq.py); minimum-norm where singular (damp = 0)


def _err(ata: torch.Tensor, atb: torch.Tensor, btb: float, s: torch.Tensor) -> float:
    return float(s @ ata @ s - 2 * atb @ s + btb)




# ---------------------------------------------------------------------------------------------- the tuning pass
@dataclass
class _Pass:
    """The sample, batch by batch, as it runs up the encoder: the teacher's and the student's hidden states
    (``teach`` / ``stud``: the next layer's inputs), the layers' attention masks, the real tokens."""

    teach: list[torch.Tensor]
    stud: list[torch.Tensor]
    ams: list[Any]
    toks: list[torch.Tensor]

    def sel(self, t: torch.Tensor, b: int, last: bool) -> torch.Tensor:
        """The positions of batch ``b`` whose output matters: [CLS] in a classifier's last layer, else real tokens."""
        return t[:, 0] if last else t[self.toks[b]]


def _encoder_inputs(model: nn.Module, ds, tokenizer, batch_size: int, device) -> _Pass:
    """The encoder's input of every batch of ``ds``: teacher and student start from the same hidden states."""
    teach, stud, ams, toks = [], [], [], []
    for batch in make_loader(ds, tokenizer, batch_size, shuffle=False):
        inputs = model_inputs(batch, device)
        x, am = families.encoder_context(model, inputs)  # am: the layers' mask (+ MPNet's bias)
        teach.append(x)
        stud.append(x.clone())
        ams.append(am)
        m = inputs.get("attention_mask")
        toks.append(torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if m is None else m.bool())
    return _Pass(teach, stud, ams, toks)


class _Fit:
    """The damped solves of one tuning pass, in order: after the first failed one every block keeps its binary
    mask (``stopped`` says where), and each block's reconstruction error before / after is logged."""

    def __init__(self, damp: float, tune: bool):
        self.damp, self.tune = damp, tune
        self.stopped: str | None = None
        self.errors: list[dict[str, Any]] = []

    def __call__(self, ata: torch.Tensor, atb: torch.Tensor, btb: float, layer: int, block: str) -> torch.Tensor:
        ones = torch.ones(ata.shape[0], dtype=torch.float64)
        s = _solve(ata, atb, self.damp) if self.tune and self.stopped is None else ones
        if not bool(torch.isfinite(s).all()) or float(s.abs().max()) > SCALE_BOUND:
            self.stopped = self.stopped or f"L{layer} {block.upper()}: scale out of [-{SCALE_BOUND:g}, {SCALE_BOUND:g}]"
            s = ones
        self.errors.append({"layer": layer, "block": block, "before": _err(ata, atb, btb, ones),
                            "after": _err(ata, atb, btb, s), "norm": btb})
        return s


def _tune_mha(fam: families.Family, layer: nn.Module, li: int, p: _Pass, scale: torch.Tensor | None, last: bool,
              fit: _Fit) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The MHA block of layer ``li``: target = the teacher's pre-LayerNorm output, A's columns = the kept heads'
    contributions; ``scale`` (this layer's head scales) is set in place. Returns the teacher's and the student's
    attention-block outputs per batch."""
    kept = [] if scale is None else torch.nonzero(scale).flatten().tolist()
    t_attn, s_ctx = [], []
    if kept:
        ata = torch.zeros(len(kept), len(kept), dtype=torch.float64)
        atb = torch.zeros(len(kept), dtype=torch.float64)
        btb = 0.0
        dense = fam.linear(layer, "attn_out")
        hsz = dense.weight.shape[1] // len(scale)
        w = dense.weight.view(dense.weight.shape[0], len(scale), hsz)[:, kept].float()  # (hid, K, hs)
    for b in range(len(p.teach)):
        ctx_t, a_t = _attention(fam, layer, p.teach[b], p.ams[b], None)
        t_attn.append(a_t)
        ctx_s = None if scale is None else fam.run_self_attention(layer, p.stud[b], p.ams[b])
        s_ctx.append(ctx_s)  # reused for the student's block output once the scales are known
        if not kept:
            continue
        pre_t = dense(ctx_t.flatten(2)) + p.teach[b]
        tgt = p.sel(pre_t - dense.bias - p.stud[b], b, last).float()  # (n, hid)
        c = torch.einsum("nkd,okd->nok", p.sel(ctx_s, b, last)[:, kept].float(), w)  # (n, hid, K)
        # per-batch products in float32, accumulated on the CPU in float64
        ata += torch.einsum("nok,noj->kj", c, c).double().cpu()
        atb += torch.einsum("nok,no->k", c, tgt).double().cpu()
        btb += float((tgt.double() ** 2).sum())
    if kept:
        scale[kept] = fit(ata, atb, btb, li, "mha")
    s_attn = [_attention_from(fam, layer, p.stud[b], s_ctx[b], scale) for b in range(len(p.teach))]
    return t_attn, s_attn


def _tune_ffn(fam: families.Family, layer: nn.Module, li: int, p: _Pass, t_attn: list[torch.Tensor],
              s_attn: list[torch.Tensor], scale: torch.Tensor | None, last: bool, fit: _Fit) -> None:
    """The FFN block of layer ``li`` (``scale``: its neuron scales, set in place); moves ``p`` to the next layer:
    the teacher's output with the original weights, the student's with this layer's scales."""
    kept_n = [] if scale is None else torch.nonzero(scale).flatten().tolist()
    if kept_n:
        w2 = fam.linear(layer, "ffn_out").weight[:, kept_n].float()  # (hid, Kn)
        hh_acc = torch.zeros(len(kept_n), len(kept_n), dtype=torch.float64)
        atb = torch.zeros(len(kept_n), dtype=torch.float64)
        btb = 0.0
    for b in range(len(p.teach)):
        a_t, a_s = t_attn[b], s_attn[b]
        if fam.ffn_skipped(layer):
            p.teach[b] = fam.layer_norm(layer, "ffn")(a_t)
            continue
        out = fam.linear(layer, "ffn_out")
        pre_t = out(fam.ffn_act(layer, a_t)) + a_t
        p.teach[b] = fam.layer_norm(layer, "ffn")(pre_t)
        if not kept_n:
            continue
        tgt = p.sel(pre_t - out.bias - a_s, b, last).float()  # (n, hid)
        h_s = p.sel(fam.ffn_act(layer, a_s), b, last)[:, kept_n].float()  # (n, Kn)
        hh_acc += (h_s.T @ h_s).double().cpu()  # the (Kn, Kn) Gram is the cost
        atb += ((tgt @ w2) * h_s).sum(0).double().cpu()
        btb += float((tgt.double() ** 2).sum())
    if kept_n:
        ata = (w2.double().T @ w2.double()).cpu() * hh_acc
        scale[kept_n] = fit(ata, atb, btb, li, "ffn")
    for b in range(len(p.teach)):
        p.stud[b] = _ffn(fam, layer, s_attn[b], scale)[1]


def _final_rel_err(p: _Pass, is_seq_cls: bool) -> float:
    """Relative squared error of the student's last-layer output on what the task head reads."""
    def head_rows(t: torch.Tensor, b: int) -> torch.Tensor:
        return (t[:, 0] if is_seq_cls else t[p.toks[b]]).double()

    num = sum(float((head_rows(t, b) - head_rows(s, b)).pow(2).sum()) for b, (t, s) in enumerate(zip(p.teach, p.stud)))
    den = sum(float(head_rows(t, b).pow(2).sum()) for b, t in enumerate(p.teach))
    return num / den if den else 0.0


def initial_scales(units: Units, keep_h: dict[int, list[int]], keep_n: dict[int, list[int]]
                   ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """The binary masks as float64 scales per layer (1 kept, 0 pruned), in :class:`Units` order."""
    head_scale = {i: torch.zeros(len(h), dtype=torch.float64) for i, h in units.heads.items()}
    neuron_scale = {i: torch.zeros(len(n), dtype=torch.float64) for i, n in units.neurons.items()}
    for i, ks in keep_h.items():
        head_scale[i][ks] = 1.0
    for i, ks in keep_n.items():
        neuron_scale[i][ks] = 1.0
    return head_scale, neuron_scale


def tune_masks(model: nn.Module, ds, tokenizer, keep_h: dict[int, list[int]], keep_n: dict[int, list[int]],
               batch_size: int = 32, damp: float = 0.1, cls_only_last: bool = True,
               tune: bool = True) -> dict[str, Any]:
    """Layer-wise least-squares scales of the kept heads / neurons (paper §4.3).

    The unpruned model is the teacher; the student is the same weights with the kept units scaled (pruned units
    0), run on its own (pruned) inputs, layer by layer. Returns ``{"head_scale": {layer: (n_heads,) float64,
    0 for pruned}, "neuron_scale": {...}, "errors": [{"layer", "block", "before", "after", "rel_before",
    "rel_after"}], "stopped": None | reason, "final_rel_err": ...}``. ``tune=False`` only measures (binary masks).
    """
    fam = families.of(model)
    layers = fam.layers(model)
    device = next(model.parameters()).device
    is_seq_cls = hasattr(model, "classifier") and cls_only_last
    head_scale, neuron_scale = initial_scales(Units.of(model), keep_h, keep_n)
    fit = _Fit(damp, tune)
    with frozen(model), torch.no_grad():
        p = _encoder_inputs(model, ds, tokenizer, batch_size, device)
        for li, layer in enumerate(layers):
            last = is_seq_cls and li == len(layers) - 1
            t_attn, s_attn = _tune_mha(fam, layer, li, p, head_scale.get(li), last, fit)
            _tune_ffn(fam, layer, li, p, t_attn, s_attn, neuron_scale.get(li), last, fit)
            del t_attn, s_attn
        final = _final_rel_err(p, is_seq_cls)
    for e in fit.errors:
        n = e.pop("norm")
        e["rel_before"] = e["before"] / n if n else 0.0
        e["rel_after"] = e["after"] / n if n else 0.0
    return {"head_scale": head_scale, "neuron_scale": neuron_scale, "errors": fit.errors, "stopped": fit.stopped,
            "final_rel_err": final}


def apply_plan(model: nn.Module, head_scale: dict[int, torch.Tensor], neuron_scale: dict[int, torch.Tensor]) -> None:
    """Fold the scales into the output projections, then remove the units whose scale is 0 structurally."""
    units = Units.of(model)
    fam = families.of(model)
    layers = fam.layers(model)
    with torch.no_grad():
        for i, s in head_scale.items():
            dense = fam.linear(layers[i], "attn_out")
            hsz = dense.weight.shape[1] // len(s)
            col = s.to(dense.weight.dtype).repeat_interleave(hsz)
            dense.weight.mul_(col[None, :].to(dense.weight.device))
        for i, s in neuron_scale.items():
            dense = fam.linear(layers[i], "ffn_out")
            dense.weight.mul_(s.to(dense.weight.dtype)[None, :].to(dense.weight.device))
    for i, s in head_scale.items():
        gone = [units.heads[i][p] for p in range(len(s)) if float(s[p]) == 0.0]
        if gone:
            elements.remove_heads(model, i, gone)
    for i, s in neuron_scale.items():
        gone = [units.neurons[i][p] for p in range(len(s)) if float(s[p]) == 0.0]
        if gone:
            elements.remove_neurons(model, i, gone)



__all__ = ["SCALE_BOUND", "tune_masks", "initial_scales", "apply_plan"]
