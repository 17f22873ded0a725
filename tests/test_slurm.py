"""The workflow on a real SLURM cluster (issue 34) and no shell injection through sbatch (issue 32).

Tests marked ``slurm`` run the smoke DAG through ``workflow/profiles/slurm`` on a running cluster: the one-node
cluster of ``scripts/slurm_local.sh start`` (CI starts it in .ci/run) or any cluster whose default partition
takes a 1-CPU, 2 GB job. They skip, with the start command, where ``sbatch`` is missing or no controller answers.
The injection test always runs: against the cluster where it is up, else against a fake ``sbatch`` on PATH.
The unit tests at the top need neither.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from axformer.steps.cluster import failure_hints
from axformer.utils import slurm_allocation

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SMOKE = REPO / "workflow" / "config" / "smoke.yaml"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
START = "sudo scripts/slurm_local.sh start"
ACCOUNT = os.environ.get("AXF_SLURM_ACCOUNT", "axformer")
PARTITION = os.environ.get("AXF_SLURM_PARTITION", "local")
# The profile's set-threads / set-resources are paper-scale (4-8 CPUs, 16 GB per job): on the command line they
# are replaced, so every job books what the smoke config says (1 CPU, 2000 MB, 5 min) and time keeps the
# profile's whole-node booking. docs/SLURM.md gives the same command.
LOCAL_CLUSTER_ARGS = (
    "--default-resources", f"slurm_account={ACCOUNT}", f"slurm_partition={PARTITION}",
    "--set-threads", "finetune=1", "approximate=1", "distill=1", "baseline=1", "time=1", "measure=1",
    "--set-resources", "time:slurm_extra='--exclusive'",
    "--slurm-init-seconds-before-status-checks", "2",
)


def cluster_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode == 0


needs_cluster = pytest.mark.skipif(
    not cluster_up(), reason=f"no SLURM cluster (sbatch on PATH and `scontrol ping` answering): start one with "
                             f"`{START}` (docs/SLURM.md)")


def run_snakemake(workdir: Path, *args: str, data_dir: Path, env: dict | None = None,
                  timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p), **(env or {})}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def slurm_args(*extra: str) -> tuple[str, ...]:
    return ("--workflow-profile", str(PROFILE), "--configfile", str(SMOKE), *LOCAL_CLUSTER_ARGS, *extra)


def squeue_rows() -> list[tuple[str, str, str]]:
    """(job id, state, rule) of this user's jobs; the rule from the plugin's comment rule_<name>[_wildcards_...]."""
    out = subprocess.run(["squeue", "-h", "--me", "-o", "%i|%T|%k"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        job, state, comment = (line.split("|", 2) + ["", ""])[:3]
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        rows.append((job.strip(), state.strip(), rule))
    return rows


class QueueWatch(threading.Thread):
    """Polls squeue every 0.3 s while a run goes on: every snapshot's RUNNING jobs with their rules."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.snapshots: list[list[tuple[str, str]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.snapshots.append([(j, r) for j, s, r in squeue_rows() if s == "RUNNING"])
            time.sleep(0.3)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def metrics_files(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("metrics.json"))}


# ------------------------------------------------------------------------------------------- unit tests
def test_slurm_allocation_from_env():
    assert set(slurm_allocation({}).values()) == {None}
    got = slurm_allocation({"SLURM_JOB_ID": "42", "SLURM_CPUS_ON_NODE": "4", "SLURM_MEM_PER_NODE": "2000",
                            "SLURMD_NODENAME": "n1", "SLURM_JOB_PARTITION": "local"}, query=False)
    assert got == {"slurm_job_id": "42", "slurm_node": "n1", "slurm_partition": "local", "slurm_cpus": 4,
                   "slurm_mem_mb": 2000}
    # memory booked per CPU, CPUs only in the per-node list form
    got = slurm_allocation({"SLURM_JOB_ID": "7", "SLURM_JOB_CPUS_PER_NODE": "2(x3)", "SLURM_MEM_PER_CPU": "500"},
                           query=False)
    assert (got["slurm_cpus"], got["slurm_mem_mb"]) == (2, 1000)


def test_slurm_allocation_prefers_the_controllers_record(monkeypatch):
    import axformer.utils as utils

    monkeypatch.setattr(utils, "_job_tres", lambda job_id: {"cpu": "2", "mem": "1.5G", "node": "1"})
    got = slurm_allocation({"SLURM_JOB_ID": "9", "SLURM_CPUS_ON_NODE": "1"})
    assert (got["slurm_cpus"], got["slurm_mem_mb"]) == (2, 1536)


