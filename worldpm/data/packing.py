"""Micro-batches of preference pairs and forum threads without padding, and their plan across ranks.

Three layouts of a micro-batch (`data.packing`), all read by the same `RewardModel.forward`:

- `packed` (default): every sequence back to back in ONE row, position ids restarting at 0 per sequence, no pad.
- `shared_prompt`: the sequences of one prompt — a pair's two replies, or every answer of a thread (`data.unit=threads`) —
  share it, stored once: [prompt][answer 1 + reward token][answer 2 + reward token]..., each answer seeing the prompt and
  itself, its position ids continuing from the prompt's end, so it gets exactly the hidden states it would get alone
  (worldpm.model.segments). Several threads share a row.
- `padded`: one right-padded row per sequence with a 2D attention mask (what TRL and most trainers do); the fallback.

A micro-batch is made of `Unit`s, one prompt group each: a pair, a thread, or a *part* of a thread too long for one
micro-batch (its answers split in order, each part keeping the prompt). The parts of a thread are micro-batches of their own,
all on one rank; their rewards are first computed without gradient (`StepPlan.prepass`), then each part's micro-batch computes
the thread's loss with the other parts' rewards held fixed (`MicroBatch.external`), so the summed gradient is exactly the whole
thread's. What the loss reads of a thread (`Objective`, worldpm.data.threads) is laid out at collation as index tensors into
the micro-batch's rewards: `chosen`/`rejected` (the sampled pairs, also the metrics) and, for listwise objectives, `terms`.

Attention paths (`data.attention`): `varlen` computes attention per segment (cost sum(len^2), not row_len^2): transformers'
flash-attention varlen kernel for plain packing with `model.attn_implementation=flash_attention_2` on a GPU, else worldpm's
`worldpm_varlen` (SDPA segment by segment, shared prompts included); `block_mask` builds an explicit (rows, 1, T, T) mask from
segment ids and the visibility relation (any implementation taking a 4D mask, at row_len^2 memory): the reference path.

`rank_micro_batches` is the one planner of a step's (or an evaluation's) draws into this rank's collated micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from worldpm.config.schemas import ATTENTION, LAYOUTS
from worldpm.data.threads import Objective, ThreadTable, TokenizedThread, thread_terms
from worldpm.model.attention import flash_attention_available, register_varlen_attention, VARLEN_IMPLEMENTATION
from worldpm.model.padding import pad_batch
from worldpm.model.segments import MIN_OWN_TOKENS, Segment, best_fit, pack, pair_group, segment_inputs, split_lengths

PAIRS = Objective()


@dataclass(frozen=True)
class TokenizedPair:
    chosen: Sequence[int]
    rejected: Sequence[int]
    prefix: int = 0  # length of the common token prefix (the rendered prompt); used by the shared_prompt layout
    margin: float | None = None

    def as_thread(self) -> TokenizedThread:
        """The pair as a thread of two answers, chosen first, with its one sampled pair."""
        return TokenizedThread(pair_group(self.chosen, self.rejected, self.prefix), (1.0, 0.0), ((0, 1),),
                               None if self.margin is None else (float(self.margin),))


@dataclass(frozen=True)
class Unit:
    """One prompt group of a micro-batch: the answers `answers` of `thread` (all it needs, or one part of them)."""

    thread: TokenizedThread
    key: int                      # the thread's index among the draws (unique within a step)
    answers: tuple[int, ...]      # the thread's answers in this group, in order
    needed: tuple[int, ...]       # every answer of the thread the objective reads (in other parts too)
    first: bool = True            # the part whose micro-batch counts the thread in the metrics


@dataclass(frozen=True)
class Terms:
    """Listwise loss terms of a micro-batch: loss_t = logsumexp(r[risk_t]) - r[winner_t], weighted (worldpm.data.threads)."""

    winner: torch.Tensor   # (T,) indices into the micro-batch's rewards (own, then external)
    risk: torch.Tensor     # (T, K) indices, padded with the winner
    mask: torch.Tensor     # (T, K) bool: real risk-set entries
    weight: torch.Tensor   # (T,)
    counted: torch.Tensor  # (T,) bool: counted in this micro-batch's statistics


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (rows, T)
    position_ids: torch.Tensor  # (rows, T)
    segments: list[Segment]  # empty for the padded layout
    reward_index: torch.Tensor  # flat positions into rows*T: one per scored sequence
    chosen: torch.Tensor  # (pairs,) indices into the rewards (own, then external): the sampled pairs
    rejected: torch.Tensor  # (pairs,)
    margin: torch.Tensor | None
    layout: str
    attention_mask: torch.Tensor | None = None  # (rows, T) for the padded layout
    real_tokens: int = 0  # tokens of the scored sequences (a shared prompt counts once per reply): the work done
    total_tokens: int = 0  # positions actually processed, pads included
    pad_tokens: int = 0
    counted: torch.Tensor | None = None  # (pairs,) bool: pairs counted here (a split thread's pairs count in its first part)
    terms: Terms | None = None  # listwise objectives
    keys: list[tuple[int, int]] = field(default_factory=list)  # (thread key, answer) of each own reward
    external: list[tuple[int, int]] = field(default_factory=list)  # (thread key, answer) of rewards from other parts

    @property
    def n_pairs(self) -> int:
        return int(self.chosen.numel() if self.counted is None else self.counted.sum())

    @property
    def n_terms(self) -> int:
        """The loss terms counted here: the sampled pairs, or the listwise terms."""
        return self.n_pairs if self.terms is None else int(self.terms.counted.sum())


def pair_cost(pair: TokenizedPair, layout: str) -> int:
    """Tokens a pair adds to a packed row (the padded layout is costed per batch, by its widest pair: plan_micro_batches)."""
    tokens = len(pair.chosen) + len(pair.rejected)
    return tokens - len(pair_group(pair.chosen, pair.rejected, pair.prefix).prompt) if layout == "shared_prompt" else tokens


def pair_costs(tokens: np.ndarray, widths: np.ndarray, prefix: np.ndarray, layout: str) -> np.ndarray:
    """`pair_cost` of many pairs from their length arrays (tokens = len(chosen) + len(rejected), width = the longer one,
    prefix = the common prefix), so a step can be planned without reading a pair: the prompt leaves each reply
    MIN_OWN_TOKENS, min(len) - MIN_OWN_TOKENS = tokens - width - MIN_OWN_TOKENS."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if layout != "shared_prompt":
        return tokens
    shortest = tokens - np.asarray(widths, dtype=np.int64)
    shared = np.clip(np.minimum(np.asarray(prefix, dtype=np.int64), shortest - MIN_OWN_TOKENS), 0, None)
    return tokens - shared


