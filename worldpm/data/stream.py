"""What training reads, in which order: the datasets of `data.path` and `data.mix` with their weights, and `PairStream`.

`PairStream` is the data order: each dataset is walked in a fresh seeded permutation per epoch, and several datasets are
interleaved by weight with smooth weighted round-robin (exact proportions in every window, no sampling noise). Its whole state
is a few integers, saved in every checkpoint, so a resumed run sees exactly the rows the uninterrupted run would have. A row
is a pair, or a whole thread (`data.unit=threads`: a step takes threads until they hold its pairs). All ranks draw the same
global rows for a step; worldpm.data.packing.rank_micro_batches then gives each rank its share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from data_prep.records import dataset_problem
from worldpm.errors import UserError


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    weight: float


def sources(data_cfg, unit: str = "pairs") -> list[Source]:
    """`data.path` (weight `data.weight`) plus every `data.mix` entry ({path, weight, name}); validated, one-line errors.
    `unit=threads`: each must hold thread shards too (threads/train/*.parquet)."""
    if data_cfg.get("path") in (None, "", "???"):
        raise UserError("data.path is not set: point it at a collect output directory (with train/ and test/ parquet shards)")
    entries = [{"path": data_cfg.path, "weight": data_cfg.get("weight", 1.0), "name": "main"}]
    for i, extra in enumerate(data_cfg.get("mix") or []):
        if not extra or not extra.get("path"):
            raise UserError(f"data.mix[{i}] has no path (expected {{path: <collect output dir>, weight: <float>}})")
        entries.append({"path": extra["path"], "weight": extra.get("weight", 1.0), "name": extra.get("name") or Path(str(extra["path"])).name})
    out = []
    for e in entries:
        path = Path(str(e["path"])).expanduser()
        key = "data.path" if e["name"] == "main" else f"data.mix ({e['name']})"
        problem = dataset_problem(path, "train")
        if problem:
            raise UserError(f"{key}={e['path']} {problem}")
        if unit == "threads" and not sorted((path / "threads" / "train").glob("*.parquet")):
            raise UserError(f"{key}={e['path']} has no threads/train/*.parquet thread shards (collect with output.threads=true, "
                            "or train on pairs: data.unit=pairs)")
        try:
            weight = float(e["weight"])
        except (TypeError, ValueError):
            raise UserError(f"{key}: weight {e['weight']!r} is not a number") from None
        if not weight > 0:
            raise UserError(f"{key}: weight must be > 0, got {weight}")
        out.append(Source(str(e["name"]), path, weight))
    if len({s.name for s in out}) != len(out):
        raise UserError(f"data.mix names must be unique, got {[s.name for s in out]}")
    return out


class PairStream:
    """The training order: (source, row) pairs from several datasets, by weight, each reshuffled every epoch. With `pairs`
    (per source, each row's number of pairs: rows are threads), `take(n)` takes rows until they hold n pairs.

    Deterministic given (sizes, weights, seed); `state_dict()` captures the position exactly.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, pairs: Sequence[np.ndarray] | None = None):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("need one weight per dataset")
        if any(n <= 0 for n in sizes):
            raise UserError(f"a training dataset is empty (sizes {list(sizes)})")
        self.sizes, self.seed = [int(n) for n in sizes], int(seed)
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.epoch = [0] * len(sizes)
        self.cursor = [0] * len(sizes)
        self.credit = [0.0] * len(sizes)
        self.drawn = 0
        self.pairs = pairs
        self._perm: dict[int, tuple[int, np.ndarray]] = {}

    def _permutation(self, src: int) -> np.ndarray:
        epoch = self.epoch[src]
        cached = self._perm.get(src)
        if cached is None or cached[0] != epoch:
            perm = np.random.default_rng([self.seed, src, epoch]).permutation(self.sizes[src])
            self._perm[src] = cached = (epoch, perm)
        return cached[1]

    def _next_source(self) -> int:
        # smooth weighted round-robin (nginx): every source gains its weight, the richest is served and pays 1
        for i, w in enumerate(self.weights):
            self.credit[i] += w
        src = max(range(len(self.credit)), key=lambda i: (self.credit[i], -i))
        self.credit[src] -= 1.0
        return src

    def take(self, n: int) -> list[tuple[int, int]]:
        """The next rows holding n pairs (n rows of pairs)."""
        out = []
        covered = 0
        while covered < n:
            src = self._next_source() if len(self.sizes) > 1 else 0
            row = int(self._permutation(src)[self.cursor[src]])
            out.append((src, row))
            covered += 1 if self.pairs is None else max(1, int(self.pairs[src][row]))
            self.cursor[src] += 1
            if self.cursor[src] == self.sizes[src]:
                self.cursor[src] = 0
                self.epoch[src] += 1
        self.drawn += len(out)
        return out

    def state_dict(self) -> dict:
        return {"sizes": list(self.sizes), "weights": list(self.weights), "seed": self.seed, "epoch": list(self.epoch),
                "cursor": list(self.cursor), "credit": list(self.credit), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        if list(state["sizes"]) != self.sizes:
            raise UserError(f"the training data changed since the checkpoint (dataset sizes {state['sizes']} then, {self.sizes} "
                            "now); resume with the same data.path/data.mix, or start a new output_dir")
        if int(state["seed"]) != self.seed:
            raise UserError(f"trainer.seed={self.seed} differs from the checkpoint's seed {state['seed']}; resume with the same seed")
        if not np.allclose(state["weights"], self.weights, rtol=1e-9, atol=0):
            raise UserError(f"dataset weights changed since the checkpoint ({state['weights']} then, {self.weights} now); "
                            "resume with the same data.weight/data.mix, or start a new output_dir")
        self.epoch, self.cursor = [int(e) for e in state["epoch"]], [int(c) for c in state["cursor"]]
        self.credit, self.drawn = [float(c) for c in state["credit"]], int(state["drawn"])

    def epochs_done(self) -> float:
        return self.drawn / float(sum(self.sizes))
