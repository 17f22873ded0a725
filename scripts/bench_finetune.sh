#!/usr/bin/env bash
# Benchmark (issue 2): fine-tune the embedded MiniLM on five GLUE tasks on this CPU; dev metrics and
# training wall time land in results/<task>/minilm/finetune/seed<k>/metrics.json.
# Budgets (CPU, 2 cores): lr 1e-4, batch 32, max length 128; SST-2 train' subsampled to 6,000 rows x 2 epochs,
# the other tasks use all of train' (GLUE train minus the 15 % search split) for 3 epochs.
set -euo pipefail
: "${AXFORMER_DATA:?set AXFORMER_DATA to the data folder (e.g. ../shared/data)}"
SEED=${SEED:-0}
run() {
  local task=$1; shift
  axformer finetune --task "$task" --model minilm --seed "$SEED" --profile bench --lr 1e-4 --threads 2 \
    --ckpt "checkpoints/$task/minilm/finetune/seed$SEED" \
    --metrics "results/$task/minilm/finetune/seed$SEED/metrics.json" --no-progress "$@"
}
run sst2 --train-max 6000 --epochs 2
run mrpc --epochs 3
run rte --epochs 3
run cola --epochs 3
run stsb --epochs 3
