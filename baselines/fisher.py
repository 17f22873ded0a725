"""Retraining-free pruning with Fisher-based mask search, mask rearrangement and mask tuning (Kwon, Kim, Mahoney,
Hassoun, Keutzer & Gholami, NeurIPS 2022, "A Fast Post-Training Pruning Framework for Transformers",
arXiv 2204.09656).

Three stages on the fine-tuned model, no re-training, from a sample of the *search* split (never dev):

1. **Fisher importance** (paper §4.1). A mask variable (= 1) multiplies each head's context output and each FFN
   intermediate neuron (forward hooks: no architecture change). The diagonal of the empirical Fisher of the masks
   is ``I_i = sum_x (dL(x)/dm_i)^2``. Per-sample gradients come from one backward pass per mini-batch: the mask
   has one row per sample (shape (B, H) / (B, N)), and samples do not interact in an encoder, so
   ``dL_batch/dm[b, i] = dL(x_b)/dm_i`` exactly.
2. **Mask search** under a cost constraint (paper §4.2, Alg. 1): heads all cost the same and neurons all cost
   the same, so for every number of kept heads ``h`` the best choice is the ``h`` globally most important heads
   plus as many of the most important neurons as the rest of the budget buys; the ``h`` with the largest kept
   importance (= the smallest pruned importance) wins. Costs are analytic FLOPs at the sample's mean real length
   (the paper's setting; ``measure.forward_flops`` counts the same matmuls) or parameters.
   **Mask rearrangement** (paper §4.2): the diagonal Fisher ignores interactions; within each layer's MHA block
   and FFN block (the block-diagonal approximation) the pruned set P should minimise
   ``sum_x (sum_{i in P} dL(x)/dm_i)^2``. Greedy, as the paper: start from the same number of lowest-Fisher
   units; add the next candidate (ascending Fisher) to P and drop the member of P whose removal leaves the
   smallest value; the per-layer counts (hence the constraint) do not change.
3. **Mask tuning** (paper §4.3): layer by layer, real-valued scales of the kept heads / neurons are fitted by
   damped linear least squares so that the pruned layer's pre-LayerNorm output (sublayer output + residual, with
   the pruned model's own inputs) reconstructs the original model's on the sample. The damping pulls the scales
   towards 1 (the paper solves for ``scale - 1`` with a damped LSMR); a solve that fails or gives a scale outside
   [-10, 10] stops tuning, as in the authors' code. The scales are folded into the weights (columns of the
   attention output projection / FFN output projection), then the pruned heads and neurons are removed
   structurally (``axformer.elements``), so the saved model is smaller and reloads like any other variant.

Deviations (docs/DESIGN.md, baselines/README.md): the teacher of mask tuning is the unpruned parent (the paper's
description; the authors' script uses an intermediate-constraint model); the MHA block of layer 0 is tuned too;
in the last layer of a sequence classifier only the [CLS] position is reconstructed (the only one the head
reads); no latency look-up-table constraint (FLOPs and parameters only).

Config (``cfg``): the amount — ``match`` (AxFormer's decisions.json; ``match_by`` ``params`` [default] or
``flops``) | ``target_params`` / ``match_params`` | ``flops_frac`` / ``params_frac`` (kept fraction of the
parent's head + FFN FLOPs / parameters: the budget of a sweep); ``max_rows`` (2048, the paper's sample), ``batch_size`` (32), ``seq_len`` (``"mean"`` = mean real
length of the sample, or an int), ``rearrange`` (true), ``tune`` (true), ``damp`` (0.1, relative to the mean
diagonal of the normal matrix), ``split`` ("search"), ``seed``, ``progress``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from axformer import elements, families
from axformer.tasks import Task
from axformer.train import _model_inputs, make_loader, output_logits, per_sample_loss
from axformer.utils import ConfigError
from baselines import register
from baselines.args import COMMON_ARGS, MATCH_ARGS, ArgSpec, parse_args
from baselines.matching import load_decisions, resolve_target

# the cfg keys this method takes (baselines/args.py; checked before any job by the workflow, and here)
ARGS: dict[str, ArgSpec] = {
    "flops_frac": ArgSpec(float, 0.0, 1.0, exclusive_low=True, help="kept fraction of the head + FFN FLOPs"),
    "params_frac": ArgSpec(float, 0.0, 1.0, exclusive_low=True, help="kept fraction of the head + FFN parameters"),
    "max_rows": ArgSpec(int, 1, 10_000_000, default=2048, help="rows of the sample (the paper's 2048)"),
    "batch_size": ArgSpec(int, 1, 65_536, default=32, help="gradient / tuning batch size"),
    "seq_len": ArgSpec(float, 1.0, 1_000_000.0, default="mean", words=("mean",),
                       help="cost length: 'mean' (of the sample) or a number"),
    "rearrange": ArgSpec(bool, default=True, help="mask rearrangement"),
    "tune": ArgSpec(bool, default=True, help="mask tuning"),
    "damp": ArgSpec(float, 0.0, 1e6, default=0.1, help="damping of the tuning solve (x mean normal diagonal)"),
    "split": ArgSpec(str, choices=("search", "train"), default="search", help="the data the sample comes from",
                     note="dev is for reporting only."),
    **MATCH_ARGS,
    "match_by": ArgSpec(str, choices=("params", "flops"), help="match AxFormer's parameters or FLOPs"),
    **COMMON_ARGS,
}
DEFAULTS: dict[str, Any] = {k: s.default for k, s in ARGS.items() if s.default is not None}
KNOWN_KEYS = set(ARGS)
SCALE_BOUND = 10.0  # a tuned scale beyond +-10 means a degenerate solve: keep the binary mask (authors' code)
PAPER = ("Kwon, Kim, Mahoney, Hassoun, Keutzer & Gholami 2022, A Fast Post-Training Pruning Framework for "
         "Transformers (NeurIPS 2022, arXiv 2204.09656)")


# ---------------------------------------------------------------------------------------------- the model's units
@dataclass
class Units:
    """The prunable units still present: per layer, ORIGINAL ids of heads / FFN neurons in module order."""

    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]

    @classmethod
    def of(cls, model: nn.Module) -> "Units":
        arch = elements.architecture(model)
        return cls(heads={i: list(r["heads"]) for i, r in enumerate(arch["layers"]) if not r["attn_skipped"]},
                   neurons={i: list(r["neurons"]) for i, r in enumerate(arch["layers"]) if not r["ffn_skipped"]})

    def n_heads(self) -> int:
        return sum(len(v) for v in self.heads.values())

    def n_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())


def _frozen(model: nn.Module):
    """Context: eval mode (no dropout), parameters without grad; restored afterwards."""
    class _Ctx:
        def __enter__(self):
            self.flags = [(p, p.requires_grad) for p in model.parameters()]
            self.training = model.training
            for p, _ in self.flags:
                p.requires_grad_(False)
            model.eval()

        def __exit__(self, *exc):
            for p, f in self.flags:
                p.requires_grad_(f)
            model.train(self.training)
    return _Ctx()


# ---------------------------------------------------------------------------------------------- 1. Fisher
def mask_gradients(model: nn.Module, ds, tokenizer, task: Task, batch_size: int = 32) -> dict[str, Any]:
    """Per-sample gradients of the task loss w.r.t. head and neuron masks (all ones) on ``ds``.

    Returns ``{"head": {layer: (S, n_heads) float32}, "neuron": {layer: (S, n_neurons)}, "loss": mean loss,
    "n_rows": S, "mean_len": mean real tokens per row}``; columns follow :class:`Units` order. Row ``s`` is
    ``dL(x_s)/dm`` for the ``s``-th row of ``ds``.
    """
    units = Units.of(model)
    fam = families.of(model)
    layers = fam.layers(model)
    device = next(model.parameters()).device
    masks: dict[tuple[str, int], torch.Tensor] = {}

    # pre-hooks on the output projections: their inputs are the heads' context / the FFN activations (all families)
    def head_hook(i: int, n: int):
        def hook(_mod, args):
            ctx = args[0]
            b, t, d = ctx.shape
            m = torch.ones(b, n, dtype=ctx.dtype, device=ctx.device, requires_grad=True)
            masks[("head", i)] = m
            return ((ctx.view(b, t, n, d // n) * m[:, None, :, None]).view(b, t, d), *args[1:])
        return hook

    def neuron_hook(i: int):
        def hook(_mod, args):
            act = args[0]
            m = torch.ones(act.shape[0], act.shape[-1], dtype=act.dtype, device=act.device, requires_grad=True)
            masks[("neuron", i)] = m
            return (act * m[:, None, :], *args[1:])
        return hook

    handles = [fam.linear(layers[i], "attn_out").register_forward_pre_hook(head_hook(i, len(h)))
               for i, h in units.heads.items()]
    handles += [fam.linear(layers[i], "ffn_out").register_forward_pre_hook(neuron_hook(i)) for i in units.neurons]
    parts: dict[tuple[str, int], list[torch.Tensor]] = {k: [] for k in
                                                        [("head", i) for i in units.heads] +
                                                        [("neuron", i) for i in units.neurons]}
    loss_sum, n_rows, n_tok = 0.0, 0, 0
    try:
        with _frozen(model), torch.enable_grad():
            for batch in make_loader(ds, tokenizer, batch_size, shuffle=False):
                masks.clear()
                inputs = _model_inputs(batch, device)
                logits = output_logits(model(**inputs), inputs)
                losses = per_sample_loss(logits, batch["labels"].to(device), task.is_regression)
                keys = list(parts)
                grads = torch.autograd.grad(losses.sum(), [masks[k] for k in keys], allow_unused=True)
                for k, g in zip(keys, grads):
                    m = masks[k]
                    parts[k].append((torch.zeros_like(m) if g is None else g).detach().float().cpu())
                loss_sum += float(losses.detach().sum())
                n_rows += int(losses.shape[0])
                n_tok += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(
                    inputs["input_ids"].numel())
    finally:
        for h in handles:
            h.remove()
    out: dict[str, Any] = {"head": {}, "neuron": {}}
    for (kind, i), lst in parts.items():
        out[kind][i] = torch.cat(lst, 0)
    out.update(loss=loss_sum / max(n_rows, 1), n_rows=n_rows, mean_len=n_tok / max(n_rows, 1))
    return out


def fisher_diag(grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Diagonal empirical Fisher per layer: sum over samples of squared per-sample gradients (float64)."""
    return {i: g.double().pow(2).sum(0) for i, g in grads.items()}


