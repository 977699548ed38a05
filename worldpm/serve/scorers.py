"""`LocalScorer`: a reward model in this process behind a `RequestBatcher`, so concurrent callers (OpenRLHF calls a local reward
function from many threads, one sample each; the HTTP server from many requests) share forward passes. `worldpm serve` is a
LocalScorer behind HTTP; `worldpm.serve.client.RemoteScorer` answers the same two calls against a running server:

- `score_texts(texts)`: full ChatML texts as OpenRLHF sends them (the reward token is appended when absent);
- `score_conversations(conversations)`: lists of {role, content} ending with the assistant reply (N responses to one
  prompt, sent together, are scored with the prompt encoded once: `batching.shared_prompt`).

Each returns `Scores(rewards, raw)` (worldpm.serve.scores): `rewards` after the optional normalisation with the checkpoint's
stored mean/std and clipping, `raw` the model's own output.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from functools import partial
from typing import Sequence

from worldpm.model.checkpoint import read_config
from worldpm.model.padding import resolve_max_padding
from worldpm.serve.batcher import RequestBatcher
from worldpm.serve.scores import RewardTransform, Scores


def check_statistics(path: str | None, normalize: bool) -> None:
    """Fail before loading weights when normalisation is asked of a checkpoint that stores no statistics."""
    if normalize and path:
        block = read_config(str(path)).get("worldpm") or {}
        RewardTransform.from_stats(block.get("reward_mean"), block.get("reward_std"), True, None, where=str(path))


# ---------------------------------------------------------------------- in-process
class LocalScorer:
    """A RewardModel behind a RequestBatcher; safe to call from many threads at once."""

    def __init__(self, model, *, normalize: bool = False, clip: float | None = None, max_length: int | None = None,
                 batching: bool = True, window_ms: float = 5.0, max_tokens: int = 16384, max_batch_size: int = 256,
                 max_padding="auto", shared_prompt: bool = True, where: str = "the checkpoint"):
        self.model = model.eval()
        self.transform = RewardTransform.for_model(model.spec, normalize, clip, where)
        self.max_length = int(max_length or model.spec.max_length)
        self.max_padding = resolve_max_padding(max_padding, model.device)
        self._tokenize_lock = threading.Lock()  # a HF fast tokenizer is not safe to call from several threads at once
        self.batcher = RequestBatcher(partial(model.score_ids, max_tokens=max_tokens, max_batch_size=max_batch_size,
                                              max_padding=self.max_padding, shared_prompt=shared_prompt),
                                      enabled=batching, window_ms=window_ms, max_tokens=max_tokens)

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str | None = "auto", **options) -> "LocalScorer":
        from worldpm.model.loader import load_reward_model  # transformers: import only when a model is loaded

        model = load_reward_model(path=path, device=device, dtype=dtype)
        return cls(model, where=str(path), **options)

    # tokenisation (callers may run it in a thread of their own, off an event loop)
    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        with self._tokenize_lock:
            return self.model.encode_texts(texts, self.max_length)

    def encode_conversations(self, conversations) -> list[list[int]]:
        with self._tokenize_lock:
            return self.model.encode(conversations, self.max_length)

    def submit(self, sequences: Sequence[Sequence[int]]) -> Future:
        """Raw rewards of token-id sequences, as a future (batched with whatever else is being scored; an EncodedBatch's
        prompt keys travel with it, so responses to one prompt share its encoding)."""
        return self.batcher.submit(sequences)

    def score_texts(self, texts: Sequence[str]) -> Scores:
        raw = self.submit(self.encode_texts(list(texts))).result()
        return Scores(self.transform(raw), raw)

    def score_conversations(self, conversations) -> Scores:
        raw = self.submit(self.encode_conversations(list(conversations))).result()
        return Scores(self.transform(raw), raw)

    def close(self) -> None:
        self.batcher.close()
