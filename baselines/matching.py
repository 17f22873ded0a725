"""Equal-size comparisons: how much did AxFormer remove, read from its decisions.json.

Config keys understood by :func:`resolve_target` (all optional):

* ``match``: path to an AxFormer ``decisions.json`` (written by ``axformer approximate``).
* ``match_by``: ``"heads"`` — remove as many heads as AxFormer removed in total, a removed attention block
  counting as all its heads; ``"params"`` — shrink until the encoder has no more parameters than AxFormer's.
* ``match_params``: shorthand for ``match_by="params"``: an int (the target encoder parameter count), a path
  to a decisions.json, or ``true`` (use ``match``).
* ``target_params``: an explicit target encoder parameter count (implies ``match_by="params"``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from axformer.surgery import elements
from axformer.utils import ConfigError
from baselines.args import MATCH_ARGS

MATCH_BY = ("heads", "params")
PARAM_COUNT = MATCH_ARGS["target_params"]  # the declared rule of a parameter count (baselines/args.py)


def load_decisions(path: str | Path) -> dict[str, Any]:
    """A decisions.json as a dict; a missing or corrupt file is a ConfigError naming it."""
    p = Path(path)
    try:
        dec = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"decisions file {p} does not exist: run `axformer approximate` first.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"decisions file {p} is not valid JSON ({exc}); re-run `axformer approximate`.") from None
    if not isinstance(dec, dict) or ("arch" not in dec and "removed" not in dec):
        raise ConfigError(f"{p} has neither 'arch' nor 'removed': is it a decisions.json of `axformer approximate`?")
    return dec


def removed_heads(dec: dict[str, Any], n_heads: int) -> int:
    """Heads AxFormer removed in total; a removed attention block counts as all ``n_heads`` of its heads."""
    arch = dec.get("arch")
    if isinstance(arch, dict) and isinstance(arch.get("layers"), list):
        return sum(n_heads - len(rec.get("heads", [])) for rec in arch["layers"])
    per_layer: dict[int, set[int] | None] = {}
    for name in dec.get("removed", []):
        try:
            el = elements.Element.from_name(name)
        except ValueError as exc:
            raise ConfigError(f"decisions.json: {exc}") from None
        if el.kind == "attn":
            per_layer[el.layer] = None  # all heads
        elif el.kind == "head" and per_layer.get(el.layer, set()) is not None:
            per_layer.setdefault(el.layer, set()).add(el.index)
    return sum(n_heads if s is None else len(s) for s in per_layer.values())


def shell_of_arch(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """``model``'s ORIGINAL architecture cut down to ``arch``, built on the meta device (no memory, no weights):
    what sizes and FLOPs of a matched architecture are counted on."""
    cfg = copy.deepcopy(model.config)
    ax = dict(getattr(cfg, "axformer", None) or {})
    ax.pop("arch", None)
    ax.pop("hard_attention", None)
    cfg.axformer = ax
    with torch.device("meta"):
        shell = type(model)(cfg)
    try:
        elements.apply_architecture(shell, arch)
    except ValueError as exc:
        raise ConfigError(f"the AxFormer architecture record does not fit this model: {exc}") from None
    return shell


def encoder_params_of_arch(model: nn.Module, arch: dict[str, Any]) -> int:
    """Encoder parameter count of ``model``'s original architecture cut down to ``arch``."""
    return elements.count_encoder_params(shell_of_arch(model, arch))


def resolve_target(model: nn.Module, cfg: dict[str, Any], default_by: str,
                   method: str = "match") -> dict[str, Any] | None:
    """What to match, or None when no matching key is set; ``method`` is the peer named in refusals.

    Returns ``{"by": "heads", "n_heads": N, "source": path}`` or
    ``{"by": "params", "params_encoder": P, "source": path | "target_params"}``.
    """
    match = cfg.get("match")
    by = cfg.get("match_by")
    target = cfg.get("target_params")
    mp = cfg.get("match_params")
    if mp not in (None, False):
        if by not in (None, "params"):
            raise ConfigError(f"{method}: match_params conflicts with match_by={by!r}; give one of them.")
        by = "params"
        if isinstance(mp, str):
            if match not in (None, mp):
                raise ConfigError(f"{method}: match_params={mp!r} and match={match!r} name different decisions files; "
                                  "give one.")
            match = mp
        elif mp is not True:
            if target is not None and (PARAM_COUNT.parse(method, "target_params", target)
                                       != PARAM_COUNT.parse(method, "match_params", mp)):
                raise ConfigError(f"{method}: match_params={mp!r} and target_params={target!r} give different "
                                  "targets; give one.")
            target = mp
    if target is not None:
        if by not in (None, "params"):
            raise ConfigError(f"{method}: target_params is a parameter count; it cannot be matched by {by!r} "
                              "(drop match_by or set match_by=params).")
        return {"by": "params", "params_encoder": PARAM_COUNT.parse(method, "target_params", target),
                "source": "target_params"}
    if match is None:
        if by is not None or mp is True:
            raise ConfigError(f"{method}: match_by / match_params need --match DECISIONS.json (or --target-params N).")
        return None
    by = by or default_by
    if by not in MATCH_BY:
        raise ConfigError(f"{method}: match_by must be one of {list(MATCH_BY)} (got {by!r}).")
    dec = load_decisions(match)
    n_orig = int(model.config.num_attention_heads)
    if by == "heads":
        return {"by": "heads", "n_heads": removed_heads(dec, n_orig), "source": str(match)}
    arch = dec.get("arch")
    if not isinstance(arch, dict):
        raise ConfigError(f"{method}: {match} has no 'arch' record, needed to match by parameters; re-run "
                          "`axformer approximate` or give --target-params N.")
    return {"by": "params", "params_encoder": encoder_params_of_arch(model, arch), "source": str(match)}
