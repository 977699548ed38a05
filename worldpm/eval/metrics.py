"""Metrics on rewards, independent of the model: per-item accuracy units and BT losses, best-of-K curves, ROC-AUC.

BT loss is `worldpm.model.bt_loss.bt_losses` (the one BT loss, shared with training). Accuracy counts a tie as wrong, except where a
benchmark's official rule says otherwise (RewardBench 2's 1/k share of a k-way tie at the top; see items.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from worldpm.eval.items import Item, group_indices
from worldpm.model.bt_loss import bt_losses


@dataclass
class ItemStats:
    """Per-item sums, so that pooled means and item-level (cluster) bootstrap resampling are both ratios of sums."""

    acc_sum: np.ndarray   # units won (fractional under top_share)
    acc_n: np.ndarray     # accuracy units: pairs (rule `pair`) or 1 per item with pairs (rules `all`, `top_share`)
    loss_sum: np.ndarray  # sum of BT losses over the item's pairs
    loss_n: np.ndarray    # number of pairs

    @property
    def accuracy(self) -> float | None:
        n = self.acc_n.sum()
        return float(self.acc_sum.sum() / n) if n else None

    @property
    def bt_loss(self) -> float | None:
        n = self.loss_n.sum()
        return float(self.loss_sum.sum() / n) if n else None


def pair_rewards(items: Sequence[Item], rewards: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item index, preferred reward, dispreferred reward) for every pair of every item, flattened."""
    idx, better, worse = [], [], []
    for i, (item, r) in enumerate(zip(items, rewards)):
        for a, b in item.pairs:
            idx.append(i)
            better.append(r[a])
            worse.append(r[b])
    return np.asarray(idx, dtype=np.int64), np.asarray(better, dtype=np.float64), np.asarray(worse, dtype=np.float64)


def bt_pair_losses(better: np.ndarray, worse: np.ndarray) -> np.ndarray:
    if len(better) == 0:
        return np.zeros(0)
    return bt_losses(torch.as_tensor(better), torch.as_tensor(worse)).double().numpy()


def _accuracy_units(items: Sequence[Item], idx: np.ndarray, better: np.ndarray, worse: np.ndarray) -> tuple[np.ndarray, ...]:
    """(units won, accuracy units, pairs) per item, under each item's rule."""
    n = len(items)
    pairs_n = np.bincount(idx, minlength=n).astype(np.float64)
    won = np.bincount(idx, weights=(better > worse).astype(np.float64), minlength=n)
    tied = np.bincount(idx, weights=(better == worse).astype(np.float64), minlength=n)
    lost = pairs_n - won - tied
    has_pairs = (pairs_n > 0).astype(np.float64)
    acc_sum, acc_n = np.zeros(n), np.zeros(n)
    for i, item in enumerate(items):
        if item.rule == "pair":
            acc_sum[i], acc_n[i] = won[i], pairs_n[i]
        elif item.rule == "all":
            acc_sum[i], acc_n[i] = float(pairs_n[i] > 0 and won[i] == pairs_n[i]), has_pairs[i]
        else:  # top_share: the preferred response shares the top with the rivals it ties
            acc_sum[i], acc_n[i] = (1.0 / (1.0 + tied[i]) if pairs_n[i] > 0 and lost[i] == 0 else 0.0), has_pairs[i]
    return acc_sum, acc_n, pairs_n


def item_stats(items: Sequence[Item], rewards: Sequence[np.ndarray]) -> ItemStats:
    idx, better, worse = pair_rewards(items, rewards)
    acc_sum, acc_n, pairs_n = _accuracy_units(items, idx, better, worse)
    losses = bt_pair_losses(better, worse)
    return ItemStats(acc_sum, acc_n, np.bincount(idx, weights=losses, minlength=len(items)), pairs_n)


def accuracy_of(items: Sequence[Item], rewards: Sequence[np.ndarray], idx: Sequence[int] | None = None) -> float | None:
    """Accuracy over the items at `idx` (a slice of a benchmark: a subset, a scenario, a flag; None: all items). Equal to
    `item_stats(...).accuracy` without computing BT losses."""
    if idx is not None:
        items, rewards = [items[i] for i in idx], [rewards[i] for i in idx]
    acc_sum, acc_n, _ = _accuracy_units(items, *pair_rewards(items, rewards))
    n = acc_n.sum()
    return float(acc_sum.sum() / n) if n else None


