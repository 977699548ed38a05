#!/usr/bin/env python
"""Speed of worldpm's scoring paths against their plain baselines, side by side in one run on one model.

1. Batch scoring: `worldpm score` (length-sorted batches, padded to each batch's longest) vs a plain transformers loop
   (`AutoModelForSequenceClassification` on the same checkpoint, fixed-size batches in input order, `padding=True`), in real
   tokens/s, tokenisation included, model loading excluded. Both read the same checkpoint; their rewards are compared too.
2. Serving: `worldpm serve` in its own process, 32 concurrent clients each sending one-sample OpenRLHF requests
   (`{"query": [text]}`) back to back; requests/s and p50/p99 latency with dynamic batching on vs off.

The model is a Qwen2 of 4 layers, hidden 256, with the real Qwen2 tokenizer (151,936-row embedding; `tokenizer: qwen`),
random weights (speed does not depend on them), saved with the linear head so transformers loads it as it is. Texts are
synthetic English-like conversations with long-tailed (log-normal) lengths, like forum answers and RL rollouts.

    PYTHONPATH=$PWD python scripts/bench_serve.py            # a few minutes on 2 CPU cores
    PYTHONPATH=$PWD python scripts/bench_serve.py --quick    # a smaller run, to check that it works
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCH = dict(model_type="qwen2", vocab_size=151936, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, rope_theta=1000000.0,
            rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.02, bos_token_id=151643, eos_token_id=151643)

WORDS = ("the of and to a in is it you that he was for on are with as I his they be at one have this from or had by hot "
         "word but what some we can out other were all there when up use your how said an each she which do their time if "
         "will way about many then them write would like so these her long make thing see him two has look more day could "
         "go come did number sound no most people my over know water than call first who may down side been now find any "
         "new work part take get place made live where after back little only round man year came show every good me give "
         "our under name very through just form sentence great think say help low line differ turn cause much mean before "
         "move right boy old too same tell does set three want air well also play small end put home read hand port large "
         "spell add even land here must big high such follow act why ask men change went light kind off need house picture "
         "try us again animal point mother world near build self earth father head stand own page should country found "
         "answer school grow study still learn plant cover food sun four between state keep eye never last let thought city "
         "tree cross farm hard start might story saw far sea draw left late run don't while press close night real life few "
         "north function variable install error config server request memory thread version").split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 22))]
    if rng.random() < 0.15:
        words.insert(rng.randrange(len(words)), f"`{rng.choice(WORDS)}_{rng.randint(0, 99)}()`")
    return " ".join(words).capitalize() + rng.choice(".!?.")


def text_of(rng: random.Random, n_words: int) -> str:
    parts, count = [], 0
    while count < n_words:
        s = sentence(rng)
        parts.append(s + ("\n\n" if rng.random() < 0.2 else " "))
        count += s.count(" ") + 1
    if rng.random() < 0.2:
        parts.append("\n```python\n" + "\n".join(f"x{i} = {rng.randint(0, 999)}" for i in range(rng.randint(2, 12))) + "\n```\n")
    return "".join(parts).strip()


def make_conversations(n: int, seed: int, question_words: float, answer_words: float, max_words: int) -> list:
    """Log-normal lengths (sigma 0.9): most short, a long tail of long ones, as forum threads and rollouts are."""
    rng = random.Random(seed)
    convs = []
    for _ in range(n):
        q = min(max_words, max(3, int(rng.lognormvariate(math.log(question_words), 0.9))))
        a = min(max_words, max(3, int(rng.lognormvariate(math.log(answer_words), 0.9))))
        convs.append([{"role": "user", "content": text_of(rng, q)}, {"role": "assistant", "content": text_of(rng, a)}])
    return convs


def build_model(out_dir: Path) -> Path:
    from worldpm.model.reward_model import RewardModel, init_head
    from worldpm.model.tokenizer import load_tokenizer

    rm = RewardModel.from_config(ARCH, load_tokenizer("qwen"), head="linear", seed=0, max_length=4096)
    init_head(rm.head, 0.5)  # rewards of O(1): the reward comparison below is meaningful
    return rm.save_pretrained(out_dir / "bench-qwen2-4L-256")


def build_tiny(out_dir: Path) -> Path:
    """`model=tiny` (2 layers, hidden 64): a forward costs mostly its fixed overhead, as on a GPU far from saturation."""
    from omegaconf import OmegaConf

    from worldpm.config import compose
    from worldpm.model.reward_model import RewardModel
    from worldpm.model.tokenizer import load_tokenizer

    arch = OmegaConf.to_container(compose("score", ["input=x"]).model.arch, resolve=True)
    return RewardModel.from_config(arch, load_tokenizer("tiny"), seed=0).save_pretrained(out_dir / "tiny")


# ---------------------------------------------------------------------- 1. batch scoring
def bench_worldpm_score(model_dir: Path, data: Path, work: Path, device: str, dtype: str) -> dict:
    from worldpm.config import compose
    from worldpm.serve.score import run

    out = work / "rewards.parquet"
    summary = run(compose("score", [f"model_path={model_dir}", f"input={data}", f"output={out}", f"device={device}", f"dtype={dtype}"]))
    import pyarrow.parquet as pq

    return {"tokens": summary["tokens"], "seconds": summary["seconds"], "tokens_per_s": summary["tokens_per_s"],
            "rewards": pq.read_table(out).column("reward").to_pylist()}


def bench_plain_transformers(model_dir: Path, convs: list, batch_size: int, device: str, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).to(device).eval()
    rewards, tokens = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(convs), batch_size):  # input order, each batch padded to its longest member
            texts = [tok.apply_chat_template(c, tokenize=False) for c in convs[i:i + batch_size]]
            enc = tok(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(device)
            tokens += int(enc["attention_mask"].sum())
            rewards += model(**enc).logits[:, 0].float().tolist()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1), "rewards": rewards}


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


# ---------------------------------------------------------------------- 2. serving
def bench_server(model_dir: Path, texts: list[str], batching: bool, clients: int, per_client: int, device: str, dtype: str) -> dict:
    from tests.serving import hammer  # the serving tests' concurrent one-sample clients
    from worldpm.serve.client import wait_healthy
    from worldpm.ports import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "worldpm", "serve", f"model_path={model_dir}", f"port={port}", f"device={device}", f"dtype={dtype}",
                             f"batching.enabled={str(batching).lower()}", "log_every_s=0"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(url, timeout=300, proc=proc, interval=0.3)
        asyncio.run(hammer(url, texts, clients, 2))  # warm-up: first forwards, connection pools
        before = wait_healthy(url, timeout=30)["traffic"]
        got, seconds = asyncio.run(hammer(url, texts, clients, per_client))
        after = wait_healthy(url, timeout=30)["traffic"]  # the micro-batcher's counts: requests and forwards of the timed load
    finally:
        proc.terminate()
        proc.communicate(timeout=120)
    stats = {k: after[k] - before[k] for k in ("requests", "batches")}
    latencies = sorted(latency for _, _, latency in got)
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))]  # noqa: E731
    return {"batching": batching, "requests": len(latencies), "seconds": round(seconds, 2),
            "requests_per_s": round(len(latencies) / seconds, 1), "p50_ms": round(1000 * q(0.50), 1),
            "p99_ms": round(1000 * q(0.99), 1), "requests_per_batch": round(stats["requests"] / max(stats["batches"], 1), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks the script works")
    parser.add_argument("--n-convs", type=int, default=256, help="conversations for batch scoring")
    parser.add_argument("--baseline-batch-size", type=int, default=16)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, here and in the server (OpenMP's spin-waiting makes multi-thread CPU timings erratic "
                             "on a shared machine; both sides of each comparison use the same)")
    parser.add_argument("--parts", default="batch,serve", help="which comparisons to run: batch, serve or both")
    parser.add_argument("--serve-models", default="qwen2-4L-256,tiny",
                        help="models to serve: qwen2-4L-256 (compute-bound on a CPU) and/or tiny (overhead-bound)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_serve"), help="where results.json goes")
    args = parser.parse_args()
    if args.quick:
        args.n_convs, args.requests_per_client = 64, 3
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server processes

    import torch

    torch.set_num_threads(args.threads)

    from worldpm.model.chat_format import REWARD_TOKEN, render
    from worldpm.model.loader import resolve_device, resolve_dtype
    from worldpm.model.padding import length_sorted_batches, resolve_max_padding

    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "device": device, "dtype": dtype},
                     "model": {k: ARCH[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")}, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="worldpm-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_model(work)
        convs = make_conversations(args.n_convs, seed=0, question_words=60, answer_words=120, max_words=1500)
        data = work / "convs.jsonl"
        data.write_text("".join(json.dumps(c) + "\n" for c in convs))

        from worldpm.model.reward_model import RewardModel

        lengths = [len(s) for s in RewardModel.from_pretrained(model_dir).encode(convs)]
        results["data"] = {"conversations": len(convs), "tokens": sum(lengths), "median_tokens": int(statistics.median(lengths)),
                           "p90_tokens": sorted(lengths)[int(0.9 * len(lengths))], "max_tokens": max(lengths)}
        fixed = [list(range(i, min(i + args.baseline_batch_size, len(lengths)))) for i in range(0, len(lengths), args.baseline_batch_size)]
        results["padding_share"] = {"plain_loop": round(padding_share(lengths, fixed), 3),
                                    "worldpm_score": round(padding_share(lengths, list(length_sorted_batches(lengths, 16384, 64, resolve_max_padding("auto", device)))), 3)}
        print(f"data: {results['data']}; padded share of computed tokens: {results['padding_share']}", flush=True)

        runs = {"worldpm_score": [], "plain_transformers": []}
        for _ in range(2 if "batch" in args.parts else 0):  # alternate, keep the best of two: the machine is shared and noisy
            runs["worldpm_score"].append(bench_worldpm_score(model_dir, data, work, device, dtype))
            runs["plain_transformers"].append(bench_plain_transformers(model_dir, convs, args.baseline_batch_size, device, dtype))
        if "batch" in args.parts:
            best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in runs.items()}
            diff = max(abs(a - b) for a, b in zip(best["worldpm_score"]["rewards"], best["plain_transformers"]["rewards"]))
            results["batch_scoring"] = {k: {m: v[m] for m in ("tokens", "seconds", "tokens_per_s")} for k, v in best.items()}
            results["batch_scoring"]["speedup"] = round(best["worldpm_score"]["tokens_per_s"] / best["plain_transformers"]["tokens_per_s"], 2)
            results["batch_scoring"]["max_reward_difference"] = diff
            print(f"batch scoring: {results['batch_scoring']}", flush=True)

        rollouts = make_conversations(256, seed=1, question_words=40, answer_words=90, max_words=800)
        texts = [render(c).text[: -len("\n" + REWARD_TOKEN)] for c in rollouts]  # as OpenRLHF decodes a rollout
        results["serving"] = []
        served = {"qwen2-4L-256": model_dir, "tiny": build_tiny(work)}
        for name in (args.serve_models.split(",") if "serve" in args.parts else ()):
            for batching in (True, False):
                r = {"model": name, **bench_server(served[name], texts, batching, args.clients, args.requests_per_client, device, dtype)}
                results["serving"].append(r)
                print(f"serving: {r}", flush=True)
    results["serving_speedup"] = {}
    for on, off in zip(results["serving"][0::2], results["serving"][1::2]):
        results["serving_speedup"][on["model"]] = round(on["requests_per_s"] / off["requests_per_s"], 2)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{device}, {dtype}, {torch.get_num_threads()} torch thread(s); {results['data']}")
    if "batch_scoring" in results:
        b = results["batch_scoring"]
        print("\n| batch scoring | tokens/s | seconds | padding share |\n|---|---|---|---|")
        print(f"| `worldpm score` (length-sorted) | {b['worldpm_score']['tokens_per_s']:,.0f} | {b['worldpm_score']['seconds']} | "
              f"{results['padding_share']['worldpm_score']:.0%} |")
        print(f"| plain transformers loop (batch {args.baseline_batch_size}, input order) | "
              f"{b['plain_transformers']['tokens_per_s']:,.0f} | {b['plain_transformers']['seconds']} | "
              f"{results['padding_share']['plain_loop']:.0%} |")
        print(f"\nspeed-up {b['speedup']}x; largest reward difference {b['max_reward_difference']:.2e}")
    if results["serving"]:
        print(f"\n| serving, {args.clients} clients x 1-sample requests | dynamic batching | requests/s | p50 ms | p99 ms | "
              "requests/batch |\n|---|---|---|---|---|---|")
        for r in results["serving"]:
            print(f"| {r['model']} | {'on' if r['batching'] else 'off'} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['requests_per_batch']} |")
        print(f"\nrequests/s, batching on / off: {results['serving_speedup']}")
    print(f"results in {out_dir / 'results.json'}")


if __name__ == "__main__":
    main()
