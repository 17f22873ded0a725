#!/usr/bin/env bash
# SQuAD v1.1 benchmark, local protocol (DESIGN §8): dev-v1.1.json split by article (seeded; 60 % fine-tune,
# 10 % search, 30 % report, no article in two parts), embedded MiniLM, CPU. Runs the `axformer` CLI:
#   finetune -> approximate (AxFormer search) -> measure finetune and finetune+axformer (each timed interleaved
#   against finetune in its own job) [-> measure finetune+axformer+int8 with WITH_INT8=1] -> report
# Results (DESIGN §4 schema): results/squad_local/squad/minilm/<variant>/seed<k>/metrics.json (+ decisions.json),
# results/squad_local/summary.csv and figures/squad_local/ (tables/squad.md: F1, EM, size, speedup).
# Every step is skipped when its output exists, so an interrupted run resumes where it stopped.
#
# Usage: AXFORMER_DATA=../shared/data scripts/squad_local_bench.sh
# CPU budget (the defaults; DESIGN §8): fine-tune on 2,000 of the 6,945 questions of the fine-tune articles for
# 2 epochs, windows of 256 tokens sharing 128; AxFormer search on 250 of the 783 questions of the search
# articles; report on all 2,842 questions of the report articles (seed 0); timing at length 256, batch 1 and 8.
# Estimated ~35 min on 2 free cores (fine-tune ~18, search ~9, evaluation and timing ~8), about 1 h if other
# jobs share the CPU. Override with the environment variables below; a tiny check of the script:
#   TAG=squad_local_check TRAIN_MAX=32 SEARCH_MAX=16 DEV_MAX=16 EPOCHS=1 MAX_LENGTH=96 DOC_STRIDE=32 SEQ_LEN=64 \
#   BATCH_SIZES=1 TOPK=8 scripts/squad_local_bench.sh
set -euo pipefail
: "${AXFORMER_DATA:?set AXFORMER_DATA to the data folder (e.g. ../shared/data)}"
cd "$(dirname "$0")/.."

AXFORMER=${AXFORMER:-axformer}          # the CLI (e.g. "python -m axformer.cli" from a checkout)
TAG=${TAG:-squad_local}                  # results/<TAG>, checkpoints/<TAG>, logs/<TAG>, figures/<TAG>
MODEL=${MODEL:-minilm}
SEED=${SEED:-0}
THREADS=${THREADS:-2}
FRACTIONS=${FRACTIONS:-0.6,0.1,0.3}
TRAIN_MAX=${TRAIN_MAX:-2000}
SEARCH_MAX=${SEARCH_MAX:-250}
DEV_MAX=${DEV_MAX:-}                     # empty = every question of the report articles
EPOCHS=${EPOCHS:-2}
LR=${LR:-1e-4}
BATCH=${BATCH:-32}
MAX_LENGTH=${MAX_LENGTH:-256}
DOC_STRIDE=${DOC_STRIDE:-128}
MAX_ANSWER_LEN=${MAX_ANSWER_LEN:-30}
TOPK=${TOPK:-30}
SEQ_LEN=${SEQ_LEN:-$MAX_LENGTH}
BATCH_SIZES=${BATCH_SIZES:-1 8}
WITH_INT8=${WITH_INT8:-0}

run_dir() { echo "$1/$TAG/squad/$MODEL/$2/seed$SEED"; }
CK_FT=$(run_dir checkpoints finetune)
CK_AX=$(run_dir checkpoints finetune+axformer)
LOGS=logs/$TAG/squad/$MODEL
mkdir -p "$LOGS" "$CK_FT" "$CK_AX"
step() {  # step NAME OUTPUT CMD...: run CMD (log in logs/) unless OUTPUT exists
  local name=$1 out=$2; shift 2
  if [ -e "$out" ]; then echo "[$name] done already ($out)"; return; fi
  echo "[$name] $(date +%T) ..."
  local t0=$SECONDS
  if ! "$@" > "$LOGS/$name.log" 2>&1; then tail -5 "$LOGS/$name.log"; echo "[$name] failed, see $LOGS/$name.log"; exit 1; fi
  grep -v "^axformer .*: done" "$LOGS/$name.log" | tail -1
  echo "[$name] $((SECONDS - t0)) s"
}

step finetune "$CK_FT/step.json" $AXFORMER finetune --task squad --model "$MODEL" --seed "$SEED" --profile "$TAG" \
  --data-dir "$AXFORMER_DATA" --squad-protocol local --squad-fractions "$FRACTIONS" --train-max "$TRAIN_MAX" \
  --search-max "$SEARCH_MAX" ${DEV_MAX:+--dev-max "$DEV_MAX"} --max-length "$MAX_LENGTH" --doc-stride "$DOC_STRIDE" \
  --max-answer-len "$MAX_ANSWER_LEN" --epochs "$EPOCHS" --lr "$LR" --batch-size "$BATCH" --threads "$THREADS" \
  --ckpt "$CK_FT/ckpt" --metrics "$CK_FT/step.json" --no-progress

# the default profiles' AxFormer step: accept on the mean search loss (DESIGN §7), paper constants otherwise
step approximate "$CK_AX/step.json" $AXFORMER approximate --parent "$CK_FT/ckpt" --ckpt "$CK_AX/ckpt" \
  --metrics "$CK_AX/step.json" --decisions "$CK_AX/decisions.json" --mode full --granularity fine \
  --accept-rule meanloss --less-important 1.1 --groups 12 --topk "$TOPK" --data-dir "$AXFORMER_DATA" \
  --threads "$THREADS" --variant-name finetune+axformer --no-progress

measure() {  # measure VARIANT CKPT STEP_JSONS [extra flags]
  local variant=$1 ckpt=$2 steps=$3; shift 3
  local out; out=$(run_dir results "$variant")
  # shellcheck disable=SC2086  # BATCH_SIZES and steps are word lists
  step "measure_$variant" "$out/metrics.json" $AXFORMER measure --task squad --seed "$SEED" --profile "$TAG" \
    --model "$MODEL" --variant-name "$variant" --baseline "$CK_FT/ckpt" --variant "$ckpt" --step-json $steps \
    --device cpu --batch-sizes $BATCH_SIZES --seq-len "$SEQ_LEN" --threads "$THREADS" \
    --data-dir "$AXFORMER_DATA" --metrics "$out/metrics.json" "$@"
}
measure finetune "$CK_FT/ckpt" "$CK_FT/step.json"
measure finetune+axformer "$CK_AX/ckpt" "$CK_FT/step.json $CK_AX/step.json"
cp "$CK_AX/decisions.json" "$(run_dir results finetune+axformer)/decisions.json"
if [ "$WITH_INT8" = 1 ]; then
  measure finetune+axformer+int8 "$CK_AX/ckpt" "$CK_FT/step.json $CK_AX/step.json" --quantize int8
  cp "$CK_AX/decisions.json" "$(run_dir results finetune+axformer+int8)/decisions.json"
fi

$AXFORMER report --results "results/$TAG" --figures "figures/$TAG" --summary "results/$TAG/summary.csv" \
  > "$LOGS/report.log" 2>&1 || { tail -5 "$LOGS/report.log"; exit 1; }
echo "report: results/$TAG/summary.csv, figures/$TAG/tables/squad.md"
cat "figures/$TAG/tables/squad.md"
