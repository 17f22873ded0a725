"""Security and robustness (issue 17): no config value reaches a shell unquoted, every bad step argument or
model stops before any job with one `config key '<key>': ...` line (and the CLI refuses the same values),
checkpoints load only safetensors with their own tokenizer, metrics.json / step records meet a schema when
written and read, labels are finite, JSON never holds NaN, SIGTERM leaves no temp checkpoint folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from axformer.encoders import models
from axformer.records import record_schema, results
from axformer.cli import main
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
RULES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
SMOKE = REPO / "workflow" / "config" / "smoke.yaml"
MAJORITY = "smoke/results/mrpc/tiny-random/majority/seed0/metrics.json"

needs_cli = pytest.mark.skipif(shutil.which("axformer") is None, reason="the axformer console script is not installed")


def _snakemake(workdir: Path, *args: str, data_dir: Path):
    from test_workflow import snakemake  # the workflow tests' runner: same env, --directory workdir

    return snakemake(workdir, *args, data_dir=data_dir, timeout=300)


def _override(tmp_path: Path, cfg: dict) -> str:
    p = tmp_path / "override.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _created_outside(root: Path) -> list[Path]:
    """Files an injected `touch PWNED...` would have made, anywhere under ``root`` or in the repository."""
    return [*root.rglob("PWNED*"), *REPO.glob("PWNED*")]


def _assert_refused(res, key: str, workdir: Path) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0
    line = next((ln for ln in out.splitlines() if f"config key '{key}" in ln), None)
    assert line is not None, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert "Building DAG" not in out  # refused before the DAG, so before any job
    assert not (workdir / "smoke").exists()
    assert not _created_outside(workdir)


# ------------------------------------------------------------------------------- 1. shell injection
def test_every_rule_shell_substitution_is_quoted():
    """Each {...} in a rule's shell line is `:q`, or a params function that builds its flags with shlex."""
    prequoted = {"params.args", "params.split", "params.model", "params.data_dir", "params.quantize",
                 "params.measure", "params.match", "params.device", "params.task_def",
                 "params.bootstrap", "params.readme"}  # device, task_def: shlex-quoted in paths.smk; bootstrap: two int()
    # values; readme: "" or "--readme <shlex-quoted path>" (report.smk)
    seen = 0
    for path in RULES:
        text = path.read_text()
        blocks = re.findall(r"shell:\n((?:\s+\".*\"\n?)+)", text)
        if path.name == "steps.smk":  # one rule shape: its shell words are string pieces (parent_step_shell)
            blocks += re.findall(r"(?<![A-Za-z])\"[^\"\n]*\"", text)  # every plain (not f-) string literal
        for block in blocks:
            for field in re.findall(r"\{([^{}]+)\}", block):
                seen += 1
                assert field.endswith(":q") or field in prequoted, f"{path.name}: unquoted {{{field}}}"
    assert seen > 40


@pytest.mark.slow
@needs_cli
@pytest.mark.parametrize("override, key", [
    ("profile=smoke$(touch PWNED_profile)", "profile"),
    ("results_dir=smoke/results$(touch PWNED_res)", "results_dir"),
    ("checkpoints_dir=smoke/ck;touch PWNED_ck", "checkpoints_dir"),
    ("logs_dir=smoke/logs`touch PWNED_logs`", "logs_dir"),
    ("figures_dir=smoke/fig$(touch PWNED_fig)", "figures_dir"),
    ('models=["tiny-random$(touch PWNED_model)"]', "models"),
])
def test_injection_in_config_value_refused(tmp_path, data_dir, override, key):
    res = _snakemake(tmp_path, "--configfile", str(SMOKE), "--config", override, "--cores", "1", data_dir=data_dir)
    _assert_refused(res, key, tmp_path)


