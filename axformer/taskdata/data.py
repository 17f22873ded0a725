"""Text tasks (one label per row: GLUE and declared tasks): read their files, carve the search split, tokenize.

Data flow (DESIGN §2): GLUE train -> train' (fine-tuning) + search (every AxFormer decision), GLUE dev ->
reported metric only. The data folder comes from the `data_dir` config key or `$AXFORMER_DATA`. What a task's
files are and how they are read is its declaration (axformer/taskdata/tasks.py): TSV (the strict GLUE reader), CSV or
JSON Lines, or a `datasets` hub source where the hub is reachable.
Also here, shared by both task kinds: the data folder (:func:`data_root`, :func:`task_file`); the split
settings and the train' / search carve are :mod:`axformer.taskdata.splits`. SQuAD (task kind "qa")
has its own reader, article-level splits and sliding-window tokenization in squad.py; callers that take any
task go through :mod:`axformer.taskdata.taskkinds`, which picks the kind once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from axformer.taskdata.tasks import Task, TaskError, label_key
from axformer.utils import ConfigError

ENV_VAR = "AXFORMER_DATA"


def _pickleable_pyarrow_types() -> None:
    """Let `datasets` fingerprint (dill-pickle) objects that reach pyarrow's MonthDayNano type.

    pyarrow builds MonthDayNano as a C struct sequence whose ``__module__`` is 'builtins', so pickling the class
    by reference fails ("Can't pickle <class 'MonthDayNano'>: it's not found as builtins.MonthDayNano"); under
    Python 3.12 `datasets` 5.2 hits it in every Dataset.from_dict (seen on the GPU machine). Publishing the class
    under that name makes the by-reference lookup succeed; nothing else changes."""
    import builtins

    try:
        import pyarrow.lib as palib
    except ImportError:  # pragma: no cover - datasets needs pyarrow
        return
    cls = getattr(palib, "MonthDayNano", None)
    if cls is not None and getattr(cls, "__module__", None) == "builtins" and not hasattr(builtins, cls.__name__):
        setattr(builtins, cls.__name__, cls)


_pickleable_pyarrow_types()


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


def task_file(task: Task, split: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """Path of a task split's file as declared (relative paths are under the data folder); None when the task
    declares no file for it (a hub-only task). The file may not exist."""
    declared = task.files.get(split)
    if declared is None:
        return None
    path = Path(declared).expanduser()
    return path if path.is_absolute() else data_root(data_dir) / path


def _column_index(task: Task, header: list[str] | None, col: int | str, path: Path, key: str, n_fields: int) -> int:
    if isinstance(col, int):
        if col >= n_fields:
            raise TaskError(f"{path}: task {task.name}, key '{key}': column index {col}, but rows have {n_fields} "
                            "fields.", task=task.name, key=key)
        return col
    assert header is not None
    if col not in header:
        raise TaskError(f"{path}: task {task.name}, key '{key}': no column {col!r} in the header (columns: "
                        f"{header}).", task=task.name, key=key)
    return header.index(col)


def _read_text(task: Task, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # MRPC's header starts with a U+FEFF byte-order mark
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path}: task {task.name}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
                        "file as UTF-8 (or restore the original).", task=task.name) from exc


def _label(task: Task, raw: Any, where: str) -> float | int:
    """A raw label value -> class id (classification) or float (regression); anything else fails naming ``where``."""
    if task.label_map is None:
        try:
            value = float(raw) if not isinstance(raw, bool) and raw is not None else float("nan")
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value):
            raise TaskError(f"{where}: label {raw!r} is not a finite number (task {task.name} is a regression: key "
                            "'labels' is regression).", task=task.name, key="labels")
        lo, hi = task.label_range or (-math.inf, math.inf)
        if not lo <= value <= hi:  # e.g. an STS-B score outside [0, 5] would skew every metric silently
            raise TaskError(f"{where}: label {raw!r} is outside [{lo:g}, {hi:g}] (task {task.name}, key "
                            "'label_range').", task=task.name, key="label_range")
        return value
    key = label_key(raw) if raw is not None else ""
    if key not in task.label_map:
        raise TaskError(f"{where}: bad label {raw!r}; task {task.name} labels (key 'labels') are "
                        f"{sorted(task.label_map)}.", task=task.name, key="labels")
    return task.label_map[key]


def _columns_from(task: Task, path: Path, split: str | None, rows) -> dict[str, list[Any]]:
    """(where, text_a, text_b, raw label) records -> the reader's columns; an empty file fails naming the split."""
    a, b, labels = [], [], []
    for where, ta, tb, raw in rows:
        labels.append(_label(task, raw, where))
        a.append(ta)
        b.append(tb)
    if not labels:
        key = split or "train"
        raise TaskError(f"{path}: no data rows (task {task.name}, key '{key}'); the split must not be empty.",
                        task=task.name, key=key)
    return {"text_a": a, "text_b": b, "label": labels, "idx": list(range(len(labels)))}


