"""The typed run record (axformer.records.record): every committed metrics.json loads and round-trips, writes go
through it, and the lineage / family are read from the record's blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from axformer.records import record, results
from axformer.utils import ConfigError

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "results").rglob("metrics.json"))


def test_committed_records_exist() -> None:
    # the round-trip below is only worth something if it sees the committed profiles
    profiles = {p.relative_to(REPO / "results").parts[0] for p in COMMITTED}
    assert len(COMMITTED) >= 20 and {"bench", "sst2"} <= profiles, profiles


def committed_trees() -> dict[str, list[Path]]:
    """The committed metrics.json files by results tree: results/<profile>/... ("default": results/<task>/...)."""
    trees: dict[str, list[Path]] = {}
    for p in COMMITTED:
        parts = p.relative_to(REPO / "results").parts
        trees.setdefault(parts[0] if len(parts) > 5 else "default", []).append(p)
    return trees


def _round_trip(path: Path) -> None:
    d = json.loads(path.read_text())
    run = record.Run.from_json(d, path)
    assert run.to_json() == d and list(run.to_json()) == list(d)  # same keys, values and order
    assert run.task == d["task"] and run.metric.dev == d["metric"]["dev"]
    assert run.family() in record.FAMILIES
    if d["latency"]:
        assert [e.batch_size for e in run.latency] == [e["batch_size"] for e in d["latency"]]


@pytest.mark.slow
@pytest.mark.parametrize("tree", sorted(committed_trees()))
def test_committed_metrics_round_trip(tree: str) -> None:
    """One test per committed tree; every file is checked and every failing file is named."""
    failed = []
    for path in committed_trees()[tree]:
        try:
            _round_trip(path)
        except (AssertionError, ConfigError, ValueError, KeyError, TypeError) as exc:
            failed.append(f"{path.relative_to(REPO)}: {type(exc).__name__}: {exc}"[:500])
    assert not failed, "\n".join(failed)


def _minimal(**over) -> dict:
    rec = results.new_record("sst2", "minilm", "finetune+axformer", 0, "test")
    rec["metric"] = {"name": "accuracy", "dev": 0.9, "n_dev": 10, "secondary": {}}
    rec.update(over)
    return rec


def test_write_goes_through_run_and_keeps_shape(tmp_path: Path) -> None:
    rec = _minimal(train={"wall_s": 1.0}, search={"removed": ["L1.head2"]},
                   steps=["ck/sst2/minilm/finetune/seed0/step.json", "ck/sst2/minilm/finetune+axformer/seed0/step.json"])
    out = tmp_path / "metrics.json"
    results.write(out, rec)
    assert json.loads(out.read_text()) == rec
    run = record.load(out)
    assert run.commands() == ["finetune", "approximate"] and run.family() == "axformer"
    assert [(s.name, s.command) for s in run.steps] == [("finetune", "finetune"), ("axformer", "approximate")]
    results.write(out, run)  # a Run is written as its JSON
    assert json.loads(out.read_text()) == rec


def test_step_objects_and_families(tmp_path: Path) -> None:
    steps = [{"name": "finetune", "command": "finetune", "record": "a/step.json"},
             {"name": "lp", "command": "baseline"}]
    run = record.Run.from_json(_minimal(variant="finetune+lp", baseline={"method": "headprune"}, steps=steps))
    assert run.to_json()["steps"] == steps and run.family() == "peer" and run.peer_method() == "headprune"
    assert record.Run.from_json(_minimal(variant="finetune+int8", quantize={"dtype": "int8"})).family() == "compression"
    assert record.Run.from_json(_minimal(variant="finetune")).family() == "reference"


def test_bad_record_names_file_and_key(tmp_path: Path) -> None:
    bad = _minimal()
    bad["latency"] = [{"batch_size": 0}]
    with pytest.raises(ConfigError, match=r"m\.json: key 'latency\[0\]\.batch_size'"):
        results.write(tmp_path / "m.json", bad)
    bad = _minimal(steps=[3])
    with pytest.raises(ConfigError, match="key 'steps"):
        record.Run.from_json(bad, "m.json")
    assert not (tmp_path / "m.json").exists()


def test_step_entry_names_the_command_from_the_block_the_step_wrote():
    assert record.step_entry("a/step.json", {"train": {}, "metric": {}}, "finetune") == {
        "name": "finetune", "command": "finetune", "record": "a/step.json"}
    assert record.step_entry("b", {"search": {}, "size": {}}, "axformer_lat")["command"] == "approximate"
    assert record.step_entry("c", {"distill": {}, "train": {}})["command"] == "distill"
    assert record.step_entry("d", {"baseline": {"method": "fisher"}})["command"] == "baseline"
    assert "command" not in record.step_entry("e", {"size": {}})  # nothing says which step: no guess
    run = record.Run.from_json({**_minimal(), "steps": [record.step_entry("x", {"train": {}}, "finetune"),
                                                      record.step_entry("y", {"search": {}}, "axformer")]})
    assert [s.command for s in run.steps] == ["finetune", "approximate"]
