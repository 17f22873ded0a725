"""Tiny random models shared by the unit tests: seeded, in eval mode, sized per test file.

Not a test module (pytest collects only ``test_*.py``); the test files import it from their own folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from axformer.encoders import models
from axformer.training import batches


def tiny_bert_config(**kw) -> BertConfig:
    """A 3-layer BERT config (hidden 32, 4 heads, FFN 48, 60 words, 3 labels); ``kw`` overrides any field."""
    base = dict(vocab_size=60, hidden_size=32, num_attention_heads=4, num_hidden_layers=3, intermediate_size=48,
                max_position_embeddings=32, num_labels=3)
    base.update(kw)
    return BertConfig(**base)


def tiny_bert(seed: int = 0, cls: type = BertForSequenceClassification, **kw) -> torch.nn.Module:
    """A random ``cls`` on ``tiny_bert_config(**kw)``, initialised under ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return cls(tiny_bert_config(**kw)).eval()


def tiny_pretrained(task, seed: int = 0) -> torch.nn.Module:
    """The suite's own tiny random model (models.TINY) with ``task``'s head, as the CLI would load it."""
    model, _tok = models.load_pretrained(models.TINY, task, seed=seed)
    return model


def same_splits(ds) -> dict:
    """One dataset as train, search and dev: the unit tests check mechanics, not generalisation."""
    return {"train": ds, "search": ds, "dev": ds}


def saved_and_reloaded(model: torch.nn.Module, tokenizer, folder: Path) -> torch.nn.Module:
    """``model`` saved with ``models.save_checkpoint`` and loaded back with ``models.load_checkpoint``, the
    writer and loader every step uses."""
    back, _tok = models.load_checkpoint(models.save_checkpoint(model, tokenizer, folder))
    return back


def assert_same_logits(a: torch.nn.Module, b: torch.nn.Module, rows, tokenizer) -> None:
    """``a`` and ``b`` give the same logits on ``rows`` (the suite's one prediction loop)."""
    torch.testing.assert_close(torch.from_numpy(batches.predict_logits(a, rows, tokenizer)[0]),
                               torch.from_numpy(batches.predict_logits(b, rows, tokenizer)[0]))


def tiny_parent_checkpoint(folder: Path, data_dir: Path, task) -> Path:
    """A random tiny ``finetune`` checkpoint for ``task`` carrying the step record a CLI step reads to re-create
    its splits (16 rows each, length 32)."""
    model, tok = models.load_pretrained(models.TINY, task, seed=0)
    split = {"seed": 0, "search_frac": 0.15, "search_max": 16, "train_max": 16, "dev_max": 16, "max_length": 32,
             "data_dir": str(data_dir), "allow_hub": False}
    return models.save_checkpoint(model, tok, folder, extra={"split": split, "task": task.name,
                                                             "model_spec": models.TINY, "variant": "finetune"})
