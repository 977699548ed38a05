"""`RewardModel`: a transformers backbone (via the Auto classes) plus a scalar reward head, read at the reward token.

The one reward reader shared by training, evaluation and serving. Checkpoints are Hugging Face directories (checkpoint contract):

- head `mlp` (default; WorldPM's released layout): `score = Linear(h,h) -> ReLU -> Linear(h,1)`, weights `score.0.*`/`score.2.*`,
  architecture `Qwen2ForRewardModel`, as in the released WorldPM-72B and vLLM's Qwen2ForRewardModel.
- head `linear`: `score = Linear(h,1,bias=False)`, architecture `Qwen2ForSequenceClassification`, so
  `transformers.AutoModelForSequenceClassification` (and TRL, OpenRLHF, RewardBench) load it as it is; its `pad_token_id` is
  `<|im_end|>`, so HF's "rightmost non-pad token" pooling lands on the reward token and gives the same reward.

`config.json` carries a `worldpm` block (head, reward token, readout, chat format, optional reward mean/std). A directory without
one but with `score.0.*`/`score.2.*` weights is read as the released WorldPM code reads it: the released `forward()` pools the token
*before* the first pad token (`<|endoftext|>`), so such a directory gets `readout="before_reward_token"`.
scripts/check_released_worldpm.py tells a user with the real weights which readout reproduces the card's reference scores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from worldpm.atomic_dir import replace_dir
from worldpm.batching import length_sorted_batches, pad_batch
from worldpm.chat_format import PAD_TOKEN, REWARD_TOKEN, encode, encode_conversations, render_text
from worldpm.errors import UserError

HEADS = ("mlp", "linear")
READOUTS = ("reward_token", "before_reward_token")
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


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) in ("auto", "None"):
        return None
    if str(dtype) not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    return DTYPES[str(dtype)]


def make_head(kind: str, hidden_size: int) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 1))
    if kind == "linear":
        return nn.Linear(hidden_size, 1, bias=False)
    raise UserError(f"unknown reward head {kind!r}; choose from {HEADS}")


def init_head(head: nn.Module, std: float) -> None:
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class RewardModel(nn.Module):
    """Backbone (`self.model`, an Auto base model) + reward head (`self.head`); state-dict keys `model.*`, `score.*`."""

    def __init__(self, backbone: nn.Module, tokenizer, spec: RewardSpec | None = None, head: nn.Module | None = None):
        super().__init__()
        self.spec = spec or RewardSpec()
        self.model = backbone
        self.config = backbone.config
        self.config.use_cache = False  # a cache would make transformers ignore packed position_ids (sequences leak)
        # Registered under the name `score` so state-dict keys are `score.*` (the checkpoint contract); `score` is also the
        # scoring method (the Python API contract), so the module is reached through `self.head`.
        self._modules["score"] = head if head is not None else make_head(self.spec.head, self.config.hidden_size)
        self.tokenizer = tokenizer

    @property
    def head(self) -> nn.Module:
        return self._modules["score"]

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids, attention_mask=None, position_ids=None, reward_index=None, **backbone_kwargs) -> torch.Tensor:
        """Rewards (fp32) read at `reward_index`, a LongTensor of flat positions into the (batch*seq) tokens or (rows, cols).

        Padded batches pass attention_mask and reward_index = (rows, lengths-1); packed rows pass position_ids restarting at each
        sequence (no attention_mask) and the flat indices of each sequence's last token.
        """
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False, **backbone_kwargs).last_hidden_state
        if reward_index is None:
            if attention_mask is None:
                raise ValueError("reward_index is required when there is no attention_mask")
            reward_index = (torch.arange(hidden.shape[0], device=hidden.device), attention_mask.sum(-1) - 1)
        if isinstance(reward_index, tuple):
            rows, cols = reward_index
            flat = rows.to(hidden.device) * hidden.shape[1] + cols.to(hidden.device)
        else:
            flat = reward_index.to(hidden.device)
        if self.spec.readout == "before_reward_token":
            flat = flat - 1
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)
        head_weight = next(self.head.parameters())
        return self.head(picked.to(head_weight.device)).squeeze(-1).float()

    # ------------------------------------------------------------------ scoring
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(PAD_TOKEN)

    def encode(self, conversations, max_length: int | None = None) -> list[list[int]]:
        """Token ids of conversations (lists of {role, content}), truncated to `max_length` keeping the reward token."""
        ids, _ = encode_conversations(self.tokenizer, conversations, max_length or self.spec.max_length, self.spec.system_prompt)
        return ids

    def encode_texts(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids of already-rendered ChatML texts (OpenRLHF's protocol); the reward token is appended when absent."""
        ids, _ = encode(self.tokenizer, [render_text(t) for t in texts], max_length or self.spec.max_length)
        return ids

    @torch.inference_mode()
    def score_ids(self, sequences: Sequence[Sequence[int]], max_tokens: int = 16384, max_batch_size: int = 64,
                  max_padding: float | None = None, progress: Callable[[int], Any] | None = None) -> list[float]:
        """Rewards for token-id sequences (each ending in the reward token), in input order.

        Scored in length-sorted, right-padded batches of at most `max_tokens` padded tokens, `max_batch_size` rows and (when
        given) a `max_padding` share of padding (worldpm.batching.length_sorted_batches); `progress(n_tokens)` after each batch.
        """
        was_training = self.training
        self.eval()
        lengths = [len(s) for s in sequences]
        rewards: list[float] = [0.0] * len(sequences)
        try:
            for batch in length_sorted_batches(lengths, max_tokens, max_batch_size, max_padding):
                ids, mask, pos, cols = pad_batch([sequences[i] for i in batch], self.pad_id, side="right")
                dev = self.device
                out = self(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                           reward_index=(torch.arange(len(batch)), cols))
                for i, r in zip(batch, out.tolist()):
                    rewards[i] = r
                if progress is not None:
                    progress(sum(lengths[i] for i in batch))
        finally:
            self.train(was_training)
        return rewards

    def score(self, conversations, max_length: int | None = None, **batching) -> list[float]:
        """Rewards for conversations (lists of {role, content} ending with the assistant reply), in input order."""
        return self.score_ids(self.encode(conversations, max_length), **batching)

    def score_texts(self, texts: Sequence[str], max_length: int | None = None, **batching) -> list[float]:
        """Rewards for already-rendered ChatML texts (OpenRLHF's protocol); the reward token is appended when absent."""
        return self.score_ids(self.encode_texts(texts, max_length), **batching)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, arch: Mapping[str, Any], tokenizer, head: str = "mlp", dtype="float32", attn_implementation: str = "sdpa",
                    seed: int = 0, device: str | torch.device | None = None, **spec) -> "RewardModel":
        """A randomly initialised backbone from an architecture dict (`model_type` + config fields), e.g. `model=tiny`."""
        from transformers import AutoConfig, AutoModel

        arch = dict(arch)
        model_type = arch.pop("model_type", None)
        try:
            config = AutoConfig.for_model(model_type, **arch)
        except (ValueError, KeyError) as exc:
            raise UserError(f"model type {model_type!r} is not known to this transformers version: {str(exc).splitlines()[0]}") from None
        config._attn_implementation = attn_implementation
        torch.manual_seed(seed)
        ctx = torch.device(device) if device is not None else _nullcontext()
        with ctx:
            backbone = AutoModel.from_config(config, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation)
            model = cls(backbone, tokenizer, RewardSpec(head=head, **spec))
        if str(device) != "meta":
            init_head(model.head, config.initializer_range)
            model.head.to(resolve_dtype(dtype) or torch.float32)
        return model

    @classmethod
    def from_backbone(cls, path: str, head: str = "mlp", tokenizer=None, dtype="float32", attn_implementation: str = "sdpa",
                      seed: int = 0, **spec) -> "RewardModel":
        """A pretrained language model (hub id or local directory, e.g. `Qwen/Qwen2.5-7B`) with a freshly initialised head."""
        from worldpm.tokenizer import load_tokenizer

        backbone = _load_backbone(path, dtype, attn_implementation)
        torch.manual_seed(seed)
        model = cls(backbone, tokenizer or load_tokenizer(path), RewardSpec(head=head, **spec))
        init_head(model.head, getattr(backbone.config, "initializer_range", 0.02))
        model.head.to(backbone.dtype)
        return model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype=None, attn_implementation: str = "sdpa", tokenizer=None,
                        device: str | torch.device | None = None, device_map=None) -> "RewardModel":
        """Load a reward checkpoint: ours (either head), or a released WorldPM directory as it is.

        `device_map="auto"` spreads a large backbone over the visible GPUs (transformers/accelerate); the head follows the last layer.
        """
        from worldpm.tokenizer import load_tokenizer

        path = str(path)
        config_dict = _read_config(path)
        head_tensors = _read_head_tensors(path)
        spec = _spec_for(path, config_dict, head_tensors)
        backbone = _load_backbone(path, dtype, attn_implementation, device_map=device_map)
        model = cls(backbone, tokenizer or load_tokenizer(path), spec)
        prefix = "score."
        state = {k[len(prefix):]: v for k, v in head_tensors.items()}
        model.head.to(backbone.dtype)
        missing, unexpected = model.head.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"reward head in {path} does not match head {spec.head!r}: missing {missing}, unexpected {unexpected}")
        if device_map is not None:
            model.head.to(list(backbone.parameters())[-1].device)
        elif device is not None:
            model.to(device)
        return model.eval()

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, out_dir: str | os.PathLike, max_shard_size: str = "5GB") -> Path:
        return save_checkpoint(out_dir, self.state_dict(), self.config, self.tokenizer, self.spec, max_shard_size)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------- checkpoint I/O
