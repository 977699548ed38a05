"""RequestBatcher: requests from many threads share calls of the scoring function, each caller gets its own results."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from worldpm.serve.batcher import RequestBatcher


class Recorder:
    """A scoring function that returns sum(ids) per sequence and records the batches it was called with."""

    def __init__(self, delay_s=0.0, fail_on=None):
        self.calls, self.delay_s, self.fail_on = [], delay_s, fail_on
        self.threads = set()

    def __call__(self, sequences):
        self.threads.add(threading.current_thread().name)
        self.calls.append([list(s) for s in sequences])
        if self.fail_on is not None and any(self.fail_on in s for s in sequences):
            raise ValueError("poisoned sequence")
        time.sleep(self.delay_s)
        return [float(sum(s)) for s in sequences]


def test_concurrent_requests_are_gathered_and_answered_in_order():
    fn = Recorder(delay_s=0.02)
    batcher = RequestBatcher(fn, window_ms=20, max_tokens=10_000)
    requests = [[[i, 1], [i, 2, 3]] for i in range(64)]
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda req: batcher.submit(req).result(timeout=30), requests))
    batcher.close()
    assert results == [[float(i + 1), float(i + 5)] for i in range(64)]
    stats = batcher.stats.snapshot()
    assert stats["requests"] == 64 and stats["sequences"] == 128 and stats["tokens"] == 64 * 5
    assert stats["batches"] == len(fn.calls) < 64 / 4 and stats["largest_batch"] > 8
    assert fn.threads == {"worldpm-scorer"}  # the model is only ever entered from the one worker thread


def test_token_budget_bounds_a_gathered_batch_and_an_oversize_request_goes_alone():
    fn = Recorder()
    batcher = RequestBatcher(fn, window_ms=200, max_tokens=10)
    futures = [batcher.submit([[1] * 4]) for _ in range(5)] + [batcher.submit([[2] * 25])] + [batcher.submit([[3] * 4])]
    assert [f.result(timeout=30) for f in futures] == [[4.0]] * 5 + [[50.0]] + [[12.0]]
    batcher.close()
    assert all(sum(len(s) for s in call) <= 10 or len(call) == 1 for call in fn.calls)
    assert [len(c) for c in fn.calls if len(c[0]) == 25] == [1]


def test_disabled_scores_each_request_alone():
    fn = Recorder()
    batcher = RequestBatcher(fn, enabled=False)
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda i: batcher.submit([[i], [i, i]]).result(timeout=30), range(20)))
    batcher.close()
    assert out == [[float(i), float(2 * i)] for i in range(20)]
    assert len(fn.calls) == 20 and all(len(c) == 2 for c in fn.calls)


def test_a_failing_batch_fails_its_requests_only_and_the_worker_keeps_serving():
    fn = Recorder(fail_on=99)
    batcher = RequestBatcher(fn, window_ms=100)
    bad, same_batch = batcher.submit([[99]]), batcher.submit([[1]])
    with pytest.raises(ValueError, match="poisoned"):
        bad.result(timeout=30)
    with pytest.raises(ValueError):
        same_batch.result(timeout=30)  # it shared the failed forward
    assert batcher.submit([[5, 5]]).result(timeout=30) == [10.0]
    assert batcher.pending == 0
    batcher.close()


def test_close_answers_everything_queued_then_refuses_new_work():
    fn = Recorder(delay_s=0.01)
    batcher = RequestBatcher(fn, window_ms=1, max_tokens=3)
    futures = [batcher.submit([[i, i, i]]) for i in range(30)]  # one request per forward: a queue builds up
    batcher.close()
    assert [f.result(timeout=0) for f in futures] == [[3.0 * i] for i in range(30)]
    with pytest.raises(RuntimeError, match="shut down"):
        batcher.submit([[1]])


def test_cancelled_requests_are_not_scored():
    release = threading.Event()

    def slow(sequences):
        release.wait(10)
        return [0.0] * len(sequences)

    batcher = RequestBatcher(slow, window_ms=0)
    first = batcher.submit([[1]])  # occupies the worker
    time.sleep(0.05)
    second = batcher.submit([[2]])
    assert second.cancel()
    release.set()
    assert first.result(timeout=10) == [0.0]
    batcher.close()
    assert second.cancelled() and batcher.stats.snapshot()["requests"] == 1 and batcher.pending == 0


def test_an_empty_request_is_answered_at_once():
    batcher = RequestBatcher(Recorder())
    assert batcher.submit([]).result(timeout=0) == []
    batcher.close()


def test_max_padding_bounds_the_padding_of_every_batch():
    from worldpm.model.padding import length_sorted_batches

    lengths = [5, 400, 37, 120, 118, 90, 3, 64, 300, 299, 71, 12, 250]
    for max_padding in (0.0, 0.2, 0.5):
        batches = list(length_sorted_batches(lengths, max_tokens=10_000, max_padding=max_padding))
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            width = max(lengths[i] for i in b)
            assert all(lengths[i] >= (1 - max_padding) * width for i in b)
    assert len(list(length_sorted_batches(lengths, max_tokens=10_000))) == 1  # unbounded: one batch fits the budget


def test_score_ids_is_the_same_however_it_batches(tiny_rm):
    from tests.conftest import conversations
    from worldpm.model.padding import resolve_max_padding

    ids = tiny_rm.encode(conversations() * 3)
    alone = [tiny_rm.score_ids([s])[0] for s in ids]
    seen = []
    for kwargs in ({}, {"max_padding": 0.1}, {"max_tokens": 200, "max_batch_size": 3}):
        assert tiny_rm.score_ids(ids, progress=seen.append, **kwargs) == pytest.approx(alone, abs=1e-5)
    assert sum(seen) == 3 * sum(map(len, ids))
    assert resolve_max_padding("auto", "cpu") == 0.2 and resolve_max_padding("auto", "cuda:0") is None
    assert resolve_max_padding(None, "cpu") is None and resolve_max_padding("0.3", "cpu") == 0.3
    with pytest.raises(Exception, match="max_padding"):
        resolve_max_padding(1.5, "cpu")
