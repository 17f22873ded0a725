"""The AxFormer accuracy-driven search (arXiv 2010.03688, §3-4): hard-attention selection, then pruning.

Protocol (DESIGN §3), all on the *search split*, weights frozen:

1. Selective sparse hard attention, layers first -> last: enable top-K attention in layer i on top of the
   layers already selected; keep it if the candidate is accepted.
2. Accuracy-driven pruning, layers last -> first: the FFN block of layer i, and if it is only "less
   important", its neuron groups one by one; then the attention block of layer i, else its heads.

A candidate **beats** the best loss when its mean search loss is lower by more than a margin:
``gain = best_loss - loss > margin = max(accept_margin x best_loss, accept_z x SE)``, SE being the standard
error of the per-sample paired difference (candidate vs the current best model on the same samples), so
float noise (e.g. the eager/sdpa rounding of one row) is never accepted. Accept rules (``accept_rule``):

* ``guarded`` (default): beats the best loss AND the search-split task metric is no worse than the best so
  far, so a loss gain is never bought with the task metric;
* ``paper``: beats the best loss AND more than a fraction ``accept_frac`` (N) of search samples have a loss
  no worse than the original fine-tuned model's (the paper's rule, with the margin);
* ``meanloss``: beats the best loss (N ignored; with margin 0 the old default);
* ``metric``: the search-split metric no worse than the best so far and loss < ``less_important`` x best;
* ``official``: the authors' released rule, exactly (amrnag/Specialized-Transformers, run_predictions.py):
  ``loss < best_loss`` with no margin, no z and no tolerance, AND more than ``floor(accept_frac x n)`` search
  samples with a loss ``<=`` the original fine-tuned model's (released: N = int(0.5 x n)); no metric check.
  The loss it compares is the released one: the mean of per-batch mean losses over the search split in its
  given order, ``batch_size`` (128, the released eval batch) rows per batch, so a short last batch weighs as
  much as a full one (:func:`released_mean_loss`).

Rejected candidates with loss < ``less_important`` x best are *less important* (descend into finer elements);
the rest are *important* (kept). With ``latency_aware`` a hard-attention candidate must also not slow the
model down (:mod:`axformer.search.latency_guard`).

Deviations from the authors' code, on purpose: removal is structural (`elements.py`), regression tasks use
the squared error per sample, the acceptance margin, and the accept rule is a config choice because on a
confident fine-tuned model the paper's N = 0.5 accepts almost nothing (DESIGN §3 calibration).

Cost: removing an element of layer i changes nothing below i, so the hidden states entering layer i are
computed once per layer and every candidate runs only layers i..L-1 (plus pooler and head).

Resuming: with a journal (:mod:`axformer.search.journal`) every judged candidate is logged as it is judged, and a
re-run of the same search replays the logged verdicts (same edits, no evaluation) before going on live, so a
search killed by a time limit loses at most one candidate.

Span QA (SQuAD): the head is the token-level ``qa_outputs`` (no pooler); a search sample is a question, its
loss the span loss of its answer window (squad.question_losses) and the metric SQuAD F1 of the answer texts.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from axformer.surgery import elements, families, hard_attention
from axformer.search.journal import SearchJournal, header_for
from axformer.search.prune_config import PruneConfig
from axformer.training.batches import make_loader
from axformer.device import model_device
from axformer.taskdata.losses import concat_logits, output_logits
from axformer.taskdata.taskkinds import kind_of
from axformer.taskdata.tasks import Task
from axformer.utils import ConfigError


# ----------------------------------------------------------------------------------------- cached evaluation
@dataclass
class _Span:
    """Start / end logits shaped like a question-answering model output (for ``losses.output_logits``)."""

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
        elif not families.of(model).has_task_head(model):
            raise ConfigError("the AxFormer search needs a sequence-classification model (its classifier head).")
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
        kind = kind_of(task)
        self._score = kind.scorer(task, ds)  # built once: the search scores this split per candidate
        self._n = kind.n_scored(ds)
        self.cache_layer: int | None = None
        self.cache: list[torch.Tensor] = []
        self.passes = 0

    @property
    def n(self) -> int:
        return self._n

    def _mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        # The mask format depends on the attention implementation (eager / sdpa / hard attention), which the
        # search switches, so it is rebuilt per call exactly as the model's forward does (the family adapter adds
        # what else its layers take, e.g. MPNet's shared relative-position bias).
        return families.of(self.model).layer_context(self.model, hidden, attention_mask)

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
            start = 0
            states = [families.encoder_inputs(self.model, {k: v for k, v in b.items() if k != "labels"})[0]
                      for b in self.batches]
        self.cache = []
        for b, h in zip(self.batches, states):
            mask = self._mask(h, b["attention_mask"])
            for lay in families.layers(self.model)[start:layer]:
                h = families.of(self.model).run_layer(lay, h, mask)
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
            for lay in families.layers(self.model)[layer:]:
                h = families.of(self.model).run_layer(lay, h, mask)
            out.append(self._head(h, b["attention_mask"]))
        return concat_logits(out)

    def _head(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The task head on the last hidden states, as the model's own forward applies it (eval mode)."""
        if self.is_qa:
            lg = self.model.qa_outputs(h).float()
            return output_logits(_Span(lg[..., 0], lg[..., 1]), {"attention_mask": attention_mask})
        return families.of(self.model).head(self.model, h).float()

    def score(self, layer: int | None = None) -> tuple[np.ndarray, float]:
        """Per-sample losses (in search-split order of the sorted batches; QA: per question) and the task metric."""
        losses, metrics = self._score(self.logits(layer), self.labels)
        return losses, metrics[self.task.metric]


