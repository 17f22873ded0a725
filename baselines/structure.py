"""What the retraining-free structured peers (baselines/fisher.py, baselines/kprune.py) share: the prunable units
of a model, their cost, the constraint a run is held to and the budget it leaves, the data sample, and the record
of what was removed.

* :class:`Units` — the heads and FFN neurons still present, per layer, by ORIGINAL id.
* :func:`unit_costs` — Kwon et al.'s analytic cost of one head / one neuron (FLOPs at a length, or parameters).
* :func:`constraint` — the amount a run is given (``flops_frac`` / ``params_frac`` of the parent's head + FFN
  part, AxFormer's parameters or FLOPs through ``match``, ``target_params``) as one constraint record;
  :func:`budget_of` turns it into a budget on the kept heads + neurons, so both peers are held to the same one.
* the declared ``cfg`` keys of that amount: :data:`baselines.args.BUDGET_ARGS` / ``MATCH_COST_ARGS``.
* :func:`length_sorted_sample`, :func:`frozen`, :func:`flops_at`, :func:`structure_record`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from axformer.surgery import elements
from axformer.measurement.cost import forward_flops
from axformer.utils import ConfigError
from baselines.args import BUDGET_ARGS
from baselines.matching import load_decisions, resolve_target, shell_of_arch



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


def frozen(model: nn.Module):
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


def length_sorted_sample(ds, max_rows: int, seed: int):
    """At most ``max_rows`` rows (seeded), ordered by length so that batches carry little padding."""
    idx = np.arange(len(ds))
    if len(ds) > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=max_rows, replace=False))
    lengths = np.asarray([len(ds[int(i)]["input_ids"]) for i in idx])
    return ds.select(idx[np.argsort(lengths, kind="stable")].tolist())


# ---------------------------------------------------------------------------------------------- costs
def unit_costs(model: nn.Module, by: str, seq_len: float) -> tuple[float, float]:
    """Cost of one head and of one FFN neuron: ``by="flops"`` — forward FLOPs of one sequence of ``seq_len``
    tokens (a multiply-add = 2, as ``cost.forward_flops``): head = Q, K, V, output projection slices
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


def flops_at(model: nn.Module, seq_len: float) -> float:
    """``cost.forward_flops`` at a (possibly fractional) length: it is a quadratic in T, fitted exactly."""
    t0 = math.floor(seq_len)
    f = [forward_flops(model, 1, t) for t in (max(t0, 1), max(t0, 1) + 1, max(t0, 1) + 2)]
    # Lagrange interpolation of the quadratic f(T) through T0, T0+1, T0+2
    u = seq_len - max(t0, 1)
    return f[0] * (u - 1) * (u - 2) / 2 - f[1] * u * (u - 2) + f[2] * u * (u - 1) / 2


def shell_flops(model: nn.Module, arch: dict[str, Any], seq_len: float) -> float:
    """Forward FLOPs (one sequence of ``seq_len``) of ``model``'s original architecture cut to ``arch``."""
    return flops_at(shell_of_arch(model, arch), seq_len)


# ---------------------------------------------------------------------------------------------- constraint, budget
def constraint(model: nn.Module, cfg: dict[str, Any], name: str = "fisher") -> dict[str, Any]:
    """The constraint: ``{"by": "params", "params_encoder": P}``, ``{"by": "flops", "arch": ..., "source"}``
    (AxFormer's FLOPs, evaluated at the sample's length), ``{"by": "flops_frac", "frac": f}`` or
    ``{"by": "params_frac", "frac": f}`` (kept fraction of the parent's head + FFN FLOPs / parameters).
    ``name`` is the method named in errors (fisher and kprune share this)."""
    fracs = [k for k in ("flops_frac", "params_frac") if cfg.get(k) is not None]
    by = cfg.get("match_by")
    given = [k for k in ("match", "target_params", "match_params") if cfg.get(k) not in (None, False)]
    if fracs:
        if len(fracs) > 1:
            raise ConfigError(f"{name}: give either flops_frac or params_frac, not both.")
        if given:
            raise ConfigError(f"{name}: give either {fracs[0]} or a match target ({', '.join(given)}), not both.")
        return {"by": fracs[0], "frac": BUDGET_ARGS[fracs[0]].parse(name, fracs[0], cfg[fracs[0]])}
    if by == "flops":
        if cfg.get("match") is None or cfg.get("target_params") is not None or cfg.get("match_params"):
            raise ConfigError(f"{name}: match_by=flops needs --match DECISIONS.json (and no parameter target).")
        dec = load_decisions(cfg["match"])
        if not isinstance(dec.get("arch"), dict):
            raise ConfigError(f"{cfg['match']} has no 'arch' record, needed to match by FLOPs.")
        return {"by": "flops", "arch": dec["arch"], "source": str(cfg["match"])}
    if by == "heads":
        raise ConfigError(f"{name} prunes heads and FFN neurons: match_by must be 'params' or 'flops' (got 'heads').")
    target = resolve_target(model, cfg, default_by="params", method=name)
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
    fixed = flops_at(model, seq_len) - prunable
    target["flops_per_seq"] = shell_flops(model, target.pop("arch"), seq_len)
    budget = target["flops_per_seq"] - fixed
    if budget < 0:
        raise ConfigError(f"{name}: AxFormer's FLOPs ({target['flops_per_seq']:.4g}) are below what remains "
                          f"with every head and neuron removed ({fixed:.4g}).")
    return by, c_h, c_n, budget


# ---------------------------------------------------------------------------------------------- the record
def structure_record(before: Units, after: Units, arch: dict[str, Any]) -> dict[str, Any]:
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


__all__ = ["Units", "frozen", "length_sorted_sample", "unit_costs", "flops_at",
           "shell_flops", "constraint", "budget_of", "structure_record"]
