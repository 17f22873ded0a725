# AxFormer (DESIGN §3): the accuracy-driven search on the search split, with frozen weights. Every step
# whose command is `approximate` runs here: axformer (hard attention, then pruning), its ablations
# (prune, hardattn, blocks, accept rules) and any new entry of that kind in config `steps`.


rule approximate:
    input:
        parent=parent_ckpt,
    output:
        ckpt=ckpt_output(CKPT_DIR),
        record=STEP_RECORD,
        decisions=CKPT_DECISIONS,
    log:
        f"{LOGS}/{RUN}/approximate.log",
    wildcard_constraints:
        variant=variant_ending_in(steps_with("approximate")),
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
        "axformer approximate --parent {input.parent:q} --ckpt {output.ckpt:q} --metrics {output.record:q}"
        " --decisions {output.decisions:q} {params.args} --data-dir {params.data_dir} --threads {threads:q}"
        " --variant-name {wildcards.variant:q}"
        " --device {params.device} --no-progress > {log:q} 2>&1"