# ----------------------------------------------------------------------------------------- the released rule
def released_mean_loss(losses: np.ndarray, batch_size: int) -> float:
    """The search loss as the released code computes it: the mean over batches of each batch's mean loss,
    the split taken in its given order ``batch_size`` rows at a time (a short last batch weighs as much as a
    full one). Equals the plain mean when the split is a multiple of ``batch_size``."""
    x = np.asarray(losses, dtype=np.float64)
    if x.size == 0:
        raise ValueError("released_mean_loss of an empty search split")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    return float(np.mean([x[i:i + batch_size].mean() for i in range(0, x.size, batch_size)]))


def released_accept(loss: float, best_loss: float, losses: np.ndarray, base_losses: np.ndarray,
                    frac: float = 0.5) -> bool:
    """The released acceptance test: ``loss < best_loss`` (strict, no margin) and more than
    ``int(frac x n)`` samples with a loss no greater than the original model's (exact ``<=``, no tolerance)."""
    n_no_worse = int(np.sum(np.asarray(losses) <= np.asarray(base_losses)))
    return bool(loss < best_loss and n_no_worse > int(frac * len(base_losses)))


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
    latency: dict[str, Any] = field(default_factory=dict)  # latency_aware: timing setup, A/A noise, re-checks
    replayed: int = 0  # candidates replayed from the journal of an earlier, killed run (not evaluated here)


