"""Task declarations: what to read for a task and how to score it — one way in for every task.

A task is a *declaration*, a small mapping (the profile key ``task_defs``, or a ``--task-def`` JSON file)::

    sentiment3:
      train: sentiment/train.csv     # relative to data_dir, or absolute
      dev: sentiment/dev.csv
      text: review                   # one column, or [first, second] for sentence pairs
      label: stars
      labels: [neg, neu, pos]        # raw value -> class id by position; or {raw: id}; or: regression
      metric: macro_f1

:data:`BUILTIN` holds the GLUE tasks and SQuAD as declarations of the same kind; :func:`registry` adds (or
replaces, whole) the profile's entries; :func:`task_from_decl` turns one declaration into a :class:`Task`
after checking it (structure only: files and their contents are checked by ``data.check_task_files``).
A fine-tuned checkpoint records the resolved declaration (``Task.decl``, axformer_step.json ``task_def``), so
every later step reads the task exactly as it was fine-tuned. SQuAD v1.1 (format ``squad``) is the one kind of
span question answering (axformer/taskdata/squad.py); its QA settings (``doc_stride``, ``max_answer_len``, ``n_best``)
are part of the Task because they decide how it is read and scored: the CLI replaces them from its options
with :func:`with_qa_settings`.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from axformer.utils import ConfigError

FORMATS = ("tsv", "csv", "jsonl", "squad")
_EXTENSIONS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Which label kind each metric fits: "binary" = classification with exactly two classes (F1 of class 1).
METRIC_KINDS = {"accuracy": "classification", "f1": "binary", "mcc": "classification", "macro_f1": "classification",
                "pearson": "regression", "spearman": "regression"}
QA_METRICS = ("f1", "exact_match")
DEFAULT_METRIC = {"classification": "accuracy", "regression": "pearson", "qa": "f1"}
DECL_KEYS = ("description", "format", "train", "dev", "header", "text", "label", "labels", "metric", "secondary",
             "max_length", "hub", "missing_note", "label_range", "phrase_corpus")
HUB_KEYS = ("name", "config", "splits", "text", "label")
DEFAULT_HUB_SPLITS = {"train": "train", "dev": "validation"}
NAME_RE = re.compile(r"^[a-z0-9_]+$")  # task names go into result paths and Snakemake wildcards
DEFAULT_MAX_LENGTH = {"text": 128, "qa": 384}


class TaskError(ConfigError):
    """A bad task declaration or task file; ``key`` is the declaration key at fault (for the config error)."""

    def __init__(self, msg: str, task: str | None = None, key: str | None = None):
        super().__init__(msg)
        self.task, self.key = task, key


@dataclass(frozen=True)
class Task:
    """How to read one task and how to score it (built from a declaration by :func:`task_from_decl`)."""

    name: str  # short name used in configs and result paths (sst2, mrpc, ...)
    text_a: int | str  # column (header name, or index for header-less files)
    text_b: int | str | None  # None: single-sentence task
    label: int | str
    label_map: dict[str, int] | None  # raw label value (as text) -> class id; None for regression
    metric: str  # headline metric (the one used for "within 1 point")
    secondary: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # split -> path (relative to the data folder or absolute)
    format: str = "tsv"  # tsv | csv | jsonl | squad
    has_header: bool = True
    hub: dict[str, Any] | None = None  # `datasets` hub source: name, config, splits, text, label
    missing_note: dict[str, str] = field(default_factory=dict)  # split -> hint printed when its file is missing
    kind: str = "text"  # "text" (one label per row) | "qa" (SQuAD JSON, answer spans)
    max_length: int = 128  # default tokenizer length (--max-length); QA windows are longer
    # QA only (see axformer/taskdata/squad.py): context tokens shared by consecutive windows (the tokenizer's
    # `stride`), longest answer in tokens and candidates per window end kept by the post-processing.
    doc_stride: int = 128
    max_answer_len: int = 30
    n_best: int = 20
    label_range: tuple[float, float] | None = None  # regression: the closed range every label must lie in
    # train holds phrases cut from its own sentences (SST-2): the search split is drawn from whole sentences only
    # and every train' phrase of a search sentence is dropped (data.make_splits, DESIGN §2)
    phrase_corpus: bool = False
    decl: dict[str, Any] = field(default_factory=dict, compare=False)  # the resolved declaration (with its name)

    @property
    def is_qa(self) -> bool:
        return self.kind == "qa"

    @property
    def is_regression(self) -> bool:
        return self.label_map is None and not self.is_qa

    @property
    def num_labels(self) -> int:
        if self.is_qa:
            return 2  # start and end logit per token
        return 1 if self.label_map is None else len(set(self.label_map.values()))

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    @property
    def hub_name(self) -> str:
        return (self.hub or {}).get("name", "")


# ------------------------------------------------------------------------------------------ built-in tasks
_HUB_GLUE = "nyu-mll/glue"
_QNLI_TRAIN_NOTE = (
    "QNLI train.tsv (104,743 rows, 25.7 MB) is not in the offline data folder (see shared/data/README.md: "
    "'What is missing'). Place the GLUE file at <data>/glue/QNLI/train.tsv, or run where the Hugging Face hub "
    "is reachable (datasets: glue/qnli).")
_SQUAD_TRAIN_NOTE = (
    "SQuAD v1.1 train-v1.1.json (87,599 questions, 30.3 MB) is not in the offline data folder (see "
    "shared/data/README.md: 'What is missing'). Place it at <data>/squad/train-v1.1.json, run where the Hugging "
    "Face hub is reachable (--allow-hub / allow_hub: true), or use the local protocol (--squad-protocol local, "
    "split key squad_protocol: local), which splits dev-v1.1.json by article.")


def _glue(folder: str, text: str | int | list, label: str | int, labels: Any, metric: str, hub_config: str,
          hub_text: str | list, secondary: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    decl = {"train": f"glue/{folder}/train.tsv", "dev": f"glue/{folder}/dev.tsv", "format": "tsv", "text": text,
            "label": label, "labels": labels, "metric": metric, "secondary": list(secondary),
            "hub": {"name": _HUB_GLUE, "config": hub_config, "text": hub_text, "label": "label"}}
    return decl | extra


_NLI = ["not_entailment", "entailment"]  # not_entailment -> 0, entailment -> 1 (as the GLUE TSVs are read)

# The suite's own tasks, as declarations (the profile's task_defs can add to them or replace one whole).
BUILTIN: dict[str, dict[str, Any]] = {
    "sst2": _glue("SST-2", "sentence", "label", ["0", "1"], "accuracy", "sst2", "sentence", phrase_corpus=True),
    "mrpc": _glue("MRPC", ["#1 String", "#2 String"], "Quality", ["0", "1"], "f1", "mrpc",
                  ["sentence1", "sentence2"], ("accuracy",)),
    # CoLA ships without a header: source, label, original annotation, sentence.
    "cola": _glue("CoLA", 3, 1, ["0", "1"], "mcc", "cola", "sentence", ("accuracy",), header=False),
    "rte": _glue("RTE", ["sentence1", "sentence2"], "label", _NLI, "accuracy", "rte", ["sentence1", "sentence2"]),
    "stsb": _glue("STS-B", ["sentence1", "sentence2"], "score", "regression", "pearson", "stsb",
                  ["sentence1", "sentence2"], ("spearman",), label_range=[0.0, 5.0]),
    "qnli": _glue("QNLI", ["question", "sentence"], "label", _NLI, "accuracy", "qnli", ["question", "sentence"],
                  missing_note={"train": _QNLI_TRAIN_NOTE}),
    # SQuAD v1.1: the JSON fields are fixed (squad.py reads them); text names the pair the model sees.
    "squad": {"format": "squad", "train": "squad/train-v1.1.json", "dev": "squad/dev-v1.1.json",
              "text": ["question", "context"], "label": "answers", "metric": "f1", "secondary": ["exact_match"],
              "max_length": 384, "hub": {"name": "rajpurkar/squad"}, "missing_note": {"train": _SQUAD_TRAIN_NOTE}},
}


# ------------------------------------------------------------------------------------------ declarations
def label_key(value: Any) -> str:
    """A raw label value as the text it is looked up by: 2, 2.0 and "2" are all "2"; strings are stripped."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _fail(name: str, key: str, msg: str) -> TaskError:
    return TaskError(f"task {name}: key '{key}': {msg}", task=name, key=key)


