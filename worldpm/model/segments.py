"""Rows of segments: several token sequences in one row, a prompt shared by many replies stored once.

A packed row is a list of `Segment`s: contiguous spans, each of which may also see some *earlier* segments of its row (its
context). A prompt with N replies is laid out as [prompt][reply 1][reply 2]...: each reply sees the prompt and itself, and its
position ids continue from the prompt's end, so it gets exactly the hidden states, hence the reward, it would get alone. This
is the one layout of training (worldpm.data.packing: the two replies of a pair, or every answer of a forum thread) and of
scoring (RewardModel.score_ids: N responses to one prompt, the prompt encoded once).

- `prompt_group(sequences)`: sequences of one prompt split into the prompt (their longest common token prefix), stored once,
  and each one's own tokens. A sequence shares the prompt only if it starts with it and keeps `MIN_OWN_TOKENS` of its own (the
  reward token and the one before it: either readout then reads inside the reply); a sequence truncated by `max_length` lost
  the start of its prompt, so it is left out of the prefix (`reference`) and stands alone.
- `split_group`: a group larger than a row's budget becomes several, each keeping the prompt.
- `pack`: groups into one row (ids, positions, segments, reward positions); `best_fit`: items into budget-bounded bins.
- `segment_inputs`: the forward's keyword arguments for a packed row, by attention path (`varlen`: attention per segment,
  cost sum(len^2); `block_mask`: an explicit 4D mask, any implementation taking one); `segment_attention` readies a model.
"""
from __future__ import annotations

import bisect
import contextlib
from dataclasses import dataclass
from typing import Hashable, Iterator, Sequence

import torch

from worldpm.model.attention import VARLEN_IMPLEMENTATION, additive, register_varlen_attention, segment_layout, segment_mask

MIN_OWN_TOKENS = 2  # a reply keeps its reward token and the token before it (readout before_reward_token) as its own


@dataclass(frozen=True)
class Segment:
    """A contiguous span [start, start+length) of a row; it sees itself causally and all of its `context` segments."""

    row: int  # the row of its micro-batch (packed layouts use one row, 0)
    start: int
    length: int
    context: tuple[int, ...] = ()  # indices (into the row's segment list) of earlier segments of the same row

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class PromptGroup:
    """Sequences sharing a prompt: `prompt` stored once, each member's `own` tokens after it (`shares`), or its whole sequence
    (a member that does not share). Member i's sequence is `prompt + own[i]` if `shares[i]` else `own[i]`."""

    prompt: tuple[int, ...]
    own: tuple[tuple[int, ...], ...]
    shares: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.own)

    def sequence(self, i: int) -> list[int]:
        return list(self.prompt) + list(self.own[i]) if self.shares[i] else list(self.own[i])

    def lengths(self) -> list[int]:
        """Each member's whole sequence length."""
        p = len(self.prompt)
        return [len(o) + (p if s else 0) for o, s in zip(self.own, self.shares)]

    @property
    def cost(self) -> int:
        """Tokens the group takes in a shared-prompt row (the prompt once)."""
        return (len(self.prompt) if any(self.shares) else 0) + sum(len(o) for o in self.own)

    def subset(self, members: Sequence[int]) -> "PromptGroup":
        return PromptGroup(self.prompt, tuple(self.own[i] for i in members), tuple(self.shares[i] for i in members))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prompt_group(sequences: Sequence[Sequence[int]], reference: Sequence[bool] | None = None) -> PromptGroup:
    """Split sequences of one prompt into the shared prompt and their own tokens (module docstring). The prompt is the longest
    common prefix of the `reference` sequences (default: all; pass the untruncated ones); a sequence shares it only if it
    starts with it and keeps at least MIN_OWN_TOKENS own tokens. Correct for any input: a member that does not start with the
    prompt is simply scored alone."""
    seqs = [tuple(map(int, s)) for s in sequences]
    ref = [s for s, r in zip(seqs, reference if reference is not None else [True] * len(seqs)) if r]
    if len(seqs) < 2 or not ref:
        return PromptGroup((), tuple(seqs), (False,) * len(seqs))
    p = min(len(s) for s in ref) - MIN_OWN_TOKENS  # the prompt leaves every reference sequence its own last tokens
    for s in ref[1:]:
        if p <= 0:
            break
        p = min(p, common_prefix_length(ref[0], s))
    p = max(p, 0)
    prompt = ref[0][:p]
    shares = tuple(p > 0 and len(s) - p >= MIN_OWN_TOKENS and s[:p] == prompt for s in seqs)
    if sum(shares) < 2:  # a prompt shared by one sequence saves nothing
        return PromptGroup((), tuple(seqs), (False,) * len(seqs))
    return PromptGroup(prompt, tuple(s[p:] if sh else s for s, sh in zip(seqs, shares)), shares)


