"""Style control (WorldPM Eq. 3): features, the normalised difference, and the regression recovering planted coefficients."""
import numpy as np
import pytest

from worldpm.eval.style import (FEATURES, fit_logistic, markdown_counts, normalized_difference, style_control, symmetrised)


def test_markdown_counts_skip_fenced_code():
    text = ("# Title\n\nSome **bold** and __also bold__ text.\n\n- one\n* two\n+ three\n1. first\n2) second\n\n"
            "```python\n# a comment, not a header\n- not a list\n**not bold**\n```\n#hashtag is not a header\n---\n")
    assert markdown_counts(text) == (1, 5, 2)
    assert markdown_counts("plain text") == (0, 0, 0)


def test_normalized_difference_defines_zero_over_zero_as_zero():
    assert normalized_difference(np.array([0, 2, 3, 0]), np.array([0, 2, 1, 4])).tolist() == [0.0, 0.0, 0.5, -1.0]


def synthetic(n, alpha, beta, seed=0):
    """Pairs in the benchmark's orientation (preferred first) with labels drawn from Eq. 3."""
    rng = np.random.default_rng(seed)
    D = rng.normal(0, 1.5, n)
    Z = rng.uniform(-1, 1, (n, len(FEATURES)))
    y = rng.random(n) < 1 / (1 + np.exp(-(alpha * D + Z @ beta)))
    sign = np.where(y, 1.0, -1.0)  # the preferred side is a when y = 1, else b: flip the differences
    return D * sign, Z * sign[:, None]


def test_style_regression_recovers_planted_alpha_and_beta():
    alpha, beta = 1.3, np.array([0.8, -0.5, 0.3, 0.0])
    D, Z = synthetic(20000, alpha, beta)
    out = style_control(D, Z, np.arange(len(D)), l2=0.0)
    assert out["joint"]["alpha"] == pytest.approx(alpha, abs=0.08)
    assert [out["joint"]["beta"][f] for f in FEATURES] == pytest.approx(beta.tolist(), abs=0.08)
    assert out["reward_only"]["alpha"] < alpha  # omitting style attenuates alpha...
    assert out["joint"]["loss"] < out["reward_only"]["loss"] < out["style_only"]["loss"]  # ...and style explains some labels
    cf = out["cross_fitted"]
    assert cf["folds"] == 2 and len(cf["alpha"]) == 2 and all(a == pytest.approx(alpha, abs=0.15) for a in cf["alpha"])
    assert cf["joint"]["accuracy"] == pytest.approx(out["joint"]["accuracy"], abs=0.02)


def test_symmetrised_fit_equals_the_fit_on_randomly_assigned_sides():
    rng = np.random.default_rng(5)
    D, Z = synthetic(3000, 0.9, np.array([0.4, 0.0, -0.6, 0.2]), seed=5)
    X = np.column_stack([D, Z])
    both_orders = fit_logistic(*symmetrised(X))
    flip = rng.random(len(X)) < 0.5  # present a random side first; the label says whether the first is preferred
    one_order = fit_logistic(np.where(flip[:, None], -X, X), (~flip).astype(float))
    assert both_orders == pytest.approx(one_order, abs=1e-4)


def test_style_partialled_accuracy_removes_a_reward_that_only_tracks_style():
    rng = np.random.default_rng(3)
    n = 8000
    Z = rng.uniform(-1, 1, (n, len(FEATURES)))
    y = rng.random(n) < 1 / (1 + np.exp(-4 * Z[:, 0]))  # the label depends on length only
    sign = np.where(y, 1.0, -1.0)
    Zo = Z * sign[:, None]
    D = 2.0 * Zo[:, 0] + rng.normal(0, 0.05, n)         # and so does the reward
    out = style_control(D, Zo, np.arange(n))
    assert out["accuracy_raw"] > 0.7 and out["style_only"]["accuracy"] == pytest.approx(out["accuracy_raw"], abs=0.02)
    assert out["style_partialled"]["accuracy"] == pytest.approx(0.5, abs=0.03)
    assert out["style_partialled"]["gamma"]["tokens"] == pytest.approx(2.0, abs=0.01)


def test_tiny_sets_are_reported_not_crashed():
    assert style_control([1.0], np.zeros((1, 4)), [0])["skipped"] == "fewer than 2 pairs"
    out = style_control([1.0, 2.0, 0.5], np.zeros((3, 4)), [0, 0, 0])  # one item: no cross-fitting, separable: finite
    assert out["cross_fitted"] is None and np.isfinite(out["joint"]["alpha"]) and out["joint"]["accuracy"] == 1.0
