#!/usr/bin/env bash
# One-GPU check of worldpm's speed in under 8 minutes: packed bf16 training of a Qwen2.5-0.5B-shaped reward model with
# flash-attention varlen vs SDPA vs padded batches (real tokens/s, padding, MFU on non-embedding parameters, peak memory), and
# `worldpm serve` requests/s with dynamic batching on and off. Writes OUT/gpu_check.json and prints a summary table
# (scripts/gpu_check.py does the measuring; docs/train.md, "GPU check", says how to read it).
#
#   scripts/gpu_check.sh [--out DIR] [--wheels DIR] [gpu_check.py options]    on a GPU machine
#   scripts/gpu_check.sh --dry-run --out DIR                                 tiny shapes on the CPU, seconds (CI runs this)
#   scripts/gpu_check.sh --download-wheels DIR [--python-version 3.12]       here, with a package registry: the wheels a GPU
#                                                                            machine without one needs, for --wheels DIR there
#
# First it installs what the machine lacks (`gpu_check.py --missing`: the check's packages at the versions the project runs),
# without dependencies, into a directory of its own put first on PYTHONPATH (the machine's torch and CUDA stay as they are):
# from --wheels DIR when given, else from the package registry, binary wheels only. flash-attn is tried the same way; PyPI
# ships only its source (a build takes far longer than this check), so without a wheel for this machine's torch, CUDA and
# Python in --wheels DIR the flash-attention row is skipped with a message saying so, and the rest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
wheels="" site="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/worldpm-gpu-check-site}" download="" pyver=3.12 dry=0 args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=$(cd "$2" && pwd); shift 2 ;;
    --download-wheels) download=$2; shift 2 ;;
    --python-version) pyver=$2; shift 2 ;;
    --dry-run) dry=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
       WANDB_MODE=disabled PYTHONUNBUFFERED=1

if [ -n "$download" ]; then  # binary wheels for a Linux x86-64 machine; pure-Python sources are built into wheels here
  mkdir -p "$download"
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  for req in $("$PY" scripts/gpu_check.py --requirements); do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${plat[@]}" \
        -d "$download" "$req" 2>/dev/null \
      || "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" -d "$download" "$req" 2>/dev/null \
      || "$PY" -m pip wheel -q --no-deps -w "$download" "$req" \
      || { echo "gpu_check: error: no wheel for $req" >&2; exit 2; }
  done
  echo "gpu_check: wheels for Python $pyver in $download ($(du -sh "$download" | cut -f1)); on the GPU machine: scripts/gpu_check.sh --wheels $download"
  exit 0
fi

pip_install() {  # pip_install <timeout s> <requirement>...: no dependencies, binary wheels only, into $site
  local limit=$1; shift
  local from=()
  [ -n "$wheels" ] && from=(--no-index --find-links "$wheels")
  timeout "$limit" "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-compile --only-binary=:all: \
      --upgrade --target "$site" "${from[@]}" "$@"
}

missing=$("$PY" scripts/gpu_check.py --missing)
if [ -n "$missing" ]; then
  echo "gpu_check: installing into $site: $(echo $missing)"
  mkdir -p "$site"
  pip_install 300 $missing || { echo "gpu_check: error: could not install $(echo $missing)" \
      "${wheels:+from $wheels }(bring them with: scripts/gpu_check.sh --download-wheels DIR, on a machine with a package registry)" >&2; exit 2; }
  export PYTHONPATH="$site:$PYTHONPATH"
  still=$("$PY" scripts/gpu_check.py --missing)
  [ -z "$still" ] || { echo "gpu_check: error: still missing after the install: $(echo $still)" >&2; exit 2; }
fi

if [ "$dry" = 0 ] && ! "$PY" -c "import flash_attn" 2>/dev/null; then
  mkdir -p "$site"
  if pip_install 120 flash-attn 2>/dev/null && PYTHONPATH="$site:$PYTHONPATH" "$PY" -c "import flash_attn" 2>/dev/null; then
    export PYTHONPATH="$site:$PYTHONPATH"
    echo "gpu_check: installed flash-attn"
  else
    echo "gpu_check: flash-attn is not installed and no binary wheel for this machine was found${wheels:+ in $wheels}" \
         "(PyPI has only its source, whose build takes far longer than this check): the flash-attention row is skipped"
  fi
fi

exec "$PY" scripts/gpu_check.py "${args[@]}"
