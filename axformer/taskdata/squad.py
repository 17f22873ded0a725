"""SQuAD v1.1 extractive question answering through the pipeline (DESIGN §8).

* **Data**: the official JSON (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}], "version"}``) read
  into one row per question with its article id. Two protocols, recorded in every result:
  ``standard`` = fine-tune on ``train-v1.1.json`` (minus a held-out set of train *articles* for the search),
  report on ``dev-v1.1.json``; ``local`` = only the dev file exists offline, so its articles are split, seeded,
  into fine-tune / search / report parts (fractions are config keys) and no article crosses two parts.
* **Windows**: a question + a long context become several windows of at most ``max_length`` tokens that share
  ``doc_stride`` context tokens (the tokenizer's ``stride`` with ``return_overflowing_tokens``). Each window
  keeps the character offsets of its context tokens, so token spans map back to answer text. Its label is the
  token span of the first gold answer when the whole answer lies inside the window, else (0, 0), the [CLS]
  position ("not in this window").
* **Loss**: per window, start cross-entropy + end cross-entropy (``losses.per_sample_loss`` on logits of shape
  (B, T, 2)); per question (what the AxFormer search compares), the smallest loss among the windows that hold
  the answer — the window the model is meant to answer from — and the smallest of all windows if none does.
* **Answers**: per window the ``n_best`` best start and end tokens inside the context are paired (end >= start,
  at most ``max_answer_len`` tokens); the best start + end logit over all windows of a question gives its
  answer text. EM / F1: ``metrics.squad_scores``.

This module is the QA task kind; :mod:`axformer.taskdata.taskkinds` dispatches to it. It sits below the training loop
(it imports the data folder, the losses and the metrics, never a step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from axformer.taskdata import metrics as M
from axformer.taskdata.data import check_max_length, data_root, task_file
from axformer.taskdata.splits import SplitConfig, Splits
from axformer.taskdata.tasks import Task
from axformer.utils import ConfigError

if TYPE_CHECKING:  # torch only where logits are scored (score): the CLI parser reads this module's settings
    import torch

PROTOCOLS = ("standard", "local")
DEFAULT_FRACTIONS = (0.6, 0.1, 0.3)  # local protocol: fine-tune / search / report articles
FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}
MAX_QUESTION_TOKENS = 64  # longer questions are cut (at a word boundary); SQuAD v1.1 dev's longest has 40
EXAMPLE_COLUMNS = ("id", "article", "title", "context", "question", "answers", "answer_starts")
# Columns of a tokenized window besides the model inputs: which question it belongs to, the character span of
# each context token ([-1, -1] for question / special tokens), the context, the gold answers of its question.
WINDOW_COLUMNS = ("example_idx", "offset_mapping", "context", "answers")


# ----------------------------------------------------------------------------------------------- reading
def squad_file(split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """<data>/squad/{train,dev}-v1.1.json (may not exist)."""
    if split not in FILES:
        raise ConfigError(f"unknown SQuAD split {split!r}: use 'train' or 'dev'.")
    return data_root(data_dir) / "squad" / FILES[split]


def read_json(path: Path) -> dict[str, list[Any]]:
    """One row per question of an official SQuAD v1.1 file; a malformed entry fails naming the file and question.

    Every gold answer is checked against its context (``context[answer_start:][:len(text)] == text``): the
    window labels are computed from ``answer_start``, so a shifted answer would silently train on wrong spans.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); restore the official SQuAD file.") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); restore the official SQuAD "
                          "file (see the data README checksums).") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise ConfigError(f"{path}: expected the official SQuAD layout {{'data': [...], 'version': '1.1'}}.")
    if str(raw.get("version", "1.1")) != "1.1":
        raise ConfigError(f"{path}: SQuAD version {raw.get('version')!r}; this task is SQuAD v1.1 (every question "
                          "answerable). Use dev-v1.1.json / train-v1.1.json.")
    cols: dict[str, list[Any]] = {c: [] for c in EXAMPLE_COLUMNS}
    for a_idx, article in enumerate(raw["data"]):
        try:
            title = article.get("title", f"article{a_idx}")
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    answers = qa["answers"]
                    if not answers:
                        raise ConfigError(f"{path}: question {qa.get('id')!r} has no gold answer (SQuAD v1.1 "
                                          "questions all have one; is this a v2.0 file?).")
                    for ans in answers:
                        s = int(ans["answer_start"])
                        if context[s:s + len(ans["text"])] != ans["text"]:
                            raise ConfigError(
                                f"{path}: question {qa['id']!r}: answer {ans['text']!r} is not at character "
                                f"{s} of its context; restore the official file.")
                    cols["id"].append(str(qa["id"]))
                    cols["article"].append(a_idx)
                    cols["title"].append(str(title))
                    cols["context"].append(context)
                    cols["question"].append(qa["question"])
                    cols["answers"].append([a["text"] for a in answers])
                    cols["answer_starts"].append([int(a["answer_start"]) for a in answers])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: malformed article {a_idx} ({type(exc).__name__}: {exc}); restore the "
                              "official SQuAD v1.1 file.") from exc
    if not cols["id"]:
        raise ConfigError(f"{path}: no questions; restore the official SQuAD v1.1 file.")
    return cols


