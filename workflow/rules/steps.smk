# The steps that build a checkpoint from their parent's: one rule shape (the helpers below), three rules named
# after their command (the SLURM profile and axformer/steps/cluster.py refer to these names). Every entry of config
# `steps` with one of these commands runs here; a new step of that kind is a registry or profile entry, not new
# rule code.
#
#   approximate  AxFormer (DESIGN §3): the accuracy-driven search on the search split, with frozen weights:
#                axformer (hard attention, then pruning) and its ablations (prune, hardattn, blocks, accept
#                rules); writes decisions.json beside the checkpoint
#   distill      knowledge distillation into a smaller student (compression that combines with AxFormer; int8
#                writes no checkpoint: `measure` of X+int8 loads X's checkpoint with --quantize, measure.smk)
#   baseline     a peer compression method from baselines/ (args.method = its registered name); with `match`,
#                the decisions.json of parent+<match> is passed as --match

# command -> what its rule adds to the shared shape: inputs, outputs, params and the shell words around the
# shared ones. The shell text is each rule's, word for word as before the rules were merged (Snakemake re-runs a
# job whose shell text changed).
PARENT_STEP_RULES = {
    "approximate": dict(input={}, output={"decisions": CKPT_DECISIONS}, params={},
                        before_args=" --decisions {output.decisions:q}",
                        after_threads=" --variant-name {wildcards.variant:q}"),
    "distill": dict(input={}, output={}, params={}, before_args="", after_threads=""),
    "baseline": dict(input={"match": match_decisions}, output={}, params={"match": match_flag},
                     before_args=" --variant-name {wildcards.variant:q} {params.match}", after_threads=""),
}


def parent_step_shell(command, before_args, after_threads):
    """`axformer <command>` on the parent checkpoint: the shared words with the command's own in their place."""
    return ("axformer " + command + " --parent {input.parent:q} --ckpt {output.ckpt:q} --metrics {output.record:q}"
            + before_args + " {params.args} --data-dir {params.data_dir} --threads {threads:q}" + after_threads
            + " --device {params.device} --no-progress > {log:q} 2>&1")


def _own(command, part):
    return PARENT_STEP_RULES[command][part]


STEP_RESOURCES = dict(mem_mb=step_resource("mem_mb"), runtime=step_resource("runtime"), gpu=step_resource("gpu"))


def step_rule_input(command):
    return dict(parent=parent_ckpt, **_own(command, "input"))


def step_rule_output(command):
    return dict(ckpt=ckpt_output(CKPT_DIR), record=STEP_RECORD, **_own(command, "output"))


def step_rule_params(command):
    return dict(device=step_device, args=step_flags, data_dir=data_dir, **_own(command, "params"))


def step_rule_shell(command):
    return parent_step_shell(command, _own(command, "before_args"), _own(command, "after_threads"))


# Three rule statements, not a loop: a `shell:` expression is evaluated again when the job runs, so it may only
# name module-level values (a loop variable would hold the last command by then).
rule approximate:
    input:
        **step_rule_input("approximate"),
    output:
        **step_rule_output("approximate"),
    log:
        f"{LOGS}/{RUN}/approximate.log",
    wildcard_constraints:
        variant=variant_ending_in(steps_with("approximate")),
    params:
        **step_rule_params("approximate"),
    threads: step_threads
    resources:
        **STEP_RESOURCES,
    shell:
        step_rule_shell("approximate")


rule distill:
    input:
        **step_rule_input("distill"),
    output:
        **step_rule_output("distill"),
    log:
        f"{LOGS}/{RUN}/distill.log",
    wildcard_constraints:
        variant=variant_ending_in(steps_with("distill")),
    params:
        **step_rule_params("distill"),
    threads: step_threads
    resources:
        **STEP_RESOURCES,
    shell:
        step_rule_shell("distill")


rule baseline:
    input:
        **step_rule_input("baseline"),
    output:
        **step_rule_output("baseline"),
    log:
        f"{LOGS}/{RUN}/baseline.log",
    wildcard_constraints:
        variant=variant_ending_in(steps_with("baseline")),
    params:
        **step_rule_params("baseline"),
    threads: step_threads
    resources:
        **STEP_RESOURCES,
    shell:
        step_rule_shell("baseline")
