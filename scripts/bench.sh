#!/usr/bin/env bash
# The issue benchmarks (five GLUE tasks, embedded MiniLM, CPU) through the DAG's `bench` profile, in tiers
# so that the most important results land first: (1) finetune + AxFormer (+int8) on every task,
# (2) the AxFormer ablations, (3) distillation chains, (4) peer baselines, (5) the report, (6) extra combinations.
# Usage: AXFORMER_DATA=../shared/data scripts/bench.sh [TIER ...]   (default: all tiers)
set -euo pipefail
: "${AXFORMER_DATA:?set AXFORMER_DATA to the data folder (e.g. ../shared/data)}"
TASKS=(sst2 mrpc rte cola stsb)
targets() { for t in "${TASKS[@]}"; do for v in "$@"; do echo "results/bench/$t/minilm/$v/seed0/metrics.json"; done; done; }
tier() {
  case $1 in
    1) targets finetune finetune+axformer finetune+axformer_lat finetune+int8 finetune+axformer+int8 majority ;;
    2) targets finetune+axformer_paper finetune+axformer_meanloss finetune+hardattn_half finetune+prune \
         finetune+hardattn finetune+hardattn_renorm finetune+blocks ;;
    3) targets finetune+distill finetune+distill+axformer finetune+distill+axformer+int8 ;;
    4) targets finetune+headprune finetune+layerdrop finetune+headprune_heads ;;
    5) echo results/bench/summary.csv ;;
    6) targets finetune+distill+int8 ;;
  esac
}
for t in "${@:-1 3 4 5 2 6 5}"; do
  # --rerun-triggers mtime: a finished step is never redone because a later commit touched the code
  snakemake --cores 2 --configfile workflow/config/bench.yaml --rerun-triggers mtime --keep-going \
    $(tier "$t") || echo "tier $t: some jobs failed (see logs/bench)"
done