def _from_hub(split: str, hub_name: str) -> dict[str, list[Any]]:
    """Online fallback (users with internet): the hub copy, articles numbered by title in order of appearance."""
    import datasets

    ds = datasets.load_dataset(hub_name, split={"dev": "validation"}.get(split, split))
    article_of: dict[str, int] = {}
    cols: dict[str, list[Any]] = {c: [] for c in EXAMPLE_COLUMNS}
    for row in ds:
        cols["id"].append(str(row["id"]))
        cols["article"].append(article_of.setdefault(row["title"], len(article_of)))
        cols["title"].append(row["title"])
        cols["context"].append(row["context"])
        cols["question"].append(row["question"])
        cols["answers"].append(list(row["answers"]["text"]))
        cols["answer_starts"].append([int(s) for s in row["answers"]["answer_start"]])
    return cols


def _features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "article": datasets.Value("int64"), "title": datasets.Value("string"),
        "context": datasets.Value("string"), "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")), "answer_starts": datasets.List(datasets.Value("int64")),
    })


def load_split(task: Task, split: str, data_dir: str | os.PathLike | None = None, allow_hub: bool = False):
    """One SQuAD file as a `datasets.Dataset`, one row per question (columns: ``EXAMPLE_COLUMNS``)."""
    import datasets

    # the declared file (built-in squad: <data>/squad/<split>-v1.1.json); a hub-only declaration has none
    path = task_file(task, split, data_dir) if split in task.files else squad_file(split, data_dir)
    if path.is_file():
        cols = read_json(path)
    elif (allow_hub and task.hub_name and not os.environ.get("HF_HUB_OFFLINE")
          and not os.environ.get("HF_DATASETS_OFFLINE")):
        try:
            cols = _from_hub(split, task.hub_name)
        except Exception as exc:  # network errors come in many types; one clear message for all
            raise ConfigError(f"{path} is missing and the hub download failed ({type(exc).__name__}: {exc}).") from exc
    else:
        note = task.missing_note.get(split) or (f"Copy the official {FILES[split]} there, or point 'data_dir' / "
                                                "AXFORMER_DATA at a folder that has it.")
        raise ConfigError(f"missing data file {path}. {note}")
    return datasets.Dataset.from_dict(cols, features=_features())


# ----------------------------------------------------------------------------------------------- splits
def parse_fractions(raw: str | Sequence[float] | None) -> tuple[float, float, float]:
    """'0.6,0.1,0.3' or [0.6, 0.1, 0.3] -> (fine-tune, search, report) fractions of the dev articles."""
    if raw is None:
        return DEFAULT_FRACTIONS
    items = raw.replace(",", " ").split() if isinstance(raw, str) else [
        x for part in raw for x in (str(part).replace(",", " ").split())]
    try:
        fr = tuple(float(x) for x in items)
    except ValueError:
        fr = ()
    if len(fr) != 3 or any(not np.isfinite(f) or f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"--squad-fractions (split key squad_fractions) must be three positive fractions "
                          f"fine-tune,search,report that sum to 1, e.g. 0.6,0.1,0.3 (got {raw!r}).")
    return fr  # type: ignore[return-value]