@pytest.mark.slow
@needs_cli
@pytest.mark.parametrize("steps, key", [
    ({"axformer": {"command": "approximate", "args": {"topk$(touch PWNED_arg)": 1}}}, "steps.axformer.args"),
    ({"finetune": {"command": "finetune", "args_per_task": {"mrpc": {"lr;touch PWNED_pt": 1}}}},
     "steps.finetune.args_per_task.mrpc"),
])
def test_injection_in_step_arg_name_refused(tmp_path, data_dir, steps, key):
    extra = _override(tmp_path, {"steps": steps})
    res = _snakemake(tmp_path, "--configfile", str(SMOKE), extra, "--cores", "1", data_dir=data_dir)
    _assert_refused(res, key, tmp_path)


@pytest.fixture
def hostile_data_dir(tmp_path, data_dir) -> Path:
    """The real data folder under a name full of shell syntax: a valid (existing) data_dir the schema cannot
    refuse, so only quoting keeps it from running."""
    link = tmp_path / "in" / "data $(touch PWNED_dd1); touch PWNED_dd2 `touch PWNED_dd3` 'q"
    link.parent.mkdir()
    link.symlink_to(Path(data_dir).resolve(), target_is_directory=True)
    return link


@pytest.mark.slow
@needs_cli
def test_hostile_data_dir_refused_before_any_job(tmp_path, data_dir, hostile_data_dir):
    """Issue 32: data_dir is repeated in every job's command line, which a cluster executor may re-parse in a
    shell, so quoting is not enough: a data_dir with shell syntax is refused (schema pattern) before the DAG."""
    extra = _override(tmp_path, {"data_dir": str(hostile_data_dir)})
    res = _snakemake(tmp_path / "run", "--configfile", str(SMOKE), extra, "--cores", "1", data_dir=data_dir)
    _assert_refused(res, "data_dir", tmp_path / "run")
    assert not _created_outside(tmp_path)


@pytest.mark.slow
@needs_cli
def test_hostile_axformer_data_env_refused_before_any_job(tmp_path, hostile_data_dir):
    """The same folder given through AXFORMER_DATA (data_dir: null) is refused too."""
    res = _snakemake(tmp_path / "run", "--configfile", str(SMOKE), "--config", "data_dir=null", "--cores", "1",
                     data_dir=hostile_data_dir)
    _assert_refused(res, "data_dir", tmp_path / "run")
    assert not _created_outside(tmp_path)


# ------------------------------------------------------------------- 2. step arguments, before any job
@pytest.mark.slow
@needs_cli
@pytest.mark.parametrize("cfg, key", [
    ({"steps": {"axformer": {"command": "approximate", "args": {"topk": -5}}}}, "steps.axformer.args.topk"),
    ({"steps": {"axformer": {"command": "approximate", "args": {"accept_frac": 2.0}}}},
     "steps.axformer.args.accept_frac"),
    ({"steps": {"axformer": {"command": "approximate", "args": {"mode": "fastest"}}}}, "steps.axformer.args.mode"),
    ({"steps": {"axformer": {"command": "approximate", "args": {"top_k": 8}}}}, "steps.axformer.args.top_k"),
    ({"steps": {"headprune": {"command": "baseline", "args": {"method": "nosuchmethod"}}}},
     "steps.headprune.args.method"),
    ({"steps": {"distill": {"command": "distill", "args": {"layers": "two"}}}}, "steps.distill.args.layers"),
    ({"steps": {"finetune": {"command": "finetune", "args_per_task": {"mrpc": {"epochs": -1}}}}},
     "steps.finetune.args_per_task.mrpc.epochs"),
    ({"models": ["nosuch-model-xyz"]}, "models[0]"),
])
def test_bad_step_value_stops_before_any_job(tmp_path, data_dir, cfg, key):
    res = _snakemake(tmp_path, "--configfile", str(SMOKE), _override(tmp_path, cfg), "--cores", "1",
                     data_dir=data_dir)
    _assert_refused(res, key, tmp_path)


