"""A tokenized split through a model: dynamically padded batches, model inputs, logits in row order.

Shared by training (train.py), distillation, the AxFormer search (prune.py) and the peer methods
(baselines/), below all of them: none imports another step to batch a split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from axformer.taskdata.losses import concat_logits, output_logits

BATCH_COLUMNS = ("input_ids", "token_type_ids", "attention_mask", "labels")


def make_loader(ds, tokenizer, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Dynamic padding: each batch is padded to its own longest row, not to max_length.

    Only model inputs and labels are batched; other columns (a QA window's offsets, context, answers) stay in
    the dataset for post-processing.
    """
    from transformers import DataCollatorWithPadding

    cols = getattr(ds, "column_names", None)
    if cols is not None and set(cols) - set(BATCH_COLUMNS):
        ds = ds.select_columns([c for c in BATCH_COLUMNS if c in cols])
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=gen, num_workers=0)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch without its labels, on ``device``: what ``model(**inputs)`` takes."""
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, ds, tokenizer, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over ``ds`` in order (eval mode, no grad)."""
    model.eval()
    device = next(model.parameters()).device
    outs, labs = [], []
    for batch in make_loader(ds, tokenizer, batch_size, shuffle=False):
        inputs = model_inputs(batch, device)
        outs.append(output_logits(model(**inputs), inputs).float().cpu())
        labs.append(batch["labels"])
    return concat_logits(outs).numpy(), torch.cat(labs).numpy()
