"""The record contracts: PairRecord, the rows of every pair shard, and ThreadRecord, the rows of every thread shard, from
data_prep to training and evaluation.

PairRecord:

| column | type | meaning |
| id | str | stable hash of (source, thread, chosen id, rejected id); unique in a dataset |
| source | str | stackexchange, reddit, helpsteer2, synthetic, ... |
| domain | str | site (cooking.stackexchange.com), subreddit or subset |
| thread_id | str | question / post id; splits never put one thread on both sides |
| prompt | list<{role, content}> | the conversation before the reply (a forum question: one user turn, title + blank line + body) |
| chosen, rejected | str | the two replies, markdown |
| chosen_score, rejected_score | float | the evidence (net votes, ratings) |
| meta | str (JSON) | provenance: answer ids, urls, authors and licence for attribution, dates |

ThreadRecord (`collect output.threads=true`: one row per thread that has pairs in the pair shards, on the same side of the
split; training's `data.unit=threads` reads them):

| column | type | meaning |
| id | str | stable hash of (source, domain/thread id) |
| source, domain, thread_id | str | as in its PairRecords |
| prompt | list<{role, content}> | as in its PairRecords |
| answers | list<{id, text, score, meta}> | every usable answer, in the thread's order: id, markdown text, the score its pairs |
|         |                               | compare (pairs.score_rule), meta (JSON: the answer's block of a pair's meta: id, raw score, |
|         |                               | accepted, url, author, licence, dates) |
| pairs | list<{chosen: int32, rejected: int32}> | the thread's PairRecords, as indices into `answers` |
| meta | str (JSON) | the thread's provenance (question url, title, tags, dates, ...) and the score rule |

A dataset directory holds `train/*.parquet`, `test/*.parquet`, optionally `threads/train/*.parquet` and
`threads/test/*.parquet`, `stats.json` and `manifest.json` (written last: it marks the output complete). Pure pyarrow: no
torch, no worldpm.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
# the columns every record starts with: what identifies its thread, and the prompt
THREAD_COLUMNS = [("id", pa.string()), ("source", pa.string()), ("domain", pa.string()), ("thread_id", pa.string()),
                  ("prompt", pa.list_(MESSAGE))]
PAIR_SCHEMA = pa.schema(THREAD_COLUMNS + [("chosen", pa.string()), ("rejected", pa.string()), ("chosen_score", pa.float64()),
                                          ("rejected_score", pa.float64()), ("meta", pa.string())])
COLUMNS = tuple(PAIR_SCHEMA.names)
SPLITS = ("train", "test")
ANSWER = pa.struct([("id", pa.string()), ("text", pa.string()), ("score", pa.float64()), ("meta", pa.string())])
INDEX_PAIR = pa.struct([("chosen", pa.int32()), ("rejected", pa.int32())])
THREAD_SCHEMA = pa.schema(THREAD_COLUMNS + [("answers", pa.list_(ANSWER)), ("pairs", pa.list_(INDEX_PAIR)),
                                            ("meta", pa.string())])
THREADS_DIR = "threads"  # thread shards: <dataset>/threads/{train,test}/*.parquet


def pair_id(source: str, thread_id: str, chosen_id: str, rejected_id: str) -> str:
    """Stable across runs and machines: a hash of what identifies the pair, not of its text."""
    key = "\x1f".join((source, str(thread_id), str(chosen_id), str(rejected_id)))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def _check_common(row: Mapping, columns, strings) -> None:
    """The columns all present, `strings` strings, the prompt a non-empty list of {role, content}."""
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"missing columns {missing}")
    for col in strings:
        if not isinstance(row[col], str):
            raise ValueError(f"column {col!r} must be a string, got {type(row[col]).__name__}")
    if not row["prompt"] or not all(isinstance(m, Mapping) and set(m) == {"role", "content"} for m in row["prompt"]):
        raise ValueError("column 'prompt' must be a non-empty list of {role, content}")


def thread_record_id(source: str, thread_key: str) -> str:
    """Stable across runs and machines: a hash of the source and the thread's key (domain/thread id)."""
    return hashlib.sha256(f"{source}\x1f{thread_key}".encode("utf-8")).hexdigest()[:24]


def check_thread_record(row: Mapping) -> None:
    """Raise ValueError naming the first field that breaks the ThreadRecord contract."""
    _check_common(row, THREAD_SCHEMA.names, ("id", "source", "domain", "thread_id", "meta"))
    answers = row["answers"]
    if not isinstance(answers, list) or len(answers) < 2:
        raise ValueError("column 'answers' must list at least two answers")
    for k, a in enumerate(answers):
        if not (isinstance(a, Mapping) and isinstance(a.get("text"), str) and isinstance(a.get("id"), str)
                and isinstance(a.get("score"), (int, float)) and isinstance(a.get("meta"), str)):
            raise ValueError(f"answers[{k}] must be {{id: str, text: str, score: number, meta: JSON string}}")
        json.loads(a["meta"])
    if not row["pairs"]:
        raise ValueError("column 'pairs' must list at least one pair")
    for k, p in enumerate(row["pairs"]):
        c, r = p.get("chosen"), p.get("rejected")
        if not (isinstance(c, int) and isinstance(r, int) and 0 <= c < len(answers) and 0 <= r < len(answers) and c != r):
            raise ValueError(f"pairs[{k}] must index two different answers, got {p!r}")
    json.loads(row["meta"])


