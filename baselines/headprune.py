"""Gradient-based head pruning (Michel, Levy & Neubig, NeurIPS 2019, "Are Sixteen Heads Really Better than One?").

Importance of head h: ``I_h = sum_x |dL(x)/dg_h|`` over the search split, where ``g_h`` is a gate (= 1) that
multiplies the head's context output and ``L(x)`` is the task loss of sample x (Michel et al., Eq. 2 — an
expectation; we sum, which ranks identically; for SQuAD x is a window and L its span loss, start CE + end CE). Scores are normalised per layer by their L2 norm, as Michel et
al. do, and the globally least important heads are removed **structurally** (``elements.remove_heads``), with
no re-training (their §4 setting). Weights stay frozen; gradients reach only the gates.

transformers 5.x has no ``head_mask``: a forward pre-hook on each layer's attention output projection (where the
family adapter, :mod:`axformer.surgery.families`, says it is) reshapes its input, the heads' context (B, T, H*hs), to (B, T, H, hs) and multiplies it by a gate of shape (B, H) that requires grad. One gate
row per sample makes ``dL_total/dg[b, h] = dL(x_b)/dg_h`` exactly (samples do not interact in an encoder), so
the absolute value is taken per sample, as in the paper, at the cost of one backward pass per batch.

Config (``cfg``): ``n_heads`` (int) | ``params_frac`` (kept fraction of the parent's attention-head parameters,
i.e. of its heads: the budget of a sweep) | ``match`` (decisions.json; ``match_by`` heads [default] or params) |
``match_params`` / ``target_params`` (see baselines.matching); ``batch_size`` (32); ``normalize`` (true);
``split`` ("search"; the data the scores come from); ``step_heads`` (0 = one-shot ranking; k > 0 = re-score
after every k removals, the iterative variant).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from axformer.surgery import elements, families
from axformer.taskdata.tasks import Task
from axformer.training.batches import make_loader, model_inputs
from axformer.taskdata.losses import output_logits, per_sample_loss
from axformer.utils import ConfigError
from baselines import register
from baselines.args import HEADPRUNE_ARGS, ArgSpec, parse_args
from baselines.matching import resolve_target

# the method's cfg keys: declared in baselines/args.py, which the workflow's pre-run check reads without torch
ARGS: dict[str, ArgSpec] = HEADPRUNE_ARGS



def _present_heads(model: nn.Module) -> dict[int, list[int]]:
    """layer -> ORIGINAL ids of the heads still present (layers with a skipped attention block left out)."""
    arch = elements.architecture(model)
    return {i: list(rec["heads"]) for i, rec in enumerate(arch["layers"]) if not rec["attn_skipped"]}


def head_importance(model: nn.Module, ds, tokenizer, task: Task, batch_size: int = 32,
                    normalize: bool = True) -> dict[str, Any]:
    """Michel et al. head importance on ``ds``.

    Returns ``{"raw": {layer: {head_id: score}}, "normalized": {...}, "n_rows": N}`` keyed by ORIGINAL head ids
    (layers whose attention block is removed are absent). Weights are frozen during the pass and restored.
    """
    present = _present_heads(model)
    if not present:
        return {"raw": {}, "normalized": {}, "n_rows": 0}
    fam = families.of(model)
    layers = fam.layers(model)
    device = next(model.parameters()).device
    gates: dict[int, torch.Tensor] = {}

    def make_hook(i: int, n_heads: int):
        # the heads' concatenated context is the input of the attention output projection (every family)
        def hook(_mod, args):
            ctx = args[0]
            b, t, d = ctx.shape
            g = torch.ones(b, n_heads, dtype=ctx.dtype, device=ctx.device, requires_grad=True)
            gates[i] = g
            return ((ctx.view(b, t, n_heads, d // n_heads) * g[:, None, :, None]).view(b, t, d), *args[1:])
        return hook

    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    handles = [fam.linear(layers[i], "attn_out").register_forward_pre_hook(make_hook(i, len(h)))
               for i, h in present.items()]
    raw = {i: torch.zeros(len(h), dtype=torch.float64) for i, h in present.items()}
    n_rows = 0
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()  # no dropout: the gradient of the deterministic model
        with torch.enable_grad():
            for batch in make_loader(ds, tokenizer, batch_size, shuffle=False):
                gates.clear()
                inputs = model_inputs(batch, device)
                logits = output_logits(model(**inputs), inputs)  # span QA: (B, T, 2) start / end logits
                loss = per_sample_loss(logits, batch["labels"].to(device), task.is_regression).sum()
                order = sorted(gates)
                grads = torch.autograd.grad(loss, [gates[i] for i in order], allow_unused=True)
                for i, g in zip(order, grads):
                    if g is not None:  # unused only if the head's output cannot reach the loss
                        raw[i] += g.detach().abs().sum(0).double().cpu()
                n_rows += int(batch["labels"].shape[0])
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    norm = {}
    for i, s in raw.items():
        denom = float(torch.linalg.vector_norm(s)) if normalize else 1.0
        norm[i] = s / (denom + 1e-20) if normalize else s.clone()
    as_dict = lambda t: {i: {h: float(v) for h, v in zip(present[i], t[i].tolist())} for i in present}  # noqa: E731
    return {"raw": as_dict(raw), "normalized": as_dict(norm), "n_rows": n_rows}


def ranking(scores: dict[int, dict[int, float]]) -> list[tuple[int, int, float]]:
    """(layer, head, score) ascending by score — the removal order; ties by layer, then head id."""
    flat = [(s, i, h) for i, row in scores.items() for h, s in row.items()]
    flat.sort()
    return [(i, h, s) for s, i, h in flat]


def _json_scores(scores: dict[int, dict[int, float]]) -> dict[str, dict[str, float]]:
    return {f"L{i}": {f"head{h}": s for h, s in row.items()} for i, row in scores.items()}


@register("headprune")
def headprune(model: nn.Module, tokenizer, task: Task, splits_tokenized: dict, cfg: dict[str, Any]):
    """Michel et al. 2019: remove the globally least important heads (gradient of a head gate), no re-training."""
    t0 = time.perf_counter()
    cfg = parse_args("headprune", ARGS, cfg)
    batch_size, step_heads, normalize, split = cfg["batch_size"], cfg["step_heads"], cfg["normalize"], cfg["split"]
    if split not in splits_tokenized or split == "dev":
        raise ConfigError(f"headprune: split must be 'search' or 'train' (got {split!r}); dev is for reporting only.")
    ds = splits_tokenized[split]
    if len(ds) == 0:
        raise ConfigError(f"headprune: the {split} split is empty; nothing to score heads on.")

    target = resolve_target(model, cfg, default_by="heads", method="headprune")
    if cfg.get("n_heads") is not None:
        if target is not None:
            raise ConfigError("headprune: give either n_heads or a match target (match / match_params / "
                              "target_params), not both.")
        target = {"by": "heads", "n_heads": cfg["n_heads"], "source": "n_heads"}
    total_heads = sum(len(h) for h in _present_heads(model).values())
    if cfg.get("params_frac") is not None:
        # a sweep budget: keep at most this fraction of the parent's attention-head parameters (every head has
        # the same Q/K/V/output slices, so the fraction of heads kept; a removed block also drops its bias)
        frac = cfg["params_frac"]
        if target is not None:
            raise ConfigError("headprune: give either params_frac or another amount (n_heads / match / "
                              "target_params), not both.")
        target = {"by": "heads", "n_heads": total_heads - int(math.floor(frac * total_heads + 1e-9)),
                  "source": "params_frac", "frac": float(frac)}
    if target is None:
        raise ConfigError("headprune needs an amount: n_heads (--n-heads N), params_frac (--arg params_frac=0.5), "
                          "match (--match DECISIONS.json) or target_params (--target-params N).")

    params_before = elements.count_encoder_params(model)
    if target["by"] == "heads" and target["n_heads"] > total_heads:
        raise ConfigError(f"headprune: asked to remove {target['n_heads']} heads but the model has {total_heads}.")

    if target["by"] == "params":
        fam = families.of(model)
        layers = fam.layers(model)
        floor = params_before - sum(elements.count_params(fam.linear(layers[i], part))
                                    for i in _present_heads(model) for part in ("q", "k", "v", "attn_out"))
        if floor > target["params_encoder"]:
            raise ConfigError(
                f"headprune: even removing every attention head leaves {floor} encoder parameters, above the target "
                f"{target['params_encoder']} (AxFormer also removed FFN elements); match by heads instead "
                "(match_by=heads) or use another baseline.")

    def done(n_removed: int) -> bool:
        if target["by"] == "heads":
            return n_removed >= target["n_heads"]
        return elements.count_encoder_params(model) <= target["params_encoder"]

    first = head_importance(model, ds, tokenizer, task, batch_size=batch_size, normalize=normalize)
    imp = first
    removed: list[str] = []
    rescorings = 1
    while not done(len(removed)):
        if not _present_heads(model):
            raise ConfigError(
                f"headprune: removing every attention head leaves {elements.count_encoder_params(model)} encoder "
                f"parameters, still above the target {target.get('params_encoder')} (AxFormer also removed FFN "
                "elements); match by heads instead (match_by=heads) or use another baseline.")
        if imp is None:
            imp = head_importance(model, ds, tokenizer, task, batch_size=batch_size, normalize=normalize)
            rescorings += 1
        order = ranking(imp["normalized"])
        budget = step_heads if step_heads > 0 else len(order)
        for layer, head, _score in order[:budget]:
            elements.remove_heads(model, layer, [head])
            removed.append(f"L{layer}.head{head}")
            if done(len(removed)):
                break
        imp = None  # iterative variant: re-score the remaining heads

    arch = elements.architecture(model)
    info: dict[str, Any] = {
        "paper": "Michel, Levy & Neubig 2019, Are Sixteen Heads Really Better than One? (arXiv 1905.10650)",
        "importance": "sum over samples of |dL/dg_h|, g_h = gate on head h's context output" +
                      (", L2-normalised per layer" if normalize else ""),
        "split": split,
        "n_rows": first["n_rows"],
        "target": target,
        "n_removed": len(removed),
        "removed": removed,
        "heads_before": total_heads,
        "heads_after": sum(len(rec["heads"]) for rec in arch["layers"]),
        "attn_blocks_removed": [i for i, rec in enumerate(arch["layers"]) if rec["attn_skipped"]],
        "params_encoder_before": params_before,
        "params_encoder_after": elements.count_encoder_params(model),
        "step_heads": step_heads,
        "rescorings": rescorings,
        "retrained": False,
        "wall_s": time.perf_counter() - t0,
    }
    info["scores"] = _json_scores(first["normalized"])
    info["scores_raw"] = _json_scores(first["raw"])
    info["ranking"] = [f"L{i}.head{h}" for i, h, _ in ranking(first["normalized"])]
    return model, info


def planted_zero_head(model: nn.Module, layer: int, head: int) -> None:
    """Zero head ``head`` (current position == original id on an unedited layer) value rows: its output is 0.

    Test helper, also handy to sanity-check the importance on a real model: the head must score exactly 0.
    """
    fam = families.of(model)
    value = fam.linear(fam.layers(model)[layer], "v")
    hs = fam.head_size(model.config)
    with torch.no_grad():
        value.weight[head * hs:(head + 1) * hs] = 0.0
        if value.bias is not None:
            value.bias[head * hs:(head + 1) * hs] = 0.0


__all__ = ["headprune", "head_importance", "ranking", "planted_zero_head"]