class _Search:
    def __init__(self, model, ev: CachedEvaluator, cfg: PruneConfig, lat=None, journal_path=None):
        self.model, self.ev, self.cfg, self.lat = model, ev, cfg, lat
        self.res = SearchResult()
        self.base_losses, self.base_metric = ev.score(None)
        self.journal = (SearchJournal(journal_path, header_for(cfg, ev.n, self.base_losses))
                        if journal_path is not None else None)
        self.best_losses = self.base_losses  # per-sample losses of the current best model (paired margin)
        self.best_loss = self.rule_loss(self.base_losses)
        self.best_metric = self.base_metric
        self.res.original = {"loss": self.best_loss, "metric": self.base_metric}
        self.layer_rise: dict[int, float] = {}  # latest timed latency rise of each hard-attention layer
        self.bar = None

    def rule_loss(self, losses: np.ndarray) -> float:
        """The mean search loss the accept rule compares: the released batch-mean for ``official`` (computed
        in the split's own order, not the evaluator's length-sorted one), the per-sample mean otherwise."""
        if self.cfg.accept_rule != "official":
            return float(np.mean(losses))
        in_split_order = np.empty(len(losses), dtype=np.float64)
        in_split_order[self.ev.order] = losses
        return released_mean_loss(in_split_order, self.cfg.batch_size)

    def margin(self, losses: np.ndarray) -> tuple[float, float, float]:
        """(gain, SE, margin) of ``losses`` against the current best model on the same samples."""
        diff = np.asarray(losses, dtype=np.float64) - np.asarray(self.best_losses, dtype=np.float64)
        gain = -float(diff.mean())
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        return gain, se, max(self.cfg.accept_margin * self.best_loss, self.cfg.accept_z * se)

    def judge(self, name: str, layer: int, kind: str, index: int | None, phase: str,
              latency: dict[str, Any] | None = None) -> tuple[bool, str]:
        """Score the model as it stands now (candidate applied); log and classify the candidate.
        ``latency``: the candidate's timing (latency-aware search); a candidate that slows the model down
        is rejected whatever its loss. A candidate the journal holds is replayed, not evaluated."""
        done = self.journal.take(name, phase) if self.journal is not None else None
        if done is not None:
            return self._replay(done)
        losses, metric = self.ev.score(layer)
        loss = self.rule_loss(losses)
        frac = float(np.mean(losses <= self.base_losses + self.cfg.tolerance))
        gain, se, margin = self.margin(losses)
        beats = gain > margin  # strict: a candidate that changes nothing (gain 0) never beats the best
        if self.cfg.accept_rule == "official":  # as released: no margin, no z, no tolerance, no metric check
            frac = float(np.mean(losses <= self.base_losses))
            gain, margin = self.best_loss - loss, 0.0
            accepted = released_accept(loss, self.best_loss, losses, self.base_losses, self.cfg.accept_frac)
        elif self.cfg.accept_rule == "guarded":
            accepted = beats and metric >= self.best_metric
        elif self.cfg.accept_rule == "paper":
            accepted = beats and frac > self.cfg.accept_frac
        elif self.cfg.accept_rule == "meanloss":
            accepted = beats
        else:  # metric: the search-split task metric must not drop, the loss must not blow up
            accepted = metric >= self.best_metric and loss < self.cfg.less_important * self.best_loss
        if latency is not None:
            accepted = accepted and bool(latency["ok"])
        cls = "harmful" if accepted else ("less_important" if loss < self.cfg.less_important * self.best_loss
                                          else "important")
        cand = {
            "element": name, "phase": phase, "layer": layer, "kind": kind, "index": index, "loss": loss,
            "frac_no_worse": frac, "metric": metric, "best_loss_before": self.best_loss,
            "best_metric_before": self.best_metric, "gain": gain, "se": se, "margin": margin, "class": cls,
            "accepted": accepted,
        }
        if latency is not None:
            cand["latency"] = latency
        if self.journal is not None:
            self.journal.append(cand, losses if accepted else None)
        return self._record(cand, losses if accepted else None)

    def _record(self, cand: dict[str, Any], best_losses: np.ndarray | None) -> tuple[bool, str]:
        """Log a judged candidate; an accepted one (``best_losses`` given) becomes the best model."""
        self.res.candidates.append(cand)
        if cand["accepted"]:
            self.best_loss, self.best_metric, self.best_losses = cand["loss"], cand["metric"], best_losses
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(best_loss=f"{self.best_loss:.4f}", removed=len(self.res.removed))
        return cand["accepted"], cand["class"]

    def _replay(self, entry: dict[str, Any]) -> tuple[bool, str]:
        """A journaled verdict, as it was judged: the caller applies or undoes the edit as for a live one."""
        self.res.replayed += 1
        cand = entry["cand"]
        return self._record(cand, np.asarray(entry["losses"], dtype=np.float64) if cand["accepted"] else None)

    # -- phase 1: hard attention, first -> last layer
    def hard_attention(self) -> None:
        layers = families.layers(self.ev.model)
        for i in range(len(layers)):
            if families.of(self.model).attn_skipped(layers[i]):
                continue  # attention block already skipped
            chosen = self.res.hard_attention_layers
            self.ev.prepare(i, advance=True)  # layers < i are decided: move the cache forward cheaply
            done = self.journal.peek() if self.journal is not None else None
            timed = self.lat is not None and done is None  # a replayed candidate keeps its journaled timing
            current = copy.deepcopy(self.model) if timed else None  # timed against the candidate
            hard_attention.enable(self.model, chosen + [i], self.cfg.topk, self.cfg.topk_form)
            latency = self.lat.compare(current, self.model) if timed else (
                done["cand"].get("latency") if done is not None and self.lat is not None else None)
            del current
            if latency is not None and latency.get("timed"):
                self.layer_rise[i] = latency["rise"]
            accepted, _ = self.judge(f"L{i}.hardattn", i, "hardattn", None, "hard_attention", latency)
            if accepted:
                chosen.append(i)
            elif chosen:
                hard_attention.enable(self.model, chosen, self.cfg.topk, self.cfg.topk_form)
            else:
                hard_attention.disable(self.model)

    # -- latency-aware: after pruning, keep a hard-attention layer only while it still pays
    def recheck_latency(self) -> None:
        checks = self.res.latency.setdefault("recheck", [])
        for i in list(self.res.hard_attention_layers):
            without = copy.deepcopy(self.model)
            hard_attention.disable(without, [i])
            entry = {"layer": i, **self.lat.compare(without, self.model)}  # rise of "with" over "without"
            del without
            entry["dropped"] = not entry["ok"]
            if entry.get("timed"):
                self.layer_rise[i] = entry["rise"]
            if entry["dropped"]:
                self.res.hard_attention_layers.remove(i)
                hard_attention.disable(self.model, [i])
                losses, metric = self.ev.score(None)
                entry.update({"loss_after": float(losses.mean()), "metric_after": metric})
            checks.append(entry)

    # -- latency-aware: the kept hard-attention layers together, against none of them
    def recheck_joint(self) -> None:
        """Each kept layer passed on its own (rise within the A/A noise), but rises within the noise add up:
        time the model with every kept layer against the model with none, and while that rise exceeds the
        noise drop the layer whose own timing rose most (ties: the deepest), re-scoring the search split."""
        checks = self.res.latency.setdefault("joint", [])
        kept = self.res.hard_attention_layers
        while len(kept) >= 2:
            without = copy.deepcopy(self.model)
            hard_attention.disable(without)
            entry = {"layers": list(kept), **self.lat.compare(without, self.model)}  # rise of all over none
            del without
            checks.append(entry)
            if entry["ok"]:
                return
            drop = max(kept, key=lambda i: (self.layer_rise.get(i, 0.0), i))
            kept.remove(drop)
            hard_attention.disable(self.model, [drop])
            losses, metric = self.ev.score(None)
            entry.update({"dropped": drop, "loss_after": float(losses.mean()), "metric_after": metric})

    # -- phase 2: pruning, last -> first layer
    def _try_remove(self, el: elements.Element, phase: str) -> tuple[bool, str]:
        layers = families.layers(self.ev.model)
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
        n_layers = len(families.layers(self.ev.model))
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
                    hard_attention.enable(self.model, self.res.hard_attention_layers, self.cfg.topk,
                                          self.cfg.topk_form)
                else:
                    hard_attention.disable(self.model)


