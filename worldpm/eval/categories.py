"""The paper's categories: adversarial, objective, subjective (plus in_distribution for the held-out split).

Each benchmark config maps its subtasks to a category (`categories:`; null leaves a subtask out of the means). A category's
BT loss and accuracy are the unweighted means over its subtasks, as in the paper's per-category curves; their CIs combine the
subtasks' bootstrap replicates (subtasks are resampled independently, so the mean of replicates is a replicate of the mean).
"""
from __future__ import annotations

import logging
import warnings
from typing import Iterable, Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.bootstrap import percentile_ci

log = logging.getLogger("worldpm.eval")
CATEGORIES = ("adversarial", "objective", "subjective")
ALLOWED = (*CATEGORIES, "in_distribution")


def order_categories(present: Iterable[str], all_paper: bool = False) -> list[str]:
    """The paper's categories first, in its order (every one with `all_paper`, else those in `present`), then the rest of
    `present` alphabetically."""
    present = set(present)
    return [c for c in CATEGORIES if all_paper or c in present] + sorted(present - set(CATEGORIES))


def category_of(name: str, bcfg: Mapping, subtask: str) -> str | None:
    mapping = bcfg.get("categories") or {}
    if subtask not in mapping:
        log.warning("benchmark %s: subtask %s has no category (benchmark.%s.categories); it is left out of the category means",
                    name, subtask, name)
        return None
    category = mapping[subtask]
    if category is not None and category not in ALLOWED:
        raise UserError(f"benchmark.{name}.categories.{subtask}={category!r}: choose from {', '.join(ALLOWED)} or null")
    return category


def aggregate(subtasks: Mapping[str, Mapping], replicates: Mapping[str, Mapping[str, np.ndarray]], confidence: float) -> dict:
    """subtasks: {"bench/subtask": result with "category"}; replicates: {"bench/subtask": {"accuracy": r, "bt_loss": r}}."""
    out = {}
    present = {s["category"] for s in subtasks.values() if s.get("category")}
    for category in order_categories(present, all_paper=True):
        members = [k for k, s in subtasks.items() if s.get("category") == category]
        entry = {"bt_loss": None, "accuracy": None, "n_subtasks": len(members), "subtasks": members}
        for metric in ("bt_loss", "accuracy"):
            values = [subtasks[k][metric] for k in members if subtasks[k][metric] is not None]
            if values:
                entry[metric] = float(np.mean(values))
                reps = np.array([replicates[k][metric] for k in members if subtasks[k][metric] is not None])
                with warnings.catch_warnings():  # a replicate where every member is undefined stays nan and is dropped
                    warnings.simplefilter("ignore", RuntimeWarning)
                    entry[f"{metric}_ci"] = percentile_ci(np.nanmean(reps, axis=0), confidence)
            else:
                entry[f"{metric}_ci"] = None
        out[category] = entry
    return out
