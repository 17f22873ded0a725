#!/usr/bin/env bash
# Build, on a machine with network (pip) and this checkout, the folder a network-less GPU host needs to run the
# gpu profile (workflow/config/gpu.yaml) and the cuda-marked tests (issue 35, docs/GPU.md):
#   wheels/       cp312 manylinux wheels of what the GPU image may lack (Snakemake and its dependencies,
#                 bitsandbytes, nvidia-ml-py, pytest), each pinned to the version installed here, --no-deps
#   minilm/       the embedded MiniLM's config and tokenizer files, its weights as fp16 safetensors chunks of at
#                 most CHUNK_MIB (40) MiB; run.sh rebuilds model.safetensors (fp32) from them on the host
#   data/         the GLUE files the profile reads (SST-2, MRPC train and dev, whole files: the same splits as on CPU)
#   run.sh        installs what is missing, rebuilds the model, runs the gpu profile and the cuda-marked tests,
#                 each stage under its own timeout, and copies results, figures, logs and host facts to OUT
# The folder is git-ignored (build/) and never committed.
#
# Usage: scripts/gpu_payload.sh [DEST]            (default build/gpu_payload; AXFORMER_DATA must be set)
#   SKIP_WHEELS="bitsandbytes ..."  leave these wheels out (e.g. where the GPU image is known to have them)
#   PYVER=3.12                      the GPU image's Python (KINDS.md: 3.12.3)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DEST=${1:-build/gpu_payload}
PYVER=${PYVER:-3.12}
CHUNK_MIB=${CHUNK_MIB:-40}
: "${AXFORMER_DATA:?set AXFORMER_DATA to the data folder (it holds glue/)}"
PY=${PYTHON:-python3}
case "$DEST" in /*) ;; *) DEST="$REPO/$DEST" ;; esac
git -C "$REPO" check-ignore -q "$DEST" || { echo "error: $DEST is not git-ignored; the payload must never be committed (use build/...)" >&2; exit 2; }
rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/minilm" "$DEST/data/glue"

# -- wheels: the requirement closure of these roots, as installed here, minus what the GPU image has (torch and
# the Hugging Face stack: KINDS.md's pip list) and pulp (Snakemake imports it only for its ILP scheduler; run.sh
# uses --scheduler greedy)
ROOTS="snakemake bitsandbytes nvidia-ml-py pytest"
IMAGE_HAS="torch numpy packaging transformers tokenizers safetensors huggingface-hub hf-xet accelerate pulp
sentence-transformers kernels scipy scikit-learn pandas matplotlib datasets typer rich click pygments filelock fsspec
tqdm regex httpx2 httpx2-jsfetch httpcore2 anyio h11 certifi idna urllib3 charset-normalizer"
"$PY" - "$ROOTS" "$IMAGE_HAS ${SKIP_WHEELS:-}" > "$DEST/wheels/requirements.txt" <<'EOF'
import importlib.metadata as md, re, sys
from packaging.markers import Marker
HOST = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
        "os_name": "posix", "platform_machine": "x86_64", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "extra": ""}  # the GPU image (KINDS.md)
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
roots, skip = sys.argv[1].split(), {norm(n) for n in sys.argv[2].split()}
seen, stack = {}, list(roots)
while stack:
    name = norm(stack.pop())
    if name in seen or name in skip:
        continue
    dist = md.distribution(name)  # not installed here: fails loudly, the payload would be incomplete
    seen[name] = dist.version
    for req in dist.requires or []:
        spec, _, marker = req.partition(";")
        if marker.strip() and not Marker(marker).evaluate(HOST):  # extras, Windows, older Pythons
            continue
        stack.append(re.match(r"[A-Za-z0-9_.-]+", spec.strip()).group(0))
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))
EOF
while read -r req; do  # a released wheel for the image's Python; a pure-Python sdist is built into one here
    pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DEST/wheels" "$req" > /dev/null 2>&1 \
    || pip wheel -q --no-deps -w "$DEST/wheels" "$req" > /dev/null 2>&1 \
    || { echo "error: no wheel for $req" >&2; exit 1; }
done < "$DEST/wheels/requirements.txt"
if ls "$DEST/wheels"/*.whl | grep -v -e "-none-any.whl" -e "cp${PYVER/./}" -e "py3-none-manylinux" -e "-abi3-" >&2; then
    echo "error: the wheels above were built for this machine's Python, not the image's $PYVER" >&2; exit 1
fi
n_req=$(grep -c . "$DEST/wheels/requirements.txt"); n_whl=$(ls "$DEST/wheels"/*.whl | wc -l)
[ "$n_req" = "$n_whl" ] || { echo "error: $n_req requirements but $n_whl wheels in $DEST/wheels" >&2; exit 1; }

# -- MiniLM: config and tokenizer files, fp16 weight chunks (what travels); the host upcasts them to fp32
"$PY" - "$DEST/minilm" "$CHUNK_MIB" <<'EOF'
import json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from axformer.encoders.models import embedded_model_dir

out, limit = Path(sys.argv[1]), int(sys.argv[2]) * 2**20
src = embedded_model_dir()
for f in src.iterdir():
    if f.is_file() and f.suffix != ".safetensors" and f.name not in ("README.md", ".gitattributes"):
        shutil.copy2(f, out / f.name)
state = load_file(str(src / "model.safetensors"))
chunks, cur, size = [], {}, 0
for k in sorted(state):
    t = state[k].half() if state[k].is_floating_point() else state[k]
    nbytes = t.numel() * t.element_size()
    if cur and size + nbytes > limit - 2**20:  # leave room for the safetensors header
        chunks.append(cur); cur, size = {}, 0
    cur[k] = t.contiguous(); size += nbytes
chunks.append(cur)
index = {"source": str(src), "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in state.items()}, "chunks": []}
for i, c in enumerate(chunks):
    name = f"weights-{i:02d}.fp16.safetensors"
    save_file(c, str(out / name))
    assert (out / name).stat().st_size <= limit, name
    index["chunks"].append(name)
(out / "weights_index.json").write_text(json.dumps(index, indent=1))
EOF

# -- data: the two tasks of the profile, whole files (the search / train' split is drawn from the full train file)
for t in SST-2 MRPC; do
    mkdir -p "$DEST/data/glue/$t"
    cp "$AXFORMER_DATA/glue/$t/train.tsv" "$AXFORMER_DATA/glue/$t/dev.tsv" "$DEST/data/glue/$t/"
done

# -- run.sh (scripts/gpu_run.sh): everything the GPU host does, one stage at a time
cp scripts/gpu_run.sh "$DEST/run.sh"  # kept in the repository (scripts/gpu_run.sh), copied beside the payload
chmod +x "$DEST/run.sh"

du -sh "$DEST"; find "$DEST" -type f | wc -l
( cd "$DEST" && find . -type f -printf '%s %p\n' | sort -rn | head -5 )
