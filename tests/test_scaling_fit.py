"""Power-law fits recover planted parameters from noisy curves; degenerate input is a one-line error."""
import math

import numpy as np
import pytest

from worldpm.errors import UserError
from worldpm.eval.scaling import power_law
from worldpm.eval.scaling.power_law import check_points, fit_power_law, fit_saturating, trend
from worldpm.eval.scaling.run import scaling_pattern

D = np.geomspace(1e3, 1e7, 16)


def pure_curve(seed, alpha=0.1, x_c=10.0, noise=0.01):
    rng = np.random.default_rng(seed)
    return (D / x_c) ** -alpha * np.exp(rng.normal(0.0, noise, len(D)))


def saturating_curve(seed, l_inf=0.4, b=2.0, alpha=0.3, noise=0.003):
    rng = np.random.default_rng(seed)
    return (l_inf + b * D ** -alpha) * np.exp(rng.normal(0.0, noise, len(D)))


def test_pure_power_law_is_exact_on_noise_free_data():
    fit = fit_power_law(D, (D / 25.0) ** -0.2)
    assert fit.alpha == pytest.approx(0.2, abs=1e-12) and fit.x_c == pytest.approx(25.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0) and fit.trend == "decreasing"
    assert fit.predict([100.0])[0] == pytest.approx(4.0 ** -0.2)


def test_pure_power_law_recovers_planted_parameters_and_its_intervals_cover_them():
    """16 log-spaced points over 4 decades, 1% multiplicative noise, 40 seeds. Tolerances: |alpha - 0.1| < 0.005 and
    |log10 x_c - 1| < 0.25 for every seed; the 95% intervals cover the truth in >= 80% (bootstrap) / 85% (t) of the seeds."""
    boot_cover = t_cover = 0
    for seed in range(40):
        fit = fit_power_law(D, pure_curve(seed), seed=seed, n_bootstrap=1000)
        assert abs(fit.alpha - 0.1) < 0.005, (seed, fit.alpha)
        assert abs(math.log10(fit.x_c) - 1.0) < 0.25, (seed, fit.x_c)
        assert fit.ci_method == "bootstrap" and fit.r2 > 0.97
        lo, hi = fit.alpha_ci
        boot_cover += lo <= 0.1 <= hi
        t_cover += fit.slope_ci_t[0] <= -0.1 <= fit.slope_ci_t[1]
        assert fit.x_c_ci[0] < fit.x_c < fit.x_c_ci[1]
    assert boot_cover >= 32 and t_cover >= 34, (boot_cover, t_cover)


def test_pure_power_law_against_an_independent_ols():
    y = pure_curve(3)
    fit = fit_power_law(D, y, n_bootstrap=0)
    slope, intercept = np.polyfit(np.log(D), np.log(y), 1)
    assert fit.slope == pytest.approx(slope, rel=1e-10) and fit.intercept == pytest.approx(intercept, rel=1e-10)
    from scipy import stats

    reg = stats.linregress(np.log(D), np.log(y))
    assert fit.r2 == pytest.approx(reg.rvalue ** 2, rel=1e-10)
    half = stats.t.ppf(0.975, len(D) - 2) * reg.stderr
    assert fit.slope_ci_t == pytest.approx([reg.slope - half, reg.slope + half], rel=1e-9)
    assert fit.ci_method == "t"  # no bootstrap asked: the t interval decides


def test_saturating_form_recovers_l_inf_b_and_alpha():
    """Planted L_inf=0.4, B=2, alpha=0.3; 0.3% multiplicative noise, 10 seeds. Tolerances: |L_inf - 0.4| < 0.01,
    |alpha - 0.3| < 0.03, B within 25%; the 95% bootstrap intervals cover L_inf and alpha in >= 8 of 10 seeds."""
    cover_l = cover_a = 0
    for seed in range(10):
        fit = fit_saturating(D, saturating_curve(seed), seed=seed, n_bootstrap=100)
        assert abs(fit.l_inf - 0.4) < 0.01 and abs(fit.alpha - 0.3) < 0.03 and abs(fit.b / 2.0 - 1) < 0.25, fit
        assert not fit.at_bound and fit.r2 > 0.99
        cover_l += fit.l_inf_ci[0] <= 0.4 <= fit.l_inf_ci[1]
        cover_a += fit.alpha_ci[0] <= 0.3 <= fit.alpha_ci[1]
        assert fit.predict(D) == pytest.approx(fit.l_inf + fit.b * D ** -fit.alpha, rel=1e-9)
    assert cover_l >= 8 and cover_a >= 8, (cover_l, cover_a)


def test_curves_from_stored_fit_dicts_match_predict():
    pl = fit_power_law(D, pure_curve(0), n_bootstrap=0)
    sat = fit_saturating(D, saturating_curve(0), n_bootstrap=0)
    grid = np.geomspace(D[0], D[-1], 7)
    assert np.array_equal(power_law.power_law_curve(pl.to_dict(), grid), pl.predict(grid))
    assert np.array_equal(power_law.saturating_curve(sat.to_dict(), grid), sat.predict(grid))