# ---------------------------------------------------------------------------------------------- 2. costs + search
def unit_costs(model: nn.Module, by: str, seq_len: float) -> tuple[float, float]:
    """Cost of one head and of one FFN neuron: ``by="flops"`` — forward FLOPs of one sequence of ``seq_len``
    tokens (a multiply-add = 2, as ``measure.forward_flops``): head = Q, K, V, output projection slices
    (``4 * 2 * T * hidden * hs``) + scores and context (``2 * 2 * T^2 * hs``); neuron = two FFN matmul slices
    (``2 * 2 * T * hidden``). ``by="params"``: head = ``4 * hidden * hs + 3 * hs`` (Q/K/V biases), neuron =
    ``2 * hidden + 1``. Removing a whole block also removes its output bias, so the real count is never above
    the linear one."""
    hidden = int(model.config.hidden_size)
    hs = hidden // int(model.config.num_attention_heads)
    if by == "flops":
        t = float(seq_len)
        return 2.0 * (4 * t * hidden * hs + 2 * t * t * hs), 2.0 * (2 * t * hidden)
    if by == "params":
        return float(4 * hidden * hs + 3 * hs), float(2 * hidden + 1)
    raise ValueError(f"cost must be 'flops' or 'params' (got {by!r})")


def search(fisher_h: dict[int, torch.Tensor], fisher_n: dict[int, torch.Tensor], cost_head: float,
           cost_neuron: float, budget: float) -> tuple[dict[int, list[int]], dict[int, list[int]], float]:
    """The paper's mask search: the kept (head, neuron) positions per layer of largest total Fisher importance
    whose cost ``n_heads * cost_head + n_neurons * cost_neuron`` is at most ``budget``.

    Returns ``(keep_heads, keep_neurons, kept_importance)``; positions index the columns of the Fisher vectors.
    """
    def flat(f: dict[int, torch.Tensor]):
        if not f:
            return torch.zeros(0, dtype=torch.float64), []
        vals = torch.cat([f[i] for i in sorted(f)])
        ids = [(i, p) for i in sorted(f) for p in range(len(f[i]))]
        order = torch.argsort(vals, descending=True, stable=True)
        return vals[order], [ids[j] for j in order.tolist()]

    hv, hid = flat(fisher_h)
    nv, nid = flat(fisher_n)
    ch = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(hv, 0)])
    cn = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(nv, 0)])
    best = None
    for nh in range(len(hv) + 1):
        rest = budget - nh * cost_head
        if rest < -1e-9 * max(1.0, abs(budget)):
            break
        nn_ = min(len(nv), int(math.floor(max(rest, 0.0) / cost_neuron + 1e-9)))
        score = float(ch[nh] + cn[nn_])
        if best is None or score > best[0]:
            best = (score, nh, nn_)
    if best is None:
        raise ConfigError(f"fisher: the budget ({budget:.4g}) is below zero: nothing can be kept.")
    _, nh, nn_ = best
    keep_h = {i: [] for i in fisher_h}
    keep_n = {i: [] for i in fisher_n}
    for i, p in hid[:nh]:
        keep_h[i].append(p)
    for i, p in nid[:nn_]:
        keep_n[i].append(p)
    return ({i: sorted(v) for i, v in keep_h.items()}, {i: sorted(v) for i, v in keep_n.items()}, best[0])


