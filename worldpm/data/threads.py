"""ThreadRecord shards -> token ids, once, with the model's own encoder; then random access by row, and what each objective
reads from a thread.

A thread (data_prep.records.THREAD_SCHEMA: a prompt, every usable answer with its score, the sampled pairs) is tokenised as
its answers would be one by one (prompt + answer, the reward-token contract and its truncation), then split into the prompt
(the answers' common token prefix, stored once) and each answer's own tokens (worldpm.model.segments.prompt_group; an answer
whose prompt was truncated keeps its whole sequence). `ThreadTable` keeps every length as arrays, so a step is planned
(worldpm.data.packing) without reading a thread.

Objectives (`loss.objective`), as the terms `thread_terms` lists for one thread, each a (winner, risk set, weight) with loss
logsumexp(r[risk]) - r[winner]:
- `pairs`: the sampled pairs (the collected PairRecords of the thread), risk set {chosen, rejected}: -log sigmoid(r_c - r_r);
- `listwise`, likelihood `bradley_terry`: every pair of answers with different scores, the higher one winning;
- `listwise`, likelihood `plackett_luce`: each answer that outscores some other wins against every answer scored no higher
  (ties share a risk set, Breslow's rule; an answer with nothing below it adds no term).
Weighting (`loss.listwise.weighting`): `term` (each term weighs 1) or `thread` (a thread's terms share the weight of its sampled
pairs, so a thread counts as much as in pair mode). A step's loss is the weighted sum over its terms divided by its total weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from worldpm.config.schemas import LIKELIHOODS, OBJECTIVES, WEIGHTINGS
from worldpm.errors import UserError
from worldpm.model.chat_format import ChatEncoder, check_conversation
from worldpm.model.segments import PromptGroup, prompt_group

TOKENIZATION_VERSION = 1  # bump when the tokenised columns change meaning (invalidates caches)


@dataclass(frozen=True)
class Objective:
    """What the loss reads from a thread (`loss.objective`, `loss.listwise.likelihood`, `loss.listwise.weighting`)."""

    name: str = "pairs"
    likelihood: str = "bradley_terry"
    weighting: str = "thread"

    def __post_init__(self):
        for key, value, allowed in (("loss.objective", self.name, OBJECTIVES),
                                    ("loss.listwise.likelihood", self.likelihood, LIKELIHOODS),
                                    ("loss.listwise.weighting", self.weighting, WEIGHTINGS)):
            if value not in allowed:
                raise UserError(f"{key}={value!r} is not one of {allowed}")

    def __str__(self) -> str:
        return self.name if self.name == "pairs" else f"listwise ({self.likelihood}, {self.weighting} weighting)"

    @property
    def all_answers(self) -> bool:
        """Whether every answer of a thread is scored (listwise), or only those in its sampled pairs."""
        return self.name == "listwise"


@dataclass(frozen=True)
class TokenizedThread:
    """One thread's token ids (its prompt once, each answer's own tokens), scores and sampled pairs; a pair is a thread of
    two answers (scores 1, 0) with one sampled pair and, when trained with one, its margin."""

    group: PromptGroup
    scores: tuple[float, ...]
    pairs: tuple[tuple[int, int], ...]
    margins: tuple[float, ...] | None = None

    def needed(self, objective: Objective) -> list[int]:
        """The answers the objective reads, in thread order."""
        if objective.all_answers:
            return list(range(len(self.group)))
        return sorted({a for pair in self.pairs for a in pair})


def ranked_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    """(higher, lower) for every pair of answers with different scores, in (i, j) order."""
    out = []
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if scores[i] != scores[j]:
                out.append((i, j) if scores[i] > scores[j] else (j, i))
    return out


def thread_terms(thread: TokenizedThread, objective: Objective) -> tuple[list[int], list[list[int]], list[float]]:
    """The thread's loss terms (module docstring): winners, risk sets (answer indices) and weights."""
    if objective.name == "pairs":
        return [c for c, _ in thread.pairs], [[c, r] for c, r in thread.pairs], [1.0] * len(thread.pairs)
    scores = thread.scores
    if objective.likelihood == "bradley_terry":
        ranked = ranked_pairs(scores)
        winners, risks = [h for h, _ in ranked], [[h, lo] for h, lo in ranked]
    else:
        winners, risks = [], []
        for i, s in enumerate(scores):
            below = [j for j, t in enumerate(scores) if t <= s]
            if any(scores[j] < s for j in below):
                winners.append(i)
                risks.append(below)
    n = len(winners)
    weight = (len(thread.pairs) / n if n else 0.0) if objective.weighting == "thread" else 1.0
    return winners, risks, [weight] * n


