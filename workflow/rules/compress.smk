# Compression that combines with AxFormer: knowledge distillation into a smaller student (a checkpoint,
# built here) and int8 quantization. int8 writes no checkpoint: `measure` of X+int8 loads X's checkpoint
# with --quantize int8 (see measure.smk), so int8 is timed on the device its backend runs on.


rule distill:
    input:
        parent=parent_ckpt,
    output:
        ckpt=ckpt_output(CKPT_DIR),
        record=STEP_RECORD,
    log:
        f"{LOGS}/{RUN}/distill.log",
    wildcard_constraints:
        variant=variant_ending_in(steps_with("distill")),
    params:
        device=step_device,
        args=step_flags,
        data_dir=data_dir,
    threads: step_threads
    resources:
        mem_mb=step_resource("mem_mb"),
        runtime=step_resource("runtime"),
        gpu=step_resource("gpu"),
    shell:
        "axformer distill --parent {input.parent:q} --ckpt {output.ckpt:q} --metrics {output.record:q}"
        " {params.args} --data-dir {params.data_dir} --threads {threads:q} --device {params.device} --no-progress > {log:q} 2>&1"
