"""Data loading: every shipped file, exact row counts, quirks, search split, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from axformer.taskdata import data, taskkinds
from axformer.taskdata import splits
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError

# data README: data rows per file (header excluded)
ROWS = {
    ("sst2", "train"): 67349, ("sst2", "dev"): 872, ("mrpc", "train"): 3668, ("mrpc", "dev"): 408,
    ("cola", "train"): 8551, ("cola", "dev"): 1043, ("rte", "train"): 2490, ("rte", "dev"): 277,
    ("stsb", "train"): 5749, ("stsb", "dev"): 1500, ("qnli", "dev"): 5463,
}


@pytest.mark.parametrize("task,split", sorted(ROWS))
def test_every_shipped_file_reads_with_exact_row_count(data_dir, task, split):
    ds = data.load_split(get_task(task), split, data_dir)
    assert len(ds) == ROWS[(task, split)]
    assert all(isinstance(t, str) and t for t in ds["text_a"][:50])


def test_label_distributions_match_readme(data_dir):
    assert np.bincount(data.load_split(get_task("mrpc"), "train", data_dir)["label"]).tolist() == [1194, 2474]
    assert np.bincount(data.load_split(get_task("cola"), "dev", data_dir)["label"]).tolist() == [322, 721]
    # RTE: not_entailment -> 0, entailment -> 1
    assert np.bincount(data.load_split(get_task("rte"), "dev", data_dir)["label"]).tolist() == [131, 146]
    sts = np.asarray(data.load_split(get_task("stsb"), "train", data_dir)["label"])
    assert sts.min() == 0.0 and sts.max() == 5.0 and abs(sts.mean() - 2.701) < 1e-3


def test_quirks_bom_quotes_headerless(data_dir):
    mrpc = data.load_split(get_task("mrpc"), "dev", data_dir)
    assert mrpc[0]["text_a"].startswith("He said the foodservice")  # header with BOM was recognised
    assert mrpc[0]["text_b"].startswith('" The foodservice')  # a leading quote is kept verbatim
    cola = data.load_split(get_task("cola"), "dev", data_dir)
    assert cola[-1]["text_a"]  # last row has no newline, still complete
    assert cola[0]["text_a"] == "The sailors rode the breeze clear of the rocks."
    sst = data.load_split(get_task("sst2"), "dev", data_dir)
    assert not sst[0]["text_a"].endswith(" ")  # trailing space before the tab stripped


def test_qnli_train_missing_is_explained(data_dir):
    with pytest.raises(ConfigError, match="QNLI train.tsv .*not in the offline data folder"):
        data.load_split(get_task("qnli"), "train", data_dir)


def test_search_split_disjoint_seeded_stratified(data_dir):
    task = get_task("mrpc")
    a = splits.make_splits(task, data_dir, seed=3)
    b = splits.make_splits(task, data_dir, seed=3)
    c = splits.make_splits(task, data_dir, seed=4)
    assert set(a.search["idx"]).isdisjoint(a.train["idx"])
    assert len(a.search) + len(a.train) == 3668
    assert a.search["idx"] == b.search["idx"] and a.train["idx"] == b.train["idx"]
    assert a.search["idx"] != c.search["idx"]
    assert len(a.search) == round(0.15 * 3668)
    pos = np.mean(a.search["label"])
    assert abs(pos - 2474 / 3668) < 0.002  # stratified: class balance preserved


def test_search_cap_and_train_subsample_recorded(data_dir):
    s = splits.make_splits(get_task("sst2"), data_dir, seed=0, search_max=300, train_max=500, dev_max=50)
    assert (len(s.search), len(s.train), len(s.dev)) == (300, 500, 50)
    assert set(s.search["idx"]).isdisjoint(s.train["idx"])
    assert s.info["n_train"] == 500 and s.info["n_search"] == 300 and s.info["n_train_full"] == 67349


def test_regression_split_spans_range(data_dir):
    s = splits.make_splits(get_task("stsb"), data_dir, seed=0)
    lab = np.asarray(s.search["label"])
    assert lab.min() < 0.5 and lab.max() > 4.5


def _copy_task(data_dir: Path, tmp_path: Path, glue: str) -> Path:
    root = tmp_path / "data"
    shutil.copytree(data_dir / "glue" / glue, root / "glue" / glue)
    return root


def test_missing_data_dir_is_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("AXFORMER_DATA", raising=False)
    with pytest.raises(ConfigError, match="AXFORMER_DATA"):
        data.data_root(None)
    with pytest.raises(ConfigError, match="does not exist"):
        data.data_root(tmp_path / "nope")


def test_missing_file_names_it(tmp_path):
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"RTE/train.tsv"):
        data.load_split(get_task("rte"), "train", tmp_path)


def test_malformed_rows_fail_with_line_number(data_dir, tmp_path):
    root = _copy_task(data_dir, tmp_path, "RTE")
    f = root / "glue" / "RTE" / "dev.tsv"
    lines = f.read_text().split("\n")
    lines[5] = "\t".join(lines[5].split("\t")[:2])  # truncated row
    f.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=r"dev.tsv:6: expected 4 tab-separated fields, found 2"):
        data.load_split(get_task("rte"), "dev", root)
    lines = (data_dir / "glue/RTE/dev.tsv").read_text().split("\n")
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    f.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=r"dev.tsv:4: bad label 'maybe'"):
        data.load_split(get_task("rte"), "dev", root)


def test_bad_split_and_task_names():
    with pytest.raises(ConfigError, match="unknown task 'sst5'.*choose one of"):
        get_task("sst5")
    assert get_task("SST-2").name == "sst2"


def test_tokenize_keeps_pairs_and_labels(data_dir, tokenizer):
    task = get_task("mrpc")
    ds = data.load_split(task, "dev", data_dir).select(range(8))
    tok = data.tokenize(ds, tokenizer, task, max_length=32)
    assert set(tok.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert max(len(x) for x in tok["input_ids"]) <= 32
    assert any(1 in tt for tt in tok["token_type_ids"])  # second segment present
    assert tok["labels"] == ds["label"]


# ---------------------------------------------------------------- search split like dev (DESIGN §2)
def test_whole_sentence_rows_excludes_word_aligned_phrases():
    texts = ["a very good film", "very good", "good", "a bad film", "film", "filmmaker", "a very good film"]
    # "very good", "good" and "film" are phrases of longer rows; "filmmaker" contains "film" but is no phrase of
    # another row; the duplicated full sentence stays (duplicates are handled when train' is built)
    assert splits.whole_sentence_rows(texts).tolist() == [0, 3, 5, 6]


def test_sst2_search_split_is_whole_sentences_absent_from_train(data_dir):
    sp = splits.make_splits(get_task("sst2"), data_dir, seed=0, search_frac=0.15, search_max=500, train_max=None)
    train = list(sp.train["text_a"])
    search = [t.strip() for t in sp.search["text_a"]]
    hay = "\n".join(train)
    # no search text is a substring of any train' row, and no train' row is a word-aligned phrase of a search row
    assert not [s for s in search if s in hay]
    phrases = set()
    for s in search:
        w = s.split()
        phrases.update(" ".join(w[i:j]) for i in range(len(w)) for j in range(i + 1, len(w) + 1))
    assert not [t for t in train if " ".join(t.split()) in phrases]
    info = sp.info
    assert info["search_pool"] == "whole_sentences" and info["n_train_dropped_phrases"] > 0
    # the point of it: search rows now as long as dev rows (phrases averaged half of dev's length)
    assert abs(info["words_mean"]["search"] - info["words_mean"]["dev"]) < 0.15 * info["words_mean"]["dev"]
    assert info["n_train"] + info["n_search"] + info["n_train_dropped_phrases"] + \
        info["n_train_dropped_duplicates"] == info["n_train_full"]


def test_exact_duplicates_of_search_rows_leave_train(data_dir):
    sp = splits.make_splits(get_task("stsb"), data_dir, seed=0, search_frac=0.15, search_max=2000)
    keys = {(a, b) for a, b in zip(sp.search["text_a"], sp.search["text_b"])}
    assert not [1 for a, b in zip(sp.train["text_a"], sp.train["text_b"]) if (a, b) in keys]
    assert sp.info["n_train_dropped_duplicates"] > 0 and sp.info["search_pool"] == "all"


def test_timing_texts_are_a_seeded_sample_not_the_first_rows(data_dir):
    task = get_task("stsb")
    dev = data.load_split(task, "dev", data_dir)
    a1, b1 = taskkinds.timing_texts(task, dev, 32, seed=0)
    a2, b2 = taskkinds.timing_texts(task, dev, 32, seed=0)
    assert (a1, b1) == (a2, b2) and len(a1) == len(b1) == 32
    assert a1 != list(dev["text_a"][:32])  # STS-B dev opens with short captions: the first rows are not a sample
    assert taskkinds.timing_texts(task, dev, 32, seed=1)[0] != a1
    # sampled rows keep their pairing
    pairs = set(zip(dev["text_a"], dev["text_b"]))
    assert all((a, b) in pairs for a, b in zip(a1, b1))
    single, none = taskkinds.timing_texts(get_task("sst2"), data.load_split(get_task("sst2"), "dev", data_dir), 5, 0)
    assert len(single) == 5 and none is None
    with pytest.raises(ConfigError, match="n >= 1"):
        taskkinds.timing_texts(task, dev, 0, 0)


# ------------------------------------------------------------------------ the released split (split index files)
REPO = Path(__file__).resolve().parents[1]
OFFICIAL = {"cola": (REPO / "workflow/splits/official_cola.json", 1301, 7250),
            "rte": (REPO / "workflow/splits/official_rte.json", 362, 2127)}


@pytest.mark.parametrize("task", sorted(OFFICIAL))
def test_released_split_index_loads_as_the_search_split(data_dir, task):
    import json

    path, n_search, n_train = OFFICIAL[task]
    rec = json.loads(path.read_text())
    s = splits.make_splits(get_task(task), data_dir, seed=0, search_rows=str(path))
    assert (len(s.search), len(s.train)) == (n_search, n_train)
    assert list(s.search["idx"]) == rec["search_rows"]  # the released file's order, kept
    used = set(s.search["idx"]) | set(s.train["idx"]) | set(rec["excluded_rows"])
    assert not set(s.search["idx"]) & set(s.train["idx"]) and len(used) == ROWS[(task, "train")]
    assert s.info["search_rows"] == str(path) and s.info["n_search"] == n_search
    again = splits.make_splits(get_task(task), data_dir, seed=2, search_rows=str(path))
    assert list(again.search["idx"]) == rec["search_rows"]  # the seed no longer draws the search split
    with pytest.raises(ConfigError, match="used whole"):
        splits.make_splits(get_task(task), data_dir, seed=0, search_rows=str(path), search_max=100)


def test_rte_released_split_leaves_out_the_row_its_reader_skips(data_dir):
    s = splits.make_splits(get_task("rte"), data_dir, seed=0, search_rows=str(OFFICIAL["rte"][0]))
    full = data.load_split(get_task("rte"), "train", data_dir)
    assert 2 not in set(s.search["idx"]) | set(s.train["idx"])  # GLUE RTE index 2: their val.tsv's first line
    assert s.search[0]["text_a"] == full[7]["text_a"]


def test_split_index_refuses_a_mismatched_train_file(data_dir, tmp_path):
    path = str(OFFICIAL["rte"][0])
    for split in ("train", "dev"):
        (tmp_path / "glue/RTE").mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(data_dir) / f"glue/RTE/{split}.tsv", tmp_path / f"glue/RTE/{split}.tsv")
    train = tmp_path / "glue/RTE/train.tsv"
    lines = train.read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]  # same rows, two swapped: every index after would name another row
    train.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"official_rte\.json was derived from a train file with sha256 41e3a9b0"):
        splits.make_splits(get_task("rte"), tmp_path, seed=0, search_rows=path)
    with pytest.raises(ConfigError, match="split of task 'rte', not 'cola'"):
        splits.make_splits(get_task("cola"), data_dir, seed=0, search_rows=path)
    with pytest.raises(ConfigError, match="does not exist"):
        splits.make_splits(get_task("rte"), data_dir, seed=0, search_rows=str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "axformer-split-index/1", "task": "rte"}')
    with pytest.raises(ConfigError, match="is not a split index"):
        splits.make_splits(get_task("rte"), data_dir, seed=0, search_rows=str(bad))