PLUGIN_ERROR = """\
Error in rule {rule}:
    message: SLURM-job '17' failed, SLURM status is: '{state}'. Reason: Step 0: OutOfMemory.
    jobid: 4
    output: smoke/checkpoints/mrpc/tiny-random/{variant}/seed0/ckpt, smoke/checkpoints/mrpc/tiny-random/{variant}/seed0/step.json
    log: smoke/logs/mrpc/tiny-random/{variant}/seed0/{rule}.log (check log file(s) for error details)
"""


@pytest.mark.parametrize("rule, variant, state, key", [
    ("finetune", "finetune", "OUT_OF_MEMORY", "steps.finetune.mem_mb"),
    ("baseline", "finetune+fisher_50", "OUT_OF_MEMORY", "steps.fisher_50.mem_mb"),
    ("approximate", "finetune+distill+axformer", "TIMEOUT", "steps.axformer.runtime"),
    ("measure", "finetune+headprune", "TIMEOUT", "measure.runtime"),
])
def test_failure_hints_name_rule_and_key(rule, variant, state, key):
    log = "Building DAG of jobs...\n" + PLUGIN_ERROR.format(rule=rule, variant=variant, state=state) + "Shutting down\n"
    (hint,) = failure_hints(log)
    res = key.rsplit(".", 1)[1]
    assert hint.startswith(f"rule {rule} ({variant}): SLURM ended the job with {state}")
    assert f"set-resources.{rule}.{res} in workflow/profiles/slurm/config.yaml" in hint and key in hint
    # a failure that is not about a booking gets no hint
    assert failure_hints(PLUGIN_ERROR.format(rule=rule, variant=variant, state="FAILED")) == []


def test_failure_hint_for_a_time_job_names_the_measure_key():
    log = ("Error in rule time:\n    message: SLURM-job '18' failed, SLURM status is: 'TIMEOUT'.\n"
           "    output: smoke/results/mrpc/tiny-random/timing/seed0/timing.json\n")
    (hint,) = failure_hints(log)
    assert hint.startswith("rule time: SLURM ended the job with TIMEOUT")
    assert "set-resources.time.runtime" in hint and "measure.runtime" in hint


def test_failure_hints_read_slurmstepd_lines(tmp_path):
    """Without cgroups SLURM ends a job over its memory as FAILED; slurmstepd's line in the job log tells."""
    job_log = tmp_path / "53.log"
    job_log.write_text("slurmstepd-vm: error: StepId=53.batch exceeded memory limit (381771776 > 314572800), "
                       "being killed\nslurmstepd-vm: error: Exceeded job memory limit\n")
    log = PLUGIN_ERROR.format(rule="finetune", variant="finetune", state="FAILED").replace(
        "finetune.log (check", f"finetune.log, {job_log} (check")
    (hint,) = failure_hints(log)
    assert "OUT_OF_MEMORY" in hint and "steps.finetune.mem_mb" in hint
    job_log.write_text("slurmstepd-vm: error: *** JOB 53 ON vm CANCELLED AT 2026-12-06T15:19:45 DUE TO TIME LIMIT ***\n")
    (hint,) = failure_hints(log)
    assert "TIMEOUT" in hint and "steps.finetune.runtime" in hint


# ------------------------------------------------------------------------------------------- injection
HOSTILE_DIR = "data$(touch MARKER)`touch MARKER`"  # a folder name: no '/', so the marker is relative to the cwd
HOSTILE_ARG = "seq_len=$(touch {m})`touch {m}`"

FAKE_SBATCH = """#!/bin/sh
# records the call and the script on stdin, answers like `sbatch --parsable`
printf '%s\\n' "$*" >> "{log}/calls"
cat >> "{log}/stdin"
echo 4242
"""
FAKE_STATUS = """#!/bin/sh
# sacct / squeue: the one job failed (the test needs the submission only)
echo "4242|FAILED"
"""


