"""Writing an evaluation's outputs atomically: `rewards.parquet` (every response's reward and what it is compared with) and
`results.json` (the results contract; written last, so its presence marks a complete evaluation).

rewards.parquet has one row per response: benchmark, subtask, group, item (the benchmark's id), item_index, rule, response,
reward, beats (indices of the responses of the same item it is preferred to: the pairs), correct, style, reply_tokens,
seq_tokens, headers, list_items, bold. That is enough to recompute every accuracy, BT loss, best-of-K curve, RM-Bench matrix
and style fit in results.json.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REWARDS_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("subtask", pa.string()), ("group", pa.string()), ("item", pa.string()),
    ("item_index", pa.int32()), ("rule", pa.string()), ("response", pa.int32()), ("reward", pa.float64()),
    ("beats", pa.list_(pa.int32())), ("correct", pa.bool_()), ("style", pa.string()), ("reply_tokens", pa.int32()),
    ("seq_tokens", pa.int32()), ("headers", pa.int32()), ("list_items", pa.int32()), ("bold", pa.int32()),
])


def jsonable(obj: Any) -> Any:
    """Plain JSON: numpy scalars and arrays to Python, nan / inf to null."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json(path: Path, obj: Any) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(rows, schema=REWARDS_SCHEMA), tmp, compression="zstd")
    os.replace(tmp, path)
    return path
