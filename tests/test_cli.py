"""CLI bad-input paths: one clear message, exit 2, no partial metrics.json; plus one real MiniLM run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from axformer.encoders import models
from axformer.cli import main
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError


def _ft(tmp_path, *extra, task="sst2", model=models.TINY):
    return ["finetune", "--task", task, "--model", model, "--train-max", "16", "--search-max", "8",
            "--dev-max", "8", "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--no-progress",
            "--ckpt", str(tmp_path / "ck"), "--metrics", str(tmp_path / "m" / "metrics.json"), *extra]


def test_unknown_task(tmp_path, data_dir, capsys):
    assert main(_ft(tmp_path, "--data-dir", str(data_dir), task="sst5")) == 2
    err = capsys.readouterr().err
    assert "unknown task 'sst5'" in err and "Traceback" not in err
    assert not (tmp_path / "m" / "metrics.json").exists()


def test_missing_data_dir(tmp_path, capsys):
    assert main(_ft(tmp_path, "--data-dir", str(tmp_path / "nodata"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_unknown_model_folder(tmp_path, data_dir, capsys):
    assert main(_ft(tmp_path, "--data-dir", str(data_dir), model=str(tmp_path / "no" / "model"))) == 2
    assert "model folder" in capsys.readouterr().err


def test_unwritable_output(tmp_path, data_dir, capsys):
    if os.geteuid() == 0:
        # root ignores permission bits: make the parent a file instead, which nobody can write into
        blocker = tmp_path / "ro"
        blocker.write_text("x")
        args = _ft(tmp_path, "--data-dir", str(data_dir))
        args[args.index("--metrics") + 1] = str(blocker / "metrics.json")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        args = _ft(tmp_path, "--data-dir", str(data_dir))
        args[args.index("--metrics") + 1] = str(ro / "metrics.json")
    assert main(args) == 2
    assert "not writable" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


def test_negative_seed(tmp_path, data_dir, capsys):
    assert main(_ft(tmp_path, "--data-dir", str(data_dir), "--seed", "-1")) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err


def test_checkpoint_without_weights_and_corrupt(tmp_path, tokenizer):
    model, tok = models.load_pretrained(models.TINY, get_task("sst2"))
    ck = models.save_checkpoint(model, tok, tmp_path / "ck")
    m2, _ = models.load_checkpoint(ck)  # round trip works
    (ck / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="corrupt"):
        models.load_checkpoint(ck)
    (ck / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no model.safetensors"):
        models.load_checkpoint(ck)
    with pytest.raises(ConfigError, match="no config.json"):
        models.load_checkpoint(tmp_path)


@pytest.mark.slow
def test_tiny_finetune_end_to_end_schema(tmp_path, data_dir):
    """Through the installed console script, as a workflow rule calls it."""
    env = {**os.environ, "AXFORMER_DATA": str(data_dir)}
    proc = subprocess.run([sys.executable, "-m", "axformer.cli", *_ft(tmp_path, task="mrpc")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "m" / "metrics.json").read_text())
    for key in ("task", "model", "variant", "seed", "profile", "git_commit", "created", "metric", "size",
                "latency", "memory", "env", "train", "data"):
        assert key in rec
    assert rec["metric"]["name"] == "f1" and 0.0 <= rec["metric"]["dev"] <= 1.0
    assert rec["size"]["params_encoder"] < rec["size"]["params_total"]
    assert rec["data"]["n_train"] == 16 and rec["train"]["wall_s"] > 0
    m, _ = models.load_checkpoint(tmp_path / "ck")
    assert m.config.num_labels == 2


@pytest.mark.slow
def test_finetune_select_records_epochs_and_keeps_the_best(tmp_path, data_dir, capsys):
    """--select metric: one search-split score per epoch in metrics.json, and the kept epoch is the best one."""
    assert main(_ft(tmp_path, "--data-dir", str(data_dir), "--epochs", "3", "--lr", "1e-3",
                    "--select", "metric")) == 0
    rec = json.loads((tmp_path / "m" / "metrics.json").read_text())
    scores = rec["train"]["select_scores"]
    assert [s["epoch"] for s in scores] == [1.0, 2.0, 3.0] and rec["train"]["select"] == "metric"
    best = max(range(3), key=lambda i: (scores[i]["score"], -i))
    assert rec["train"]["selected_epoch"] == scores[best]["epoch"]
    # the saved model is the kept epoch's: its search metric is that epoch's score (minus the tie-break term)
    assert rec["metric"]["search"] == pytest.approx(scores[best]["score"], abs=1e-5)
    assert "kept epoch" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse refuses a value outside the choices, naming them
        main(_ft(tmp_path, "--data-dir", str(data_dir), "--select", "dev"))
    assert exc.value.code == 2 and "invalid choice: 'dev'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_real_minilm_few_rows(tmp_path, data_dir):
    """The embedded MiniLM, offline, on a few dozen real SST-2 rows."""
    args = _ft(tmp_path, "--data-dir", str(data_dir), model="minilm")
    assert main(args) == 0
    rec = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert rec["model"] == "minilm" and rec["size"]["params_total"] > 20_000_000
