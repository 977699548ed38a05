#!/usr/bin/env python
"""Per-GPU memory of a worldpm training job, to size a cluster before launching.

    python scripts/plan_memory.py                                   # the three Qwen2.5 sizes with their recommended setups
    python scripts/plan_memory.py --model qwen2.5-72b --zero 3 --nodes 4 --gpus-per-node 8 --tokens 8192
    python scripts/plan_memory.py --model qwen2.5-7b --zero 2 --offload optimizer --deepspeed-table
    python scripts/plan_memory.py --model qwen2.5-72b --lora-r 16 --zero 3 --nodes 1 --gpus-per-node 8   # LoRA on one node
    python scripts/plan_memory.py --model qwen2.5-72b --lora-r 16 --quantize 4bit --gpus-per-node 1 --gpu-gb 141   # QLoRA

Model states (weights, gradients, optimizer) come from DeepSpeed's own estimators
(`estimate_zero2_model_states_mem_needs` / `estimate_zero3_model_states_mem_needs`, the functions behind
`estimate_zero{2,3}_model_states_mem_needs_all_cold`; `--deepspeed-table` prints their tables too). DeepSpeed has no ZeRO-1
estimator: ZeRO-1 is 2 B/param of bf16 weights + 2 B/param of bf16 gradients + 12 B/param of fp32 master weights and Adam
states partitioned over all GPUs.

With LoRA (`--lora-r`, model.lora.*) DeepSpeed's estimators do not apply (they assume every parameter trains), so the model
states are counted here: the frozen backbone in bf16 (2 B/param; `--quantize 8bit` 1 B, `4bit` 0.5 B plus ~3% of
quantisation constants), replicated under ZeRO-1/2 and partitioned under ZeRO-3; the trainable adapters (r x (in + out) per
adapted projection and layer) and the reward head at 16 B/param (bf16 weight and gradient, fp32 master weight and two Adam
moments), the optimizer share partitioned from ZeRO-1 on, gradients from ZeRO-2, weights at ZeRO-3.

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


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANT_BYTES = {"none": 2.0, "8bit": 1.0, "4bit": 0.5 * 1.03}  # bytes per frozen weight (4-bit: NF4 + double-quantised constants)


def lora_params(arch: dict, r: int, targets=LORA_TARGETS) -> int:
    """Adapter parameters: r x (in + out) per adapted projection, per layer (Qwen2's attention and SwiGLU MLP shapes)."""
    h, i = arch["hidden_size"], arch["intermediate_size"]
    h_kv = h // arch["num_attention_heads"] * arch["num_key_value_heads"]
    shapes = {"q_proj": (h, h), "k_proj": (h, h_kv), "v_proj": (h, h_kv), "o_proj": (h, h), "gate_proj": (h, i),
              "up_proj": (h, i), "down_proj": (i, h)}
    return arch["num_hidden_layers"] * sum(r * (a + b) for t, (a, b) in shapes.items() if t in targets)


def lora_state_bytes(total: int, head: int, adapters: int, zero: int, gpus: int, quantize: str) -> int:
    """GPU bytes per GPU of a LoRA run's model states (module docstring)."""
    frozen = (total - head) * QUANT_BYTES[quantize] / (gpus if zero == 3 else 1)
    trainable = adapters + head
    weights = 2 * trainable / (gpus if zero == 3 else 1)
    grads = 2 * trainable / (gpus if zero >= 2 else 1)
    optim = 12 * trainable / (gpus if zero >= 1 else 1)
    return int(frozen + weights + grads + optim)


def plan(name: str, zero: int | None = None, offload: str = "none", gpus_per_node: int | None = None, nodes: int | None = None,
         tokens: int | None = None, checkpointing: bool | None = None, table: bool = False, lora_r: int = 0,
         quantize: str = "none") -> dict:
    cfg = model_config(name)
    rec = cfg.get("train") or {}
    if lora_r and quantize != "none":
        zero = 0  # QLoRA runs without ZeRO (deepspeed=null), one process per GPU
    zero = zero if zero is not None else int(str(rec.get("deepspeed") or "zero3")[-1])
    gpus_per_node = gpus_per_node or int(rec.get("gpus_per_node", 8))
    nodes = nodes or int(rec.get("nodes", 1))
    tokens = tokens or int(rec.get("max_tokens_per_micro_batch", 16384))
    checkpointing = rec.get("activation_checkpointing", True) if checkpointing is None else checkpointing
    total, largest = count_params(cfg)
    method = "full"
    if lora_r:
        h = cfg["arch"]["hidden_size"]
        head = h * h + h + h + 1 if cfg.get("head", "mlp") == "mlp" else h
        adapters = lora_params(cfg["arch"], lora_r)
        gpu_states = lora_state_bytes(total, head, adapters, zero, gpus_per_node * nodes, quantize)
        cpu_states = 0
        method = f"LoRA r={lora_r}" + (f" {quantize}" if quantize != "none" else "")
    else:
        gpu_states, cpu_states = model_state_bytes(total, largest, zero, offload, gpus_per_node, nodes, table)
    act = activation_bytes(cfg["arch"], tokens, checkpointing)
    return {"model": name, "params": total, "method": method, "zero": zero, "offload": offload, "nodes": nodes,
            "gpus_per_node": gpus_per_node, "tokens": tokens, "checkpointing": checkpointing, "model_states_gb": gpu_states / GB,
            "activations_gb": act / GB, "total_gb": (gpu_states + act) / GB, "cpu_per_node_gb": cpu_states / GB}


def print_table(rows: list[dict], gpu_gb: float) -> None:
    head = (f"{'model':<13} {'params':>7} {'method':<15} {'ZeRO':>4} {'offload':<16} {'GPUs':>9} {'tokens/mb':>9} {'ckpt':>4} "
            f"{'states':>8} {'activ.':>8} {'total':>8} {'CPU/node':>9}  fits {gpu_gb:g} GB")
    print(head)
    print("-" * len(head))
    for r in rows:
        gpus = f"{r['nodes']}x{r['gpus_per_node']}"
        fits = "yes" if r["total_gb"] <= 0.85 * gpu_gb else ("tight" if r["total_gb"] <= gpu_gb else "NO")
        print(f"{r['model']:<13} {r['params'] / 1e9:>6.2f}B {r['method']:<15} {r['zero']:>4} {r['offload']:<16} {gpus:>9} {r['tokens']:>9} "
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
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank (model.lora.r; 0: full fine-tuning)")
    p.add_argument("--quantize", choices=tuple(QUANT_BYTES), default="none", help="QLoRA: the frozen backbone in 8 or 4 bits")
    args = p.parse_args(argv)
    if args.quantize != "none" and not args.lora_r:
        p.error("--quantize needs --lora-r (QLoRA)")
    if args.lora_r and args.offload != "none":
        p.error("--offload is for full fine-tuning (LoRA's optimizer states are small)")
    import logging

    logging.disable(logging.WARNING)
    names = [args.model] if args.model else list(QWEN)
    rows = [plan(n, args.zero, args.offload, args.gpus_per_node, args.nodes, args.tokens, args.checkpointing, args.deepspeed_table,
                 args.lora_r, args.quantize) for n in names]
    print_table(rows, args.gpu_gb)


if __name__ == "__main__":
    main()
