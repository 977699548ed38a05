"""The checkpoint contract: what a reward checkpoint directory holds, how it is written, and how its parts are read.

A checkpoint is a Hugging Face directory: `config.json`, `model.safetensors` (sharded when large), tokenizer files, and a
`worldpm` block in the config (`RewardSpec`: head kind, reward token, readout, chat format, optional reward mean/std).

- head `mlp` (default; WorldPM's released layout): `score = Linear(h,h) -> ReLU -> Linear(h,1)`, weights `score.0.*`/`score.2.*`,
  architecture `Qwen2ForRewardModel`, as in the released WorldPM-72B and vLLM's Qwen2ForRewardModel.
- head `linear`: `score = Linear(h,1,bias=False)`, architecture `Qwen2ForSequenceClassification`, so
  `transformers.AutoModelForSequenceClassification` (and TRL, OpenRLHF, RewardBench) load it as it is; its `pad_token_id` is
  `<|im_end|>`, so HF's "rightmost non-pad token" pooling lands on the reward token and gives the same reward.

The files are written for every reader in the ecosystem, not only the transformers that wrote them (`legacy_config_fields`,
`write_tokenizer`): config.json also carries the flat fields transformers 4.x reads (`rope_theta`, `rope_scaling`,
`torch_dtype`; 5.x keeps them in `rope_parameters` / `dtype`, and 4.51 silently falls back to rope_theta 10000 without
them), the tokenizer is declared as `PreTrainedTokenizerFast` (a class every version resolves; 5.x writes `TokenizersBackend`,
which 4.x does not know) with its `model_input_names` (else 4.x adds token_type_ids, which Qwen2 refuses), and the chat
template is both in `chat_template.jinja` (5.x) and in tokenizer_config.json (4.x).
scripts/interop_check.sh loads an export with RewardBench's transformers 4.51, OpenRLHF's 5.15 and TRL's newest.

A directory without a `worldpm` block but with `score.0.*`/`score.2.*` weights is read as the released WorldPM code reads it: the
released `forward()` pools the token *before* the first pad token (`<|endoftext|>`), so such a directory gets
`readout="before_reward_token"` (`spec_for`). scripts/check_released_worldpm.py tells a user with the real weights which readout
reproduces the card's reference scores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
from huggingface_hub import hf_hub_download, save_torch_state_dict
from safetensors import safe_open
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

from worldpm.atomic_dir import replace_dir
from worldpm.config.schemas import HEADS, READOUTS
from worldpm.errors import UserError
from worldpm.model.chat_format import PAD_TOKEN, REWARD_TOKEN

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class RewardSpec:
    """The checkpoint's `worldpm` block: everything needed to read a reward the way the model was trained to give it."""

    head: str = "mlp"
    reward_token: str = REWARD_TOKEN
    readout: str = "reward_token"  # read at the reward token, or at the token before it (released WorldPM code)
    chat_format: str = "chatml"
    system_prompt: str = ""
    max_length: int = 4096
    reward_mean: float | None = None  # optional normalisation statistics (serving)
    reward_std: float | None = None
    format_version: int = 1

    def __post_init__(self):
        if self.head not in HEADS:
            raise UserError(f"unknown reward head {self.head!r}; choose from {HEADS}")
        if self.readout not in READOUTS:
            raise UserError(f"unknown reward readout {self.readout!r}; choose from {READOUTS}")
        if self.reward_token != REWARD_TOKEN or self.chat_format != "chatml":
            raise UserError(f"unsupported reward token / chat format {self.reward_token!r}/{self.chat_format!r}")

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> "RewardSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in block.items() if k in known})


