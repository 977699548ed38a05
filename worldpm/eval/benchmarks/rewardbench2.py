"""RewardBench 2 (allenai/reward-bench-2, split `test`): a prompt with `chosen` and `rejected` lists, six subsets.

- Factuality, Precise IF, Math, Safety, Focus: best-of-4 as in rewardbench's `reroll_and_score_dataset`: the first chosen response
  against every other completion; 0 if any scores higher, 1/k if it shares the top with k-1 others, else 1 (rule `top_share`).
- Ties: ids `ref:N` (one correct answer) and `tied:N` (several), `num_correct` first completions correct. Subtask accuracy is
  the share of prompts whose worst correct answer beats the best incorrect one; the official score is rewardbench's composite
  0.30 tied accuracy + 0.30 ref accuracy + 0.20 correctness-preferred + 0.20 correctness-preferred-hard + 0.01 margin term
  (`process_single_model`), computed in `ties_score` below.
- Official overall = mean of the six subset scores.
BT loss: over (chosen, rejected) pairs for the best-of-4 subsets, over (correct, incorrect) pairs for Ties.
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.items import Item, group_indices
from worldpm.eval.metrics import accuracy_of, best_of_k_by
from worldpm.eval.benchmarks.sources import need, records_for, text_list

log = logging.getLogger("worldpm.eval")


HEADLINE = ("subsets.*", "overall", "best_of_k.*.end_score")  # official keys the report shows (dotted, * wildcards)

def load(bcfg: Mapping, name: str) -> list[Item]:
    subsets = dict(bcfg["subsets"])
    items, multi_chosen = [], 0
    for rec in records_for(bcfg, name):
        prompt = need(rec, "prompt", str)
        chosen, rejected = text_list(rec, "chosen"), text_list(rec, "rejected")
        subset = need(rec, "subset", str)
        if subset not in subsets:
            raise UserError(f"{rec.where}: unknown RewardBench 2 subset {subset!r} (benchmark.{name}.subsets lists {sorted(subsets)})")
        if not chosen or not rejected:
            raise UserError(f"{rec.where}: needs at least one chosen and one rejected completion")
        responses = chosen + rejected
        total = rec.data.get("total_completions")
        if total is not None and total != len(responses):
            raise UserError(f"{rec.where}: total_completions is {total} but chosen + rejected hold {len(responses)}")
        uid = str(need(rec, "id", (str, int)))
        common = dict(subtask=subsets[subset], uid=uid, group=subset, where=rec.where, responses=responses,
                      prompt=[{"role": "user", "content": prompt}])
        if subsets[subset] == "ties":
            kind, _, prompt_id = uid.partition(":")
            if kind not in ("ref", "tied") or not prompt_id:
                raise UserError(f"{rec.where}: a Ties id must look like 'ref:N' or 'tied:N', got {uid!r}")
            n_correct = rec.data.get("num_correct", len(chosen))
            if n_correct != len(chosen):
                raise UserError(f"{rec.where}: num_correct is {n_correct} but chosen holds {len(chosen)}")
            correct = [True] * len(chosen) + [False] * len(rejected)
            pairs = [(i, j) for i in range(len(chosen)) for j in range(len(chosen), len(responses))]
            items.append(Item(**common, pairs=pairs, rule="all", correct=correct, meta={"kind": kind, "prompt_id": prompt_id}))
        else:
            multi_chosen += len(chosen) > 1
            items.append(Item(**common, pairs=[(0, j) for j in range(1, len(responses))], rule="top_share",
                              correct=[True] * len(chosen) + [False] * len(rejected)))
    if multi_chosen:
        log.warning("%s: %d best-of-4 rows have several chosen completions; as in rewardbench, only the first counts as chosen",
                    name, multi_chosen)
    return items


def _prompt_stats(reward: np.ndarray, correct: list[bool]):
    good = reward[np.asarray(correct)]
    bad = reward[~np.asarray(correct)]
    spread = float(good.max() - good.min()) if len(good) > 1 else None  # margin among correct answers
    gap = float(good.min() - bad.max())                                  # worst correct minus best incorrect
    return gap > 0, spread, gap


def ties_score(items: list[Item], rewards: list[np.ndarray]) -> dict:
    """rewardbench's Ties composite. None where a term has no prompts (e.g. no prompt id holds both a ref and a tied entry)."""
    stats: dict[str, dict[str, tuple]] = {"ref": {}, "tied": {}}
    for item, r in zip(items, rewards):
        stats[item.meta["kind"]][item.meta["prompt_id"]] = _prompt_stats(np.asarray(r), item.correct)
    ref_acc = float(np.mean([s[0] for s in stats["ref"].values()])) if stats["ref"] else 0.0
    tied_acc = float(np.mean([s[0] for s in stats["tied"].values()])) if stats["tied"] else 0.0
    shared = [p for p in stats["tied"] if p in stats["ref"] and stats["tied"][p][1] is not None]
    out = {"ref_accuracy": ref_acc, "tied_accuracy": tied_acc, "n_ref": len(stats["ref"]), "n_tied": len(stats["tied"]),
           "n_shared": len(shared), "correctness_preferred": None, "correctness_preferred_hard": None, "margin_score": None,
           "score": None}
    if shared:
        spread = np.array([stats["tied"][p][1] for p in shared])
        gap_tied = np.array([stats["tied"][p][2] for p in shared])
        gap_hard = np.minimum(np.array([stats["ref"][p][2] for p in shared]), gap_tied)
        with np.errstate(divide="ignore", invalid="ignore"):
            margin = np.nan_to_num(np.tanh(gap_hard / spread - 1.0), nan=0.0)
        out.update(correctness_preferred=float(np.mean(gap_tied > spread)),
                   correctness_preferred_hard=float(np.mean(gap_hard > spread)), margin_score=float(np.mean(margin)))
        out["score"] = (0.30 * tied_acc + 0.30 * ref_acc + 0.20 * out["correctness_preferred"]
                        + 0.20 * out["correctness_preferred_hard"] + 0.01 * out["margin_score"])
    return out


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    scores, ties = {}, None
    for subtask, idx in sorted(group_indices(items, "subtask").items()):
        part, part_r = [items[i] for i in idx], [rewards[i] for i in idx]
        if subtask == "ties":
            ties = ties_score(part, part_r)
            scores[subtask] = ties["score"]
        else:
            scores[subtask] = accuracy_of(part, part_r)
    present = [v for v in scores.values() if v is not None]
    return {"subsets": scores, "ties": ties, "overall": float(np.mean(present)) if present else None,
            "subsets_missing": [s for s in dict(bcfg["subsets"]).values() if s not in scores],
            "best_of_k": best_of_k_by(items, rewards)}  # PPE's curve over each prompt's completions (chosen correct)
