#!/usr/bin/env bash
# The issue benchmarks (five GLUE tasks, embedded MiniLM, CPU) through the DAG's `bench` profile, in tiers so
# that the results that carry the conclusions land first, one task at a time (a stopped run leaves whole tasks):
#   A  finetune, AxFormer (default: official hard attention, guarded accept rule), latency-aware AxFormer, majority
#   B  hard attention only, runtime int8 (ONNX Runtime / OpenVINO) of finetune and AxFormer, Fisher peer
#   C  the other AxFormer ablations (prune, paper rule, old mean-loss default, renorm form, K = 50 %, blocks)
#   D  torch int8, distillation chains, head pruning / layer dropping peers, Fisher at 50 % FLOPs
#   S  seeds 1 and 2 of the variants that carry the conclusions (seeds_per_variant in bench.yaml)
#   R  the report (summary.csv, verdicts.csv, tables, figures)
# Usage: AXFORMER_DATA=../shared/data scripts/bench.sh [TIER ...]   (default: A B R C D R S R)
#        TASKS="cola mrpc" scripts/bench.sh A                        (a subset of the tasks)
set -euo pipefail
: "${AXFORMER_DATA:?set AXFORMER_DATA to the data folder (e.g. ../shared/data)}"
read -r -a TASKS <<< "${TASKS:-cola mrpc stsb sst2 rte}"
# a run's metrics.json, and its decisions.json where the variant's last step (before int8) is a search
# (the search steps are the bench profile's `approximate` steps, read from its config laid over the step
# registry, not listed twice)
DECISION_STEPS=" $(python3 -c 'import sys
from axformer.steps.profiles import load_profile
steps = load_profile(sys.argv[1], sys.argv[2])["steps"]
print(" ".join(n for n, s in steps.items() if s.get("command") == "approximate"))' workflow/config/bench.yaml \
  workflow/config/steps.yaml) "
run() {
  local d="results/bench/$1/minilm/$2/seed${3:-0}" last="${2%%+int8*}"
  echo "$d/metrics.json"
  [[ "$DECISION_STEPS" == *" ${last##*+} "* ]] && echo "$d/decisions.json"
  return 0
}
tier() {  # tier task -> targets
  local t=$2
  case $1 in
    A) for v in finetune finetune+axformer finetune+axformer_lat majority; do run "$t" "$v"; done ;;
    B) for v in finetune+hardattn finetune+int8_ort finetune+axformer+int8_ort finetune+int8_ov \
                finetune+axformer+int8_ov finetune+axformer_lat+int8_ov finetune+fisher; do run "$t" "$v"; done ;;
    C) for v in finetune+prune finetune+axformer_paper finetune+axformer_meanloss finetune+hardattn_renorm \
                finetune+hardattn_half finetune+blocks finetune+prune+int8_ort finetune+prune+int8_ov; do run "$t" "$v"; done ;;
    D) for v in finetune+int8 finetune+axformer+int8 finetune+distill finetune+distill+int8 finetune+distill+axformer \
                finetune+distill+axformer+int8 finetune+distill+axformer+int8_ort finetune+distill+axformer+int8_ov \
                finetune+headprune finetune+layerdrop finetune+headprune_heads finetune+fisher_50 \
                finetune+int8_ort_static finetune+fisher+int8; do run "$t" "$v"; done ;;
    S) for s in 1 2; do for v in finetune finetune+axformer finetune+axformer_lat finetune+axformer_paper \
                finetune+headprune finetune+layerdrop finetune+int8 finetune+axformer+int8 \
                finetune+distill+axformer+int8 majority; do run "$t" "$v" "$s"; done; done ;;
  esac
}
for T in "${@:-A B R C D R S R}"; do
  if [ "$T" != R ]; then
    for t in "${TASKS[@]}"; do
      mapfile -t targets < <(tier "$T" "$t")
      echo "=== $(date +%T) tier $T task $t"
      # --rerun-triggers mtime: a finished step is never redone because a later commit touched the code
      snakemake --cores 2 --configfile workflow/config/bench.yaml --rerun-triggers mtime --keep-going \
        -- "${targets[@]}" || echo "tier $T $t: some jobs failed (see logs/bench)"
    done
    continue
  fi
  # the report of what exists (the report rule would first build every variant of the profile)
  echo "=== $(date +%T) report"
  axformer report --results results/bench --figures figures/bench --summary results/bench/summary.csv \
    --verdicts results/bench/verdicts.csv || echo "report failed"
done
