"""`worldpm score`: rewards for a file of conversations or preference pairs, with the same reader as training and evaluation.

Inputs (`input=`):
- conversations: jsonl (one per line: a list of {role, content}, or an object with `conversation`/`messages` and optional `id`)
  or parquet with a `conversation` or `messages` column;
- preference pairs: PairRecord shards (a directory of `*.parquet`, or a collect output directory, read at `split=`), a
  PairRecord parquet file, or jsonl rows with `prompt` (messages or a string), `chosen`, `rejected`. Both replies are scored
  after the prompt; the summary gives accuracy (a tie counts as wrong) and the mean BT loss (worldpm.model.bt_loss);
- N responses to one prompt (best-of-N, RLHF rollouts): jsonl or parquet rows with `prompt` (messages or a string) and
  `responses` (a list of strings); each row gets its list of rewards and the index of the best response.
Responses to one prompt (a `responses` row, a pair, conversations of a chunk with the same prompt) are scored with the
prompt encoded once (`shared_prompt`, RewardModel.score_ids: the rewards each gets alone).

The input is read in chunks of `chunk_size` rows; each chunk is tokenised, cut into length-sorted batches of at most
`max_tokens_per_batch` padded tokens (and at most `max_padding` of them padding), and scored; rows come out in input order. `output=` (.jsonl or .parquet) is written under
a temporary name and renamed when complete, with `<output stem>.summary.json` beside it; without `output` the rewards are
printed as `index<TAB>reward` lines (pairs: `index<TAB>chosen<TAB>rejected`; responses: `index<TAB>best<TAB>reward...`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from worldpm.atomic_dir import write_json
from worldpm.config import check
from worldpm.errors import UserError
from worldpm.model.bt_loss import bt_losses
from worldpm.model.chat_format import check_conversation
from worldpm.model.loader import describe, load_reward_model
from worldpm.model.padding import resolve_max_padding

log = logging.getLogger("worldpm.score")

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
RESPONSES_COLUMNS = ("prompt", "responses")
CONVERSATION_KEYS = ("conversation", "messages")
OUTPUT_SUFFIXES = (".jsonl", ".json", ".parquet")


def output_format(path) -> str:
    """`jsonl` or `parquet`, from an output file name; a UserError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"output {str(path)!r}: use a .jsonl or .parquet file name")
    return "parquet" if suffix == ".parquet" else "jsonl"


