"""RewardBench (allenai/reward-bench, split `filtered`): prompt / chosen / rejected triples in 23 subsets and 4 sections.

Subtasks are the sections (chat, chat_hard, safety, reasoning); their accuracy and BT loss pool the section's pairs. The official
aggregate follows rewardbench's `calculate_scores_per_section`: a section score is the mean of its subsets' accuracies weighted
by `EXAMPLE_COUNTS` (math-prm weighted 984 although it holds 447 pairs, "upweighting to be equal to code"), and the final score
is the mean of the four section scores.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.items import Item
from worldpm.eval.metrics import accuracy_by
from worldpm.eval.benchmarks.sources import need, records_for


HEADLINE = ("sections.*", "final")  # official keys the report shows (dotted, * wildcards)

def section_of(bcfg: Mapping) -> dict[str, str]:
    return {subset: section for section, subsets in bcfg["sections"].items() for subset in subsets}


def load(bcfg: Mapping, name: str) -> list[Item]:
    sections = section_of(bcfg)
    items = []
    for rec in records_for(bcfg, name):
        prompt, chosen, rejected = need(rec, "prompt", str), need(rec, "chosen", str), need(rec, "rejected", str)
        subset = need(rec, "subset", str)
        if subset not in sections:
            raise UserError(f"{rec.where}: unknown RewardBench subset {subset!r} (benchmark.{name}.sections lists {len(sections)} subsets)")
        items.append(Item(subtask=sections[subset], uid=str(rec.data.get("id", len(items))), group=subset, where=rec.where,
                          prompt=[{"role": "user", "content": prompt}], responses=[chosen, rejected], pairs=[(0, 1)]))
    return items


def section_scores(subset_accuracy: Mapping[str, float], sections: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Example-count-weighted mean of the subset accuracies present, per section (rewardbench's calculate_scores_per_section)."""
    scores = {}
    for section, counts in sections.items():
        present = [s for s in counts if s in subset_accuracy]
        if present:
            weight = sum(counts[s] for s in present)
            scores[section] = sum(subset_accuracy[s] * counts[s] for s in present) / weight
    return scores


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    subsets = accuracy_by(items, rewards, "group")
    sections = section_scores({s: v["accuracy"] for s, v in subsets.items()}, bcfg["sections"])
    missing = [s for s in bcfg["sections"] if s not in sections]
    return {"subsets": subsets, "sections": sections, "sections_missing": missing,
            "final": float(np.mean(list(sections.values()))) if sections else None,
            "weights": {s: dict(c) for s, c in bcfg["sections"].items()}}