def article_split(n_articles: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """Seeded partition of article ids 0..n-1 into parts sized by ``fractions`` (largest remainder, >= 1 each)."""
    k = len(fractions)
    if n_articles < k:
        raise ConfigError(f"{n_articles} articles cannot be split into {k} non-empty parts.")
    exact = np.asarray(fractions, dtype=float) / float(np.sum(fractions)) * n_articles
    sizes = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - sizes), kind="stable")[: n_articles - sizes.sum()]:
        sizes[i] += 1
    while (sizes == 0).any():  # a tiny fraction of few articles: every part still gets one article
        sizes[np.argmax(sizes)] -= 1
        sizes[np.argmin(sizes)] += 1
    perm = np.random.default_rng(seed).permutation(n_articles)
    cuts = np.cumsum(sizes)[:-1]
    return tuple(np.sort(part) for part in np.split(perm, cuts))


def _rows_of(articles: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(articles, wanted))


def _cap(rows: np.ndarray, n_max: int | None, rng: np.random.Generator) -> np.ndarray:
    if n_max is None or n_max >= len(rows):
        return rows
    return np.sort(rng.choice(rows, size=n_max, replace=False))


def make_splits(task: Task, data_dir: str | os.PathLike | None, seed: int, protocol: str = "standard",
                fractions: Sequence[float] | str | None = None, search_frac: float = SplitConfig.search_frac,
                search_max: int | None = SplitConfig.search_max, train_max: int | None = None, dev_max: int | None = None,
                allow_hub: bool = False):
    """train' / search / report splits of SQuAD under ``protocol``; no article is in two splits.

    ``standard``: search = ``search_frac`` of the train articles (seeded), the rest is train', dev-v1.1 is
    reported. ``local``: dev-v1.1's articles split by ``fractions``. Then ``search_max`` / ``train_max`` /
    ``dev_max`` subsample questions (seeded) within their split. Sizes, protocol and settings go into ``info``.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--squad-protocol (split key squad_protocol) must be one of {', '.join(PROTOCOLS)} "
                          f"(got {protocol!r}).")
    for key, val in (("search_max", search_max), ("train_max", train_max), ("dev_max", dev_max)):
        if val is not None and val < 1:
            raise ConfigError(f"{key} must be >= 1 or null (got {val}).")
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"protocol": protocol, "split_seed": seed}
    if protocol == "local":
        fr = parse_fractions(fractions)
        full = load_split(task, "dev", data_dir, allow_hub)
        articles = np.asarray(list(full["article"]))
        parts = article_split(int(articles.max()) + 1, fr, seed)
        train_rows, search_rows, dev_rows = (_rows_of(articles, p) for p in parts)
        train_src, dev_src = full, full
        info.update(local_fractions=list(fr), search_frac=None,
                    articles={"train": parts[0].tolist(), "search": parts[1].tolist(), "dev": parts[2].tolist()})
    else:
        if not 0.0 < search_frac < 1.0:
            raise ConfigError(f"search_frac must be in (0, 1) (got {search_frac}).")
        train_src = load_split(task, "train", data_dir, allow_hub)
        dev_src = load_split(task, "dev", data_dir, allow_hub)
        articles = np.asarray(list(train_src["article"]))
        n_art = int(articles.max()) + 1
        n_search_art = min(n_art - 1, max(1, int(round(search_frac * n_art))))
        search_art = np.sort(rng.permutation(n_art)[:n_search_art])
        search_rows = _rows_of(articles, search_art)
        train_rows = np.setdiff1d(np.arange(len(train_src)), search_rows)
        dev_rows = np.arange(len(dev_src))
        info.update(local_fractions=None, search_frac=search_frac,
                    articles={"train": int(n_art - n_search_art), "search": int(n_search_art),
                              "dev": int(np.unique(list(dev_src["article"])).size)})
    n_questions = {"train": len(train_rows), "search": len(search_rows), "dev": len(dev_rows)}
    search_rows = _cap(search_rows, search_max, rng)
    train_rows = _cap(train_rows, train_max, rng)
    dev_rows = _cap(dev_rows, dev_max, rng)
    info.update(
        n_train_full=n_questions["train"], n_train=int(len(train_rows)), n_search=int(len(search_rows)),
        n_dev=int(len(dev_rows)), n_questions_before_caps=n_questions, search_max=search_max, train_max=train_max,
        dev_max=dev_max, doc_stride=task.doc_stride, max_answer_len=task.max_answer_len, n_best=task.n_best,
    )
    return Splits(train=train_src.select(train_rows), search=train_src.select(search_rows),
                  dev=dev_src.select(dev_rows), info=info)


def pick_questions(n_questions: int, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded subset of ``n_pick`` questions (no labels to stratify on)."""
    return np.sort(rng.choice(n_questions, size=min(n_pick, n_questions), replace=False))


