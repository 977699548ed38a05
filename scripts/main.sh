#!/usr/bin/env bash
# The main job on the embedded default: the tiny model scores the two example conversations of WorldPM's README.
# Later stages (collect -> train -> eval -> scaling -> serve) are added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
venv=${WORLDPM_VENV:-.venv}; case $venv in /*) ;; *) venv="$PWD/$venv" ;; esac
export PATH="$venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${WORLDPM_MAIN_OUT:-runs/main}
mkdir -p "$out"

echo "== score: WorldPM README's two example conversations with model=tiny (random init; WorldPM-72B gives 0.6298, -1.6425)"
worldpm score model=tiny input=worldpm/assets/examples/worldpm_readme.jsonl

echo "== train: the tiny model on $out/data, 2 CPU ranks under torchrun with DeepSpeed ZeRO-3 (the 72B recipe in miniature)"
data="$out/data"
if [ ! -f "$data/manifest.json" ]; then
  data="$out/synthetic_pairs"
  echo "   no collect output at $out/data: training on synthetic forum pairs in $data (python -m data_prep.synthetic_pairs)"
  PYTHONPATH="$PWD" python -m data_prep.synthetic_pairs "$data" --train-pairs 1200 --test-pairs 200
fi
PYTHONPATH="$PWD" OMP_NUM_THREADS=1 PYTHONWARNINGS="ignore::FutureWarning" torchrun --nproc_per_node 2 --master_port "${WORLDPM_MAIN_PORT:-29561}" -m worldpm.train \
  model=tiny deepspeed=zero3 data.path="$data" output_dir="$out/train" trainer.resume=never \
  trainer.max_steps=30 trainer.pairs_per_step=32 trainer.save_every=15 trainer.eval_every=15 trainer.log_every=5 wandb.mode=offline
echo "   exported $out/train/final; per-step metrics in $out/train/metrics.jsonl"
