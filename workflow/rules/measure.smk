# Every variant -> metrics.json (DESIGN §4): dev + search metric, size, latency against finetune of the
# same task/model/seed (timed interleaved in the same job), memory, FLOPs, env, and the step records'
# blocks; predictions.npz beside it (dev predictions, labels, row ids, per-iteration times: axformer.stats).
# Measure jobs take the resource timing=1 (cap it with --resources timing=1 so no two timings
# share hardware) and, with measure.exclusive, all local cores, so nothing runs beside a timing.


rule measure:
    input:
        baseline=baseline_ckpt,
        variant=measured_ckpt,
        records=step_records,
    output:
        metrics=METRICS,
        predictions=PREDICTIONS,
    log:
        f"{LOGS}/{RUN}/measure.log",
    params:
        model=model_spec,
        profile=config["profile"],
        data_dir=data_dir,
        quantize=quantize_flags,
        measure=measure_flags,
    threads: measure_threads
    resources:
        mem_mb=config["measure"]["mem_mb"],
        runtime=config["measure"]["runtime"],
        gpu=config["measure"]["gpu"],
        timing=1,
    shell:
        "axformer measure --task {wildcards.task:q} --seed {wildcards.seed:q} --profile {params.profile:q}"
        " --model {params.model} --variant-name {wildcards.variant:q} --baseline {input.baseline:q}"
        " --variant {input.variant:q} {params.quantize} --step-json {input.records:q} {params.measure}"
        " --data-dir {params.data_dir} --metrics {output.metrics:q} > {log:q} 2>&1"


# decisions.json of AxFormer-like variants (and their +int8) next to metrics.json, for the removal maps.
rule decisions:
    input:
        ckpt_decisions,
    output:
        DECISIONS,
    log:
        f"{LOGS}/{RUN}/decisions.log",
    wildcard_constraints:
        variant=rf"{variant_ending_in(DECISION_STEPS)}(?:\+{_alt(QUANT_STEPS)})?",
    localrule: True
    shell:
        "(cp {input:q} {output:q}.tmp && mv {output:q}.tmp {output:q}) > {log:q} 2>&1"
