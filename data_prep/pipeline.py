"""How a collect job runs (datatrove-style): a job is a list of blocks, each fed by the one before, each counting what it kept and
dropped; a phase runs its tasks in a process pool with one progress bar.

A `Block` takes an iterator of items and yields the items it keeps. A filter overrides `process(item) -> item or None`; a reader
ignores its input and yields what it reads; a writer consumes its input and yields nothing. Each block counts in its own `stats`
(data_prep.accounting.Stats), under the sections of stats.json it accounts for (a thread filter may count the thread in
`questions` and its replies in `replies`). `run_blocks` pulls every item through the list one at a time, then merges the blocks'
counts: the counts one function doing every step would make, and since each drop reason is counted by one block, the same
reject samples in the same order.
"""
from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

from data_prep.accounting import Stats


class Block:
    """One step of a job; `name` for the logs, `stats` for what it kept and dropped in its latest run."""

    name = "block"
    enabled = True  # a disabled block is left out of the job (an option turned off, an empty contamination index)

    def __init__(self):
        self.stats = Stats()

    def process(self, item):
        """A filter's step: the item (possibly changed) to keep it, None to drop it (counting why in `self.stats`)."""
        return item

    def __call__(self, items: Iterable) -> Iterator:
        for item in items:
            kept = self.process(item)
            if kept is not None:
                yield kept


def run_blocks(blocks: list[Block], max_rejects: int) -> Stats:
    """Run a job: every item through the enabled blocks in order (each one fed by the one before), on empty counts; returns the
    blocks' counts merged in order."""
    blocks = [b for b in blocks if b.enabled]
    stages = []
    items: Iterable = ()
    for block in blocks:
        block.stats = Stats(max_rejects)
        items = block(items)
        stages.append(items)
    try:
        for _ in items:
            pass
    finally:  # a failed run: let each block release what it holds (its `finally` and `with` blocks run), last block first
        for stage in reversed(stages):
            if hasattr(stage, "close"):
                stage.close()
    stats = Stats(max_rejects)
    for block in blocks:
        stats.merge(block.stats)
    return stats


def describe(blocks: list[Block]) -> str:
    return " -> ".join(b.name for b in blocks if b.enabled)


# ------------------------------------------------------------------------------------------------------------------ progress
class ProgressBar:
    """A tqdm bar in MB/s with rows/s beside it, fed by this process or by workers through a queue."""

    def __init__(self, desc: str, total_bytes: int | None, unit: str = "B"):
        from tqdm import tqdm

        self.bar = tqdm(total=total_bytes, desc=desc, unit=unit, unit_scale=True, unit_divisor=1000, mininterval=1.0,
                        dynamic_ncols=True, file=sys.stderr, disable=None)
        self.rows, self.bytes, self.t0, self.unit = 0, 0, time.perf_counter(), unit
        self.shown = 0.0  # when the rows/s postfix was last formatted

    def update(self, nbytes: int, nrows: int) -> None:
        self.bar.update(nbytes)
        self.bytes += nbytes
        self.rows += nrows
        if nrows:
            now = time.perf_counter()
            if now - self.shown >= 0.5:  # called once per thread in phases 2 and 3: format the postfix twice a second at most
                self.shown = now
                self.bar.set_postfix_str(f"{self.rows:,} rows, {self.rows / max(now - self.t0, 1e-9):,.0f} rows/s",
                                         refresh=False)

    def close(self) -> dict:
        seconds = time.perf_counter() - self.t0
        self.bar.close()
        return {"seconds": round(seconds, 3), "bytes": self.bytes, "rows": self.rows, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """Peak RSS so far of this process and of its largest finished worker (Linux reports KiB)."""
    import resource

    return round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024, 1)


# ------------------------------------------------------------------------------------------------------------------ tasks
_WORKER: dict = {}


def _init_worker(queue, shared) -> None:
    _WORKER.update(queue=queue, shared=shared)


def shared():
    """What `run_tasks` gave every task of this phase once per worker (phase 2: its blocks, with the contamination index)."""
    return _WORKER.get("shared")


class _Progress:
    """A task's progress callback `(nbytes, nrows)`: direct to the bar in-process, batched through the queue in a worker."""

    def __init__(self):
        self.queue, bar = _WORKER.get("queue"), _WORKER.get("bar")
        self.direct = bar.update if self.queue is None and bar is not None else None
        self.acc = [0, 0]

    def __call__(self, nbytes: int, nrows: int) -> None:
        if self.queue is None:
            if self.direct is not None:
                self.direct(nbytes, nrows)
            return
        acc = self.acc
        acc[0] += nbytes
        acc[1] += nrows
        if acc[0] >= 4 << 20 or acc[1] >= 20_000:
            self.queue.put((acc[0], acc[1]))
            acc[0] = acc[1] = 0

    def flush(self) -> None:
        if self.queue is not None and (self.acc[0] or self.acc[1]):
            self.queue.put((self.acc[0], self.acc[1]))
            self.acc[0] = self.acc[1] = 0


def task_progress() -> _Progress:
    return _Progress()


def run_phase(desc: str, fn: Callable, tasks: list, workers: int, stats: Stats, *, total_bytes: int | None = None,
              unit: str = "B", shared=None) -> tuple[list[dict], dict]:
    """One phase of a job: `fn(task)` for every task under one progress bar (`run_tasks`). Each result carries its task's counts
    as "stats" (Stats.state()); they are merged into `stats` in task order. Returns the results and the phase's timing."""
    bar = ProgressBar(desc, total_bytes, unit)
    try:
        results = run_tasks(fn, tasks, workers, bar, shared)
    finally:
        timing = bar.close()
    for result in results:
        stats.merge(Stats.from_state(result.pop("stats")))
    return results, timing


def run_tasks(fn: Callable, tasks: list, workers: int, bar: ProgressBar, shared=None) -> list:
    """Run `fn(task)` for every task, results in task order; in-process for one worker, else a process pool. `shared` reaches
    every task through `shared()`, sent once per worker (not once per task)."""
    if workers <= 1 or len(tasks) <= 1:
        _WORKER.update(queue=None, bar=bar, shared=shared)
        return [fn(t) for t in tasks]
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    # A SimpleQueue's put writes the pipe in the worker's own thread, so a task's progress is on its way before its result is;
    # a Queue's background feeder can be killed by the pool's terminate() holding the shared write lock, and then this
    # process's own feeder waits on that lock forever at exit. This process only reads, so it starts no feeder at all.
    queue, done, failed = ctx.SimpleQueue(), threading.Event(), threading.Event()

    def listen():
        while not failed.is_set() and not (done.is_set() and queue.empty()):
            if queue.empty():
                done.wait(0.05)
            else:
                bar.update(*queue.get())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(queue, shared)) as pool:
            results = list(pool.imap(fn, tasks))
            pool.close()
            pool.join()
        done.set()
        listener.join()  # every worker has exited, so every message is whole in the pipe: this drains it
        return results
    except BaseException:
        # a failed task's pool is terminated and a worker killed in mid-message would keep the (daemon) listener
        # waiting for the rest of it: the progress no longer matters, so do not wait for it
        failed.set()
        raise
