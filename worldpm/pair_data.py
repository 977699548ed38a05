"""PairRecord shards -> token ids, once; then a deterministic, resumable, weighted stream of pairs for training.

- Tokenisation renders each pair with the reward-token contract (`worldpm.chat_format`: WorldPM's ChatML, the reward token,
  truncation that cuts the prompt first and never the reward token) through `datasets.map`: batched, parallel (`data.num_proc`),
  and cached on disk under a fingerprint of (shards, tokenizer, max_length, system prompt), so a rerun or a resumed run, and
  every rank after the first, reads the cache instead of tokenising again.
- `PairStream` is the data order: each dataset is walked in a fresh seeded permutation per epoch, and several datasets are
  interleaved by weight with smooth weighted round-robin (exact proportions in every window, no sampling noise). Its whole state
  is a few integers, saved in every checkpoint, so a resumed run sees exactly the pairs the uninterrupted run would have.
- All ranks draw the same global pairs for a step; packing.plan_micro_batches then gives each rank its share.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from worldpm.errors import UserError
from worldpm.packing import TokenizedPair, common_prefix_length, pair_costs

log = logging.getLogger("worldpm.train")

TOKENIZATION_VERSION = 1  # bump when the tokenised columns change meaning (invalidates caches)


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    weight: float


def sources(data_cfg) -> list[Source]:
    """`data.path` (weight `data.weight`) plus every `data.mix` entry ({path, weight, name}); validated, one-line errors."""
    if data_cfg.get("path") in (None, "", "???"):
        raise UserError("data.path is not set: point it at a collect output directory (with train/ and test/ parquet shards)")
    entries = [{"path": data_cfg.path, "weight": data_cfg.get("weight", 1.0), "name": "main"}]
    for i, extra in enumerate(data_cfg.get("mix") or []):
        if not extra or not extra.get("path"):
            raise UserError(f"data.mix[{i}] has no path (expected {{path: <collect output dir>, weight: <float>}})")
        entries.append({"path": extra["path"], "weight": extra.get("weight", 1.0), "name": extra.get("name") or Path(str(extra["path"])).name})
    out = []
    for e in entries:
        path = Path(str(e["path"])).expanduser()
        key = "data.path" if e["name"] == "main" else f"data.mix ({e['name']})"
        if not path.is_dir():
            raise UserError(f"{key}={e['path']} does not exist or is not a directory")
        if not sorted((path / "train").glob("*.parquet")):
            raise UserError(f"{key}={e['path']} has no train/*.parquet shards (expected a `worldpm collect` output directory)")
        try:
            weight = float(e["weight"])
        except (TypeError, ValueError):
            raise UserError(f"{key}: weight {e['weight']!r} is not a number") from None
        if not weight > 0:
            raise UserError(f"{key}: weight must be > 0, got {weight}")
        out.append(Source(str(e["name"]), path, weight))
    if len({s.name for s in out}) != len(out):
        raise UserError(f"data.mix names must be unique, got {[s.name for s in out]}")
    return out


# ---------------------------------------------------------------------------------------------------------------- tokenising
def _tokenize_batch(batch, tokenizer, max_length: int, system_prompt: str, margin_column: str | None):
    from worldpm.chat_format import check_conversation, encode_conversations

    convs_c = [list(p) + [{"role": "assistant", "content": c}] for p, c in zip(batch["prompt"], batch["chosen"])]
    convs_r = [list(p) + [{"role": "assistant", "content": r}] for p, r in zip(batch["prompt"], batch["rejected"])]
    for pid, conv in zip(batch["id"] * 2, convs_c + convs_r):
        check_conversation(conv, where=f"pair {pid}")  # a bad row names its pair
    ids, _ = encode_conversations(tokenizer, convs_c + convs_r, max_length, system_prompt)
    n = len(convs_c)
    chosen, rejected = ids[:n], ids[n:]
    out = {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "prefix": [common_prefix_length(c, r) for c, r in zip(chosen, rejected)],
        "tokens": [len(c) + len(r) for c, r in zip(chosen, rejected)],
        "width": [max(len(c), len(r)) for c, r in zip(chosen, rejected)],
    }
    if margin_column:
        out["margin"] = [float(m) for m in batch[margin_column]]
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_split(path: Path, split: str, tokenizer, max_length: int, system_prompt: str = "", num_proc: int = 1,
               cache_dir: str | None = None, margin_column: str | None = None, required: bool = True):
    """The tokenised split (a `datasets.Dataset`): chosen_ids, rejected_ids, prefix, tokens, width [, margin]."""
    import datasets
    from datasets.fingerprint import Hasher

    files = sorted(str(f) for f in (path / split).glob("*.parquet"))
    if not files:
        if required:
            raise UserError(f"{path} has no {split}/*.parquet shards")
        return None
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        raw = datasets.load_dataset("parquet", data_files={split: files}, split=split, cache_dir=cache_dir)
        if margin_column and margin_column not in raw.column_names:
            raise UserError(f"loss.margin_column={margin_column!r} is not a column of {path}/{split} (columns: {raw.column_names})")
        fingerprint = Hasher.hash([raw._fingerprint, tokenizer_fingerprint(tokenizer), int(max_length), system_prompt,
                                   margin_column, TOKENIZATION_VERSION])
        tokenised = raw.map(_tokenize_batch, batched=True, batch_size=256, num_proc=num_proc if num_proc > 1 else None,
                            remove_columns=raw.column_names, new_fingerprint=fingerprint,
                            fn_kwargs=dict(tokenizer=tokenizer, max_length=int(max_length), system_prompt=system_prompt,
                                           margin_column=margin_column))
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

    def costs(self, layout: str) -> np.ndarray:
        """Every pair's `packing.pair_cost` in `layout`."""
        return self.cost if layout == "shared_prompt" else self.tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def pairs(self, rows: Sequence[int]) -> list[TokenizedPair]:
        if not len(rows):
            return []
        batch = self.dataset[list(map(int, rows))]
        margins = batch["margin"] if self.has_margin else [None] * len(rows)
        return [TokenizedPair(c, r, p, m) for c, r, p, m in
                zip(batch["chosen_ids"], batch["rejected_ids"], batch["prefix"], margins)]


