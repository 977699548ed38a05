"""Attention that keeps the sequences of a packed row apart: the mask form and the segment-wise (varlen) form.

A packed row holds several sequences ("segments"); each sees itself causally and, optionally, some earlier segments of its row
(its context: a shared prompt). Two ways to compute that, chosen by worldpm.model.segments.segment_inputs:

- `segment_mask`: an explicit (rows, 1, T, T) mask from per-token segment ids and a segment visibility relation: any attention
  implementation that takes a 4D mask (sdpa, eager), at row_len^2 memory. The reference path.
- `worldpm_varlen` (`register_varlen_attention`): attention computed segment by segment with torch SDPA, so cost is sum(len^2),
  not row_len^2 (the replies of one prompt in one batched call); it reads the row's `SegmentLayout` from a
  `worldpm_segments` keyword that transformers passes through to attention.
  On a GPU with flash-attn, plain packing uses transformers' own flash-attention varlen kernel instead.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from worldpm.model.padding import length_sorted_batches

VARLEN_IMPLEMENTATION = "worldpm_varlen"


def segment_mask(seg: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(rows, 1, T, T) bool mask: query q sees key k iff k is not after q in the row and seg(q) may see seg(k).

    Works for any visibility relation (packing, shared prompts, a tree of turns) as long as a segment's context lies before it
    in the row. Padding (-1) sees only itself, so no softmax row is empty (SDPA would return NaN there); pads are never read.
    """
    rows, T = seg.shape
    q = seg[:, :, None]
    k = seg[:, None, :]
    allowed = visible[q.clamp(min=0), k.clamp(min=0)] & (q >= 0) & (k >= 0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = allowed & causal
    pad_self = (seg < 0)[:, :, None] & torch.eye(T, dtype=torch.bool)[None]
    return (allowed | pad_self)[:, None]


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool -> float additive mask (0 / most negative): eager attention adds the mask, so a bool mask would be wrong there."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


@dataclass
class SharedContext:
    """Segments that see the same context (the answers of one prompt), attended in one batched SDPA call: each member's
    queries padded to the longest, keys [context | its own], the context fully visible and its own part causal."""

    members: list[tuple[int, int]]  # (start, end) of each member
    context: list[tuple[int, int]]  # spans of the context
    index: torch.Tensor             # (M, Lmax) row positions of each member's tokens (padding repeats its last one)
    mask: torch.Tensor              # (M, 1, Lmax, Lc + Lmax) bool
    valid: torch.Tensor             # (M, Lmax) bool: real query positions
    positions: torch.Tensor         # the row positions of the valid queries, in `valid` order


@dataclass
class SegmentLayout:
    """A packed row's segments as worldpm_varlen attends them, built once per forward (`segment_layout`) and read by every
    layer: segments attended alone (causal on their own span; one with a context of its own), and groups sharing a context."""

    length: int
    alone: list[tuple[int, int, tuple[tuple[int, int], ...]]] = field(default_factory=list)
    shared: list[SharedContext] = field(default_factory=list)
    order: torch.Tensor | None = None  # row position of each output row, alone segments then shared calls, as computed


SHARED_MAX_PADDING = 0.2  # a batched call pads its members' queries to the longest: members at least 0.8 of its length


def segment_layout(spans: list[tuple[int, int, tuple[tuple[int, int], ...]]], device=None) -> SegmentLayout:
    """From (start, end, context spans) per segment: segments with the same context go in batched calls of similar lengths
    (at most SHARED_MAX_PADDING of a call's queries padding: forum answers are long-tailed); the rest one by one."""
    by_context: dict = {}
    for start, end, context in spans:
        by_context.setdefault(context, []).append((start, end))
    layout = SegmentLayout(max((end for _, end, _ in spans), default=0))
    for context, same in by_context.items():
        if not context:
            layout.alone += [(start, end, context) for start, end in same]
            continue
        for batch in length_sorted_batches([end - start for start, end in same], 2 ** 62, max_padding=SHARED_MAX_PADDING):
            members = [same[i] for i in batch]
            if len(members) == 1:
                layout.alone.append((*members[0], context))
            else:
                layout.shared.append(_shared_context(members, context, device))
    layout.order = torch.cat([torch.arange(start, end) for start, end, _ in layout.alone]
                             + [group.positions.cpu() for group in layout.shared]).argsort().to(device)
    return layout


def _shared_context(members: list[tuple[int, int]], context, device) -> SharedContext:
    lengths = torch.tensor([end - start for start, end in members])
    longest, n_ctx = int(lengths.max()), sum(b - a for a, b in context)
    offsets = torch.arange(longest)
    valid = offsets[None, :] < lengths[:, None]
    starts = torch.tensor([start for start, _ in members])
    index = starts[:, None] + torch.minimum(offsets[None, :], lengths[:, None] - 1)
    own = offsets[None, None, :] <= offsets[None, :, None]  # causal within a member (its padding columns: after it)
    own = own & valid[:, None, :]
    mask = torch.cat([torch.ones(len(members), longest, n_ctx, dtype=torch.bool), own], dim=2)[:, None]
    return SharedContext(members, list(context), index.to(device), mask.to(device), valid.to(device), index[valid].to(device))


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          worldpm_segments: SegmentLayout | None = None, **kwargs):
    """Attention segment by segment with torch SDPA: the CPU (and fallback GPU) varlen path.

    query/key/value are (1, heads, T, head_dim) for one packed row. A segment without context runs causal SDPA on its own span;
    the replies of one shared prompt run as one batch, each attending to [prompt keys | its own keys] with the prompt fully
    visible and itself causal. Without `worldpm_segments` (e.g. scoring padded batches) this is plain SDPA with transformers'
    mask.
    """
    kwargs.pop("is_causal", None)
    if worldpm_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("worldpm_varlen attention takes one packed row")
    layout = worldpm_segments
    outputs = []  # (rows, heads, head_dim) pieces in layout order; layout.order puts them back in row order
    for start, end, context in layout.alone:
        q = query[:, :, start:end]
        if not context:
            o, _ = sdpa_attention_forward(module, q, key[:, :, start:end], value[:, :, start:end], None, dropout=dropout,
                                          scaling=scaling, is_causal=True)
        else:
            k = torch.cat([key[:, :, a:b] for a, b in context] + [key[:, :, start:end]], dim=2)
            v = torch.cat([value[:, :, a:b] for a, b in context] + [value[:, :, start:end]], dim=2)
            n_ctx = k.shape[2] - (end - start)
            mask = torch.ones(end - start, k.shape[2], dtype=torch.bool, device=q.device).tril(diagonal=n_ctx)
            o, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling, is_causal=False)
        outputs.append(o[0])
    for group in layout.shared:
        m = group.index.shape[0]
        q = query[0][:, group.index].transpose(0, 1)  # (M, heads, Lmax, head_dim)
        ctx_k = torch.cat([key[0][:, a:b] for a, b in group.context], dim=1)  # (kv heads, Lc, head_dim)
        ctx_v = torch.cat([value[0][:, a:b] for a, b in group.context], dim=1)
        k = torch.cat([ctx_k.unsqueeze(0).expand(m, -1, -1, -1), key[0][:, group.index].transpose(0, 1)], dim=2)
        v = torch.cat([ctx_v.unsqueeze(0).expand(m, -1, -1, -1), value[0][:, group.index].transpose(0, 1)], dim=2)
        o, _ = sdpa_attention_forward(module, q, k, v, group.mask, dropout=dropout, scaling=scaling, is_causal=False)
        outputs.append(o[group.valid])  # o: (M, Lmax, heads, head_dim)
    return torch.cat(outputs).index_select(0, layout.order).unsqueeze(0), None


def _varlen_mask(*args, attention_mask=None, **kwargs):
    """Masks for `worldpm_varlen`: none for packed rows (segments carry the structure, so no T x T mask is ever built);
    transformers' SDPA mask when a 2D padding mask is given (scoring padded batches with the same model)."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_varlen_attention() -> str:
    AttentionInterface.register(VARLEN_IMPLEMENTATION, varlen_sdpa_attention)
    AttentionMaskInterface.register(VARLEN_IMPLEMENTATION, _varlen_mask)
    return VARLEN_IMPLEMENTATION


def flash_attention_available(model, compute_dtype: torch.dtype | None = None) -> bool:
    """flash-attn installed, a GPU, and 16-bit activations (the kernel's requirement): 16-bit weights, or fp32 weights run
    under 16-bit autocast (`compute_dtype`; transformers then hands the kernel autocast's dtype)."""
    dtype = compute_dtype if compute_dtype in (torch.bfloat16, torch.float16) else model.model.dtype
    return (torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
            and dtype in (torch.bfloat16, torch.float16))