def rearrange(grads: torch.Tensor, n_keep: int) -> list[int]:
    """Within-block mask rearrangement: kept positions (sorted) of one block, same count ``n_keep``.

    ``grads``: per-sample gradients (S, n). The pruned set P (size n - n_keep) greedily minimises
    ``sum_s (sum_{i in P} grads[s, i])^2`` (the block's Fisher quadratic form on the pruned units): start from
    the lowest-Fisher units, then for each further unit (ascending Fisher) add it to P and drop the member whose
    exclusion gives the smallest value. Uses the Gram matrix K = G^T G: ``||s - g_j||^2 = ||s||^2 - 2 (K 1_P)_j
    + K_jj``.
    """
    n = grads.shape[1]
    n_prune = n - n_keep
    if n_prune <= 0 or n_keep <= 0:
        return list(range(n)) if n_prune <= 0 else []
    g = grads.double()
    gram = g.T @ g
    order = torch.argsort(torch.diagonal(gram), stable=True).tolist()  # ascending Fisher
    pruned = list(order[:n_prune])
    v = gram[:, pruned].sum(1)
    diag = torch.diagonal(gram)
    for idx in order[n_prune:]:
        pruned.append(idx)
        v = v + gram[:, idx]
        cand = torch.tensor(pruned)
        score = diag[cand] - 2.0 * v[cand]
        j = int(torch.argmin(score))
        v = v - gram[:, pruned[j]]
        del pruned[j]
    gone = set(pruned)
    return [p for p in range(n) if p not in gone]


