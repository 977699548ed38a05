"""The training data's own held-out split: PairRecord shards (`data_prep.records`), so in-distribution loss sits beside the
benchmarks. `path` is a collect output directory (its `test/` shards are read) or a directory of shards itself.
One subtask, `test`. Official: accuracy per source and for the most frequent domains.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Mapping

import numpy as np

from data_prep.records import read_pairs
from worldpm.errors import UserError
from worldpm.eval.items import Item, group_indices
from worldpm.eval.metrics import accuracy_by, accuracy_of

log = logging.getLogger("worldpm.eval")
TOP_DOMAINS = 20


HEADLINE = ("accuracy", "by_source.*.accuracy")  # official keys the report shows (dotted, * wildcards)

def load(bcfg: Mapping, name: str) -> list[Item]:
    if not bcfg.get("path"):
        raise UserError(f"benchmark {name}: no path set (benchmark.{name}.path=<a collect output directory>)")
    root = Path(str(bcfg["path"])).expanduser()
    if not root.is_dir():
        raise UserError(f"benchmark {name}: {root} is not a directory of PairRecord shards")
    split = root / "test" if (root / "test").is_dir() else root
    if split is not root and not (root / "manifest.json").exists():
        log.warning("%s: %s has no manifest.json: the collect run that wrote it may not have finished", name, root)
    try:
        table = read_pairs(split)
    except FileNotFoundError:
        raise UserError(f"benchmark {name}: no parquet shards in {split}") from None
    except Exception as exc:  # a shard that does not match the PairRecord schema
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        raise UserError(f"benchmark {name}: {split} does not hold PairRecord shards ({reason})") from None
    items = []
    for i, row in enumerate(table.to_pylist()):
        where = f"{split}[row {i}]"
        if not row["prompt"] or not isinstance(row["chosen"], str) or not isinstance(row["rejected"], str):
            raise UserError(f"{where}: a PairRecord needs a prompt and string chosen / rejected replies")
        items.append(Item(subtask="test", uid=row["id"] or str(i), prompt=[dict(m) for m in row["prompt"]],
                          responses=[row["chosen"], row["rejected"]], pairs=[(0, 1)], group=row["source"] or "",
                          meta={"domain": row["domain"] or ""}, where=where))
    return items


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    domains = group_indices(items, lambda it: it.meta["domain"])
    top = [d for d, _ in Counter({d: len(ix) for d, ix in domains.items()}).most_common(TOP_DOMAINS)]
    return {"accuracy": accuracy_of(items, rewards), "by_source": accuracy_by(items, rewards, "group"),
            "by_domain": {d: {"n": len(domains[d]), "accuracy": accuracy_of(items, rewards, domains[d])} for d in top},
            "n_domains": len(domains)}