def collate(items: Sequence[TokenizedPair | Unit], layout: str = "packed", pad_id: int = 0,
            objective: Objective = PAIRS) -> MicroBatch:
    """One micro-batch of whole pairs (rewards in the order [c0, r0, c1, r1, ...]) or of thread units, in `layout`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown packing layout {layout!r}; choose from {LAYOUTS}")
    if not items:
        raise ValueError("a micro-batch needs at least one pair")
    units = [u if isinstance(u, Unit) else Unit(u.as_thread(), k, (0, 1), (0, 1)) for k, u in enumerate(items)]
    groups = [u.thread.group.subset(u.answers) for u in units]
    keys = [(u.key, a) for u in units for a in u.answers]
    lengths = [n for g in groups for n in g.lengths()]
    real = sum(lengths)
    if layout == "padded":
        ids, mask, pos, cols = pad_batch([g.sequence(i) for g in groups for i in range(len(g))], pad_id, side="right")
        batch = MicroBatch(ids, pos, [], torch.arange(len(lengths)) * ids.shape[1] + cols, *_empty(), layout,
                           attention_mask=mask, real_tokens=real, total_tokens=ids.numel(), pad_tokens=ids.numel() - real)
    else:
        ids, positions, segments, rewards = pack(groups, shared=layout == "shared_prompt")
        batch = MicroBatch(torch.tensor([ids], dtype=torch.long), torch.tensor([positions], dtype=torch.long), segments,
                           torch.tensor(rewards), *_empty(), layout, real_tokens=real, total_tokens=len(ids))
    _lay_out_loss(batch, units, keys, objective)
    return batch


def _empty():
    return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), None


def _lay_out_loss(batch: MicroBatch, units: Sequence[Unit], keys: list[tuple[int, int]], objective: Objective) -> None:
    """The index tensors the loss reads (module docstring): positions of each (thread, answer) in the rewards, own first,
    then the external ones a split thread needs from its other parts."""
    where = {k: i for i, k in enumerate(keys)}
    external: list[tuple[int, int]] = []
    threads: dict[int, tuple[TokenizedThread, bool]] = {}
    for u in units:
        for a in u.needed:
            if (u.key, a) not in where:
                where[(u.key, a)] = len(keys) + len(external)
                external.append((u.key, a))
        thread, first = threads.get(u.key, (u.thread, False))
        threads[u.key] = (thread, first or u.first)
    chosen, rejected, margins, counted = [], [], [], []
    winners, risks, weights, term_counted = [], [], [], []
    for key, (thread, first) in threads.items():
        for k, (c, r) in enumerate(thread.pairs):
            if (key, c) not in where or (key, r) not in where:
                continue  # a placeholder micro-batch holds one part of a split thread alone
            chosen.append(where[(key, c)])
            rejected.append(where[(key, r)])
            margins.append(thread.margins[k] if thread.margins is not None else None)
            counted.append(first)
        if objective.name != "pairs":
            for w, risk, weight in zip(*thread_terms(thread, objective)):
                if all((key, a) in where for a in risk):  # (as above)
                    winners.append(where[(key, w)])
                    risks.append([where[(key, a)] for a in risk])
                    weights.append(weight)
                    term_counted.append(first)
    batch.chosen, batch.rejected = torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)
    if any(m is not None for m in margins):
        batch.margin = torch.tensor([0.0 if m is None else m for m in margins])
    batch.counted = None if all(counted) else torch.tensor(counted, dtype=torch.bool)
    if objective.name != "pairs":
        width = max((len(r) for r in risks), default=1)
        risk = torch.tensor([r + [w] * (width - len(r)) for w, r in zip(winners, risks)], dtype=torch.long).reshape(-1, width)
        mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in risks], dtype=torch.bool).reshape(-1, width)
        batch.terms = Terms(torch.tensor(winners, dtype=torch.long), risk, mask, torch.tensor(weights, dtype=torch.float32),
                            torch.tensor(term_counted, dtype=torch.bool))
    batch.keys, batch.external = keys, external


# ---------------------------------------------------------------------------------------------------------------- model inputs
def resolve_attention(attention: str, layout: str) -> str:
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention path {attention!r}; choose from {ATTENTION}")
    if layout == "padded":
        return "padded"
    return "varlen" if attention == "auto" else attention


def model_inputs(batch: MicroBatch, attention: str, attn_implementation: str, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> dict:
    """Keyword arguments for `RewardModel.forward` (and through it the backbone) for one micro-batch."""
    path = resolve_attention(attention, batch.layout)
    if path == "padded":
        return dict(input_ids=batch.input_ids.to(device), position_ids=batch.position_ids.to(device),
                    reward_index=batch.reward_index.to(device), attention_mask=batch.attention_mask.to(device))
    return segment_inputs(batch.input_ids, batch.position_ids, batch.segments, batch.reward_index, path, attn_implementation,
                          dtype, device)


def use_attention(model, attention: str, layout: str, compute_dtype: torch.dtype | None = None) -> str:
    """Switch a RewardModel's backbone to the attention implementation the chosen path needs; returns its name.

    `auto` with plain packing takes flash-attention's varlen kernel when it can run (GPU, flash-attn, bf16), else worldpm's
    segment-wise SDPA; an explicit `model.attn_implementation=flash_attention_2` is kept as it is.
    """
    path = resolve_attention(attention, layout)
    current = model.config._attn_implementation
    if path != "varlen" or (current.startswith("flash_attention") and layout == "packed"):
        return current
    if attention == "auto" and layout == "packed" and flash_attention_available(model, compute_dtype):
        model.model.set_attn_implementation("flash_attention_2")
        return "flash_attention_2"
    register_varlen_attention()
    model.model.set_attn_implementation(VARLEN_IMPLEMENTATION)
    return VARLEN_IMPLEMENTATION


# ---------------------------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Item:
    """What the planner places: a draw's answers (all of them, or one part of a split thread) and what they cost."""

    draw: int
    answers: tuple[int, ...]
    cost: int        # tokens in a packed row
    width: int       # the longest sequence (padded layout)
    sequences: int
    part: int = 0
    parts: int = 1


