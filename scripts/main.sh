#!/usr/bin/env bash
# The main job on the embedded default: the tiny model scores the two example conversations of WorldPM's README.
# Later stages (collect -> train -> eval -> scaling -> serve) are added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
venv=${WORLDPM_VENV:-.venv}; [[ $venv = /* ]] || venv=$PWD/$venv  # WORLDPM_VENV may be absolute (a shared venv)
export PATH="$venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${WORLDPM_MAIN_OUT:-runs/main}
mkdir -p "$out"

echo "== score: WorldPM README's two example conversations with model=tiny (random init; WorldPM-72B gives 0.6298, -1.6425)"
worldpm score model=tiny input=worldpm/assets/examples/worldpm_readme.jsonl

echo "== collect: the embedded synthetic Stack Exchange site (data_prep/sample) -> pair shards in $out/data"
python -m worldpm collect source=stackexchange source.path=data_prep/sample/synthetic.stackexchange.com.7z output_dir="$out/data" \
  pairs.max_per_question=8 split.test_fraction=0.2 workers=2 overwrite=true

# eval: every benchmark fixture shipped in worldpm/assets/benchmarks (tiny, real formats), plus the held-out split of the
# collected data when the collect stage wrote one; the trained model when the train stage wrote one, else model=tiny.
bench=worldpm/assets/benchmarks
if [ -f "$out/train/final/config.json" ]; then
  model=(model_path="$out/train/final")
else
  echo "eval: no trained model at $out/train/final (no train stage ran): evaluating the random-init model=tiny instead"
  model=(model=tiny)
fi
benchmarks=rewardbench,rewardbench2,rmbench,ppe,rmb,offsetbias,helpsteer2,ultrafeedback
heldout=()
if [ -d "$out/data/test" ]; then benchmarks+=,heldout; heldout=(benchmark.heldout.path="$out/data"); fi
echo "== eval: [$benchmarks] -> $out/eval (results.json, rewards.parquet, report.md)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python -m worldpm eval "${model[@]}" "benchmark=[$benchmarks]" "${heldout[@]}" \
  benchmark.rewardbench.path=$bench/rewardbench/filtered.jsonl benchmark.rewardbench2.path=$bench/rewardbench2/test.jsonl \
  benchmark.rmbench.path=$bench/rmbench/total_dataset.json benchmark.ppe.path=$bench/ppe benchmark.rmb.path=$bench/rmb/RMB_dataset \
  benchmark.offsetbias.path=$bench/offsetbias/biasbench.json benchmark.helpsteer2.path=$bench/helpsteer2/preference.jsonl.gz \
  benchmark.ultrafeedback.path=$bench/ultrafeedback/test_prefs.jsonl output_dir="$out/eval"
if [ -d "$out/train/checkpoints" ]; then
  echo "== eval: every checkpoint of $out/train on RewardBench and RM-Bench -> $out/eval-series"
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python -m worldpm eval checkpoints=all run_dir="$out/train" "benchmark=[rewardbench,rmbench]" \
    benchmark.rewardbench.path=$bench/rewardbench/filtered.jsonl benchmark.rmbench.path=$bench/rmbench/total_dataset.json \
    output_dir="$out/eval-series"
fi
