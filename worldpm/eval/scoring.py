"""One scoring pass per benchmark with the shared reward reader (`RewardModel.score_ids`).

Every (prompt, reply) of the benchmark is rendered once, identical ones deduplicated (pairwise sets repeat replies), tokenised
in one call and scored in one `score_ids` call. The responses of one prompt — PPE's best-of-32, RM-Bench's six, RewardBench 2's
best-of-4, RMB's BoN lists, a pair's two replies — are scored with the prompt encoded once (shared-prompt rows,
worldpm.model.segments: the rewards each gets alone); `shared_prompt=False` scores every sequence in length-sorted padded
batches instead (at most `max_padding` of a batch padding, as `worldpm score`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tqdm.auto import tqdm

from worldpm.eval.items import Item, conversation

log = logging.getLogger("worldpm.eval")


@dataclass
class Scored:
    rewards: list[np.ndarray]       # per item, per response
    reply_tokens: list[np.ndarray]  # per item, per response: tokens of the reply alone (a style feature)
    seq_tokens: list[np.ndarray]    # per item, per response: tokens scored (prompt + reply + reward token, after truncation)
    n_sequences: int
    n_unique: int
    n_truncated: int
    seconds: float


def score_items(model, items: Sequence[Item], max_length: int | None = None, max_tokens: int = 16384, desc: str = "",
                max_batch_size: int = 64, max_padding: float | None = None, shared_prompt: bool = True) -> Scored:
    start = time.perf_counter()
    keys: dict[tuple[str, str], int] = {}
    convs, index = [], []
    for item in items:
        prompt_key = json.dumps(item.prompt, ensure_ascii=False, sort_keys=True)
        idx = []
        for reply in item.responses:
            key = (prompt_key, reply)
            if key not in keys:
                keys[key] = len(convs)
                convs.append(conversation(item.prompt, reply))
            idx.append(keys[key])
        index.append(np.asarray(idx, dtype=np.int64))
    ids = model.encode(convs, max_length)
    n_truncated = ids.truncated
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    with tqdm(total=int(lengths.sum()), desc=f"scoring {desc}".strip(), unit="tok", unit_scale=True, mininterval=2.0,
              disable=None) as bar:
        rewards = np.asarray(model.score_ids(ids, max_tokens=max_tokens, max_batch_size=max_batch_size, max_padding=max_padding,
                                             progress=bar.update, shared_prompt=shared_prompt), dtype=np.float64)

    replies = sorted({r for item in items for r in item.responses})
    reply_len = dict(zip(replies, (len(x) for x in model.tokenizer(replies, add_special_tokens=False)["input_ids"]))) if replies else {}
    seconds = time.perf_counter() - start
    n_seq = sum(len(it.responses) for it in items)
    log.info("%s: scored %d unique sequences (%d responses, %d truncated) in %.2f s", desc, len(ids), n_seq, n_truncated, seconds)
    return Scored(rewards=[rewards[ix] for ix in index],
                  reply_tokens=[np.array([reply_len[r] for r in it.responses], dtype=np.int64) for it in items],
                  seq_tokens=[lengths[ix] for ix in index], n_sequences=n_seq, n_unique=len(ids), n_truncated=n_truncated,
                  seconds=seconds)
