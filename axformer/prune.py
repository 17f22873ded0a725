"""The AxFormer accuracy-driven search (arXiv 2010.03688, §3-4): hard-attention selection, then pruning.

Protocol (DESIGN §3), all on the *search split*, weights frozen:

1. Selective sparse hard attention, layers first -> last: enable top-K attention in layer i on top of the
   layers already selected; keep it if the candidate is accepted.
2. Accuracy-driven pruning, layers last -> first: the FFN block of layer i, and if it is only "less
   important", its neuron groups one by one; then the attention block of layer i, else its heads.

A candidate is **accepted** (the element is *harmful*) iff its mean search loss is below the best so far AND
more than a fraction ``accept_frac`` (N) of search samples have a loss no worse than the original
fine-tuned model's. Rejected candidates with loss < ``less_important`` x best are *less important* (descend
into finer elements); the rest are *important* (kept).

Deviations from the authors' code, on purpose: removal is structural (`elements.py`), regression tasks use
the squared error per sample, and the accept rule is a config choice (``paper`` with N, ``meanloss`` = N
ignored, ``metric`` = search-split task metric no worse than the best so far) because on a confident
fine-tuned model the paper's N = 0.5 accepts almost nothing (DESIGN §3 calibration).

Cost: removing an element of layer i changes nothing below i, so the hidden states entering layer i are
computed once per layer and every candidate runs only layers i..L-1 (plus pooler and head).

Span QA (SQuAD): the head is the token-level ``qa_outputs`` (no pooler); a search sample is a question, its
loss the span loss of its answer window (squad.question_losses) and the metric SQuAD F1 of the answer texts.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from axformer import elements, hard_attention
from axformer import metrics as M
from axformer.tasks import Task
from axformer.train import concat_logits, make_loader, output_logits, per_sample_loss
from axformer.utils import ConfigError


@dataclass
class PruneConfig:
    """Search knobs; the defaults are the paper's."""

    accept_rule: Literal["paper", "meanloss", "metric"] = "paper"
    accept_frac: float = 0.5  # N: fraction of search samples that must be no worse (paper §4: 0.5)
    less_important: float = 1.1  # "less important" if loss < 1.1 x best loss (paper §4)
    n_groups: int = 12  # FFN neuron groups per layer (paper: 12)
    topk: int | float = 30  # hard attention K (paper: 30 at length 128); float in (0, 1] = fraction of length
    mode: Literal["full", "prune", "hardattn"] = "full"  # ablations: pruning only / hard attention only
    granularity: Literal["fine", "blocks"] = "fine"  # blocks only, or descend into heads / FFN groups
    batch_size: int = 128
    tolerance: float = 1e-6  # "no worse" allows float noise of this size
    progress: bool = True

    def validate(self) -> None:
        if self.accept_rule not in ("paper", "meanloss", "metric"):
            raise ConfigError(f"axformer.accept_rule must be paper | meanloss | metric (got {self.accept_rule!r}).")
        if not 0.0 <= self.accept_frac < 1.0:
            raise ConfigError(f"axformer.accept_frac must be in [0, 1) (got {self.accept_frac}).")
        if self.less_important < 1.0:
            raise ConfigError(f"axformer.less_important must be >= 1 (got {self.less_important}).")
        if self.mode not in ("full", "prune", "hardattn"):
            raise ConfigError(f"axformer.mode must be full | prune | hardattn (got {self.mode!r}).")
        if self.granularity not in ("fine", "blocks"):
            raise ConfigError(f"axformer.granularity must be fine | blocks (got {self.granularity!r}).")
        if self.n_groups < 1:
            raise ConfigError(f"axformer.groups must be >= 1 (got {self.n_groups}).")
        try:
            hard_attention.validate_k(self.topk)
        except ValueError as exc:
            raise ConfigError(f"axformer.topk: {exc}") from None


# ----------------------------------------------------------------------------------------- cached evaluation
@dataclass
class _Span:
    """Start / end logits shaped like a question-answering model output (for ``train.output_logits``)."""

    start_logits: torch.Tensor
    end_logits: torch.Tensor


