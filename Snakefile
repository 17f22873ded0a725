# AxFormer benchmark: fine-tune -> AxFormer / distill / baselines -> int8 -> measure -> report.
# The DAG (docs/DESIGN.md §2) is composed from the profile: see workflow/rules/paths.smk for the
# variant grammar, workflow/config/steps.yaml for the step registry every profile starts from and
# workflow/schemas/config.schema.yaml for every config key.
#
#   snakemake --cores all                                                   # default profile (MiniLM, CPU)
#   snakemake --cores 2 --configfile workflow/config/smoke.yaml             # < 1 min smoke run
#   snakemake --workflow-profile workflow/profiles/slurm --configfile workflow/config/paper.yaml
import os
import sys

from snakemake.utils import min_version

min_version("9.0")


# A profile given with --configfile replaces default.yaml (it is not merged into it), so every profile
# file (with the step registry it names steps from) is the complete record of its run; --config KEY=VALUE
# still overrides single keys.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "workflow", "config", "default.yaml")


include: "workflow/rules/config.smk"  # load, step registry, schema
include: "workflow/rules/checks.smk"  # pre-run checks: refused in one line before the DAG
include: "workflow/rules/paths.smk"  # paths, variant grammar, input functions


# `snakemake --report report.html`: the workflow's description; every figure and table of the report rule is
# flagged with its caption (workflow/report/*.rst)
report: "workflow/report/workflow.rst"


wildcard_constraints:
    **WILDCARD_CONSTRAINTS,


include: "workflow/rules/tasks.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/steps.smk"  # approximate, distill, baseline: one rule shape
include: "workflow/rules/baselines.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
    localrule: True


# On a cluster, a job that SLURM ended for exceeding its mem_mb or runtime is reported by the executor plugin
# with the SLURM state only; name the rule, the variant and the key to raise (axformer/steps/cluster.py).
onerror:
    from axformer.steps.cluster import failure_hints

    _hints = []
    for _log in [log] if isinstance(log, (str, os.PathLike)) else list(log or []):  # Snakemake 9: a list
        try:
            with open(_log) as fh:
                _hints += [h for h in failure_hints(fh.read()) if h not in _hints]
        except OSError:
            pass
    for _hint in _hints:
        print(_hint, file=sys.stderr)
