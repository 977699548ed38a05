"""Offset Bias (NCSOFT/offsetbias, BSD-3-Clause), in either of its two formats:

- OffsetBias rows (`train.jsonl`): `instruction`, `output_1`, `output_2`, `label` (1 or 2: the better output);
- EvalBiasBench (`data/evalbiasbench/biasbench.json`, the default): a JSON object keyed by bias type, each a list of
  {bias, instruction, response1, response2, label: 1|2} (80 pairs in 6 bias types upstream).
One subtask, `offsetbias`. Official, as upstream's run_bench.py reports it: accuracy per bias type (`by_bias`), and the
accuracy over all pairs. OffsetBias rows are a training set (a source of Skywork-Reward-Preference-80K): scoring them logs a
warning.
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.items import Item
from worldpm.eval.metrics import accuracy_by, accuracy_of
from worldpm.eval.benchmarks.sources import Record, need, records_for


log = logging.getLogger("worldpm.eval")

HEADLINE = ("accuracy", "by_bias.*.accuracy")  # official keys the report shows (dotted, * wildcards)

def _item(rec: Record, first: str, second: str, group: str, uid: str) -> Item:
    instruction, a, b = need(rec, "instruction", str), need(rec, first, str), need(rec, second, str)
    label = need(rec, "label", int)
    if label not in (1, 2):
        raise UserError(f"{rec.where}: label should be 1 or 2, got {label!r}")
    return Item(subtask="offsetbias", uid=uid, prompt=[{"role": "user", "content": instruction}], responses=[a, b],
                pairs=[(0, 1)] if label == 1 else [(1, 0)], group=group, where=rec.where)


def load(bcfg: Mapping, name: str) -> list[Item]:
    items = []
    for rec in records_for(bcfg, name):
        if isinstance(rec.data, Mapping) and "instruction" not in rec.data:  # EvalBiasBench: {bias type: [records]}
            for bias, rows in rec.data.items():
                if not isinstance(rows, list):
                    raise UserError(f"{rec.where}: EvalBiasBench entry {bias!r} should be a list of records")
                for i, row in enumerate(rows):
                    sub = Record(row, f"{rec.where}[{bias!r}][{i}]")
                    items.append(_item(sub, "response1", "response2", str(bias), f"{bias}/{i}"))
        else:
            items.append(_item(rec, "output_1", "output_2", "", str(len(items))))
    training_rows = sum(1 for it in items if not it.group)
    if training_rows:
        log.warning("%s: %d rows are OffsetBias *training* pairs (instruction/output_1/output_2), a source of "
                    "Skywork-Reward-Preference-80K that a model may have seen; the benchmark is EvalBiasBench (biasbench.json)",
                    name, training_rows)
    return items


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    return {"accuracy": accuracy_of(items, rewards), "by_bias": accuracy_by(items, rewards, lambda it: it.group or None)}