class CachedEvaluator:
    """Scores a model on the search split, re-running only layers i..L-1 from cached hidden states."""

    def __init__(self, model: nn.Module, search_ds, tokenizer, task: Task, batch_size: int = 128):
        self.is_qa = task.is_qa
        if self.is_qa:
            if not hasattr(model, "qa_outputs"):
                raise ConfigError(f"task {task.name} needs a question-answering BERT (qa_outputs head); this "
                                  f"checkpoint is a {type(model).__name__}: fine-tune it with --task {task.name}.")
        elif not hasattr(model, "classifier") or getattr(model.base_model, "pooler", None) is None:
            raise ConfigError("the AxFormer search needs a sequence-classification BERT (pooler + classifier).")
        self.model, self.task = model, task
        # Sort by length so each batch carries little padding: every candidate pass is cheaper.
        order = np.argsort([len(x) for x in search_ds["input_ids"]], kind="stable")
        self.order = order
        ds = search_ds.select(order)
        # batches and labels live on the model's device once, not per candidate pass
        self.device = next(model.parameters()).device
        self.batches = [{k: v.to(self.device) for k, v in b.items()}
                        for b in make_loader(ds, tokenizer, batch_size, shuffle=False)]
        self.labels = torch.cat([b["labels"] for b in self.batches])
        self.view = None
        if self.is_qa:  # windows of one question may sit in different batches: regroup them per question
            from axformer import squad

            self.view = squad.QAView.of(ds)
        self.cache_layer: int | None = None
        self.cache: list[torch.Tensor] = []
        self.passes = 0

    @property
    def n(self) -> int:
        return len(self.labels) if self.view is None else len(self.view.questions)

    def _layers(self) -> nn.ModuleList:
        return self.model.base_model.encoder.layer

    def _mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        # The mask format depends on the attention implementation (eager / sdpa / hard attention), which the
        # search switches, so it is rebuilt per call exactly as BertModel.forward does.
        mask, _ = self.model.base_model._create_attention_masks(
            attention_mask=attention_mask, encoder_attention_mask=None, embedding_output=hidden,
            encoder_hidden_states=None, cache=None)
        return mask

    @torch.inference_mode()
    def prepare(self, layer: int, advance: bool = False) -> None:
        """Cache the hidden states entering ``layer`` (valid while layers < ``layer`` stay unchanged).

        ``advance=True`` promises that the layers between the current cache point and ``layer`` are final,
        so the cache moves forward by running only those layers (the hard-attention phase walks first ->
        last and fixes each layer before the next).
        """
        self.model.eval()
        if advance and self.cache_layer is not None and self.cache_layer <= layer:
            start, states = self.cache_layer, self.cache
        else:
            bm = self.model.base_model
            start = 0
            states = [bm.embeddings(input_ids=b["input_ids"], token_type_ids=b.get("token_type_ids"))
                      for b in self.batches]
        self.cache = []
        for b, h in zip(self.batches, states):
            mask = self._mask(h, b["attention_mask"])
            for lay in self._layers()[start:layer]:
                h = lay(h, mask)
            self.cache.append(h)
        self.cache_layer = layer

    @torch.inference_mode()
    def logits(self, layer: int | None = None) -> torch.Tensor:
        """Logits over the search split running layers ``layer``..L-1 from the cache (full pass if None)."""
        if layer is None:
            self.prepare(0)
            layer = 0
        if self.cache_layer != layer:
            self.prepare(layer)
        self.passes += 1
        out = []
        for b, h in zip(self.batches, self.cache):
            mask = self._mask(h, b["attention_mask"])
            for lay in self._layers()[layer:]:
                h = lay(h, mask)
            out.append(self._head(h, b["attention_mask"]))
        return concat_logits(out)

    def _head(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The task head on the last hidden states, as the model's own forward applies it (eval mode)."""
        if self.is_qa:
            lg = self.model.qa_outputs(h).float()
            return output_logits(_Span(lg[..., 0], lg[..., 1]), {"attention_mask": attention_mask})
        pooled = self.model.base_model.pooler(h)
        return self.model.classifier(self.model.dropout(pooled)).float()

    def score(self, layer: int | None = None) -> tuple[np.ndarray, float]:
        """Per-sample losses (in search-split order of the sorted batches; QA: per question) and the task metric."""
        logits = self.logits(layer)
        if self.is_qa:
            from axformer import squad

            losses, _answers, metrics = squad.score(logits.cpu(), self.labels.cpu(), self.view, self.task)
            return losses, metrics[self.task.metric]
        # losses and predictions on the device, one copy to the host per pass
        losses = per_sample_loss(logits, self.labels, self.task.is_regression).cpu().numpy()
        preds = (logits[:, 0] if self.task.is_regression else logits.argmax(-1)).cpu().numpy()
        return losses, M.compute(self.task, preds, self.labels.cpu().numpy())[self.task.metric]


# ----------------------------------------------------------------------------------------- the search
@dataclass
class SearchResult:
    removed: list[str] = field(default_factory=list)
    hard_attention_layers: list[int] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    original: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    passes: int = 0
    wall_s: float = 0.0


class _Search:
    def __init__(self, model, ev: CachedEvaluator, cfg: PruneConfig):
        self.model, self.ev, self.cfg = model, ev, cfg
        self.res = SearchResult()
        self.base_losses, self.base_metric = ev.score(None)
        self.best_loss = float(self.base_losses.mean())
        self.best_metric = self.base_metric
        self.res.original = {"loss": self.best_loss, "metric": self.base_metric}
        self.bar = None

    def judge(self, name: str, layer: int, kind: str, index: int | None, phase: str) -> tuple[bool, str]:
        """Score the model as it stands now (candidate applied); log and classify the candidate."""
        losses, metric = self.ev.score(layer)
        loss = float(losses.mean())
        frac = float(np.mean(losses <= self.base_losses + self.cfg.tolerance))
        if self.cfg.accept_rule == "paper":
            accepted = loss < self.best_loss and frac > self.cfg.accept_frac
        elif self.cfg.accept_rule == "meanloss":
            accepted = loss < self.best_loss
        else:  # metric: the search-split task metric must not drop, the loss must not blow up
            accepted = metric >= self.best_metric and loss < self.cfg.less_important * self.best_loss
        cls = "harmful" if accepted else ("less_important" if loss < self.cfg.less_important * self.best_loss
                                          else "important")
        self.res.candidates.append({
            "element": name, "phase": phase, "layer": layer, "kind": kind, "index": index, "loss": loss,
            "frac_no_worse": frac, "metric": metric, "best_loss_before": self.best_loss, "class": cls,
            "accepted": accepted,
        })
        if accepted:
            self.best_loss, self.best_metric = loss, metric
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(best_loss=f"{self.best_loss:.4f}", removed=len(self.res.removed))
        return accepted, cls

    # -- phase 1: hard attention, first -> last layer
    def hard_attention(self) -> None:
        layers = self.ev._layers()
        for i in range(len(layers)):
            if getattr(layers[i].attention, "self", None) is None:
                continue  # attention block already skipped
            chosen = self.res.hard_attention_layers
            self.ev.prepare(i, advance=True)  # layers < i are decided: move the cache forward cheaply
            hard_attention.enable(self.model, chosen + [i], self.cfg.topk)
            accepted, _ = self.judge(f"L{i}.hardattn", i, "hardattn", None, "hard_attention")
            if accepted:
                chosen.append(i)
            elif chosen:
                hard_attention.enable(self.model, chosen, self.cfg.topk)
            else:
                hard_attention.disable(self.model)

    # -- phase 2: pruning, last -> first layer
    def _try_remove(self, el: elements.Element, phase: str) -> tuple[bool, str]:
        layers = self.ev._layers()
        saved_layer = copy.deepcopy(layers[el.layer])
        saved_record = copy.deepcopy(self.model.config.axformer)
        elements.remove(self.model, el, self.cfg.n_groups)
        accepted, cls = self.judge(el.name, el.layer, el.kind, el.index, phase)
        if accepted:
            self.res.removed.append(el.name)
        else:  # undo: the layer object and the edit record go back exactly as they were
            layers[el.layer] = saved_layer
            self.model.config.axformer = saved_record
        return accepted, cls

    def prune(self) -> None:
        n_layers = len(self.ev._layers())
        for i in reversed(range(n_layers)):
            self.ev.prepare(i)  # layers below i never change from here on
            rec = elements.architecture(self.model)["layers"][i]
            if not rec["ffn_skipped"]:
                ok, cls = self._try_remove(elements.Element(i, "ffn"), "prune")
                if not ok and cls == "less_important" and self.cfg.granularity == "fine":
                    for g in range(self.cfg.n_groups):
                        kept = set(elements.architecture(self.model)["layers"][i]["neurons"])
                        if elements.architecture(self.model)["layers"][i]["ffn_skipped"]:
                            break
                        if any(n in kept for n in elements.ffn_groups(self.model, i, self.cfg.n_groups)[g]):
                            self._try_remove(elements.Element(i, "ffn_group", g), "prune")
            rec = elements.architecture(self.model)["layers"][i]
            if not rec["attn_skipped"]:
                ok, cls = self._try_remove(elements.Element(i, "attn"), "prune")
                if not ok and cls == "less_important" and self.cfg.granularity == "fine":
                    for h in list(elements.architecture(self.model)["layers"][i]["heads"]):
                        if elements.architecture(self.model)["layers"][i]["attn_skipped"]:
                            break
                        self._try_remove(elements.Element(i, "head", h), "prune")
            # a layer whose attention block was skipped cannot keep hard attention
            if i in self.res.hard_attention_layers and elements.architecture(self.model)["layers"][i]["attn_skipped"]:
                self.res.hard_attention_layers.remove(i)
                if self.res.hard_attention_layers:
                    hard_attention.enable(self.model, self.res.hard_attention_layers, self.cfg.topk)
                else:
                    hard_attention.disable(self.model)


def search(model: nn.Module, search_ds, tokenizer, task: Task, cfg: PruneConfig) -> SearchResult:
    """Run the AxFormer search in place on ``model`` (frozen weights); return the decision log."""
    from tqdm.auto import tqdm

    cfg.validate()
    t0 = time.perf_counter()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    elements.architecture(model)  # initialise the edit record
    ev = CachedEvaluator(model, search_ds, tokenizer, task, cfg.batch_size)
    s = _Search(model, ev, cfg)
    n_layers = len(ev._layers())
    upper = (n_layers if cfg.mode != "prune" else 0) + (
        0 if cfg.mode == "hardattn" else n_layers * (2 + (cfg.n_groups + model.config.num_attention_heads
                                                          if cfg.granularity == "fine" else 0)))
    s.bar = tqdm(total=upper, desc=f"axformer search ({task.name})", disable=not cfg.progress, mininterval=2.0)
    if cfg.mode in ("full", "hardattn"):
        s.hard_attention()
    if cfg.mode in ("full", "prune"):
        s.prune()
    s.bar.close()
    losses, metric = ev.score(None)
    s.res.final = {"loss": float(losses.mean()), "metric": metric}
    s.res.passes = ev.passes
    s.res.wall_s = time.perf_counter() - t0
    return s.res


def decisions_record(res: SearchResult, model: nn.Module, cfg: PruneConfig, task: Task, n_search: int,
                     lengths: list[int]) -> dict[str, Any]:
    """decisions.json: every candidate, what was removed, and the hard-attention K actually used."""
    k = cfg.topk
    k_eff = hard_attention.effective_k(k, lengths) if lengths else []
    k_eff = [k_eff] if isinstance(k_eff, int) else k_eff
    n_cover = int(np.sum(np.asarray(k_eff) >= np.asarray(lengths))) if lengths else 0
    return {
        "task": task.name,
        "config": asdict(cfg),
        "n_search": n_search,
        "n_layers": len(model.base_model.encoder.layer),
        "n_heads": model.config.num_attention_heads,
        "n_groups": cfg.n_groups,
        "original": res.original,
        "final": res.final,
        "hard_attention": {
            "k": k, "layers_selected": res.hard_attention_layers,
            "k_effective_mean": float(np.mean(k_eff)) if k_eff else None,
            "search_len_mean": float(np.mean(lengths)) if lengths else None,
            # where K >= the row's length, top-K keeps every key: hard attention is a no-op for that row
            "frac_rows_noop": n_cover / len(lengths) if lengths else None,
        },
        "removed": res.removed,
        "passes": res.passes,
        "wall_s": res.wall_s,
        "candidates": res.candidates,
        "arch": elements.architecture(model),
    }