def _column(name: str, key: str, col: Any, header: bool) -> int | str:
    if isinstance(col, bool) or not isinstance(col, (int, str)) or col == "":
        raise _fail(name, key, f"a column is a header name or, for header: false, a 0-based index (got {col!r}).")
    if header and isinstance(col, int):
        raise _fail(name, key, f"column {col} is an index, but the file has a header: name the column "
                               "(or set header: false).")
    if not header and isinstance(col, str):
        raise _fail(name, key, f"header: false, so columns are 0-based indices (got {col!r}).")
    if isinstance(col, int) and col < 0:
        raise _fail(name, key, f"a column index is >= 0 (got {col}).")
    return col


def _text_columns(name: str, text: Any, header: bool, key: str = "text") -> tuple[int | str, int | str | None]:
    cols = text if isinstance(text, list) else [text]
    if not 1 <= len(cols) <= 2:
        raise _fail(name, key, f"one text column, or two for sentence pairs (got {len(cols)}).")
    a = _column(name, key, cols[0], header)
    b = _column(name, key, cols[1], header) if len(cols) == 2 else None
    if b is not None and a == b:
        raise _fail(name, key, f"the two text columns are the same ({a!r}).")
    return a, b


def _label_map(name: str, labels: Any) -> dict[str, int] | None:
    if labels == "regression":
        return None
    if isinstance(labels, list):
        keys = [label_key(v) for v in labels]
        if len(keys) < 2 or len(set(keys)) != len(keys) or "" in keys:
            raise _fail(name, "labels", f"a list of at least two distinct, non-empty raw label values (got {labels!r}).")
        return {k: i for i, k in enumerate(keys)}
    if isinstance(labels, dict):
        out: dict[str, int] = {}
        for raw, cid in labels.items():
            if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
                raise _fail(name, "labels", f"{raw!r} maps to {cid!r}; class ids are integers 0, 1, ...")
            out[label_key(raw)] = cid
        ids = sorted(set(out.values()))
        if len(ids) < 2 or ids != list(range(len(ids))):
            raise _fail(name, "labels", f"class ids must be 0 .. n-1 with n >= 2, each used (got {ids}).")
        return out
    raise _fail(name, "labels", "a list of raw label values, a map {raw value: class id}, or the word regression "
                                f"(got {labels!r}).")


