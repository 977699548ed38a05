"""Style control, WorldPM's Eq. 3: P(a > b) = sigmoid(alpha * (r_a - r_b) + beta' Z), Z the normalised style difference.

Style features of a reply (Chatbot Arena's style-control set, as in the paper): length in tokens (the model's tokenizer),
markdown headers, list items (ordered and unordered) and bold spans, counted outside fenced code blocks so that `#` comments
in code are not headers. Z = (f_a - f_b) / (f_a + f_b) per feature, with 0/0 = 0.

Benchmarks give every pair as (preferred, dispreferred), so every label is 1 and an intercept-free fit would be degenerate.
Each pair enters the fit in both orders, (D, Z, y=1) and (-D, -Z, y=0): the likelihood is then that of labels drawn on a random
side assignment, its maximiser is the same as for any fixed side assignment, and no intercept is needed (the symmetric data
has none). Reported per benchmark, fitted on the evaluation set itself as in the paper:
- `joint`: alpha, beta and accuracy of sign(alpha D + beta' Z);
- `reward_only` (beta = 0) and `style_only` (alpha = 0): the latter is the benchmark's style bias, how far style alone predicts
  its labels;
- `style_partialled`: accuracy of the reward difference with style partialled out (Frisch-Waugh): the residual of D after
  least squares on Z, D - gamma' Z, is what the reward says beyond style; accuracy = share of pairs where it is > 0;
- `cross_fitted`: the same fits on one half of the items, evaluated on the other half, both ways (items are split, not pairs).
Fits carry a small L2 penalty (`l2`) so that separable data (a tiny set, a perfect reward) still gives finite coefficients.
Accuracy counts a zero margin as wrong, as everywhere else.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

FEATURES = ("tokens", "headers", "list_items", "bold")
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_HEADER = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.M)
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+\S", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+?\*\*|__[^_\n]+?__")


def markdown_counts(text: str) -> tuple[int, int, int]:
    """(headers, list items, bold spans) outside fenced code blocks."""
    prose = _FENCE.sub("", text)
    return len(_HEADER.findall(prose)), len(_LIST_ITEM.findall(prose)), len(_BOLD.findall(prose))


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    den = a + b
    return np.divide(a - b, den, out=np.zeros(np.broadcast(a, b).shape), where=den != 0)


def _loss_grad(theta, X, s, l2):
    m = s * (X @ theta)
    loss = np.mean(np.logaddexp(0.0, -m)) + l2 * theta @ theta
    p = 0.5 * (1.0 - np.tanh(m / 2.0))  # sigmoid(-m), stable
    grad = -(X * (s * p)[:, None]).mean(axis=0) + 2.0 * l2 * theta
    return loss, grad


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 0.0) -> np.ndarray:
    """Intercept-free logistic regression of y in {0,1} on X (L-BFGS on the mean log loss + l2 |theta|^2)."""
    from scipy.optimize import minimize

    X = np.asarray(X, dtype=np.float64)
    s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    res = minimize(_loss_grad, np.zeros(X.shape[1]), args=(X, s, l2), jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000, "gtol": 1e-10})
    return res.x


def symmetrised(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (preferred, dispreferred) row in both orders: (X, 1) and (-X, 0)."""
    return np.vstack([X, -X]), np.concatenate([np.ones(len(X)), np.zeros(len(X))])


def _fit(X: np.ndarray, l2: float) -> np.ndarray:
    return fit_logistic(*symmetrised(X), l2=l2)


def _eval(X: np.ndarray, theta: np.ndarray) -> dict:
    m = X @ theta  # margins of the preferred side
    return {"loss": float(np.mean(np.logaddexp(0.0, -m))), "accuracy": float(np.mean(m > 0))}


def _named(beta: np.ndarray) -> dict[str, float]:
    return {f: float(b) for f, b in zip(FEATURES, beta)}


def _fits(D: np.ndarray, Z: np.ndarray, l2: float) -> dict:
    X = np.column_stack([D, Z])
    return {"joint": _fit(X, l2), "reward_only": _fit(D[:, None], l2), "style_only": _fit(Z, l2),
            "gamma": np.linalg.lstsq(Z, D, rcond=None)[0]}