def pair_group(chosen: Sequence[int], rejected: Sequence[int], prefix: int) -> PromptGroup:
    """`prompt_group([chosen, rejected])` from the pair's known common prefix (stored when it was tokenised), without
    comparing the sequences again: the prompt leaves each reply MIN_OWN_TOKENS, and two sequences share it or neither does."""
    c, r = tuple(map(int, chosen)), tuple(map(int, rejected))
    p = max(0, min(int(prefix), len(c) - MIN_OWN_TOKENS, len(r) - MIN_OWN_TOKENS))
    if p == 0:
        return PromptGroup((), (c, r), (False, False))
    return PromptGroup(c[:p], (c[p:], r[p:]), (True, True))


def split_lengths(own: Sequence[int], shares: Sequence[bool], prompt_len: int, capacity: int) -> list[list[int]]:
    """Member indices of the parts of a prompt group (own lengths, which share, the prompt's length) that fit a row of
    `capacity` tokens each, in member order, each part keeping the prompt; a member too large alone gets a part of its own."""
    parts: list[list[int]] = []
    cost, has_prompt = 0, False
    for i, (n, shared) in enumerate(zip(own, shares)):
        need = n + (prompt_len if shared and not has_prompt else 0)
        if parts and cost + need <= capacity:
            parts[-1].append(i)
            cost, has_prompt = cost + need, has_prompt or shared
        else:
            parts.append([i])
            cost, has_prompt = n + (prompt_len if shared else 0), shared
    return parts


def split_group(group: PromptGroup, capacity: int) -> list[list[int]]:
    """`split_lengths` of a group."""
    return split_lengths([len(o) for o in group.own], group.shares, len(group.prompt), capacity)


def shared_prompt_groups(sequences: Sequence[Sequence[int]], keys: Sequence[Hashable | None],
                         capacity: int) -> list[tuple[list[int], PromptGroup]]:
    """The sequences worth scoring with a shared prompt: (indices, PromptGroup) per part of every set of equal `keys`
    (None: alone) whose members do share a prefix, parts of at most `capacity` tokens (`split_group`). Sequences left out
    are scored alone. Keys only propose groups: whether a sequence shares is decided on its tokens (`prompt_group`)."""
    by_key: dict = {}
    for i, key in enumerate(keys):
        if key is not None:
            by_key.setdefault(key, []).append(i)
    out = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        group = prompt_group([sequences[i] for i in members])
        if not any(group.shares):
            continue
        for part in split_group(group, capacity):
            if any(group.shares[j] for j in part):
                out.append(([members[j] for j in part], group.subset(part)))
    return out