def block_loss(grads: torch.Tensor, keep: list[int]) -> float:
    """``sum_s (sum_{i pruned} grads[s, i])^2``: the quantity :func:`rearrange` lowers."""
    pruned = [p for p in range(grads.shape[1]) if p not in set(keep)]
    if not pruned:
        return 0.0
    return float(grads.double()[:, pruned].sum(1).pow(2).sum())


# ---------------------------------------------------------------------------------------------- 3. mask tuning
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
    # gelsy (pivoted QR): ~100x faster than the SVD drivers at 1,500 unknowns, still rank-revealing at damp = 0
    return torch.linalg.lstsq(lhs, rhs[:, None], driver="gelsy").solution[:, 0]


def _err(ata: torch.Tensor, atb: torch.Tensor, btb: float, s: torch.Tensor) -> float:
    return float(s @ ata @ s - 2 * atb @ s + btb)


def tune_masks(model: nn.Module, ds, tokenizer, keep_h: dict[int, list[int]], keep_n: dict[int, list[int]],
               batch_size: int = 32, damp: float = 0.1, cls_only_last: bool = True,
               tune: bool = True) -> dict[str, Any]:
    """Layer-wise least-squares scales of the kept heads / neurons (paper §4.3).

    The unpruned model is the teacher; the student is the same weights with the kept units scaled (pruned units
    0), run on its own (pruned) inputs, layer by layer. Returns ``{"head_scale": {layer: (n_heads,) float64,
    0 for pruned}, "neuron_scale": {...}, "errors": [{"layer", "block", "before", "after", "rel_before",
    "rel_after"}], "stopped": None | reason, "final_rel_err": ...}``. ``tune=False`` only measures (binary masks).
    """
    units = Units.of(model)
    fam = families.of(model)
    layers = fam.layers(model)
    device = next(model.parameters()).device
    is_seq_cls = hasattr(model, "classifier") and cls_only_last
    head_scale = {i: torch.zeros(len(h), dtype=torch.float64) for i, h in units.heads.items()}
    neuron_scale = {i: torch.zeros(len(n), dtype=torch.float64) for i, n in units.neurons.items()}
    for i, ks in keep_h.items():
        head_scale[i][ks] = 1.0
    for i, ks in keep_n.items():
        neuron_scale[i][ks] = 1.0
    errors: list[dict[str, Any]] = []
    stopped: str | None = None
    with _frozen(model), torch.no_grad():
        teach, stud, ams, toks = [], [], [], []
        for batch in make_loader(ds, tokenizer, batch_size, shuffle=False):
            inputs = _model_inputs(batch, device)
            x, am = families.encoder_context(model, inputs)  # am: the layers' mask (+ MPNet's bias)
            teach.append(x)
            stud.append(x.clone())
            ams.append(am)
            m = inputs.get("attention_mask")
            toks.append(torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if m is None else m.bool())
        n_layers = len(layers)
        for li in range(n_layers):
            layer = layers[li]
            last = is_seq_cls and li == n_layers - 1

            def sel(t: torch.Tensor, b: int) -> torch.Tensor:  # the positions whose output matters
                return t[:, 0] if last else t[toks[b]]

            # --- MHA block: target = teacher's pre-LayerNorm output; A columns = per-head contributions
            hs_t = head_scale.get(li)
            kept = [] if hs_t is None else torch.nonzero(hs_t).flatten().tolist()
            t_attn, s_ctx = [], []
            if kept:
                ata = torch.zeros(len(kept), len(kept), dtype=torch.float64)
                atb = torch.zeros(len(kept), dtype=torch.float64)
                btb = 0.0
                dense = fam.linear(layer, "attn_out")
                hsz = dense.weight.shape[1] // len(hs_t)
                w = dense.weight.view(dense.weight.shape[0], len(hs_t), hsz)[:, kept].float()  # (hid, K, hs)
            for b in range(len(teach)):
                ctx_t, a_t = _attention(fam, layer, teach[b], ams[b], None)
                t_attn.append(a_t)
                ctx_s = None if hs_t is None else fam.run_self_attention(layer, stud[b], ams[b])
                s_ctx.append(ctx_s)  # reused for the student's block output once the scales are known
                if not kept:
                    continue
                pre_t = dense(ctx_t.flatten(2)) + teach[b]
                tgt = sel(pre_t - dense.bias - stud[b], b).float()  # (n, hid)
                c = torch.einsum("nkd,okd->nok", sel(ctx_s, b)[:, kept].float(), w)  # (n, hid, K)
                # per-batch products in float32, accumulated on the CPU in float64
                ata += torch.einsum("nok,noj->kj", c, c).double().cpu()
                atb += torch.einsum("nok,no->k", c, tgt).double().cpu()
                btb += float((tgt.double() ** 2).sum())
            if kept:
                ones = torch.ones(len(kept), dtype=torch.float64)
                s = _solve(ata, atb, damp) if tune and stopped is None else ones
                if not bool(torch.isfinite(s).all()) or float(s.abs().max()) > SCALE_BOUND:
                    stopped = stopped or f"L{li} MHA: scale out of [-{SCALE_BOUND:g}, {SCALE_BOUND:g}]"
                    s = ones
                head_scale[li][kept] = s
                errors.append({"layer": li, "block": "mha", "before": _err(ata, atb, btb, ones),
                               "after": _err(ata, atb, btb, s), "norm": btb})
            s_attn = [_attention_from(fam, layer, stud[b], s_ctx[b], head_scale.get(li)) for b in range(len(teach))]
            del s_ctx
            # --- FFN block (the teacher's next-layer input is computed here too)
            ns_t = neuron_scale.get(li)
            kept_n = [] if ns_t is None else torch.nonzero(ns_t).flatten().tolist()
            if kept_n:
                w2 = fam.linear(layer, "ffn_out").weight[:, kept_n].float()  # (hid, Kn)
                hh_acc = torch.zeros(len(kept_n), len(kept_n), dtype=torch.float64)
                atb = torch.zeros(len(kept_n), dtype=torch.float64)
                btb = 0.0
            for b in range(len(teach)):
                a_t, a_s = t_attn[b], s_attn[b]
                if fam.ffn_skipped(layer):
                    teach[b] = fam.layer_norm(layer, "ffn")(a_t)
                    continue
                out = fam.linear(layer, "ffn_out")
                pre_t = out(fam.ffn_act(layer, a_t)) + a_t
                teach[b] = fam.layer_norm(layer, "ffn")(pre_t)
                if not kept_n:
                    continue
                tgt = sel(pre_t - out.bias - a_s, b).float()  # (n, hid)
                h_s = sel(fam.ffn_act(layer, a_s), b)[:, kept_n].float()  # (n, Kn)
                hh_acc += (h_s.T @ h_s).double().cpu()  # the (Kn, Kn) Gram is the cost
                atb += ((tgt @ w2) * h_s).sum(0).double().cpu()
                btb += float((tgt.double() ** 2).sum())
            if kept_n:
                ata = (w2.double().T @ w2.double()).cpu() * hh_acc
                ones = torch.ones(len(kept_n), dtype=torch.float64)
                s = _solve(ata, atb, damp) if tune and stopped is None else ones
                if not bool(torch.isfinite(s).all()) or float(s.abs().max()) > SCALE_BOUND:
                    stopped = stopped or f"L{li} FFN: scale out of [-{SCALE_BOUND:g}, {SCALE_BOUND:g}]"
                    s = ones
                neuron_scale[li][kept_n] = s
                errors.append({"layer": li, "block": "ffn", "before": _err(ata, atb, btb, ones),
                               "after": _err(ata, atb, btb, s), "norm": btb})
            # --- the student's next-layer input, with this layer's scales
            for b in range(len(teach)):
                stud[b] = _ffn(fam, layer, s_attn[b], neuron_scale.get(li))[1]
            del t_attn, s_attn

        def head_rows(t: torch.Tensor, b: int) -> torch.Tensor:  # what the task head reads of the last layer
            return (t[:, 0] if is_seq_cls else t[toks[b]]).double()

        num = sum(float((head_rows(t, b) - head_rows(s, b)).pow(2).sum()) for b, (t, s) in enumerate(zip(teach, stud)))
        den = sum(float(head_rows(t, b).pow(2).sum()) for b, t in enumerate(teach))
    for e in errors:
        n = e.pop("norm")
        e["rel_before"] = e["before"] / n if n else 0.0
        e["rel_after"] = e["after"] / n if n else 0.0
    return {"head_scale": head_scale, "neuron_scale": neuron_scale, "errors": errors, "stopped": stopped,
            "final_rel_err": num / den if den else 0.0}


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


