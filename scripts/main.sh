#!/usr/bin/env bash
# The main job on the embedded default: the tiny model scores the two example conversations of WorldPM's README.
# Later stages (collect -> train -> eval -> scaling -> serve) are added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
venv=${WORLDPM_VENV:-.venv}; [[ $venv = /* ]] || venv="$PWD/$venv"   # WORLDPM_VENV may be absolute
export PATH="$venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${WORLDPM_MAIN_OUT:-runs/main}
mkdir -p "$out"

echo "== score: WorldPM README's two example conversations with model=tiny (random init; WorldPM-72B gives 0.6298, -1.6425)"
worldpm score model=tiny input=worldpm/assets/examples/worldpm_readme.jsonl

# ---- score + serve (issue 7): the trained model when the training stage made one, else model=tiny (random init)
wpm() { PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python -m worldpm "$@"; }   # this checkout's code, whatever is installed
if [ -f "$out/train/final/config.json" ]; then model_arg="model_path=$out/train/final"; else model_arg="model=tiny"; fi
mkdir -p "$out/score"
echo "== score: README examples with $model_arg -> $out/score/readme_rewards.jsonl"
wpm score "$model_arg" input=worldpm/assets/examples/worldpm_readme.jsonl output="$out/score/readme_rewards.jsonl"
cat "$out/score/readme_rewards.jsonl"
if compgen -G "$out/collect/test/*.parquet" >/dev/null; then
  echo "== score: held-out preference pairs $out/collect/test -> accuracy and BT loss"
  wpm score "$model_arg" input="$out/collect" split=test output="$out/score/test_pairs.parquet"
fi

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== serve: $model_arg on 127.0.0.1:$port, one OpenRLHF-shaped request, then SIGTERM"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python -m worldpm serve "$model_arg" port="$port" &   # a plain command: $! is the server
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
python - "$port" "$server" <<'PY'
import json, os, sys, time, urllib.request

port, pid = sys.argv[1], int(sys.argv[2])
url = f"http://127.0.0.1:{port}"
for _ in range(240):
    try:
        urllib.request.urlopen(f"{url}/health", timeout=2)
        break
    except OSError:
        os.kill(pid, 0)  # the server died: stop here
        time.sleep(0.5)
# what OpenRLHF's remote reward-model client posts: the decoded prompt+response, one sample per request
query = ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHow do I keep basil fresh?<|im_end|>\n"
         "<|im_start|>assistant\nTrim the stems and stand it in a glass of water at room temperature.<|im_end|>")
body = json.dumps({"query": [query], "prompts": [query.rsplit("<|im_start|>assistant\n", 1)[0]], "labels": [""]}).encode()
request = urllib.request.Request(f"{url}/get_reward", data=body, headers={"Content-Type": "application/json"})
print("POST /get_reward ->", urllib.request.urlopen(request, timeout=60).read().decode())
PY
kill -TERM "$server"
wait "$server"   # a graceful stop exits 0
trap - EXIT
echo "== serve: stopped cleanly"
