#!/usr/bin/env bash
# GPU check (issues 15 and 21): fine-tune MiniLM and the 12-layer MPNet-base on an SST-2 subset, run the AxFormer
# search and measure finetune / finetune+axformer with CUDA events, per-model memory, NVML, fp32 / fp16 (MiniLM
# also bf16) and LLM.int8, on one GPU in under eight minutes (no stage starts after GPU_CHECK_BUDGET_S, a running
# one is stopped at GPU_CHECK_DEADLINE_S). Every stage calls `python -m axformer.cli`; no Snakemake, no console
# script.
#
# Usage: scripts/gpu_check.sh [OUT] [-- extra scripts/gpu_check.py flags]
#   OUT                   output folder (default results/gpu; also GPU_CHECK_OUT)
#   GPU_CHECK_MODEL       'minilm' (embedded package) or a local copy of its folder, e.g. the output of
#                         python -c "from axformer.encoders.models import embedded_model_dir; print(embedded_model_dir())"
#   GPU_CHECK_MPNET       the extracted all-mpnet-base-v2 folder (config.json + model.safetensors), e.g. a copy of
#                         python -c "from axformer.encoders.mpnet_parts import model_dir; print(model_dir())";
#                         'mpnet-base' (the PyPI parts installed), 'auto' (default: that cache folder, else the
#                         parts) or 'none'. Not found: the mpnet_* stages are skipped, the reason in the summary
#   AXFORMER_DATA         the data folder holding glue/SST-2
#   GPU_CHECK_BUDGET_S    stages that would start later than this are skipped (default 420)
#   GPU_CHECK_DEADLINE_S  a stage still running then is stopped (default 465)
#   PYTHON                interpreter (default python3)
# A failed stage is logged in OUT/logs and the rest still run; OUT/summary.md names the card either way.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${GPU_CHECK_OUT:-results/gpu}}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
: "${AXFORMER_DATA:?set AXFORMER_DATA to the data folder (it holds glue/)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# determinism: cuBLAS needs its workspace fixed before CUDA initialises (the CLI sets it too)
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
exec "${PYTHON:-python3}" scripts/gpu_check.py --out "$OUT" --model "${GPU_CHECK_MODEL:-minilm}" "$@"
