"""A refactor changes no result: the smoke DAG run today gives the same dev and search metrics, sizes and
AxFormer decisions as the committed reference tree results/slurm_smoke (the same smoke profile, run through the
SLURM profile before the package moved into subpackages, issue 37). Timings, wall times, host facts and the
commit differ between any two runs and are not compared; a least-squares peer (fisher) agrees to 1e-9."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "slurm_smoke"
UNTIMED_SKIP = ("wall_s", "created", "git_commit", "timing", "pid")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("axformer") is None, reason="the axformer console script is not installed")]


def close(a, b, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ (floats to 1e-9 relative), as paths into the JSON."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - set(UNTIMED_SKIP)
        return [d for k in sorted(keys) for d in close(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def test_close_finds_a_difference():
    assert close({"a": 1.0, "wall_s": 3}, {"a": 1.0 + 1e-12, "wall_s": 4}) == []
    assert close({"a": [1, 2]}, {"a": [1, 3]}) == [".a[1]: 2 vs 3"]


@pytest.fixture(scope="module")
def smoke_tree(tmp_path_factory, data_dir) -> Path:
    work = tmp_path_factory.mktemp("smoke_reference")
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
                          "--configfile", str(REPO / "workflow" / "config" / "smoke.yaml"), "--cores", "2"],
                         capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return work / "smoke" / "results"


def test_smoke_results_match_the_committed_reference(smoke_tree):
    ref = sorted(REFERENCE.rglob("metrics.json"))
    assert len(ref) == 5  # four variants and majority
    for path in ref:
        rel = path.relative_to(REFERENCE)
        a, b = json.loads(path.read_text()), json.loads((smoke_tree / rel).read_text())
        assert close(a["metric"], b["metric"]) == [], rel
        assert a["size"] == b["size"], rel
        for block in ("search", "baseline", "distill", "train", "data"):
            if block in a:
                assert close(a[block], b[block]) == [], (rel, block)
    decisions = sorted(REFERENCE.rglob("decisions.json"))
    assert decisions
    for path in decisions:
        rel = path.relative_to(REFERENCE)
        assert close(json.loads(path.read_text()), json.loads((smoke_tree / rel).read_text())) == [], rel
