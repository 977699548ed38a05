"""A micro-batch's loss, from its rewards and the index tensors collation laid out (worldpm.data.packing.MicroBatch).

`rewards` are the micro-batch's own rewards followed by the `external` ones (other parts of a split thread, held fixed).
The loss is a weighted *sum* over the micro-batch's terms; the recipe divides by the step's total weight (StepPlan.weight), so
a step's gradient is that of the weighted mean over all its terms whatever the micro-batches and ranks:

- `pairs`: -log sigmoid(r_c - r_r [- margin]) per sampled pair, weight 1, plus TRL's centring c * (r_c + r_r)^2;
- `listwise`: worldpm.model.bt_loss.ranking_losses per term times its weight (worldpm.data.threads), plus the centring
  c * weight * (r_winner + r_other)^2 for Bradley-Terry terms.
Statistics count each term and pair once: a split thread's in its first part (`counted`).
"""
from __future__ import annotations

import torch

from worldpm.data.packing import MicroBatch
from worldpm.data.threads import Objective
from worldpm.model.bt_loss import bt_losses, ranking_losses


def sampled_pairs(rewards: torch.Tensor, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards of the sampled pairs counted in this micro-batch (the metrics' pairs)."""
    rc, rr = rewards[batch.chosen.to(rewards.device)], rewards[batch.rejected.to(rewards.device)]
    if batch.counted is not None:
        counted = batch.counted.to(rewards.device)
        rc, rr = rc[counted], rr[counted]
    return rc, rr


def batch_loss(rewards: torch.Tensor, batch: MicroBatch, objective: Objective,
               center: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the weighted loss sum the gradient is taken of, the part of it counted in this micro-batch's statistics)."""
    dev = rewards.device
    if objective.name == "pairs":
        rc, rr = rewards[batch.chosen.to(dev)], rewards[batch.rejected.to(dev)]
        terms = bt_losses(rc, rr, batch.margin.to(dev) if batch.margin is not None else None)
        if center:
            terms = terms + center * (rc.float() + rr.float()) ** 2
        counted = batch.counted
    else:
        t = batch.terms
        risk, mask = t.risk.to(dev), t.mask.to(dev)
        terms = ranking_losses(rewards, t.winner.to(dev), risk, mask)
        if center:  # Bradley-Terry terms only (prepare.validate refuses centring with Plackett-Luce)
            terms = terms + center * rewards.float()[risk].masked_fill(~mask, 0.0).sum(-1) ** 2
        terms = terms * t.weight.to(dev)
        counted = t.counted
    loss = terms.sum()
    return loss, (loss if counted is None else terms[counted.to(dev)].sum())
