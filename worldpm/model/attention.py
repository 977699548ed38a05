"""Attention that keeps the sequences of a packed row apart: the mask form and the segment-wise (varlen) form.

A packed row holds several sequences ("segments"); each sees itself causally and, optionally, some earlier segments of its row
(its context: a shared prompt). Two ways to compute that, chosen by worldpm.data.packing.model_inputs:

- `segment_mask`: an explicit (rows, 1, T, T) mask from per-token segment ids and a segment visibility relation: any attention
  implementation that takes a 4D mask (sdpa, eager), at row_len^2 memory. The reference path.
- `worldpm_varlen` (`register_varlen_attention`): attention computed segment by segment with torch SDPA, so cost is sum(len^2),
  not row_len^2; it reads the segments from a `worldpm_segments` keyword that transformers passes through to attention.
  On a GPU with flash-attn, plain packing uses transformers' own flash-attention varlen kernel instead.
"""
from __future__ import annotations

import importlib.util

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

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


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          worldpm_segments=None, **kwargs):
    """Attention segment by segment with torch SDPA: the CPU (and fallback GPU) varlen path.

    query/key/value are (1, heads, T, head_dim) for one packed row. A segment without context runs causal SDPA on its own span;
    a reply with a shared prompt attends to [prompt keys | its own keys] with the prompt fully visible and itself causal.
    Without `worldpm_segments` (e.g. scoring padded batches) this is plain SDPA with transformers' mask.
    """
    kwargs.pop("is_causal", None)
    if worldpm_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("worldpm_varlen attention takes one packed row")
    outputs = []
    for start, end, context in worldpm_segments:
        q = query[:, :, start:end]
        if not context:
            out, _ = sdpa_attention_forward(module, q, key[:, :, start:end], value[:, :, start:end], None, dropout=dropout,
                                            scaling=scaling, is_causal=True)
        else:
            k = torch.cat([key[:, :, a:b] for a, b in context] + [key[:, :, start:end]], dim=2)
            v = torch.cat([value[:, :, a:b] for a, b in context] + [value[:, :, start:end]], dim=2)
            n_ctx = k.shape[2] - (end - start)
            mask = torch.ones(end - start, k.shape[2], dtype=torch.bool, device=q.device).tril(diagonal=n_ctx)
            out, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling, is_causal=False)
        outputs.append(out)  # (1, len, heads, head_dim)
    return torch.cat(outputs, dim=1), None


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
