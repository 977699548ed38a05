"""Writing an evaluation's outputs atomically: `rewards.parquet` (every response's reward and what it is compared with) and
`results.json` (the results contract; written last, so its presence marks a complete evaluation).

rewards.parquet has one row per response: benchmark, subtask, group, item (the benchmark's id), item_index, rule, response,
reward, beats (indices of the responses of the same item it is preferred to: the pairs), correct, style, reply_tokens,
seq_tokens, headers, list_items, bold. That is enough to recompute every accuracy, BT loss, best-of-K curve, RM-Bench matrix
and style fit in results.json.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from worldpm.atomic_dir import atomic_path, jsonable, write_json, write_text  # noqa: F401 (imported from here by eval modules)

REWARDS_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("subtask", pa.string()), ("group", pa.string()), ("item", pa.string()),
    ("item_index", pa.int32()), ("rule", pa.string()), ("response", pa.int32()), ("reward", pa.float64()),
    ("beats", pa.list_(pa.int32())), ("correct", pa.bool_()), ("style", pa.string()), ("reply_tokens", pa.int32()),
    ("seq_tokens", pa.int32()), ("headers", pa.int32()), ("list_items", pa.int32()), ("bold", pa.int32()),
])


def reward_rows(name: str, items, scored, features) -> list[dict]:
    rows = []
    for i, (item, r, tok, seq, feats) in enumerate(zip(items, scored.rewards, scored.reply_tokens, scored.seq_tokens, features)):
        beats: list[list[int]] = [[] for _ in item.responses]
        for a, b in item.pairs:
            beats[a].append(b)
        for j in range(len(item.responses)):
            rows.append({"benchmark": name, "subtask": item.subtask, "group": item.group, "item": item.uid, "item_index": i,
                         "rule": item.rule, "response": j, "reward": float(r[j]), "beats": beats[j],
                         "correct": None if item.correct is None else bool(item.correct[j]),
                         "style": None if item.styles is None else item.styles[j], "reply_tokens": int(tok[j]),
                         "seq_tokens": int(seq[j]), "headers": int(feats[j][1]), "list_items": int(feats[j][2]), "bold": int(feats[j][3])})
    return rows


def write_rewards(path: Path, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=REWARDS_SCHEMA), tmp, compression="zstd")
    return path
