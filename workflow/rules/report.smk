# All metrics.json -> results/summary.csv, per-task tables and figures (axformer.report.render).


rule report:
    input:
        run_targets(),
    output:
        summary=f"{RES}/summary.csv",
        index=f"{FIGS}/README.md",
    log:
        f"{LOGS}/report.log",
    params:
        results=lambda wildcards, output: os.path.dirname(output.summary),
        figures=lambda wildcards, output: os.path.dirname(output.index),
        batch_size=config["report_batch_size"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "axformer report --results {params.results:q} --figures {params.figures:q} --summary {output.summary:q}"
        " --batch-size {params.batch_size:q} > {log:q} 2>&1"
