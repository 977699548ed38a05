"""Percentile bootstrap CIs that resample items (clusters), not pairs: pairs sharing a prompt are not independent.

Every statistic here is a ratio of per-item sums (accuracy = units won / units, BT loss = loss sum / pairs), so a replicate is
W @ num / W @ den with W the multinomial resampling counts; accuracy and BT loss use the same draws.
"""
from __future__ import annotations

import zlib

import numpy as np

_MAX_CELLS = 2_000_000  # resampling-count cells held at once (memory bound for large sets such as PPE's 16k pairs)


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by the run seed and a name (e.g. benchmark/subtask): reproducible and independent of run order."""
    return np.random.default_rng([int(seed), zlib.crc32("/".join(names).encode())])


def ratio_replicates(pairs: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, samples: int) -> list[np.ndarray]:
    """Bootstrap replicates of sum(num)/sum(den) for each (num, den) over the same resampled items."""
    n = len(pairs[0][0])
    out = [np.full(samples, np.nan) for _ in pairs]
    if n == 0 or samples <= 0:
        return out
    chunk = max(1, _MAX_CELLS // n)
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start).astype(np.float64)
        for k, (num, den) in enumerate(pairs):
            d = weights @ den
            with np.errstate(invalid="ignore", divide="ignore"):
                out[k][start:stop] = np.where(d > 0, (weights @ num) / np.where(d > 0, d, 1.0), np.nan)
    return out


def percentile_ci(replicates: np.ndarray, confidence: float = 0.95, min_samples: int = 1) -> list[float] | None:
    """The central `confidence` percentile interval of the finite replicates; None with fewer than `min_samples` of them."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < max(min_samples, 1):
        return None
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return [float(lo), float(hi)]
