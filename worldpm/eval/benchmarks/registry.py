"""The benchmark registry: a config key under `benchmark.` names a loader module (`loader:` overrides it, so one loader can
serve two entries, e.g. UltraFeedback binarized and raw). Each module has `load(bcfg, name) -> [Item]` and
`official(items, rewards, bcfg) -> dict`.
"""
from __future__ import annotations

import importlib
import logging
from collections import Counter
from typing import Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.bootstrap import rng_for
from worldpm.eval.items import Item, group_indices

log = logging.getLogger("worldpm.eval")

LOADERS = {
    "rewardbench": "worldpm.eval.benchmarks.rewardbench",
    "rewardbench2": "worldpm.eval.benchmarks.rewardbench2",
    "rmbench": "worldpm.eval.benchmarks.rmbench",
    "ppe": "worldpm.eval.benchmarks.ppe",
    "rmb": "worldpm.eval.benchmarks.rmb",
    "offsetbias": "worldpm.eval.benchmarks.offsetbias",
    "helpsteer2": "worldpm.eval.benchmarks.helpsteer2",
    "ultrafeedback": "worldpm.eval.benchmarks.ultrafeedback",
    "heldout": "worldpm.eval.benchmarks.heldout",
    "bon_synthetic": "worldpm.eval.benchmarks.bon_synthetic",
}


def module_for(name: str, bcfg: Mapping):
    loader = bcfg.get("loader") or name
    if loader not in LOADERS:
        raise UserError(f"benchmark {name}: unknown loader {loader!r} (choose from {', '.join(LOADERS)})")
    return importlib.import_module(LOADERS[loader])


def subsample(items: list[Item], max_items: int | None, seed: int, name: str) -> list[Item]:
    """At most `max_items` items per subtask: a seeded random subset, kept in file order."""
    if not max_items:
        return items
    keep = []
    for subtask, idx in group_indices(items, "subtask").items():
        if len(idx) > max_items:
            idx = sorted(rng_for(seed, name, subtask, "subsample").choice(idx, size=int(max_items), replace=False).tolist())
        keep.extend(idx)
    return [items[i] for i in sorted(keep)]


def load_benchmark(name: str, bcfg: Mapping, seed: int = 0) -> list[Item]:
    items = module_for(name, bcfg).load(bcfg, name)
    if not items:
        raise UserError(f"benchmark {name}: no items to evaluate in {bcfg.get('path')}")
    items = subsample(items, bcfg.get("max_items"), seed, name)
    counts = Counter(item.subtask for item in items)
    log.info("%s: %d items (%s), %d responses", name, len(items), ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
             sum(len(it.responses) for it in items))
    return items


def official(name: str, bcfg: Mapping, items: list[Item], rewards: list[np.ndarray]) -> dict:
    return module_for(name, bcfg).official(items, rewards, bcfg)
