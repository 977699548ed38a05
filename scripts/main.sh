#!/usr/bin/env bash
# The main job on the embedded default: the tiny model scores the two example conversations of WorldPM's README.
# Later stages (collect -> train -> eval -> scaling -> serve) are added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export PATH="$PWD/${WORLDPM_VENV:-.venv}/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${WORLDPM_MAIN_OUT:-runs/main}
mkdir -p "$out"

echo "== score: WorldPM README's two example conversations with model=tiny (random init; WorldPM-72B gives 0.6298, -1.6425)"
worldpm score model=tiny input=worldpm/assets/examples/worldpm_readme.jsonl
