"""HelpSteer2-Preference (nvidia/HelpSteer2, `preference/preference.jsonl.gz`, CC-BY-4.0).

Fields `split`, `prompt`, `response_1`, `response_2`, `preference_strength` (-3..3): negative means response_1 is better,
positive response_2; 0 is a tie, excluded and counted. `record_split` keeps the rows of one split (`val`, WorldPM's choice of the
validation pairs; null keeps all). Multi-turn prompts mark turns with `<extra_id_1>User` / `<extra_id_1>Assistant` lines
(HelpSteer2's format, [M] from the data; a prompt without the marker is one user turn).
One subtask, `helpsteer2`. Official: accuracy, and per |strength|.
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from data_prep.preference_sets import conversation_hs2 as conversation
from worldpm.errors import UserError
from worldpm.eval.items import Item
from worldpm.eval.metrics import accuracy_by, accuracy_of
from worldpm.eval.benchmarks.sources import need, records_for

log = logging.getLogger("worldpm.eval")


HEADLINE = ("accuracy", "by_strength.*.accuracy")  # official keys the report shows (dotted, * wildcards)

def load(bcfg: Mapping, name: str) -> list[Item]:
    keep = bcfg.get("record_split")
    items, ties, other_split = [], 0, 0
    for rec in records_for(bcfg, name):
        if keep and need(rec, "split", str) != keep:
            other_split += 1
            continue
        prompt, a, b = need(rec, "prompt", str), need(rec, "response_1", str), need(rec, "response_2", str)
        strength = need(rec, "preference_strength", int)
        if not -3 <= strength <= 3:
            raise UserError(f"{rec.where}: preference_strength should be in -3..3, got {strength}")
        if strength == 0:
            ties += 1
            continue
        items.append(Item(subtask="helpsteer2", uid=str(len(items)), prompt=conversation(prompt), responses=[a, b],
                          pairs=[(0, 1)] if strength < 0 else [(1, 0)], group=f"strength_{abs(strength)}", where=rec.where))
    log.info("%s: %d pairs; %d ties (strength 0) excluded; %d rows of other splits skipped (record_split=%s)",
             name, len(items), ties, other_split, keep)
    if not items:
        raise UserError(f"benchmark {name}: no non-tied pairs with split {keep!r} (set benchmark.{name}.record_split=null for all)")
    return items


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    return {"accuracy": accuracy_of(items, rewards), "by_strength": accuracy_by(items, rewards, "group")}
