#!/usr/bin/env bash
# Interoperability with the peers' *released* packages, each in a throwaway environment of its own (scripts/interop/build_peers.sh):
#   RewardBench 0.1.4 (transformers 4.51), OpenRLHF 0.11.2 (transformers 5.15), TRL 1.16 (the newest transformers).
# A fresh worldpm export (the tiny model, linear head, trained a few steps on the shipped sample) and a running `worldpm serve`
# are scored by each peer's own loading and scoring code; scripts/interop/compare.py checks the results against worldpm's:
#   - RewardBench: its run_rm.py loads the export (transformers 4.51) and scores the RewardBench fixture: per-example rewards,
#     subset accuracies and section scores (its own weighting) equal `worldpm eval`'s; its EXAMPLE_COUNTS equal our config;
#   - OpenRLHF: its rollout executor fetches rewards over HTTP from `worldpm serve` and through its reward-function file hook
#     (worldpm installed beside OpenRLHF's pins): both equal worldpm's in-process rewards;
#   - TRL: GRPOTrainer logs the rewards of the export loaded by TRL itself, of worldpm's in-process reward function and of the
#     HTTP one: all equal worldpm's rewards for the logged completions.
# Tolerance 1e-5 (fp32, CPU). Writes $out/interop.json; exit 1 when a check fails. CI runs the export-format subset of these
# checks without the peers (tests/test_export_compat.py).
#   scripts/interop_check.sh                      # peers in .venv-peers/, outputs in runs/interop/
#   WORLDPM_PEER_DIR=/tmp/peers WORLDPM_INTEROP_OUT=/tmp/interop scripts/interop_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
venv=${WORLDPM_VENV:-.venv}; [[ $venv = /* ]] || venv="$PWD/$venv"
peers=${WORLDPM_PEER_DIR:-.venv-peers}; [[ $peers = /* ]] || peers="$PWD/$peers"
out=${WORLDPM_INTEROP_OUT:-runs/interop}; [[ $out = /* ]] || out="$PWD/$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled OMP_NUM_THREADS=1
export PYTHONWARNINGS="ignore::FutureWarning,ignore::UserWarning"
wpm() { "$venv/bin/worldpm" "$@"; }

echo "== peers: building the throwaway environments (first run only) in $peers"
scripts/interop/build_peers.sh "$peers"
for p in peer-rewardbench peer-openrlhf peer-trl; do
  echo "   $p: $(grep -i -E '^(transformers|rewardbench|openrlhf|trl|torch)==' "$peers/$p/freeze.txt" | tr '\n' ' ')"
done

rm -rf "$out"; mkdir -p "$out"
echo "== export: collect the sample, train the tiny model with a linear head for 30 steps -> $out/model"
wpm collect source=stackexchange source.path=data_prep/sample/synthetic.stackexchange.com.7z output_dir="$out/data" \
  pairs.max_per_question=8 split.test_fraction=0.2 workers=1 overwrite=true > "$out/collect.log" 2>&1
wpm train model=tiny model.head=linear data.path="$out/data" output_dir="$out/train" trainer.resume=never \
  trainer.max_steps=30 trainer.pairs_per_step=16 trainer.save_every=0 trainer.eval_every=0 wandb.mode=disabled \
  > "$out/train.log" 2>&1
cp -r "$out/train/final" "$out/model"
"$venv/bin/python" scripts/interop/compare.py probes "$out"
fixture=worldpm/assets/benchmarks/rewardbench/filtered.jsonl
wpm eval model_path="$out/model" "benchmark=[rewardbench]" benchmark.rewardbench.path="$fixture" output_dir="$out/eval" \
  style.enabled=false report.plots=false > "$out/eval.log" 2>&1

echo "== RewardBench: run_rm.py and its pipeline on the export"
mkdir -p "$out/rewardbench"; ln -s ../model "$out/rewardbench/model"
# the control: the same export with config.json as transformers 5.x alone writes it (RoPE only in rope_parameters)
cp -r "$out/model" "$out/model-5x-config"
"$venv/bin/python" - "$out/model-5x-config/config.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
for key in ("rope_theta", "rope_scaling", "torch_dtype"):
    cfg.pop(key, None)
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
(cd "$out/rewardbench" && "$peers/peer-rewardbench/bin/python" "$OLDPWD/scripts/interop/rewardbench_peer.py" \
   --data "$OLDPWD/$fixture" --probes "$out/probes.jsonl" --out "$out/rewardbench.json" --control "$out/model-5x-config" \
   > run.log 2>&1) \
  || { tail -20 "$out/rewardbench/run.log"; exit 1; }

port=$("$venv/bin/python" -c 'from worldpm.ports import free_port; print(free_port())')
echo "== serve: worldpm serve on 127.0.0.1:$port"
wpm serve model_path="$out/model" port="$port" > "$out/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
"$venv/bin/python" -c "from worldpm.serve.client import wait_healthy; wait_healthy('http://127.0.0.1:$port', 120, $server)"

echo "== OpenRLHF: its rollout executor, over HTTP and through its reward-function file hook"
"$peers/peer-openrlhf/bin/python" scripts/interop/openrlhf_peer.py --model "$out/model" \
  --url "http://127.0.0.1:$port/get_reward" --probes "$out/probes.jsonl" --out "$out/openrlhf.json" > "$out/openrlhf.log" 2>&1 \
  || { tail -20 "$out/openrlhf.log"; exit 1; }

echo "== worldpm's model tests under OpenRLHF's pins (transformers $(grep -i '^transformers==' "$peers/peer-openrlhf/freeze.txt" | cut -d= -f3))"
"$peers/peer-openrlhf/bin/pip" install -q --disable-pip-version-check pytest pytest-timeout 2> /dev/null
"$peers/peer-openrlhf/bin/python" -m pytest -q -p no:cacheprovider tests/test_reward_model.py tests/test_chat_format.py \
  tests/test_tokenizer.py tests/test_export_compat.py 2>&1 | tee "$out/openrlhf-pytest.log" | tail -1
{ grep -q " passed" "$out/openrlhf-pytest.log" && ! grep -q -E "[0-9]+ (failed|error)" "$out/openrlhf-pytest.log"; } \
  || { echo "worldpm's tests failed under OpenRLHF's pins: $out/openrlhf-pytest.log"; exit 1; }

echo "== TRL: GRPOTrainer with the export as reward model, worldpm's in-process and HTTP reward functions"
"$peers/peer-trl/bin/python" scripts/interop/trl_peer.py --model "$out/model" --url "http://127.0.0.1:$port" \
  --out "$out/trl.json" --work "$out/trl" > "$out/trl.log" 2>&1 || { tail -20 "$out/trl.log"; exit 1; }

kill -TERM "$server"; wait "$server" || true; trap - EXIT
echo "== checks"
"$venv/bin/python" scripts/interop/compare.py check "$out"