# ---------------------------------------------------------------------------------------------- the baseline
def _sample(ds, max_rows: int, seed: int):
    """At most ``max_rows`` rows (seeded), ordered by length so that batches carry little padding."""
    idx = np.arange(len(ds))
    if len(ds) > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=max_rows, replace=False))
    lengths = np.asarray([len(ds[int(i)]["input_ids"]) for i in idx])
    return ds.select(idx[np.argsort(lengths, kind="stable")].tolist())


def _shell_flops(model: nn.Module, arch: dict[str, Any], seq_len: float) -> float:
    """Forward FLOPs (one sequence of ``seq_len``) of ``model``'s original architecture cut to ``arch``."""
    from baselines.matching import shell_of_arch

    return _flops(shell_of_arch(model, arch), seq_len)


def _flops(model: nn.Module, seq_len: float) -> float:
    """``measure.forward_flops`` at a (possibly fractional) length: it is a quadratic in T, fitted exactly."""
    from axformer import measure

    t0 = math.floor(seq_len)
    f = [measure.forward_flops(model, 1, t) for t in (max(t0, 1), max(t0, 1) + 1, max(t0, 1) + 2)]
    # Lagrange interpolation of the quadratic f(T) through T0, T0+1, T0+2
    u = seq_len - max(t0, 1)
    return f[0] * (u - 1) * (u - 2) / 2 - f[1] * u * (u - 2) + f[2] * u * (u - 1) / 2