def architecture_name(config, head: str) -> str:
    """`Qwen2ForRewardModel` / `Qwen2ForSequenceClassification` (or the same for another backbone family)."""
    from transformers import AutoModel

    base = AutoModel._model_mapping[type(config)].__name__  # e.g. Qwen2Model
    stem = base[: -len("Model")] if base.endswith("Model") else base
    return f"{stem}ForRewardModel" if head == "mlp" else f"{stem}ForSequenceClassification"


def save_checkpoint(out_dir, state_dict: Mapping[str, torch.Tensor], config, tokenizer, spec: RewardSpec,
                    max_shard_size: str = "5GB") -> Path:
    """Write a checkpoint-contract directory atomically: a reader never sees a half-written one at `out_dir`."""
    from huggingface_hub import save_torch_state_dict

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
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700: a checkpoint must be readable like any directory the user makes
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _read_config(path: str) -> dict:
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
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path, "config.json")).read_text())
    except Exception as exc:  # offline, unknown repo, ...
        raise UserError(f"model path {path!r} is not a local directory and could not be fetched from the hub "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _weight_files(path: str) -> list[str]:
    """Local safetensors files of a checkpoint (single or sharded), downloading them for a hub id."""
    def resolve(name):
        if os.path.isdir(path):
            full = os.path.join(path, name)
            return full if os.path.exists(full) else None
        from huggingface_hub import hf_hub_download
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


def _read_head_tensors(path: str) -> dict[str, torch.Tensor]:
    """Only the `score.*` tensors: the backbone is loaded by transformers, which handles sharding, dtype and ZeRO-3."""
    from safetensors import safe_open

    head = {}
    for file in _weight_files(path):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if key.startswith("score."):
                    head[key] = f.get_tensor(key)
    return head


def _spec_for(path: str, config_dict: dict, head_tensors: Mapping[str, torch.Tensor]) -> RewardSpec:
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


def _load_backbone(path: str, dtype, attn_implementation: str, device_map=None):
    from transformers import AutoConfig, AutoModel

    _read_config(path)  # a clear error for a missing path before transformers' long one
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except ValueError as exc:
        raise UserError(f"cannot load {path}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise UserError(f"cannot load config of {path}: {str(exc).splitlines()[0]}") from None
    config.use_cache = False
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the score.* / lm_head tensors that the base model skips, as expected
    try:
        backbone = AutoModel.from_pretrained(path, config=config, dtype=resolve_dtype(dtype) or "auto",
                                             attn_implementation=attn_implementation, trust_remote_code=False,
                                             **({"device_map": device_map} if device_map is not None else {}))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load weights of {path}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return backbone


def has_reward_head(path: str) -> bool:
    """True for a reward checkpoint (a `worldpm` block or `score.*` weights), False for a plain pretrained LM."""
    return "worldpm" in _read_config(path) or bool(_read_head_tensors(path))


def build_reward_model(model_cfg: Mapping[str, Any], path: str | None = None, device=None) -> RewardModel:
    """The model a `model=<name>` config (or an explicit checkpoint `path`) describes.

    - `path` / `model.path` holding a reward checkpoint: loaded as it is (its head, readout and tokenizer);
    - `model.path` holding a pretrained LM (e.g. Qwen/Qwen2.5-7B): that backbone with a fresh `model.head`;
    - no path: a random-initialised backbone from `model.arch` (model=tiny), seeded by `model.seed`.
    """
    from worldpm.tokenizer import load_tokenizer

    path = path or model_cfg.get("path")
    tokenizer_spec = model_cfg.get("tokenizer")
    spec = dict(readout=model_cfg.get("readout", "reward_token"), max_length=int(model_cfg.get("max_length", 4096)))
    attn = model_cfg.get("attn_implementation", "sdpa")
    if path:
        if has_reward_head(str(path)):
            model = RewardModel.from_pretrained(str(path), dtype=model_cfg.get("dtype"), attn_implementation=attn)
        else:
            tok = load_tokenizer(tokenizer_spec) if tokenizer_spec else None
            model = RewardModel.from_backbone(str(path), head=model_cfg.get("head", "mlp"), tokenizer=tok,
                                              dtype=model_cfg.get("dtype", "float32"), attn_implementation=attn,
                                              seed=int(model_cfg.get("seed", 0)), **spec)
    else:
        if not model_cfg.get("arch"):
            raise UserError(f"model {model_cfg.get('name')!r} has neither a path nor an arch to build from")
        model = RewardModel.from_config(model_cfg["arch"], load_tokenizer(tokenizer_spec or "tiny"), head=model_cfg.get("head", "mlp"),
                                        dtype=model_cfg.get("dtype", "float32"), attn_implementation=attn,
                                        seed=int(model_cfg.get("seed", 0)), **spec)
    return model.to(device) if device is not None else model
