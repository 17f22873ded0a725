"""Re-rendering the report writes the same bytes (issue 33): tables, CSVs, PDF + PNG figures and the README's
generated verdict block; on a fresh clone the default profile's report rule leaves `git status` clean (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from axformer.reporting import readme_block
from axformer import stats as S
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError

REPO = Path(__file__).resolve().parents[1]
README_TEXT = f"# title\n\nabove\n\n{readme_block.BEGIN}\nstale\n{readme_block.END}\n\nbelow\n"


def _run(root: Path, task: str, variant: str, seed: int, preds: np.ndarray, labels: np.ndarray, enc: int,
         speed: float, decisions: dict | None = None) -> None:
    """One run folder with metrics.json and predictions.npz (per-row predictions and timing iterations), so the
    render exercises the bootstrap intervals too."""
    run = root / task / "minilm" / variant / f"seed{seed}"
    run.mkdir(parents=True)
    lat = [{"device": "cpu", "batch_size": b, "seq_len": 128, "p50_ms": 10.0 / speed, "p90_ms": 11.0, "mean_ms": 10.0,
            "std_ms": 0.1, "n_iters": 40, "threads": 2, "baseline_p50_ms": 10.0, "speedup": speed} for b in (1, 32)]
    rec = {"task": task, "model": "minilm", "variant": variant, "seed": seed, "profile": "t", "git_commit": None,
           "created": "x", "metric": {"name": "accuracy", "dev": float((preds == labels).mean()), "n_dev": len(labels)},
           "size": {"params_total": enc + 100, "params_encoder": enc, "bytes_on_disk": enc * 4},
           "latency": lat, "memory": None, "env": {}, "train": {"wall_s": 12.5}}
    (run / "metrics.json").write_text(json.dumps(rec))
    if decisions is not None:
        (run / "decisions.json").write_text(json.dumps(decisions))
    rng = np.random.default_rng(seed)
    base_ms = 10.0 + rng.gamma(2.0, 0.2, 40)
    S.write_predictions(run / "predictions.npz", get_task(task), np.arange(len(labels)), preds=preds, labels=labels,
                        iter_ms={b: {"baseline": base_ms, "variant": base_ms / speed} for b in (1, 32)})


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """One task, three seeds (the over-seeds interval path), a search with decisions.json (a removal map)."""
    root = tmp_path / "results"
    labels = np.array([1, 0] * 50)
    decisions = {"hard_attention": {"k": 30, "layers_selected": [1]}, "removed": ["L5.ffn", "L2.head3"],
                 "n_layers": 6, "n_heads": 12, "n_groups": 12,
                 "candidates": [{"element": "L5.ffn", "phase": "prune", "layer": 5, "kind": "ffn", "index": None,
                                 "loss": 0.3, "frac_no_worse": 0.6, "class": "harmful", "accepted": True}]}
    for seed in (0, 1, 2):
        ft = labels.copy()
        ft[: 20 + seed] = 1 - ft[: 20 + seed]
        ax = ft.copy()
        ax[30: 33 + seed] = 1 - ax[30: 33 + seed]
        _run(root, "sst2", "finetune", seed, ft, labels, 1000, 1.0)
        _run(root, "sst2", "finetune+axformer", seed, ax, labels, 800, 1.2 + 0.01 * seed,
             decisions=decisions if seed == 0 else None)
    return root


def _args(results: Path, out: Path) -> list[str]:
    out.mkdir(parents=True)
    (out / "README.md").write_text(README_TEXT)
    return ["report", "--results", str(results), "--figures", str(out / "figures"), "--summary",
            str(out / "summary.csv"), "--resamples", "1000", "--readme", str(out / "README.md")]


def _render_here(results: Path, out: Path) -> None:
    from axformer.cli import main

    assert main(_args(results, out)) == 0


def _render_apart(results: Path, out: Path, hash_seed: str) -> None:
    """`axformer report` in a fresh interpreter with a fixed hash seed (this one's is random): set and dict order
    must not leak into a file."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "axformer.cli", *_args(results, out)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow  # renders the default tree's report twice (~10 s): the slow tier
def test_report_renders_the_same_bytes_twice(results: Path, tmp_path: Path) -> None:
    _render_here(results, tmp_path / "a")
    _render_apart(results, tmp_path / "b", "1")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert {"summary.csv", "verdicts.csv", "README.md", "figures/verdicts.pdf", "figures/verdicts.png",
            "figures/tables/verdicts.md"} <= set(a)
    assert any(k.startswith("figures/removal_map_") for k in a)
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"re-rendering changed {differ}"
    # no creation dates in the figures (a date would make every re-render differ on another day)
    pdf = a["figures/verdicts.pdf"]
    assert b"/CreationDate" not in pdf and b"/ModDate" not in pdf
    png = a["figures/verdicts.png"]
    assert b"tIME" not in png and b"Creation Time" not in png
    # the README kept what lies outside its markers and got the generated block
    readme = a["README.md"].decode()
    assert readme.startswith("# title\n\nabove\n\n") and readme.endswith("\n\nbelow\n") and "stale" not in readme
    assert "| sst2 (accuracy) | `finetune+axformer` | 3 |" in readme


def test_readme_block_is_generated_from_verdicts_csv(tmp_path: Path) -> None:
    csv = tmp_path / "results" / "verdicts.csv"
    csv.parent.mkdir()
    csv.write_text("task,model,variant,kind,n_seeds,metric,base_value,value,delta,ci_low,ci_high,encoder_ratio,"
                   "verdict_accuracy,verdict_speed,verdict_size\n"
                   "mrpc,minilm,finetune,reference,1,f1,0.8,0.8,0.0,,,1.0,n/a,within noise,same\n"
                   "mrpc,minilm,finetune+axformer,AxFormer,3,f1,0.8,0.81234,0.01234,-0.0021,0.02,0.8512,"
                   "within noise,faster,smaller\n"
                   "mrpc,minilm,majority,reference,1,f1,0.8,0.7,-0.1,,,,less accurate,n/a,n/a\n")
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    readme_block.update(readme, csv)
    text = readme.read_text()
    assert "| mrpc (f1) | `finetune+axformer` | 3 | 0.800 | 0.812 | +0.012 [−0.002, +0.020] | 0.85 | within noise | faster | smaller |" in text
    assert "| mrpc (f1) | `majority` | 1 | 0.800 | 0.700 | −0.100 | – |" in text
    assert "| `finetune` |" not in text  # the reference row is left out (no speed column)
    assert "Generated from `results/verdicts.csv`" in text  # named relative to the README, whatever the working directory
    before = readme.stat().st_mtime_ns
    readme_block.update(readme, csv)  # nothing changed: the file is not rewritten
    assert readme.read_text() == text and readme.stat().st_mtime_ns == before


@pytest.mark.parametrize("text", ["# no markers\n", f"{readme_block.END}\n{readme_block.BEGIN}\n",
                                  f"{readme_block.BEGIN}\n{readme_block.BEGIN}\n{readme_block.END}\n"])
def test_readme_without_one_marker_pair_is_refused_untouched(tmp_path: Path, text: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(ConfigError, match="README.md"):
        readme_block.check(readme)
    with pytest.raises(ConfigError, match="README.md"):
        readme_block.update(readme, tmp_path / "verdicts.csv")
    assert readme.read_text() == text
    with pytest.raises(ConfigError, match="cannot read"):
        readme_block.check(tmp_path / "missing.md")


def test_cli_checks_the_readme_before_rendering(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from axformer.cli import main

    (tmp_path / "results").mkdir()
    (tmp_path / "README.md").write_text("# no markers\n")
    assert main(["report", "--results", str(tmp_path / "results"), "--figures", str(tmp_path / "figures"),
                 "--readme", str(tmp_path / "README.md")]) == 2
    assert "README.md: needs one line" in capsys.readouterr().err
    assert not (tmp_path / "figures").exists() and not (tmp_path / "results" / "summary.csv").exists()


@pytest.mark.slow
def test_fresh_clone_report_rule_leaves_the_tree_clean(tmp_path: Path, data_dir: Path) -> None:
    """Clone the committed tree, run the default profile's report rule as the README's main command does, and
    check that git sees no change: every committed figure, table, CSV and the README block re-render to the
    same bytes (with this environment's matplotlib / fontTools: docs/DESIGN.md §4)."""
    if shutil.which("git") is None or shutil.which("snakemake") is None:
        pytest.skip("needs git and snakemake")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=300)
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(["snakemake", "--cores", "1", "--forcerun", "report"], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "report" in res.stderr  # the rule ran (not just "nothing to be done")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == "", f"the report rule changed tracked files:\n{status.stdout}"


def test_named_blocks_with_speed_and_the_command_line(tmp_path: Path) -> None:
    csv = tmp_path / "v.csv"
    csv.write_text("task,model,variant,kind,n_seeds,metric,base_value,value,delta,ci_low,ci_high,speed_batch,"
                   "speedup_b8,speedup_b8_low,speedup_b8_high,encoder_ratio,verdict_accuracy,verdict_speed,verdict_size\n"
                   "sst2,m,finetune,reference,1,accuracy,0.9,0.9,0.0,,,8,1.004,0.99,1.02,1.0,n/a,within noise,same\n"
                   "sst2,m,finetune+prune,AxFormer,1,accuracy,0.9,0.91,0.01,0.0,0.02,8,1.234,1.2,1.25,0.9,"
                   "within noise,faster,smaller\n")
    doc = tmp_path / "RESULTS.md"
    doc.write_text("a\n<!-- verdicts:begin one speed -->\n<!-- verdicts:end one -->\nb\n<!-- verdicts:begin two -->\n"
                   "x\n<!-- verdicts:end two -->\nc\n")
    assert readme_block.main([str(doc), f"one={csv}", f"two={csv}"]) == 0
    text = doc.read_text()
    one, two = text.split("<!-- verdicts:end one -->")
    assert "| sst2 (accuracy) | `finetune` | 1 | 0.900 | 0.900 | +0.000 | 1.00× [0.99, 1.02] (b8) |" in one
    assert "| `finetune+prune` | 1 | 0.900 | 0.910 | +0.010 [+0.000, +0.020] | 1.23× [1.20, 1.25] (b8) | 0.90 |" in one
    assert "| `finetune` |" not in two and "speedup" not in two and "\nx\n" not in two
    assert text.startswith("a\n<!-- verdicts:begin one speed (generated") and text.endswith("-->\nc\n")
    assert readme_block.main([str(doc), f"three={csv}"]) == 2 and doc.read_text() == text  # no such block


def test_results_md_blocks_match_the_committed_verdicts() -> None:
    """docs/RESULTS.md's tables are the committed verdicts.csv files, regenerated: re-running the command its
    header gives changes nothing."""
    doc = REPO / "docs" / "RESULTS.md"
    text = doc.read_text()

    blocks = re.findall(r"<!-- verdicts:begin (\w+)[^(]*\(generated by axformer.reporting.readme_block from ([^;]+);", text)
    assert {n for n, _ in blocks} >= {"default", "bench", "base", "squad_local", "bench_v1"}
    for name, source in blocks:
        csv = (doc.parent / source).resolve()
        start = text.index(f"<!-- verdicts:begin {name}")
        end = text.index(f"<!-- verdicts:end {name} -->") + len(f"<!-- verdicts:end {name} -->")
        speed = "speed" in text[start:text.index("(", start)]
        expected = readme_block.block(readme_block.read_verdicts(csv), source, speed, name)
        assert text[start:end] == expected, f"docs/RESULTS.md block {name} is stale: run the command in its header"
