#!/usr/bin/env python
"""Training speed: worldpm's trainer vs TRL's RewardTrainer, same run, side by side.

Same model (Qwen2, 4 layers, hidden 256, the real Qwen2 tokenizer: ~40M parameters, most in the embedding), same pairs (forum-like
threads with long-tailed lengths, tokenised once by worldpm; TRL gets the very same token ids), same pairs per step, one epoch,
fp32, one process each. Reported: real (non-pad) tokens per second and the padding fraction, over every step after the first.

    python scripts/bench_train.py --out runs/bench_train [--steps 20] [--pairs-per-step 16] [--threads 1] [--rounds 1]

TRL runs in its own virtualenv (`--trl-python`, default .venv-peers/peer-trl/bin/python, git-ignored): the TRL 1.16 environment
scripts/interop_check.sh uses; `--setup-trl` builds it (scripts/interop/build_peers.sh .venv-peers peer-trl).
`--data DIR` benchmarks on a collect output instead of the generated pairs (its first steps x pairs-per-step train pairs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCH = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "initializer_range": 0.02, "bos_token_id": 151643,
        "eos_token_id": 151643}
TRL_PYTHON = ROOT / ".venv-peers" / "peer-trl" / "bin" / "python"  # scripts/interop/build_peers.sh makes it


def env(threads: int | None) -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
         "WANDB_MODE": "disabled"}
    if threads:
        e["OMP_NUM_THREADS"] = str(threads)
    return e


def prepare(out: Path, data: Path | None, n_pairs: int, max_length: int, seed: int) -> tuple[Path, Path, dict]:
    """The benchmark dataset (a collect-format dir holding exactly n_pairs train pairs) and the same pairs as token ids for TRL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.records import read_pairs, write_pairs
    from tests.synthetic_pairs import generate
    from worldpm.data.pairs import load_split
    from worldpm.model.chat_format import ChatEncoder
    from worldpm.model.tokenizer import cache_dir, load_tokenizer

    bench_data = out / "data"
    if data is None:
        rows = generate(n_pairs, 0, seed=seed, lengths="forum")["train"]
    else:
        rows = read_pairs(data / "train").to_pylist()[:n_pairs]
        if len(rows) < n_pairs:
            raise SystemExit(f"{data} has only {len(rows)} train pairs; need steps x pairs-per-step = {n_pairs}")
    import shutil

    shutil.rmtree(bench_data, ignore_errors=True)
    write_pairs(rows, bench_data / "train")
    tok = load_tokenizer("qwen")
    table = load_split(bench_data, "train", ChatEncoder(tok, max_length), cache_dir=str(out / "hf_cache"))
    pq.write_table(pa.table({"chosen_ids": table["chosen_ids"], "rejected_ids": table["rejected_ids"]}), out / "pairs.parquet")
    lengths = sorted(len(c) for c in table["chosen_ids"]) + sorted(len(r) for r in table["rejected_ids"])
    lengths.sort()
    stats = {"pairs": len(table), "median_seq_tokens": lengths[len(lengths) // 2], "p90_seq_tokens": lengths[int(0.9 * len(lengths))],
             "max_seq_tokens": lengths[-1], "total_tokens": sum(lengths)}
    return bench_data, cache_dir() / "tokenizers" / "qwen2", stats


def run_worldpm(out: Path, data: Path, args, layout: str) -> dict:
    run_dir = out / f"worldpm_{layout}"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    arch = [f"model.arch.{k}={v}" for k, v in ARCH.items() if k != "model_type"]
    cmd = [sys.executable, "-m", "worldpm.train", "model=tiny-qwen", *arch, "model.head=linear", f"model.max_length={args.max_length}",
           f"data.path={data}", f"output_dir={run_dir}", f"data.cache_dir={out / 'hf_cache'}", f"data.packing={layout}",
           f"data.max_tokens_per_micro_batch={args.tokens_per_micro_batch}", f"trainer.max_steps={args.steps}",
           f"trainer.pairs_per_step={args.pairs_per_step}", "trainer.lr=1e-4", "trainer.precision=fp32", "trainer.eval_every=0",
           "trainer.save_every=0", "trainer.save_hf=false", "trainer.progress=false", "wandb.mode=disabled", "deepspeed=null",
           f"trainer.seed={args.seed}"]
    subprocess.run(cmd, cwd=ROOT, env=env(args.threads), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r][1:]  # the first step pays one-off costs (allocations, lazy imports)
    real, processed = sum(r["tokens"] for r in rows), sum(r["processed_tokens"] for r in rows)
    secs = sum(r["step_time_s"] for r in rows)
    pad = sum(r["padding_fraction"] * r["processed_tokens"] for r in rows)
    return {"framework": f"worldpm ({layout})", "steps": len(rows) + 1, "tokens_per_s": real / secs,
            "padding_fraction": pad / processed, "step_time_s": secs / len(rows), "real_tokens_per_step": real / len(rows)}


def run_trl(out: Path, tokenizer_dir: Path, args) -> dict:
    result = out / "trl.json"
    cmd = [args.trl_python, str(ROOT / "scripts" / "bench_trl_runner.py"), "--pairs", str(out / "pairs.parquet"),
           "--tokenizer", str(tokenizer_dir), "--arch", json.dumps(ARCH), "--pairs-per-step", str(args.pairs_per_step),
           "--steps", str(args.steps), "--max-length", str(args.max_length), "--seed", str(args.seed), "--out", str(result)]
    e = env(args.threads)
    e.pop("PYTHONPATH")
    subprocess.run(cmd, cwd=out, env=e, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return json.loads(result.read_text())


def write_results(out: Path, stats: dict, args, **sections) -> None:
    """out/bench.json: the data's statistics, the arguments, and the benchmark's sections."""
    (out / "bench.json").write_text(json.dumps({"data": stats, "args": {k: str(v) for k, v in vars(args).items()}, **sections},
                                               indent=2) + "\n")
    print(f"\nwrote {out / 'bench.json'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_train")
    p.add_argument("--data", type=Path, help="a collect output dir to take pairs from (default: generated forum-like pairs)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--pairs-per-step", type=int, default=16)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--tokens-per-micro-batch", type=int, default=16384)
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both trainers")
    p.add_argument("--rounds", type=int, default=1, help="alternate the two trainers this many times; medians are reported")
    p.add_argument("--also-padded", action="store_true", help="also run worldpm with data.packing=padded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl-python", default=str(TRL_PYTHON))
    p.add_argument("--setup-trl", action="store_true", help="build the TRL environment (.venv-peers/peer-trl) first")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.setup_trl:
        subprocess.run([str(ROOT / "scripts" / "interop" / "build_peers.sh"), str(ROOT / ".venv-peers"), "peer-trl"], check=True)
    if not Path(args.trl_python).exists():
        raise SystemExit(f"no TRL environment at {args.trl_python}; rerun with --setup-trl (or see this script's docstring)")

    data, tokenizer_dir, stats = prepare(out, args.data, args.steps * args.pairs_per_step, args.max_length, args.seed)
    print(f"pairs: {stats['pairs']} ({args.steps} steps x {args.pairs_per_step}); sequence tokens: median {stats['median_seq_tokens']}, "
          f"p90 {stats['p90_seq_tokens']}, max {stats['max_seq_tokens']}", flush=True)
    results: dict[str, list[dict]] = {}
    layouts = ["packed"] + (["padded"] if args.also_padded else [])
    for _ in range(args.rounds):
        for layout in layouts:
            r = run_worldpm(out, data, args, layout)
            results.setdefault(r["framework"], []).append(r)
        r = run_trl(out, tokenizer_dir, args)
        results.setdefault(r["framework"], []).append(r)
    summary = []
    for name, rs in results.items():
        summary.append({"framework": name, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                        "padding_fraction": statistics.median(r["padding_fraction"] for r in rs),
                        "step_time_s": statistics.median(r["step_time_s"] for r in rs), "runs": len(rs)})
    trl = next(s for s in summary if s["framework"].startswith("trl"))
    print(f"\n{'trainer':<58} {'real tokens/s':>13} {'padding':>8} {'s/step':>7} {'vs TRL':>7}")
    for s in summary:
        s["speedup_vs_trl"] = s["tokens_per_s"] / trl["tokens_per_s"]
        print(f"{s['framework']:<58} {s['tokens_per_s']:>13,.0f} {100 * s['padding_fraction']:>7.1f}% {s['step_time_s']:>7.2f} "
              f"{s['speedup_vs_trl']:>6.2f}x")
    write_results(out, stats, args, summary=summary, runs=results)


if __name__ == "__main__":
    main()
