"""Rewards as callers receive them, from any scorer (in this process or over HTTP): `Scores`, the optional normalisation and
clipping (`RewardTransform`), and the Bradley-Terry probability OpenRLHF reads as a score (`sigmoid`). Pure Python."""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from worldpm.errors import UserError


class Scores(NamedTuple):
    rewards: list[float]
    raw: list[float] | None


class RewardTransform:
    """(r - mean) / std with the checkpoint's stored statistics when `normalize`, then clipping to [-clip, clip] when `clip`."""

    def __init__(self, mean: float | None = None, std: float | None = None, clip: float | None = None):
        if clip is not None and not clip > 0:
            raise UserError(f"clip must be a positive number (rewards are clipped to [-clip, clip]), got {clip!r}")
        if std is not None and not std > 0:
            raise UserError(f"reward_std must be positive to normalise, got {std!r}")
        self.mean, self.std, self.clip = mean, std, clip

    @classmethod
    def from_stats(cls, mean: float | None, std: float | None, normalize: bool, clip: float | None,
                   where: str = "the checkpoint") -> "RewardTransform":
        """The transform for stored statistics `mean`/`std` (None when `where` stores none)."""
        if not normalize:
            return cls(clip=clip)
        if mean is None or std is None:
            raise UserError(f"normalize=true, but {where} stores no reward_mean/reward_std in its worldpm block "
                            f"(config.json); serve without normalisation or add the statistics of a held-out set")
        return cls(float(mean), float(std), clip)

    @classmethod
    def for_model(cls, spec, normalize: bool, clip: float | None, where: str = "the checkpoint") -> "RewardTransform":
        return cls.from_stats(spec.reward_mean, spec.reward_std, normalize, clip, where)

    @property
    def normalizes(self) -> bool:
        return self.mean is not None

    def __call__(self, raw: Sequence[float]) -> list[float]:
        out = []
        for r in raw:
            if self.mean is not None:
                r = (r - self.mean) / self.std
            if self.clip is not None:
                r = min(max(r, -self.clip), self.clip)
            out.append(float(r))
        return out


def sigmoid(x: float) -> float:
    """BT probability that a reply with reward x beats one with reward 0 (the mean reply, when rewards are normalised)."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
