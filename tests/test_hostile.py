"""Hostile inputs, round two (issue 32): step-argument values checked for content and against the baseline's own
declaration, one numeric rule (finite, bounded) for every config number and CLI flag, SIGTERM at start-up, the
checkpoint save that is interrupted between its renames. Fast checks call the validation functions; the
Snakemake ones (marked slow) show the same refusals before the DAG with the key named."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from axformer import bounds
from axformer.cli import main
from axformer.steps.stepargs import StepArgError, check_step_args
from axformer.utils import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "workflow" / "config" / "smoke.yaml"
NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------- step-argument content
@pytest.mark.parametrize("arg, words", [
    (["flops_frac=0.5", "--ckpt=/elsewhere"], "may not begin with '-'"),
    (["flops_frac=0.5", "--metrics", "x.json"], "may not begin with '-'"),
    (["bogus=1"], "unknown config keys ['bogus']"),
    (["flops_frac=2"], "flops_frac must be a number in (0, 1]"),
    (["flops_frac=NaN"], "finite"),
    (["flops_frac=Infinity"], "finite"),
    (["flops_frac=0.5", "seq_len=$(touch M)"], "seq_len must be"),
    (["flops_frac=0.5", "max_rows=2.5"], "max_rows must be an integer"),
    (["flops_frac=0.5", "tune=maybe"], "tune must be true or false"),
    (["flops_frac=0.5", "split=dev"], "dev is for reporting only"),
])
def test_baseline_arg_checked_against_the_method_declaration(arg, words):
    with pytest.raises(StepArgError) as exc:
        check_step_args("baseline", {"method": "fisher", "arg": arg})
    assert exc.value.key == "arg" and words in str(exc.value), str(exc.value)


def test_baseline_arg_good_values_pass():
    check_step_args("baseline", {"method": "fisher", "arg": ["flops_frac=0.5", "seq_len=mean", "tune=false"]})
    check_step_args("baseline", {"method": "headprune", "n_heads": 2, "arg": ["step_heads=1"]})
    check_step_args("baseline", {"method": "layerdrop", "k": 1, "epochs": 0})


def test_baseline_flag_the_method_does_not_take_is_refused_before_any_job():
    with pytest.raises(StepArgError, match=r"headprune: unknown config keys \['k'\]") as exc:
        check_step_args("baseline", {"method": "headprune", "k": 2})
    assert exc.value.key == "k"


@pytest.mark.parametrize("command, args", [
    ("approximate", {"mode": "-prune"}),
    ("distill", {"pretrained": "--ckpt=/x"}),
    ("finetune", {"select": "-metric"}),
])
def test_text_value_beginning_with_dash_refused(command, args):
    with pytest.raises(StepArgError, match="may not begin with '-'"):
        check_step_args(command, args)


def test_cli_refuses_smuggled_option_in_arg_before_loading(tmp_path, capsys):
    """The job itself (no workflow check) refuses the same, before it reads the (absent) parent."""
    rc = main(["baseline", "--method", "fisher", "--parent", str(tmp_path / "none"), "--ckpt", str(tmp_path / "c"),
               "--metrics", str(tmp_path / "m.json"), "--arg", "flops_frac=NaN"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "flops_frac" in err[0], err
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------- the declared-argument mechanism
def test_every_builtin_baseline_declares_its_args_and_parses_with_the_shared_parser():
    import baselines
    from baselines.args import ArgSpec, declared

    for name in baselines.BUILTIN:
        spec = declared(name)
        assert spec and all(isinstance(s, ArgSpec) for s in spec.values()), name
        assert {"seed", "progress"} <= set(spec), name
        src = (REPO / "baselines" / f"{name}.py").read_text()
        assert f'parse_args("{name}", ARGS, cfg)' in src, name  # the job parses with the same declaration


def test_argspec_rules():
    from baselines.args import ArgSpec

    s = ArgSpec(int, 0, 10)
    assert s.parse("m", "k", 3.0) == 3 and s.parse("m", "k", None) is None
    for bad in (3.5, True, "3", NAN, 11, -1):
        with pytest.raises(ConfigError, match=r"m: k must be an integer in \[0, 10\]"):
            s.parse("m", "k", bad)
    f = ArgSpec(float, 0.0, 1.0, exclusive_low=True)
    for bad in (0.0, NAN, INF, 1.5):
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            f.parse("m", "x", bad)
    assert ArgSpec(bool).parse("m", "b", "No") is False
    with pytest.raises(ConfigError, match="plain text"):
        ArgSpec(str).parse("m", "t", "a b")
    with pytest.raises(TypeError, match="both bounds"):
        ArgSpec(float, 0.0)


# ------------------------------------------------------------------------------- one numeric rule: CLI flags
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from axformer.steps.cliargs import build_parser

    p = build_parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_numeric_cli_flag_has_a_bounded_range():
    """A numeric flag added without a range in axformer/bounds.py would escape the rule."""
    missing = sorted({f"{step} --{a.dest}" for step, sp in _subparsers().items() for a in sp._actions
                      if a.type in (int, float) and bounds.bound_of(step, a.dest) is None})
    assert not missing, f"add ranges to axformer/bounds.py FLAG_BOUNDS for {missing}"
    assert all(math.isfinite(b.high) for b in bounds.FLAG_BOUNDS.values())


@pytest.mark.parametrize("command, key, value", [
    ("finetune", "lr", NAN), ("finetune", "lr", INF), ("finetune", "epochs", NAN), ("finetune", "epochs", INF),
    ("approximate", "groups", 100_000_000), ("approximate", "less_important", NAN),
    ("approximate", "accept_margin", INF), ("approximate", "lat_seconds", INF), ("approximate", "topk", "nan"),
    ("distill", "temperature", INF), ("distill", "lr", INF), ("baseline", "epochs", NAN),
])
def test_non_finite_or_huge_step_arg_refused_with_its_key(command, key, value):
    args = {"method": "layerdrop", "k": 1, key: value} if command == "baseline" else {key: value}
    with pytest.raises(StepArgError) as exc:
        check_step_args(command, args)
    assert exc.value.key == key, str(exc.value)


@pytest.mark.parametrize("argv, flag", [
    (["measure", "--min-seconds", "inf"], "--min-seconds"),
    (["measure", "--min-seconds", "nan"], "--min-seconds"),
    (["measure", "--seq-len", "100000000"], "--seq-len"),
    (["approximate", "--lat-seconds", "inf"], "--lat-seconds"),
    (["finetune", "--seed", "99999999999"], "--seed"),
    (["finetune", "--search-frac", "nan"], "--search-frac"),
])
def test_cli_flag_numeric_rule(tmp_path, capsys, argv, flag):
    required = {"measure": ["--task", "sst2", "--variant-name", "finetune", "--baseline", str(tmp_path / "b"),
                            "--variant", str(tmp_path / "v"), "--metrics", str(tmp_path / "m.json")],
                "approximate": ["--parent", str(tmp_path / "p"), "--ckpt", str(tmp_path / "c"), "--metrics",
                                str(tmp_path / "m.json"), "--decisions", str(tmp_path / "d.json")],
                "finetune": ["--task", "sst2", "--model", "tiny-random", "--ckpt", str(tmp_path / "c"),
                             "--metrics", str(tmp_path / "m.json")]}[argv[0]]
    rc = main([*argv, *required])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "must be" in err[0], err
    assert flag in err[0] or flag.lstrip("-").replace("-", "_") in err[0], err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("field, value", [("lr", NAN), ("epochs", INF), ("batch_size", NAN)])
def test_train_config_validate_refuses_non_finite(field, value):
    from axformer.training.train_config import TrainConfig

    with pytest.raises(ConfigError, match=f"train.{field}"):
        TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize("field", ["less_important", "accept_margin", "lat_seconds", "accept_z"])
def test_prune_config_validate_refuses_non_finite(field):
    from axformer.search.prune_config import PruneConfig

    with pytest.raises(ConfigError, match=f"axformer.{field} must be a finite number"):
        PruneConfig(**{field: NAN}).validate()


# ------------------------------------------------------------------------------- one numeric rule: the config
def _schema_errors(cfg: dict) -> list[str]:
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    v = jsonschema.Draft202012Validator(schema)
    return [".".join(map(str, e.path)) for e in v.iter_errors(cfg)]


def _smoke() -> dict:
    """The smoke profile as the workflow reads it: its steps laid over the step registry."""
    from axformer.steps.profiles import load_profile

    return load_profile(SMOKE, SMOKE.parent / "steps.yaml")


@pytest.mark.parametrize("change, key", [
    ({"seeds": 1_000_000}, "seeds"),
    ({"seeds_per_variant": {"finetune": 5000}}, "seeds_per_variant.finetune"),
    ({"split": {"search_max": 10**12}}, "split.search_max"),
    ({"measure": {"min_seconds": 1e9}}, "measure.min_seconds"),
    ({"measure": {"batch_sizes": [1, 10**9]}}, "measure.batch_sizes.1"),
    ({"bootstrap_resamples": 10**12}, "bootstrap_resamples"),
    ({"data_dir": "/tmp/$(touch PWNED)"}, "data_dir"),
    ({"steps": {"finetune": {"command": "finetune", "args": {"select": "$(touch PWNED)"}}}},
     "steps.finetune.args.select"),
    ({"steps": {"fisher": {"command": "baseline", "args": {"method": "fisher", "arg": ["seq_len=`id`"]}}}},
     "steps.fisher.args.arg.0"),
])
def test_schema_bounds_and_plain_text(change, key):
    cfg = _smoke()
    for k, v in change.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    assert key in _schema_errors(cfg)


def test_smoke_profile_meets_the_bounds():
    assert _schema_errors(_smoke()) == []


@pytest.mark.parametrize("tree, hit", [
    ({"measure": {"min_seconds": INF}}, "measure.min_seconds"),
    ({"split": {"search_frac": NAN}}, "split.search_frac"),
    ({"steps": {"a": {"args": {"lr": NAN}}}}, "steps.a.args.lr"),
    ({"task_defs": {"t": {"label_range": [0, INF]}}}, "task_defs.t.label_range[1]"),
])
def test_finite_walk_names_the_key(tree, hit):
    assert bounds.check_finite_tree(tree)[0] == hit
    assert bounds.check_finite_tree({"a": [1, 2.5, {"b": 3}]}) is None


# ------------------------------------------------------------------------------- signals and saves
def test_sigterm_while_importing_exits_143_with_one_line():
    code = ("import os, signal, time\nimport axformer.cli\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(30)\n"
            "raise SystemExit(0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 143
    assert res.stderr.strip().splitlines() == ["axformer: interrupted; no partial outputs were written."]


_TERM_IN_PARSER = """
import os, signal, sys
import axformer.cli as cli
real = cli.build_parser
def parser_then_term():
    os.kill(os.getpid(), signal.SIGTERM)  # while the step modules import (before any step runs)
    return real()
