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

from axformer.surgery import elements, families, hard_attention
from axformer.training import train
from axformer.training import train_config
from axformer.taskdata.tasks import Task
from axformer.utils import ConfigError
from baselines import register
from baselines.args import LAYERDROP_ARGS, ArgSpec, parse_args
from baselines.matching import resolve_target

# the method's cfg keys: declared in baselines/args.py, which the workflow's pre-run check reads without torch
ARGS: dict[str, ArgSpec] = LAYERDROP_ARGS

_LAYER_KEY = re.compile(r"(?:^|\.)(?:encoder|transformer)\.layer\.(\d+)\.")  # DistilBERT: transformer


def drop_top_layers(model: nn.Module, k: int) -> nn.Module:
    """A new model equal to ``model`` without its top ``k`` encoder layers (weights copied, config trimmed)."""
    layers = families.of(model).layers(model)
    n = len(layers)
    # the declared rule of `k`, with this encoder's bound: at least one layer stays
    k = ArgSpec(int, 0, n - 1, required=True, note=f"The encoder has {n} layers; at least one stays.").parse(
        "layerdrop", "k", k)
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


@register("layerdrop")
def layerdrop(model: nn.Module, tokenizer, task: Task, splits_tokenized: dict, cfg: dict[str, Any]):
    """Sajjad et al.: drop the top k layers, fine-tune the rest on train'."""
    t0 = time.perf_counter()
    cfg = parse_args("layerdrop", ARGS, cfg)
    layers = families.of(model).layers(model)
    n = len(layers)
    if cfg.get("match_by") == "heads":
        raise ConfigError("layerdrop removes whole layers: it matches AxFormer by parameters (match_by=params).")
    target = resolve_target(model, cfg, default_by="params", method="layerdrop")
    per_layer = [elements.count_params(layer) for layer in layers]
    if cfg.get("k") is not None:
        if target is not None:
            raise ConfigError("layerdrop: give either k or a match target (match / match_params / target_params).")
        k = cfg["k"]
    elif target is not None:
        k = next((k for k in range(n) if sum(per_layer[: n - k]) <= target["params_encoder"]), None)
        if k is None:
            raise ConfigError(f"layerdrop: no k < {n} brings the encoder to <= {target['params_encoder']} parameters "
                              f"(one layer has {per_layer[0]}); the target is smaller than a one-layer encoder.")
    else:
        raise ConfigError("layerdrop needs an amount: k (--k N), match (--match DECISIONS.json) or target_params.")

    params_before = elements.count_encoder_params(model)
    small = drop_top_layers(model, k)
    epochs = cfg["epochs"]
    log = None
    if epochs > 0:
        tcfg = train_config.TrainConfig(epochs=epochs, lr=cfg["lr"], batch_size=cfg["batch_size"], seed=cfg["seed"],
                                 progress=cfg["progress"])
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
