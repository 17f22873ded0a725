# The root of every variant: fine-tune the pretrained model on train' (GLUE train minus the search split).

FT_STEP = STEPS["finetune"]


rule finetune:
    input:
        task_def=task_def_input,
    output:
        ckpt=ckpt_output(CKPT_DIR.replace("{variant}", "finetune")),
        record=STEP_RECORD.replace("{variant}", "finetune"),
    log:
        f"{LOGS}/{RUN}/finetune.log".replace("{variant}", "finetune"),
    params:
        model=model_spec,
        profile=config["profile"],
        data_dir=data_dir,
        split=split_flags,
        args=finetune_flags,
        device=shlex.quote(FT_STEP["device"]),
        task_def=task_def_flag,
    threads: FT_STEP["threads"]
    resources:
        mem_mb=FT_STEP["mem_mb"],
        runtime=FT_STEP["runtime"],
        gpu=FT_STEP["gpu"],
    shell:
        "axformer finetune --task {wildcards.task:q} {params.task_def} --model {params.model} --seed {wildcards.seed:q}"
        " --profile {params.profile:q} --data-dir {params.data_dir} {params.split} {params.args}"
        " --threads {threads:q} --ckpt {output.ckpt:q} --metrics {output.record:q} --device {params.device}"
        " --no-progress > {log:q} 2>&1"
