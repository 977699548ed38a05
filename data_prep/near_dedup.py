"""Near-duplicate threads: MinHash (datasketch) over word shingles of the prompt, with an LSH index kept in SQLite on disk.

Threads are seen in the canonical output order; the first of a group of near-duplicates is kept and later ones are dropped with
all their pairs. The band index lives on disk so memory stays bounded at any corpus size (datasketch's in-memory MinHashLSH would
hold every band of every thread). A candidate from the bands is confirmed by the estimated Jaccard similarity >= threshold.
"""
from __future__ import annotations

import sqlite3
from functools import lru_cache
from pathlib import Path

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from xxhash import xxh32_intdigest

from data_prep.contamination import words


@lru_cache(maxsize=4)
def _template(num_perm: int, seed: int):
    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=xxh32_intdigest)
    return m.permutations, m.scheme


def signature(text: str, num_perm: int, shingle_words: int, seed: int = 1) -> bytes:
    tokens = words(text)
    shingles = {" ".join(tokens[i:i + shingle_words]).encode() for i in range(max(1, len(tokens) - shingle_words + 1))}
    # building the permutations is most of a MinHash's cost on short texts: make them once per process
    permutations, scheme = _template(num_perm, seed)
    # xxh32 (a C function) instead of datasketch's default sha1 wrapper: hashing the shingles was most of the MinHash cost
    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=xxh32_intdigest, permutations=permutations, scheme=scheme)
    m.update_batch(sorted(shingles))
    return m.hashvalues.astype(np.uint64).tobytes()


class NearDuplicateIndex:
    def __init__(self, path: Path, num_perm: int = 128, threshold: float = 0.8):
        self.num_perm, self.threshold = num_perm, threshold
        self.bands, self.rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
        path.unlink(missing_ok=True)
        self.db = sqlite3.connect(path)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536;"
                              "CREATE TABLE bands (band INTEGER, key BLOB, thread INTEGER, PRIMARY KEY (band, key)) WITHOUT ROWID;"
                              "CREATE TABLE sigs (thread INTEGER PRIMARY KEY, sig BLOB);")
        self.n = 0

    def seen(self, sig: bytes) -> bool:
        """True if a near-duplicate was indexed before; otherwise index this signature and return False."""
        values = np.frombuffer(sig, dtype=np.uint64)
        keys = [(b, values[b * self.rows:(b + 1) * self.rows].tobytes()) for b in range(self.bands)]
        candidates = set()
        for band, key in keys:
            row = self.db.execute("SELECT thread FROM bands WHERE band = ? AND key = ?", (band, key)).fetchone()
            if row:
                candidates.add(row[0])
        for cand in sorted(candidates):
            other = np.frombuffer(self.db.execute("SELECT sig FROM sigs WHERE thread = ?", (cand,)).fetchone()[0], dtype=np.uint64)
            if float(np.mean(other == values)) >= self.threshold:
                return True
        self.n += 1
        self.db.execute("INSERT INTO sigs VALUES (?, ?)", (self.n, sig))
        self.db.executemany("INSERT OR IGNORE INTO bands VALUES (?, ?, ?)", [(b, k, self.n) for b, k in keys])
        return False

    def close(self) -> None:
        self.db.commit()
        self.db.close()


class ExactPairIndex:
    """Exact duplicates of (prompt, chosen, rejected) across the whole output, on disk."""

    def __init__(self, path: Path):
        path.unlink(missing_ok=True)
        self.db = sqlite3.connect(path)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536;"
                              "CREATE TABLE seen (key BLOB PRIMARY KEY) WITHOUT ROWID;")

    def seen(self, key: bytes) -> bool:
        before = self.db.total_changes
        self.db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (key,))
        return self.db.total_changes == before

    def close(self) -> None:
        self.db.commit()
        self.db.close()
