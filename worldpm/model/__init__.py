"""The reward reader shared by every part of worldpm: `RewardModel` (backbone + reward head, read at the reward token), the
checkpoint contract, the one loader (`load_reward_model`), the chat format and reward index, tokenizers, the Bradley-Terry loss
and its listwise form, padding of scored batches, and rows of segments in which a prompt is stored once for all its replies
(segments.py). Imports nothing from data, train, eval or serve.
"""
__all__ = ["RewardModel", "RewardSpec", "load_reward_model"]


def __getattr__(name):  # lazy: `worldpm.model.chat_format` and friends stay importable without loading torch
    if name == "RewardModel":
        from worldpm.model.reward_model import RewardModel

        return RewardModel
    if name == "RewardSpec":
        from worldpm.model.checkpoint import RewardSpec

        return RewardSpec
    if name == "load_reward_model":
        from worldpm.model.loader import load_reward_model

        return load_reward_model
    raise AttributeError(f"module 'worldpm.model' has no attribute {name!r}")