def windows_of(tokenized, example_rows: Sequence[int]) -> np.ndarray:
    """Indices of the windows of a tokenized split that belong to the questions ``example_rows``."""
    return np.flatnonzero(np.isin(np.asarray(list(tokenized["example_idx"])), np.asarray(example_rows)))


# ----------------------------------------------------------------------------------------------- windows
def question_budget(max_length: int, doc_stride: int) -> int:
    """Most question tokens that still leave each window more than ``doc_stride`` context tokens.

    The fast tokenizer aborts the process (a Rust panic, not an exception) when the overlap is not smaller than
    the room left for the context, so too long questions are cut and impossible settings refused up front.
    """
    room = max_length - doc_stride - 4  # [CLS] q [SEP] c [SEP]: 3 special tokens, and stride < room strictly
    if doc_stride < 0 or room < 8:
        raise ConfigError(f"--doc-stride {doc_stride} (split key doc_stride) leaves {max(room, 0)} tokens for the "
                          f"question in windows of --max-length {max_length}; use 0 <= doc_stride <= max_length - 12 "
                          "(e.g. 128 at 384, 64 at 256).")
    return min(MAX_QUESTION_TOKENS, room)


def _cut_questions(questions: list[str], tokenizer, budget: int) -> tuple[list[str], int]:
    """Questions cut at the last word boundary that keeps them within ``budget`` tokens (count of cut ones)."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out, n_cut = [], 0
    for i, q in enumerate(questions):
        if len(enc["input_ids"][i]) <= budget:
            out.append(q)
            continue
        words = enc.word_ids(i)
        # cut before the word that holds token `budget`: tokens of earlier words do not change
        j = budget
        while j > 0 and words[j] == words[j - 1]:
            j -= 1
        out.append(q[: enc["offset_mapping"][i][j][0]].rstrip())
        n_cut += 1
    return out, n_cut


def gold_token_span(offsets: Sequence[Sequence[int]], sequence_ids: Sequence[int | None], start_char: int,
                    end_char: int) -> tuple[int, int] | None:
    """Token span (inclusive) of the context tokens that overlap characters [start, end) — the smallest token
    span covering the answer — or None when the window's context does not hold the whole answer."""
    ctx = [j for j, s in enumerate(sequence_ids) if s == 1]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return None
    first = next(j for j in ctx if offsets[j][1] > start_char)  # first token ending after the answer starts
    last = next(j for j in reversed(ctx) if offsets[j][0] < end_char)  # last token starting before it ends
    return first, max(first, last)


def tokenize(ds, tokenizer, task: Task, max_length: int):
    """Question/context windows of every question in ``ds`` (rows: ``EXAMPLE_COLUMNS``) as a `datasets.Dataset`.

    Columns: the model inputs, ``labels`` = [start, end] token positions of the first gold answer ([0, 0] when the
    window does not hold it), and ``WINDOW_COLUMNS`` (``example_idx`` = row of the question in ``ds``).
    """
    import datasets

    check_max_length(max_length)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("SQuAD windows need a fast (Rust) tokenizer for offset mappings; this model's tokenizer "
                          "is a slow Python one.")
    budget = question_budget(max_length, task.doc_stride)
    questions, _ = _cut_questions([q.lstrip() for q in ds["question"]], tokenizer, budget)
    contexts = list(ds["context"])  # datasets 5 returns lazy columns: materialise once
    golds, starts = list(ds["answers"]), list(ds["answer_starts"])
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=task.doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    cols: dict[str, list[Any]] = {k: enc[k] for k in keys}
    labels, example_idx, offsets, ctx_col, ans_col = [], [], [], [], []
    for i, ex in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(i)
        offs = enc["offset_mapping"][i]
        s = starts[ex][0]
        span = gold_token_span(offs, seq, s, s + len(golds[ex][0]))
        labels.append(list(span) if span is not None else [0, 0])
        example_idx.append(int(ex))
        offsets.append([list(o) if seq[j] == 1 else [-1, -1] for j, o in enumerate(offs)])
        ctx_col.append(contexts[ex])
        ans_col.append(list(golds[ex]))
    cols.update(labels=labels, example_idx=example_idx, offset_mapping=offsets, context=ctx_col, answers=ans_col)
    return datasets.Dataset.from_dict(cols)


