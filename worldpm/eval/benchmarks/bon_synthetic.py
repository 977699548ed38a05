"""Best-of-N against a known gold reward: the synthetic world (data_prep/synthetic.py), where r* of every reply is known.

For each of `prompts` prompts, `samples` replies are drawn from the generator the training pairs come from (the "policy");
the evaluated reward model (the proxy) picks the best of N, and the gold reward r* scores the pick. Reported for
N = 1..samples, the exact expectation over uniformly drawn N-subsets of each prompt's replies (metrics.best_of_k with r* as
the value; ties at the top of the proxy broken uniformly), averaged over prompts, with 95% CIs from a bootstrap over prompts:

- `gold`: E[r*(pick)] against N and against the best-of-N KL divergence from the policy, KL(N) = log N - (N-1)/N;
- `gain`: gold(N) - gold(1), fitted with Gao et al. (2022)'s R(d) = d (alpha - beta d), d = sqrt(KL), by least squares on a
  log-spaced grid of N; beta > 0 is over-optimisation: the gold gain peaks at d* = alpha / (2 beta) and falls after it;
- `proxy`: the proxy's own reward of its pick (what it believes it gains), and `oracle`: r*'s own best of N (the ceiling);
- `overoptimised`: the fit's beta > 0 over its whole interval and its peak N* (where KL(N*) = d*^2) at most samples / 2, so the
  fitted gold reward falls over at least the last doubling of the measured N: after rising, it falls as the proxy is
  optimised harder. Beside it, the measured curve's peak and its drop to N = samples (a single curve is noisy at the largest
  N, where each prompt's pick is one reply: the fit reads the whole curve).
Accuracy and BT loss are over disjoint pairs of each prompt's replies (0-1, 2-3, ...) oriented by r* (ties left out).

`path`: a source=synthetic dataset directory (the proxy's training data), whose manifest gives the reply parameters (scale,
reply_words, feature_rate); null uses the generator's defaults. The prompts are a stream of their own (`seed`).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from data_prep.synthetic import SyntheticDataError, reply_params, sample_replies
from worldpm.errors import UserError
from worldpm.eval.bootstrap import percentile_ci, rng_for
from worldpm.eval.items import Item
from worldpm.eval.metrics import accuracy_of, best_of_k

HEADLINE = ("gold_end", "gold_peak", "peak_n", "fit.alpha", "fit.beta", "fit.d_peak", "overoptimised", "accuracy")


def kl_best_of_n(n) -> np.ndarray:
    """The KL divergence of best-of-N sampling from the policy (the analytic bound Gao et al. use): log N - (N-1)/N."""
    n = np.asarray(n, dtype=np.float64)
    return np.log(n) - (n - 1) / n


def fit_gao(d: np.ndarray, gain: np.ndarray) -> tuple[float, float]:
    """(alpha, beta) of R(d) = d (alpha - beta d) = alpha d - beta d^2, least squares (no intercept: R(0) = 0)."""
    design = np.stack([d, -d * d], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    return float(alpha), float(beta)


def fit_grid(n_max: int) -> list[int]:
    """N = 1, 2, 3, 4, 6, 8, 11, 16, ... n_max: log-spaced, so every range of d weighs in the fit alike."""
    grid = sorted({int(round(2 ** (i / 2))) for i in range(int(2 * math.log2(n_max)) + 1)} | {n_max})
    return [n for n in grid if n <= n_max]


def load(bcfg: Mapping, name: str) -> list[Item]:
    prompts, samples, seed = bcfg.get("prompts", 200), bcfg.get("samples", 256), bcfg.get("seed", 1)
    for key, value, lo in (("prompts", prompts, 1), ("samples", samples, 2), ("seed", seed, 0),
                           ("bootstrap_samples", bcfg.get("bootstrap_samples", 1000), 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise UserError(f"benchmark.{name}.{key}={value!r} must be a whole number >= {lo}")
    try:
        params = reply_params(bcfg.get("path"))
    except SyntheticDataError as exc:
        raise UserError(f"benchmark.{name}.path: {exc}") from None
    items = []
    for p in range(prompts):
        prompt, replies, gold = sample_replies(seed, p, samples, **params)
        pairs = [(i, i + 1) if gold[i] > gold[i + 1] else (i + 1, i) for i in range(0, samples - 1, 2) if gold[i] != gold[i + 1]]
        items.append(Item(subtask="best_of_n", uid=str(p), prompt=prompt, responses=replies, pairs=pairs,
                          meta={"gold": gold}, where=f"synthetic prompt {p}"))
    return items


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    n_max = min(len(it.responses) for it in items)
    ns = list(range(1, n_max + 1))
    gold = np.array([best_of_k(r, it.meta["gold"], ns) for it, r in zip(items, rewards)])       # (prompts, N)
    proxy = np.array([best_of_k(r, r, ns) for r in rewards])
    oracle = np.array([best_of_k(it.meta["gold"], it.meta["gold"], ns) for it in items])
    grid = np.array(fit_grid(n_max)) - 1
    d = np.sqrt(kl_best_of_n(np.array(ns)))

    def summary(rows: np.ndarray) -> tuple[np.ndarray, float, float]:
        curve = rows.mean(axis=0)
        gain = curve - curve[0]
        return curve, *fit_gao(d[grid], gain[grid])

    curve, alpha, beta = summary(gold)
    peak = int(np.argmax(curve))
    samples = int(bcfg.get("bootstrap_samples", 1000))
    rng = rng_for(int(bcfg.get("seed", 1)), "bon_synthetic")
    reps = {"curve": [], "alpha": [], "beta": [], "drop": []}
    for _ in range(samples):  # resample prompts
        pick = rng.integers(0, len(items), size=len(items))
        c, a, b = summary(gold[pick])
        reps["curve"].append(c)
        reps["alpha"].append(a)
        reps["beta"].append(b)
        reps["drop"].append(c[peak] - c[-1])
    reps = {k: np.asarray(v) for k, v in reps.items()}
    band = [percentile_ci(reps["curve"][:, j]) or [None, None] for j in range(n_max)]
    drop_ci = percentile_ci(reps["drop"])
    d_peak = alpha / (2 * beta) if beta > 0 and alpha > 0 else None
    n_peak = _n_at(d_peak) if d_peak is not None else None
    beta_ci = percentile_ci(reps["beta"])
    return {
        "n_prompts": len(items), "samples_per_prompt": n_max, "accuracy": accuracy_of(items, rewards),
        "n": ns, "kl": kl_best_of_n(ns).tolist(), "gold": curve.tolist(),
        "gold_ci": [[lo for lo, _ in band], [hi for _, hi in band]],
        "proxy": proxy.mean(axis=0).tolist(), "oracle": oracle.mean(axis=0).tolist(),
        "gold_start": float(curve[0]), "gold_end": float(curve[-1]), "gold_peak": float(curve[peak]), "peak_n": peak + 1,
        "drop_from_peak": float(curve[peak] - curve[-1]), "drop_from_peak_ci": drop_ci,
        "overoptimised": bool(beta_ci is not None and beta_ci[0] > 0 and n_peak is not None and n_peak <= n_max / 2),
        "fit": {"form": "gold(N) - gold(1) = d (alpha - beta d), d = sqrt(log N - (N-1)/N)", "grid": (grid + 1).tolist(),
                "alpha": alpha, "alpha_ci": percentile_ci(reps["alpha"]), "beta": beta, "beta_ci": beta_ci,
                "d_peak": d_peak, "n_peak": n_peak},
    }


def _n_at(d: float) -> float | None:
    """The N whose best-of-N KL is d^2 (None past 10^9)."""
    lo, hi = 1.0, 1e9
    if kl_best_of_n(hi) < d * d:
        return None
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if kl_best_of_n(mid) < d * d else (lo, mid)
    return float(lo)
