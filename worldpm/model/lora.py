"""LoRA and QLoRA fine-tuning of a RewardModel through peft (`model.lora.*`), and the merge that makes its export an ordinary
checkpoint.

LoRA adapters (rank `r`, `alpha`, `dropout`, on `target_modules` of the backbone: by default every attention and MLP projection)
are injected into the backbone with `peft.inject_adapter_in_model`, so the model stays a RewardModel whose state-dict keys are the
contract's plus peft's `.base_layer` / `.lora_A.default` / `.lora_B.default`. The backbone is frozen; the adapters and the whole
reward head train (a fresh head must learn from nothing, and a WorldPM head must follow the new preferences).

An export merges the adapters into the weights (`merge_lora_state_dict`: W + scaling * B @ A, computed in fp32), so a fine-tuned
checkpoint is an ordinary checkpoint: RewardModel, transformers and the server load it without peft, and it scores like the live
adapter model (tested). Beside it, `adapter/` holds the adapters and the head alone (`adapter_model.safetensors` in peft's key
layout, `reward_head.safetensors`, `adapter_config.json`): megabytes instead of the 145 GB of a merged 72B.

QLoRA (`quantize: 4bit | 8bit`) loads the frozen backbone through bitsandbytes (NF4 with double quantisation, or LLM.int8),
which needs a CUDA GPU; the export dequantises each base weight before merging (`merge_quantized`).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from worldpm.errors import UserError

# Qwen2's attention and MLP projections
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER = "default"  # peft's adapter name
BASE, LORA_A, LORA_B = ".base_layer", f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    use_rslora: bool = False
    quantize: str | None = None

    @property
    def scaling(self) -> float:
        """peft's scaling of B @ A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def as_dict(self) -> dict:
        return {**asdict(self), "target_modules": list(self.target_modules)}


def lora_settings(lora_cfg: Mapping[str, Any] | None) -> LoraSettings | None:
    """`model.lora` as settings (None when disabled); missing keys take LoRA's usual defaults. The values were checked with
    the config (worldpm/config/schemas.py `Lora`)."""
    if not lora_cfg or not lora_cfg.get("enabled"):
        return None
    return LoraSettings(int(lora_cfg.get("r", 16)), float(lora_cfg.get("alpha", 32)), float(lora_cfg.get("dropout", 0.05)),
                        tuple(lora_cfg.get("target_modules") or DEFAULT_TARGETS), bool(lora_cfg.get("use_rslora", False)),
                        lora_cfg.get("quantize"))


def check_quantization(settings: LoraSettings | None, deepspeed_cfg) -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU, in one process per GPU without ZeRO: refuse anything else in one line, before
    a model is built."""
    if settings is None or settings.quantize is None:
        return
    key = f"model.lora.quantize={settings.quantize}"
    if not torch.cuda.is_available():
        raise UserError(f"{key} needs a CUDA GPU (bitsandbytes' quantised kernels); this machine has none: use model.lora.quantize=null "
                        "(LoRA on unquantised weights)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"{key} needs bitsandbytes: pip install 'worldpm[qlora]'") from None
    if deepspeed_cfg is not None:
        raise UserError(f"{key} runs with deepspeed=null (one process; quantised weights are not partitioned by ZeRO)")


def quantization_config(settings: LoraSettings | None, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for QLoRA (None without quantisation)."""
    if settings is None or settings.quantize is None:
        return None
    from transformers import BitsAndBytesConfig

    if settings.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def apply_lora(model, settings: LoraSettings, gradient_checkpointing: bool = False) -> dict:
    """Freeze the backbone, inject the adapters, keep the head trainable. Returns parameter counts for logs and state.json."""
    from peft import LoraConfig, inject_adapter_in_model

    backbone = model.model
    if settings.quantize is not None:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=gradient_checkpointing)
    names = {name.rsplit(".", 1)[-1] for name, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)
             or type(m).__name__ in ("Linear4bit", "Linear8bitLt")}
    missing = [t for t in settings.target_modules if t not in names]
    if missing:
        raise UserError(f"model.lora.target_modules: {missing} are not linear layers of this backbone (it has {sorted(names)})")
    for p in backbone.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), use_rslora=settings.use_rslora, bias="none")
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
    for name, p in backbone.named_parameters():
        p.requires_grad_(".lora_" in name)
    for p in model.head.parameters():
        p.requires_grad_(True)
    numel = lambda p: int(getattr(p, "ds_numel", p.numel()))  # noqa: E731
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "adapter_params": sum(numel(p) for n, p in backbone.named_parameters() if ".lora_" in n)}


