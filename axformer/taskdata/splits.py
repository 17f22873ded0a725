"""The train' / search / dev split of a text task (DESIGN §2): its settings (:class:`SplitConfig`, the one place
of their defaults), the seeded stratified carve of GLUE train into train' and search, a released split fixed by
row identity (:class:`SplitIndex`, ``search_rows``), and the search rows that would leak train' phrases.
The rows themselves come from :mod:`axformer.taskdata.data`; SQuAD's article-level splits are in squad.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from axformer.taskdata import data
from axformer.taskdata.tasks import Task
from axformer.utils import ConfigError


@dataclass
class SplitConfig:
    """How a task's train file is carved (DESIGN §2): the one place of these defaults (the CLI's split flags are
    generated from it; a profile's `split` key may set other values)."""

    search_frac: float = 0.15  # fraction of train held out for the search (SQuAD standard: of its articles)
    search_max: int | None = 2000  # cap on search rows: every search candidate is one pass over them
    train_max: int | None = None  # subsample train' to this many rows (CPU budgets)
    dev_max: int | None = None  # subsample dev (smoke runs only: the reported metric uses all of dev)
    max_length: int | None = None  # tokenizer length; None: the task's (128 for text, 384 for SQuAD windows)
    # a split index file (workflow/splits/*.json, scripts/derive_official_split.py): these train rows are the
    # search split, whatever the seed and search_frac (the authors' released split); None: the seeded split
    search_rows: str | None = None


@dataclass
class Splits:
    """train' (fine-tuning), search (AxFormer decisions) and dev (reporting only)."""

    train: Any
    search: Any
    dev: Any
    info: dict[str, Any] = field(default_factory=dict)


SPLIT_INDEX_FORMAT = "axformer-split-index/1"


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SplitIndex:
    """A fixed search split by row identity (e.g. the authors' released CoLA / RTE split): 0-based data rows of
    the task's train file, in the order of the source's search file, and rows in neither part."""

    path: str
    task: str
    search: np.ndarray
    excluded: np.ndarray
    train_sha256: str
    n_rows: int
    source: dict[str, Any]


def load_split_index(path: str | os.PathLike, task: Task, data_dir: str | os.PathLike | None = None) -> SplitIndex:
    """Read a split index file and check it against ``task``'s train file in ``data_dir``: the task name, the
    train file's sha256 and row count must be the ones it was derived from (one ConfigError naming the file and
    the fix otherwise, before any work)."""
    import json

    p = Path(path)
    fix = "re-derive it with scripts/derive_official_split.py against this train file, or drop split.search_rows"
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"split.search_rows: split index file {p} does not exist (paths are relative to the "
                          "working directory, e.g. workflow/splits/official_cola.json).") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"split.search_rows: {p} is not a readable JSON split index ({exc}); {fix}.") from None
    keys = ("format", "task", "train_file", "search_rows", "excluded_rows")
    if not isinstance(rec, dict) or rec.get("format") != SPLIT_INDEX_FORMAT or any(k not in rec for k in keys):
        raise ConfigError(f"split.search_rows: {p} is not a split index ({SPLIT_INDEX_FORMAT} with keys "
                          f"{', '.join(keys)}); {fix}.")
    if rec["task"] != task.name:
        raise ConfigError(f"split.search_rows: {p} is the split of task {rec['task']!r}, not {task.name!r}; name "
                          f"the index file of {task.name} under split_per_task.{task.name}.search_rows.")
    train = data.task_file(task, "train", data_dir)
    if train is None or not train.is_file():
        raise ConfigError(f"split.search_rows: {p} needs task {task.name}'s train file ({train}), which is missing.")
    want, got = rec["train_file"].get("sha256"), file_sha256(train)
    if got != want:
        raise ConfigError(f"split.search_rows: {p} was derived from a train file with sha256 {want} "
                          f"({rec['train_file'].get('path')}, {rec['train_file'].get('rows')} rows), but {train} has "
                          f"sha256 {got}: its row indices would name other rows. Use the GLUE train file it names, "
                          f"or {fix}.")
    n_rows = int(rec["train_file"]["rows"])
    search = np.asarray(rec["search_rows"], dtype=np.int64)
    excluded = np.asarray(rec["excluded_rows"], dtype=np.int64)
    both = np.concatenate([search, excluded])
    if search.size == 0 or both.min() < 0 or both.max() >= n_rows or len(np.unique(both)) != both.size:
        raise ConfigError(f"split.search_rows: {p}: the row indices must be distinct, within 0..{n_rows - 1} and "
                          f"the search rows non-empty; {fix}.")
    return SplitIndex(path=str(path), task=task.name, search=search, excluded=excluded, train_sha256=got,
                      n_rows=n_rows, source=rec.get("source", {}))