# ---------------------------------------------------------------------------------------------------------------- order
class PairStream:
    """The training order: (source, row) pairs from several datasets, by weight, each reshuffled every epoch.

    Deterministic given (sizes, weights, seed); `state_dict()` captures the position exactly.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("need one weight per dataset")
        if any(n <= 0 for n in sizes):
            raise UserError(f"a training dataset is empty (sizes {list(sizes)})")
        self.sizes, self.seed = [int(n) for n in sizes], int(seed)
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.epoch = [0] * len(sizes)
        self.cursor = [0] * len(sizes)
        self.credit = [0.0] * len(sizes)
        self.drawn = 0
        self._perm: dict[int, tuple[int, np.ndarray]] = {}

    def _permutation(self, src: int) -> np.ndarray:
        epoch = self.epoch[src]
        cached = self._perm.get(src)
        if cached is None or cached[0] != epoch:
            perm = np.random.default_rng([self.seed, src, epoch]).permutation(self.sizes[src])
            self._perm[src] = cached = (epoch, perm)
        return cached[1]

    def _next_source(self) -> int:
        # smooth weighted round-robin (nginx): every source gains its weight, the richest is served and pays 1
        for i, w in enumerate(self.weights):
            self.credit[i] += w
        src = max(range(len(self.credit)), key=lambda i: (self.credit[i], -i))
        self.credit[src] -= 1.0
        return src

    def take(self, n: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(n):
            src = self._next_source() if len(self.sizes) > 1 else 0
            row = int(self._permutation(src)[self.cursor[src]])
            out.append((src, row))
            self.cursor[src] += 1
            if self.cursor[src] == self.sizes[src]:
                self.cursor[src] = 0
                self.epoch[src] += 1
        self.drawn += n
        return out

    def state_dict(self) -> dict:
        return {"sizes": list(self.sizes), "weights": list(self.weights), "seed": self.seed, "epoch": list(self.epoch),
                "cursor": list(self.cursor), "credit": list(self.credit), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        if list(state["sizes"]) != self.sizes:
            raise UserError(f"the training data changed since the checkpoint (dataset sizes {state['sizes']} then, {self.sizes} "
                            "now); resume with the same data.path/data.mix, or start a new output_dir")
        if int(state["seed"]) != self.seed:
            raise UserError(f"trainer.seed={self.seed} differs from the checkpoint's seed {state['seed']}; resume with the same seed")
        if not np.allclose(state["weights"], self.weights, rtol=1e-9, atol=0):
            raise UserError(f"dataset weights changed since the checkpoint ({state['weights']} then, {self.weights} now); "
                            "resume with the same data.weight/data.mix, or start a new output_dir")
        self.epoch, self.cursor = [int(e) for e in state["epoch"]], [int(c) for c in state["cursor"]]
        self.credit, self.drawn = [float(c) for c in state["credit"]], int(state["drawn"])

    def epochs_done(self) -> float:
        return self.drawn / float(sum(self.sizes))
