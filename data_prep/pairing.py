"""From one thread (a question and its replies) to preference pairs, the same for every source.

Paper default (WorldPM): pairs only between replies of different net score, the higher one chosen, at most
`max_per_question` pairs per thread drawn with a random generator seeded from the thread itself, so the output is identical across
runs and worker counts. Options: a minimum score gap, reply length bounds, the StackLLaMA score rule, and the SHP order rule (the
preferred reply was written no earlier than the other, so its higher score is not just a head start).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from data_prep.accounting import Stats
from data_prep.records import pair_id


@dataclass
class Reply:
    id: str
    text: str                      # markdown
    score: float                   # net votes (Score) or the source's score
    created: Any = None            # ISO date (Stack Exchange) or epoch seconds (Reddit)
    accepted: bool = False
    upvotes: int | None = None     # exact upvotes (Votes.xml), when known
    meta: dict = field(default_factory=dict)


@dataclass
class Thread:
    source: str
    domain: str
    thread_id: str
    prompt: str                    # title, blank line, body (markdown)
    replies: list[Reply]
    meta: dict = field(default_factory=dict)
    position: dict = field(default_factory=dict)   # file and line, for rejects.jsonl


def thread_seed(seed: int, source: str, domain: str, thread_id: str) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{source}\x1f{domain}\x1f{thread_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def round_half_up(x: float) -> int:
    """Python's round() rounds half to even; StackLLaMA's rule is stated as 'rounded to the nearest integer': we round half up."""
    return math.floor(x + 0.5)


def stackllama_score(upvotes: float, accepted: bool) -> int:
    """H4 / StackLLaMA: round(log2(1 + upvotes)) + 1 if accepted; -1 when the upvotes are negative."""
    if upvotes < 0:
        return -1
    return round_half_up(math.log2(1 + upvotes)) + (1 if accepted else 0)


def effective_score(reply: Reply, rule: str) -> float:
    if rule == "net":
        return float(reply.score)
    if rule == "stackllama":        # 'upvotes' read as the post's Score, as H4's build most likely did
        return float(stackllama_score(reply.score, reply.accepted))
    if rule == "stackllama_votes":  # exact upvote counts from Votes.xml (VoteTypeId=2)
        return float(stackllama_score(reply.upvotes or 0, reply.accepted))
    raise ValueError(f"unknown pairs.score_rule={rule!r} (choose net, stackllama, stackllama_votes)")


def usable_replies(thread: Thread, cfg, stats: Stats, block: str = "replies") -> list[Reply]:
    """Length bounds on the markdown text; each reply is counted as kept or dropped with its reason."""
    keep = []
    lo, hi = int(cfg.min_reply_chars or 0), cfg.max_reply_chars
    for r in thread.replies:
        n = len(r.text)
        if n == 0:
            stats.drop(block, "empty_after_conversion", {**thread.position, "id": r.id})
        elif n < lo:
            stats.drop(block, "too_short", {**thread.position, "id": r.id, "chars": n})
        elif hi is not None and n > int(hi):
            stats.drop(block, "too_long", {**thread.position, "id": r.id, "chars": n})
        else:
            keep.append(r)
    return keep


def make_pairs(thread: Thread, replies: list[Reply], cfg, stats: Stats) -> list[dict]:
    """PairRecord rows for one thread. Every unordered reply pair is counted in block `pairs` under one outcome:
    equal_score, score_gap_below_min, preferred_written_earlier, over_max_per_question or sampled."""
    rule, gap = cfg.score_rule, float(cfg.min_score_gap)
    scores = [effective_score(r, rule) for r in replies]
    candidates = []
    for i in range(len(replies)):
        for j in range(i + 1, len(replies)):
            if scores[i] == scores[j]:
                stats.add("pairs", "equal_score")
                continue
            hi_, lo_ = (i, j) if scores[i] > scores[j] else (j, i)
            if scores[hi_] - scores[lo_] < gap:
                stats.add("pairs", "score_gap_below_min")
                continue
            if cfg.order_rule == "preferred_not_earlier" and replies[hi_].created < replies[lo_].created:
                stats.add("pairs", "preferred_written_earlier")
                continue
            candidates.append((hi_, lo_))
    limit = cfg.max_per_question
    if limit is not None and len(candidates) > int(limit):
        rng = random.Random(thread_seed(int(cfg.seed), thread.source, thread.domain, thread.thread_id))
        picked = sorted(rng.sample(range(len(candidates)), int(limit)))
        stats.add("pairs", "over_max_per_question", len(candidates) - len(picked))
        candidates = [candidates[k] for k in picked]
    stats.add("pairs", "sampled", len(candidates))
    rows = []
    prompt = [{"role": "user", "content": thread.prompt}]
    for c, r in candidates:
        chosen, rejected = replies[c], replies[r]
        meta = {**thread.meta, "score_rule": rule,
                "chosen": {"id": chosen.id, "score": chosen.score, "accepted": chosen.accepted, **chosen.meta},
                "rejected": {"id": rejected.id, "score": rejected.score, "accepted": rejected.accepted, **rejected.meta}}
        rows.append({
            "id": pair_id(thread.source, f"{thread.domain}/{thread.thread_id}", chosen.id, rejected.id),
            "source": thread.source, "domain": thread.domain, "thread_id": thread.thread_id, "prompt": prompt,
            "chosen": chosen.text, "rejected": rejected.text,
            "chosen_score": scores[c], "rejected_score": scores[r],
            "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True),
        })
    return rows