def style_control(D: Sequence[float], Z: np.ndarray, groups: Sequence[int], l2: float = 1e-3, folds: int = 2,
                  seed: int = 0) -> dict:
    """D: reward differences (preferred - dispreferred) per pair; Z: (pairs, 4) normalised style differences; groups: item of
    each pair (cross-fitting splits items)."""
    D, Z, groups = np.asarray(D, dtype=np.float64), np.asarray(Z, dtype=np.float64).reshape(len(D), len(FEATURES)), np.asarray(groups)
    out: dict = {"n_pairs": int(len(D)), "features": list(FEATURES)}
    if len(D) < 2:
        out["skipped"] = "fewer than 2 pairs"
        return out
    f = _fits(D, Z, l2)
    X = np.column_stack([D, Z])
    out["accuracy_raw"] = float(np.mean(D > 0))
    out["joint"] = {"alpha": float(f["joint"][0]), "beta": _named(f["joint"][1:]), **_eval(X, f["joint"])}
    out["reward_only"] = {"alpha": float(f["reward_only"][0]), **_eval(D[:, None], f["reward_only"])}
    out["style_only"] = {"beta": _named(f["style_only"]), **_eval(Z, f["style_only"])}
    out["style_partialled"] = {"gamma": _named(f["gamma"]), "accuracy": float(np.mean(D - Z @ f["gamma"] > 0))}
    out["cross_fitted"] = cross_fitted(D, Z, groups, l2, folds, seed)
    return out


def cross_fitted(D: np.ndarray, Z: np.ndarray, groups: np.ndarray, l2: float, folds: int, seed: int) -> dict | None:
    unique = np.unique(groups)
    if folds < 2 or len(unique) < folds:
        return None
    perm = np.random.default_rng(seed).permutation(unique)
    fold_of = {g: k % folds for k, g in enumerate(perm)}
    fold = np.array([fold_of[g] for g in groups])
    X = np.column_stack([D, Z])
    margins = {"joint": np.zeros(len(D)), "style_only": np.zeros(len(D)), "style_partialled": np.zeros(len(D))}
    alphas, betas = [], []
    for k in range(folds):
        train, test = fold != k, fold == k
        if train.sum() < 2 or test.sum() == 0:
            return None
        f = _fits(D[train], Z[train], l2)
        margins["joint"][test] = X[test] @ f["joint"]
        margins["style_only"][test] = Z[test] @ f["style_only"]
        margins["style_partialled"][test] = D[test] - Z[test] @ f["gamma"]
        alphas.append(float(f["joint"][0]))
        betas.append(_named(f["joint"][1:]))
    out = {"folds": folds, "alpha": alphas, "beta": betas}
    for key in ("joint", "style_only"):
        out[key] = {"loss": float(np.mean(np.logaddexp(0.0, -margins[key]))), "accuracy": float(np.mean(margins[key] > 0))}
    out["style_partialled"] = {"accuracy": float(np.mean(margins["style_partialled"] > 0))}
    return out


def response_features(items, scored) -> list[np.ndarray]:
    """Per item, a (responses, 4) array of [tokens, headers, list items, bold spans]."""
    counts: dict[str, tuple[int, int, int]] = {}
    out = []
    for item, tokens in zip(items, scored.reply_tokens):
        rows = []
        for reply, t in zip(item.responses, tokens):
            if reply not in counts:
                counts[reply] = markdown_counts(reply)
            rows.append((float(t), *counts[reply]))
        out.append(np.asarray(rows, dtype=np.float64).reshape(len(item.responses), len(FEATURES)))
    return out


def pair_features(items, rewards, features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D, Z, item index) over every pair of a benchmark's items."""
    D, Z, groups = [], [], []
    for i, (item, r, feats) in enumerate(zip(items, rewards, features)):
        for a, b in item.pairs:
            D.append(r[a] - r[b])
            Z.append(normalized_difference(feats[a], feats[b]))
            groups.append(i)
    return np.asarray(D, dtype=np.float64), np.asarray(Z, dtype=np.float64).reshape(-1, len(FEATURES)), np.asarray(groups)
