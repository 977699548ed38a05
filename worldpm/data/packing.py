"""Micro-batches of preference pairs without padding, and the attention path that keeps their sequences apart.

Three layouts of a micro-batch (`data.packing`), all read by the same `RewardModel.forward`:

- `packed` (default): every sequence of every pair back to back in ONE row, position ids restarting at 0 per sequence, no pad.
- `shared_prompt`: a pair's chosen and rejected sequences share their common token prefix (the rendered prompt), stored once;
  each reply sees the prompt and itself only, and its position ids continue after the prompt, so every reply gets exactly the
  hidden states it would get alone. Forum threads have many answers per question; the layout takes any number of replies.
- `padded`: one right-padded row per sequence with a 2D attention mask (what TRL and most trainers do); the fallback.

A packed row is a list of `Segment`s: contiguous spans, each of which may also see some *earlier* segments of its row (its
context: a shared prompt). That one description drives every attention path (`data.attention`):

- `varlen`: attention is computed per segment, so cost is sum(len^2), not row_len^2. On GPU with flash-attn installed and
  `model.attn_implementation=flash_attention_2`, transformers' varlen kernel runs from `cu_seq_lens_*` (plain packing); otherwise
  worldpm's `worldpm_varlen` attention (worldpm.model.attention) runs torch SDPA segment by segment, a shared prompt included.
- `block_mask`: an explicit (rows, 1, T, T) mask built from segment ids and the visibility relation (`segment_mask`): any
  layout, any attention implementation that takes a 4D mask (sdpa, eager), at row_len^2 memory. The reference path.

The two replies of a pair are always in the same micro-batch: the loss needs both rewards. `rank_micro_batches` is the one
planner of a step's (or an evaluation's) pairs into this rank's collated micro-batches.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from worldpm.config.schemas import ATTENTION, LAYOUTS
from worldpm.model.attention import (VARLEN_IMPLEMENTATION, additive, flash_attention_available, register_varlen_attention,
                                     segment_mask)
from worldpm.model.padding import pad_batch



@dataclass(frozen=True)
class TokenizedPair:
    chosen: Sequence[int]
    rejected: Sequence[int]
    prefix: int = 0  # length of the common token prefix (the rendered prompt); used by the shared_prompt layout
    margin: float | None = None


@dataclass(frozen=True)
class Segment:
    """A contiguous span [start, start+length) of a row; it sees itself causally and all of its `context` segments."""

    row: int  # the micro-batch row; the packed layouts put a micro-batch in one row (0), kept for multi-row packing
    start: int
    length: int
    context: tuple[int, ...] = ()  # indices (into MicroBatch.segments) of earlier segments of the same row

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (rows, T)
    position_ids: torch.Tensor  # (rows, T)
    segments: list[Segment]  # empty for the padded layout
    reward_index: torch.Tensor  # flat positions into rows*T: one per scored sequence
    chosen: torch.Tensor  # (pairs,) indices into the rewards
    rejected: torch.Tensor  # (pairs,)
    margin: torch.Tensor | None
    layout: str
    attention_mask: torch.Tensor | None = None  # (rows, T) for the padded layout
    real_tokens: int = 0  # tokens of the scored sequences (a shared prompt counts once per reply): the work done
    total_tokens: int = 0  # positions actually processed, pads included
    pad_tokens: int = 0

    @property
    def n_pairs(self) -> int:
        return int(self.chosen.numel())


def pair_cost(pair: TokenizedPair, layout: str) -> int:
    """Tokens a pair adds to a packed row (the padded layout is costed per batch, by its widest pair: plan_micro_batches)."""
    if layout == "shared_prompt":
        p = shared_prefix(pair)
        return len(pair.chosen) + len(pair.rejected) - p
    return len(pair.chosen) + len(pair.rejected)


def pair_costs(tokens: np.ndarray, widths: np.ndarray, prefix: np.ndarray, layout: str) -> np.ndarray:
    """`pair_cost` of many pairs from their length arrays (tokens = len(chosen) + len(rejected), width = the longer one,
    prefix = the common prefix), so a step can be planned without reading a pair: min(len - 1) = tokens - width - 1."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if layout != "shared_prompt":
        return tokens
    shared = np.clip(np.minimum(np.asarray(prefix, dtype=np.int64), tokens - np.asarray(widths, dtype=np.int64) - 1), 0, None)
    return tokens - shared


