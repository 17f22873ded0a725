"""Tasks declared only in a profile (config key task_defs) through the Snakemake workflow: three tasks in three
formats (TSV with string labels, CSV with three classes, JSON Lines regression) run every kind of step end to
end with no change under axformer/, and each bad declaration is refused before any job, in one line naming the
task, the file and the key."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_tasks import write_formats

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "workflow" / "config" / "smoke.yaml"

pytestmark = pytest.mark.skipif(shutil.which("axformer") is None, reason="the axformer console script is not installed")


def profile(root: Path, **changes) -> Path:
    """The smoke profile on the three declared tasks (data under ``root``), as one complete profile file
    ``root``/profile.yaml; ``changes`` replace top-level keys."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg.update(data_dir=str(root / "data"), task_defs=write_formats(root / "data"), tasks=["senti", "nli3", "score"],
               # distill, AxFormer on the student and int8 at measurement; a peer method (no match: one job less)
               variants=["finetune+distill+axformer+int8", "finetune+headprune"],
               split={**cfg["split"], "search_frac": 0.25, "dev_max": None})
    cfg["steps"]["headprune"] = {**cfg["steps"]["headprune"], "match": None,
                                 "args": {"method": "headprune", "n_heads": 1}}
    for key, value in changes.items():
        cfg[key] = value
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, configfile: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_declared_tasks_run_every_variant_end_to_end(tmp_path):
    """The three-class CSV task through every step kind (distillation, AxFormer on the student, int8, a peer
    baseline, the majority row, the report); the TSV and JSON Lines tasks through finetune -> measure. Two runs
    keep the job count near the smoke profile's (CI time)."""
    from transformers import AutoConfig

    full = profile(tmp_path / "full", tasks=["nli3"])
    light = profile(tmp_path / "light", tasks=["senti", "score"], variants=["finetune"], majority=False,
                    report=False)
    want = {"senti": ("f1", {"accuracy"}), "nli3": ("macro_f1", {"accuracy", "mcc"}), "score": ("pearson", {"spearman"})}
    for cfgfile in (full, light):
        cfg = yaml.safe_load(cfgfile.read_text())
        work = cfgfile.parent / "work"
        res = snakemake(work, cfgfile, "--cores", "2")
        logs = "\n".join(p.read_text()[-1500:] for p in work.rglob("*.log") if "error" in p.read_text().lower())
        assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-4000:]}\n{logs}"
        results, ckpts = work / cfg["results_dir"], work / cfg["checkpoints_dir"]
        variants = [*cfg["variants"], *(["majority"] if cfg["majority"] else [])]
        for task in cfg["tasks"]:
            metric, secondary = want[task]
            written = json.loads((results / task / "task_def.json").read_text())
            assert written["name"] == task and written["metric"] == metric
            # the fine-tuned checkpoint and every checkpoint built on it record the same declaration
            for ck in ckpts.joinpath(task).rglob("axformer_step.json"):
                assert json.loads(ck.read_text())["task_def"] == written, ck
            for variant in variants:
                rec = json.loads((results / task / "tiny-random" / variant / "seed0" / "metrics.json").read_text())
                assert rec["task"] == task and rec["metric"]["name"] == metric, (task, variant)
                assert set(rec["metric"]["secondary"]) == secondary
                assert rec["metric"]["n_dev"] == 12 and rec["metric"]["n_search"] == 12
                if variant != "majority":
                    assert rec["latency"][0]["speedup"] > 0 and rec["size"]["params_encoder"] > 0
            ft = AutoConfig.from_pretrained(ckpts / task / "tiny-random" / "finetune" / "seed0" / "ckpt")
            assert ft.num_labels == {"senti": 2, "nli3": 3, "score": 1}[task]
        again = snakemake(work, cfgfile, "-n")
        assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    work = tmp_path / "full" / "work" / "smoke"
    nli_int8 = json.loads((work / "results/nli3/tiny-random/finetune+distill+axformer+int8/seed0/metrics.json").read_text())
    assert nli_int8["quantize"]["dtype"] == "int8" and "distill" in nli_int8 and "search" in nli_int8
    peer = json.loads((work / "results/nli3/tiny-random/finetune+headprune/seed0/metrics.json").read_text())
    assert peer["baseline"]["info"]["n_removed"] == 1
    major = json.loads((work / "results/nli3/tiny-random/majority/seed0/metrics.json").read_text())
    assert major["predictor"]["value"] in (0, 1, 2)
    with open(work / "results" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["variant"] for r in rows) == sorted(["finetune+distill+axformer+int8", "finetune+headprune",
                                                         "majority"])
    assert {r["metric_name"] for r in rows} == {"macro_f1"} and (work / "figures" / "tables" / "nli3.md").is_file()
    log = (work / "logs/nli3/tiny-random/finetune/seed0/finetune.log").read_text()
    assert "nli3 finetune seed 0: dev macro_f1" in log


