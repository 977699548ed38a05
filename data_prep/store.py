"""The on-disk SQLite stores of the forum readers (Stack Exchange and Reddit): connecting, splitting into id ranges, and the
merge-join of threads with their replies. A store holds one table of thread rows (questions, posts) and one of reply rows
(answers, comments) keyed by their thread's id; it is a scratch file, rebuilt from the dump on any failure.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Callable, Iterable, Iterator

from data_prep.accounting import Stats

# Characters that no post should contain: C0/C1 controls (other than tab and newlines), noncharacters, lone surrogates, and
# U+FFFD (text already damaged by a bad decode upstream).
INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffd\ufffe\uffff\ud800-\udfff]")


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    else:
        db = sqlite3.connect(path)
        # a scratch store: rebuilt from the dump on any failure, so durability is not needed
        db.executescript("PRAGMA page_size=16384; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA locking_mode=EXCLUSIVE;")
    db.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection: the store's memory bound
    db.execute("PRAGMA temp_store=FILE")
    return db


def partition_bounds(db_path: Path, table: str, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous id ranges of `table` (the thread rows) of about equal size (from the primary key, so cheap); fixed by
    the data alone. An empty table gives one empty range."""
    db = connect(db_path, readonly=True)
    try:
        n = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        if n == 0:
            return [(0, -1)]
        cuts = sorted({db.execute(f"SELECT id FROM {table} ORDER BY id LIMIT 1 OFFSET ?", (k * n // parts,)).fetchone()[0]
                       for k in range(parts)})
        last = db.execute(f"SELECT MAX(id) FROM {table}").fetchone()[0]
    finally:
        db.close()
    return [(lo, (cuts[i + 1] - 1) if i + 1 < len(cuts) else last) for i, lo in enumerate(cuts)]


def report_orphans(db: sqlite3.Connection, stats: Stats, *, child: str, parent: str, link: str, columns: str, reason: str,
                   sample: Callable[..., dict]) -> int:
    """Rows of `child` whose `link` names no row of `parent` (a thread missing from the dump or dropped by a row check): counted
    once in block `replies` under `reason`, the first few by id sampled as `sample(*row)` of `columns` (aliases: c = child).
    `group_replies` then skips them. Returns how many there are."""
    where = f"FROM {child} c LEFT JOIN {parent} p ON p.id = c.{link} WHERE p.id IS NULL"
    n = db.execute(f"SELECT COUNT(*) {where}").fetchone()[0]
    if n:
        for row in db.execute(f"SELECT {columns} {where} ORDER BY c.id LIMIT ?", (stats.max_rejects,)):
            stats.drop("replies", reason, sample(*row), 0)
        stats.drop("replies", reason, None, n)
    return n


def group_replies(threads: Iterable[tuple], replies: sqlite3.Cursor) -> Iterator[tuple[tuple, list[tuple]]]:
    """Merge-join: (thread row, its reply rows) for each thread row. `threads` are ordered by id, which is their first column;
    `replies` by their thread's id, which is their first column, over the same id range. Replies whose thread is not among
    `threads` (orphans, already counted by `report_orphans`) are skipped wherever their thread id falls."""
    pending = replies.fetchone()
    for thread in threads:
        tid = thread[0]
        while pending is not None and pending[0] < tid:
            pending = replies.fetchone()
        group = []
        while pending is not None and pending[0] == tid:
            group.append(pending)
            pending = replies.fetchone()
        yield thread, group