def accuracy_by(items: Sequence[Item], rewards: Sequence[np.ndarray], key) -> dict[str, dict]:
    """{group: {"n": items, "accuracy": ...}} in sorted group order; `key` as in `items.group_indices`."""
    return {g: {"n": len(ix), "accuracy": accuracy_of(items, rewards, ix)} for g, ix in sorted(group_indices(items, key).items())}


# ---------------------------------------------------------------------- best-of-K
def best_of_k(rewards: Sequence[float], correct: Sequence[float], ks: Sequence[int]) -> np.ndarray:
    """Expected value (`correct`: correctness, or any value such as a gold reward) of the reward-argmax among K responses drawn
    uniformly without replacement, for each K; exact.

    A tie at the top is broken uniformly at random. With responses grouped by equal reward, a group G (size g, with `a`
    responses strictly above it) supplies the pick iff no response above it is drawn and at least one of G is, which has
    probability [C(N-a, K) - C(N-a-g, K)] / C(N, K); given that, the pick is uniform over G, so its value is G's mean.
    C(N-a, K) / C(N, K) is the product over i < a of (N-K-i) / (N-i), taken for every a and K at once. K > N gives nan.
    """
    r = np.asarray(rewards, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    n = len(r)
    ks = np.asarray(ks, dtype=np.int64)
    values, inverse = np.unique(-r, return_inverse=True)  # ascending -r: groups from the highest reward down
    size = np.bincount(inverse, minlength=len(values))
    mean = np.bincount(inverse, weights=c, minlength=len(values)) / size
    above = np.cumsum(size) - size
    a = np.arange(n)[:, None]
    factors = np.clip(n - ks[None, :] - a, 0, None) / (n - a)  # (n, K)
    survive = np.vstack([np.ones((1, len(ks))), np.cumprod(factors, axis=0)])  # C(N-a, K) / C(N, K) for a = 0..N
    out = mean @ (survive[above] - survive[above + size])
    return np.where((ks >= 1) & (ks <= n), out, np.nan)


def oracle_best_of_k(correct: Sequence[bool], ks: Sequence[int]) -> np.ndarray:
    """The ceiling: probability that K uniformly drawn responses contain at least one correct one."""
    c = np.asarray(correct, dtype=bool)
    n, wrong = len(c), int((~c).sum())
    return np.array([1.0 - math.comb(wrong, k) / math.comb(n, k) if 1 <= k <= n else np.nan for k in ks])


def best_of_k_curve(items: Sequence[Item], rewards: Sequence[np.ndarray]) -> dict | None:
    """PPE's best-of-K curve over items with per-response correctness: for K = 1..the most responses of an item, the
    expected correctness of the reward-argmax among K drawn responses (`best_of_k`), averaged over the items; the oracle (some
    drawn response correct), the end score (K = max), its maximum and the random pick (K = 1). None without such items."""
    part = [(it, np.asarray(r)) for it, r in zip(items, rewards) if it.correct is not None and len(it.responses) > 1]
    if not part:
        return None
    ks = list(range(1, max(len(it.responses) for it, _ in part) + 1))
    curve = np.nanmean([best_of_k(r, it.correct, ks) for it, r in part], axis=0)
    oracle = np.nanmean([oracle_best_of_k(it.correct, ks) for it, _ in part], axis=0)
    return {"n_prompts": len(part), "k": ks, "expected_correctness": curve.tolist(), "oracle": oracle.tolist(),
            "end_score": float(curve[-1]), "max_achieved": float(np.nanmax(curve)), "random_pick": float(curve[0])}


def best_of_k_by(items: Sequence[Item], rewards: Sequence[np.ndarray], key: str = "subtask") -> dict[str, dict]:
    """`best_of_k_curve` per group (`items.group_indices`) that has items with correctness."""
    out = {}
    for g, idx in group_indices(items, key).items():
        curve = best_of_k_curve([items[i] for i in idx], [rewards[i] for i in idx])
        if curve is not None:
            out[g] = curve
    return out


# ---------------------------------------------------------------------- ROC-AUC
def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting 1/2 (Mann-Whitney U / (n+ n-))."""
    from scipy.stats import mannwhitneyu

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