def _fake_slurm(bin_dir: Path, log_dir: Path) -> None:
    bin_dir.mkdir()
    log_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(log=log_dir))
    for name in ("sacct", "squeue"):
        (bin_dir / name).write_text(FAKE_STATUS)
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho local\n")
    (bin_dir / "sacctmgr").write_text(f"#!/bin/sh\necho {ACCOUNT}\n")
    (bin_dir / "scontrol").write_text("#!/bin/sh\nexit 0\n")
    for p in bin_dir.iterdir():
        p.chmod(0o755)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["fake", pytest.param("cluster", marks=[pytest.mark.slurm, needs_cluster])])
def test_no_injection_through_sbatch(tmp_path, data_dir, where):
    """`$(...)` and backticks in --config data_dir and in a baseline's `arg:` value: no marker file, wherever
    the value is parsed (submit host, the job's shell, the rule's shell); the job command reaches sbatch as a
    script on stdin, never inside --wrap."""
    marker = tmp_path / "MARKER"
    hostile_dir = tmp_path / HOSTILE_DIR
    hostile_dir.symlink_to(data_dir, target_is_directory=True)
    arg = HOSTILE_ARG.format(m=marker)
    work = tmp_path / "work"
    work.mkdir()
    target = "smoke/checkpoints/mrpc/tiny-random/finetune+fisher_50/seed0/step.json"
    config = ("--config", f"data_dir={hostile_dir}",
              f'steps={{fisher_50: {{command: baseline, args: {{method: fisher, arg: ["flops_frac=0.5", "{arg}"]}}, '
              f'threads: 1, mem_mb: 2000, runtime: 5}}}}')
    env = {}
    if where == "fake":
        _fake_slurm(tmp_path / "bin", tmp_path / "sbatch_log")
        env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
        res = run_snakemake(work, target, *slurm_args(*config, "--retries", "0"), data_dir=data_dir, env=env,
                            timeout=600)
    else:
        res = run_snakemake(work, target, *slurm_args(*config), data_dir=data_dir)
    out = res.stdout + res.stderr
    assert not marker.exists(), out[-3000:]
    assert not list(tmp_path.rglob("MARKER")) and not (REPO / "MARKER").exists() and not Path("MARKER").exists()
    if res.returncode != 0 and "has been submitted with SLURM jobid" not in out:
        # refused before any job: the config check names the key, nothing reached a shell
        assert re.search(r"config key '(data_dir|steps\.fisher_50\.args[^']*)'", out), out[-3000:]
        return
    if where == "fake":
        calls = (tmp_path / "sbatch_log" / "calls").read_text()
        script = (tmp_path / "sbatch_log" / "stdin").read_text()
        assert "--wrap" not in calls and "/dev/stdin" in calls, calls
        # the script's shell would read the values back literally: shlex parses as sh does
        assert script.startswith("#!/bin/sh\n")
        words = [w for line in script.splitlines()[1:] for w in shlex.split(line)]
        assert f"data_dir={hostile_dir}" in words, script
        assert any(arg in w for w in words), script
    else:
        # the fine-tune job read its data through the hostile folder name, taken literally
        assert json.loads((work / FT_TARGET).read_text()), out[-4000:]
        # the baseline got the hostile `arg:` value literally: fisher refuses it in its own check (no seq_len
        # key of that form), or runs where that check accepts it
        log = work / "smoke/logs/mrpc/tiny-random/finetune+fisher_50/seed0/baseline.log"
        assert res.returncode == 0 or f"got '{arg.split('=', 1)[1]}'" in log.read_text(), out[-4000:]


# ------------------------------------------------------------------------------------------- the smoke DAG
@pytest.fixture(scope="module")
def slurm_smoke(tmp_path_factory, data_dir):
    """The smoke DAG through the SLURM profile (with squeue watched) and the same DAG run locally."""
    if not cluster_up():
        pytest.skip(f"no SLURM cluster: start one with `{START}`")
    root = tmp_path_factory.mktemp("slurm_smoke")
    # AXF_SLURM_SMOKE_RESULTS=<folder>: this run's results tree goes there (how results/slurm_smoke was made)
    keep = os.environ.get("AXF_SLURM_SMOKE_RESULTS")
    results = Path(keep).resolve() if keep else root / "slurm" / "smoke" / "results"
    watch = QueueWatch()
    watch.start()
    t0 = time.time()
    res = run_snakemake(root / "slurm", *slurm_args("--config", f"results_dir={results}"), data_dir=data_dir)
    wall = time.time() - t0
    watch.stop()
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    local = run_snakemake(root / "local", "--cores", "2", "--configfile", str(SMOKE), data_dir=data_dir)
    assert local.returncode == 0, (local.stdout + local.stderr)[-5000:]
    print(f"smoke DAG through SLURM: {wall:.0f} s wall, "
          f"{(res.stdout + res.stderr).count('has been submitted with SLURM jobid')} sbatch jobs")
    return {"slurm": results, "local": root / "local" / "smoke" / "results",
            "log": res.stdout + res.stderr, "watch": watch}