def read_tsv(task: Task, path: Path, split: str | None = None) -> dict[str, list[Any]]:
    """Parse a TSV strictly (the GLUE reader): BOM stripped, quoting disabled, every row checked.

    Splitting on tabs ourselves (instead of csv/pandas) keeps the `"` characters of STS-B and MRPC
    verbatim and lets a malformed row fail with its line number. Every row has as many fields as the header
    (header-less files such as CoLA: as the first row).
    """
    lines = _read_text(task, path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # trailing newline; CoLA dev has none, which is fine
    header = None
    start = 0
    if task.has_header:
        if not lines:
            raise TaskError(f"{path}: empty file (task {task.name}, key '{split or 'train'}'); the split must not be "
                            "empty.", task=task.name, key=split or "train")
        header = lines[0].rstrip("\r").split("\t")
        start = 1
    n_fields = len(header) if header is not None else (len(lines[0].rstrip("\r").split("\t")) if lines else 0)
    ia = _column_index(task, header, task.text_a, path, "text", n_fields)
    ib = _column_index(task, header, task.text_b, path, "text", n_fields) if task.text_b is not None else None
    il = _column_index(task, header, task.label, path, "label", n_fields)

    def rows():
        for lineno, line in enumerate(lines[start:], start=start + 1):
            fields = line.rstrip("\r").split("\t")
            if len(fields) != n_fields:
                raise TaskError(
                    f"{path}:{lineno}: expected {n_fields} tab-separated fields, found {len(fields)} (truncated or "
                    f"malformed row of task {task.name}); fix the row or restore the original file (GLUE: see the "
                    "data README checksums).", task=task.name, key=split)
            yield (f"{path}:{lineno}", fields[ia].strip(), fields[ib].strip() if ib is not None else None,
                   fields[il].strip())

    return _columns_from(task, path, split, rows())


def read_csv(task: Task, path: Path, split: str | None = None) -> dict[str, list[Any]]:
    """Parse a CSV (RFC 4180 quoting, BOM stripped, blank lines skipped); every row has the header's field count."""
    import csv
    import io

    reader = csv.reader(io.StringIO(_read_text(task, path), newline=""))
    try:
        first = next((r for r in reader if r), None)
        header = first if task.has_header else None
        n_fields = len(first) if first is not None else 0
        body = [] if first is None else ([] if task.has_header else [(reader.line_num, first)])
        body += [(reader.line_num, r) for r in reader if r]
    except csv.Error as exc:
        raise TaskError(f"{path}:{reader.line_num}: malformed CSV of task {task.name} ({exc}).", task=task.name,
                        key=split) from exc
    if first is None:
        return _columns_from(task, path, split, iter(()))
    ia = _column_index(task, header, task.text_a, path, "text", n_fields)
    ib = _column_index(task, header, task.text_b, path, "text", n_fields) if task.text_b is not None else None
    il = _column_index(task, header, task.label, path, "label", n_fields)

    def rows():
        for lineno, fields in body:
            if len(fields) != n_fields:
                raise TaskError(f"{path}:{lineno}: expected {n_fields} comma-separated fields, found {len(fields)} "
                                f"(malformed row of task {task.name}); fix the row (quote fields that hold commas).",
                                task=task.name, key=split)
            yield (f"{path}:{lineno}", fields[ia].strip(), fields[ib].strip() if ib is not None else None,
                   fields[il].strip())

    return _columns_from(task, path, split, rows())


def read_jsonl(task: Task, path: Path, split: str | None = None) -> dict[str, list[Any]]:
    """Parse JSON Lines: one object per line (blank lines skipped); the columns are the objects' keys."""
    import json

    def text(obj: dict, col: str | int, where: str) -> str:
        value = obj.get(col)
        if not isinstance(value, str):
            raise TaskError(f"{where}: task {task.name}, key 'text': field {col!r} is "
                            + ("missing" if col not in obj else f"not a string ({value!r})") + ".",
                            task=task.name, key="text")
        return value.strip()

    def rows():
        for lineno, line in enumerate(_read_text(task, path).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{where}: not a JSON object ({exc.msg}) in task {task.name}'s JSON Lines file.",
                                task=task.name, key=split) from exc
            if not isinstance(obj, dict):
                raise TaskError(f"{where}: task {task.name}: each line must be a JSON object.", task=task.name, key=split)
            if task.label not in obj:
                raise TaskError(f"{where}: task {task.name}, key 'label': no field {task.label!r} (fields: "
                                f"{sorted(obj)}).", task=task.name, key="label")
            yield (where, text(obj, task.text_a, where),
                   text(obj, task.text_b, where) if task.text_b is not None else None, obj[task.label])

    return _columns_from(task, path, split, rows())


READERS = {"tsv": read_tsv, "csv": read_csv, "jsonl": read_jsonl}


def read_rows(task: Task, path: Path, split: str | None = None) -> dict[str, list[Any]]:
    """The columns (text_a, text_b, label, idx) of one text-task file, read by the task's format."""
    if task.format not in READERS:
        raise TaskError(f"task {task.name}: format {task.format!r} has no row reader (use one of {list(READERS)}).",
                        task=task.name, key="format")
    return READERS[task.format](task, path, split)


def _hub_labels(task: Task, ds, col: str) -> list[Any]:
    """Hub label values as the declaration's raw values: a ClassLabel's names when the declared labels use
    them (RTE/QNLI: entailment, not_entailment), else the stored values (GLUE's 0/1)."""
    feature = ds.features.get(col)
    values = list(ds[col])
    names = getattr(feature, "names", None)
    if task.label_map is not None and names and all(label_key(n) in task.label_map for n in names):
        return [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in values]
    return values


def _from_hub(task: Task, split: str) -> dict[str, list[Any]]:
    """Online fallback: the task's `datasets` hub source (for users with internet)."""
    import datasets

    hub = task.hub or {}
    ds = datasets.load_dataset(hub["name"], hub.get("config"), split=hub["splits"][split])
    text = hub.get("text", [task.text_a] + ([task.text_b] if task.is_pair else []))
    cols = text if isinstance(text, list) else [text]
    label_col = hub.get("label", task.label)
    missing = [c for c in [*cols, label_col] if c not in ds.column_names]
    if missing:
        raise TaskError(f"hub {hub['name']}/{hub.get('config')} split {hub['splits'][split]}: task {task.name}, key "
                        f"'hub': no column {missing[0]!r} (columns: {ds.column_names}); set hub.text / hub.label.",
                        task=task.name, key="hub")
    where = f"hub {hub['name']}/{hub.get('config')} split {hub['splits'][split]} row"
    texts_b = ds[cols[1]] if len(cols) > 1 else [None] * len(ds)
    rows = ((f"{where} {i}", a, b, raw)
            for i, (a, b, raw) in enumerate(zip(ds[cols[0]], texts_b, _hub_labels(task, ds, label_col))))
    return _columns_from(task, Path(hub["name"]), split, rows)


def _hub_reachable(allow_hub: bool) -> bool:
    return allow_hub and not os.environ.get("HF_HUB_OFFLINE") and not os.environ.get("HF_DATASETS_OFFLINE")


def _missing_message(task: Task, split: str, path: Path | None, allow_hub: bool) -> str:
    if path is None:
        how = ("set 'allow_hub: true' where the Hugging Face hub is reachable, or declare the file." if not allow_hub
               else "the hub is switched off here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): declare the file.")
        return f"task {task.name} declares no {split} file (key '{split}'), only the hub source {task.hub_name}: {how}"
    note = task.missing_note.get(split, "")
    hub_hint = "; or set 'allow_hub: true' where the Hugging Face hub is reachable." if task.hub and not allow_hub else "."
    return (f"missing data file {path} (task {task.name}, key '{split}'). "
            + (note + " " if note else f"Copy the task's {split} file there, ")
            + f"or point 'data_dir' / {ENV_VAR} at a folder that has it" + hub_hint)


def load_split(task: Task, split: str, data_dir: str | os.PathLike | None = None, allow_hub: bool = False):
    """One split ("train" or "dev") of a text task as a `datasets.Dataset` (text_a, text_b, label, idx)."""
    import datasets

    if split not in ("train", "dev"):
        raise ConfigError(f"unknown split {split!r}: use 'train' or 'dev'.")
    path = task_file(task, split, data_dir)
    if path is not None and path.is_file():
        cols = read_rows(task, path, split)
    elif task.hub and _hub_reachable(allow_hub):
        try:
            cols = _from_hub(task, split)
        except TaskError:
            raise
        except Exception as exc:  # network errors come in many types; one clear message for all
            raise ConfigError(f"{path or 'the ' + split + ' file'} is missing and the hub download of task {task.name} "
                              f"failed ({type(exc).__name__}: {exc}).") from exc
    else:
        raise TaskError(_missing_message(task, split, path, allow_hub), task=task.name, key=split)
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


def check_task_files(task: Task, data_dir: str | os.PathLike | None, allow_hub: bool = False) -> dict[str, int]:
    """Read a text task's train and dev files as a run would, before any work: a missing file, an unknown column,
    a label outside the declared set or an empty split raises :class:`TaskError` naming the task, file and key.
    Returns the data rows per split; a split read from the hub (allow_hub, no file) is not checked (-1).
    SQuAD files are checked by squad.read_json."""
    rows: dict[str, int] = {}
    for split in ("train", "dev"):
        path = task_file(task, split, data_dir)
        if path is not None and path.is_file():
            rows[split] = len(read_rows(task, path, split)["label"])
        elif task.hub and allow_hub:
            rows[split] = -1  # read from the hub at run time; nothing to check offline
        else:
            raise TaskError(_missing_message(task, split, path, allow_hub), task=task.name, key=split)
    return rows


def check_max_length(max_length: int) -> None:
    """Refuse a tokenizer length too short for any input (both task kinds)."""
    if max_length < 8:
        raise ConfigError(f"max_length must be >= 8 (got {max_length}).")


def tokenize(ds, tokenizer, task: Task, max_length: int = 128):
    """Tokenize (no padding: batches are padded dynamically) and keep only model inputs + labels."""
    check_max_length(max_length)

    def enc(batch):
        b = batch["text_b"] if task.is_pair else None
        out = tokenizer(batch["text_a"], b, truncation=True, max_length=max_length)
        out["labels"] = batch["label"]
        return out

    keep = ["input_ids", "token_type_ids", "attention_mask", "labels"]
    tok = ds.map(enc, batched=True, remove_columns=ds.column_names, desc=None)
    return tok.remove_columns([c for c in tok.column_names if c not in keep])


def subsample(task: Task, ds, tokenized, n: int, seed: int):
    """A seeded subset of ``n`` rows of a split and the matching rows of its tokenized form, stratified on the
    label."""
    rng = np.random.default_rng(seed)
    keep = stratified_pick(task, np.asarray(ds["label"]), n, rng)
    return ds.select(keep), tokenized.select(keep)


def timing_rows(ds, n: int, seed: int):
    """The rows a latency timing batch is built from: a seeded random sample of ``n`` rows of a split (any kind).

    Not the first rows: GLUE files are ordered by source (STS-B's first thousand rows are short video
    captions, CoLA's are short sentences), and a batch of short rows never exercises top-K attention nor
    shows what a model does on the split's real length mix.
    """
    if n < 1:
        raise ConfigError(f"the timing sample needs n >= 1 (got {n}).")
    pick = sorted(np.random.default_rng(seed).permutation(len(ds))[:n].tolist())
    return ds.select(pick)


def texts(task: Task, ds) -> tuple[list[str], list[str] | None]:
    """(first texts, second texts or None) of a text task's rows: what a timing batch or export check tokenizes."""
    return list(ds["text_a"]), (list(ds["text_b"]) if task.is_pair else None)


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
