"""The Bradley-Terry objective: P(chosen > rejected) = sigmoid(r_c - r_r); loss = -log sigmoid(r_c - r_r), in fp32.

Used by training (with the options) and by evaluation (per-pair losses for test-loss curves and bootstrap CIs), so a
"BT loss" means the same number everywhere. `ranking_losses` is its listwise form for whole threads: a term's winner against
a risk set, -log(exp(r_winner) / sum over the set of exp(r)); a pair is the set {chosen, rejected}, a Plackett-Luce stage the
answers not ranked above the winner.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bt_losses(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair -log sigmoid(r_c - r_r [- margin]), fp32. logsigmoid is exact for large |difference| (no log(0))."""
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    return -F.logsigmoid(diff)


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
            center_coefficient: float = 0.0) -> torch.Tensor:
    """Mean BT loss; `margin` as in Llama-2 / TRL; `center_coefficient` adds TRL's c * mean((r_c + r_r)^2) reward centring."""
    loss = bt_losses(chosen, rejected, margin).mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((chosen.float() + rejected.float()) ** 2).mean()
    return loss


def ranking_losses(rewards: torch.Tensor, winner: torch.Tensor, risk: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-term logsumexp(r[risk]) - r[winner], fp32; `risk` (terms, K) indexes `rewards`, `mask` marks its real entries.
    With a risk set of two this is exactly -log sigmoid(r_winner - r_other)."""
    r = rewards.float()
    sets = r[risk].masked_fill(~mask, float("-inf"))
    return torch.logsumexp(sets, dim=-1) - r[winner]