def torch_dtype(dtype) -> torch.dtype | None:
    """A dtype name (float32, bfloat16, ...) as a torch dtype; None / `auto` stay None (the weights' own dtype)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) in ("auto", "None"):
        return None
    if str(dtype) not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    return DTYPES[str(dtype)]


def architecture_name(config, head: str) -> str:
    """`Qwen2ForRewardModel` / `Qwen2ForSequenceClassification` (or the same for another backbone family)."""
    base = AutoModel._model_mapping[type(config)].__name__  # e.g. Qwen2Model
    stem = base[: -len("Model")] if base.endswith("Model") else base
    return f"{stem}ForRewardModel" if head == "mlp" else f"{stem}ForSequenceClassification"


def save_checkpoint(out_dir, state_dict: Mapping[str, torch.Tensor], config, tokenizer, spec: RewardSpec,
                    max_shard_size: str = "5GB") -> Path:
    """Write a checkpoint-contract directory atomically: a reader never sees a half-written one at `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_torch_state_dict(state, str(tmp), max_shard_size=max_shard_size, safe_serialization=True)
        cfg = config.to_dict()
        pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
        cfg.update(architectures=[architecture_name(config, spec.head)], num_labels=1, id2label={"0": "LABEL_0"},
                   label2id={"LABEL_0": 0}, pad_token_id=pad_id, eos_token_id=tokenizer.convert_tokens_to_ids(REWARD_TOKEN),
                   use_cache=False, worldpm=asdict(spec))
        cfg.pop("_attn_implementation_autoset", None)
        cfg.pop("quantization_config", None)  # saved weights are never quantised (a QLoRA export is dequantised and merged)
        cfg.update(legacy_config_fields(cfg))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        write_tokenizer(tokenizer, tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700: a checkpoint must be readable like any directory the user makes
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # the generic tokenizer.json reader: in transformers 4.x and 5.x alike


def legacy_config_fields(cfg: Mapping[str, Any]) -> dict:
    """The config fields that transformers 4.x reads flat and 5.x moved: `rope_theta`/`rope_scaling` (5.x: `rope_parameters`)
    and `torch_dtype` (5.x: `dtype`). Fields already present are kept as they are."""
    out: dict[str, Any] = {}
    rope = cfg.get("rope_parameters")
    if isinstance(rope, Mapping) and "rope_theta" in rope and "rope_theta" not in cfg:
        out["rope_theta"] = rope["rope_theta"]
        kind = rope.get("rope_type", "default")
        if "rope_scaling" not in cfg:  # 4.x: null for plain RoPE, else the scaling dict with its type under both names
            extra = {k: v for k, v in rope.items() if k != "rope_theta"}
            out["rope_scaling"] = None if kind == "default" else {**extra, "type": kind, "rope_type": kind}
    if cfg.get("dtype") is not None and "torch_dtype" not in cfg:
        out["torch_dtype"] = cfg["dtype"]
    return out


def write_tokenizer(tokenizer, directory: Path) -> None:
    """`tokenizer.save_pretrained`, then made readable by every transformers version: a tokenizer class they all resolve, and
    the chat template in tokenizer_config.json as well as in chat_template.jinja, and the model's input names (4.x's generic
    class would add token_type_ids)."""
    tokenizer.save_pretrained(str(directory))
    config_file = directory / "tokenizer_config.json"
    tok_cfg = json.loads(config_file.read_text())
    if (directory / "tokenizer.json").exists():
        tok_cfg["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        # 4.x's generic class also returns token_type_ids unless told otherwise, and Qwen2's forward() refuses them
        tok_cfg.setdefault("model_input_names", list(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"])))
    template = tokenizer.chat_template
    if isinstance(template, str):
        tok_cfg["chat_template"] = template
        (directory / "chat_template.jinja").write_text(template)
    config_file.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")


def read_config(path: str) -> dict:
    if os.path.isdir(path):
        cfg_file = Path(path) / "config.json"
        if not cfg_file.exists():
            raise UserError(f"{path} has no config.json: not a model directory")
        try:
            return json.loads(cfg_file.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{cfg_file} is not valid JSON: {exc}") from None
    if os.path.exists(path):
        raise UserError(f"model path {path!r} is a file, not a model directory")
    if path.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path):
        raise UserError(f"model path {path!r} does not exist")
    try:
        return json.loads(Path(hf_hub_download(path, "config.json")).read_text())
    except Exception as exc:  # offline, unknown repo, ...
        raise UserError(f"model path {path!r} is not a local directory and could not be fetched from the hub "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def weight_files(path: str) -> list[str]:
    """Local safetensors files of a checkpoint (single or sharded), downloading them for a hub id."""
    def resolve(name):
        if os.path.isdir(path):
            full = os.path.join(path, name)
            return full if os.path.exists(full) else None
        try:
            return hf_hub_download(path, name)
        except Exception:
            return None

    index = resolve("model.safetensors.index.json")
    if index:
        shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        return [resolve(s) for s in shards]
    single = resolve("model.safetensors")
    if single:
        return [single]
    raise UserError(f"no model.safetensors (or sharded index) in {path}")


def read_head_tensors(path: str) -> dict[str, torch.Tensor]:
    """Only the `score.*` tensors: the backbone is loaded by transformers, which handles sharding, dtype and ZeRO-3."""
    head = {}
    for file in weight_files(path):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if key.startswith("score."):
                    head[key] = f.get_tensor(key)
    return head


def spec_for(path: str, config_dict: dict, head_tensors: Mapping[str, torch.Tensor]) -> RewardSpec:
    if "worldpm" in config_dict:
        return RewardSpec.from_dict(config_dict["worldpm"])
    if {"score.0.weight", "score.2.weight"} <= set(head_tensors):
        # Released WorldPM / Qwen2.5-Math-RM layout: its forward() pools the token before the first pad (<|endoftext|>).
        return RewardSpec(head="mlp", readout="before_reward_token")
    if set(head_tensors) == {"score.weight"} and head_tensors["score.weight"].shape[0] == 1:
        # A plain HF sequence-classification RM (TRL, OpenRLHF export) without our block: read at its last token.
        return RewardSpec(head="linear", readout="reward_token")
    raise UserError(f"{path} has no reward head: config.json has no 'worldpm' block and the weights hold no score.* head "
                    f"(found {sorted(head_tensors) or 'none'}); to start from a base model use model.path={path} (a fresh head)")


def load_backbone(path: str, dtype, attn_implementation: str, device_map=None, quantization_config=None):
    """The base model of `path` (a checkpoint or a pretrained LM), in `dtype`, optionally spread by `device_map` and quantised
    by a bitsandbytes `quantization_config` (QLoRA, worldpm.model.lora)."""
    read_config(path)  # a clear error for a missing path before transformers' long one
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except ValueError as exc:
        raise UserError(f"cannot load {path}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise UserError(f"cannot load config of {path}: {str(exc).splitlines()[0]}") from None
    config.use_cache = False
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the score.* / lm_head tensors that the base model skips, as expected
    try:
        backbone = AutoModel.from_pretrained(path, config=config, dtype=torch_dtype(dtype) or "auto",
                                             attn_implementation=attn_implementation, trust_remote_code=False,
                                             **({"device_map": device_map} if device_map is not None else {}),
                                             **({"quantization_config": quantization_config} if quantization_config else {}))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load weights of {path}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return backbone


def has_reward_head(path: str) -> bool:
    """True for a reward checkpoint (a `worldpm` block or `score.*` weights), False for a plain pretrained LM."""
    return "worldpm" in read_config(path) or bool(read_head_tensors(path))
