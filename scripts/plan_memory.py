#!/usr/bin/env python
"""Per-GPU memory of a worldpm training job, to size a cluster before launching.

    python scripts/plan_memory.py                                   # the three Qwen2.5 sizes with their recommended setups
    python scripts/plan_memory.py --model qwen2.5-72b --zero 3 --nodes 4 --gpus-per-node 8 --tokens 8192
    python scripts/plan_memory.py --model qwen2.5-7b --zero 2 --offload optimizer --deepspeed-table

Model states (weights, gradients, optimizer) come from DeepSpeed's own estimators
(`estimate_zero2_model_states_mem_needs` / `estimate_zero3_model_states_mem_needs`, the functions behind
`estimate_zero{2,3}_model_states_mem_needs_all_cold`; `--deepspeed-table` prints their tables too). DeepSpeed has no ZeRO-1
estimator: ZeRO-1 is 2 B/param of bf16 weights + 2 B/param of bf16 gradients + 12 B/param of fp32 master weights and Adam
states partitioned over all GPUs.

Activations are for one micro-batch of `--tokens` packed tokens (data.max_tokens_per_micro_batch) in bf16 with varlen
(flash) attention, so no tokens^2 term: per layer and token, 2 bytes x (8h + 3h_kv + 4i) for the norms, q/k/v (+ their rotated
copies), attention output and the SwiGLU MLP. With activation checkpointing only each layer's input (2h bytes per token) is
kept, plus one layer's activations during its recomputation. Leave ~10-15% headroom for the allocator and communication buffers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1024 ** 3
QWEN = ("qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-72b")


def model_config(name: str) -> dict:
    from omegaconf import OmegaConf

    from worldpm.config import compose

    return OmegaConf.to_container(compose("train", [f"model={name}", "data.path=x"]).model, resolve=True)


def count_params(cfg: dict) -> tuple[int, int]:
    """(total parameters of the reward model, parameters of its largest single module) on the meta device."""
    import torch

    from worldpm.model.reward_model import RewardModel
    from worldpm.model.tokenizer import load_tokenizer

    rm = RewardModel.from_config(cfg["arch"], load_tokenizer("tiny"), head=cfg.get("head", "mlp"), device="meta")
    total = sum(p.numel() for p in rm.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in rm.modules())
    del rm
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return total, largest


def activation_bytes(arch: dict, tokens: int, checkpointing: bool) -> int:
    h, i, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    h_kv = h // arch["num_attention_heads"] * arch["num_key_value_heads"]
    per_layer = 2 * tokens * (8 * h + 3 * h_kv + 4 * i)
    if checkpointing:
        return layers * 2 * tokens * h + per_layer
    return layers * per_layer


def model_state_bytes(total: int, largest: int, zero: int, offload: str, gpus_per_node: int, nodes: int,
                      table: bool = False) -> tuple[int, int]:
    """(GPU bytes per GPU, CPU bytes per node) of weights, gradients and optimizer states."""
    gpus = gpus_per_node * nodes
    if zero == 3:
        from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,
                                                   estimate_zero3_model_states_mem_needs_all_cold)

        if table:
            estimate_zero3_model_states_mem_needs_all_cold(total, largest, gpus_per_node, nodes)
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus_per_node, nodes, cpu_offload=offload != "none",
                                                            cpu_offload_params=offload == "optimizer+params", zero_init=True)
        return int(gpu), int(cpu)
    if offload == "optimizer+params":
        raise SystemExit("parameter offload needs --zero 3")
    if zero == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import (estimate_zero2_model_states_mem_needs,
                                                          estimate_zero2_model_states_mem_needs_all_cold)

        if table:
            estimate_zero2_model_states_mem_needs_all_cold(total, gpus_per_node, nodes)
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, gpus_per_node, nodes, cpu_offload=offload == "optimizer")
        return int(gpu), int(cpu)
    if zero == 1:
        if offload != "none":
            raise SystemExit("optimizer offload needs --zero 2 or 3")
        return int(4 * total + 12 * total / gpus), int(4 * total * gpus_per_node * 1.5)
    raise SystemExit(f"--zero must be 1, 2 or 3, got {zero}")


def plan(name: str, zero: int | None = None, offload: str = "none", gpus_per_node: int | None = None, nodes: int | None = None,
         tokens: int | None = None, checkpointing: bool | None = None, table: bool = False) -> dict:
    cfg = model_config(name)
    rec = cfg.get("train") or {}
    zero = zero if zero is not None else int(str(rec.get("deepspeed") or "zero3")[-1])
    gpus_per_node = gpus_per_node or int(rec.get("gpus_per_node", 8))
    nodes = nodes or int(rec.get("nodes", 1))
    tokens = tokens or int(rec.get("max_tokens_per_micro_batch", 16384))
    checkpointing = rec.get("activation_checkpointing", True) if checkpointing is None else checkpointing
    total, largest = count_params(cfg)
    gpu_states, cpu_states = model_state_bytes(total, largest, zero, offload, gpus_per_node, nodes, table)
    act = activation_bytes(cfg["arch"], tokens, checkpointing)
    return {"model": name, "params": total, "zero": zero, "offload": offload, "nodes": nodes, "gpus_per_node": gpus_per_node,
            "tokens": tokens, "checkpointing": checkpointing, "model_states_gb": gpu_states / GB, "activations_gb": act / GB,
            "total_gb": (gpu_states + act) / GB, "cpu_per_node_gb": cpu_states / GB}


def print_table(rows: list[dict], gpu_gb: float) -> None:
    head = (f"{'model':<13} {'params':>7} {'ZeRO':>4} {'offload':<16} {'GPUs':>9} {'tokens/mb':>9} {'ckpt':>4} "
            f"{'states':>8} {'activ.':>8} {'total':>8} {'CPU/node':>9}  fits {gpu_gb:g} GB")
    print(head)
    print("-" * len(head))
    for r in rows:
        gpus = f"{r['nodes']}x{r['gpus_per_node']}"
        fits = "yes" if r["total_gb"] <= 0.85 * gpu_gb else ("tight" if r["total_gb"] <= gpu_gb else "NO")
        print(f"{r['model']:<13} {r['params'] / 1e9:>6.2f}B {r['zero']:>4} {r['offload']:<16} {gpus:>9} {r['tokens']:>9} "
              f"{'yes' if r['checkpointing'] else 'no':>4} {r['model_states_gb']:>6.1f}GB {r['activations_gb']:>6.1f}GB "
              f"{r['total_gb']:>6.1f}GB {r['cpu_per_node_gb']:>7.0f}GB  {fits}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=None, help="a configs/model name (default: the three Qwen2.5 sizes)")
    p.add_argument("--zero", type=int, choices=(1, 2, 3), help="ZeRO stage (default: the model config's train.deepspeed)")
    p.add_argument("--offload", choices=("none", "optimizer", "optimizer+params"), default="none")
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--tokens", type=int, help="tokens per micro-batch (data.max_tokens_per_micro_batch)")
    p.add_argument("--no-activation-checkpointing", dest="checkpointing", action="store_false", default=None)
    p.add_argument("--activation-checkpointing", dest="checkpointing", action="store_true")
    p.add_argument("--gpu-gb", type=float, default=80.0, help="GPU memory to compare against")
    p.add_argument("--deepspeed-table", action="store_true", help="also print DeepSpeed's own estimator tables")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    names = [args.model] if args.model else list(QWEN)
    rows = [plan(n, args.zero, args.offload, args.gpus_per_node, args.nodes, args.tokens, args.checkpointing, args.deepspeed_table)
            for n in names]
    print_table(rows, args.gpu_gb)


if __name__ == "__main__":
    main()
