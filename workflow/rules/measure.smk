# Every variant -> metrics.json (DESIGN §4): dev + search metric, size, latency against finetune of the
# same task/model/seed (timed interleaved in the same job), memory, FLOPs, env, and the step records'
# blocks; predictions.npz beside it (dev predictions, labels, row ids, per-iteration times: axformer.stats).
# Only `time` jobs time: they take the resource timing=1 (cap it with --resources timing=1 so no two timings
# share hardware) and, with measure.exclusive, all local cores, so nothing runs beside a timing. A measure job
# reads its group's timing.json and evaluates; it books measure.threads.
#
# Timing (DESIGN §6, axformer/measurement/timing.py): one `time` job per (task, model, seed) loads finetune and every timed
# variant of that seed in each of measure.passes fresh processes and times them round-robin; its timing.json
# (every pass, with host noise) gives each measure job its latency blocks. Re-time every run of a profile, never
# a hand-picked few: `snakemake --cores all --configfile P --forcerun time`, then the same with `--forcerun measure` (each measure job then re-reads).

TIMING = f"{RES}/{{task}}/{{model}}/timing/seed{{seed}}/timing.json"
QUANT_KEYS = ("quantize", "quantize_backend", "quantize_compute_dtype")


def timed_variants(task, model, seed):
    """The variants of the profile that have a run of ``model`` on ``task`` at ``seed`` (majority is not timed)."""
    return [v for v in config["variants"] if variant_runs_on(v, task) and int(seed) in variant_seeds(v, model)]


def timing_entries(wildcards):
    """One plan entry per timed variant of the group: its checkpoint and quantize settings."""
    out = []
    for v in timed_variants(wildcards.task, wildcards.model, wildcards.seed):
        last = variant_steps(v)[-1]
        q = STEPS[last]["args"] if last in QUANT_STEPS else {}
        out.append({"variant": v, "ckpt": run_path(CKPT_DIR, wildcards, checkpoint_variant(v)),
                    **{k: q.get(k) for k in QUANT_KEYS}, "dtype": variant_dtype(v)})
    for e in out:
        e["quantize"] = e["quantize"] or "none"
    return out


def timing_ckpts(wildcards):
    return sorted({e["ckpt"] for e in timing_entries(wildcards)} | {baseline_ckpt(wildcards)})


def timing_plan(wildcards):
    """The `axformer time --plan-json` value (quoted by the rule): ids, checkpoints, entries, measure settings."""
    m = config["measure"]
    keys = ("device", "batch_sizes", "seq_len", "warmup", "min_iters", "min_seconds", "threads", "dtype", "passes",
            "pass_retries", "noise_max_other_cpu", "noise_max_steal", "pass_process", "round_order", "memory_isolation")
    return json.dumps({"task": wildcards.task, "model": MODEL_SPECS[wildcards.model], "seed": int(wildcards.seed),
                       "profile": config["profile"], "baseline": baseline_ckpt(wildcards),
                       "data_dir": config["data_dir"], "entries": timing_entries(wildcards),
                       "measure": {k: m[k] for k in keys}}, sort_keys=True)


def group_timing(wildcards):
    return TIMING.format(task=wildcards.task, model=wildcards.model, seed=wildcards.seed)


def ancient_timing(wildcards):
    return ancient(group_timing(wildcards))


rule time:
    input:
        timing_ckpts,
    output:
        timing=TIMING,
        samples=TIMING.replace(".json", ".npz"),
    log:
        f"{LOGS}/{{task}}/{{model}}/timing/seed{{seed}}/time.log",
    params:
        plan=timing_plan,
    threads: timing_threads
    resources:
        mem_mb=config["measure"]["mem_mb"],
        runtime=config["measure"]["runtime"],
        gpu=config["measure"]["gpu"],
        timing=1,
    shell:
        "axformer time --plan-json {params.plan:q} --out {output.timing:q} > {log:q} 2>&1"


rule measure:
    input:
        baseline=baseline_ckpt,
        variant=measured_ckpt,
        records=step_records,
        # ancient: a fresh clone's checkout order of the committed timing.json must not re-run measure (and so
        # the whole DAG); re-timing runs --forcerun time, then --forcerun measure
        # (Snakemake 9 runs only the first of two forced rules when the second's input is ancient)
        timing=ancient_timing,
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
    threads: config["measure"]["threads"]
    resources:
        mem_mb=config["measure"]["mem_mb"],
        runtime=config["measure"]["runtime"],
        gpu=config["measure"]["gpu"],
    shell:
        "axformer measure --task {wildcards.task:q} --seed {wildcards.seed:q} --profile {params.profile:q}"
        " --model {params.model} --variant-name {wildcards.variant:q} --baseline {input.baseline:q}"
        " --variant {input.variant:q} {params.quantize} --step-json {input.records:q} {params.measure}"
        " --data-dir {params.data_dir} --timing {input.timing:q} --metrics {output.metrics:q} > {log:q} 2>&1"


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
