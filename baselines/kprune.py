"""K-prune: knowledge-preserving retraining-free structured pruning (Park, Choi & Kang, ICLR 2024, "Accurate
Retraining-free Pruning for Pretrained Encoder-based Language Models", arXiv 2308.03449; reference code
snudm-starlab/K-prune, itself built on Kwon et al.'s, see baselines/fisher.py).

The fine-tuned parent is the teacher. K-prune walks the sub-layers bottom-up — MHA of layer 0, FFN of layer 0,
MHA of layer 1, ... — and at each *target* sub-layer runs three steps on the current, partly pruned student:

1. **Knowledge measurement** of every unit (attention head, FFN neuron) still present in the target and the
   sub-layers above it, on a sample of the search split (never dev):
   * predictive knowledge: a mask (= 1) multiplies each input dimension of the sub-layer's output projection;
     ``K_pred = 1/2 * sum_x (dD(x)/dm)^2 / |sample|`` where ``D(x)`` is the distillation loss of the student's
     prediction against the teacher's, ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` (squared error for
     regression; start and end KL averaged for span QA) — an empirical-Fisher estimate of the knowledge lost
     by removing the unit; a head's value is the mean over its dimensions;
   * representational knowledge: ``K_rep = sum_tokens f_d^2 * mean_o W[o, d]^2 / |tokens|`` (``f`` the output
     projection's input, ``W`` its weight): the unit's contribution to the sub-layer output, per token;
   * score = ``(lam_pred * K_pred + lam_rep * K_rep) / cost``, heads multiplied by ``mu``.
2. **Knowledge-preserving mask search** (KPMS): all scored units (target and above) ranked by score, the
   best-scoring prefix that fits the remaining budget is kept; only the target sub-layer's part is applied.
3. **Knowledge-preserving weight tuning** (KPWT): the target's output projection columns of the kept units
   are refitted by least squares so that the sub-layer's pre-LayerNorm output (student input + projection +
   bias) reconstructs the teacher's on every real token; the pruned units are removed structurally
   (``axformer.surgery.elements``: a sub-layer with nothing kept is skipped), and the budget left for the sub-layers
   above shrinks by what the target kept.

Costs are Kwon et al.'s analytic FLOPs per head / neuron at the sample's mean real length (the same as the
reference's ``capacity.py``), or parameters; the budget (``flops_frac`` / ``params_frac`` of the parent's head +
FFN part, or AxFormer's size through ``match``) comes from :func:`baselines.structure.budget_of`, so K-prune and
Fisher are held to the same constraint. The kept cost never exceeds the budget (each target keeps at most
what the remaining budget buys).

Deviations from the reference code (docs/DESIGN.md §12): the predictive knowledge squares *per-sample*
gradients (the empirical Fisher; the code squares the gradient of each batch's mean loss); the mask search keeps
the prefix of the score ranking whose cost fits (the code searches a score threshold with a strict "<"); the
sample size is ``num_tokens`` real tokens drawn without replacement from the search split (the code draws rows
with replacement from train); the teacher's sub-layer outputs are recomputed per target rather than cached; a
least-squares solve that fails or is not finite keeps the original weights (the code catches the error the
same way).

Config (``cfg``): :data:`ARGS`, the shared declaration of baselines/args.py (the method's own keys, the amount
keys shared with Fisher — ``match`` / ``match_by`` / ``match_params`` / ``target_params`` — and ``seed``,
``progress``), parsed by the one baseline-argument parser.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch
from torch import nn

from axformer.surgery import elements, families
from axformer.taskdata.tasks import Task
from axformer.training.batches import make_loader, model_inputs
from axformer.taskdata.losses import output_logits
from axformer.utils import ConfigError
from baselines import register
from baselines.args import KPRUNE_ARGS, ArgSpec, parse_args
from baselines.lstsq import solve_normal
from baselines.structure import (Units, budget_of, constraint, flops_at, frozen,
                                 length_sorted_sample, structure_record)

# the method's cfg keys: declared in baselines/args.py, which the workflow's pre-run check reads without torch
ARGS: dict[str, ArgSpec] = KPRUNE_ARGS

PAPER = ("Park, Choi & Kang 2024, Accurate Retraining-free Pruning for Pretrained Encoder-based Language Models "
         "(ICLR 2024, arXiv 2308.03449), K-prune")


# ---------------------------------------------------------------------------------------------- the sub-layers
def sublayers(model: nn.Module) -> list[tuple[int, str]]:
    """(layer, "mha" | "ffn") bottom-up, the order K-prune visits them; blocks already removed are left out."""
    fam = families.of(model)
    out = []
    for i, layer in enumerate(fam.layers(model)):
        if not fam.attn_skipped(layer):
            out.append((i, "mha"))
        if not fam.ffn_skipped(layer):
            out.append((i, "ffn"))
    return out


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, regression: bool, temperature: float) -> torch.Tensor:
    """Per-sample distillation loss (B,): ``T^2 * KL(p_t || p_s)`` at temperature T over the classes (span QA
    logits (B, L, 2): over positions, start and end averaged), squared error for regression."""
    if regression:
        return (student.float().reshape(len(student), -1) - teacher.float().reshape(len(teacher), -1)).pow(2).sum(1)
    dim = 1 if student.dim() == 3 else -1
    ls = torch.log_softmax(student.float() / temperature, dim=dim)
    lt = torch.log_softmax(teacher.float() / temperature, dim=dim)
    kl = torch.nn.functional.kl_div(ls, lt, reduction="none", log_target=True)
    per = kl.sum(dim=dim)  # (B,) or (B, 2)
    if per.dim() == 2:
        per = per.mean(1)
    return per * temperature ** 2


def measure_knowledge(model: nn.Module, teacher: nn.Module, batches: list[dict[str, torch.Tensor]],
                      teacher_logits: list[torch.Tensor], task: Task, target: tuple[int, str],
                      temperature: float) -> dict[str, Any]:
    """One pass over the sample at target sub-layer ``target``.

    Returns ``{"pred": {(layer, kind): (n_units,) float64}, "rep": {...}}`` for the target and every sub-layer
    above it (columns in :class:`~baselines.structure.Units` order), and the target's least-squares statistics
    over real tokens: ``gram`` = F^T F (D x D, over the output projection's input dimensions), ``cross`` =
    F^T B (D x hidden) and ``bnorm`` = ||B||^2 with B = teacher's pre-LayerNorm output - student input -
    bias; ``n_rows``, ``n_tokens``.
    """
    fam = families.of(model)
    layers = fam.layers(model)
    t_layers = fam.layers(teacher)
    device = next(model.parameters()).device
    order = sublayers(model)
    scored = order[order.index(target):]
    part = {"mha": "attn_out", "ffn": "ffn_out"}
    ln_block = {"mha": "attn", "ffn": "ffn"}
    masks: dict[tuple[int, str], torch.Tensor] = {}
    feats: dict[tuple[int, str], torch.Tensor] = {}
    pred = {s: None for s in scored}
    rep = {s: None for s in scored}
    box: dict[str, torch.Tensor] = {}

    def mask_hook(key):
        def hook(_mod, args):
            f = args[0]
            m = torch.ones(f.shape[0], f.shape[-1], dtype=f.dtype, device=f.device, requires_grad=True)
            masks[key] = m
            feats[key] = f.detach()
            return (f * m[:, None, :], *args[1:])
        return hook

    def grab(name):
        def hook(_mod, args):
            box[name] = args[0].detach()
        return hook

    li, kind = target
    handles = [fam.linear(layers[i], part[k]).register_forward_pre_hook(mask_hook((i, k))) for i, k in scored]
    handles.append(fam.layer_norm(layers[li], ln_block[kind]).register_forward_pre_hook(grab("student_ln")))
    handles.append(fam.layer_norm(t_layers[li], ln_block[kind]).register_forward_pre_hook(grab("teacher_ln")))
    out_proj = fam.linear(layers[li], part[kind])
    w_target = out_proj.weight.detach()
    bias = out_proj.bias.detach() if out_proj.bias is not None else torch.zeros(w_target.shape[0], device=device)
    d_in = w_target.shape[1]
    gram = torch.zeros(d_in, d_in, dtype=torch.float64)
    cross = torch.zeros(d_in, w_target.shape[0], dtype=torch.float64)
    bnorm, n_rows, n_tok = 0.0, 0, 0
    try:
        with frozen(model), frozen(teacher):
            for inputs, z_t in zip(batches, teacher_logits):
                masks.clear()
                feats.clear()
                with torch.no_grad():
                    teacher(**inputs)
                with torch.enable_grad():
                    z_s = output_logits(model(**inputs), inputs)
                    losses = distill_loss(z_s, z_t, task.is_regression, temperature)
                    keys = list(scored)
                    grads = torch.autograd.grad(losses.sum(), [masks[k] for k in keys], allow_unused=True)
                real = inputs["attention_mask"].bool() if "attention_mask" in inputs else \
                    torch.ones(inputs["input_ids"].shape, dtype=torch.bool, device=device)
                for k, g in zip(keys, grads):
                    w = fam.linear(layers[k[0]], part[k[1]]).weight.detach()
                    g2 = torch.zeros(g.shape[1] if g is not None else w.shape[1], dtype=torch.float64) \
                        if g is None else 0.5 * g.double().pow(2).sum(0).cpu()
                    f = feats[k][real]  # (n_tok, D): real tokens only
                    r = (f.double().pow(2).sum(0) * w.double().pow(2).mean(0)).cpu()
                    pred[k] = g2 if pred[k] is None else pred[k] + g2
                    rep[k] = r if rep[k] is None else rep[k] + r
                f = feats[target][real].double()
                b = (box["teacher_ln"][real] - (box["student_ln"][real] - feats[target][real] @ w_target.T - bias)).double()
                gram += (f.T @ f).cpu()
                cross += (f.T @ b).cpu()
                bnorm += float(b.pow(2).sum())
                n_rows += int(real.shape[0])
                n_tok += int(real.sum())
    finally:
        for h in handles:
            h.remove()
    hsz = fam.head_size(model.config)

    def per_unit(v: torch.Tensor, k: str) -> torch.Tensor:
        return v.view(-1, hsz).mean(1) if k == "mha" else v  # a head: mean over its dimensions

    return {"pred": {k: per_unit(v, k[1]) / max(n_rows, 1) for k, v in pred.items()},
            "rep": {k: per_unit(v, k[1]) / max(n_tok, 1) for k, v in rep.items()},
            "gram": gram, "cross": cross, "bnorm": bnorm, "w_target": w_target.double().cpu(),
            "n_rows": n_rows, "n_tokens": n_tok}


def select(scores: dict[tuple[int, str], torch.Tensor], costs: dict[str, float], budget: float,
           target: tuple[int, str]) -> list[int]:
    """KPMS: rank every scored unit by score (descending; ties: lower sub-layer, then position), keep the longest
    prefix whose total cost fits ``budget``, return the kept positions of ``target`` (sorted)."""
    flat = [(-float(v), s, p) for s, vec in scores.items() for p, v in enumerate(vec.tolist())]
    flat.sort(key=lambda x: (x[0], x[1][0], x[1][1] != "mha", x[2]))
    spent, kept = 0.0, []
    for _neg, s, p in flat:
        c = costs[s[1]]
        if spent + c > budget * (1 + 1e-12) + 1e-9:
            break
        spent += c
        if s == target:
            kept.append(p)
    return sorted(kept)


def tune_weights(gram: torch.Tensor, cross: torch.Tensor, kept_dims: list[int]) -> torch.Tensor | None:
    """KPWT: ``argmin_W ||F_kept W - B||^2`` (the new output projection columns, transposed: (K, hidden)) from
    the normal equations; None where the solve fails or is not finite (the original weights stay)."""
    if not kept_dims:
        return None
    idx = torch.tensor(kept_dims)
    try:
        sol = solve_normal(gram[idx][:, idx], cross[idx])
    except RuntimeError:
        return None
    return sol if bool(torch.isfinite(sol).all()) else None


def _err(gram: torch.Tensor, cross: torch.Tensor, bnorm: float, idx: list[int], w: torch.Tensor) -> float:
    """||F_idx W - B||^2 from the accumulated statistics (W: (K, hidden))."""
    if not idx:
        return bnorm
    i = torch.tensor(idx)
    return float((w * (gram[i][:, i] @ w)).sum() - 2 * (w * cross[i]).sum() + bnorm)


@register("kprune")
def kprune(model: nn.Module, tokenizer, task: Task, splits_tokenized: dict, cfg: dict[str, Any]):
    """Park et al. 2024: per-sub-layer knowledge measurement, knowledge-preserving mask search and weight tuning."""
    import copy

    t0 = time.perf_counter()
    a = parse_args("kprune", ARGS, cfg)
    target = constraint(model, a, name="kprune")  # before any work: a bad decisions file fails here
    ds = splits_tokenized[a["split"]]
    if len(ds) == 0:
        raise ConfigError(f"kprune: the {a['split']} split is empty; nothing to measure knowledge on.")
    progress, seed = a["progress"], a["seed"]

    def say(msg: str) -> None:
        if progress:
            print(f"kprune: {msg} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    units = Units.of(model)
    if units.n_heads() + units.n_neurons() == 0:
        raise ConfigError("kprune: the model has no heads or FFN neurons left to prune.")
    mean_len_all = sum(len(x) for x in ds["input_ids"]) / len(ds)
    n_rows = min(len(ds), max(1, math.ceil(a["num_tokens"] / mean_len_all)))
    sample = length_sorted_sample(ds, n_rows, seed)
    device = next(model.parameters()).device
    batches = [model_inputs(b, device) for b in make_loader(sample, tokenizer, a["batch_size"], shuffle=False)]
    n_tok = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    seq_len = n_tok / len(sample)
    teacher = copy.deepcopy(model)
    with frozen(teacher), torch.no_grad():
        teacher_logits = [output_logits(teacher(**b), b).detach() for b in batches]

    by, c_h, c_n, budget = budget_of(model, target, units, seq_len, name="kprune")
    costs = {"mha": c_h, "ffn": c_n}
    params_before = elements.count_encoder_params(model)
    flops_before = flops_at(model, seq_len)
    fam = families.of(model)
    hsz = fam.head_size(model.config)
    left = budget
    log: list[dict[str, Any]] = []
    timing = {"measure_s": 0.0, "tune_s": 0.0}
    for tgt in sublayers(model):
        li, kind = tgt
        t = time.perf_counter()
        k = measure_knowledge(model, teacher, batches, teacher_logits, task, tgt, a["temperature"])
        scores = {s: (a["lam_pred"] * k["pred"][s] + a["lam_rep"] * k["rep"][s]) / costs[s[1]]
                  * (a["mu"] if s[1] == "mha" else 1.0) for s in k["pred"]}
        kept = select(scores, costs, left, tgt)
        timing["measure_s"] += time.perf_counter() - t
        t = time.perf_counter()
        ids = (Units.of(model).heads if kind == "mha" else Units.of(model).neurons)[li]
        dims = [d for p in kept for d in range(p * hsz, (p + 1) * hsz)] if kind == "mha" else kept
        w_old = k["w_target"][:, dims].T
        w_new = tune_weights(k["gram"], k["cross"], dims) if a["tune"] else None
        entry = {"layer": li, "block": kind, "units_before": len(ids), "kept": len(kept),
                 "knowledge_pred": float(k["pred"][tgt].sum()), "knowledge_rep": float(k["rep"][tgt].sum()),
                 "rel_err_before": _err(k["gram"], k["cross"], k["bnorm"], dims, w_old) / k["bnorm"] if k["bnorm"] else 0.0,
                 "tuned": w_new is not None}
        entry["rel_err_after"] = (_err(k["gram"], k["cross"], k["bnorm"], dims, w_new) / k["bnorm"]
                                  if w_new is not None and k["bnorm"] else entry["rel_err_before"])
        out = fam.linear(fam.layers(model)[li], "attn_out" if kind == "mha" else "ffn_out")
        if w_new is not None:
            with torch.no_grad():
                out.weight[:, torch.tensor(dims)] = w_new.T.to(out.weight.dtype).to(out.weight.device)
        gone = [ids[p] for p in range(len(ids)) if p not in set(kept)]
        if gone:
            (elements.remove_heads if kind == "mha" else elements.remove_neurons)(model, li, gone)
        left -= len(kept) * costs[kind]
        timing["tune_s"] += time.perf_counter() - t
        log.append(entry)
        say(f"L{li} {kind}: kept {len(kept)} of {len(ids)}")
    del teacher
    after = Units.of(model)
    arch = elements.architecture(model)
    flops_after = flops_at(model, seq_len)
    info: dict[str, Any] = {
        "paper": PAPER,
        "importance": "per sub-layer, bottom-up: (lam_pred * K_pred + lam_rep * K_rep) / cost (heads x mu); K_pred = "
                      "1/2 mean over rows of (dD/dm)^2, D = T^2 KL(teacher || student); K_rep = per-token squared "
                      "contribution to the sub-layer output",
        "split": a["split"],
        "n_rows": len(sample),
        "n_tokens": n_tok,
        "seq_len": seq_len,
        "target": target,
        "cost_by": by,
        "cost_head": c_h,
        "cost_neuron": c_n,
        "budget": budget,
        "kept_cost": after.n_heads() * c_h + after.n_neurons() * c_n,
        "lam_pred": a["lam_pred"], "lam_rep": a["lam_rep"], "mu": a["mu"], "temperature": a["temperature"],
        "tune": a["tune"],
        "sublayers": log,
        **structure_record(units, after, arch),
        "params_encoder_before": params_before,
        "params_encoder_after": elements.count_encoder_params(model),
        "flops_per_seq_before": flops_before,
        "flops_per_seq_after": flops_after,
        "flops_frac_after": flops_after / flops_before if flops_before else None,
        "retrained": False,
        "timing": timing,
        "wall_s": time.perf_counter() - t0,
    }
    return model, info


__all__ = ["kprune", "ARGS", "sublayers", "distill_loss", "measure_knowledge", "select",
           "tune_weights"]