cli.build_parser = parser_then_term
sys.exit(cli.main(["report", "--results", sys.argv[1]]))
"""


def test_sigterm_while_building_the_parser_exits_143_with_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-c", _TERM_IN_PARSER, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 143, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == ["axformer: interrupted; no partial outputs were written."]


def test_rerun_save_interrupted_between_renames_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from axformer.encoders import models
    from axformer.taskdata.tasks import get_task

    model, tok = models.load_pretrained(models.TINY, get_task("sst2"))
    out = models.save_checkpoint(model, tok, tmp_path / "ckpt")
    before = sorted(p.name for p in out.iterdir())
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder's rename: killed here
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(models.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        models.save_checkpoint(model, tok, out)
    monkeypatch.setattr(models.os, "replace", real)
    assert sorted(p.name for p in out.iterdir()) == before  # the previous checkpoint is back in place
    models.load_checkpoint(out)


# ------------------------------------------------------------------------------- end to end (Snakemake)
def _snakemake(workdir: Path, *args: str, data_dir: Path):
    from test_workflow import snakemake

    return snakemake(workdir, *args, data_dir=data_dir, timeout=300)


def _assert_refused_one_line(res, key: str, workdir: Path) -> None:
    out = (res.stdout + res.stderr).strip()
    assert res.returncode != 0
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"config key '{key}'"), out[-2000:]
    assert not (workdir / "smoke").exists()
    assert not list(workdir.rglob("PWNED*")) and not list(REPO.glob("PWNED*"))


@pytest.mark.slow
@pytest.mark.parametrize("override, key", [
    ("measure={min_seconds: .inf}", "measure.min_seconds"),
    ("measure={min_seconds: .nan}", "measure.min_seconds"),
    ("split={search_frac: .nan}", "split.search_frac"),
    ("seeds=1000000", "seeds"),
    ("steps={axformer: {command: approximate, args: {lat_seconds: .inf}}}", "steps.axformer.args.lat_seconds"),
    ("steps={finetune: {command: finetune, args: {lr: .nan}}}", "steps.finetune.args.lr"),
    ("steps={axformer: {command: approximate, args: {groups: 100000000}}}", "steps.axformer.args.groups"),
    ("data_dir=/tmp/$(touch PWNED_dd)", "data_dir"),
])
def test_workflow_refuses_before_the_dag(tmp_path, data_dir, override, key):
    res = _snakemake(tmp_path, "--configfile", str(SMOKE), "--config", override, "--cores", "1", data_dir=data_dir)
    _assert_refused_one_line(res, key, tmp_path)


@pytest.mark.slow
def test_workflow_refuses_smuggled_ckpt_flag_in_arg(tmp_path, data_dir):
    cfg = {"variants": ["finetune", "finetune+fisher"],
           "steps": {"fisher": {"command": "baseline", "args": {"method": "fisher",
                                                                "arg": ["flops_frac=0.5", "--ckpt=/elsewhere"]}}}}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(cfg))
    res = _snakemake(tmp_path, "--configfile", str(SMOKE), str(tmp_path / "o.yaml"), "--cores", "1",
                     data_dir=data_dir)
    _assert_refused_one_line(res, "steps.fisher.args.arg[1]", tmp_path)


@pytest.mark.slow
def test_workflow_refuses_bad_fisher_arg_before_any_job(tmp_path, data_dir):
    cfg = {"variants": ["finetune", "finetune+fisher"],
           "steps": {"fisher": {"command": "baseline", "args": {"method": "fisher", "arg": ["flops_frac=2"]}}}}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(cfg))
    res = _snakemake(tmp_path, "--configfile", str(SMOKE), str(tmp_path / "o.yaml"), "--cores", "1",
                     data_dir=data_dir)
    _assert_refused_one_line(res, "steps.fisher.args.arg", tmp_path)
    assert json.dumps("flops_frac")[1:-1] in res.stderr
