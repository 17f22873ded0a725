"""Task declarations (axformer/taskdata/tasks.py): the built-in GLUE tasks read exactly as before through the declaration
path, the three file formats, labels as list / map / regression, the hub source, and every bad declaration
refused with the task and key named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from axformer.taskdata import data, metrics
from axformer.taskdata import splits
from axformer.taskdata.tasks import BUILTIN, METRIC_KINDS, TASKS, TaskError, get_task, label_key, resolve, task_from_decl

# ------------------------------------------------------------------------------ the old path, frozen
# The GLUE reader as it was before tasks became declarations (folder, header, fields per row, text a, text b,
# label column, raw label -> id): the reference the declaration path must reproduce row for row.
_B = {"0": 0, "1": 1}
_N = {"not_entailment": 0, "entailment": 1}
LEGACY = {
    "sst2": ("SST-2", True, 2, "sentence", None, "label", _B),
    "mrpc": ("MRPC", True, 5, "#1 String", "#2 String", "Quality", _B),
    "cola": ("CoLA", False, 4, 3, None, 1, _B),
    "rte": ("RTE", True, 4, "sentence1", "sentence2", "label", _N),
    "stsb": ("STS-B", True, 10, "sentence1", "sentence2", "score", None),
    "qnli": ("QNLI", True, 4, "question", "sentence", "label", _N),
}


def legacy_rows(task: str, split: str, root: Path) -> dict[str, list]:
    folder, has_header, n_cols, a, b, lab, label_map = LEGACY[task]
    lines = (root / "glue" / folder / f"{split}.tsv").read_text(encoding="utf-8-sig").split("\n")
    if lines[-1] == "":
        lines.pop()
    header = lines[0].rstrip("\r").split("\t") if has_header else None
    idx = [c if isinstance(c, int) or c is None else header.index(c) for c in (a, b, lab)]
    out: dict[str, list] = {"text_a": [], "text_b": [], "label": []}
    for line in lines[1 if has_header else 0:]:
        f = line.rstrip("\r").split("\t")
        assert len(f) == n_cols
        out["text_a"].append(f[idx[0]].strip())
        out["text_b"].append(f[idx[1]].strip() if idx[1] is not None else None)
        raw = f[idx[2]].strip()
        out["label"].append(float(raw) if label_map is None else label_map[raw])
    out["idx"] = list(range(len(out["label"])))
    return out


def _legacy_dataset(task: str, split: str, root: Path):
    import datasets

    dtype = "float32" if LEGACY[task][6] is None else "int64"
    feats = datasets.Features({"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
                               "label": datasets.Value(dtype), "idx": datasets.Value("int64")})
    return datasets.Dataset.from_dict(legacy_rows(task, split, root), features=feats)


def _columns(ds) -> dict[str, list]:
    return {c: list(ds[c]) for c in ("text_a", "text_b", "label", "idx")}


# SST-2 (67k train rows read twice) is the slow one: it runs in the slow tier
@pytest.mark.parametrize("task", [pytest.param(t, marks=pytest.mark.slow) if t == "sst2" else t for t in sorted(LEGACY)])
def test_builtin_declarations_read_and_split_exactly_as_the_old_reader(data_dir, task, monkeypatch):
    parts = ["dev"] if task == "qnli" else ["train", "dev"]
    for split in parts:
        new = data.load_split(get_task(task), split, data_dir)
        old = _legacy_dataset(task, split, data_dir)
        assert new.features == old.features, (task, split)
        assert _columns(new) == _columns(old), (task, split)
    if task == "qnli":
        return
    # same rows in the same order -> the same seeded search / train' / dev indices
    kw = dict(seed=1, search_max=300, train_max=500, dev_max=50)
    new_s = splits.make_splits(get_task(task), data_dir, **kw)
    monkeypatch.setattr(data, "load_split", lambda t, split, *a, **k: _legacy_dataset(task, split, data_dir))
    old_s = splits.make_splits(get_task(task), data_dir, **kw)
    for part in ("train", "search", "dev"):
        assert _columns(getattr(new_s, part)) == _columns(getattr(old_s, part)), (task, part)
    assert new_s.info == old_s.info


def test_builtin_registry_is_declarations():
    assert set(TASKS) == set(BUILTIN) == {*LEGACY, "squad"}
    assert {n for n, t in TASKS.items() if t.is_qa} == {"squad"}
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["rte"].label_map == {"not_entailment": 0, "entailment": 1}
    assert TASKS["squad"].max_length == 384 and TASKS["sst2"].max_length == 128
    for name, task in TASKS.items():  # the resolved declaration rebuilds the same task
        assert task_from_decl(name, task.decl) == task
        assert json.loads(json.dumps(task.decl)) == task.decl  # recordable in axformer_step.json


def test_every_declarable_metric_is_implemented():
    assert set(METRIC_KINDS) <= set(metrics.METRICS)


# ------------------------------------------------------------------------------ the three formats
def write_formats(root: Path, n_train: int = 48, n_dev: int = 12, seed: int = 0) -> dict[str, dict]:
    """TSV with string labels (a {raw: id} map), CSV sentence pairs with three classes (quoted commas),
    JSON Lines with a regression score; returns their declarations (paths relative to ``root``, JSON Lines
    absolute)."""
    rng = np.random.default_rng(seed)
    words = "the a movie plot actor scene good bad slow fast warm cold story music long short film".split()

    def sent() -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(3, 9))))

    (root / "mine").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["id\tsentence\tsentiment"] + [f"{i}\t{sent()}\t{['negative', 'positive'][i % 2]}" for i in range(n)]
        (root / "mine" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        classes = ["contradiction", "neutral", "entailment"]
        rows = ["premise,hypothesis,gold"] + [f'"{sent()}, {sent()}",{sent()},{classes[i % 3]}' for i in range(n)]
        (root / "mine" / f"{split}.csv").write_text("\r\n".join(rows) + "\r\n")
        with open(root / "mine" / f"{split}.jsonl", "w") as fh:
            for _ in range(n):
                fh.write(json.dumps({"text": sent(), "score": round(float(rng.uniform(0, 5)), 2)}) + "\n")
    return {
        "senti": {"train": "mine/train.tsv", "dev": "mine/dev.tsv", "text": "sentence", "label": "sentiment",
                  "labels": {"negative": 0, "positive": 1}, "metric": "f1", "secondary": ["accuracy"]},
        "nli3": {"train": "mine/train.csv", "dev": "mine/dev.csv", "text": ["premise", "hypothesis"],
                 "label": "gold", "labels": ["contradiction", "neutral", "entailment"], "metric": "macro_f1",
                 "secondary": ["accuracy", "mcc"], "max_length": 48},
        "score": {"train": str(root / "mine" / "train.jsonl"), "dev": str(root / "mine" / "dev.jsonl"),
                  "text": "text", "label": "score", "labels": "regression", "metric": "pearson",
                  "secondary": ["spearman"]},
    }


def test_three_formats_read_as_declared(tmp_path):
    decls = write_formats(tmp_path)
    senti = data.load_split(task_from_decl("senti", decls["senti"]), "dev", tmp_path)
    assert senti["label"] == [i % 2 for i in range(12)] and senti["text_b"] == [None] * 12
    nli = task_from_decl("nli3", decls["nli3"])
    assert nli.num_labels == 3 and nli.is_pair and nli.format == "csv" and nli.max_length == 48
    ds = data.load_split(nli, "train", tmp_path)
    assert ds["label"] == [i % 3 for i in range(48)]
    assert all(", " in a for a in ds["text_a"])  # the quoted comma stayed inside the field
    score = task_from_decl("score", decls["score"])
    assert score.is_regression and score.format == "jsonl"
    reg = data.load_split(score, "dev", None)  # absolute paths need no data folder
    assert reg.features["label"].dtype == "float32" and len(reg) == 12
    assert data.check_task_files(nli, tmp_path) == {"train": 48, "dev": 12}
    s = splits.make_splits(nli, tmp_path, seed=0, search_frac=0.25)
    assert len(s.search) == 12 and sorted(np.bincount(s.search["label"])) == [4, 4, 4]  # stratified, 3 classes


def test_labels_as_text_and_numbers():
    assert label_key(2) == label_key(2.0) == label_key(" 2 ") == "2"
    t = task_from_decl("n", {"train": "a.jsonl", "dev": "b.jsonl", "text": "t", "label": "y", "labels": [0, 1, 2],
                             "metric": "macro_f1"})
    assert t.label_map == {"0": 0, "1": 1, "2": 2}


def test_jsonl_numeric_labels_and_bad_rows(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"t": "x y", "y": 1}\n\n{"t": "z", "y": 0.0}\n')
    task = task_from_decl("n", {"train": str(f), "dev": str(f), "text": "t", "label": "y", "labels": [0, 1]})
    assert data.read_jsonl(task, f)["label"] == [1, 0]
    f.write_text('{"t": "x y", "y": 1}\n{"t": 3, "y": 0}\n')
    with pytest.raises(TaskError, match=r"t.jsonl:2: task n, key 'text': field 't' is not a string"):
        data.read_jsonl(task, f)
    f.write_text('{"t": "x y"}\n')
    with pytest.raises(TaskError, match=r"t.jsonl:1: task n, key 'label': no field 'y'"):
        data.read_jsonl(task, f)


def test_hub_source_maps_classlabel_names(monkeypatch):
    import datasets

    feats = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    fake = datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]},
                                      features=feats)
    seen = {}

    def load_dataset(name, config, split):
        seen.update(name=name, config=config, split=split)
        return fake

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    hub_rte = {k: v for k, v in BUILTIN["rte"].items() if k not in ("train", "dev")}  # RTE from the hub only
    ds = data.load_split(task_from_decl("rte_hub", hub_rte), "dev", None, allow_hub=True)
    assert seen == {"name": "nyu-mll/glue", "config": "rte", "split": "validation"}
    # the hub stores entailment as 0; the declaration (and the TSV reader) make it class 1
    assert ds["label"] == [1, 0] and ds["text_b"] == ["c", "d"]
    with pytest.raises(TaskError, match=r"declares no train file \(key 'train'\), only the hub source.*allow_hub"):
        data.load_split(task_from_decl("rte_hub", hub_rte), "train", None, allow_hub=False)


# ------------------------------------------------------------------------------ bad declarations
GOOD = {"train": "x/train.csv", "dev": "x/dev.csv", "text": "s", "label": "y", "labels": ["a", "b", "c"],
        "metric": "macro_f1"}


@pytest.mark.parametrize("change, key, msg", [
    ({"metric": "f1"}, "metric", "does not fit 3-class labels .*use macro_f1"),
    ({"metric": "pearson"}, "metric", "does not fit 3-class labels"),
    ({"labels": "regression", "metric": "accuracy"}, "metric", "does not fit regression labels"),
    ({"secondary": ["spearman"]}, "secondary", "does not fit"),
    ({"metric": "bleu"}, "metric", "unknown metric"),
    ({"labels": ["a"]}, "labels", "at least two distinct"),
    ({"labels": {"a": 0, "b": 2}}, "labels", "0 .. n-1"),
    ({"labels": "yes"}, "labels", "regression"),
    ({"text": ["s", "t", "u"]}, "text", "two for sentence pairs"),
    ({"text": 0}, "text", "is an index, but the file has a header"),
    ({"label": "s"}, "label", "also a text column"),
    ({"train": None}, "train", "the train file"),
    ({"colour": "red"}, "colour", "unknown key"),
    ({"train": "x/train.parquet", "dev": "x/dev.parquet"}, "format", "cannot tell the format"),
    ({"max_length": 4}, "max_length", ">= 8"),
    ({"hub": {"nam": "x"}}, "hub", "at least `name`"),
])
def test_bad_declaration_names_task_and_key(change, key, msg):
    decl = {**GOOD, **change}
    decl = {k: v for k, v in decl.items() if v is not None}
    with pytest.raises(TaskError, match=rf"task t3: key '{key}': .*{msg}") as exc:
        task_from_decl("t3", decl)
    assert exc.value.key == key and exc.value.task == "t3"


def test_bad_files_name_task_file_and_key(tmp_path):
    decls = write_formats(tmp_path, n_train=6, n_dev=3)
    bad = {**decls["nli3"], "label": "gold_label"}
    with pytest.raises(TaskError, match=r"train.csv: task nli3, key 'label': no column 'gold_label'") as e:
        data.check_task_files(task_from_decl("nli3", bad), tmp_path)
    assert e.value.key == "label"
    bad = {**decls["nli3"], "labels": ["contradiction", "neutral"]}
    with pytest.raises(TaskError, match=r"train.csv:4: bad label 'entailment'; task nli3 labels \(key 'labels'\)"):
        data.check_task_files(task_from_decl("nli3", bad), tmp_path)
    bad = {**decls["nli3"], "dev": "mine/nope.csv"}
    with pytest.raises(TaskError, match=r"missing data file .*mine/nope.csv \(task nli3, key 'dev'\)") as e:
        data.check_task_files(task_from_decl("nli3", bad), tmp_path)
    assert e.value.key == "dev"
    (tmp_path / "mine" / "empty.csv").write_text("premise,hypothesis,gold\n")
    bad = {**decls["nli3"], "dev": "mine/empty.csv"}
    with pytest.raises(TaskError, match=r"empty.csv: no data rows \(task nli3, key 'dev'\)"):
        data.check_task_files(task_from_decl("nli3", bad), tmp_path)
    bad = {**decls["score"], "label": "text"}
    with pytest.raises(TaskError, match="also a text column"):
        task_from_decl("score", bad)
    (tmp_path / "mine" / "bad.jsonl").write_text('{"text": "a b", "score": "high"}\n')
    bad = {**decls["score"], "dev": str(tmp_path / "mine" / "bad.jsonl")}
    with pytest.raises(TaskError, match=r"bad.jsonl:1: label 'high' is not a finite number"):
        data.check_task_files(task_from_decl("score", bad), tmp_path)


# ------------------------------------------------------------------------------ CLI plumbing
def test_resolve_from_file_record_and_old_checkpoints(tmp_path):
    from axformer.cli import resolve_task

    decls = write_formats(tmp_path)
    f = tmp_path / "nli3.json"
    f.write_text(json.dumps({"name": "nli3", **decls["nli3"]}))
    task = resolve("nli3", str(f))
    assert task.num_labels == 3 and task.decl["name"] == "nli3"
    with pytest.raises(Exception, match="declaration is for 'nli3'"):
        resolve("senti", str(f))
    # a later step gets the declaration the checkpoint recorded; one recorded before declarations has none
    ns = argparse.Namespace(task="nli3", task_def=task.decl, max_length=None)
    assert resolve_task(ns) == task and ns.max_length == 48
    old = argparse.Namespace(task="mrpc", task_def=None, max_length=None)
    assert resolve_task(old) == TASKS["mrpc"] and old.max_length == 128
