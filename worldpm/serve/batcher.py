"""The request batcher: many small scoring requests, from any number of threads or asyncio tasks, share one forward pass.

RLHF clients send rollouts one at a time (OpenRLHF's current client posts one sample per request). Scoring each alone leaves
the accelerator idle between tiny forwards; gathering the requests that arrive within a few milliseconds (up to a token
budget) and scoring them together costs about as much as one of them. The model runs in a single worker thread, so it is
never entered concurrently; callers get a `concurrent.futures.Future` (`asyncio.wrap_future` makes it awaitable).

The window starts when the first request of a batch arrives: a lone request waits at most `window_ms`; under load the queue
already holds the next requests when a forward ends, so they are taken at once without waiting.

Each sequence may come with a prompt key (worldpm.model.chat_format.EncodedBatch.prompts): the keys of a gathered batch go to
the scoring function with it, so responses to one prompt — from one request or from several arriving together (an RLHF
trainer sends its N rollouts of a prompt as N requests) — are scored with the prompt encoded once (RewardModel.score_ids).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

log = logging.getLogger("worldpm.serve")

_STOP = object()


@dataclass
class _Job:
    sequences: list[list[int]]
    future: Future
    tokens: int
    prompts: list | None = None  # a prompt key per sequence (None: no key)


@dataclass
class BatchStats:
    """What the worker has done: a batch is one call of the scoring function (which may itself split into padded sub-batches)."""

    requests: int = 0
    sequences: int = 0
    tokens: int = 0
    batches: int = 0
    busy_s: float = 0.0
    largest_batch: int = 0  # requests in the largest batch
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "sequences": self.sequences, "tokens": self.tokens, "batches": self.batches,
                    "busy_s": round(self.busy_s, 3), "largest_batch": self.largest_batch}


class RequestBatcher:
    """Queue of token-id requests in front of `score_ids(list of id lists[, prompts=keys]) -> list of floats`, run in one
    worker thread (`prompts` is passed when some sequence of the batch has a prompt key).

    - `enabled=False`: every request is scored on its own, in arrival order (the baseline the benchmark compares against).
    - `window_ms`: how long the first request of a batch waits for company.
    - `max_tokens`: token budget of a gathered batch (real tokens); a request larger than the budget is scored on its own.
    """

    def __init__(self, score_ids: Callable[[Sequence[Sequence[int]]], list[float]], *, enabled: bool = True,
                 window_ms: float = 5.0, max_tokens: int = 16384, name: str = "worldpm-scorer"):
        if window_ms < 0 or max_tokens < 1:
            raise ValueError(f"window_ms must be >= 0 and max_tokens >= 1 (got {window_ms}, {max_tokens})")
        self.score_ids = score_ids
        self.enabled = enabled
        self.window_s = window_ms / 1000.0
        self.max_tokens = max_tokens
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers
    @property
    def pending(self) -> int:
        """Requests submitted and not yet answered."""
        return self._pending

    def submit(self, sequences: Sequence[Sequence[int]], prompts: Sequence | None = None) -> Future:
        """A future of the rewards of `sequences` (token-id lists ending in the reward token), in order. `prompts`: a key per
        sequence (default: an EncodedBatch's own `.prompts`)."""
        fut: Future = Future()
        prompts = list(prompts) if prompts is not None else getattr(sequences, "prompts", None)
        sequences = [list(s) for s in sequences]
        if not sequences:
            fut.set_result([])
            return fut
        with self._close_lock:
            if self._closed:
                raise RuntimeError("the scorer is shut down")
            self._pending += 1
            self._queue.put(_Job(sequences, fut, sum(len(s) for s in sequences), prompts))
        return fut

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, score everything already queued, and stop the worker."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        carry = None
        while True:
            job = carry if carry is not None else self._queue.get()
            carry = None
            if job is _STOP:
                return
            jobs, tokens = [job], job.tokens
            if self.enabled:
                deadline = time.monotonic() + self.window_s
                while tokens < self.max_tokens:
                    wait = deadline - time.monotonic()
                    try:  # past the deadline, still take whatever is already queued (a backlog built during the last forward)
                        nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP or tokens + nxt.tokens > self.max_tokens:
                        carry = nxt
                        break
                    jobs.append(nxt)
                    tokens += nxt.tokens
            self._score(jobs)

    def _score(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # a cancelled request is not scored
        try:
            if live:
                self._score_live(live)
        finally:
            with self._close_lock:
                self._pending -= len(jobs)

    def _score_live(self, jobs: list[_Job]) -> None:
        flat = [s for j in jobs for s in j.sequences]
        keys = [k for j in jobs for k in (j.prompts or [None] * len(j.sequences))]
        start = time.perf_counter()
        try:
            rewards = self.score_ids(flat, prompts=keys) if any(k is not None for k in keys) else self.score_ids(flat)
            if len(rewards) != len(flat):
                raise RuntimeError(f"scorer returned {len(rewards)} rewards for {len(flat)} sequences")
        except Exception as exc:  # every waiting caller learns of it; the worker keeps serving
            log.error("scoring a batch of %d sequences failed: %s: %s", len(flat), type(exc).__name__, exc)
            for j in jobs:
                j.future.set_exception(exc)
            return
        busy = time.perf_counter() - start
        with self.stats.lock:
            self.stats.requests += len(jobs)
            self.stats.sequences += len(flat)
            self.stats.tokens += sum(j.tokens for j in jobs)
            self.stats.batches += 1
            self.stats.busy_s += busy
            self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        at = 0
        for j in jobs:
            j.future.set_result(rewards[at:at + len(j.sequences)])
            at += len(j.sequences)