def pack(groups: Sequence[PromptGroup], shared: bool = True, row: int = 0):
    """One row of groups: (ids, positions, segments, reward positions), rewards in group and member order. `shared=False`
    lays every member's whole sequence out alone (plain packing)."""
    ids: list[int] = []
    positions: list[int] = []
    segments: list[Segment] = []
    rewards: list[int] = []

    def add(tokens: Sequence[int], first_position: int, context: tuple[int, ...]) -> int:
        segments.append(Segment(row, len(ids), len(tokens), context))
        ids.extend(tokens)
        positions.extend(range(first_position, first_position + len(tokens)))
        return len(segments) - 1

    for group in groups:
        prompt = add(group.prompt, 0, ()) if shared and any(group.shares) else None
        for i, (own, shares) in enumerate(zip(group.own, group.shares)):
            if prompt is not None and shares:
                add(own, len(group.prompt), (prompt,))
            else:
                add(group.sequence(i), 0, ())
            rewards.append(len(ids) - 1)
    return ids, positions, segments, rewards


def best_fit(costs: Sequence[int], capacity: int) -> list[list[int]]:
    """Items into bins of at most `capacity` (an item larger than that gets a bin of its own): best-fit decreasing, so bins
    are nearly full. Deterministic (ties broken by index)."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        pos = bisect.bisect_left(free, (costs[i], -1))
        if pos < len(free):
            remaining, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (remaining - costs[i], b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - costs[i], len(bins) - 1))
    return bins


# ---------------------------------------------------------------------------------------------------------------- masks
def segment_ids(shape: tuple[int, int], segments: Sequence[Segment]) -> torch.Tensor:
    """(rows, T) segment index of each token; -1 for padding."""
    seg = torch.full(shape, -1, dtype=torch.long)
    for i, s in enumerate(segments):
        seg[s.row, s.start:s.end] = i
    return seg


def visibility(segments: Sequence[Segment]) -> torch.Tensor:
    """(S, S) bool: segment i may attend to segment j (itself, and its context)."""
    vis = torch.eye(len(segments), dtype=torch.bool)
    for i, s in enumerate(segments):
        for j in s.context:
            vis[i, j] = True
    return vis


def segment_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor, segments: Sequence[Segment], reward_index: torch.Tensor,
                   attention: str, attn_implementation: str, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> dict:
    """Keyword arguments for `RewardModel.forward` on packed rows, by attention path: `varlen` (flash-attention's varlen
    kernel for plain packing under flash_attention_2, else worldpm_varlen: SDPA per segment) or `block_mask`."""
    kwargs = dict(input_ids=input_ids.to(device), position_ids=position_ids.to(device), reward_index=reward_index.to(device))
    if attention == "block_mask":
        mask = segment_mask(segment_ids(tuple(input_ids.shape), segments), visibility(segments))
        kwargs["attention_mask"] = (additive(mask, dtype) if attn_implementation == "eager" else mask).to(device)
    elif attn_implementation.startswith("flash_attention") and not any(s.context for s in segments):
        lengths = torch.tensor([0] + [s.length for s in segments], dtype=torch.int32)
        cu = lengths.cumsum(0, dtype=torch.int32).to(device)
        longest = int(lengths.max())
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    else:
        if attn_implementation != VARLEN_IMPLEMENTATION:
            raise ValueError(f"attention=varlen needs attn_implementation={VARLEN_IMPLEMENTATION} (or flash_attention_2 for "
                             f"plain packing), got {attn_implementation!r}")
        kwargs["worldpm_segments"] = segment_layout([(s.start, s.end, tuple((segments[c].start, segments[c].end)
                                                                            for c in s.context)) for s in segments], device)
    return kwargs


@contextlib.contextmanager
def segment_attention(model) -> Iterator[tuple[str, str]]:
    """(attention path, implementation) for scoring shared-prompt rows with `model`, for the time of the block: an eager model
    keeps eager and takes the block mask; otherwise the backbone runs worldpm_varlen and gets its own implementation back
    afterwards (no side effect on later calls)."""
    current = model.config._attn_implementation
    if current == "eager":
        yield "block_mask", current
        return
    if current == VARLEN_IMPLEMENTATION:
        yield "varlen", current
        return
    register_varlen_attention()
    model.model.set_attn_implementation(VARLEN_IMPLEMENTATION)
    try:
        yield "varlen", VARLEN_IMPLEMENTATION
    finally:
        model.model.set_attn_implementation(current)