def is_lora_key(key: str) -> bool:
    return ".lora_" in key


def merge_lora_state_dict(state: Mapping[str, torch.Tensor], settings: LoraSettings) -> dict[str, torch.Tensor]:
    """The state dict of the equivalent plain model: every adapted weight W + scaling * B @ A (fp32, cast back to W's dtype),
    `.base_layer` taken out of the names, the adapter tensors dropped. Works on a gathered state dict (any engine, ZeRO-3
    included), one layer at a time."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if is_lora_key(key):
            continue
        if BASE + "." not in key:
            out[key] = value
            continue
        prefix, _, param = key.rpartition(BASE + ".")
        plain = f"{prefix}.{param}"
        if param == "weight":
            a, b = state.get(prefix + LORA_A), state.get(prefix + LORA_B)
            if a is None or b is None:
                raise ValueError(f"adapted layer {prefix} has no lora_A / lora_B weights in the state dict")
            value = (value.float() + settings.scaling * (b.float() @ a.float())).to(value.dtype)
        out[plain] = value
    return out


def merge_quantized(model, settings: LoraSettings) -> dict[str, torch.Tensor]:
    """QLoRA's export: walk the live model, dequantising each quantised base weight (peft's dequantize_module_weight) and adding
    its adapter; every other tensor as it is, in bf16. One process (quantisation runs without ZeRO)."""
    from peft.utils.integrations import dequantize_module_weight

    out: dict[str, torch.Tensor] = {}
    done: list[str] = []  # module names whose tensors are written above (their quantisation state is left out)
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "lora_A") and ADAPTER in module.lora_A:
            base = module.base_layer
            delta = module.lora_B[ADAPTER].weight.float() @ module.lora_A[ADAPTER].weight.float()
            out[f"{name}.weight"] = (dequantize_module_weight(base).float() + settings.scaling * delta).to(torch.bfloat16).cpu()
            if base.bias is not None:
                out[f"{name}.bias"] = base.bias.detach().cpu()
            done.append(name)
        elif type(module).__name__ in ("Linear4bit", "Linear8bitLt") and not name.endswith(BASE):
            out[f"{name}.weight"] = dequantize_module_weight(module).to(torch.bfloat16).cpu()
            if module.bias is not None:
                out[f"{name}.bias"] = module.bias.detach().cpu()
            done.append(name)
    for key, value in model.state_dict().items():
        if is_lora_key(key) or any(key.startswith(m + ".") for m in done):
            continue
        out[key] = value.detach().cpu()
    return out


def save_adapter(directory: Path, state: Mapping[str, torch.Tensor], settings: LoraSettings, base: str | None) -> Path:
    """`directory/`: the adapters in peft's saved layout (`base_model.model.<module>.lora_A.weight`, loadable with
    `peft.set_peft_model_state_dict` / `PeftModel` on the backbone), the reward head (`score.*`), and the settings."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    adapters = {"base_model.model." + k.removeprefix("model.").replace(f".{ADAPTER}.", "."): v.detach().contiguous().cpu()
                for k, v in state.items() if is_lora_key(k)}
    head = {k: v.detach().contiguous().cpu() for k, v in state.items() if k.startswith("score.")}
    save_file(adapters, str(directory / "adapter_model.safetensors"))
    save_file(head, str(directory / "reward_head.safetensors"))
    config = {"peft_type": "LORA", "task_type": None, "r": settings.r, "lora_alpha": settings.alpha,
              "lora_dropout": settings.dropout, "target_modules": list(settings.target_modules), "use_rslora": settings.use_rslora,
              "bias": "none", "base_model_name_or_path": base, "worldpm": {"reward_head": "reward_head.safetensors",
                                                                            "quantize": settings.quantize}}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


@dataclass
class LoraExport:
    """What an export of a LoRA run needs besides the weights: the settings and where the base model came from."""

    settings: LoraSettings
    base: str | None = None