def _check_metrics(name: str, metric: str, secondary: list[str], kind: str, n_classes: int) -> None:
    for key, m in [("metric", metric), *(("secondary", s) for s in secondary)]:
        if kind == "qa":
            if m not in QA_METRICS:
                raise _fail(name, key, f"{m!r} does not fit span question answering; use one of {list(QA_METRICS)}.")
            continue
        fits = METRIC_KINDS.get(m)
        if fits is None:
            raise _fail(name, key, f"unknown metric {m!r}; use one of {sorted(METRIC_KINDS)}.")
        ok = {"regression": kind == "regression", "classification": kind == "classification",
              "binary": kind == "classification" and n_classes == 2}[fits]
        if not ok:
            valid = sorted(k for k, v in METRIC_KINDS.items()
                           if v == kind or (v == "binary" and kind == "classification" and n_classes == 2))
            what = "regression labels" if kind == "regression" else f"{n_classes}-class labels"
            hint = " (f1 is the binary F1 of class 1: use macro_f1)" if m == "f1" and kind == "classification" else ""
            raise _fail(name, key, f"{m!r} does not fit {what}{hint}; use one of {valid}.")


def _check_hub(name: str, hub: Any, header: bool) -> dict[str, Any]:
    if not isinstance(hub, dict) or not isinstance(hub.get("name"), str) or not hub["name"]:
        raise _fail(name, "hub", "a mapping with at least `name` (the `datasets` hub name), e.g. "
                                 "{name: nyu-mll/glue, config: sst2}.")
    extra = sorted(set(hub) - set(HUB_KEYS))
    if extra:
        raise _fail(name, f"hub.{extra[0]}", f"unknown key; hub keys are {list(HUB_KEYS)}.")
    splits = hub.get("splits", {})
    if not isinstance(splits, dict) or set(splits) - {"train", "dev"} or not all(
            isinstance(v, str) and v for v in splits.values()):
        raise _fail(name, "hub.splits", "a mapping {train: <hub split>, dev: <hub split>} (default train / validation).")
    if "text" in hub:
        _text_columns(name, hub["text"], True, "hub.text")
    if "label" in hub:
        _column(name, "hub.label", hub["label"], True)
    return {**hub, "splits": {**DEFAULT_HUB_SPLITS, **splits}}