def structure_record(before: "Units", after: "Units", arch: dict[str, Any]) -> dict[str, Any]:
    """What a structured peer removed, for its step record (fisher and kprune share it): head / neuron counts
    before and after, what each layer kept, the blocks removed."""
    return {
        "heads_before": before.n_heads(), "heads_after": after.n_heads(),
        "neurons_before": before.n_neurons(), "neurons_after": after.n_neurons(),
        "kept_per_layer": {f"L{i}": {"heads": len(r["heads"]), "neurons": len(r["neurons"])}
                           for i, r in enumerate(arch["layers"])},
        "attn_blocks_removed": [i for i, r in enumerate(arch["layers"]) if r["attn_skipped"]],
        "ffn_blocks_removed": [i for i, r in enumerate(arch["layers"]) if r["ffn_skipped"]],
    }


def _target(model: nn.Module, cfg: dict[str, Any], name: str = "fisher") -> dict[str, Any]:
    """The constraint: ``{"by": "params", "params_encoder": P}``, ``{"by": "flops", "arch": ..., "source"}``
    (AxFormer's FLOPs, evaluated at the sample's length), ``{"by": "flops_frac", "frac": f}`` or
    ``{"by": "params_frac", "frac": f}`` (kept fraction of the parent's head + FFN FLOPs / parameters).
    ``name`` is the method named in errors (baselines.kprune shares this)."""
    fracs = [k for k in ("flops_frac", "params_frac") if cfg.get(k) is not None]
    by = cfg.get("match_by")
    given = [k for k in ("match", "target_params", "match_params") if cfg.get(k) not in (None, False)]
    if fracs:
        if len(fracs) > 1:
            raise ConfigError(f"{name}: give either flops_frac or params_frac, not both.")
        if given:
            raise ConfigError(f"{name}: give either {fracs[0]} or a match target ({', '.join(given)}), not both.")
        frac = cfg[fracs[0]]
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
            raise ConfigError(f"{name}: {fracs[0]} must be a number in (0, 1] (got {frac!r}).")
        return {"by": fracs[0], "frac": float(frac)}
    if by == "flops":
        if cfg.get("match") is None or cfg.get("target_params") is not None or cfg.get("match_params"):
            raise ConfigError(f"{name}: match_by=flops needs --match DECISIONS.json (and no parameter target).")
        dec = load_decisions(cfg["match"])
        if not isinstance(dec.get("arch"), dict):
            raise ConfigError(f"{cfg['match']} has no 'arch' record, needed to match by FLOPs.")
        return {"by": "flops", "arch": dec["arch"], "source": str(cfg["match"])}
    if by == "heads":
        raise ConfigError(f"{name} prunes heads and FFN neurons: match_by must be 'params' or 'flops' (got 'heads').")
    target = resolve_target(model, cfg, default_by="params")
    if target is None:
        raise ConfigError(f"{name} needs an amount: match (--match DECISIONS.json; match_by params or flops), "
                          "target_params (--target-params N), flops_frac (--arg flops_frac=0.5) or params_frac "
                          "(--arg params_frac=0.5).")
    return target