def test_step_arg_names_come_from_the_cli_parser(monkeypatch):
    """A flag added to a CLI step is a valid config step argument without touching stepargs."""
    from axformer.steps import cliargs, stepargs

    add, help_ = cliargs.STEP_ARGS["approximate"]

    def add_more(p):
        add(p)
        p.add_argument("--probe-margin", type=float, default=0.0)

    monkeypatch.setitem(cliargs.STEP_ARGS, "approximate", (add_more, help_))
    stepargs.check_step_args("approximate", {"probe_margin": 0.1, "topk": 8})
    with pytest.raises(stepargs.StepArgError) as exc:
        stepargs.check_step_args("approximate", {"probe_margin": "wide"})
    assert exc.value.key == "probe_margin"


def test_rule_set_flag_is_not_a_step_arg():
    from axformer.steps.stepargs import StepArgError, check_step_args

    with pytest.raises(StepArgError, match="config `split`") as exc:
        check_step_args("finetune", {"max_length": 64})
    assert exc.value.key == "max_length"


@pytest.mark.slow
@needs_cli
def test_nested_config_value_is_typed(tmp_path, data_dir):
    res = _snakemake(tmp_path, "--configfile", str(SMOKE), "--config", "split={search_frac: 0.2, search_max: 8}",
                     "-n", "-p", data_dir=data_dir)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    ft = next(ln for ln in res.stdout.splitlines() if "Shell command: axformer finetune" in ln)
    assert "--search-frac 0.2 --search-max 8 --train-max 32" in ft  # train_max: the profile's, kept


@pytest.mark.slow
@needs_cli
def test_nested_config_bad_value_named(tmp_path, data_dir):
    res = _snakemake(tmp_path, "--configfile", str(SMOKE), "--config", "steps={axformer: {args: {topk: -5}}}",
                     "--cores", "1", data_dir=data_dir)
    _assert_refused(res, "steps.axformer.args.topk", tmp_path)


# the CLI refuses the same values, before it reads the parent (which does not exist here)
@pytest.mark.parametrize("argv, msg", [
    (["approximate", "--topk", "-5"], "topk"),
    (["approximate", "--accept-frac", "2.0"], "accept_frac"),
    (["approximate", "--topk", "1.5"], "topk"),
    (["baseline", "--method", "nosuchmethod"], "unknown baseline method"),
])
def test_cli_refuses_bad_step_value(tmp_path, capsys, argv, msg):
    out = tmp_path / "o"
    argv = [*argv, "--parent", str(tmp_path / "missing"), "--ckpt", str(out / "ck"), "--metrics", str(out / "s.json")]
    if argv[0] == "approximate":
        argv += ["--decisions", str(out / "d.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("axformer: error:") and msg in err[0], err
    assert "missing" not in err[0] and not out.exists()


def test_cli_refuses_bad_mode(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["approximate", "--mode", "fastest", "--parent", "p", "--ckpt", "c", "--metrics", "m", "--decisions", "d"])
    assert exc.value.code == 2 and "invalid choice: 'fastest'" in capsys.readouterr().err


def test_cli_refuses_model_not_available_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["finetune", "--task", "sst2", "--model", "nosuch-model-xyz", "--ckpt", str(tmp_path / "ck"),
            "--metrics", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the local Hugging Face cache" in err[0]


def test_cli_refuses_nonpositive_epochs_before_loading(tmp_path, capsys):
    argv = ["finetune", "--task", "sst2", "--model", models.TINY, "--epochs", "0", "--ckpt", str(tmp_path / "ck"),
            "--metrics", str(tmp_path / "m.json")]
    assert main(argv) == 2
    assert "train.epochs must be > 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- 3. checkpoints
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, data_dir) -> Path:
    model, tok = models.load_pretrained(models.TINY, get_task("sst2"))
    split = {"seed": 0, "search_frac": 0.15, "search_max": 8, "train_max": 16, "dev_max": 8, "max_length": 32,
             "data_dir": str(data_dir), "allow_hub": False}
    return models.save_checkpoint(model, tok, tmp_path_factory.mktemp("tiny") / "ck",
                                  extra={"split": split, "task": "sst2", "model_spec": models.TINY,
                                         "variant": "finetune"})


@pytest.fixture
def ckpt(tmp_path, tiny_ckpt) -> Path:
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "ck"))


