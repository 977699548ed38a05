"""The one loader: train, eval, score and serve all get their reward model here (as OpenRLHF's train and serve CLIs share
`get_llm_for_sequence_regression`), so a checkpoint is read, placed and cast the same way by every verb.

What a config names becomes a `RewardModel`:
- `path` (eval/score/serve's `model_path`, train's `init_from`) or `model.path` holding a reward checkpoint: loaded as it is
  (its head, readout and tokenizer; the released WorldPM-72B directory included);
- `model.path` holding a pretrained language model (e.g. Qwen/Qwen2.5-7B): that backbone with a fresh `model.head`;
- neither: a random-initialised backbone from `model.arch` (model=tiny), seeded by `model.seed`.

`device`: auto (the first GPU, else the CPU) | cpu | cuda | cuda:N | None (left where it is built: the trainer's engine places it).
`dtype`, one meaning in every verb: auto (bfloat16 on a GPU, float32 on a CPU, where bf16 matmuls are slow and save nothing) |
checkpoint or null (the dtype the weights are stored in; for a model built from its config, the config's `dtype`) | float32 |
bfloat16 | float16. `device_map=auto` spreads a checkpoint larger than one GPU (WorldPM-72B) over the visible GPUs.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from worldpm.errors import UserError
from worldpm.model.checkpoint import has_reward_head, torch_dtype
from worldpm.model.reward_model import RewardModel
from worldpm.model.tokenizer import load_tokenizer

log = logging.getLogger("worldpm.model")

CHECKPOINT_DTYPE = "checkpoint"  # a dtype value: keep the dtype the weights are stored in


def resolve_device(device: str | None) -> str:
    """`auto`: the first GPU when there is one, else the CPU; anything else is checked."""
    device = str(device or "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} asked for, but torch sees no CUDA device (use device=cpu or device=auto)")
    if not (device == "cpu" or device.startswith(("cuda", "mps", "xpu"))):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str | None, device: str | None) -> str | None:
    """A dtype name for loading, or None for the weights' own (`checkpoint`/null); `auto` depends on the device."""
    if dtype is None or str(dtype) in (CHECKPOINT_DTYPE, "None", "null"):
        return None
    if str(dtype) == "auto":
        return "bfloat16" if str(device or "cpu").startswith("cuda") else "float32"
    torch_dtype(dtype)  # an unknown name is a one-line error before anything loads
    return str(dtype)


def load_reward_model(model_cfg: Mapping[str, Any] | None = None, path: str | None = None, *, device: str | None = "auto",
                      dtype: str | None = "auto", device_map=None, quantization_config=None) -> RewardModel:
    """The reward model a config describes (module docstring), on `device`, in `dtype`, in eval mode. `quantization_config`
    (QLoRA's bitsandbytes config, worldpm.model.lora) quantises a pretrained backbone as it loads."""
    model_cfg = dict(model_cfg or {})
    if device is not None and device_map is None:
        device = resolve_device(device)
    name = resolve_dtype(dtype, device)
    path = str(path or model_cfg.get("path") or "") or None
    attn = model_cfg.get("attn_implementation", "sdpa")
    if path and has_reward_head(path):
        model = RewardModel.from_pretrained(path, dtype=name, attn_implementation=attn,
                                            device=device if device_map is None else None, device_map=device_map,
                                            quantization_config=quantization_config)
        return model
    spec = dict(readout=model_cfg.get("readout", "reward_token"), max_length=int(model_cfg.get("max_length", 4096)))
    build_dtype = name or model_cfg.get("dtype") or "float32"
    tokenizer_spec = model_cfg.get("tokenizer")
    if path:
        model = RewardModel.from_backbone(path, head=model_cfg.get("head", "mlp"),
                                          tokenizer=load_tokenizer(tokenizer_spec) if tokenizer_spec else None,
                                          dtype=build_dtype, attn_implementation=attn, seed=int(model_cfg.get("seed", 0)),
                                          device_map=device_map, quantization_config=quantization_config, **spec)
    else:
        if quantization_config is not None:
            raise UserError(f"model {model_cfg.get('name')!r} is built from its config (random weights): quantisation (QLoRA) needs "
                            "pretrained weights (model.path or init_from)")
        if not model_cfg.get("arch"):
            raise UserError(f"model {model_cfg.get('name')!r} has neither a path nor an arch to build from")
        model = RewardModel.from_config(model_cfg["arch"], load_tokenizer(tokenizer_spec or "tiny"),
                                        head=model_cfg.get("head", "mlp"), dtype=build_dtype, attn_implementation=attn,
                                        seed=int(model_cfg.get("seed", 0)), **spec)
        if device is not None:
            log.warning("no checkpoint: model=%s is RANDOMLY INITIALISED (fine for smoke tests, meaningless rewards)",
                        model_cfg.get("name"))
    return (model if device is None or device_map is not None else model.to(device)).eval()


def model_source(path: str | None, model_cfg: Mapping[str, Any]) -> str:
    """Where a model comes from: the checkpoint path, the backbone's path, or `model=<name> (random init)`."""
    return str(path or model_cfg.get("path") or f"model={model_cfg.get('name')} (random init)")


def describe(model: RewardModel, path: str | None, model_cfg: Mapping[str, Any]) -> str:
    """One line for logs: source, head, readout, dtype, device."""
    p = next(model.parameters())
    return f"{model_source(path, model_cfg)} (head={model.spec.head}, readout={model.spec.readout}, {p.dtype}, {p.device})"
