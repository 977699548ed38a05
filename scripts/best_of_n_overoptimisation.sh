#!/usr/bin/env bash
# Best-of-N against a known gold reward, over a proxy's training: generate source=synthetic pairs (the gold reward r* of every
# reply is known), train one proxy over them with frequent checkpoints (a checkpoint after D pairs is a proxy trained on D
# pairs, seen once), and evaluate the checkpoints with benchmark=bon_synthetic: for each prompt, `samples` replies from the
# generator, the proxy picks the best of N, r* scores the pick; gold reward against N and KL = log N - (N-1)/N, Gao et al.'s
# fit d(alpha - beta d), and whether the gold reward falls as N grows (over-optimisation). The series report
# ($out/eval/series.md, series_bon_synthetic.png) puts the checkpoints side by side. Run from the repository root in the
# package's venv:
#   scripts/best_of_n_overoptimisation.sh [out_dir]
# env: N_PAIRS=12000 MODEL=tiny PAIRS_PER_STEP=32 SAVE_EVERY=4 LR=1e-3 PROMPTS=100 SAMPLES=256
#      STEPS="4 8 16 32 64 128" (checkpoints evaluated, beside final/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/best_of_n}
n_pairs=${N_PAIRS:-12000} model=${MODEL:-tiny} pps=${PAIRS_PER_STEP:-32} save_every=${SAVE_EVERY:-4} lr=${LR:-1e-3}
prompts=${PROMPTS:-100} samples=${SAMPLES:-256} seed=${SEED:-0} steps=${STEPS:-4 8 16 32 64 128}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"

echo "== data: $n_pairs synthetic pairs (seed $seed) -> $out/data"
python -m data_prep.synthetic output_dir="$out/data" n_pairs="$n_pairs" seed="$seed" overwrite=true

echo "== train: $model, one epoch, $pps pairs/step, a checkpoint every $save_every steps -> $out/run"
worldpm train model="$model" data.path="$out/data" output_dir="$out/run" deepspeed=null wandb.mode=disabled \
  trainer.pairs_per_step="$pps" trainer.save_every="$save_every" trainer.lr="$lr" trainer.seed="$seed" \
  trainer.eval_every=0 trainer.log_every=50 trainer.resume=auto trainer.keep_last=1

picked=$(for s in $steps; do printf 'step-%08d,' "$s"; done)final
echo "== eval: best-of-N against the gold reward for checkpoints [$picked] ($prompts prompts x $samples replies) -> $out/eval"
worldpm eval "checkpoints=[$picked]" run_dir="$out/run" output_dir="$out/eval" "benchmark=[bon_synthetic]" \
  benchmark.bon_synthetic.path="$out/data" benchmark.bon_synthetic.prompts="$prompts" benchmark.bon_synthetic.samples="$samples" \
  style.enabled=false
sed -n '/## Best-of-N against the gold reward/,$p' "$out/eval/series.md"
