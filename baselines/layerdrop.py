"""Top-layer dropping (Sajjad, Dalvi, Durrani & Nakov, "On the Effect of Dropping Layers of Pre-trained Transformer
Models" / "Poor Man's BERT", arXiv 2004.03844): remove the top ``k`` encoder layers, then fine-tune on train'.

The smaller model is a new model whose config has ``num_hidden_layers = L - k`` (the AxFormer edit record and any
hard-attention record are trimmed to the kept layers), built from that config and loaded strictly with the kept
layers' weights, the embeddings, the pooler and the task head — so ``models.save_checkpoint`` /
``models.load_checkpoint`` round-trip it.

Deviation: Sajjad et al. drop layers from the *pre-trained* model and then fine-tune; here the parent is the
fine-tuned baseline (the step's input in the DAG), and the truncated model is fine-tuned again on train' — the
same data, and the same starting point AxFormer gets, so the comparison is at equal information.

Config (``cfg``): ``k`` (layers to drop) | ``match`` (decisions.json: the smallest k whose encoder is no larger
than AxFormer's) | ``target_params`` / ``match_params``; ``epochs`` (3; 0 = no re-training), ``lr`` (5e-5),
``batch_size`` (32), ``seed``, ``progress``.
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

from torch import nn

from axformer import elements, families, hard_attention, train
from axformer.tasks import Task
from axformer.utils import ConfigError
from baselines import register
from baselines._match import resolve_target

KNOWN_KEYS = {"k", "match", "match_by", "match_params", "target_params", "epochs", "lr", "batch_size", "seed",
              "progress"}
_LAYER_KEY = re.compile(r"(?:^|\.)(?:encoder|transformer)\.layer\.(\d+)\.")  # DistilBERT: transformer


def drop_top_layers(model: nn.Module, k: int) -> nn.Module:
    """A new model equal to ``model`` without its top ``k`` encoder layers (weights copied, config trimmed)."""
    layers = families.of(model).layers(model)
    n = len(layers)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise ConfigError(f"layerdrop: k must be an int in [0, {n - 1}] for a {n}-layer encoder (got {k!r}).")
    keep = n - k
    arch = elements.architecture(model)
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = keep
    ax = copy.deepcopy(getattr(cfg, "axformer", None) or {})
    ax["arch"] = {"layers": arch["layers"][:keep]}
    ha = ax.get("hard_attention")
    if isinstance(ha, dict):
        ha["layers"] = [i for i in ha.get("layers", []) if i < keep]
        if not ha["layers"]:
            del ax["hard_attention"]
    cfg.axformer = ax
    param = next(model.parameters())
    small = type(model)(cfg).to(device=param.device, dtype=param.dtype)
    elements.apply_architecture(small, ax["arch"])
    hard_attention.apply_from_config(small)
    state = {}
    for key, value in model.state_dict().items():
        m = _LAYER_KEY.search(key)
        if m is None or int(m.group(1)) < keep:
            state[key] = value
    small.load_state_dict(state, strict=True)
    small.train(model.training)
    return small


def _number(cfg: dict[str, Any], key: str, default: float, positive: bool) -> float:
    v = cfg.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (positive and v == 0):
        raise ConfigError(f"layerdrop: {key} must be a number {'> 0' if positive else '>= 0'} (got {v!r}).")
    return v


@register("layerdrop")
def layerdrop(model: nn.Module, tokenizer, task: Task, splits_tokenized: dict, cfg: dict[str, Any]):
    """Sajjad et al.: drop the top k layers, fine-tune the rest on train'."""
    t0 = time.perf_counter()
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"layerdrop: unknown config keys {unknown}; known: {sorted(KNOWN_KEYS)}.")
    layers = families.of(model).layers(model)
    n = len(layers)
    if cfg.get("match_by") == "heads":
        raise ConfigError("layerdrop removes whole layers: it matches AxFormer by parameters (match_by=params).")
    target = resolve_target(model, cfg, default_by="params")
    per_layer = [elements.count_params(layer) for layer in layers]
    if cfg.get("k") is not None:
        if target is not None:
            raise ConfigError("layerdrop: give either k or a match target (match / match_params / target_params).")
        k = cfg["k"]
        if isinstance(k, float) and k.is_integer():
            k = int(k)
    elif target is not None:
        k = next((k for k in range(n) if sum(per_layer[: n - k]) <= target["params_encoder"]), None)
        if k is None:
            raise ConfigError(f"layerdrop: no k < {n} brings the encoder to <= {target['params_encoder']} parameters "
                              f"(one layer has {per_layer[0]}); the target is smaller than a one-layer encoder.")
    else:
        raise ConfigError("layerdrop needs an amount: k (--k N), match (--match DECISIONS.json) or target_params.")

    params_before = elements.count_encoder_params(model)
    small = drop_top_layers(model, k)
    epochs = _number(cfg, "epochs", 3.0, positive=False)
    log = None
    if epochs > 0:
        tcfg = train.TrainConfig(epochs=epochs, lr=_number(cfg, "lr", 5e-5, positive=True),
                                 batch_size=int(_number(cfg, "batch_size", 32, positive=True)),
                                 seed=int(cfg.get("seed", 0) or 0), progress=bool(cfg.get("progress", True)))
        log = train.train(small, splits_tokenized["train"], tokenizer, task, tcfg)
    info: dict[str, Any] = {
        "paper": "Sajjad et al. 2020/2023, On the Effect of Dropping Layers of Pre-trained Transformer Models "
                 "(arXiv 2004.03844), top-layer dropping",
        "k": k,
        "layers_before": n,
        "layers_after": n - k,
        "dropped_layers": list(range(n - k, n)),
        "target": target,
        "params_encoder_before": params_before,
        "params_encoder_after": elements.count_encoder_params(small),
        "retrained": log is not None,
        "wall_s": time.perf_counter() - t0,
    }
    if log is not None:
        curve = log["loss_curve"]
        info["train"] = {k_: v for k_, v in log.items() if k_ != "loss_curve"}
        info["train"]["loss_first"] = curve[0]
        info["train"]["loss_last20_mean"] = sum(curve[-20:]) / len(curve[-20:])
    return small, info


__all__ = ["layerdrop", "drop_top_layers"]
