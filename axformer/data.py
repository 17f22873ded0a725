"""Read GLUE task files into `datasets.Dataset`s, carve the AxFormer search split, tokenize.

Data flow (DESIGN §2): GLUE train -> train' (fine-tuning) + search (every AxFormer decision), GLUE dev ->
reported metric only. The data folder comes from the `data_dir` config key or `$AXFORMER_DATA`.
SQuAD (task kind "qa") has its own reader, article-level splits and sliding-window tokenization in squad.py;
the functions here dispatch to it so that every caller handles both kinds the same way.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from axformer.tasks import Task
from axformer.utils import ConfigError

ENV_VAR = "AXFORMER_DATA"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir`` if given, else ``$AXFORMER_DATA``; it must exist."""
    raw = data_dir if data_dir not in (None, "") else os.environ.get(ENV_VAR)
    if not raw:
        raise ConfigError(
            f"no data folder given: set the config key 'data_dir' or the environment variable {ENV_VAR} "
            "to the folder that holds glue/<TASK>/{train,dev}.tsv (e.g. ../shared/data)."
        )
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"data folder {root} does not exist: point 'data_dir' / {ENV_VAR} at the folder holding glue/ and squad/."
        )
    return root


def task_file(task: Task, split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of a task split's TSV (may not exist)."""
    return data_root(data_dir) / "glue" / task.glue_dir / f"{split}.tsv"


def _column_index(task: Task, header: list[str] | None, col: int | str, path: Path) -> int:
    if isinstance(col, int):
        return col
    assert header is not None
    if col not in header:
        raise ConfigError(f"{path}: header has no column {col!r} (found {header}); is this the GLUE {task.glue_dir} file?")
    return header.index(col)


def read_tsv(task: Task, path: Path) -> dict[str, list[Any]]:
    """Parse a GLUE TSV strictly: BOM stripped, quoting disabled, every row checked.

    Splitting on tabs ourselves (instead of csv/pandas) keeps the `"` characters of STS-B and MRPC
    verbatim and lets a malformed row fail with its line number.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # MRPC's header starts with a U+FEFF byte-order mark
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); restore the GLUE file.") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # trailing newline; CoLA dev has none, which is fine
    header = None
    start = 0
    if task.has_header:
        if not lines:
            raise ConfigError(f"{path}: empty file; restore the GLUE {task.glue_dir} file.")
        header = lines[0].rstrip("\r").split("\t")
        start = 1
    ia = _column_index(task, header, task.text_a, path)
    ib = _column_index(task, header, task.text_b, path) if task.text_b is not None else None
    il = _column_index(task, header, task.label, path)
    a, b, labels = [], [], []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != task.n_columns:
            raise ConfigError(
                f"{path}:{lineno}: expected {task.n_columns} tab-separated fields, found {len(fields)} "
                "(truncated or malformed row); restore the file from the GLUE release (see the data README checksums)."
            )
        raw = fields[il].strip()
        if task.label_map is None:
            try:
                lab: float | int = float(raw)
            except ValueError:
                raise ConfigError(f"{path}:{lineno}: label {raw!r} is not a number (STS-B scores are floats in [0, 5]).") from None
            lo, hi = task.label_range or (-math.inf, math.inf)
            # float() accepts 'nan' and 'inf': a non-finite or out-of-range score would poison every metric
            if not (math.isfinite(lab) and lo <= lab <= hi):
                raise ConfigError(f"{path}:{lineno}: label {raw!r} is not a finite number in [{lo:g}, {hi:g}] "
                                  f"({task.name} scores); restore the GLUE {task.glue_dir} file.")
        else:
            if raw not in task.label_map:
                raise ConfigError(
                    f"{path}:{lineno}: bad label {raw!r}; {task.name} labels are {sorted(task.label_map)}."
                )
            lab = task.label_map[raw]
        a.append(fields[ia].strip())
        b.append(fields[ib].strip() if ib is not None else None)
        labels.append(lab)
    if not labels:
        raise ConfigError(f"{path}: no data rows; restore the GLUE {task.glue_dir} file.")
    return {"text_a": a, "text_b": b, "label": labels, "idx": list(range(len(labels)))}


def _from_hub(task: Task, split: str) -> dict[str, list[Any]]:
    """Online fallback: GLUE from the `datasets` hub (for users with internet)."""
    import datasets

    hub_split = {"dev": "validation"}.get(split, split)
    ds = datasets.load_dataset("nyu-mll/glue", task.hub_name, split=hub_split)
    cols = ds.column_names
    a_col, b_col = cols[0], (cols[1] if task.is_pair else None)
    return {
        "text_a": ds[a_col],
        "text_b": ds[b_col] if b_col else [None] * len(ds),
        "label": [float(x) for x in ds["label"]] if task.is_regression else ds["label"],
        "idx": list(range(len(ds))),
    }


def load_split(task: Task, split: str, data_dir: str | os.PathLike | None = None, allow_hub: bool = False):
    """One split ("train" or "dev") of a task as a `datasets.Dataset` (text_a, text_b, label, idx; SQuAD:
    one row per question, columns ``squad.EXAMPLE_COLUMNS``)."""
    import datasets

    if task.is_qa:
        from axformer import squad

        return squad.load_split(task, split, data_dir, allow_hub)

    if split not in ("train", "dev"):
        raise ConfigError(f"unknown split {split!r}: use 'train' or 'dev'.")
    path = task_file(task, split, data_dir)
    if path.is_file():
        cols = read_tsv(task, path)
    elif allow_hub and not os.environ.get("HF_HUB_OFFLINE") and not os.environ.get("HF_DATASETS_OFFLINE"):
        try:
            cols = _from_hub(task, split)
        except Exception as exc:  # network errors come in many types; one clear message for all
            raise ConfigError(f"{path} is missing and the hub download failed ({type(exc).__name__}: {exc}).") from exc
    else:
        note = task.missing_note.get(split, "")
        raise ConfigError(
            f"missing data file {path}. "
            + (note + " " if note else f"Copy the GLUE {task.glue_dir}/{split}.tsv there, ")
            + f"or point 'data_dir' / {ENV_VAR} at a folder that has it"
            + ("; or set 'allow_hub: true' where the Hugging Face hub is reachable." if not allow_hub else ".")
        )
    if task.is_regression:
        features = datasets.Features(
            {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
             "label": datasets.Value("float32"), "idx": datasets.Value("int64")}
        )
    else:
        features = datasets.Features(
            {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
             "label": datasets.Value("int64"), "idx": datasets.Value("int64")}
        )
    return datasets.Dataset.from_dict(cols, features=features)


@dataclass
class Splits:
    """train' (fine-tuning), search (AxFormer decisions) and dev (reporting only)."""

    train: Any
    search: Any
    dev: Any
    info: dict[str, Any] = field(default_factory=dict)


def _strata(task: Task, labels: np.ndarray) -> np.ndarray:
    if not task.is_regression:
        return labels.astype(np.int64)
    # Regression (STS-B): stratify on score quintiles so the search split spans the whole range.
    edges = np.quantile(labels, [0.2, 0.4, 0.6, 0.8])
    return np.searchsorted(edges, labels, side="right")


def stratified_pick(task: Task, labels: np.ndarray, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified sample of size ``n_pick`` (per-stratum counts by largest remainder)."""
    strata = _strata(task, labels)
    values, counts = np.unique(strata, return_counts=True)
    exact = counts / counts.sum() * n_pick
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: n_pick - take.sum()]:
        take[i] += 1
    picked = []
    for v, k in zip(values, take):
        members = np.flatnonzero(strata == v)
        picked.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def make_splits(
    task: Task,
    data_dir: str | os.PathLike | None,
    seed: int,
    search_frac: float = 0.15,
    search_max: int | None = 2000,
    train_max: int | None = None,
    dev_max: int | None = None,
    allow_hub: bool = False,
    protocol: str = "standard",
    local_fractions: Any = None,
) -> Splits:
    """Carve the seeded, stratified search split out of GLUE train; optionally subsample train' and dev.

    The search split is never trained on; ``search_max`` caps it because every candidate of the search
    is one pass over it. ``train_max`` subsamples train' for CPU budgets; ``dev_max`` exists only for
    smoke runs (the reported metric uses the full dev set by default). All sizes go into ``info``.

    SQuAD: ``protocol`` ("standard" | "local") and ``local_fractions`` choose article-level splits
    (squad.make_splits); the caps then count questions.
    """
    if task.is_qa:
        from axformer import squad

        return squad.make_splits(task, data_dir, seed, protocol, local_fractions, search_frac, search_max,
                                 train_max, dev_max, allow_hub)
    if not 0.0 < search_frac < 1.0:
        raise ConfigError(f"search_frac must be in (0, 1) (got {search_frac}).")
    for key, val in (("search_max", search_max), ("train_max", train_max), ("dev_max", dev_max)):
        if val is not None and val < 1:
            raise ConfigError(f"{key} must be >= 1 or null (got {val}).")
    full = load_split(task, "train", data_dir, allow_hub)
    dev = load_split(task, "dev", data_dir, allow_hub)
    rng = np.random.default_rng(seed)
    labels = np.asarray(full["label"])
    texts_a, texts_b = list(full["text_a"]), list(full["text_b"])
    n_search = int(round(search_frac * len(full)))
    if search_max is not None:
        n_search = min(n_search, search_max)
    # A phrase corpus (SST-2) draws the search split from whole sentences only, so that it looks like dev.
    pool = whole_sentence_rows(texts_a) if task.phrase_corpus else np.arange(len(full))
    search_idx = pool[stratified_pick(task, labels[pool], min(n_search, len(pool)), rng)]
    rest = np.setdiff1d(np.arange(len(full)), search_idx)
    rest, dropped = _drop_search_overlap(task, texts_a, texts_b, search_idx, rest)
    if train_max is not None and train_max < len(rest):
        sub = stratified_pick(task, labels[rest], train_max, rng)
        rest = rest[sub]
    if dev_max is not None and dev_max < len(dev):
        dev = dev.select(np.sort(rng.choice(len(dev), size=dev_max, replace=False)))
    info = {
        "n_train_full": len(full), "n_train": int(len(rest)), "n_search": int(len(search_idx)), "n_dev": len(dev),
        "search_frac": search_frac, "search_max": search_max, "train_max": train_max, "dev_max": dev_max,
        "split_seed": seed, "search_pool": "whole_sentences" if task.phrase_corpus else "all",
        "n_search_pool": int(len(pool)), **dropped,
        "words_mean": {"train": _words_mean(texts_a, texts_b, rest), "search": _words_mean(texts_a, texts_b, search_idx),
                       "dev": _words_mean(list(dev["text_a"]), list(dev["text_b"]), np.arange(len(dev)))},
    }
    return Splits(train=full.select(rest), search=full.select(search_idx), dev=dev, info=info)


def _words(text: str | None) -> list[str]:
    return text.split() if text else []


def _words_mean(texts_a: list[str], texts_b: list[str | None], idx: np.ndarray) -> float:
    """Mean whitespace-word count of rows ``idx`` (both segments): a model-free length statistic for the record."""
    if len(idx) == 0:
        return 0.0
    return float(np.mean([len(_words(texts_a[i])) + len(_words(texts_b[i])) for i in idx]))


def _spans(words: list[str]) -> set[str]:
    """Every proper contiguous word span of a sentence, space-joined (a sentence of L words has L(L+1)/2 - 1)."""
    n = len(words)
    return {" ".join(words[i:j]) for i in range(n) for j in range(i + 1, n + 1) if j - i < n}


def whole_sentence_rows(texts: list[str]) -> np.ndarray:
    """Indices of the rows that are not a (word-aligned) proper sub-phrase of another row.

    GLUE SST-2 train holds every sentence and the parsed phrases cut from it; a search split drawn from all rows
    would be mostly short phrases (unlike dev) and 30 % of it would be phrases of train' sentences. Rows are
    compared after whitespace normalisation; identical rows are all kept (exact duplicates are handled by
    :func:`_drop_search_overlap`)."""
    norm = [" ".join(_words(t)) for t in texts]
    present = set(norm)
    phrase: set[str] = set()
    # A row can only contain rows shorter than itself: visit long rows first and skip sentences already known
    # to be phrases, whose own sub-phrases are sub-phrases of the longer row as well.
    for i in sorted(range(len(norm)), key=lambda r: -len(norm[r])):
        if norm[i] in phrase:
            continue
        phrase.update(s for s in _spans(norm[i].split()) if s in present)
    return np.asarray([i for i, t in enumerate(norm) if t not in phrase], dtype=np.int64)


def _drop_search_overlap(task: Task, texts_a: list[str], texts_b: list[str | None], search_idx: np.ndarray,
                         rest: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """train' without the rows that would leak search-split text into fine-tuning.

    Every task: exact duplicates of a search row. Phrase corpora (SST-2) also: every train' row that is a
    word-aligned phrase of a search sentence, and every train' row that contains a search sentence as a
    substring (so no search text is seen in training, in either direction)."""
    key = [(" ".join(_words(a)), " ".join(_words(b))) for a, b in zip(texts_a, texts_b)]
    search_keys = {key[i] for i in search_idx}
    keep = np.asarray([key[i] not in search_keys for i in rest], dtype=bool)
    n_dup = int((~keep).sum())
    n_phrase = 0
    if task.phrase_corpus:
        search_text = [key[i][0] for i in search_idx]
        phrases: set[str] = set()
        for t in search_text:
            phrases.update(_spans(t.split()))
        contains = _rows_containing(search_text, [key[i][0] for i in rest])
        for j, i in enumerate(rest):
            if keep[j] and (key[i][0] in phrases or j in contains):
                keep[j] = False
                n_phrase += 1
    return rest[keep], {"n_train_dropped_duplicates": n_dup, "n_train_dropped_phrases": n_phrase}


def _rows_containing(needles: list[str], rows: list[str]) -> set[int]:
    """Positions of ``rows`` that contain any of ``needles`` as a character substring."""
    # One newline-joined haystack and str.find per needle: fast C search instead of len(needles) x len(rows) tests.
    hay = "\n".join(rows)
    starts = np.cumsum([0] + [len(r) + 1 for r in rows])
    hits: set[int] = set()
    for s in set(needles):
        if not s:
            continue
        pos = hay.find(s)
        while pos != -1:
            hits.add(int(np.searchsorted(starts, pos, side="right") - 1))
            pos = hay.find(s, pos + 1)
    return hits


def tokenize(ds, tokenizer, task: Task, max_length: int = 128):
    """Tokenize (no padding: batches are padded dynamically) and keep only model inputs + labels.

    SQuAD: question/context windows with [start, end] labels and the columns post-processing needs
    (squad.tokenize).
    """
    if max_length < 8:
        raise ConfigError(f"max_length must be >= 8 (got {max_length}).")
    if task.is_qa:
        from axformer import squad

        return squad.tokenize(ds, tokenizer, task, max_length)

    def enc(batch):
        b = batch["text_b"] if task.is_pair else None
        out = tokenizer(batch["text_a"], b, truncation=True, max_length=max_length)
        out["labels"] = batch["label"]
        return out

    keep = ["input_ids", "token_type_ids", "attention_mask", "labels"]
    tok = ds.map(enc, batched=True, remove_columns=ds.column_names, desc=None)
    return tok.remove_columns([c for c in tok.column_names if c not in keep])


def subsample(task: Task, ds, tokenized, n: int, seed: int):
    """A seeded subset of ``n`` rows of a split and the matching rows of its tokenized form: stratified on the
    label for GLUE; for SQuAD ``n`` questions with all their windows."""
    rng = np.random.default_rng(seed)
    if task.is_qa:
        from axformer import squad

        keep = squad.pick_questions(len(ds), n, rng)
        return ds.select(keep), tokenized.select(squad.windows_of(tokenized, keep))
    keep = stratified_pick(task, np.asarray(ds["label"]), n, rng)
    return ds.select(keep), tokenized.select(keep)
