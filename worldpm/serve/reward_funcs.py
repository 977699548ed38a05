"""Reward functions for RLHF trainers, backed by a worldpm scorer (a model in this process, or a running `worldpm serve`).

TRL (`GRPOTrainer(reward_funcs=...)`, also RLOOTrainer): the trainer calls `f(prompts=..., completions=...,
completion_ids=..., trainer_state=..., **dataset_columns)` and wants one float per completion; it names the function in its
logs by `__name__`. Prompts and completions are strings (standard format) or lists of {role, content} messages
(conversational format: the completion is `[{"role": "assistant", "content": ...}]`)::

    from worldpm.serve.reward_funcs import trl_reward_func
    trainer = GRPOTrainer(model=..., reward_funcs=trl_reward_func(model_path="runs/main/final"), ...)
    # or against a server: trl_reward_func(url="http://127.0.0.1:5000", api_key=...)

OpenRLHF (a local reward function file, `--reward.remote_url /path/to/file.py`): OpenRLHF loads `reward_func` from the file
and calls `reward_func(queries, prompts, labels)` (one sample per call, from several threads), where `queries` are the decoded
prompt+response texts; it wants `{"rewards": tensor, "scores": tensor in [0, 1], "extra_logs": {name: tensor}}`. This file
itself is such a file: its module-level `reward_func` builds its scorer on first use from the environment —
`WORLDPM_REWARD_URL` (a running `worldpm serve`) or `WORLDPM_MODEL_PATH` (load the model in the trainer's process), plus
`WORLDPM_API_KEY`, `WORLDPM_NORMALIZE=1`, `WORLDPM_CLIP`, `WORLDPM_DEVICE`.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Mapping, Sequence

from worldpm.errors import UserError
from worldpm.serve.scores import sigmoid

CHATML_MARKER = "<|im_start|>"


def _content(content: Any) -> str:
    """Message content as text: a string, or the text parts of a multimodal list ([{"type": "text", "text": ...}, ...])."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text")
    raise UserError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def _messages(messages: Sequence[Mapping], where: str) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, Mapping) and "role" in m for m in messages):
        raise UserError(f"{where}: expected a list of {{role, content}} messages")
    return [{"role": m["role"], "content": _content(m.get("content"))} for m in messages]


def trl_conversation(prompt, completion, where: str = "sample") -> list[dict] | str:
    """What TRL hands a reward function, as something a scorer takes: a conversation, or (a ChatML-rendered prompt) a text.

    - conversational: prompt messages + the completion's messages. When the prompt ends with an assistant message (a prefix
      the model continued), TRL's completion already starts with that prefix, so the prompt's last message is dropped.
    - standard, prompt already rendered in ChatML: the text prompt + completion, scored as given (OpenRLHF-style).
    - standard, plain text: one user turn (the prompt) and the assistant's reply (the completion).
    """
    if isinstance(completion, (list, tuple)):
        prompt_msgs = _messages(prompt, f"{where} prompt") if prompt else []
        reply = _messages(completion, f"{where} completion")
        if prompt_msgs and prompt_msgs[-1]["role"] == "assistant" and reply and reply[0]["role"] == "assistant":
            prompt_msgs = prompt_msgs[:-1]
        return prompt_msgs + reply
    if not isinstance(completion, str) or not isinstance(prompt, str):
        raise UserError(f"{where}: prompt and completion must both be strings (standard format) or message lists "
                        f"(conversational format), got {type(prompt).__name__} and {type(completion).__name__}")
    if CHATML_MARKER in prompt:
        return prompt + completion
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


class TRLRewardFunc:
    """`reward_funcs=` for TRL's GRPOTrainer / RLOOTrainer: (prompts, completions, **kwargs) -> list[float]."""

    def __init__(self, scorer, name: str = "worldpm_reward"):
        self.scorer = scorer
        self.__name__ = name  # TRL logs each reward function under its __name__

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        if completions is None:
            raise UserError("the reward function needs completions=")
        prompts = list(prompts) if prompts is not None else [""] * len(completions)
        if len(prompts) != len(completions):
            raise UserError(f"{len(prompts)} prompts but {len(completions)} completions")
        items = [trl_conversation(p, c, where=f"sample {i}") for i, (p, c) in enumerate(zip(prompts, completions))]
        rewards: list[float] = [0.0] * len(items)
        texts = [i for i, x in enumerate(items) if isinstance(x, str)]
        convs = [i for i, x in enumerate(items) if not isinstance(x, str)]
        if texts:
            for i, r in zip(texts, self.scorer.score_texts([items[i] for i in texts]).rewards):
                rewards[i] = r
        if convs:
            for i, r in zip(convs, self.scorer.score_conversations([items[i] for i in convs]).rewards):
                rewards[i] = r
        return rewards

    def __repr__(self) -> str:
        return f"TRLRewardFunc({self.__name__}, {type(self.scorer).__name__})"


