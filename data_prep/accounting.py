"""Counting what every block kept and dropped, and keeping a few samples of each drop for rejects.jsonl (datatrove-style).

A block (a reader, a filter, the pairing, a dedup step) calls `stats.add(block, outcome, n)`; outcomes other than the block's kept
outcome are drop reasons. Stats from parallel tasks are merged by summing, and the samples are merged in a fixed order, so the
result does not depend on how many workers ran or in which order they finished.
"""
from __future__ import annotations

import json
from collections import defaultdict


class Stats:
    def __init__(self, max_rejects_per_reason: int = 20):
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.rejects: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.max_rejects = max_rejects_per_reason

    def add(self, block: str, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[block][outcome] += n

    def drop(self, block: str, reason: str, sample: dict | None = None, n: int = 1) -> None:
        """Count a drop; keep `sample` (file, position, id, excerpt, ...) for rejects.jsonl while there are few of that reason."""
        if n:
            self.counts[block][reason] += n
        if sample is not None:
            kept = self.rejects[(block, reason)]
            if len(kept) < self.max_rejects:
                kept.append({"block": block, "reason": reason, **sample})

    def merge(self, other: "Stats") -> "Stats":
        for block, outcomes in other.counts.items():
            for outcome, n in outcomes.items():
                self.counts[block][outcome] += n
        for key, samples in other.rejects.items():
            self.rejects[key].extend(samples)
        return self

    def state(self) -> dict:
        """A picklable, JSON-able form (what worker processes send back)."""
        return {"counts": {b: dict(o) for b, o in self.counts.items()},
                "rejects": [[list(k), v] for k, v in self.rejects.items()], "max": self.max_rejects}

    @classmethod
    def from_state(cls, state: dict) -> "Stats":
        stats = cls(state["max"])
        for block, outcomes in state["counts"].items():
            for outcome, n in outcomes.items():
                stats.counts[block][outcome] += n
        for (block, reason), samples in state["rejects"]:
            stats.rejects[(block, reason)].extend(samples)
        return stats

    def reject_samples(self) -> list[dict]:
        """At most `max_rejects` samples per (block, reason), chosen in a fixed order (by file, then position)."""
        out = []
        for key in sorted(self.rejects):
            samples = sorted(self.rejects[key], key=lambda s: json.dumps([s.get("file", ""), s.get("line", 0), s.get("id", "")],
                                                                         default=str))
            out.extend(samples[: self.max_rejects])
        return out

    def as_dict(self) -> dict:
        return {block: dict(sorted(outcomes.items())) for block, outcomes in sorted(self.counts.items())}
