#!/usr/bin/env bash
# The main job on the embedded default: the tiny model scores the two example conversations of WorldPM's README.
# Later stages (collect -> train -> eval -> scaling -> serve) are added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
venv=${WORLDPM_VENV:-.venv}
case $venv in /*) ;; *) venv="$PWD/$venv" ;; esac  # WORLDPM_VENV may be absolute
export PATH="$venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${WORLDPM_MAIN_OUT:-runs/main}
mkdir -p "$out"

echo "== score: WorldPM README's two example conversations with model=tiny (random init; WorldPM-72B gives 0.6298, -1.6425)"
worldpm score model=tiny input=worldpm/assets/examples/worldpm_readme.jsonl

echo "== collect: the embedded synthetic Stack Exchange site (data_prep/sample) -> pair shards in $out/data"
python -m worldpm collect source=stackexchange source.path=data_prep/sample/synthetic.stackexchange.com.7z output_dir="$out/data" \
  pairs.max_per_question=8 split.test_fraction=0.2 workers=2 overwrite=true