class OpenRLHFRewardFunc:
    """OpenRLHF's local `reward_func(queries, prompts, labels)` -> {"rewards", "scores", "extra_logs"} (tensors).

    `scores` (OpenRLHF uses them for dynamic filtering, in [0, 1]) are sigmoid(reward): the Bradley-Terry probability that the
    response beats one of reward 0 (the average response, when rewards are normalised). `extra_logs.raw_reward` is the model's
    reward before normalisation and clipping. The same numbers as `POST /get_reward` of `worldpm serve`.
    """

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(self, queries, prompts=None, labels=None, **kwargs) -> dict:
        import torch

        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise UserError("queries must be a list of strings (decoded prompt+response texts)")
        scored = self.scorer.score_texts(list(queries))
        rewards = torch.tensor(scored.rewards, dtype=torch.float32)
        raw = scored.raw if scored.raw is not None else scored.rewards
        return {"rewards": rewards,
                "scores": torch.tensor([sigmoid(r) for r in scored.rewards], dtype=torch.float32),
                "extra_logs": {"raw_reward": torch.tensor(raw, dtype=torch.float32)}}


def make_scorer(model_path: str | None = None, url: str | None = None, api_key: str | None = None, **options):
    """A LocalScorer for `model_path` (a checkpoint directory, or an already-loaded RewardModel) or a RemoteScorer for `url`."""
    if (model_path is None) == (url is None):
        raise UserError("give exactly one of model_path (score in this process) or url (score with a running worldpm serve)")
    if url is not None:
        from worldpm.serve.client import RemoteScorer

        return RemoteScorer(url, api_key=api_key, **options)
    from worldpm.serve.scorers import LocalScorer  # torch: only for scoring in this process

    if hasattr(model_path, "score_ids"):
        return LocalScorer(model_path, **options)
    return LocalScorer.from_pretrained(str(model_path), **options)


def trl_reward_func(scorer=None, *, model_path=None, url: str | None = None, api_key: str | None = None,
                    name: str = "worldpm_reward", **options) -> TRLRewardFunc:
    """A TRL reward function scoring with `scorer`, or with a model loaded from `model_path`, or with the server at `url`."""
    return TRLRewardFunc(scorer or make_scorer(model_path=model_path, url=url, api_key=api_key, **options), name=name)


def openrlhf_reward_func(scorer=None, *, model_path=None, url: str | None = None, api_key: str | None = None,
                         **options) -> OpenRLHFRewardFunc:
    """An OpenRLHF local reward function scoring with `scorer`, a model loaded from `model_path`, or the server at `url`."""
    return OpenRLHFRewardFunc(scorer or make_scorer(model_path=model_path, url=url, api_key=api_key, **options))


# ---------------------------------------------------------------------- OpenRLHF's file hook
_from_env: OpenRLHFRewardFunc | None = None
_from_env_lock = threading.Lock()


def _scorer_from_env():
    url, path = os.environ.get("WORLDPM_REWARD_URL"), os.environ.get("WORLDPM_MODEL_PATH")
    if bool(url) == bool(path):
        raise UserError("set exactly one of WORLDPM_REWARD_URL (a running worldpm serve) or WORLDPM_MODEL_PATH (a checkpoint)")
    if url:
        return make_scorer(url=url, api_key=os.environ.get("WORLDPM_API_KEY") or None)
    clip = os.environ.get("WORLDPM_CLIP")
    return make_scorer(model_path=path, device=os.environ.get("WORLDPM_DEVICE", "auto"),
                       normalize=os.environ.get("WORLDPM_NORMALIZE", "0").lower() in ("1", "true", "yes"),
                       clip=float(clip) if clip else None)


def reward_func(queries, prompts=None, labels=None, **kwargs) -> dict:
    """OpenRLHF's hook (`--reward.remote_url <this file>`), configured by WORLDPM_* environment variables (module docstring)."""
    global _from_env
    if _from_env is None:
        with _from_env_lock:
            if _from_env is None:
                _from_env = OpenRLHFRewardFunc(_scorer_from_env())
    return _from_env(queries, prompts, labels, **kwargs)
