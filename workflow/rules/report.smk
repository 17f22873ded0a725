# All metrics.json -> results/summary.csv, per-task tables and figures (axformer.report.render), and the
# verdict table results/verdicts.csv with its rendering (axformer.verdicts; intervals from predictions.npz).


rule report:
    input:
        run_targets(),
    output:
        summary=f"{RES}/summary.csv",
        index=f"{FIGS}/README.md",
        verdicts=f"{RES}/verdicts.csv",
    log:
        f"{LOGS}/report.log",
    params:
        results=lambda wildcards, output: os.path.dirname(output.summary),
        figures=lambda wildcards, output: os.path.dirname(output.index),
        batch_size=config["report_batch_size"],
        bootstrap=f"--resamples {int(config['bootstrap_resamples'])} --bootstrap-seed {int(config['bootstrap_seed'])}",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "axformer report --results {params.results:q} --figures {params.figures:q} --summary {output.summary:q}"
        " --batch-size {params.batch_size:q} --verdicts {output.verdicts:q} {params.bootstrap} > {log:q} 2>&1"