# ---------------------------------------------------------------------------------------------------------------- tokenising
def tokenize_threads(batch, encoder: ChatEncoder):
    """A batch of ThreadRecords -> the tokenised columns ThreadTable reads (datasets.map; worldpm.data.pairs.load_split)."""
    convs, owner = [], []
    for t, (tid, prompt, answers) in enumerate(zip(batch["id"], batch["prompt"], batch["answers"])):
        for k, answer in enumerate(answers):
            conv = list(prompt) + [{"role": "assistant", "content": answer["text"]}]
            check_conversation(conv, where=f"thread {tid} answer {k}")  # a bad row names its thread
            convs.append(conv)
            owner.append(t)
    enc = encoder.conversations(convs)
    out = {k: [] for k in ("prompt_ids", "own_ids", "shares", "scores", "pair_chosen", "pair_rejected", "own_len",
                           "in_pair", "prompt_len", "n_pairs", "n_ranked", "n_listed")}
    at = 0
    for answers, pairs in zip(batch["answers"], batch["pairs"]):
        n = len(answers)
        ids, cut = enc[at:at + n], enc.cut[at:at + n]
        at += n
        group = prompt_group(ids, reference=[not c for c in cut])
        scores = [float(a["score"]) for a in answers]
        chosen, rejected = [int(p["chosen"]) for p in pairs], [int(p["rejected"]) for p in pairs]
        used = set(chosen) | set(rejected)
        out["prompt_ids"].append(list(group.prompt))
        out["own_ids"].append([list(o) for o in group.own])
        out["shares"].append(list(group.shares))
        out["scores"].append(scores)
        out["pair_chosen"].append(chosen)
        out["pair_rejected"].append(rejected)
        out["own_len"].append([len(o) for o in group.own])
        out["in_pair"].append([i in used for i in range(n)])
        out["prompt_len"].append(len(group.prompt))
        out["n_pairs"].append(len(chosen))
        out["n_ranked"].append(len(ranked_pairs(scores)))
        out["n_listed"].append(sum(any(t < s for t in scores) for s in scores))  # Plackett-Luce terms
    return out


def _flat(dataset, name: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (values, offsets) arrays."""
    column = dataset.data.column(name).combine_chunks()
    offsets = np.asarray(column.offsets.to_numpy(), dtype=np.int64)
    values = np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=dtype)
    return values, offsets - offsets[0]


class ThreadTable:
    """Random access to the tokenised threads of one split, plus their lengths as arrays (for planning micro-batches)."""

    def __init__(self, dataset):
        self.dataset = dataset
        column = lambda name: np.asarray(dataset.data.column(name).to_numpy(), dtype=np.int64)  # noqa: E731
        self.n_pairs, self.n_ranked, self.n_listed = column("n_pairs"), column("n_ranked"), column("n_listed")
        self.prompt_len = column("prompt_len")
        self.own_len, self.offsets = _flat(dataset, "own_len", np.int64)
        self.shares = _flat(dataset, "shares", bool)[0]
        self.in_pair = _flat(dataset, "in_pair", bool)[0]

    def __len__(self) -> int:
        return len(self.n_pairs)

    def weights(self, objective: Objective) -> np.ndarray:
        """Each thread's total loss weight under `objective` (a step's loss divides by the sum over its threads)."""
        if objective.name == "pairs" or objective.weighting == "thread":
            return self.n_pairs
        return self.n_ranked if objective.likelihood == "bradley_terry" else self.n_listed

    def answer_lengths(self, row: int, objective: Objective) -> tuple[list[int], int, list[int], list[bool]]:
        """(needed answers, prompt length, own lengths, shares) of one thread, from the arrays alone."""
        lo, hi = self.offsets[row], self.offsets[row + 1]
        needed = list(range(hi - lo)) if objective.all_answers else np.flatnonzero(self.in_pair[lo:hi]).tolist()
        return (needed, int(self.prompt_len[row]), [int(self.own_len[lo + a]) for a in needed],
                [bool(self.shares[lo + a]) for a in needed])

    def threads(self, rows: Sequence[int]) -> list[TokenizedThread]:
        if not len(rows):
            return []
        batch = self.dataset[list(map(int, rows))]
        return [TokenizedThread(PromptGroup(tuple(p), tuple(tuple(o) for o in own), tuple(sh)), tuple(sc),
                                tuple(zip(c, r)))
                for p, own, sh, sc, c, r in zip(batch["prompt_ids"], batch["own_ids"], batch["shares"], batch["scores"],
                                                batch["pair_chosen"], batch["pair_rejected"])]