def test_checkpoint_without_tokenizer_json_refused(ckpt):
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="tokenizer"):
        models.load_checkpoint(ckpt)


def test_checkpoint_without_any_tokenizer_file_refused(ckpt):
    for name in ("tokenizer.json", "vocab.txt"):
        (ckpt / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="lacks its tokenizer files"):
        models.load_checkpoint(ckpt)


def test_checkpoint_with_foreign_vocabulary_refused(ckpt):
    (ckpt / "tokenizer.json").unlink()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(45))]
    (ckpt / "vocab.txt").write_text("\n".join(words) + "\n")
    with pytest.raises(ConfigError, match=r"embedding has \d+ rows"):
        models.load_checkpoint(ckpt)


def test_pickle_only_checkpoint_refused_in_one_line(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ConfigError, match="pytorch_model.bin") as exc:
        models.load_checkpoint(ckpt)
    assert "\n" not in str(exc.value)


def test_pickle_only_model_folder_refused_by_cli(tmp_path, ckpt, capsys):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"never unpickled")
    argv = ["finetune", "--task", "sst2", "--model", str(ckpt), "--ckpt", str(tmp_path / "out"),
            "--metrics", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pickle" in err[0] and "Traceback" not in err[0]


# ------------------------------------------------------------------------------- 4. record schemas
COMMITTED = sorted((REPO / "results").rglob("metrics.json"))


@pytest.mark.slow
@pytest.mark.parametrize("tree", sorted({p.relative_to(REPO / "results").parts[0] if len(p.relative_to(REPO / "results").parts) > 5
                                         else "default" for p in COMMITTED}))
def test_committed_metrics_json_validates(tree):
    """One test per committed results tree (results/<profile>/, "default": results/<task>/); names every bad file."""
    failed = []
    for path in COMMITTED:
        parts = path.relative_to(REPO / "results").parts
        if (parts[0] if len(parts) > 5 else "default") == tree:
            try:
                record_schema.load(path, "metrics")
            except ConfigError as exc:
                failed.append(str(exc)[:500])
    assert not failed, "\n".join(failed)


def _record() -> dict:
    return json.loads(COMMITTED[0].read_text()) if COMMITTED else pytest.skip("no committed metrics.json")


def _write_run(root: Path, rec) -> Path:
    p = root / "sst2" / "minilm" / "finetune" / "seed0" / "metrics.json"
    p.parent.mkdir(parents=True)
    p.write_text(rec if isinstance(rec, str) else json.dumps(rec))
    return p


def test_report_refuses_empty_metrics_json_in_one_line(tmp_path, capsys):
    p = _write_run(tmp_path / "res", {})
    assert main(["report", "--results", str(tmp_path / "res"), "--figures", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and "key 'task' is missing" in err[0]


def test_report_refuses_non_number_metric(tmp_path):
    from axformer.reporting.report import collect

    rec = _record()
    rec["metric"]["dev"] = "high"
    p = _write_run(tmp_path, rec)
    with pytest.raises(ConfigError, match=re.escape(f"{p}: key 'metric.dev'")):
        collect(tmp_path)


def test_report_refuses_nan_literal(tmp_path):
    from axformer.reporting.report import collect

    _write_run(tmp_path, json.dumps(_record()).replace('"dev": ', '"dev": NaN, "x": ', 1))
    with pytest.raises(ConfigError, match="NaN"):
        collect(tmp_path)


def test_additional_keys_at_the_leaves_are_allowed():
    rec = _record()
    rec["predictions"] = {"file": "preds.npy"}
    rec["latency"] = [{**rec["latency"][0], "p50_ci_ms": [1.0, 2.0]}] if rec["latency"] else None
    rec["metric"]["dev_ci"] = [0.1, 0.2]
    record_schema.check(rec, "metrics", "x/metrics.json")


def test_results_write_refuses_nan_metric(tmp_path):
    rec = _record()
    rec["metric"]["dev"] = math.nan
    with pytest.raises(ConfigError, match="key 'metric.dev'"):
        results.write(tmp_path / "metrics.json", rec)
    assert not (tmp_path / "metrics.json").exists()


def test_atomic_write_json_refuses_nan(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'a\[1\]'"):
        atomic_write_json(tmp_path / "x.json", {"a": [1.0, math.inf]})
    assert not list(tmp_path.iterdir())


def test_empty_step_record_of_parent_refused(tmp_path, ckpt, capsys):
    (ckpt / "axformer_step.json").write_text("{}")
    out = tmp_path / "o"
    argv = ["approximate", "--parent", str(ckpt), "--ckpt", str(out / "ck"), "--metrics", str(out / "s.json"),
            "--decisions", str(out / "d.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "axformer_step.json: key 'split' is missing" in err[0]


def test_zero_byte_step_record_of_parent_refused(tmp_path, ckpt, capsys):
    (ckpt / "axformer_step.json").write_text("")
    argv = ["distill", "--parent", str(ckpt), "--ckpt", str(tmp_path / "ck"), "--metrics", str(tmp_path / "s.json")]
    assert main(argv) == 2
    assert "axformer_step.json is not valid JSON" in capsys.readouterr().err


def test_measure_refuses_bad_step_json(tmp_path, ckpt, capsys):
    bad = tmp_path / "step.json"
    bad.write_text(json.dumps({"size": {"params_total": "many"}}))
    argv = ["measure", "--task", "sst2", "--variant-name", "finetune", "--baseline", str(ckpt), "--variant",
            str(ckpt), "--step-json", str(bad), "--metrics", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{bad}: key 'size." in err
    assert not (tmp_path / "m.json").exists()


# ------------------------------------------------------------------------------------ 5. labels
@pytest.mark.parametrize("label", ["nan", "inf", "-inf", "-0.5", "5.25"])
def test_stsb_label_must_be_finite_in_range(tmp_path, data_dir, label):
    from axformer.taskdata.data import read_tsv

    head, row = (Path(data_dir) / "glue" / "STS-B" / "dev.tsv").read_text().splitlines()[:2]
    fields = row.split("\t")
    fields[-1] = label
    p = tmp_path / "dev.tsv"
    p.write_text(f"{head}\n{row}\n" + "\t".join(fields) + "\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(p))}:3: label '{re.escape(label)}'"):
        read_tsv(get_task("stsb"), p)


# ---------------------------------------------------------------------------- 6. temp folders
_SIGTERM_CHILD = """
import os, signal, sys
from axformer.encoders import models
from axformer.cli import Terminated, install_signal_handlers
from axformer.encoders.models import TINY_CONFIG
from transformers import BertConfig, BertForSequenceClassification


class KillingTokenizer:  # stands in for a tokenizer: SIGTERMs its own process while the checkpoint is half written
    def save_pretrained(self, path):
        os.kill(os.getpid(), signal.SIGTERM)


install_signal_handlers()
model = BertForSequenceClassification(BertConfig(vocab_size=100, **TINY_CONFIG))
try:
    models.save_checkpoint(model, KillingTokenizer(), sys.argv[1])
except Terminated:
    sys.exit(143)
sys.exit(0)
"""


def test_sigterm_while_saving_leaves_no_temp_folder(tmp_path):
    # in a process of its own, as a CLI step would be: a SIGTERM delivered to the whole pytest process could
    # end the test session instead of one test
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([sys.executable, "-c", _SIGTERM_CHILD, str(out / "ckpt")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert res.returncode == 143, res.stderr[-2000:]  # Terminated raised by the handler, not a plain kill (-15)
    assert list(out.iterdir()) == []


def test_stale_temp_folder_removed_on_next_save(tmp_path):
    from axformer.encoders.models import TINY_CONFIG
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    stale = tmp_path / ".ckpt.tmpk1ll3d"
    (stale / "sub").mkdir(parents=True)
    other = tmp_path / ".other.tmpx"  # another checkpoint's: not touched
    other.mkdir()
    tok = AutoTokenizer.from_pretrained(str(models.embedded_model_dir()))
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, **TINY_CONFIG))
    models.save_checkpoint(model, tok, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmpx", "ckpt"]