# ---------------------------------------------------------------------- readers
class Source:
    """An input file or directory: its kind (`conversations` | `pairs` | `responses`), row count when known (parquet metadata;
    None for jsonl, whose kind is read from its first row), and its rows in chunks."""

    def __init__(self, path: str, split: str = "test"):
        self.path = str(path)
        p = Path(path)
        if p.is_dir():
            shards = sorted(p.glob("*.parquet")) or sorted((p / split).glob("*.parquet"))
            if not shards:
                raise UserError(f"input directory {path!r} holds no PairRecord shards (*.parquet, or {split}/*.parquet)")
            self.files, self.format = shards, "parquet"
        elif p.is_file():
            suffix = p.suffix.lower()
            if suffix not in (".jsonl", ".json", ".parquet"):
                raise UserError(f"input {path!r}: unknown format {suffix or '(no extension)'!r}; use .jsonl, .parquet or a shard directory")
            self.files, self.format = [p], "parquet" if suffix == ".parquet" else "jsonl"
        else:
            raise UserError(f"input {path!r} does not exist")
        self.kind, self.rows = (self._inspect_parquet() if self.format == "parquet" else self._inspect_jsonl())

    def _inspect_parquet(self):
        rows, kind = 0, None
        for f in self.files:
            try:
                meta = pq.ParquetFile(f)
            except Exception as exc:  # pyarrow raises several types for a file that is not parquet
                raise UserError(f"{f}: not a readable parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
            names = set(meta.schema_arrow.names)
            this = _kind(names)
            if this is None:
                raise UserError(f"{f}: has neither PairRecord columns {PAIR_COLUMNS}, {RESPONSES_COLUMNS} nor a "
                                f"conversation/messages column (columns: {sorted(names)})")
            if kind and this != kind:
                raise UserError(f"{self.path}: mixes {kind} and {this} files")
            kind, rows = this, rows + meta.metadata.num_rows
        return kind, rows

    def _inspect_jsonl(self):
        """The kind, from the first non-empty row; the row count is left unknown (counting would read the file twice)."""
        with self.files[0].open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    row = _parse_line(line, self.path, lineno)
                    return (_kind(set(row)) if isinstance(row, dict) else None) or "conversations", None
        raise UserError(f"input {self.path!r} is empty")

    def chunks(self, size: int) -> Iterator[list[dict]]:
        """Rows as {"id", "where", and "conversation" | "prompt"/"chosen"/"rejected"}, `size` at a time."""
        chunk: list[dict] = []
        for row in (self._parquet_rows() if self.format == "parquet" else self._jsonl_rows()):
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _jsonl_rows(self):
        with self.files[0].open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield self._row(_parse_line(line, self.path, lineno), f"{self.path}:{lineno}")

    def _parquet_rows(self):
        for f in self.files:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            wanted = [c for c in ("id", *PAIR_COLUMNS, *RESPONSES_COLUMNS, *CONVERSATION_KEYS) if c in names]
            index = 0
            for batch in pf.iter_batches(batch_size=4096, columns=wanted):
                for row in batch.to_pylist():
                    yield self._row(row, f"{f}: row {index}")
                    index += 1

    def _row(self, row, where: str) -> dict:
        if self.kind == "responses":
            if not isinstance(row, dict) or not set(RESPONSES_COLUMNS) <= set(row):
                raise UserError(f"{where}: expected a prompt with responses {RESPONSES_COLUMNS}")
            responses = row["responses"]
            if not isinstance(responses, list) or not responses or not all(isinstance(r, str) for r in responses):
                raise UserError(f"{where}: 'responses' must be a non-empty list of strings")
            return {"id": _id(row), "where": where, "prompt": _prompt(row, where), "responses": responses}
        if self.kind == "pairs":
            if not isinstance(row, dict) or not set(PAIR_COLUMNS) <= set(row):
                raise UserError(f"{where}: expected a pair with {PAIR_COLUMNS}")
            prompt = _prompt(row, where)
            for key in ("chosen", "rejected"):
                if not isinstance(row[key], str):
                    raise UserError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}")
            return {"id": _id(row), "where": where, "prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}
        if isinstance(row, dict):
            conv = next((row[k] for k in CONVERSATION_KEYS if row.get(k) is not None), None)
            if conv is None:
                raise UserError(f"{where}: expected a list of messages or an object with 'conversation'/'messages'")
            return {"id": _id(row), "where": where, "conversation": conv}
        return {"id": None, "where": where, "conversation": row}


def _kind(names: set) -> str | None:
    """What rows with these columns are: pairs, responses (to one prompt) or conversations; None if none."""
    if set(PAIR_COLUMNS) <= names:
        return "pairs"
    if set(RESPONSES_COLUMNS) <= names:
        return "responses"
    return "conversations" if names & set(CONVERSATION_KEYS) else None


def _prompt(row: dict, where: str) -> list:
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        raise UserError(f"{where}: 'prompt' must be a list of messages or a string, got {type(prompt).__name__}")
    return prompt


def _parse_line(line: str, path: str, lineno: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def _id(row: dict):
    return None if row.get("id") is None else str(row["id"])


# ---------------------------------------------------------------------- writer
class RewardsWriter:
    """jsonl or parquet rows, written under a temporary name and renamed on success: a crash never leaves a complete-looking file."""

    def __init__(self, path: str, kind: str):
        self.path = Path(path)
        self.format = output_format(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.columns = {"conversations": ["index", "id", "reward"], "pairs": ["index", "id", "chosen_reward", "rejected_reward"],
                        "responses": ["index", "id", "rewards", "best"]}[kind]
        self._file = None
        self._writer = None
        if self.format == "jsonl":
            self._file = self.tmp.open("w", encoding="utf-8")
        else:
            types = {"index": pa.int64(), "id": pa.string(), "rewards": pa.list_(pa.float64()), "best": pa.int64()}
            self.schema = pa.schema([(c, types.get(c, pa.float64())) for c in self.columns])
            self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")

    def write(self, rows: list[dict]) -> None:
        if self._file is not None:
            self._file.write("".join(json.dumps({k: v for k, v in r.items() if not (k == "id" and v is None)}) + "\n"
                                     for r in rows))
        else:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def close(self, ok: bool) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------- scoring
def run(cfg: DictConfig) -> dict:
    cfg = check("score", cfg)  # types, ranges, the input path and the output's name (worldpm/config/schemas.py): one line
    source = Source(cfg.input, split=str(cfg.split))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = load_reward_model(model_cfg, cfg.model_path, device=cfg.device, dtype=cfg.dtype)
    max_length = int(cfg.max_length or model.spec.max_length)
    max_padding = resolve_max_padding(cfg.max_padding, model.device)
    what = {"pairs": "pairs", "responses": "prompts"}.get(source.kind, "conversations")
    log.info("scoring %s%s of %s with %s", "" if source.rows is None else f"{source.rows} ", what, cfg.input,
             describe(model, cfg.model_path, model_cfg))

    writer = RewardsWriter(cfg.output, source.kind) if cfg.output else None
    n = tokens = truncated = correct = responses = 0
    loss_sum = 0.0
    seconds = 0.0
    bar = tqdm(total=source.rows, unit=f" {what}", disable=None, dynamic_ncols=True)
    ok = False
    try:
        for chunk in source.chunks(int(cfg.chunk_size)):
            if source.kind == "pairs":
                convs = [check_conversation(r["prompt"] + [{"role": "assistant", "content": r[side]}], where=r["where"])
                         for r in chunk for side in ("chosen", "rejected")]
            elif source.kind == "responses":
                convs = [check_conversation(r["prompt"] + [{"role": "assistant", "content": x}], where=r["where"])
                         for r in chunk for x in r["responses"]]
            else:
                convs = [check_conversation(r["conversation"], where=r["where"]) for r in chunk]
            start = time.perf_counter()
            ids = model.encode(convs, max_length)

            def progress(k):
                nonlocal tokens
                tokens += k
                bar.set_postfix_str(f"{tokens / max(seconds + time.perf_counter() - start, 1e-9):,.0f} tok/s", refresh=False)

            rewards = model.score_ids(ids, int(cfg.max_tokens_per_batch), int(cfg.max_batch_size), max_padding, progress,
                                      shared_prompt=cfg.shared_prompt)
            seconds += time.perf_counter() - start
            truncated += ids.truncated
            if source.kind == "pairs":
                chosen, rejected = rewards[0::2], rewards[1::2]
                rows = [{"index": n + i, "id": r["id"], "chosen_reward": c, "rejected_reward": j}
                        for i, (r, c, j) in enumerate(zip(chunk, chosen, rejected))]
                correct += sum(c > j for c, j in zip(chosen, rejected))
                loss_sum += float(bt_losses(torch.tensor(chosen, dtype=torch.float64),
                                            torch.tensor(rejected, dtype=torch.float64)).sum())
            elif source.kind == "responses":
                rows, at = [], 0
                for i, r in enumerate(chunk):
                    mine = rewards[at:at + len(r["responses"])]
                    at += len(mine)
                    rows.append({"index": n + i, "id": r["id"], "rewards": mine, "best": max(range(len(mine)), key=mine.__getitem__)})
                responses += at
            else:
                rows = [{"index": n + i, "id": r["id"], "reward": x} for i, (r, x) in enumerate(zip(chunk, rewards))]
            n += len(chunk)
            bar.update(len(chunk))
            if writer:
                writer.write(rows)
            elif source.kind == "pairs":
                print("".join(f"{r['index']}\t{r['chosen_reward']:.6f}\t{r['rejected_reward']:.6f}\n" for r in rows), end="")
            elif source.kind == "responses":
                print("".join(f"{r['index']}\t{r['best']}\t" + "\t".join(f"{x:.6f}" for x in r["rewards"]) + "\n" for r in rows),
                      end="")
            else:
                print("".join(f"{r['index']}\t{r['reward']:.6f}\n" for r in rows), end="")
        ok = True
    finally:
        bar.close()
        if writer:
            writer.close(ok)

    summary = {"input": str(cfg.input), "kind": source.kind, "n": n, "model": describe(model, cfg.model_path, model_cfg),
               "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
               "truncated": truncated, "max_length": max_length}
    if source.kind == "responses":
        summary["responses"] = responses
    if source.kind == "pairs":
        summary.update(accuracy=correct / n if n else float("nan"), bt_loss=loss_sum / n if n else float("nan"))
        log.info("%d pairs: accuracy %.4f (ties count as wrong), BT loss %.4f", n, summary["accuracy"], summary["bt_loss"])
    log.info("scored %d %s (%d tokens, %d truncated to %d) in %.2f s: %.0f tokens/s", n, what, tokens, truncated,
             max_length, seconds, summary["tokens_per_s"])
    if writer:
        summary_path = writer.path.with_name(writer.path.stem + ".summary.json")
        summary["output"] = str(writer.path)
        write_json(summary_path, summary)  # strict JSON: an accuracy of no pairs (nan) is written as null
        log.info("wrote %s and %s", writer.path, summary_path)
    return summary
