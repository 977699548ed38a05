"""UltraFeedback (MIT), in either of its formats (told apart per record):

- binarized (HuggingFaceH4/ultrafeedback_binarized, split `test_prefs`): `chosen` / `rejected` message lists sharing the
  prompt turns, `score_chosen` / `score_rejected`. Its builder picks the rejected reply at random among the other three, so the
  scores can be equal: such ties are excluded and counted. Subtask `binarized`.
- raw (openbmb/UltraFeedback, split `train`): `instruction` and four `completions` each with `response` and `overall_score`;
  all four replies are scored together and every pair with different `overall_score` is a pair (ties out). Completions without
  a score are left out and counted. Subtask `raw`.
Official: accuracy per subtask (the raw set also by `source`).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.items import Item, group_indices
from worldpm.eval.metrics import accuracy_by, accuracy_of
from worldpm.eval.benchmarks.sources import Record, messages, need, records_for

log = logging.getLogger("worldpm.eval")


HEADLINE = ("*.accuracy",)  # official keys the report shows (dotted, * wildcards)

def _binarized(rec: Record, counts: dict) -> Item | None:
    chosen = messages(rec, need(rec, "chosen", list, "a list of messages"), "chosen")
    rejected = messages(rec, need(rec, "rejected", list, "a list of messages"), "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise UserError(f"{rec.where}: chosen and rejected should end with the assistant's reply")
    if chosen[:-1] != rejected[:-1]:
        raise UserError(f"{rec.where}: chosen and rejected do not share the same prompt turns")
    sc, sr = rec.data.get("score_chosen"), rec.data.get("score_rejected")
    if isinstance(sc, (int, float)) and isinstance(sr, (int, float)) and sc == sr:
        counts["ties"] += 1
        return None
    return Item(subtask="binarized", uid=str(rec.data.get("prompt_id") or counts["rows"]), prompt=chosen[:-1],
                responses=[chosen[-1]["content"], rejected[-1]["content"]], pairs=[(0, 1)], where=rec.where)


def _raw(rec: Record, counts: dict) -> Item | None:
    instruction = need(rec, "instruction", str)
    completions = need(rec, "completions", list, "a list of completions")
    responses, scores = [], []
    for i, c in enumerate(completions):
        if not isinstance(c, Mapping) or not isinstance(c.get("response"), str):
            raise UserError(f"{rec.where}: completion {i} should be an object with a string 'response'")
        score = c.get("overall_score")
        if isinstance(score, list) and len(score) == 1:  # some pipeline outputs wrap values in one-element lists
            score = score[0]
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            counts["unscored"] += 1
            continue
        responses.append(c["response"])
        scores.append(float(score))
    pairs = [(i, j) for i in range(len(scores)) for j in range(len(scores)) if scores[i] > scores[j]]
    counts["tied_pairs"] += sum(scores[i] == scores[j] for i in range(len(scores)) for j in range(i + 1, len(scores)))
    if not pairs:
        counts["no_pairs"] += 1
        return None
    return Item(subtask="raw", uid=str(counts["rows"]), prompt=[{"role": "user", "content": instruction}], responses=responses,
                pairs=pairs, group=str(rec.data.get("source", "")), where=rec.where, meta={"overall_score": scores})


def load(bcfg: Mapping, name: str) -> list[Item]:
    items, counts = [], defaultdict(int)
    for rec in records_for(bcfg, name):
        if not isinstance(rec.data, Mapping):
            raise UserError(f"{rec.where}: expected a JSON object, got {type(rec.data).__name__}")
        if "completions" in rec.data:
            item = _raw(rec, counts)
        elif "chosen" in rec.data:
            item = _binarized(rec, counts)
        else:
            raise UserError(f"{rec.where}: neither a binarized record (chosen/rejected) nor a raw one (instruction/completions)")
        counts["rows"] += 1
        if item is not None:
            items.append(item)
    log.info("%s: %d items from %d rows; %d binarized ties and %d raw tied pairs excluded, %d raw rows without pairs, "
             "%d unscored completions", name, len(items), counts["rows"], counts["ties"], counts["tied_pairs"], counts["no_pairs"],
             counts["unscored"])
    return items


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    out = {}
    for subtask, idx in sorted(group_indices(items, "subtask").items()):
        entry = {"accuracy": accuracy_of(items, rewards, idx), "n_items": len(idx)}
        if subtask == "raw":
            part, part_r = [items[i] for i in idx], [rewards[i] for i in idx]
            entry["by_source"] = {g: v["accuracy"] for g, v in accuracy_by(part, part_r, "group").items()}
        out[subtask] = entry
    return out
