"""PairRecord (and ThreadRecord) shards -> token ids, once, with the model's own encoder; then random access by row for training
and evaluation.

Tokenisation renders each pair with the reward-token contract through `RewardModel.encoder` (worldpm.model.chat_format.ChatEncoder:
WorldPM's ChatML, the reward token, truncation that cuts the prompt first and never the reward token) via `datasets.map`:
batched, parallel (`data.num_proc`), and cached on disk under a fingerprint of (shards, encoder), so a rerun or a resumed run,
and every rank after the first, reads the cache instead of tokenising again. `PairTable` keeps the lengths as arrays, so a step
is planned (worldpm.data.packing) without reading a pair.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np
from datasets.fingerprint import Hasher

from data_prep.records import THREADS_DIR
from worldpm.data.packing import TokenizedPair, pair_costs
from worldpm.data.threads import TOKENIZATION_VERSION as THREAD_TOKENIZATION_VERSION
from worldpm.data.threads import Objective, ThreadTable, TokenizedThread, tokenize_threads
from worldpm.errors import UserError
from worldpm.model.chat_format import ChatEncoder, check_conversation
from worldpm.model.segments import common_prefix_length

log = logging.getLogger("worldpm.train")

TOKENIZATION_VERSION = 1  # bump when the tokenised columns change meaning (invalidates caches)
# loss.margin_column=score_gap: chosen_score - rejected_score as the margin (e.g. HelpSteer2-Preference's |strength|)
SCORE_GAP = "score_gap"


def _tokenize_batch(batch, encoder: ChatEncoder, margin_column: str | None):
    convs_c = [list(p) + [{"role": "assistant", "content": c}] for p, c in zip(batch["prompt"], batch["chosen"])]
    convs_r = [list(p) + [{"role": "assistant", "content": r}] for p, r in zip(batch["prompt"], batch["rejected"])]
    for pid, conv in zip(batch["id"] * 2, convs_c + convs_r):
        check_conversation(conv, where=f"pair {pid}")  # a bad row names its pair
    ids = encoder.conversations(convs_c + convs_r)
    n = len(convs_c)
    chosen, rejected = ids[:n], ids[n:]
    out = {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "prefix": [common_prefix_length(c, r) for c, r in zip(chosen, rejected)],
        "tokens": [len(c) + len(r) for c, r in zip(chosen, rejected)],
        "width": [max(len(c), len(r)) for c, r in zip(chosen, rejected)],
    }
    if margin_column == SCORE_GAP:
        out["margin"] = [float(c) - float(r) for c, r in zip(batch["chosen_score"], batch["rejected_score"])]
    elif margin_column:
        out["margin"] = [float(m) for m in batch[margin_column]]
    return out


def load_tables(paths: Sequence[Path], encoder: ChatEncoder, num_proc: int = 1, cache_dir: str | None = None,
                margin_column: str | None = None, unit: str = "pairs") -> tuple[list, object]:
    """The train split of every dataset in `paths`, and the test split of the first (None when it has none), tokenised: its
    pairs (PairTable), or with `unit="threads"` its threads (worldpm.data.threads.ThreadTable)."""
    table = ThreadTable if unit == "threads" else PairTable
    kw = dict(encoder=encoder, num_proc=num_proc, cache_dir=cache_dir, margin_column=margin_column, unit=unit)
    tables = [table(load_split(path, "train", **kw)) for path in paths]
    test = load_split(paths[0], "test", required=False, **kw)
    return tables, (table(test) if test is not None else None)


def load_split(path: Path, split: str, encoder: ChatEncoder, num_proc: int = 1, cache_dir: str | None = None,
               margin_column: str | None = None, required: bool = True, unit: str = "pairs"):
    """The tokenised split (a `datasets.Dataset`): chosen_ids, rejected_ids, prefix, tokens, width [, margin]; or, with
    `unit="threads"`, the thread shards' columns (worldpm.data.threads)."""
    threads = unit == "threads"
    where = Path(path) / THREADS_DIR / split if threads else Path(path) / split
    files = sorted(str(f) for f in where.glob("*.parquet"))
    if not files:
        if required:
            raise UserError(f"{path} has no {where.relative_to(path)}/*.parquet shards"
                            + (" (collect with output.threads=true, or train on pairs: data.unit=pairs)" if threads else ""))
        return None
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        raw = datasets.load_dataset("parquet", data_files={split: files}, split=split, cache_dir=cache_dir)
        if margin_column and margin_column != SCORE_GAP and margin_column not in raw.column_names:
            raise UserError(f"loss.margin_column={margin_column!r} is not a column of {path}/{split} (columns: {raw.column_names}, "
                            f"or {SCORE_GAP}: chosen_score - rejected_score)")
        if threads:
            fn, kwargs, version = tokenize_threads, dict(encoder=encoder), ("threads", THREAD_TOKENIZATION_VERSION)
        else:
            fn, kwargs, version = _tokenize_batch, dict(encoder=encoder, margin_column=margin_column), TOKENIZATION_VERSION
        fingerprint = Hasher.hash([raw._fingerprint, encoder.fingerprint(), margin_column, version])
        tokenised = raw.map(fn, batched=True, batch_size=64 if threads else 256, num_proc=num_proc if num_proc > 1 else None,
                            remove_columns=raw.column_names, new_fingerprint=fingerprint, fn_kwargs=kwargs)
    finally:
        datasets.logging.set_verbosity(verbosity)
        datasets.enable_progress_bars()
    return tokenised


class PairTable:
    """Random access to the tokenised pairs of one split, plus their lengths as arrays (for planning micro-batches)."""

    def __init__(self, dataset):
        self.dataset = dataset
        column = lambda name: np.asarray(dataset.data.column(name).to_numpy(), dtype=np.int64)  # noqa: E731
        self.tokens = column("tokens")
        self.width = column("width")
        # packing.pair_cost(pair, "shared_prompt") of every pair (the prompt counts once), so no layout reads pairs to plan
        self.cost = pair_costs(self.tokens, self.width, column("prefix"), "shared_prompt")
        self.has_margin = "margin" in dataset.column_names
        self.n_pairs = np.ones(len(self.tokens), dtype=np.int64)  # a row is one pair (ThreadTable's rows hold several)

    def costs(self, layout: str) -> np.ndarray:
        """Every pair's `packing.pair_cost` in `layout`."""
        return self.cost if layout == "shared_prompt" else self.tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def weights(self, objective: Objective) -> np.ndarray:
        """Each row's loss weight: one pair (pair rows train only the `pairs` objective)."""
        return self.n_pairs

    def threads(self, rows: Sequence[int]) -> list[TokenizedThread]:
        """The pairs as two-answer threads (what micro-batches are collated from)."""
        return [p.as_thread() for p in self.pairs(rows)]

    def pairs(self, rows: Sequence[int]) -> list[TokenizedPair]:
        if not len(rows):
            return []
        batch = self.dataset[list(map(int, rows))]
        margins = batch["margin"] if self.has_margin else [None] * len(rows)
        return [TokenizedPair(c, r, p, m) for c, r, p, m in
                zip(batch["chosen_ids"], batch["rejected_ids"], batch["prefix"], margins)]
