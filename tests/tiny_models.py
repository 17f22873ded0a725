"""Tiny random models shared by the unit tests: seeded, in eval mode, sized per test file.

Not a test module (pytest collects only ``test_*.py``); the test files import it from their own folder.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from axformer.encoders import models


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