def budget_of(model: nn.Module, target: dict[str, Any], units: Units, seq_len: float,
              name: str = "fisher") -> tuple[str, float, float, float]:
    """``(cost_by, cost_head, cost_neuron, budget)``: the cost of the kept heads + neurons may not exceed
    ``budget`` (:func:`unit_costs` units). The rest of the model (embeddings, LayerNorms, biases) is fixed cost.
    A FLOPs match fills in ``target["flops_per_seq"]`` (AxFormer's FLOPs at ``seq_len``)."""
    by = "params" if target["by"] in ("params", "params_frac") else "flops"
    c_h, c_n = unit_costs(model, by, seq_len)
    prunable = units.n_heads() * c_h + units.n_neurons() * c_n
    if target["by"] in ("flops_frac", "params_frac"):
        return by, c_h, c_n, target["frac"] * prunable
    if target["by"] == "params":
        fixed = elements.count_encoder_params(model) - prunable
        budget = target["params_encoder"] - fixed
        if budget < 0:
            raise ConfigError(f"{name}: even removing every head and FFN neuron leaves {int(fixed)} encoder "
                              f"parameters, above the target {target['params_encoder']}.")
        return by, c_h, c_n, budget
    fixed = _flops(model, seq_len) - prunable
    target["flops_per_seq"] = _shell_flops(model, target.pop("arch"), seq_len)
    budget = target["flops_per_seq"] - fixed
    if budget < 0:
        raise ConfigError(f"{name}: AxFormer's FLOPs ({target['flops_per_seq']:.4g}) are below what remains "
                          f"with every head and neuron removed ({fixed:.4g}).")
    return by, c_h, c_n, budget