@pytest.mark.slow
@pytest.mark.slurm
@needs_cluster
def test_smoke_through_slurm_records_the_allocation(slurm_smoke):
    runs = metrics_files(slurm_smoke["slurm"])
    assert len(runs) == 5  # four variants and majority
    ids = set()
    for path, rec in runs.items():
        env = rec["env"]
        assert env["slurm_job_id"] and env["slurm_job_id"].isdigit(), path
        # the smoke config books 1 CPU and 2000 MB per job (majority: 2000 MB in its rule)
        assert env["slurm_mem_mb"] == 2000, (path, env)
        assert env["slurm_partition"] == PARTITION and env["slurm_node"], (path, env)
        assert env["slurm_cpus"] == 1, (path, env)
        ids.add(env["slurm_job_id"])
    assert len(ids) == len(runs)  # one sbatch job per measure / majority run
    timings = sorted(slurm_smoke["slurm"].rglob("timing.json"))
    assert timings
    for path in timings:  # the time job (--exclusive) gets every CPU of its node
        alloc = json.loads(path.read_text())["slurm"]
        node_cpus = subprocess.run(["sinfo", "-h", "-N", "-n", alloc["slurm_node"], "-o", "%c"],
                                   capture_output=True, text=True).stdout.split()[0]
        assert alloc["slurm_job_id"] not in ids and alloc["slurm_cpus"] == int(node_cpus), (path, alloc)
        ids.add(alloc["slurm_job_id"])
    acct = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,AllocCPUS,ReqMem", "-j", ",".join(ids)],
                          capture_output=True, text=True).stdout
    states = {line.split("|")[0]: line.split("|")[1] for line in acct.splitlines() if line}
    assert states == {i: "COMPLETED" for i in ids}, acct
    submitted = slurm_smoke["log"].count("has been submitted with SLURM jobid")
    assert submitted >= 12, submitted  # every rule but the local ones (all, decisions) was an sbatch job


def _untimed(obj):
    """``obj`` without wall-clock fields (``wall_s``, ``*_seconds``): they differ between any two runs."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k != "wall_s" and not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


@pytest.mark.slow
@pytest.mark.slurm
@needs_cluster
def test_smoke_through_slurm_matches_local_run(slurm_smoke):
    slurm, local = metrics_files(slurm_smoke["slurm"]), metrics_files(slurm_smoke["local"])
    assert slurm.keys() == local.keys()
    for path in slurm:
        if path.split("/")[2].endswith("int8"):
            continue  # fp32 metrics only; int8 kernels may pick other code paths per host
        assert slurm[path]["metric"] == local[path]["metric"], path
        assert slurm[path]["size"] == local[path]["size"], path
    decisions = sorted(p.relative_to(slurm_smoke["slurm"]) for p in slurm_smoke["slurm"].rglob("decisions.json"))
    assert decisions
    for rel in decisions:  # the decisions, not how long the search took
        assert _untimed(json.loads((slurm_smoke["slurm"] / rel).read_text())) == \
            _untimed(json.loads((slurm_smoke["local"] / rel).read_text())), rel


@pytest.mark.slow
@pytest.mark.slurm
@needs_cluster
def test_time_jobs_run_alone_on_the_node(slurm_smoke):
    """The time rule's --exclusive booking: in no squeue snapshot does another job run beside a timing."""
    snaps = slurm_smoke["watch"].snapshots
    with_time = [s for s in snaps if any(rule == "time" for _, rule in s)]
    assert with_time, f"no time job seen running in {len(snaps)} squeue snapshots"
    crowded = [s for s in with_time if len(s) > 1]
    assert not crowded, crowded[:3]
    # the node is shared otherwise: some snapshot shows two jobs at once (the check could fail)
    assert any(len(s) > 1 for s in snaps) or os.cpu_count() == 1


