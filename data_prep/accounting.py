"""Counting what every block kept and dropped, and keeping a few samples of each drop for rejects.jsonl (datatrove-style).

A block (a reader, a filter, the pairing, a dedup step) calls `stats.add(block, outcome, n)`; outcomes other than the block's kept
outcome are drop reasons. Stats from parallel tasks are merged by summing, and the samples are merged in a fixed order, so the
result does not depend on how many workers ran or in which order they finished. `account` turns the counts into stats.json, with
the identities that say every input row is accounted for.
"""
from __future__ import annotations

import json
from collections import defaultdict

# outcomes of the `rows.<table>` sections that keep the row (the rest, but `read`, are drop reasons)
KEPT_ROWS = {"question", "answer", "user", "vote", "submission", "comment", "record"}
FORUMS = ("stackexchange", "reddit")


def _outcomes() -> defaultdict:
    return defaultdict(int)


class Stats:
    def __init__(self, max_rejects_per_reason: int = 20):
        self.counts: dict[str, dict[str, int]] = defaultdict(_outcomes)  # a named factory: a block holding a Stats pickles
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


def account(stats: Stats, source: str) -> dict:
    """stats.json: every count by block, and the identities that say every input row is accounted for."""
    c = stats.as_dict()
    out: dict = {"rows": {}}
    identities = {}
    for block, outcomes in c.items():
        if not block.startswith("rows."):
            continue
        table = block[5:]
        kept = {k: v for k, v in outcomes.items() if k in KEPT_ROWS}
        dropped = {k: v for k, v in outcomes.items() if k not in KEPT_ROWS and k != "read"}
        out["rows"][table] = {"read": outcomes.get("read", 0), **kept, "dropped": dropped}
        identities[f"rows.{table}: read = kept + dropped"] = outcomes.get("read", 0) == sum(kept.values()) + sum(dropped.values())
    question_rows, reply_rows = ("Posts", "question"), ("Posts", "answer")
    if source == "reddit":
        question_rows, reply_rows = ("submissions", "submission"), ("comments", "comment")
    if source not in FORUMS:  # a preference set: its threads are the distinct prompts of the kept records (and their replies)
        groups = dict(c.get("prompt_groups", {}))
        out["prompts"] = {"total": groups.get("total", 0), "records": groups.get("records", 0),
                          "replies": groups.get("replies", 0),
                          "duplicate_replies_merged": groups.get("duplicate_replies_merged", 0)}
        kept = out["rows"].get("records", {}).get("record", 0)
        identities["prompts: records grouped = rows.records kept"] = out["prompts"]["records"] == kept
        if "source_split" in c:
            out["source_split"] = c["source_split"]

    def section(block, kept_name, total):
        outcomes = dict(c.get(block, {}))
        kept = {k: outcomes.pop(k) for k in list(outcomes) if k == kept_name or k.startswith(kept_name + "_")}
        out[block] = {"total": total, **kept, "dropped": outcomes}
        identities[f"{block}: total = {kept_name} + dropped"] = total == kept.get(kept_name, 0) + sum(outcomes.values())

    if source in FORUMS:
        q_total = out["rows"].get(question_rows[0], {}).get(question_rows[1], 0)
        r_total = out["rows"].get(reply_rows[0], {}).get(reply_rows[1], 0)
    else:
        q_total, r_total = out["prompts"]["total"], out["prompts"]["replies"]
    section("questions", "paired", q_total)
    section("replies", "usable", r_total)
    section("pairs", "sampled", c.get("pairs_possible", {}).get("total", 0))
    paired, sampled = out["questions"].get("paired", 0), out["pairs"].get("sampled", 0)
    outcomes = dict(c.get("output", {}))
    train, test = outcomes.pop("train", 0), outcomes.pop("test", 0)
    out["output"] = {"sampled": sampled, "train": train, "test": test, "dropped": outcomes}
    identities["output: sampled = train + test + dropped"] = sampled == train + test + sum(outcomes.values())
    outcomes = dict(c.get("threads_out", {}))
    written = outcomes.pop("written", 0)
    per_split = {k: outcomes.pop(k) for k in list(outcomes) if k.startswith("written_")}
    out["threads_out"] = {"paired": paired, "written": written, **per_split, "dropped": outcomes}
    identities["threads_out: paired = written + dropped"] = paired == written + sum(outcomes.values())
    if "thread_shards" in c:  # output.threads: one ThreadRecord per thread written, holding exactly its written pairs
        shards = c["thread_shards"]
        out["thread_shards"] = {"train": shards.get("train", 0), "test": shards.get("test", 0),
                                "answers": shards.get("answers", 0), "pairs": shards.get("pairs", 0)}
        identities["thread_shards: train + test = threads_out.written"] = (
            shards.get("train", 0) + shards.get("test", 0) == written)
        identities["thread_shards: pairs = output.train + output.test"] = shards.get("pairs", 0) == train + test
    if "contamination" in c:
        out["contamination"] = c["contamination"]
    out["identities"] = identities
    out["all_accounted"] = all(identities.values())
    return out
