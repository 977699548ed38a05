#!/usr/bin/env bash
# The main job on the embedded default — the sample Stack Exchange site (data_prep/sample) and the tiny model — through every
# stage: collect -> train (pairs, then whole threads) -> eval (final model, then every checkpoint) -> scaling -> fine-tune (the
# shipped HelpSteer2-format sample, from the trained model and from scratch, full and LoRA) -> compare -> best-of-N against a
# gold reward (the synthetic world) -> score -> serve. Outputs under $out.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
venv=${WORLDPM_VENV:-.venv}; [[ $venv = /* ]] || venv="$PWD/$venv"  # WORLDPM_VENV may be absolute (a shared venv)
export PATH="$venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${WORLDPM_MAIN_OUT:-runs/main}
mkdir -p "$out"

echo "== collect: the embedded synthetic Stack Exchange site -> PairRecord and ThreadRecord shards in $out/data"
worldpm collect source=stackexchange source.path=data_prep/sample/synthetic.stackexchange.com.7z output_dir="$out/data" \
  pairs.max_per_question=8 split.test_fraction=0.2 workers=2 overwrite=true output.threads=true

echo "== train: the tiny model on $out/data, 2 CPU ranks under torchrun with DeepSpeed ZeRO-3 (the 72B recipe in miniature)"
OMP_NUM_THREADS=1 PYTHONWARNINGS="ignore::FutureWarning" torchrun --standalone --nproc_per_node 2 -m worldpm.train \
  model=tiny deepspeed=zero3 data.path="$out/data" output_dir="$out/train" trainer.resume=never \
  trainer.max_steps=40 trainer.pairs_per_step=32 trainer.save_every=10 trainer.eval_every=10 trainer.log_every=5 wandb.mode=offline
echo "   exported $out/train/final; checkpoints labelled by pairs seen in $out/train/checkpoints; metrics in $out/train/metrics.jsonl"

echo "== train (threads): the tiny model on whole threads of $out/data, one forward per thread, listwise BT over every answer"
OMP_NUM_THREADS=1 worldpm train model=tiny deepspeed=null data.path="$out/data" output_dir="$out/train-threads" \
  data.unit=threads data.packing=shared_prompt loss.objective=listwise trainer.resume=never trainer.max_steps=10 \
  trainer.pairs_per_step=32 trainer.save_every=0 trainer.eval_every=10 trainer.log_every=5 wandb.mode=disabled

if [ -f "$out/train/final/config.json" ]; then model=(model_path="$out/train/final"); else
  echo "(no trained model at $out/train/final: the later stages use the random-init model=tiny)"; model=(model=tiny); fi

# Every benchmark of the paper, from the small fixtures in their real formats shipped in worldpm/assets/benchmarks (a user
# points benchmark.<name>.path at the real files, or leaves the hub id), plus the held-out split of the collected data.
b=worldpm/assets/benchmarks
paths=(benchmark.rewardbench.path=$b/rewardbench/filtered.jsonl benchmark.rewardbench2.path=$b/rewardbench2/test.jsonl
       benchmark.rmbench.path=$b/rmbench/total_dataset.json benchmark.ppe.path=$b/ppe benchmark.rmb.path=$b/rmb/RMB_dataset
       benchmark.offsetbias.path=$b/offsetbias/biasbench.json benchmark.helpsteer2.path=$b/helpsteer2/preference.jsonl.gz
       benchmark.ultrafeedback.path=$b/ultrafeedback/test_prefs.jsonl benchmark.heldout.path="$out/data")
all=rewardbench,rewardbench2,rmbench,ppe,rmb,offsetbias,helpsteer2,ultrafeedback,heldout
echo "== eval: [$all] -> $out/eval (results.json, rewards.parquet, report.md)"
worldpm eval "${model[@]}" "benchmark=[$all]" "${paths[@]}" output_dir="$out/eval"
if [ -d "$out/train/checkpoints" ]; then
  echo "== eval: every checkpoint of $out/train, labelled by pairs seen -> $out/eval-series"
  worldpm eval checkpoints=all run_dir="$out/train" "benchmark=[$all]" "${paths[@]}" output_dir="$out/eval-series" style.enabled=false
fi

if [ -d "$out/eval-series" ]; then
  echo "== scaling: held-out and benchmark BT loss vs pairs seen over the checkpoint series, power-law fits -> $out/scaling"
  worldpm scaling "runs=[$out/eval-series]" output_dir="$out/scaling"
fi

echo "== fine-tune: the shipped HelpSteer2-format sample (data_prep/sample/helpsteer2) -> pairs in $out/hs2, audited against the benchmarks"
worldpm collect source=helpsteer2 source.path=data_prep/sample/helpsteer2 output_dir="$out/hs2" overwrite=true \
  "contamination.benchmarks=[worldpm/assets/benchmarks]"
ft=(data.path="$out/hs2" deepspeed=null trainer.resume=never trainer.max_steps=24 trainer.pairs_per_step=8 trainer.lr=1e-3
    trainer.save_every=12 trainer.eval_every=12 trainer.log_every=6 wandb.mode=offline)
if [ -f "$out/train/final/config.json" ]; then
  echo "   from the trained preference model ($out/train: init_from) and from scratch (model=tiny), the same steps; then LoRA"
  OMP_NUM_THREADS=1 worldpm train init_from="$out/train" "${ft[@]}" output_dir="$out/finetune/from_worldpm"
  OMP_NUM_THREADS=1 worldpm train model=tiny "${ft[@]}" output_dir="$out/finetune/from_base"
  OMP_NUM_THREADS=1 worldpm train init_from="$out/train" model.lora.enabled=true model.lora.r=8 "${ft[@]}" trainer.lr=3e-3 \
    output_dir="$out/finetune/from_worldpm_lora"
  hs=(benchmark=[helpsteer2,heldout] benchmark.helpsteer2.path=$b/helpsteer2/preference.jsonl.gz benchmark.heldout.path="$out/hs2"
      style.enabled=false)
  for run in from_base from_worldpm from_worldpm_lora; do   # the LoRA export is merged: an ordinary checkpoint
    worldpm eval model_path="$out/finetune/$run/final" "${hs[@]}" output_dir="$out/finetune/eval/$run"
  done
  echo "== compare: fine-tuned from the preference model vs from scratch, paired bootstrap over items -> $out/finetune/compare"
  worldpm compare a="$out/finetune/eval/from_base" b="$out/finetune/eval/from_worldpm" a_name=from_base b_name=from_worldpm \
    output_dir="$out/finetune/compare"
  sed -n '/## Categories/,/## Subtasks/p' "$out/finetune/compare/compare.md"
fi

echo "== best-of-N against the gold reward: synthetic pairs, a proxy trained on them, best-of-N of its checkpoints -> $out/best_of_n"
python -m data_prep.synthetic output_dir="$out/best_of_n/data" n_pairs=3000 seed=0 overwrite=true
OMP_NUM_THREADS=1 worldpm train model=tiny deepspeed=null data.path="$out/best_of_n/data" output_dir="$out/best_of_n/run" \
  trainer.resume=never trainer.pairs_per_step=32 trainer.save_every=8 trainer.eval_every=0 trainer.log_every=20 \
  trainer.keep_last=1 wandb.mode=disabled
worldpm eval "checkpoints=[step-00000008,step-00000016,step-00000032,final]" run_dir="$out/best_of_n/run" \
  output_dir="$out/best_of_n/eval" "benchmark=[bon_synthetic]" benchmark.bon_synthetic.path="$out/best_of_n/data" \
  benchmark.bon_synthetic.prompts=40 benchmark.bon_synthetic.samples=64 style.enabled=false
echo "   gold reward against N and KL per checkpoint, Gao et al.'s fit: $out/best_of_n/eval/series.md, series_bon_synthetic.png"

echo "== score: the README's two example conversations, N responses to one prompt, the held-out pairs -> $out/score"
mkdir -p "$out/score"
worldpm score "${model[@]}" input=worldpm/assets/examples/worldpm_readme.jsonl output="$out/score/readme_rewards.jsonl"
cat "$out/score/readme_rewards.jsonl"
worldpm score "${model[@]}" input=worldpm/assets/examples/best_of_n.jsonl output="$out/score/best_of_n.jsonl"
cat "$out/score/best_of_n.jsonl"
worldpm score "${model[@]}" input="$out/data" split=test output="$out/score/test_pairs.parquet"

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== serve: ${model[*]} on 127.0.0.1:$port, one OpenRLHF-shaped request, then SIGTERM"
worldpm serve "${model[@]}" port="$port" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
python - "$port" "$server" <<'PY'
import json, sys, urllib.request

from worldpm.serve.client import wait_healthy

port, pid = sys.argv[1], int(sys.argv[2])
url = f"http://127.0.0.1:{port}"
wait_healthy(url, timeout=120, proc=pid, interval=0.5)  # the server dying first stops here
# what OpenRLHF's remote reward-model client posts: the decoded prompt+response, one sample per request
query = ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHow do I keep basil fresh?<|im_end|>\n"
         "<|im_start|>assistant\nTrim the stems and stand it in a glass of water at room temperature.<|im_end|>")
body = json.dumps({"query": [query], "prompts": [query.rsplit("<|im_start|>assistant\n", 1)[0]], "labels": [""]}).encode()
request = urllib.request.Request(f"{url}/get_reward", data=body, headers={"Content-Type": "application/json"})
print("POST /get_reward ->", urllib.request.urlopen(request, timeout=60).read().decode())
# N responses to one prompt: the prompt encoded once
body = json.dumps({"prompt": "How do I keep basil fresh?", "responses": ["Stand it in a glass of water.", "Fridge."]}).encode()
request = urllib.request.Request(f"{url}/v1/score", data=body, headers={"Content-Type": "application/json"})
print("POST /v1/score (prompt + responses) ->", urllib.request.urlopen(request, timeout=60).read().decode())
PY
kill -TERM "$server"
wait "$server"   # a graceful stop exits 0
trap - EXIT
echo "== serve: stopped cleanly"
echo "== done: outputs in $out"
