"""`RewardModel`: a transformers backbone (via the Auto classes) plus a scalar reward head, read at the reward token.

The one reward reader shared by training, evaluation and serving: `encode` (the reward-token contract of chat_format.py),
`forward` (rewards read at given positions of padded or packed rows), `score_ids` (length-sorted padded batches). What a
checkpoint directory holds and how it is read and written is checkpoint.py; which model a config names is loader.py.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from worldpm.errors import UserError
from worldpm.model.chat_format import PAD_TOKEN, ChatEncoder, EncodedBatch, responses_conversations
from worldpm.model.checkpoint import (HEADS, RewardSpec, load_backbone, read_config, read_head_tensors, save_checkpoint, spec_for,
                                      torch_dtype)
from worldpm.model.padding import length_sorted_batches, pad_batch
from worldpm.model.segments import best_fit, pack, segment_attention, segment_inputs, shared_prompt_groups
from worldpm.model.tokenizer import load_tokenizer


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


def _head_dtype(backbone) -> torch.dtype:
    """The head's dtype: the backbone's, or its compute dtype when the backbone is quantised (QLoRA: int weights)."""
    qcfg = getattr(backbone.config, "quantization_config", None)
    compute = getattr(qcfg, "bnb_4bit_compute_dtype", None) if qcfg is not None else None
    if qcfg is not None:
        return compute if isinstance(compute, torch.dtype) else torch.bfloat16
    return backbone.dtype


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

    @property
    def encoder(self) -> ChatEncoder:
        """How this model turns conversations and rendered texts into token ids (picklable: training's tokenising workers and
        the server's threads encode with it exactly as `score` does)."""
        return ChatEncoder(self.tokenizer, int(self.spec.max_length), self.spec.system_prompt)

    def encode(self, conversations, max_length: int | None = None) -> EncodedBatch:
        """Token ids of conversations (lists of {role, content}), truncated to `max_length` keeping the reward token;
        `.truncated` counts the ones that were cut."""
        return self.encoder.conversations(conversations, max_length)

    def encode_texts(self, texts: Sequence[str], max_length: int | None = None) -> EncodedBatch:
        """Token ids of already-rendered ChatML texts (OpenRLHF's protocol); the reward token is appended when absent."""
        return self.encoder.texts(texts, max_length)

    @torch.inference_mode()
    def score_ids(self, sequences: Sequence[Sequence[int]], max_tokens: int = 16384, max_batch_size: int = 64,
                  max_padding: float | None = None, progress: Callable[[int], Any] | None = None,
                  prompts: Sequence[Hashable | None] | None = None, shared_prompt: bool = True) -> list[float]:
        """Rewards for token-id sequences (each ending in the reward token), in input order.

        Sequences of one prompt (equal `prompts` keys; default: the `.prompts` of an EncodedBatch) are scored in shared-prompt
        rows, the prompt encoded once for all of them (worldpm.model.segments; the rewards each gets alone), at most
        `max_tokens` tokens a row. The rest go in length-sorted, right-padded batches of at most `max_tokens` padded tokens,
        `max_batch_size` rows and (when given) a `max_padding` share of padding (worldpm.model.padding.length_sorted_batches).
        `shared_prompt=False` scores every sequence in padded batches. `progress(n_tokens)` after each forward, counting each
        sequence's whole length.
        """
        was_training = self.training
        self.eval()
        lengths = [len(s) for s in sequences]
        rewards: list[float] = [0.0] * len(sequences)
        keys = (prompts if prompts is not None else getattr(sequences, "prompts", None)) if shared_prompt else None
        groups = shared_prompt_groups(sequences, keys, max_tokens) if keys else []
        grouped = {i for members, _ in groups for i in members}
        alone = [i for i in range(len(sequences)) if i not in grouped]
        dev = self.device
        try:
            for batch in length_sorted_batches([lengths[i] for i in alone], max_tokens, max_batch_size, max_padding):
                batch = [alone[i] for i in batch]
                ids, mask, pos, cols = pad_batch([sequences[i] for i in batch], self.pad_id, side="right")
                out = self(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                           reward_index=(torch.arange(len(batch)), cols))
                for i, r in zip(batch, out.tolist()):
                    rewards[i] = r
                if progress is not None:
                    progress(sum(lengths[i] for i in batch))
            if groups:
                with segment_attention(self) as (attention, implementation):
                    dtype = next(self.parameters()).dtype
                    for row in best_fit([g.cost for _, g in groups], max_tokens):
                        ids, positions, segments, reward_index = pack([groups[j][1] for j in row])
                        out = self(**segment_inputs(torch.tensor([ids]), torch.tensor([positions]), segments,
                                                    torch.tensor(reward_index), attention, implementation, dtype, dev))
                        members = [i for j in row for i in groups[j][0]]
                        for i, r in zip(members, out.tolist()):
                            rewards[i] = r
                        if progress is not None:
                            progress(sum(lengths[i] for i in members))
        finally:
            self.train(was_training)
        return rewards

    def score(self, conversations, max_length: int | None = None, **batching) -> list[float]:
        """Rewards for conversations (lists of {role, content} ending with the assistant reply), in input order; the
        conversations that share a prompt have it encoded once (`score_ids`)."""
        return self.score_ids(self.encode(conversations, max_length), **batching)

    def score_responses(self, prompt, responses: Sequence[str], max_length: int | None = None, **batching) -> list[float]:
        """Rewards for N responses to one prompt (a list of {role, content} messages, or a user message as a string), the
        prompt encoded once: best-of-N selection, RLHF rollouts."""
        return self.score(responses_conversations(prompt, responses), max_length, **batching)

    def score_texts(self, texts: Sequence[str], max_length: int | None = None, **batching) -> list[float]:
        """Rewards for already-rendered ChatML texts (OpenRLHF's protocol); the reward token is appended when absent."""
        return self.score_ids(self.encode_texts(texts, max_length), **batching)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, arch: Mapping[str, Any], tokenizer, head: str = "mlp", dtype="float32", attn_implementation: str = "sdpa",
                    seed: int = 0, device: str | torch.device | None = None, **spec) -> "RewardModel":
        """A randomly initialised backbone from an architecture dict (`model_type` + config fields), e.g. `model=tiny`."""
        arch = dict(arch)
        model_type = arch.pop("model_type", None)
        try:
            config = AutoConfig.for_model(model_type, **arch)
        except (ValueError, KeyError) as exc:
            raise UserError(f"model type {model_type!r} is not known to this transformers version: {str(exc).splitlines()[0]}") from None
        config._attn_implementation = attn_implementation
        torch.manual_seed(seed)
        ctx = torch.device(device) if device is not None else contextlib.nullcontext()
        with ctx:
            backbone = AutoModel.from_config(config, dtype=torch_dtype(dtype), attn_implementation=attn_implementation)
            model = cls(backbone, tokenizer, RewardSpec(head=head, **spec))
        if str(device) != "meta":
            init_head(model.head, config.initializer_range)
            model.head.to(torch_dtype(dtype) or torch.float32)
        return model

    @classmethod
    def from_backbone(cls, path: str, head: str = "mlp", tokenizer=None, dtype="float32", attn_implementation: str = "sdpa",
                      seed: int = 0, device_map=None, quantization_config=None, **spec) -> "RewardModel":
        """A pretrained language model (hub id or local directory, e.g. `Qwen/Qwen2.5-7B`) with a freshly initialised head."""
        backbone = load_backbone(path, dtype, attn_implementation, device_map=device_map, quantization_config=quantization_config)
        torch.manual_seed(seed)
        model = cls(backbone, tokenizer or load_tokenizer(path), RewardSpec(head=head, **spec))
        init_head(model.head, getattr(backbone.config, "initializer_range", 0.02))
        model.head.to(_head_dtype(backbone))
        if device_map is not None:
            model.head.to(list(backbone.parameters())[-1].device)
        return model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype=None, attn_implementation: str = "sdpa", tokenizer=None,
                        device: str | torch.device | None = None, device_map=None, quantization_config=None) -> "RewardModel":
        """Load a reward checkpoint: ours (either head), or a released WorldPM directory as it is.

        `device_map="auto"` spreads a large backbone over the visible GPUs (transformers/accelerate); the head follows the last layer.
        """
        path = str(path)
        config_dict = read_config(path)
        head_tensors = read_head_tensors(path)
        spec = spec_for(path, config_dict, head_tensors)
        backbone = load_backbone(path, dtype, attn_implementation, device_map=device_map, quantization_config=quantization_config)
        model = cls(backbone, tokenizer or load_tokenizer(path), spec)
        prefix = "score."
        state = {k[len(prefix):]: v for k, v in head_tensors.items()}
        model.head.to(_head_dtype(backbone))
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
