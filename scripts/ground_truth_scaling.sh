#!/usr/bin/env bash
# The scaling machinery against a known answer, at a scale CI does not run: generate source=synthetic pairs (Bayes-optimal
# test loss known exactly), train one model over them with frequent checkpoints, evaluate every checkpoint on the held-out
# split, and fit L(D) = L_inf + B * D^-alpha with `worldpm scaling bayes_loss=...`. The report's "Against the known
# Bayes-optimal loss" table puts the fitted L_inf next to the Bayes loss. Run from the repository root in the package's venv:
#   scripts/ground_truth_scaling.sh [out_dir]
# env: N_PAIRS=44000 MODEL=tiny-medium PAIRS_PER_STEP=32 SAVE_EVERY=5 LR=2e-4 POINTS=20 (checkpoints evaluated, log-spaced)
# A constant learning rate small enough that the last checkpoints do not bounce around the optimum: with a noisy plateau
# the saturating fit cannot tell L_inf from the noise.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/ground_truth}
n_pairs=${N_PAIRS:-44000} model=${MODEL:-tiny-medium} pps=${PAIRS_PER_STEP:-32} save_every=${SAVE_EVERY:-5}
lr=${LR:-2e-4} points=${POINTS:-20} seed=${SEED:-0}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"

echo "== data: $n_pairs synthetic pairs (seed $seed) -> $out/data"
python -m data_prep.synthetic output_dir="$out/data" n_pairs="$n_pairs" seed="$seed"

echo "== train: $model, one epoch, $pps pairs/step, checkpoint every $save_every steps -> $out/run"
worldpm train model="$model" data.path="$out/data" output_dir="$out/run" deepspeed=null wandb.mode=disabled \
  trainer.pairs_per_step="$pps" trainer.save_every="$save_every" trainer.lr="$lr" trainer.seed="$seed" \
  trainer.eval_every=0 trainer.log_every=50 trainer.resume=auto

# About $points checkpoints evenly spaced in log(pairs seen) (the fits weigh every point alike), plus final/; the fits start
# where the learning-rate warmup ends (before it the model sits at chance, a regime no power law describes).
read -r picked min_pairs < <(python - "$out/run" "$points" <<'PY'
import json, math, sys
from pathlib import Path
run, n = Path(sys.argv[1]), int(sys.argv[2])
seen = {json.loads(s.read_text())["pairs_seen"]: s.parent.name for s in (run / "checkpoints").glob("step-*/state.json")}
lo, hi = math.log(min(seen)), math.log(max(seen))
grid = [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
names = sorted({seen[min(seen, key=lambda d: abs(math.log(d) - math.log(g)))] for g in grid})
steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
peak = max(s["lr"] for s in steps)
warm = next(s["pairs_seen"] for s in steps if s["lr"] >= peak * (1 - 1e-6))
print(",".join(names + ["final"]), warm)
PY
)
echo "== eval: checkpoints [$picked] on the whole held-out split -> $out/eval"
worldpm eval "checkpoints=[$picked]" run_dir="$out/run" output_dir="$out/eval" "benchmark=[heldout]" benchmark.heldout.path="$out/data"

echo "== scaling: fits from $min_pairs pairs seen (end of warmup) against the known Bayes loss -> $out/scaling"
worldpm scaling "runs=[$out/eval]" output_dir="$out/scaling" "levels=[subtask]" bayes_loss="$out/data" min_pairs="$min_pairs"
sed -n '/## Against the known Bayes-optimal loss/,$p' "$out/scaling/report.md"
