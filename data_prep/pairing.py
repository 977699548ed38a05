"""From one thread (a question and its replies) to preference pairs, the same for every source.

Paper default (WorldPM): pairs only between replies of different net score, the higher one chosen, at most
`max_per_question` pairs per thread drawn with a random generator seeded from the thread itself, so the output is identical across
runs and worker counts. Options: a minimum score gap, the StackLLaMA score rule, and the SHP order rule (the preferred reply was
written no earlier than the other, so its higher score is not just a head start). The reply length bounds are applied before,
by data_prep.blocks.LengthFilter.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from data_prep.accounting import Stats
from data_prep.records import pair_id


class Reply:
    """One reply: markdown `text`, the evidence and provenance `meta`. A reader may give the text as `html` plus a `convert`
    function instead, and the meta as a `make_meta` function: they are then made on first use, since most replies of a long
    thread never reach a sampled pair. Such a reader says whether the text is `surely_nonempty` (decided from the HTML without
    converting it), which is all the default length bounds need to know."""

    __slots__ = ("id", "_text", "score", "created", "accepted", "upvotes", "_meta", "_html", "_convert", "_make_meta",
                 "surely_nonempty")

    def __init__(self, id: str, text: str | None, score: float, created: Any = None, accepted: bool = False,
                 upvotes: int | None = None, meta: dict | None = None, *, html: str | None = None,
                 convert: Callable[[str], str] | None = None, make_meta: Callable[[], dict] | None = None,
                 surely_nonempty: bool = False):
        if text is None and (html is None or convert is None):
            raise ValueError("a Reply needs its text, or its html and a convert function")
        self.id, self._text, self.score, self.created = id, text, score, created
        self.accepted, self.upvotes = accepted, upvotes
        self._meta = {} if meta is None and make_meta is None else meta
        self._html, self._convert, self._make_meta, self.surely_nonempty = html, convert, make_meta, surely_nonempty

    @property
    def text(self) -> str:  # markdown
        if self._text is None:
            self._text, self._html = self._convert(self._html), None
        return self._text

    @property
    def converted(self) -> bool:
        return self._text is not None

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = self._make_meta()
        return self._meta


@dataclass
class Thread:
    source: str
    domain: str
    thread_id: str
    prompt: str                    # title, blank line, body (markdown)
    replies: list[Reply]
    meta: dict = field(default_factory=dict)
    position: dict = field(default_factory=dict)   # file and line, for rejects.jsonl
    flags: set[str] = field(default_factory=set)    # set by the contamination audit in mode flag: "prompt", "replies"
    # preference sets (data_prep.preference_sets): the prompt as turns (`prompt` is then their text, for the audit and dedup),
    # the pairs the set gives as (chosen id, rejected id, chosen score, rejected score, meta) or None (pair by score), and the
    # set's own split label of the prompt
    messages: list[dict] | None = None
    given_pairs: list[tuple] | None = None
    source_split: str | None = None


# pairs.score_rule: how a reply's evidence becomes the score pairs are made on (effective_score)
SCORE_RULES = ("net", "stackllama", "stackllama_votes")


def thread_seed(seed: int | str, source: str, domain: str, thread_id: str) -> int:
    """A 64-bit number fixed by the thread alone and `seed` (an int, or any string such as a split salt)."""
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
    raise ValueError(f"unknown pairs.score_rule={rule!r} (choose {', '.join(SCORE_RULES)})")


# what json.dumps(meta, ensure_ascii=False, sort_keys=True) builds on every call, built once
_META_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True)
# from this many replies on, the pair scan runs in numpy (a thread of n replies has n(n-1)/2 pairs; below, the loop is cheaper)
VECTOR_MIN_REPLIES = 16


def _candidates_loop(scores: list[float], replies: list[Reply], gap: float, order_rule) -> tuple[list, int, int, int]:
    """(chosen index, rejected index) of every unordered reply pair (i < j, in that order) that passes the rules, and the
    counts of those that fail each."""
    candidates = []
    equal = below_gap = earlier = 0
    order = order_rule == "preferred_not_earlier"
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if scores[i] == scores[j]:
                equal += 1
                continue
            hi_, lo_ = (i, j) if scores[i] > scores[j] else (j, i)
            if scores[hi_] - scores[lo_] < gap:
                below_gap += 1
                continue
            if order and replies[hi_].created < replies[lo_].created:
                earlier += 1
                continue
            candidates.append((hi_, lo_))
    return candidates, equal, below_gap, earlier


@lru_cache(maxsize=256)
def _pairs_of(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)  # row-major: the loop's (i, j) order


def _candidates_numpy(scores: list[float], gap: float) -> tuple[list, int, int]:
    """`_candidates_loop` without the order rule, for long threads: the same pairs in the same order."""
    s = np.asarray(scores, dtype=np.float64)
    i, j = _pairs_of(len(s))
    si, sj = s[i], s[j]
    equal = si == sj
    i_wins = si > sj
    hi_, lo_ = np.where(i_wins, i, j), np.where(i_wins, j, i)
    below = ~equal & (s[hi_] - s[lo_] < gap)
    keep = ~equal & ~below
    return list(zip(hi_[keep].tolist(), lo_[keep].tolist())), int(equal.sum()), int(below.sum())


def reply_scores(replies: list[Reply], rule: str) -> list[float]:
    """Each reply's score under `rule`: what pairs compare (PairRecord chosen/rejected_score, ThreadRecord answer score)."""
    return [float(r.score) for r in replies] if rule == "net" else [effective_score(r, rule) for r in replies]


