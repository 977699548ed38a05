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
def _minhash(num_perm: int, seed: int) -> MinHash:
    # building the permutations is most of a MinHash's cost on short texts: make one per process and clear() it per text
    return MinHash(num_perm=num_perm, seed=seed, hashfunc=xxh32_intdigest)


def _shingles(text: str, shingle_words: int) -> list[bytes]:
    tokens = words(text)
    return [" ".join(tokens[i:i + shingle_words]).encode() for i in range(max(1, len(tokens) - shingle_words + 1))]


def signature(text: str, num_perm: int, shingle_words: int, seed: int = 1) -> bytes:
    """datasketch's MinHash of the prompt's word shingles, hashed with xxh32 (a C function, instead of datasketch's default
    sha1 wrapper: hashing the shingles was most of the cost), as bytes of uint64 values."""
    m = _minhash(num_perm, seed)
    m.clear()
    m.update_batch(_shingles(text, shingle_words))  # a repeated shingle changes no minimum: no need for a set
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
        # every band looked up in one statement (one primary-key probe each): a statement per band cost more than the probes
        self.lookup = " UNION ALL ".join(["SELECT thread FROM bands WHERE band = ? AND key = ?"] * self.bands)

    def seen(self, sig: bytes) -> bool:
        """True if a near-duplicate was indexed before; otherwise index this signature and return False."""
        values = np.frombuffer(sig, dtype=np.uint64)
        width = self.rows * values.itemsize
        keys = [(b, sig[b * width:(b + 1) * width]) for b in range(self.bands)]
        candidates = {row[0] for row in self.db.execute(self.lookup, [x for key in keys for x in key])}
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