# ------------------------------------------------------------------------------------------- faults
FT_TARGET = "smoke/checkpoints/mrpc/tiny-random/finetune/seed0/step.json"
FT_CKPT = "smoke/checkpoints/mrpc/tiny-random/finetune/seed0/ckpt"


def _complete_ckpt(work: Path) -> bool:
    ckpt = work / FT_CKPT
    return (ckpt / "config.json").is_file() and any(ckpt.glob("*.safetensors"))


@pytest.mark.slow
@pytest.mark.slurm
@needs_cluster
def test_scancel_then_recovery_leaves_complete_outputs(tmp_path, data_dir):
    """scancel of a running fine-tune job: no partial checkpoint, record or temp file is left, and the documented
    recovery (stop the run if it still waits, run the same command again) completes it.

    snakemake-executor-plugin-slurm 2.8.0 compares sacct's state with 'CANCELLED', but sacct reports
    'CANCELLED by <uid>': the run then waits on the cancelled job until it is interrupted (docs/SLURM.md)."""
    args = (FT_TARGET, *slurm_args("--retries", "0"))
    env = {**os.environ, "AXFORMER_DATA": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    cancelled, deadline = None, time.time() + 600
    log = tmp_path / "smoke/logs/mrpc/tiny-random/finetune/seed0/finetune.log"
    while cancelled is None and time.time() < deadline and proc.poll() is None:
        running = [j for j, s, r in squeue_rows() if s == "RUNNING" and r == "finetune"]
        if running and log.is_file() and "Map" in log.read_text(errors="replace"):  # the step is loading data
            subprocess.run(["scancel", running[0]], check=True)
            cancelled = running[0]
        time.sleep(0.2)
    assert cancelled, "the fine-tune job was never seen running"
    state = ""
    for _ in range(100):  # sacct's record of the cancel
        state = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", cancelled],
                               capture_output=True, text=True).stdout.strip()
        if state.startswith("CANCELLED") or state == "COMPLETED":
            break
        time.sleep(0.3)
    if state == "COMPLETED":
        pytest.skip("the fine-tune finished before scancel reached it")
    assert state.startswith("CANCELLED"), state
    unlock = False
    try:
        proc.communicate(timeout=60)  # a plugin that knows the state stops the run by itself
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the documented recovery: stop the waiting run (Ctrl-C) ...
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # ... which 2.8.0 may not honour before its next status poll
            proc.kill()
            proc.communicate()
            unlock = True
    assert proc.returncode != 0
    # only complete outputs: the checkpoint folder absent or whole, a record only beside a whole checkpoint (the
    # cancel can land after the step's last write), no temp files
    assert not (tmp_path / FT_CKPT).exists() or _complete_ckpt(tmp_path)
    assert not (tmp_path / FT_TARGET).exists() or (_complete_ckpt(tmp_path)
                                                   and json.loads((tmp_path / FT_TARGET).read_text()))
    assert not [p for p in (tmp_path / "smoke").rglob("*") if ".tmp" in p.name], list((tmp_path / "smoke").rglob("*"))

    if unlock:  # a killed Snakemake leaves its lock: `--unlock` first, as docs/SLURM.md says
        assert run_snakemake(tmp_path, FT_TARGET, *slurm_args(), "--unlock", data_dir=data_dir).returncode == 0
    again = run_snakemake(tmp_path, FT_TARGET, *slurm_args(), data_dir=data_dir)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert _complete_ckpt(tmp_path)
    assert json.loads((tmp_path / FT_TARGET).read_text())


@pytest.mark.slow
@pytest.mark.slurm
@needs_cluster
def test_job_over_its_memory_is_named_with_the_key(tmp_path, data_dir):
    """A fine-tune booked 300 MB (torch alone needs more): SLURM ends it, the run names the rule and the key."""
    args = [FT_TARGET, *slurm_args("--retries", "0")]
    i = args.index("time:slurm_extra='--exclusive'")
    args.insert(i + 1, "finetune:mem_mb=300")
    res = run_snakemake(tmp_path, *args, data_dir=data_dir)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    # OUT_OF_MEMORY where cgroups enforce memory; FAILED + slurmstepd's "Exceeded job memory limit" otherwise
    assert "rule finetune (finetune): SLURM ended the job with OUT_OF_MEMORY" in out, out[-4000:]
    assert "set-resources.finetune.mem_mb" in out and "steps.finetune.mem_mb" in out
    assert not (tmp_path / FT_TARGET).exists()
