"""Shared fixtures: the real data folder, the embedded MiniLM tokenizer, a tiny word tokenizer, and a
save-and-reload through the one checkpoint loader (models.load_checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite must never need the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def absolute_data_env(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Make a relative $AXFORMER_DATA (the README's `export AXFORMER_DATA=../shared/data`) absolute against the
    directory pytest runs in: tests hand it to Snakemake runs and subprocesses in other directories."""
    env = environ.get("AXFORMER_DATA")
    if env and not Path(env).is_absolute():
        environ["AXFORMER_DATA"] = str(Path(env).resolve())


absolute_data_env()


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
    from axformer.encoders.models import embedded_model_dir
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great", "bad", "a", "film"]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 12-word BERT tokenizer for tiny random models (timing and memory tests: the text hardly matters)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(TINY_WORDS)})


def _word_tokenizer(vocab_size: int):
    """A fast BERT tokenizer with exactly ``vocab_size`` tokens (special tokens, then w5, w6, ...)."""
    import tempfile

    from transformers import BertTokenizerFast

    words = TINY_WORDS[:5] + [f"w{i}" for i in range(5, vocab_size)]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        return BertTokenizerFast(vocab_file=str(vocab))


@pytest.fixture(scope="session")
def fitted(data_dir):
    """(task, model, tokenizer, rows): a tiny BERT fitted on 48 real SST-2 rows, which serve as its search split
    (test only). Shared by the search and journal tests: a test that edits the model edits a deep copy."""
    from axformer.encoders import models
    from axformer.taskdata import data
    from axformer.taskdata.tasks import get_task
    from axformer.training import train, train_config

    task = get_task("sst2")
    model, tok = models.load_pretrained(models.TINY, task, seed=0)
    ds = data.tokenize(data.load_split(task, "train", data_dir).select(range(48)), tok, task, max_length=32)
    train.train(model, ds, tok, task, train_config.TrainConfig(epochs=30, batch_size=16, lr=1e-3, progress=False))
    return task, model, tok, ds


@pytest.fixture
def reload_checkpoint():
    """``reload(model, folder)``: save an (edited) model with a tokenizer matching its vocabulary and load it back
    with ``models.load_checkpoint``, the loader every step uses."""
    from axformer.encoders import models

    def reload(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
        model.save_pretrained(folder)
        _word_tokenizer(model.get_input_embeddings().num_embeddings).save_pretrained(folder)
        back, _tok = models.load_checkpoint(folder)
        return back

    return reload


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where torch sees a GPU; elsewhere they are skipped with the reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