def make_splits(
    task: Task,
    data_dir: str | os.PathLike | None,
    seed: int,
    search_frac: float = SplitConfig.search_frac,
    search_max: int | None = SplitConfig.search_max,
    train_max: int | None = None,
    dev_max: int | None = None,
    allow_hub: bool = False,
    search_rows: str | os.PathLike | None = None,
) -> Splits:
    """Carve the seeded, stratified search split out of GLUE train; optionally subsample train' and dev.

    The search split is never trained on; ``search_max`` caps it because every candidate of the search
    is one pass over it. ``train_max`` subsamples train' for CPU budgets; ``dev_max`` exists only for
    smoke runs (the reported metric uses the full dev set by default). All sizes go into ``info``.
    ``search_rows`` (a split index file, :func:`load_split_index`) fixes the search split to the rows it lists,
    in its order, and leaves its excluded rows out of train' too; ``search_frac`` is then unused and a
    ``search_max`` below its size is refused (the released split is used whole).
    """
    if not 0.0 < search_frac < 1.0:
        raise ConfigError(f"search_frac must be in (0, 1) (got {search_frac}).")
    for key, val in (("search_max", search_max), ("train_max", train_max), ("dev_max", dev_max)):
        if val is not None and val < 1:
            raise ConfigError(f"{key} must be >= 1 or null (got {val}).")
    index = load_split_index(search_rows, task, data_dir) if search_rows else None
    if index is not None and search_max is not None and search_max < len(index.search):
        raise ConfigError(f"search_max {search_max} would cut the {len(index.search)}-row split of {search_rows}, "
                          "which is used whole: raise split.search_max or drop split.search_rows.")
    full = data.load_split(task, "train", data_dir, allow_hub)
    dev = data.load_split(task, "dev", data_dir, allow_hub)
    rng = np.random.default_rng(seed)
    labels = np.asarray(full["label"])
    texts_a, texts_b = list(full["text_a"]), list(full["text_b"])
    if index is not None:
        if len(full) != index.n_rows:
            raise ConfigError(f"split.search_rows: {search_rows} lists rows of a {index.n_rows}-row train file; "
                              f"task {task.name} reads {len(full)} rows from it.")
        pool, search_idx = np.arange(len(full)), index.search  # the source's order: the released batch-mean
        rest = np.setdiff1d(np.arange(len(full)), np.concatenate([search_idx, index.excluded]))
    else:
        n_search = int(round(search_frac * len(full)))
        if search_max is not None:
            n_search = min(n_search, search_max)
        # A phrase corpus (SST-2) draws the search split from whole sentences only, so that it looks like dev.
        pool = whole_sentence_rows(texts_a) if task.phrase_corpus else np.arange(len(full))
        search_idx = pool[data.stratified_pick(task, labels[pool], min(n_search, len(pool)), rng)]
        rest = np.setdiff1d(np.arange(len(full)), search_idx)
    if index is None:
        rest, dropped = _drop_search_overlap(task, texts_a, texts_b, search_idx, rest)
    else:  # the released train' as it was: its rows that repeat a search row's text stay (counted, not dropped)
        n_dup = len(rest) - len(_drop_search_overlap(task, texts_a, texts_b, search_idx, rest)[0])
        dropped = {"n_train_dropped_duplicates": 0, "n_train_dropped_phrases": 0, "n_train_search_duplicates": n_dup}
    if train_max is not None and train_max < len(rest):
        sub = data.stratified_pick(task, labels[rest], train_max, rng)
        rest = rest[sub]
    if dev_max is not None and dev_max < len(dev):
        dev = dev.select(np.sort(rng.choice(len(dev), size=dev_max, replace=False)))
    info = {
        "n_train_full": len(full), "n_train": int(len(rest)), "n_search": int(len(search_idx)), "n_dev": len(dev),
        "search_frac": search_frac, "search_max": search_max, "train_max": train_max, "dev_max": dev_max,
        "split_seed": seed, "search_pool": "whole_sentences" if task.phrase_corpus else "all",
        "n_search_pool": int(len(pool)), **dropped,
        **({"search_rows": str(search_rows), "search_rows_excluded": int(len(index.excluded)),
            "train_sha256": index.train_sha256} if index is not None else {}),
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