def answer_meta(reply: Reply) -> dict:
    """A reply's provenance block: the `chosen` / `rejected` part of a pair's meta, and a thread answer's meta."""
    return {"id": reply.id, "score": reply.score, "accepted": reply.accepted, **reply.meta}


def make_pairs(thread: Thread, replies: list[Reply], cfg, stats: Stats) -> tuple[list[dict], list[tuple[int, int]]]:
    """PairRecord rows for one thread, and each as (chosen, rejected) indices into `replies`. Every unordered reply pair is
    counted in block `pairs` under one outcome: equal_score, score_gap_below_min, preferred_written_earlier,
    over_max_per_question or sampled."""
    rule, gap = cfg.score_rule, float(cfg.min_score_gap)
    scores = reply_scores(replies, rule)
    if cfg.order_rule == "preferred_not_earlier" or len(replies) < VECTOR_MIN_REPLIES:
        candidates, equal, below_gap, earlier = _candidates_loop(scores, replies, gap, cfg.order_rule)
    else:
        candidates, equal, below_gap = _candidates_numpy(scores, gap)
        earlier = 0
    stats.add("pairs", "equal_score", equal)
    stats.add("pairs", "score_gap_below_min", below_gap)
    stats.add("pairs", "preferred_written_earlier", earlier)
    candidates = _at_most(candidates, thread, cfg, stats)
    prompt = _prompt(thread)
    rows = []
    for c, r in candidates:
        chosen, rejected = replies[c], replies[r]
        meta = {**thread.meta, "score_rule": rule, "chosen": answer_meta(chosen), "rejected": answer_meta(rejected)}
        rows.append(_row(thread, prompt, chosen, rejected, scores[c], scores[r], meta))
    return rows, candidates


def _prompt(thread: Thread) -> list[dict]:
    return thread.messages or [{"role": "user", "content": thread.prompt}]


def _row(thread: Thread, prompt: list[dict], chosen: Reply, rejected: Reply, chosen_score: float, rejected_score: float,
         meta: dict) -> dict:
    return {"id": pair_id(thread.source, f"{thread.domain}/{thread.thread_id}", chosen.id, rejected.id),
            "source": thread.source, "domain": thread.domain, "thread_id": thread.thread_id, "prompt": prompt,
            "chosen": chosen.text, "rejected": rejected.text, "chosen_score": float(chosen_score),
            "rejected_score": float(rejected_score), "meta": _META_JSON.encode(meta)}


def _at_most(candidates: list, thread: Thread, cfg, stats: Stats) -> list:
    """At most pairs.max_per_question of the candidates, drawn with a generator seeded from the thread (the rest counted in
    `pairs` as over_max_per_question); the kept ones counted as sampled."""
    limit = cfg.max_per_question
    if limit is not None and len(candidates) > int(limit):
        rng = random.Random(thread_seed(int(cfg.seed), thread.source, thread.domain, thread.thread_id))
        picked = sorted(rng.sample(range(len(candidates)), int(limit)))
        stats.add("pairs", "over_max_per_question", len(candidates) - len(picked))
        candidates = [candidates[k] for k in picked]
    stats.add("pairs", "sampled", len(candidates))
    return candidates


def given_pairs(thread: Thread, replies: list[Reply], cfg, stats: Stats) -> tuple[list[dict], list[tuple[int, int]]]:
    """PairRecord rows of the pairs a preference set gives for one prompt, and each as (chosen, rejected) indices into
    `replies`. Every given pair is counted in block `pairs` under one outcome: duplicate_pair (given twice), reply_dropped (a
    reply of it was dropped: contamination, length bounds), over_max_per_question or sampled."""
    position = {r.id: i for i, r in enumerate(replies)}
    seen, candidates = set(), []
    for pair in thread.given_pairs:
        cid, rid = pair[0], pair[1]
        if (cid, rid) in seen:
            stats.add("pairs", "duplicate_pair")
        elif cid not in position or rid not in position:
            stats.add("pairs", "reply_dropped")
        else:
            candidates.append(pair)
        seen.add((cid, rid))
    prompt = _prompt(thread)
    rows, index = [], []
    for cid, rid, cs, rs, pair_meta in _at_most(candidates, thread, cfg, stats):
        chosen, rejected = replies[position[cid]], replies[position[rid]]
        meta = {**thread.meta, **pair_meta, "chosen": {"id": cid, **chosen.meta}, "rejected": {"id": rid, **rejected.meta}}
        rows.append(_row(thread, prompt, chosen, rejected, cs, rs, meta))
        index.append((position[cid], position[rid]))
    return rows, index


def thread_answers(replies: list[Reply], rule: str) -> list[dict]:
    """A ThreadRecord's `answers` (data_prep.records): every reply with its text, the score pairs compare, and its meta."""
    return [{"id": str(r.id), "text": r.text, "score": s, "meta": _META_JSON.encode(answer_meta(r))}
            for r, s in zip(replies, reply_scores(replies, rule))]


def thread_meta(thread: Thread, rule: str) -> str:
    """A ThreadRecord's `meta`: the thread's provenance and the score rule (a pair's meta without its two answers)."""
    return _META_JSON.encode({**thread.meta, "score_rule": rule})