def test_saturating_form_on_a_pure_power_law_puts_l_inf_near_zero():
    fit = fit_saturating(D, (D / 10.0) ** -0.1, n_bootstrap=0)
    assert fit.l_inf < 0.02 and fit.alpha == pytest.approx(0.1, abs=0.01)


def test_flat_noisy_curves_read_as_flat_at_about_the_nominal_rate():
    """No trend + 1% noise, 40 seeds: the 95% slope interval includes 0 (no scaling) in >= 80% of them."""
    flat = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        fit = fit_power_law(D, 0.65 * np.exp(rng.normal(0, 0.01, len(D))), seed=seed, n_bootstrap=1000)
        flat += fit.trend == "flat"
        assert fit.trend != "increasing" or fit.slope_ci[0] > 0
    assert flat >= 32, flat
    rng = np.random.default_rng(0)
    rising = fit_power_law(D, 0.5 * (D / 1e3) ** 0.05 * np.exp(rng.normal(0, 0.005, len(D))))
    assert rising.trend == "increasing" and rising.x_c is None


def test_few_points_use_the_t_interval():
    fit = fit_power_law(D[:4], (D[:4] / 10) ** -0.1 * np.array([1.0, 1.01, 0.99, 1.0]))
    assert fit.ci_method == "t" and fit.slope_ci == fit.slope_ci_t
    two = fit_power_law([1e3, 1e4], [0.6, 0.5])
    assert two.ci_method == "none" and two.trend == "undetermined" and two.r2 == pytest.approx(1.0)


@pytest.mark.parametrize("x,y,needle", [
    ([1e3], [0.5], "needs at least 2 points, got 1"),
    ([], [], "needs at least 2 points, got 0"),
    ([1e3, 1e4, 1e5], [0.5, 0.0, 0.4], "non-positive or non-finite loss 0.0"),
    ([1e3, 1e4, 1e5], [0.5, -0.1, 0.4], "non-positive or non-finite loss -0.1"),
    ([1e3, 1e4, 1e5], [0.5, float("nan"), 0.4], "non-positive or non-finite loss nan"),
    ([0.0, 1e4, 1e5], [0.5, 0.45, 0.4], "non-positive or non-finite x 0.0"),
    ([1e3, 1e3, 1e3], [0.5, 0.45, 0.4], "all 3 points have the same x=1000"),
    ([1e3, 1e4], [0.5], "equal length"),
])
def test_degenerate_input_is_a_one_line_error(x, y, needle):
    with pytest.raises(UserError) as err:
        fit_power_law(x, y, what="fit of tiny")
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and msg.startswith("fit of tiny")


def test_saturating_form_needs_four_points_and_three_distinct_x():
    with pytest.raises(UserError, match="needs at least 4 points, got 3"):
        fit_saturating(D[:3], [0.6, 0.5, 0.45])
    with pytest.raises(UserError, match="needs at least 3 distinct x values, got 2"):
        fit_saturating([1e3, 1e3, 1e4, 1e4], [0.6, 0.61, 0.5, 0.51])
    with pytest.raises(UserError, match="needs at least 3 distinct x values"):
        check_points([1e3, 1e3, 1e4, 1e4], [0.6, 0.61, 0.5, 0.51], min_points=4)


def test_trend_and_pattern_readings():
    assert trend([-0.2, -0.01]) == "decreasing" and trend([-0.1, 0.1]) == "flat" and trend([0.01, 0.2]) == "increasing"
    assert trend(None) == "undetermined"
    assert scaling_pattern(["decreasing"] * 3) == "scales"
    assert scaling_pattern(["flat", "flat", "decreasing"]) == "emergent"
    assert scaling_pattern(["flat", "decreasing", "decreasing"]) == "emergent"
    assert scaling_pattern(["flat", "increasing", "flat"]) == "no scaling"
    assert scaling_pattern(["decreasing", "flat", "decreasing"]) == "mixed"
    assert scaling_pattern(["decreasing", "undetermined", "decreasing"]) == "scales"
    assert scaling_pattern(["undetermined"]) == "undetermined"


def test_run_dir_prefers_evals_config_and_falls_back_to_the_model_path(tmp_path):
    from worldpm.eval.scaling.points import _run_dir

    here = tmp_path / "evals" / "step-10" / "results.json"
    ckpt = "runs/a/checkpoints/step-00000010/hf"
    assert _run_dir({"model_path": "/elsewhere/hf", "config": {"checkpoints": "all", "run_dir": "runs/a/"}}, here) == "runs/a"
    assert _run_dir({"model_path": ckpt, "config": {"checkpoints": None, "run_dir": "ignored"}}, here) == "runs/a"
    assert _run_dir({"model_path": ckpt, "config": {"benchmark": ["x"]}}, here) == "runs/a"   # older files: no run_dir
    assert _run_dir({"model_path": "runs/b/final"}, here) == "runs/b"
    assert _run_dir({"model_path": None}, here) == str(tmp_path / "evals")