def thread_parts(draw: int, needed: Sequence[int], prompt_len: int, own: Sequence[int], shares: Sequence[bool],
                 capacity: int, layout: str) -> list[Item]:
    """A thread's needed answers as one Item, or as parts that each fit `capacity` (in answer order, each keeping the
    prompt in the shared layout)."""
    full = [o + (prompt_len if s else 0) for o, s in zip(own, shares)]
    if layout == "shared_prompt":
        parts = split_lengths(own, shares, prompt_len, capacity)
    else:  # packed: the whole sequences' sum; padded: sequences x the widest
        parts, total, widest = [], 0, 0  # the open part's token sum and its widest sequence
        for i, n in enumerate(full):
            if parts and ((len(parts[-1]) + 1) * max(widest, n) if layout == "padded" else total + n) <= capacity:
                parts[-1].append(i)
                total, widest = total + n, max(widest, n)
            else:
                parts.append([i])
                total, widest = n, n
    items = []
    for k, part in enumerate(parts):
        own_tokens = sum(own[i] for i in part)
        cost = own_tokens + (prompt_len if any(shares[i] for i in part) else 0) if layout == "shared_prompt" else \
            sum(full[i] for i in part)
        items.append(Item(draw, tuple(needed[i] for i in part), cost, max(full[i] for i in part), len(part), k, len(parts)))
    return items