@register("fisher")
def fisher(model: nn.Module, tokenizer, task: Task, splits_tokenized: dict, cfg: dict[str, Any]):
    """Kwon et al. 2022: Fisher mask search + rearrangement + mask tuning under a size / FLOPs constraint."""
    t0 = time.perf_counter()
    cfg = parse_args("fisher", ARGS, cfg)
    max_rows, batch_size, damp = cfg["max_rows"], cfg["batch_size"], cfg["damp"]
    do_rearrange, do_tune = cfg["rearrange"], cfg["tune"]
    seq_len_cfg, split = cfg["seq_len"], cfg["split"]
    if split not in splits_tokenized or split == "dev":
        raise ConfigError(f"fisher: split must be 'search' or 'train' (got {split!r}); dev is for reporting only.")
    target = _target(model, cfg)  # before any work: a bad decisions file fails here
    if len(splits_tokenized[split]) == 0:
        raise ConfigError(f"fisher: the {split} split is empty; nothing to score masks on.")
    progress, seed = cfg["progress"], cfg["seed"]

    def say(msg: str) -> None:
        if progress:
            print(f"fisher: {msg} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    units = Units.of(model)
    if units.n_heads() + units.n_neurons() == 0:
        raise ConfigError("fisher: the model has no heads or FFN neurons left to prune.")
    sample = _sample(splits_tokenized[split], max_rows, seed)
    timing: dict[str, float] = {}

    # 1. per-sample mask gradients -> diagonal Fisher
    t = time.perf_counter()
    g = mask_gradients(model, sample, tokenizer, task, batch_size=batch_size)
    fh, fn = fisher_diag(g["head"]), fisher_diag(g["neuron"])
    timing["fisher_s"] = time.perf_counter() - t
    say(f"Fisher on {g['n_rows']} rows")

    # 2. constraint -> budget on the prunable part -> search -> rearrangement
    t = time.perf_counter()
    seq_len = float(g["mean_len"] if seq_len_cfg == "mean" else seq_len_cfg)
    by, c_h, c_n, budget = budget_of(model, target, units, seq_len)
    keep_h, keep_n, kept_imp = search(fh, fn, c_h, c_n, budget)
    timing["search_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rearr = {"changed_heads": 0, "changed_neurons": 0, "block_loss_before": 0.0, "block_loss_after": 0.0}
    if do_rearrange:
        for kind, keep, grads in (("heads", keep_h, g["head"]), ("neurons", keep_n, g["neuron"])):
            for i in keep:
                new = rearrange(grads[i], len(keep[i]))
                rearr["block_loss_before"] += block_loss(grads[i], keep[i])
                rearr["block_loss_after"] += block_loss(grads[i], new)
                rearr[f"changed_{kind}"] += len(set(keep[i]) - set(new))
                keep[i] = new
    timing["rearrange_s"] = time.perf_counter() - t
    say("search + rearrangement")

    # 3. mask tuning, fold, structural removal
    t = time.perf_counter()
    tuned = tune_masks(model, sample, tokenizer, keep_h, keep_n, batch_size=batch_size, damp=float(damp),
                       tune=do_tune)
    timing["tune_s"] = time.perf_counter() - t
    say("mask tuning")
    params_before = elements.count_encoder_params(model)
    flops_before = _flops(model, seq_len)
    apply_plan(model, tuned["head_scale"], tuned["neuron_scale"])
    params_after = elements.count_encoder_params(model)
    flops_after = _flops(model, seq_len)
    if target["by"] == "params" and params_after > target["params_encoder"]:  # pragma: no cover - cost model guard
        raise RuntimeError(f"fisher: {params_after} encoder parameters left, above the target {target}.")
    arch = elements.architecture(model)
    after_units = Units.of(model)
    hs = [float(v) for s in tuned["head_scale"].values() for v in s if v != 0]
    ns = [float(v) for s in tuned["neuron_scale"].values() for v in s if v != 0]
    info: dict[str, Any] = {
        "paper": PAPER,
        "importance": "diagonal empirical Fisher of head / FFN-neuron masks: sum over sample rows of (dL/dm)^2",
        "split": split,
        "n_rows": g["n_rows"],
        "sample_loss": g["loss"],
        "seq_len": seq_len,
        "target": target,
        "cost_by": by,
        "cost_head": c_h,
        "cost_neuron": c_n,
        "budget": budget,
        "kept_importance": kept_imp,
        "total_importance": float(sum(v.sum() for v in fh.values()) + sum(v.sum() for v in fn.values())),
        **structure_record(units, after_units, arch),
        "params_encoder_before": params_before,
        "params_encoder_after": params_after,
        "flops_per_seq_before": flops_before,
        "flops_per_seq_after": flops_after,
        "flops_frac_after": flops_after / flops_before if flops_before else None,
        "rearrange": do_rearrange,
        "rearrangement": rearr,
        "tune": do_tune,
        "damp": float(damp),
        "tuning_errors": tuned["errors"],
        "tuning_stopped": tuned["stopped"],
        "final_rel_err": tuned["final_rel_err"],
        "head_scale_range": [min(hs), max(hs)] if hs else None,
        "neuron_scale_range": [min(ns), max(ns)] if ns else None,
        "head_fisher": {f"L{i}": {f"head{units.heads[i][p]}": float(v) for p, v in enumerate(f.tolist())}
                        for i, f in fh.items()},
        "retrained": False,
        "timing": timing,
        "wall_s": time.perf_counter() - t0,
    }
    return model, info


__all__ = ["fisher", "Units", "budget_of", "mask_gradients", "fisher_diag", "unit_costs", "search", "rearrange", "block_loss",
           "tune_masks", "apply_plan"]
