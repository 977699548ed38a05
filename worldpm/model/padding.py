"""Padding and length-sorted batching of token-id sequences for the reward reader.

The reward of a sequence is read at its last real token, located from lengths (never from a pad id), so left padding,
right padding and padding-free packing all read the same position.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from worldpm.errors import UserError


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """(input_ids, attention_mask, position_ids, reward_cols) for a list of id lists.

    position_ids count real tokens only (0..len-1 for each sequence), so a left-padded sequence sees the same positions as alone.
    """
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    width = int(lengths.max())
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        input_ids[i, span] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[i, span] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    reward_cols = lengths - 1 if side == "right" else torch.full_like(lengths, width - 1)
    return input_ids, attention_mask, position_ids, reward_cols


def length_sorted_batches(lengths: Sequence[int], max_tokens: int, max_batch_size: int | None = None,
                          max_padding: float | None = None) -> Iterator[list[int]]:
    """Indices grouped longest-first so each padded batch (rows x longest) stays within `max_tokens`; minimal padding.

    A sequence longer than max_tokens gets a batch of its own. `max_padding` (a fraction) also closes a batch before a sequence
    shorter than (1 - max_padding) x the batch's longest, so at most that share of a batch is padding: on a compute-bound
    device (a CPU) padding costs as much as real tokens, so a few more, tighter batches are cheaper than one padded one.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and ((len(batch) + 1) * width > max_tokens or (max_batch_size and len(batch) >= max_batch_size)
                      or (max_padding is not None and lengths[i] < (1 - max_padding) * width)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def resolve_max_padding(value, device) -> float | None:
    """`auto`: 0.2 on a CPU, where padding costs as much compute as real tokens; none on a GPU, where one larger forward is
    cheaper than several tight ones. Otherwise a fraction in [0, 1), or null for no bound."""
    if value is None or str(value) in ("null", "None"):
        return None
    if str(value) == "auto":
        return 0.2 if str(device).startswith("cpu") else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if not 0 <= value < 1:
        raise UserError(f"max_padding must be auto, null or a fraction in [0, 1), got {value!r}")
    return value
