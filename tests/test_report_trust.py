"""The report trusts no file (issue 32 item 5): a metric outside its range, a latency <= 0, a record whose
task / model / variant / seed disagrees with its folder, a duplicate run, a truncated predictions.npz: each
stops `axformer report` with one line naming the file, before anything is written."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from axformer.cli import main

REPO = Path(__file__).resolve().parents[1]
# three committed runs with predictions.npz beside their metrics.json (finetune, a peer, the majority row)
SOURCE = REPO / "results" / "base"
RUNS = ["mrpc/mpnet-base/finetune/seed0", "mrpc/mpnet-base/finetune+headprune/seed0", "mrpc/mpnet-base/majority/seed0"]


@pytest.fixture
def tree(tmp_path) -> Path:
    if not all((SOURCE / r / "predictions.npz").is_file() for r in RUNS):
        pytest.skip("the committed results/base runs are not here")
    out = tmp_path / "res"
    for r in RUNS:
        shutil.copytree(SOURCE / r, out / r)
    return out


def _one(tree: Path, variant: str = "finetune") -> Path:
    return next(tree.glob(f"*/*/{variant}/seed0/metrics.json"))


def _edit(path: Path, fn) -> None:
    rec = json.loads(path.read_text())
    fn(rec)
    path.write_text(json.dumps(rec))


def _report(tree: Path, tmp_path: Path, capsys) -> tuple[int, list[str]]:
    rc = main(["report", "--results", str(tree), "--figures", str(tmp_path / "fig"),
               "--summary", str(tmp_path / "out" / "summary.csv"), "--resamples", "1000"])
    return rc, capsys.readouterr().err.strip().splitlines()


def _refused(tree: Path, tmp_path: Path, capsys, bad: Path, *words: str) -> None:
    rc, err = _report(tree, tmp_path, capsys)
    assert rc == 2 and len(err) == 1, err
    assert str(bad) in err[0] and "Traceback" not in err[0], err
    for w in words:
        assert w in err[0], err
    assert not (tmp_path / "fig").exists() and not (tmp_path / "out").exists()  # nothing written


def test_intact_tree_reports(tree, tmp_path, capsys):
    rc, err = _report(tree, tmp_path, capsys)
    assert rc == 0, err
    assert (tmp_path / "out" / "summary.csv").is_file()


def test_metric_above_its_range(tree, tmp_path, capsys):
    p = _one(tree)
    _edit(p, lambda r: r["metric"].update(dev=7.5))
    _refused(tree, tmp_path, capsys, p, "outside [0.0, 1.0]")


@pytest.mark.parametrize("value", [-3.0, 0.0])
def test_latency_not_positive(tree, tmp_path, capsys, value):
    p = next(q for q in sorted(tree.glob("*/*/*/seed0/metrics.json")) if json.loads(q.read_text())["latency"])
    _edit(p, lambda r: r["latency"][0].update(p50_ms=value))
    _refused(tree, tmp_path, capsys, p, "p50_ms", "> 0")


@pytest.mark.parametrize("key, value", [("task", "sst2"), ("variant", "finetune+distill"), ("seed", 3),
                                        ("model", "bert-base-uncased")])
def test_record_disagrees_with_its_folder(tree, tmp_path, capsys, key, value):
    p = _one(tree)
    _edit(p, lambda r: r.update({key: value}))
    _refused(tree, tmp_path, capsys, p, f"says {key}")


def test_duplicate_run_under_seed00(tree, tmp_path, capsys):
    src = _one(tree).parent
    dup = src.with_name("seed00")
    shutil.copytree(src, dup)
    _refused(tree, tmp_path, capsys, dup / "metrics.json")


def test_duplicate_via_folder_claims(tree, tmp_path, capsys):
    """Two folders that both pass the path check cannot hold the same run: the path check makes the (task,
    model, variant, seed) key the folder's, so a duplicate needs a second spelling of the seed (above)."""
    from axformer.reporting.report import runs

    found = runs(tree)
    keys = [(r.task, r.model, r.variant, r.seed) for _, r in found]
    assert len(keys) == len(set(keys))


def test_truncated_predictions_npz(tree, tmp_path, capsys):
    npz = sorted(tree.glob("*/*/*/seed0/predictions.npz"))[-1]
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])
    _refused(tree, tmp_path, capsys, npz, "predictions.npz")


def test_secondary_metric_checked(tree, tmp_path, capsys):
    p = _one(tree)
    rec = json.loads(p.read_text())
    if not rec["metric"].get("secondary"):
        pytest.skip("no secondary metric in this record")
    name = next(iter(rec["metric"]["secondary"]))
    _edit(p, lambda r: r["metric"]["secondary"].update({name: -2.0}))
    _refused(tree, tmp_path, capsys, p, name)


def test_check_run_ranges_unit():
    """check_run directly: mcc may be negative, accuracy may not."""
    from axformer.records.record import Run
    from axformer.reporting.report import check_run
    from axformer.utils import ConfigError

    rec = json.loads(_first_committed().read_text())
    run_dir = "/".join(_first_committed().parent.parts[-4:])
    good = copy.deepcopy(rec)
    check_run(run_dir, Run.from_json(good), Path("m.json"))
    bad = copy.deepcopy(rec)
    bad["metric"]["dev"] = -0.5 if bad["metric"]["name"] not in ("mcc", "pearson", "spearman") else -1.5
    with pytest.raises(ConfigError, match="outside"):
        check_run(run_dir, Run.from_json(bad), Path("m.json"))


def _first_committed() -> Path:
    p = next(iter(sorted((REPO / "results").glob("*/*/*/seed*/metrics.json"))), None)
    if p is None:
        pytest.skip("no committed metrics.json")
    return p
