"""RMB (Zhou et al., ICLR 2025; github.com/Zhou-Zoey/RMB-Reward-Model-Benchmark): `RMB_dataset/{Pairwise_set,BoN_set}/
{Helpfulness/<category>/<scenario>.json, Harmlessness/<scenario>.json}`, each a JSON list.

- Pairwise records: `conversation_input` (multi-turn, ends with the user), `chosen` and `reject` (note the key) with `answer`.
- BoN records: `bon_best` and `loser_list`; the item counts as correct only if `bon_best` scores above every loser (rule `all`),
  all of its responses scored together.
Subtasks: helpfulness_pairwise, harmlessness_pairwise, helpfulness_bon, harmlessness_bon. BT loss for BoN is over the
(best, loser) pairs. Official: accuracy per subtask pooled over items and, as RMB reports it, averaged over scenarios
(`category_path`), plus the per-scenario accuracies.

Only local files: RMB is distributed as a GitHub repository, so `path` is the RMB_dataset directory (or any folder or .json
file inside it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.items import Item, group_indices
from worldpm.eval.metrics import accuracy_by, accuracy_of, best_of_k_by
from worldpm.eval.benchmarks.sources import DATA_SUFFIXES, Record, data_files, locate, messages, need, read_local

GOALS = ("helpfulness", "harmlessness")


HEADLINE = ("*.accuracy_pooled", "*.accuracy_scenario_mean", "best_of_k.*.end_score")  # official keys the report shows (dotted, * wildcards)

def _goal(rec: Record, category_path: str, file: Path) -> str:
    for part in [*category_path.split("/"), *file.parts]:
        if part.lower() in GOALS:
            return part.lower()
    raise UserError(f"{rec.where}: cannot tell Helpfulness from Harmlessness (category_path {category_path!r})")


def _answer(rec: Record, value, key: str) -> str:
    if not isinstance(value, Mapping) or not isinstance(value.get("answer"), str):
        raise UserError(f"{rec.where}: {key} should be an object with a string 'answer'")
    return value["answer"]


def _scenario(file: Path, root: Path) -> str:
    """The file's path below the dataset directory without its data suffix: RMB's category_path when a record lacks one."""
    rel = str(file.relative_to(root)) if root.is_dir() else file.name
    suffix = next((s for s in sorted(DATA_SUFFIXES, key=len, reverse=True) if rel.endswith(s)), "")
    return rel[: len(rel) - len(suffix)]


def load(bcfg: Mapping, name: str) -> list[Item]:
    where = locate(bcfg.get("path"), name)
    if isinstance(where, str):
        raise UserError(f"benchmark {name}: {where} does not exist (RMB is read from its RMB_dataset directory; it is not on the hub)")
    files = [where] if where.is_file() else data_files(where, name)
    items = []
    for file in files:
        rel = _scenario(file, where)
        for rec in read_local(file, list_of="RMB records"):
            conv = messages(rec, need(rec, "conversation_input", list, "a list of messages"), "conversation_input")
            category_path = rec.data.get("category_path") or rel
            if not isinstance(category_path, str):
                raise UserError(f"{rec.where}: field 'category_path' should be a string")
            goal = _goal(rec, category_path, file)
            if "bon_best" in rec.data:
                best = _answer(rec, rec.data["bon_best"], "bon_best")
                losers = need(rec, "loser_list", list, "a list of answers")
                if not losers:
                    raise UserError(f"{rec.where}: loser_list is empty")
                responses = [best] + [_answer(rec, x, f"loser_list[{j}]") for j, x in enumerate(losers)]
                items.append(Item(subtask=f"{goal}_bon", uid=str(rec.data.get("bon_uid", len(items))), prompt=conv,
                                  responses=responses, pairs=[(0, j) for j in range(1, len(responses))], rule="all",
                                  group=category_path, where=rec.where, correct=[True] + [False] * len(losers)))
            elif "chosen" in rec.data:
                if "reject" not in rec.data:
                    raise UserError(f"{rec.where}: missing field 'reject' (RMB's pairwise key; 'rejected' is not RMB's format)")
                responses = [_answer(rec, rec.data["chosen"], "chosen"), _answer(rec, rec.data["reject"], "reject")]
                items.append(Item(subtask=f"{goal}_pairwise", uid=str(rec.data.get("pair_uid", len(items))), prompt=conv,
                                  responses=responses, pairs=[(0, 1)], group=category_path, where=rec.where))
            else:
                raise UserError(f"{rec.where}: neither a pairwise record (chosen/reject) nor a BoN record (bon_best/loser_list)")
    return items


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    out = {}
    for subtask, idx in sorted(group_indices(items, "subtask").items()):
        part, part_r = [items[i] for i in idx], [rewards[i] for i in idx]
        acc = {s: v["accuracy"] for s, v in accuracy_by(part, part_r, "group").items()}
        out[subtask] = {"accuracy_pooled": accuracy_of(part, part_r),
                        "accuracy_scenario_mean": float(np.mean(list(acc.values()))), "n_scenarios": len(acc), "scenarios": acc}
    out["best_of_k"] = best_of_k_by(items, rewards)  # BoN lists: the chance of picking bon_best among K drawn answers
    return out
