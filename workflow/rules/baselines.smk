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
        device=step_device,
        args=step_flags,
        match=match_flag,
        data_dir=data_dir,
    threads: step_threads
    resources:
        mem_mb=step_resource("mem_mb"),
        runtime=step_resource("runtime"),
        gpu=step_resource("gpu"),
    shell:
        "axformer baseline --parent {input.parent:q} --ckpt {output.ckpt:q} --metrics {output.record:q}"
        " --variant-name {wildcards.variant:q} {params.match} {params.args} --data-dir {params.data_dir}"
        " --threads {threads:q} --device {params.device} --no-progress > {log:q} 2>&1"


rule majority:
    input:
        task_def=task_def_input,
    output:
        metrics=METRICS.replace("{variant}", "majority"),
        predictions=PREDICTIONS.replace("{variant}", "majority"),
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
        "axformer majority --task {wildcards.task:q} {params.task_def} --seed {wildcards.seed:q} --profile {params.profile:q}"
        " --model {params.model} --data-dir {params.data_dir} {params.split} --metrics {output.metrics:q} > {log:q} 2>&1"