def _bad(root: Path, task: str, **change) -> Path:
    cfgfile = profile(root)
    cfg = yaml.safe_load(cfgfile.read_text())
    cfg["task_defs"][task].update(change)
    cfgfile.write_text(yaml.safe_dump(cfg))
    return cfgfile


@pytest.mark.slow
@pytest.mark.parametrize("task, change, key, what", [
    ("nli3", {"label": "gold_label"}, "label", "no column 'gold_label'"),
    ("senti", {"dev": "mine/missing.tsv"}, "dev", "missing data file"),
    ("nli3", {"labels": ["contradiction", "neutral"]}, "labels", "bad label 'entailment'"),
    ("score", {"dev": "EMPTY"}, "dev", "no data rows"),
    ("score", {"metric": "accuracy"}, "metric", "does not fit regression labels"),
    ("nli3", {"metric": "f1"}, "metric", "does not fit 3-class labels"),
])
def test_bad_declaration_refused_before_any_job(tmp_path, task, change, key, what):
    if change.get("dev") == "EMPTY":
        empty = tmp_path / "data" / "mine" / "empty.jsonl"
        empty.parent.mkdir(parents=True, exist_ok=True)
        empty.write_text("\n")
        change = {"dev": str(empty)}
    cfgfile = _bad(tmp_path, task, **change)
    res = snakemake(tmp_path / "work", cfgfile, "--cores", "1")
    err = res.stdout + res.stderr
    assert res.returncode != 0
    line = next((ln for ln in err.splitlines() if f"config key 'task_defs.{task}.{key}'" in ln), None)
    assert line is not None, err[-2000:]
    assert what in line and f"task {task}" in line
    if key != "metric":  # a file problem names the file
        decl = yaml.safe_load(cfgfile.read_text())["task_defs"][task]
        assert Path(decl[key if key == "dev" else "train"]).name in line, line
    assert "Building DAG" not in err and not (tmp_path / "work" / "smoke").exists()


def test_schema_task_def_matches_the_task_module():
    """The task declaration's shape is written in two places that must agree: the config schema's
    ``$defs/task_def`` (checked before the DAG) and axformer.taskdata.tasks (checked when a Task is built)."""
    from axformer.taskdata import tasks

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml")
                            .read_text())
    td = schema["$defs"]["task_def"]
    assert td["additionalProperties"] is False
    assert set(td["properties"]) == set(tasks.DECL_KEYS)
    assert set(td["properties"]["format"]["enum"]) == set(tasks.FORMATS)
    metrics = set(tasks.METRIC_KINDS) | set(tasks.QA_METRICS)
    assert set(td["properties"]["metric"]["enum"]) == metrics
    assert set(td["properties"]["secondary"]["items"]["enum"]) == metrics
    assert set(td["properties"]["hub"]["properties"]) == set(tasks.HUB_KEYS)