def search(model: nn.Module, search_ds, tokenizer, task: Task, cfg: PruneConfig,
           timing_texts: tuple[list[str], list[str] | None] | None = None, journal=None) -> SearchResult:
    """Run the AxFormer search in place on ``model`` (frozen weights); return the decision log.

    ``timing_texts`` (texts_a, texts_b or None): the sentences of the latency timing batch, needed when
    ``cfg.latency_aware`` (the CLI passes search-split rows, never dev rows: decisions use the search split).
    ``journal``: a file path to log each judged candidate to and to resume from (None: no journal).
    """
    from tqdm.auto import tqdm

    cfg.validate()
    lat = None
    if cfg.latency_aware and cfg.mode != "prune":
        if timing_texts is None:
            raise ConfigError("axformer.latency_aware needs timing texts (search-split sentences) for the timing batch.")
        from axformer.search.latency_guard import LatencyGuard

        lat = LatencyGuard.from_texts(tokenizer, timing_texts[0], timing_texts[1], cfg.lat_batch_size,
                                      cfg.lat_seq_len, cfg.topk, device=model_device(model), warmup=cfg.lat_warmup,
                                      min_iters=cfg.lat_min_iters, min_seconds=cfg.lat_seconds)
    t0 = time.perf_counter()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    elements.architecture(model)  # initialise the edit record
    ev = CachedEvaluator(model, search_ds, tokenizer, task, cfg.batch_size)
    s = _Search(model, ev, cfg, lat, journal)
    n_layers = len(families.layers(ev.model))
    upper = (n_layers if cfg.mode != "prune" else 0) + (
        0 if cfg.mode == "hardattn" else n_layers * (2 + (cfg.n_groups + model.config.num_attention_heads
                                                          if cfg.granularity == "fine" else 0)))
    s.bar = tqdm(total=upper, desc=f"axformer search ({task.name})", disable=not cfg.progress, mininterval=2.0)
    if cfg.mode in ("full", "hardattn"):
        s.hard_attention()
    if cfg.mode in ("full", "prune"):
        s.prune()
    if lat is not None:
        if cfg.mode == "full":
            s.recheck_latency()
        s.recheck_joint()
        s.res.latency.update(lat.describe())
    s.bar.close()
    losses, metric = ev.score(None)
    s.res.final = {"loss": s.rule_loss(losses), "metric": metric}
    s.res.passes = ev.passes
    s.res.wall_s = time.perf_counter() - t0
    return s.res


