"""The unit every benchmark loader produces: one prompt, its responses, and which response the benchmark prefers to which.

Pairwise sets are items with two responses and one pair; best-of-K sets (PPE correctness, RM-Bench, RMB BoN, RewardBench 2) are
items with many responses scored together, so a response shared by several pairs is scored once.

How an item counts for accuracy (`rule`):
- `pair`: every (preferred, dispreferred) pair is a unit, won when the preferred reward is strictly higher (a tie is wrong);
- `all`: the item is one unit, won only if every pair is won (RMB best-of-N, RewardBench 2 Ties prompts);
- `top_share`: the item is one unit; all pairs share one preferred response, which scores 0 if any rival beats it and 1/k when it
  ties k-1 rivals at the top (RewardBench 2's best-of-4 rule).
BT loss always averages -log sigmoid(r_preferred - r_dispreferred) over the item's pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

RULES = ("pair", "all", "top_share")


@dataclass
class Item:
    subtask: str
    uid: str
    prompt: list[dict]                     # the conversation before the reply: [{role, content}, ...]
    responses: list[str]
    pairs: list[tuple[int, int]]           # (preferred, dispreferred) indices into responses
    rule: str = "pair"
    group: str = ""                        # finer slice for the official aggregate: RewardBench subset, RMB scenario, ...
    correct: list[bool] | None = None      # per-response correctness where the benchmark has it (PPE, RewardBench 2)
    styles: list[str] | None = None        # per-response style label (RM-Bench: concise / detailed_plain / detailed_markdown)
    meta: dict = field(default_factory=dict)
    where: str = ""                        # file and record, for messages

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown accuracy rule {self.rule!r}")
        n = len(self.responses)
        for a, b in self.pairs:
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise ValueError(f"{self.where}: pair ({a}, {b}) does not index two of its {n} responses")
        if self.rule == "top_share" and len({a for a, _ in self.pairs}) > 1:
            raise ValueError(f"{self.where}: rule top_share needs one preferred response shared by all pairs")


def conversation(prompt: list[dict], reply: str) -> list[dict]:
    return [*prompt, {"role": "assistant", "content": reply}]


def group_indices(items: Sequence[Item], key: str | Callable[[Item], str | Iterable[str] | None]) -> dict[str, list[int]]:
    """Indices of `items` per group, groups in first-seen order. `key` is an Item attribute name (`"subtask"`, `"group"`) or a
    function of an item giving its group, None (the item is left out) or a list of groups (the item is in each)."""
    get = (lambda item: getattr(item, key)) if isinstance(key, str) else key
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        g = get(item)
        for name in ([] if g is None else [g] if isinstance(g, str) else g):
            groups.setdefault(name, []).append(i)
    return groups