# ----------------------------------------------------------------------------------------------- scoring
@dataclass
class QAView:
    """What post-processing needs from a tokenized split, read once (the search scores it many times)."""

    example_idx: np.ndarray  # per window
    offsets: list[np.ndarray]  # per window, (T_i, 2), -1 outside the context
    contexts: list[str]  # per window
    questions: np.ndarray  # sorted unique example_idx: the order of per-question outputs
    golds: list[list[str]]  # per question, in ``questions`` order
    has_answer: np.ndarray  # per window: its label is a real span, not [CLS]

    @classmethod
    def of(cls, ds) -> "QAView":
        missing = [c for c in WINDOW_COLUMNS if c not in ds.column_names]
        if missing:
            raise ConfigError(f"a QA split lacks the window columns {missing}: tokenize it with "
                              "axformer.taskdata.squad.tokenize.")
        example_idx = np.asarray(list(ds["example_idx"]), dtype=np.int64)
        offsets = [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in ds["offset_mapping"]]
        labels = np.asarray(list(ds["labels"]), dtype=np.int64).reshape(-1, 2)
        questions, first = np.unique(example_idx, return_index=True)
        answers = list(ds["answers"])
        return cls(example_idx=example_idx, offsets=offsets, contexts=list(ds["context"]), questions=questions,
                   golds=[list(answers[i]) for i in first], has_answer=labels[:, 0] > 0)


def question_losses(window_losses: np.ndarray, view: QAView) -> np.ndarray:
    """One loss per question (``view.questions`` order): min over the windows holding its answer, else over all."""
    _, inv = np.unique(view.example_idx, return_inverse=True)
    q_has = np.zeros(len(view.questions), dtype=bool)
    np.logical_or.at(q_has, inv, view.has_answer)
    eligible = view.has_answer | ~q_has[inv]
    out = np.full(len(view.questions), np.inf)
    np.minimum.at(out, inv, np.where(eligible, window_losses, np.inf))
    return out


def _window_best(start: np.ndarray, end: np.ndarray, offs: np.ndarray, n_best: int,
                 max_answer_len: int) -> tuple[float, int, int] | None:
    """(score, first char, end char) of the best valid span of one window, or None if it has no context."""
    ctx = np.flatnonzero(offs[:, 0] >= 0)
    if not len(ctx):
        return None
    s, e = start[ctx], end[ctx]
    k = min(n_best, len(ctx))
    si = np.argsort(-s, kind="stable")[:k]
    ei = np.argsort(-e, kind="stable")[:k]
    ts, te = ctx[si][:, None], ctx[ei][None, :]
    ok = (te >= ts) & (te - ts < max_answer_len)
    if not ok.any():
        return None
    score = np.where(ok, s[si][:, None] + e[ei][None, :], -np.inf)
    a, b = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(score[a, b]), int(offs[ctx[si[a]], 0]), int(offs[ctx[ei[b]], 1])


def best_answers(logits: np.ndarray, view: QAView, n_best: int = 20, max_answer_len: int = 30) -> list[str]:
    """Answer text per question (``view.questions`` order): the best start + end logit over all its windows.

    ``logits``: (windows, T, 2) start / end logits, padded past each window's length (never read there: only
    positions with a context offset are candidates).
    """
    best: dict[int, tuple[float, str]] = {}
    for w, ex in enumerate(view.example_idx):
        offs = view.offsets[w]
        found = _window_best(logits[w, : len(offs), 0], logits[w, : len(offs), 1], offs, n_best, max_answer_len)
        if found is None:
            continue
        score, c0, c1 = found
        if int(ex) not in best or score > best[int(ex)][0]:
            best[int(ex)] = (score, view.contexts[w][c0:c1])
    return [best.get(int(q), (0.0, ""))[1] for q in view.questions]


def score(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, view: QAView, task: Task):
    """(per-question losses, answers, metrics) of window logits (windows, T, 2) against their labels."""
    import torch

    from axformer.taskdata.losses import per_sample_loss

    lt = torch.as_tensor(logits)
    window = per_sample_loss(lt, torch.as_tensor(labels), False).numpy()
    losses = question_losses(window, view)
    answers = best_answers(lt.numpy(), view, task.n_best, task.max_answer_len)
    return losses, answers, M.compute(task, answers, view.golds)


def measure_texts(ds) -> tuple[list[str], list[str]]:
    """(questions, contexts) of a split: the pairs the latency measurement tokenizes into windows."""
    return list(ds["question"]), list(ds["context"])
