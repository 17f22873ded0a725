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
   (the paper's setting; ``cost.forward_flops`` counts the same matmuls) or parameters
   (:mod:`baselines.structure`: units, costs, constraint and budget, shared with K-prune).
   **Mask rearrangement** (paper §4.2): the diagonal Fisher ignores interactions; within each layer's MHA block
   and FFN block (the block-diagonal approximation) the pruned set P should minimise
   ``sum_x (sum_{i in P} dL(x)/dm_i)^2``. Greedy, as the paper: start from the same number of lowest-Fisher
   units; add the next candidate (ascending Fisher) to P and drop the member of P whose removal leaves the
   smallest value; the per-layer counts (hence the constraint) do not change.
3. **Mask tuning** (paper §4.3, :mod:`baselines.mask_tuning`): layer by layer, real-valued scales of the kept
   heads / neurons fitted by damped linear least squares to reconstruct the unpruned model's pre-LayerNorm
   outputs, folded into the weights; the pruned heads and neurons are then removed structurally.

Deviations (docs/DESIGN.md, baselines/README.md): the teacher of mask tuning is the unpruned parent (the paper's
description; the authors' script uses an intermediate-constraint model); the MHA block of layer 0 is tuned too;
in the last layer of a sequence classifier only the [CLS] position is reconstructed (the only one the head
reads); no latency look-up-table constraint (FLOPs and parameters only).

Config (``cfg``): :data:`ARGS` (baselines/args.py) — the amount: ``match`` (AxFormer's decisions.json;
``match_by`` ``params`` [default] or ``flops``) | ``target_params`` / ``match_params`` | ``flops_frac`` /
``params_frac`` (kept fraction of the parent's head + FFN FLOPs / parameters: the budget of a sweep);
``max_rows`` (2048, the paper's sample), ``batch_size`` (32), ``seq_len`` (``"mean"`` = mean real length of the
sample, or a number), ``rearrange`` (true), ``tune`` (true), ``damp`` (0.1, relative to the mean diagonal of the
normal matrix), ``split`` ("search"), ``seed``, ``progress``.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

from axformer.surgery import elements, families
from axformer.training.batches import make_loader, model_inputs
from axformer.taskdata.losses import output_logits, per_sample_loss
from axformer.taskdata.tasks import Task
from axformer.utils import ConfigError
from baselines import register
from baselines.args import FISHER_ARGS, ArgSpec, parse_args
from baselines.mask_tuning import apply_plan, tune_masks
from baselines.structure import (Units, budget_of, constraint, flops_at, frozen,
                                 length_sorted_sample, structure_record)

# the method's cfg keys: declared in baselines/args.py, which the workflow's pre-run check reads without torch
ARGS: dict[str, ArgSpec] = FISHER_ARGS

PAPER = ("Kwon, Kim, Mahoney, Hassoun, Keutzer & Gholami 2022, A Fast Post-Training Pruning Framework for "
         "Transformers (NeurIPS 2022, arXiv 2204.09656)")


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
        with frozen(model), torch.enable_grad():
            for batch in make_loader(ds, tokenizer, batch_size, shuffle=False):
                masks.clear()
                inputs = model_inputs(batch, device)
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



# ---------------------------------------------------------------------------------------------- 2. search
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


# ---------------------------------------------------------------------------------------------- the baseline
def _check(model: nn.Module, splits_tokenized: dict, cfg: dict[str, Any]) -> tuple[dict[str, Any], Units]:
    """Before any work: the split, the constraint (a bad decisions file fails here), something to prune."""
    split = cfg["split"]
    if split not in splits_tokenized or split == "dev":
        raise ConfigError(f"fisher: split must be 'search' or 'train' (got {split!r}); dev is for reporting only.")
    target = constraint(model, cfg)
    if len(splits_tokenized[split]) == 0:
        raise ConfigError(f"fisher: the {split} split is empty; nothing to score masks on.")
    units = Units.of(model)
    if units.n_heads() + units.n_neurons() == 0:
        raise ConfigError("fisher: the model has no heads or FFN neurons left to prune.")
    return target, units


def _rearrange_all(keep_h: dict[int, list[int]], keep_n: dict[int, list[int]], grads: dict[str, Any],
                   on: bool = True) -> dict[str, Any]:
    """:func:`rearrange` in every block (``on``), in place of ``keep_h`` / ``keep_n``; what it changed, for the
    record (all zero when off)."""
    rearr = {"changed_heads": 0, "changed_neurons": 0, "block_loss_before": 0.0, "block_loss_after": 0.0}
    blocks = (("heads", keep_h, grads["head"]), ("neurons", keep_n, grads["neuron"])) if on else ()
    for kind, keep, g in blocks:
        for i in keep:
            new = rearrange(g[i], len(keep[i]))
            rearr["block_loss_before"] += block_loss(g[i], keep[i])
            rearr["block_loss_after"] += block_loss(g[i], new)
            rearr[f"changed_{kind}"] += len(set(keep[i]) - set(new))
            keep[i] = new
    return rearr


def _choose_masks(model: nn.Module, target: dict[str, Any], units: Units, g: dict[str, Any], fh: dict, fn: dict,
                  cfg: dict[str, Any], timing: dict[str, float]) -> dict[str, Any]:
    """Stage 2: the constraint as a budget at the sample's length, the mask search, then rearrangement."""
    t = time.perf_counter()
    seq_len = float(g["mean_len"] if cfg["seq_len"] == "mean" else cfg["seq_len"])
    by, c_h, c_n, budget = budget_of(model, target, units, seq_len)
    keep_h, keep_n, kept_imp = search(fh, fn, c_h, c_n, budget)
    timing["search_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rearr = _rearrange_all(keep_h, keep_n, g, on=cfg["rearrange"])
    timing["rearrange_s"] = time.perf_counter() - t
    return {"seq_len": seq_len, "cost_by": by, "cost_head": c_h, "cost_neuron": c_n, "budget": budget,
            "keep_h": keep_h, "keep_n": keep_n, "kept_importance": kept_imp, "rearrangement": rearr}


def _prune(model: nn.Module, tuned: dict[str, Any], target: dict[str, Any], seq_len: float) -> dict[str, Any]:
    """Fold the tuned scales, remove the pruned units; the encoder's size and FLOPs before / after."""
    params_before = elements.count_encoder_params(model)
    flops_before = flops_at(model, seq_len)
    apply_plan(model, tuned["head_scale"], tuned["neuron_scale"])
    params_after = elements.count_encoder_params(model)
    flops_after = flops_at(model, seq_len)
    if target["by"] == "params" and params_after > target["params_encoder"]:  # pragma: no cover - cost model guard
        raise RuntimeError(f"fisher: {params_after} encoder parameters left, above the target {target}.")
    return {"params_encoder_before": params_before, "params_encoder_after": params_after,
            "flops_per_seq_before": flops_before, "flops_per_seq_after": flops_after,
            "flops_frac_after": flops_after / flops_before if flops_before else None}


def _info(model: nn.Module, cfg: dict[str, Any], target: dict[str, Any], units: Units, g: dict[str, Any],
          fh: dict, fn: dict, plan: dict[str, Any], tuned: dict[str, Any], sizes: dict[str, Any]) -> dict[str, Any]:
    """The step record's ``baseline.info`` (timing and wall time are added by the caller)."""
    hs = [float(v) for s in tuned["head_scale"].values() for v in s if v != 0]
    ns = [float(v) for s in tuned["neuron_scale"].values() for v in s if v != 0]
    return {
        "paper": PAPER,
        "importance": "diagonal empirical Fisher of head / FFN-neuron masks: sum over sample rows of (dL/dm)^2",
        "split": cfg["split"],
        "n_rows": g["n_rows"],
        "sample_loss": g["loss"],
        "seq_len": plan["seq_len"],
        "target": target,
        "cost_by": plan["cost_by"],
        "cost_head": plan["cost_head"],
        "cost_neuron": plan["cost_neuron"],
        "budget": plan["budget"],
        "kept_importance": plan["kept_importance"],
        "total_importance": float(sum(v.sum() for v in fh.values()) + sum(v.sum() for v in fn.values())),
        **structure_record(units, Units.of(model), elements.architecture(model)),
        **sizes,
        "rearrange": cfg["rearrange"],
        "rearrangement": plan["rearrangement"],
        "tune": cfg["tune"],
        "damp": float(cfg["damp"]),
        "tuning_errors": tuned["errors"],
        "tuning_stopped": tuned["stopped"],
        "final_rel_err": tuned["final_rel_err"],
        "head_scale_range": [min(hs), max(hs)] if hs else None,
        "neuron_scale_range": [min(ns), max(ns)] if ns else None,
        "head_fisher": {f"L{i}": {f"head{units.heads[i][p]}": float(v) for p, v in enumerate(f.tolist())}
                        for i, f in fh.items()},
        "retrained": False,
    }


def _progress(on: bool, t0: float) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if on:
            print(f"fisher: {msg} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return say


@register("fisher")
def fisher(model: nn.Module, tokenizer, task: Task, splits_tokenized: dict, cfg: dict[str, Any]):
    """Kwon et al. 2022: Fisher mask search + rearrangement + mask tuning under a size / FLOPs constraint."""
    t0 = time.perf_counter()
    cfg = parse_args("fisher", ARGS, cfg)
    target, units = _check(model, splits_tokenized, cfg)
    say = _progress(cfg["progress"], t0)
    sample = length_sorted_sample(splits_tokenized[cfg["split"]], cfg["max_rows"], cfg["seed"])
    timing: dict[str, float] = {}

    # 1. per-sample mask gradients -> diagonal Fisher
    t = time.perf_counter()
    g = mask_gradients(model, sample, tokenizer, task, batch_size=cfg["batch_size"])
    fh, fn = fisher_diag(g["head"]), fisher_diag(g["neuron"])
    timing["fisher_s"] = time.perf_counter() - t
    say(f"Fisher on {g['n_rows']} rows")

    # 2. constraint -> budget on the prunable part -> search -> rearrangement
    plan = _choose_masks(model, target, units, g, fh, fn, cfg, timing)
    say("search + rearrangement")

    # 3. mask tuning, fold, structural removal
    t = time.perf_counter()
    tuned = tune_masks(model, sample, tokenizer, plan["keep_h"], plan["keep_n"], batch_size=cfg["batch_size"],
                       damp=float(cfg["damp"]), tune=cfg["tune"])
    timing["tune_s"] = time.perf_counter() - t
    say("mask tuning")
    sizes = _prune(model, tuned, target, plan["seq_len"])
    info = _info(model, cfg, target, units, g, fh, fn, plan, tuned, sizes)
    info.update(timing=timing, wall_s=time.perf_counter() - t0)
    return model, info


__all__ = ["fisher", "ARGS", "mask_gradients", "fisher_diag", "search", "rearrange", "block_loss"]
