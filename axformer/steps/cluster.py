"""Cluster failures in words: which rule SLURM stopped for memory or time, and which key to raise.

snakemake-executor-plugin-slurm reports a job that exceeded its booking as ``Error in rule <rule>: message:
SLURM-job '<id>' failed, SLURM status is: 'OUT_OF_MEMORY'`` (or ``'TIMEOUT'``), with the job's outputs below.
It cannot know this workflow's keys; the Snakefile's ``onerror`` handler passes the run's log here and prints
one line per such job naming the rule, the variant and the key that sets the resource.
"""

from __future__ import annotations

import re

PROFILE = "workflow/profiles/slurm/config.yaml"
# SLURM job state -> (Snakemake resource, what ran out)
LIMIT_STATES: dict[str, tuple[str, str]] = {
    "OUT_OF_MEMORY": ("mem_mb", "memory"),
    "TIMEOUT": ("runtime", "wall time"),
}
_ERROR_BLOCK = re.compile(r"^Error in rule (\w+):\n((?:[ \t]+[^\n]*(?:\n|$))*)", re.M)
_STATE = re.compile(r"SLURM status is: '(\w+)'")
_VARIANT = re.compile(r"/(finetune(?:\+[A-Za-z0-9_]+)*)/seed\d+/")
_LOGS = re.compile(r"^\s+log: (.*?)(?: \(check log file\(s\) for error details\))?$", re.M)
# what slurmstepd writes into the job's own log when it ends a job over its booking: without cgroups
# (JobAcctGatherParams=OverMemoryKill) a memory kill leaves the job FAILED, not OUT_OF_MEMORY
_STEPD = {"OUT_OF_MEMORY": re.compile(r"Exceeded job memory limit|exceeded memory limit"),
          "TIMEOUT": re.compile(r"CANCELLED AT \S+ DUE TO TIME LIMIT")}


def _state_from_logs(block: str) -> str | None:
    """OUT_OF_MEMORY / TIMEOUT from slurmstepd's lines in the SLURM job log the error block names, if any."""
    found = _LOGS.search(block)
    for path in (found.group(1).split(", ") if found else []):
        try:
            with open(path.strip(), errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue
        for state, pattern in _STEPD.items():
            if pattern.search(text):
                return state
    return None


def config_key(rule: str, variant: str | None, resource: str) -> str | None:
    """The config file's key for ``resource`` of the job that ``rule`` runs for ``variant``: the last step's
    registry entry for step rules, ``measure.<resource>`` for measure and time; None where the rule fixes it."""
    if rule in ("measure", "time"):
        return f"measure.{resource}"
    if rule == "finetune":
        return f"steps.finetune.{resource}"
    if rule in ("approximate", "distill", "baseline") and variant:
        return f"steps.{variant.split('+')[-1]}.{resource}"
    return None


def failure_hints(log_text: str) -> list[str]:
    """One line per failed job that SLURM ended for exceeding its memory or time booking (none otherwise)."""
    hints: list[str] = []
    for match in _ERROR_BLOCK.finditer(log_text):
        rule, block = match.group(1), match.group(2)
        found_state = _STATE.search(block)
        if found_state is None:
            continue
        state = found_state.group(1)
        if state not in LIMIT_STATES:
            state = _state_from_logs(block) or state
        if state not in LIMIT_STATES:
            continue
        resource, what = LIMIT_STATES[state]
        found = _VARIANT.search(block)
        variant = found.group(1) if found else None
        key = config_key(rule, variant, resource)
        where = f"rule {rule}" + (f" ({variant})" if variant else "")
        fix = f"raise set-resources.{rule}.{resource} in {PROFILE} (it overrides the config file)"
        if key:
            fix += f", or {key} in your config file where the profile sets none"
        hint = (f"{where}: SLURM ended the job with {state} (it needed more {what} than it booked); "
                f"{fix}, then run the same command again.")
        if hint not in hints:
            hints.append(hint)
    return hints