def _acceptance_record(cfg: PruneConfig) -> dict[str, Any]:
    if cfg.accept_rule == "official":  # margin, z and tolerance are not used: record what the rule is
        return {"rule": "official", "accept_frac": cfg.accept_frac, "margin": "none (loss < best_loss)",
                "no_worse": f"count(loss_i <= original_loss_i) > int({cfg.accept_frac} * n)",
                "loss": f"released mean: mean of per-batch means, batches of {cfg.batch_size} in split order"}
    return {"rule": cfg.accept_rule, "accept_margin": cfg.accept_margin, "accept_z": cfg.accept_z,
            # per candidate: gain = best loss - loss, se, margin = max(accept_margin x best loss,
            # accept_z x se); a loss-based rule needs gain > margin
            "margin": "max(accept_margin * best_loss, accept_z * se)"}


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
        "n_layers": len(families.of(model).layers(model)),
        "n_heads": model.config.num_attention_heads,
        "n_groups": cfg.n_groups,
        "original": res.original,
        "final": res.final,
        "acceptance": _acceptance_record(cfg),
        "latency": res.latency or None,
        "hard_attention": {
            "k": k, "topk_form": cfg.topk_form, "layers_selected": res.hard_attention_layers,
            "k_effective_mean": float(np.mean(k_eff)) if k_eff else None,
            "search_len_mean": float(np.mean(lengths)) if lengths else None,
            # where K >= the row's length, top-K keeps every key: hard attention is a no-op for that row
            "frac_rows_noop": n_cover / len(lengths) if lengths else None,
        },
        "removed": res.removed,
        "passes": res.passes,
        "wall_s": res.wall_s,
        **({"replayed": res.replayed} if res.replayed else {}),  # resumed: wall_s and passes are the last run's
        "candidates": res.candidates,
        "arch": elements.architecture(model),
    }