def check_record(row: Mapping) -> None:
    """Raise ValueError naming the first field that breaks the contract."""
    _check_common(row, COLUMNS, ("id", "source", "domain", "thread_id", "chosen", "rejected", "meta"))
    for col in ("chosen_score", "rejected_score"):
        if not isinstance(row[col], (int, float)):
            raise ValueError(f"column {col!r} must be a number")
    json.loads(row["meta"])


class ShardWriter:
    """Parquet shards of bounded size, `part-00000.parquet`, ...; each appears under its final name only once complete."""

    def __init__(self, directory: str | os.PathLike, max_rows_per_shard: int = 50_000, row_group_rows: int = 5_000,
                 schema: pa.Schema = PAIR_SCHEMA):
        self.directory = Path(directory)
        self.schema = schema
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_rows, self.row_group_rows = max_rows_per_shard, row_group_rows
        self.shards: list[Path] = []
        self.rows = 0
        self._buffer: list[Mapping] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self._tmp: Path | None = None

    def write(self, row: Mapping) -> None:
        self._buffer.append(row)
        self.rows += 1
        if len(self._buffer) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        while self._buffer:
            if self._writer is None:
                final = self.directory / f"part-{len(self.shards):05d}.parquet"
                self._tmp = final.with_name(f".{final.name}.tmp")
                self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
                self.shards.append(final)
                self._rows_in_shard = 0
            take = self._buffer[: self.max_rows - self._rows_in_shard]
            self._buffer = self._buffer[len(take):]
            self._writer.write_table(pa.Table.from_pylist(take, schema=self.schema))
            self._rows_in_shard += len(take)
            if self._rows_in_shard >= self.max_rows:
                self._close_shard()

    def _close_shard(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.shards[-1])
        self._writer, self._tmp = None, None

    def close(self) -> list[Path]:
        self._flush()
        if self._writer is not None:
            self._close_shard()
        return self.shards

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # a failed run leaves no file that looks complete
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
            self.shards.pop()


def write_pairs(rows: Iterable[Mapping], directory: str | os.PathLike, max_rows_per_shard: int = 50_000) -> list[Path]:
    """Write PairRecords to `directory/part-*.parquet` (one split). For fixtures and small sets."""
    with ShardWriter(directory, max_rows_per_shard) as writer:
        for row in rows:
            check_record(row)
            writer.write(row)
    return writer.shards


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so writers that infer the format from it still do) to write to; renamed to
    `path` when the block ends normally, removed when it raises. Readers see the old file or the new one, never half of one.
    The one implementation of this for data_prep and worldpm (worldpm.atomic_dir re-exports it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps_kw) -> None:
    """`json.dumps(obj, **dumps_kw)` and a newline, written atomically (stats.json, manifest.json: each caller keeps its format)."""
    _write_text_atomic(Path(path), json.dumps(obj, **dumps_kw) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, objs: Iterable[Any], **dumps_kw) -> None:
    """One `json.dumps(obj, **dumps_kw)` per line, written atomically (rejects.jsonl)."""
    _write_text_atomic(Path(path), "".join(json.dumps(obj, **dumps_kw) + "\n" for obj in objs))


def clear_output_dir(out: str | os.PathLike, names: Iterable[str]) -> None:
    """Make dataset directory `out`, removing the entries `names` from an earlier run; manifest.json goes first, so that from
    then on the directory does not look complete. Whether an existing directory may be reused is the caller's decision."""
    out = Path(out)
    (out / "manifest.json").unlink(missing_ok=True)
    for name in names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def dataset_problem(path: str | os.PathLike, split: str = "train") -> str | None:
    """What keeps `path` from being a PairRecord dataset with `split` shards, as the end of a sentence naming it; None if
    nothing does."""
    directory = Path(str(path)).expanduser()
    if not directory.is_dir():
        return "does not exist or is not a directory"
    if not any((directory / split).glob("*.parquet")):
        return f"has no {split}/*.parquet shards (expected a `worldpm collect` output directory)"
    return None


def write_threads(rows: Iterable[Mapping], directory: str | os.PathLike, max_rows_per_shard: int = 50_000) -> list[Path]:
    """Write ThreadRecords to `directory/part-*.parquet` (one split). For fixtures and small sets."""
    with ShardWriter(directory, max_rows_per_shard, schema=THREAD_SCHEMA) as writer:
        for row in rows:
            check_thread_record(row)
            writer.write(row)
    return writer.shards


def read_pairs(directory: str | os.PathLike, schema: pa.Schema = PAIR_SCHEMA) -> pa.Table:
    """All shards of one split directory as one table (small sets; training streams through `datasets`); `schema` =
    THREAD_SCHEMA reads a thread split."""
    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet shards in {directory}")
    return pa.concat_tables(pq.read_table(f, schema=schema) for f in files)
