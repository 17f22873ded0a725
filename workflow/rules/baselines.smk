# Reference points: the constant-predictor (majority) row. Peer compression methods from baselines/ (one
# config `steps` entry each, command `baseline`, args.method = the registered name) run in steps.smk.


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
