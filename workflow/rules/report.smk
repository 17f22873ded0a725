# All metrics.json -> results/summary.csv (narrow, one row per run) with latency.csv, elements.csv and
# baseline_scores.csv beside it (axformer.reporting.tidy), per-task tables and figures (axformer.reporting.report.render), and the
# verdict table results/verdicts.csv with its rendering (axformer.reporting.verdicts; intervals from predictions.npz).
# Every figure and table is flagged for `snakemake --report report.html`, captioned from workflow/report/.

import shlex

from axformer.utils import slug as _fig_slug

CAPTIONS = "../report"


def removal_maps():
    """removal_map_<task>_<model>_<variant>_seed<k>.png of every run with decisions.json (axformer.reporting.report)."""
    return [f"{FIGS}/removal_map_{_fig_slug(t)}_{_fig_slug(m)}_{_fig_slug(v)}_seed{s}.png"
            for v in config["variants"] if has_decisions(v) for t in TASK_NAMES if variant_runs_on(v, t)
            for m in MODEL_SPECS for s in variant_seeds(v, m)]


rule report:
    input:
        run_targets(),
    output:
        summary=report(f"{RES}/summary.csv", caption=f"{CAPTIONS}/summary.rst", category="Tables"),
        latency=report(f"{RES}/latency.csv", caption=f"{CAPTIONS}/latency.rst", category="Tables"),
        elements=report(f"{RES}/elements.csv", caption=f"{CAPTIONS}/elements.rst", category="Tables"),
        scores=report(f"{RES}/baseline_scores.csv", caption=f"{CAPTIONS}/baseline_scores.rst", category="Tables"),
        verdicts=report(f"{RES}/verdicts.csv", caption=f"{CAPTIONS}/verdicts_table.rst", category="Tables"),
        index=f"{FIGS}/README.md",
        verdicts_fig=report(f"{FIGS}/verdicts.png", caption=f"{CAPTIONS}/verdicts.rst", category="Verdicts"),
        accuracy=[report(f"{FIGS}/accuracy_vs_latency_{_fig_slug(t)}.png", caption=f"{CAPTIONS}/accuracy_vs_latency.rst",
                         category="Accuracy vs latency", subcategory=t) for t in TASK_NAMES],
        bars=[report(f"{FIGS}/speedup_size_bars_{_fig_slug(t)}.png", caption=f"{CAPTIONS}/speedup_size_bars.rst",
                     category="Speedup and size", subcategory=t) for t in TASK_NAMES],
        maps=[report(p, caption=f"{CAPTIONS}/removal_map.rst", category="Removal maps") for p in removal_maps()],
    log:
        f"{LOGS}/report.log",
    params:
        results=lambda wildcards, output: os.path.dirname(output.summary),
        figures=lambda wildcards, output: os.path.dirname(output.index),
        batch_size=config["report_batch_size"],
        bootstrap=f"--resamples {int(config['bootstrap_resamples'])} --bootstrap-seed {int(config['bootstrap_seed'])}",
        readme=f"--readme {shlex.quote(config['readme'])}" if config.get("readme") else "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "axformer report --results {params.results:q} --figures {params.figures:q} --summary {output.summary:q}"
        " --batch-size {params.batch_size:q} --verdicts {output.verdicts:q} {params.bootstrap} {params.readme}"
        " > {log:q} 2>&1"