def parts_of(table, draw: int, row: int, layout: str, objective: Objective, capacity: int) -> list[Item]:
    """What the planner places for one draw: a pair is one item (both replies in one micro-batch: the loss needs both); a
    thread is one item, or its parts when it does not fit (`thread_parts`)."""
    if isinstance(table, ThreadTable):
        return thread_parts(draw, *table.answer_lengths(row, objective), capacity, layout)
    return [Item(draw, (0, 1), int(table.costs(layout)[row]), int(table.width[row]), 2)]


def plan_micro_batches(costs: Sequence[int], widths: Sequence[int], capacity: int, world_size: int, layout: str = "packed",
                       sequences: Sequence[int] | None = None,
                       bundles: Sequence[Sequence[int]] = ()) -> list[list[list[int] | None]]:
    """Group items into token-budget micro-batches and deal them to ranks: `plan[rank]` is that rank's list.

    - packed / shared_prompt: best-fit decreasing on each item's token cost, so rows are nearly full and nothing is padded;
    - padded: items sorted by their widest sequence and filled in order (load: sequences x widest), keeping padding small.
    `bundles`: items that must each be a micro-batch of its own, all of one bundle on one rank (a split thread's parts).
    Every rank gets the same number of micro-batches (ZeRO-3 gathers parameters collectively in every forward): bins are
    split until their count divides the world size, and where that is impossible a rank gets `None`, a placeholder micro-batch
    whose loss counts zero. Deterministic: every rank computes the same plan from the same lengths.
    """
    costs, widths = [int(c) for c in costs], [int(w) for w in widths]
    seqs = [2] * len(costs) if sequences is None else [int(s) for s in sequences]
    bundled = {i for b in bundles for i in b}
    free = [i for i in range(len(costs)) if i not in bundled]
    if layout == "padded":
        bins: list[list[int]] = []
        for i in sorted(free, key=lambda i: (-widths[i], i)):
            if bins and (sum(seqs[j] for j in bins[-1]) + seqs[i]) * widths[bins[-1][0]] <= capacity:
                bins[-1].append(i)
            else:
                bins.append([i])
        load = lambda b: sum(seqs[i] for i in b) * max(widths[i] for i in b)  # noqa: E731
    else:
        bins = [[free[i] for i in b] for b in best_fit([costs[i] for i in free], capacity)]
        load = lambda b: sum(costs[i] for i in b)  # noqa: E731
    units = [[[i] for i in b] for b in bundles]  # a unit of bins goes to one rank
    n_bins = len(bins) + len(bundled)
    while n_bins % world_size and any(len(b) > 1 for b in bins):
        biggest = max(range(len(bins)), key=lambda j: (len(bins[j]), load(bins[j]), -j))
        b = bins.pop(biggest)
        bins += [b[0::2], b[1::2]]
        n_bins += 1
    units += [[b] for b in bins]
    units.sort(key=lambda u: (-len(u), -sum(load(b) for b in u), u[0][0]))
    per_rank = max(-(-n_bins // world_size), max((len(u) for u in units), default=0))
    while True:  # deal whole units, the heaviest first, to the least-loaded rank with room
        plan: list[list[list[int] | None]] = [[] for _ in range(world_size)]
        loads = [0] * world_size
        for u in units:
            room = [r for r in range(world_size) if len(plan[r]) + len(u) <= per_rank]
            if not room:
                break
            rank = min(room, key=lambda r: (loads[r], r))
            plan[rank] += u
            loads[rank] += sum(load(b) for b in u)
        else:
            break
        per_rank += 1
    for r in range(world_size):
        plan[r] += [None] * (per_rank - len(plan[r]))
    return plan


@dataclass
class StepPlan:
    """This rank's share of a step (or an evaluation): its micro-batches in plan order, each with whether it is real (False:
    a placeholder repeating the first unit, whose loss counts zero), which of them are parts of split threads (computed first
    without gradient), how many such pre-pass forwards every rank makes, and the step's totals over all ranks."""

    batches: list[tuple[bool, MicroBatch]]
    prepass: list[int]
    prepass_slots: int
    weight: float  # the step's total loss weight: the loss is the weighted sum over its terms divided by this
    pairs: int     # the step's sampled pairs


def rank_micro_batches(tables: Sequence, draws: Sequence[tuple[int, int]], capacity: int, world_size: int, rank: int,
                       layout: str, pad_id: int, objective: Objective = PAIRS) -> StepPlan:
    """This rank's collated micro-batches of `draws` ((table, row) pairs of `tables`: worldpm.data.pairs.PairTable or
    worldpm.data.threads.ThreadTable), planned from the tables' length arrays only (every rank computes the same plan), so a
    rank reads just its own rows. Training plans each step's draws with it, evaluation the held-out rows."""
    items: list[Item] = []
    for d, (t, row) in enumerate(draws):
        items += parts_of(tables[t], d, row, layout, objective, capacity)
    split: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        if it.parts > 1:
            split.setdefault(it.draw, []).append(i)
    plan = plan_micro_batches([it.cost for it in items], [it.width for it in items], capacity, world_size, layout,
                              [it.sequences for it in items], list(split.values()))
    mine = plan[rank]
    needed = sorted({items[i].draw for mb in mine for i in (mb or [0])})
    by_table: dict[int, list[int]] = {}
    for d in needed:
        by_table.setdefault(draws[d][0], []).append(d)
    threads: dict[int, TokenizedThread] = {}
    for t, ds in by_table.items():  # one read per table
        threads.update(zip(ds, tables[t].threads([draws[d][1] for d in ds])))
    answers_of = {}
    for it in items:
        answers_of.setdefault(it.draw, []).extend(it.answers)

    def unit(i: int) -> Unit:
        it = items[i]
        return Unit(threads[it.draw], it.draw, it.answers, tuple(sorted(answers_of[it.draw])), it.part == 0)

    def placeholder() -> Unit:  # the first item alone, reading no other part
        return Unit(threads[items[0].draw], items[0].draw, items[0].answers, items[0].answers, False)

    batches = [(mb is not None, collate([unit(i) for i in mb] if mb else [placeholder()], layout, pad_id, objective))
               for mb in mine]
    in_parts = lambda mb: mb is not None and any(items[i].parts > 1 for i in mb)  # noqa: E731
    weights = [float(tables[t].weights(objective)[row]) for t, row in draws]
    pairs = int(sum(tables[t].n_pairs[row] for t, row in draws))
    return StepPlan(batches, [k for k, mb in enumerate(mine) if in_parts(mb)],
                    max(sum(in_parts(mb) for mb in r) for r in plan), float(sum(weights)), pairs)