def shared_prefix(pair: TokenizedPair) -> int:
    """The shared prefix, leaving each reply at least its reward token (a reply must own the position its reward is read at)."""
    return max(0, min(pair.prefix, len(pair.chosen) - 1, len(pair.rejected) - 1))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def collate(pairs: Sequence[TokenizedPair], layout: str = "packed", pad_id: int = 0) -> MicroBatch:
    """One micro-batch of whole pairs in the given layout. Rewards come back in the order [c0, r0, c1, r1, ...]."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown packing layout {layout!r}; choose from {LAYOUTS}")
    if not pairs:
        raise ValueError("a micro-batch needs at least one pair")
    n = len(pairs)
    chosen, rejected = torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)
    margins = [p.margin for p in pairs]
    margin = None if all(m is None for m in margins) else torch.tensor([0.0 if m is None else m for m in margins])
    real = sum(len(p.chosen) + len(p.rejected) for p in pairs)

    if layout == "padded":
        seqs = [s for p in pairs for s in (p.chosen, p.rejected)]
        ids, mask, pos, cols = pad_batch(seqs, pad_id, side="right")
        reward_index = torch.arange(len(seqs)) * ids.shape[1] + cols
        return MicroBatch(ids, pos, [], reward_index, chosen, rejected, margin, layout, attention_mask=mask,
                          real_tokens=real, total_tokens=ids.numel(), pad_tokens=ids.numel() - real)

    tokens: list[int] = []
    positions: list[int] = []
    segments: list[Segment] = []
    reward_index: list[int] = []

    def add(ids: Sequence[int], first_position: int, context: tuple[int, ...]) -> int:
        segments.append(Segment(0, len(tokens), len(ids), context))
        tokens.extend(ids)
        positions.extend(range(first_position, first_position + len(ids)))
        return len(segments) - 1

    for pair in pairs:
        if layout == "shared_prompt" and (p := shared_prefix(pair)) > 0:
            prompt = add(pair.chosen[:p], 0, ())
            for reply in (pair.chosen, pair.rejected):
                add(reply[p:], p, (prompt,))
                reward_index.append(len(tokens) - 1)
        else:
            for reply in (pair.chosen, pair.rejected):
                add(reply, 0, ())
                reward_index.append(len(tokens) - 1)
    ids = torch.tensor([tokens], dtype=torch.long)
    return MicroBatch(ids, torch.tensor([positions], dtype=torch.long), segments, torch.tensor(reward_index), chosen, rejected,
                      margin, layout, real_tokens=real, total_tokens=len(tokens))


# ---------------------------------------------------------------------------------------------------------------- masks
def segment_ids(batch: MicroBatch) -> torch.Tensor:
    """(rows, T) segment index of each token; -1 for padding."""
    seg = torch.full(batch.input_ids.shape, -1, dtype=torch.long)
    for i, s in enumerate(batch.segments):
        seg[s.row, s.start:s.end] = i
    return seg


def visibility(segments: Sequence[Segment]) -> torch.Tensor:
    """(S, S) bool: segment i may attend to segment j (itself, and its context)."""
    vis = torch.eye(len(segments), dtype=torch.bool)
    for i, s in enumerate(segments):
        for j in s.context:
            vis[i, j] = True
    return vis


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
    kwargs = dict(input_ids=batch.input_ids.to(device), position_ids=batch.position_ids.to(device),
                  reward_index=batch.reward_index.to(device))
    if path == "padded":
        kwargs["attention_mask"] = batch.attention_mask.to(device)
    elif path == "block_mask":
        mask = segment_mask(segment_ids(batch), visibility(batch.segments))
        kwargs["attention_mask"] = (additive(mask, dtype) if attn_implementation == "eager" else mask).to(device)
    elif attn_implementation.startswith("flash_attention") and not any(s.context for s in batch.segments):
        lengths = torch.tensor([0] + [s.length for s in batch.segments], dtype=torch.int32)
        cu = lengths.cumsum(0, dtype=torch.int32).to(device)
        longest = int(lengths.max())
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    else:
        if attn_implementation != VARLEN_IMPLEMENTATION:
            raise ValueError(f"attention=varlen needs attn_implementation={VARLEN_IMPLEMENTATION} (or flash_attention_2 for "
                             f"plain packing), got {attn_implementation!r}")
        kwargs["worldpm_segments"] = [(s.start, s.end, tuple((batch.segments[c].start, batch.segments[c].end) for c in s.context))
                                      for s in batch.segments]
    return kwargs


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
def plan_micro_batches(costs: Sequence[int], widths: Sequence[int], capacity: int, world_size: int,
                       layout: str = "packed") -> list[list[list[int] | None]]:
    """Group one step's pairs into token-budget micro-batches and deal them to ranks: `plan[rank]` is that rank's list.

    - packed / shared_prompt: best-fit decreasing on each pair's token cost (`pair_cost(s)`), so rows are nearly full and
      nothing is padded;
    - padded: pairs sorted by their longer reply and filled in order, which keeps each batch's padding small.
    Every rank gets the same number of micro-batches (ZeRO-3 gathers parameters collectively in every forward): bins are
    split until their count divides the world size, and where that is impossible (fewer pairs than ranks) a rank gets `None`,
    a placeholder micro-batch whose loss counts zero. Deterministic: every rank computes the same plan from the same lengths.
    """
    n = len(costs)
    costs = [int(c) for c in costs]
    widths = [int(w) for w in widths]
    if layout == "padded":
        order = sorted(range(n), key=lambda i: (-widths[i], i))
        bins: list[list[int]] = []
        for i in order:
            if bins and 2 * (len(bins[-1]) + 1) * widths[bins[-1][0]] <= capacity:
                bins[-1].append(i)
            else:
                bins.append([i])
        load = lambda b: 2 * len(b) * max(widths[i] for i in b)  # noqa: E731
    else:
        order = sorted(range(n), key=lambda i: (-costs[i], i))
        bins, free = [], []  # free: sorted (remaining capacity, bin index)
        for i in order:
            pos = bisect.bisect_left(free, (costs[i], -1))
            if pos < len(free):
                remaining, b = free.pop(pos)
                bins[b].append(i)
                bisect.insort(free, (remaining - costs[i], b))
            else:
                bins.append([i])
                bisect.insort(free, (capacity - costs[i], len(bins) - 1))
        load = lambda b: sum(costs[i] for i in b)  # noqa: E731
    while len(bins) % world_size and any(len(b) > 1 for b in bins):
        biggest = max(range(len(bins)), key=lambda j: (len(bins[j]), load(bins[j]), -j))
        b = bins.pop(biggest)
        bins += [b[0::2], b[1::2]]
    per_rank = -(-len(bins) // world_size)
    plan: list[list[list[int] | None]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for b in sorted(bins, key=lambda b: (-load(b), b[0])):
        rank = min((r for r in range(world_size) if len(plan[r]) < per_rank), key=lambda r: (loads[r], r))
        plan[rank].append(b)
        loads[rank] += load(b)
    for r in range(world_size):
        plan[r] += [None] * (per_rank - len(plan[r]))
    return plan


def rank_micro_batches(tables: Sequence, draws: Sequence[tuple[int, int]], capacity: int, world_size: int, rank: int,
                       layout: str, pad_id: int) -> list[tuple[bool, MicroBatch]]:
    """This rank's collated micro-batches of the pairs `draws` ((table, row) pairs of `tables`, worldpm.data.pairs.PairTable),
    in plan order, each with whether it is real (False: a placeholder repeating the first pair, whose loss counts zero).

    The plan comes from the tables' length arrays only (every rank computes the same plan), so a rank reads just its own pairs.
    Training plans each step's draws with it, evaluation the held-out rows.
    """
    costs = np.array([tables[t].costs(layout)[row] for t, row in draws], dtype=np.int64)
    widths = np.array([tables[t].width[row] for t, row in draws], dtype=np.int64)
    mine = plan_micro_batches(costs, widths, capacity, world_size, layout)[rank]
    needed = sorted({i for mb in mine for i in (mb or [0])})
    by_table: dict[int, list[int]] = {}
    for i in needed:
        by_table.setdefault(draws[i][0], []).append(i)
    pairs = {}
    for t, idx in by_table.items():  # one read per table
        pairs.update(zip(idx, tables[t].pairs([draws[i][1] for i in idx])))
    return [(mb is not None, collate([pairs[i] for i in (mb or [0])], layout, pad_id)) for mb in mine]
