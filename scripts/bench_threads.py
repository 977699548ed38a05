#!/usr/bin/env python
"""Threads, not just pairs: what one pair costs to train, and one response to score, on collected forum threads, side by side.

Training: a forum-like site (scripts/make_stackexchange_dump.py --lengths forum: long-tailed posts and answer counts)
collected with its thread shards (`output.threads=true`) and `--max-per-question` pairs per thread (default 1, WorldPM's
rule; `0` keeps every pair); threads drawn in a seeded order hold the benchmark's pairs. Each trainer runs one epoch over
them, `--pairs-per-step` pairs a step, same model (Qwen2, 4 layers, hidden 256, the real Qwen2 tokenizer), fp32, one process:

    worldpm padded         data.packing=padded (TRL's layout, batches sorted by length)
    worldpm packed         data.packing=packed (padding-free; what OpenRLHF's packing does: every sequence whole)
    worldpm shared pairs   data.packing=shared_prompt: a pair's prompt once
    worldpm thread pairs   data.unit=threads, loss.objective=pairs: the step's pairs of a thread, its prompt and answers once
    worldpm listwise       data.unit=threads, loss.objective=listwise: every answer of a thread once, BT over all its pairs
    TRL RewardTrainer      trl 1.16 in its own venv, fed the very token ids (scripts/bench_trl_runner.py)

Reported per trainer, over every step after the first: tokens computed per pair (the forward's positions, pads and the
split threads' extra pre-pass included, per pair comparison trained: the listwise objective trains every pair of a thread's
answers with different scores, the others the collected pairs), pairs per second, and tokens computed per collected pair
(what a step of `--pairs-per-step` collected pairs costs: listwise encodes every answer of their threads).

Scoring: `--prompts` forum prompts, each with 32 responses (its thread's answers, then other answers of the site), scored with
the prompt encoded once (RewardModel.score_ids, shared-prompt rows) and separately (every prompt + response in length-sorted
padded batches, `shared_prompt=false`): tokens computed and responses/s; the separate tokens without padding are what a peer
computes at best (vLLM's pooling runner, OpenRLHF: every prompt + response whole).

    python scripts/bench_threads.py --out runs/bench_threads [--questions 1500] [--steps 8] [--pairs-per-step 32] [--threads 1]
        [--trl-python .venv-peers/peer-trl/bin/python] [--data DIR: a collect output with thread shards, instead of generating one]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# the training benchmark's model, environment, TRL runner and output
from bench_train import ARCH, env, run_trl, write_results  # noqa: E402

MODES = {"worldpm padded": ["data.packing=padded"], "worldpm packed": ["data.packing=packed"],
         "worldpm shared pairs": ["data.packing=shared_prompt"],
         "worldpm thread pairs": ["data.packing=shared_prompt", "data.unit=threads", "loss.objective=pairs"],
         "worldpm listwise": ["data.packing=shared_prompt", "data.unit=threads", "loss.objective=listwise",
                              "loss.listwise.weighting=term"]}
PEERS = ("worldpm padded", "worldpm packed", "trl")  # the layouts peers compute: padded batches, or every sequence whole


def collect_site(out: Path, questions: int, seed: int, max_per_question: int) -> Path:
    from make_stackexchange_dump import generate

    site = out / "site"
    if not (site / "synthetic.stackexchange.com.7z").exists():
        generate(site / "synthetic.stackexchange.com", "synthetic.stackexchange.com", questions, None, seed=seed,
                 tag_format="angle", n_users=200, pack=True, lengths="forum")
    data = out / f"collected-{max_per_question or 'all'}"
    subprocess.run([sys.executable, "-m", "worldpm", "collect", "source=stackexchange",
                    f"source.path={site / 'synthetic.stackexchange.com.7z'}", f"output_dir={data}", "output.threads=true",
                    f"pairs.max_per_question={max_per_question or 'null'}", "split.test_fraction=0.05", "overwrite=true"],
                   cwd=ROOT, env=env(None), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return data


def bench_dataset(data: Path, out: Path, n_pairs: int, seed: int) -> tuple[Path, dict]:
    """The first threads (in a seeded order) holding n_pairs pairs: their pair shards and thread shards, as a collect output."""
    from data_prep.records import THREAD_SCHEMA, read_pairs, write_pairs, write_threads

    threads = read_pairs(data / "threads" / "train", THREAD_SCHEMA).to_pylist()
    random.Random(seed).shuffle(threads)
    pairs = {}
    for r in read_pairs(data / "train").to_pylist():
        pairs.setdefault((r["domain"], r["thread_id"]), []).append(r)
    picked, rows = [], []
    for t in threads:
        if len(rows) >= n_pairs:
            break
        picked.append(t)
        rows += pairs[(t["domain"], t["thread_id"])]
    target = out / "data"
    shutil.rmtree(target, ignore_errors=True)
    write_pairs(rows, target / "train")
    write_threads(picked, target / "threads" / "train")
    (target / "manifest.json").write_text(json.dumps({"complete": True, "from": str(data)}) + "\n")
    answers = [len(t["answers"]) for t in picked]
    return target, {"threads": len(picked), "pairs": len(rows), "answers_per_thread_median": statistics.median(answers),
                    "answers_per_thread_max": max(answers)}


def run_worldpm(out: Path, data: Path, args, name: str, extra: list[str]) -> dict:
    run_dir = out / name.replace(" ", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    arch = [f"model.arch.{k}={v}" for k, v in ARCH.items() if k != "model_type"]
    cmd = [sys.executable, "-m", "worldpm.train", "model=tiny-qwen", *arch, "model.head=linear", f"model.max_length={args.max_length}",
           f"data.path={data}", f"output_dir={run_dir}", f"data.cache_dir={out / 'hf_cache'}", *extra,
           f"data.max_tokens_per_micro_batch={args.tokens_per_micro_batch}", "trainer.epochs=1",
           f"trainer.pairs_per_step={args.pairs_per_step}", "trainer.lr=1e-4", "trainer.precision=fp32", "trainer.eval_every=0",
           "trainer.save_every=0", "trainer.save_hf=false", "trainer.progress=false", "wandb.mode=disabled", "deepspeed=null",
           f"trainer.seed={args.seed}", "trainer.resume=never"]
    subprocess.run(cmd, cwd=ROOT, env=env(args.threads), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r][1:]  # the first step pays one-off costs (allocations, lazy imports)
    pairs, processed, secs = sum(r["terms"] for r in rows), sum(r["processed_tokens"] for r in rows), sum(r["step_time_s"] for r in rows)
    return {"framework": name, "steps": len(rows) + 1, "pairs": pairs, "processed_tokens_per_pair": processed / pairs,
            "processed_tokens_per_collected_pair": processed / sum(r["pairs"] for r in rows),
            "real_tokens_per_pair": sum(r["tokens"] for r in rows) / pairs, "pairs_per_s": pairs / secs,
            "padding_fraction": sum(r["padding_fraction"] * r["processed_tokens"] for r in rows) / processed}


def trl_pairs(out: Path, data: Path, max_length: int) -> Path:
    """The bench pairs as token ids (worldpm's own tokenisation), for TRL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from worldpm.data.pairs import load_split
    from worldpm.model.chat_format import ChatEncoder
    from worldpm.model.tokenizer import load_tokenizer

    table = load_split(data, "train", ChatEncoder(load_tokenizer("qwen"), max_length), cache_dir=str(out / "hf_cache"))
    pq.write_table(pa.table({"chosen_ids": table["chosen_ids"], "rejected_ids": table["rejected_ids"]}), out / "pairs.parquet")
    return out / "pairs.parquet"


def bench_scoring(data: Path, args) -> list[dict]:
    """32 responses to each of `--prompts` forum prompts of the collected site (its answers, then other answers of the site),
    scored shared-prompt and separately, alternating, `--rounds` times."""
    import torch

    from data_prep.records import THREAD_SCHEMA, read_pairs
    from worldpm.model.padding import length_sorted_batches, resolve_max_padding
    from worldpm.model.reward_model import RewardModel
    from worldpm.model.segments import shared_prompt_groups
    from worldpm.model.tokenizer import load_tokenizer

    threads = read_pairs(data / "threads" / "train", THREAD_SCHEMA).to_pylist()
    rng = random.Random(args.seed)
    pool = [a["text"] for t in threads for a in t["answers"]]
    convs = []
    for t in rng.sample(threads, min(args.prompts, len(threads))):
        own = [a["text"] for a in t["answers"]][:32]
        convs += [t["prompt"] + [{"role": "assistant", "content": r}] for r in own + rng.choices(pool, k=32 - len(own))]
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    rm = RewardModel.from_config(ARCH, load_tokenizer("qwen"), head="linear", max_length=args.max_length).eval()
    ids = rm.encode(convs)
    budget, batch_size, max_padding = args.tokens_per_micro_batch, 64, resolve_max_padding("auto", "cpu")
    lengths = [len(s) for s in ids]
    groups = shared_prompt_groups(ids, ids.prompts, budget)
    grouped = {i for members, _ in groups for i in members}
    shared_tokens = sum(g.cost for _, g in groups) + sum(n for i, n in enumerate(lengths) if i not in grouped)
    padded_tokens = sum(len(b) * max(lengths[i] for i in b) for b in length_sorted_batches(lengths, budget, batch_size, max_padding))
    rm.score_ids(ids[:64])  # warm up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for shared in (True, False):
            start = time.perf_counter()
            rm.score_ids(ids, max_tokens=budget, max_batch_size=batch_size, max_padding=max_padding, shared_prompt=shared)
            times[shared].append(time.perf_counter() - start)
    n = len(ids)
    return [{"scoring": "separate (prompt + response each, padded batches)", "responses": n, "prompts": n // 32,
             "tokens_computed_per_response": padded_tokens / n, "tokens_without_padding_per_response": sum(lengths) / n,
             "responses_per_s": n / statistics.median(times[False])},
            {"scoring": "shared prompt (worldpm score_ids)", "responses": n, "prompts": n // 32,
             "tokens_computed_per_response": shared_tokens / n, "tokens_without_padding_per_response": shared_tokens / n,
             "responses_per_s": n / statistics.median(times[True])}]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_threads")
    p.add_argument("--data", type=Path, help="a collect output with thread shards (default: generate and collect a forum site)")
    p.add_argument("--questions", type=int, default=1500, help="questions of the generated site")
    p.add_argument("--max-per-question", type=int, default=1, help="pairs collected per thread (0: every pair)")
    p.add_argument("--steps", type=int, default=8, help="the bench dataset holds steps x pairs-per-step pairs")
    p.add_argument("--pairs-per-step", type=int, default=32)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--tokens-per-micro-batch", type=int, default=16384)
    p.add_argument("--prompts", type=int, default=16, help="scoring: prompts, each with 32 responses")
    p.add_argument("--rounds", type=int, default=3, help="scoring: alternating rounds (medians reported)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS / torch threads for every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl-python", default=str(ROOT / ".venv-peers" / "peer-trl" / "bin" / "python"))
    p.add_argument("--skip-trl", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_trl and not Path(args.trl_python).exists():
        raise SystemExit(f"no TRL environment at {args.trl_python} (scripts/bench_train.py --setup-trl makes one), or --skip-trl")

    source = args.data or collect_site(out, args.questions, args.seed, args.max_per_question)
    data, stats = bench_dataset(source, out, args.steps * args.pairs_per_step, args.seed)
    print(f"bench data: {stats['pairs']} pairs in {stats['threads']} threads (answers per thread: median "
          f"{stats['answers_per_thread_median']}, max {stats['answers_per_thread_max']}) from {source}", flush=True)
    train = [run_worldpm(out, data, args, name, extra) for name, extra in MODES.items()]
    if not args.skip_trl:
        trl_args = argparse.Namespace(**{**vars(args), "steps": stats["pairs"] // args.pairs_per_step})
        (out / "pairs.parquet").exists() or trl_pairs(out, data, args.max_length)
        r = run_trl(out, Path.home() / ".cache" / "worldpm" / "tokenizers" / "qwen2", trl_args)
        train.append({"framework": r["framework"], "steps": r["steps"], "pairs": r["pairs"],
                      "processed_tokens_per_pair": r["processed_tokens_per_pair"],
                      "processed_tokens_per_collected_pair": r["processed_tokens_per_pair"], "pairs_per_s": r["pairs_per_s"],
                      "padding_fraction": r["padding_fraction"]})
    peers = [t for t in train if t["framework"] in PEERS or t["framework"].startswith("trl")]
    best_peer = min(t["processed_tokens_per_pair"] for t in peers)
    print(f"\n{'trainer':<50} {'tokens/pair':>11} {'vs best peer':>12} {'pairs/s':>8} {'padding':>8} {'tokens/collected pair':>21}")
    for t in train:
        t["vs_best_peer"] = t["processed_tokens_per_pair"] / best_peer
        print(f"{t['framework'][:50]:<50} {t['processed_tokens_per_pair']:>11,.0f} {t['vs_best_peer']:>11.2f}x "
              f"{t['pairs_per_s']:>8.2f} {100 * t['padding_fraction']:>7.1f}% {t['processed_tokens_per_collected_pair']:>21,.0f}")
    scoring = bench_scoring(source, args)
    print(f"\n{'scoring 32 responses per prompt':<52} {'tokens/response':>15} {'(no padding)':>12} {'responses/s':>11}")
    for s in scoring:
        print(f"{s['scoring']:<52} {s['tokens_computed_per_response']:>15,.0f} {s['tokens_without_padding_per_response']:>12,.0f} "
              f"{s['responses_per_s']:>11.1f}")
    write_results(out, stats, args, training=train, scoring=scoring)


if __name__ == "__main__":
    main()
