"""Shared fixtures: the real data folder, tiny random BERTs, a scratch results tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite must never need the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real GLUE folder: $AXFORMER_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("AXFORMER_DATA")
    if env:
        p = Path(env)
        assert p.is_dir(), f"AXFORMER_DATA={env} does not exist"
        return p
    p = REPO.parent / "shared" / "data"
    if not p.is_dir():
        pytest.skip("real GLUE data not found: set AXFORMER_DATA (CI uses ../shared/data)")
    return p


@pytest.fixture(scope="session")
def tokenizer():
    from axformer.models import embedded_model_dir
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where torch sees a GPU; elsewhere they are skipped with the reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
