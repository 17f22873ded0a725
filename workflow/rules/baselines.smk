# Reference points: peer compression methods from baselines/ (one config `steps` entry each, command
# `baseline`, args.method = the registered name) and the constant-predictor (majority) row.


rule baseline:
    input:
        parent=parent_ckpt,
        match=match_decisions,
    output:
        ckpt=ckpt_output(CKPT_DIR),
        record=STEP_RECORD,
    log:
        f"{LOGS}/{RUN}/baseline.log",
    wildcard_constraints:
        variant=variant_ending_in(steps_with("baseline")),
    params:
        args=step_flags,
        match=match_flag,
        data_dir=data_dir,
    threads: step_threads
    resources:
        mem_mb=step_resource("mem_mb"),
        runtime=step_resource("runtime"),
        gpu=step_resource("gpu"),
    shell:
        "axformer baseline --parent {input.parent} --ckpt {output.ckpt} --metrics {output.record}"
        " --variant-name {wildcards.variant} {params.match} {params.args} --data-dir {params.data_dir}"
        " --threads {threads} --no-progress > {log} 2>&1"


rule majority:
    input:
        task_def=task_def_input,
    output:
        METRICS.replace("{variant}", "majority"),
    log:
        f"{LOGS}/{RUN}/majority.log".replace("{variant}", "majority"),
    params:
        model=model_spec,
        profile=config["profile"],
        data_dir=data_dir,
        split=split_flags,
        task_def=task_def_flag,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "axformer majority --task {wildcards.task} {params.task_def} --seed {wildcards.seed} --profile {params.profile}"
        " --model {params.model} --data-dir {params.data_dir} {params.split} --metrics {output} > {log} 2>&1"
