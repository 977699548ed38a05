"""Contamination audit: word n-gram overlap between collected prompts/replies and benchmark prompts.

Benchmark files are read in their real formats (docs/eval.md lists them): RewardBench (`prompt`), RM-Bench
`total_dataset.json` (`prompt`), PPE (`prompt`), RMB (`conversation_input` messages), Offset Bias and EvalBiasBench
(`instruction`, a dict of lists), HelpSteer2 (`prompt`), UltraFeedback (`instruction`/`prompt`), Skywork / RLHFlow pair sets
(`chosen` message lists: their user turns); as .json (a list, or a dict of lists), .jsonl, .jsonl.gz or .parquet, or a directory
of them. A text is contaminated when it shares one word n-gram (default n=13, as in GPT-3's decontamination) with a benchmark
prompt; a benchmark prompt shorter than n words but at least `min_words` long counts as one whole n-gram.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Iterator

from data_prep.errors import CollectError

_WORD = re.compile(r"\w+")
_PROMPT_KEYS = ("prompt", "instruction", "question", "problem", "Question", "conversation_input", "history")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _h(tokens: Iterable[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(tokens).encode(), digest_size=8).digest(), "big")


def _user_turns(messages) -> list[str]:
    return [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role", "user") == "user"
            and isinstance(m.get("content"), str)]


def prompts_of(record) -> list[str]:
    """The benchmark prompt(s) of one record, whatever the benchmark's layout."""
    if not isinstance(record, dict):
        return []
    for key in _PROMPT_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return [value]
        if isinstance(value, list) and value:
            return _user_turns(value)
    for key in ("chosen", "messages"):
        value = record.get(key)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return _user_turns(value)
    return []


def _records(path: Path) -> Iterator[dict]:
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
                yield from batch.to_pylist()
        elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)
        elif name.endswith((".json", ".json.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict):  # EvalBiasBench: {"length bias": [...], ...}; or {"data": [...]}
                for value in data.values():
                    if isinstance(value, list):
                        yield from value
            elif isinstance(data, list):
                yield from data
    except (ValueError, OSError) as exc:
        raise CollectError(f"contamination.benchmarks: cannot read {path}: {exc}") from None


def benchmark_files(paths) -> list[Path]:
    out = []
    for p in paths or []:
        p = Path(str(p))
        if not p.exists():
            raise CollectError(f"contamination.benchmarks: {p} does not exist")
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(
                (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".parquet")))
        else:
            out.append(p)
    return out


class NgramIndex:
    """Hashes of benchmark prompt n-grams (held in memory: benchmark prompts are small)."""

    def __init__(self, n: int = 13, min_words: int = 8):
        self.n, self.min_words = n, min_words
        self.grams: dict[int, set[int]] = {}     # length -> hashes
        self.prompts = 0
        self.too_short = 0
        self.files: dict[str, int] = {}

    def add_prompt(self, text: str) -> None:
        tokens = words(text)
        self.prompts += 1
        if len(tokens) >= self.n:
            grams = self.grams.setdefault(self.n, set())
            grams.update(_h(tokens[i:i + self.n]) for i in range(len(tokens) - self.n + 1))
        elif len(tokens) >= self.min_words:
            self.grams.setdefault(len(tokens), set()).add(_h(tokens))
        else:
            self.too_short += 1

    @classmethod
    def from_files(cls, paths, n: int = 13, min_words: int = 8) -> "NgramIndex":
        index = cls(n, min_words)
        for path in benchmark_files(paths):
            before = index.prompts
            for record in _records(path):
                for prompt in prompts_of(record):
                    index.add_prompt(prompt)
            if index.prompts == before:
                raise CollectError(f"contamination.benchmarks: no prompts found in {path} (expected a field such as prompt, "
                                   f"instruction or conversation_input)")
            index.files[str(path)] = index.prompts - before
        return index

    def __bool__(self) -> bool:
        return bool(self.grams)

    def overlaps(self, text: str) -> bool:
        tokens = words(text)
        for length, grams in self.grams.items():
            for i in range(len(tokens) - length + 1):
                if _h(tokens[i:i + length]) in grams:
                    return True
        return False

    def summary(self) -> dict:
        return {"files": self.files, "prompts": self.prompts, "prompts_too_short": self.too_short,
                "ngram": self.n, "min_words": self.min_words, "ngrams": sum(len(g) for g in self.grams.values())}