def infer_format(name: str, decl: dict[str, Any]) -> str:
    """The declared format, else the one the train (or dev) file's extension names."""
    if "format" in decl:
        if decl["format"] not in FORMATS:
            raise _fail(name, "format", f"one of {list(FORMATS)} (got {decl['format']!r}).")
        return decl["format"]
    for split in ("train", "dev"):
        if isinstance(decl.get(split), str):
            ext = Path(decl[split]).suffix.lower()
            if ext in _EXTENSIONS:
                return _EXTENSIONS[ext]
            raise _fail(name, "format", f"cannot tell the format of {decl[split]} from its extension: set format "
                                        f"to one of {list(FORMATS)}.")
    return "tsv"  # hub-only: the format is never used


def task_from_decl(name: str, decl: dict[str, Any]) -> Task:
    """Check one declaration and build its :class:`Task`; every error names the task and the key."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TaskError(f"task name {name!r}: use lower-case letters, digits and '_' (it becomes a folder name).",
                        task=str(name), key=None)
    if not isinstance(decl, dict):
        raise TaskError(f"task {name}: the declaration must be a mapping of keys {list(DECL_KEYS)}.", task=name)
    decl = {k: v for k, v in copy.deepcopy(decl).items() if k != "name"}
    extra = sorted(set(decl) - set(DECL_KEYS))
    if extra:
        raise _fail(name, extra[0], f"unknown key; task keys are {list(DECL_KEYS)}.")
    fmt = infer_format(name, decl)
    kind = "qa" if fmt == "squad" else ("regression" if decl.get("labels") == "regression" else "classification")
    for split in ("train", "dev"):
        if split in decl and (not isinstance(decl[split], str) or not decl[split]):
            raise _fail(name, split, f"the {split} file: a path relative to data_dir, or absolute (got {decl[split]!r}).")
    hub = _check_hub(name, decl["hub"], True) if decl.get("hub") is not None else None
    missing = [s for s in ("train", "dev") if s not in decl]
    if missing and hub is None:
        raise _fail(name, missing[0], f"missing: declare the {missing[0]} file (or a hub source, key hub).")
    header = decl.get("header", True)
    if not isinstance(header, bool):
        raise _fail(name, "header", f"true or false (got {header!r}).")
    if fmt in ("jsonl", "squad") and not header:
        raise _fail(name, "header", f"format {fmt} has named fields; header: false is for tsv and csv only.")
    if kind == "qa":
        text_a, text_b, label, label_map = "question", "context", "answers", None
    else:
        for key in ("text", "label", "labels"):
            if key not in decl:
                raise _fail(name, key, "missing: "
                            + {"text": "the text column (or [first, second] for sentence pairs).",
                               "label": "the label column.",
                               "labels": "the classes (a list or a {raw: id} map), or the word regression."}[key])
        text_a, text_b = _text_columns(name, decl["text"], header)
        label = _column(name, "label", decl["label"], header)
        if label in (text_a, text_b):
            raise _fail(name, "label", f"the label column {label!r} is also a text column.")
        label_map = _label_map(name, decl["labels"])
    n_classes = 0 if label_map is None else len(set(label_map.values()))
    metric = decl.get("metric", DEFAULT_METRIC[kind])
    secondary = decl.get("secondary", [])
    if not isinstance(secondary, list) or not all(isinstance(s, str) for s in secondary):
        raise _fail(name, "secondary", f"a list of metric names (got {secondary!r}).")
    if not isinstance(metric, str):
        raise _fail(name, "metric", f"a metric name (got {metric!r}).")
    if metric in secondary or len(set(secondary)) != len(secondary):
        raise _fail(name, "secondary", "each metric once, and not the headline metric again.")
    _check_metrics(name, metric, secondary, kind, n_classes)
    task_kind = "qa" if kind == "qa" else "text"
    max_length = decl.get("max_length", DEFAULT_MAX_LENGTH[task_kind])
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
        raise _fail(name, "max_length", f"an integer >= 8 (got {max_length!r}).")
    note = decl.get("missing_note", {})
    if not isinstance(note, dict) or not all(isinstance(v, str) for v in note.values()):
        raise _fail(name, "missing_note", "a mapping {split: hint} (the hint printed when that file is missing).")
    label_range = decl.get("label_range")
    if label_range is not None:
        ok = (isinstance(label_range, list) and len(label_range) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in label_range)
              and label_range[0] < label_range[1])
        if not ok or kind != "regression":
            raise _fail(name, "label_range", "[low, high] with low < high, for regression labels only "
                                             f"(got {label_range!r}).")
    phrase = decl.get("phrase_corpus", False)
    if not isinstance(phrase, bool):
        raise _fail(name, "phrase_corpus", f"true or false (got {phrase!r}).")
    resolved = {"name": name, **decl, "format": fmt, "header": header, "metric": metric, "secondary": secondary,
                "max_length": max_length}
    if hub is not None:
        resolved["hub"] = hub
    if isinstance(decl.get("labels"), dict):  # YAML may key the map by numbers: JSON keys are text
        resolved["labels"] = {label_key(k): v for k, v in decl["labels"].items()}
    return Task(name=name, text_a=text_a, text_b=text_b, label=label, label_map=label_map, metric=metric,
                secondary=tuple(secondary), files={s: decl[s] for s in ("train", "dev") if s in decl}, format=fmt,
                has_header=header, hub=hub, missing_note=dict(note), kind=task_kind, max_length=max_length,
                label_range=None if label_range is None else (float(label_range[0]), float(label_range[1])),
                phrase_corpus=phrase, decl=resolved)


def registry(task_defs: dict[str, Any] | None = None) -> dict[str, Task]:
    """The built-in tasks plus ``task_defs`` (a profile's entries; one with a built-in's name replaces it)."""
    decls = {**BUILTIN, **(task_defs or {})}
    return {name: task_from_decl(name, decl) for name, decl in decls.items()}


TASKS: dict[str, Task] = registry()


def canonical_name(name: str) -> str:
    """'SST-2' -> 'sst2' (how task names are compared)."""
    return str(name).lower().replace("-", "")


def get_task(name: str, task_defs: dict[str, Any] | None = None) -> Task:
    """Look up a task by name (built-in, or declared in ``task_defs``); unknown names list the valid ones."""
    if task_defs and name in task_defs:
        return task_from_decl(name, task_defs[name])
    key = canonical_name(name)
    if task_defs and key in task_defs:
        return task_from_decl(key, task_defs[key])
    if key not in TASKS:
        known = sorted({*TASKS, *(task_defs or {})})
        raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(known)} (config key 'tasks'), or declare "
                          "it (config key task_defs; CLI --task-def FILE).")
    return TASKS[key]


def read_task_def(path: str | Path) -> dict[str, Any]:
    """A ``--task-def`` file: one declaration as a JSON object with its ``name``."""
    p = Path(path)
    try:
        decl = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--task-def {p} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--task-def {p}: not a readable JSON object ({exc}).") from exc
    if not isinstance(decl, dict) or not isinstance(decl.get("name"), str):
        raise ConfigError(f"--task-def {p}: a JSON object with the task's `name` and its declaration keys "
                          f"({', '.join(DECL_KEYS)}).")
    return decl


def resolve(name: str, decl: dict[str, Any] | str | Path | None = None) -> Task:
    """The task named ``name``: from ``decl`` (a declaration with its name, or a --task-def file) when given,
    else from the built-in registry. A declaration of another name is refused."""
    if decl is None:
        return get_task(name)
    if not isinstance(decl, dict):
        decl = read_task_def(decl)
    decl_name = decl.get("name", name)
    if canonical_name(decl_name) != canonical_name(name):
        raise ConfigError(f"--task {name} but the task declaration is for {decl_name!r}; pass the matching pair.")
    return task_from_decl(decl_name, decl)


def with_qa_settings(task: Task, doc_stride: int | None = None, max_answer_len: int | None = None,
                     n_best: int | None = None) -> Task:
    """``task`` with the QA settings that are given replaced (a text task comes back unchanged)."""
    if not task.is_qa:
        return task
    changes = {k: v for k, v in (("doc_stride", doc_stride), ("max_answer_len", max_answer_len), ("n_best", n_best))
               if v is not None}
    for key, v in changes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "doc_stride" else 1):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} (split key {key}) must be an integer >= {0 if key == 'doc_stride' else 1} "
                              f"(got {v!r}).")
    return replace(task, **changes)
