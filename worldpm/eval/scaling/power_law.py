"""Power-law fits of loss curves: L(x) = (x/x_c)^-alpha and L(x) = L_inf + B * x^-alpha, with confidence intervals.

Both forms are fitted by least squares on log L (loss noise is roughly multiplicative, and it makes R^2 comparable between
the two forms: R^2 is always that of log L).

- Pure power law (Kaplan; the paper's form): ordinary least squares of log L on log x. slope = -alpha, x_c = exp(intercept/alpha).
- Saturating form: scipy `least_squares` (trust region, as `curve_fit` uses, with the analytic Jacobian; bounds L_inf in
  [0, max L], B > 0, alpha in [0, 10]) started from the best of a grid over L_inf (for each, a log-log OLS of L - L_inf
  gives B and alpha). x is divided by its geometric mean inside the fit so B is O(1) whatever the units; B is reported in
  the caller's units.
- Intervals: a case bootstrap (resample the (x, L) points with replacement; percentile interval), and, for the log-log slope,
  the classical OLS t interval (n - 2 degrees of freedom). Which one decides significance: the bootstrap when there are at
  least `min_points_bootstrap` points, else the t interval (a bootstrap of 3-5 points mostly redraws the same few lines).
  Points along one training run share the test set, so both intervals understate run-to-run variance; use seeds for that.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.bootstrap import percentile_ci

_MIN_BOOTSTRAP = 10  # fewer finite resamples than this give no bootstrap interval


def check_points(x: Sequence[float], y: Sequence[float], what: str = "fit", min_points: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The (x, loss) points as float arrays, or a one-line UserError saying why they cannot be fitted."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise UserError(f"{what}: x and loss must be 1-D and of equal length (got {x.shape} and {y.shape})")
    if len(x) < min_points:
        raise UserError(f"{what}: needs at least {min_points} points, got {len(x)}")
    for name, values in (("x", x), ("loss", y)):
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(f"{what}: non-positive or non-finite {name} {float(values[i])!r} at point {i} (x={float(x[i])!r}); "
                            f"a log-log fit needs {name} > 0")
    distinct = len(np.unique(x))
    if distinct < 2:
        raise UserError(f"{what}: all {len(x)} points have the same x={x[0]:g}; a slope needs at least 2 distinct x values")
    if distinct < min_points - 1:
        raise UserError(f"{what}: needs at least {min_points - 1} distinct x values, got {distinct}")
    return x, y


def _ols(X: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    xm, ym = X.mean(), Y.mean()
    slope = float(((X - xm) * (Y - ym)).sum() / ((X - xm) ** 2).sum())
    return slope, float(ym - slope * xm)


def _r2(Y: np.ndarray, pred: np.ndarray) -> float | None:
    ss_tot = float(((Y - Y.mean()) ** 2).sum())
    ss_res = float(((Y - pred) ** 2).sum())
    if ss_tot == 0.0:
        return None  # a flat curve: R^2 is undefined
    return 1.0 - ss_res / ss_tot


def power_law_curve(fit: Mapping, x) -> np.ndarray:
    """L(x) = exp(intercept + slope * log x) for a power-law fit given as a dict (`PowerLawFit.to_dict()`, as results store it)."""
    return np.exp(fit["intercept"] + fit["slope"] * np.log(np.asarray(x, dtype=float)))


def saturating_curve(fit: Mapping, x) -> np.ndarray:
    """L(x) = L_inf + b_ref * (x / x_ref)^-alpha for a saturating fit given as a dict (`SaturatingFit.to_dict()`)."""
    return fit["l_inf"] + fit["b_ref"] * np.power(np.asarray(x, dtype=float) / fit["x_ref"], -fit["alpha"])


def trend(ci: Sequence[float] | None) -> str:
    """How a log-log slope's interval reads: 'decreasing' (CI below 0), 'increasing' (above 0), else 'flat'."""
    if ci is None:
        return "undetermined"
    if ci[1] < 0:
        return "decreasing"
    if ci[0] > 0:
        return "increasing"
    return "flat"


@dataclass
class PowerLawFit:
    """L(x) = (x / x_c)^-alpha, i.e. log L = alpha*log x_c - alpha*log x."""

    n: int
    alpha: float
    slope: float                       # d log L / d log x = -alpha
    intercept: float                   # log L at x = 1
    x_c: float | None                  # exp(intercept / alpha); None when alpha <= 0 (no decreasing law)
    r2: float | None                   # of log L
    slope_ci_t: list[float] | None     # OLS t interval, n - 2 dof (None for 2 points)
    slope_ci_bootstrap: list[float] | None
    slope_ci: list[float] | None       # the one that decides `trend`
    ci_method: str                     # "bootstrap" | "t" | "none"
    alpha_ci: list[float] | None
    x_c_ci: list[float] | None         # bootstrap; None unless every resample has alpha > 0
    trend: str                         # decreasing | flat | increasing | undetermined
    ci_level: float = 0.95
    n_bootstrap: int = 0

    def predict(self, x) -> np.ndarray:
        return power_law_curve(vars(self), x)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_power_law(x: Sequence[float], y: Sequence[float], *, ci: float = 0.95, n_bootstrap: int = 2000, seed: int = 0,
                  min_points_bootstrap: int = 6, what: str = "power-law fit") -> PowerLawFit:
    """Fit L = (x/x_c)^-alpha by OLS in log-log space, with t and case-bootstrap intervals (see the module docstring)."""
    x, y = check_points(x, y, what)
    X, Y = np.log(x), np.log(y)
    n = len(X)
    slope, intercept = _ols(X, Y)
    pred = intercept + slope * X
    alpha = -slope
    x_c = math.exp(intercept / alpha) if alpha > 0 and abs(intercept / alpha) < 700 else None

    slope_ci_t = None
    if n > 2:
        from scipy import stats

        sxx = float(((X - X.mean()) ** 2).sum())
        resid_var = float(((Y - pred) ** 2).sum()) / (n - 2)
        half = float(stats.t.ppf(0.5 + ci / 2, n - 2)) * math.sqrt(resid_var / sxx)
        slope_ci_t = [slope - half, slope + half]

    slope_ci_boot, x_c_ci, boot_slopes = None, None, None
    if n_bootstrap > 0 and n >= 3:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_bootstrap, n))
        Xb, Yb = X[idx], Y[idx]
        xm, ym = Xb.mean(axis=1, keepdims=True), Yb.mean(axis=1, keepdims=True)
        sxx_b = ((Xb - xm) ** 2).sum(axis=1)
        ok = sxx_b > 1e-12 * max(float(((X - X.mean()) ** 2).sum()), 1e-300)  # resamples with one distinct x have no slope
        boot_slopes = ((Xb - xm) * (Yb - ym)).sum(axis=1)[ok] / sxx_b[ok]
        slope_ci_boot = percentile_ci(boot_slopes, ci, min_samples=_MIN_BOOTSTRAP)
        boot_alpha = -boot_slopes
        if len(boot_alpha) and (boot_alpha > 0).all():
            boot_int = (ym[ok, 0] - boot_slopes * xm[ok, 0])
            with np.errstate(over="ignore"):
                log_xc = boot_int / boot_alpha
            ci_log = percentile_ci(log_xc, ci, min_samples=_MIN_BOOTSTRAP)
            if ci_log is not None and max(abs(v) for v in ci_log) < 700:
                x_c_ci = [math.exp(ci_log[0]), math.exp(ci_log[1])]

    if slope_ci_boot is not None and n >= min_points_bootstrap:
        slope_ci, method = slope_ci_boot, "bootstrap"
    elif slope_ci_t is not None:
        slope_ci, method = slope_ci_t, "t"
    else:
        slope_ci, method = None, "none"
    alpha_ci = [-slope_ci[1], -slope_ci[0]] if slope_ci is not None else None
    return PowerLawFit(n=n, alpha=alpha, slope=slope, intercept=intercept, x_c=x_c, r2=_r2(Y, pred), slope_ci_t=slope_ci_t,
                       slope_ci_bootstrap=slope_ci_boot, slope_ci=slope_ci, ci_method=method, alpha_ci=alpha_ci,
                       x_c_ci=x_c_ci, trend=trend(slope_ci), ci_level=ci,
                       n_bootstrap=0 if boot_slopes is None else int(len(boot_slopes)))


@dataclass
class SaturatingFit:
    """L(x) = L_inf + B * x^-alpha."""

    n: int
    l_inf: float
    b: float | None                 # in the caller's x units (None if it overflows a float)
    alpha: float
    r2: float | None                # of log L, like the pure power law
    at_bound: list[str] = field(default_factory=list)
    l_inf_ci: list[float] | None = None
    alpha_ci: list[float] | None = None
    ci_level: float = 0.95
    n_bootstrap: int = 0            # resamples that converged
    x_ref: float = 1.0              # geometric mean of x used inside the fit
    b_ref: float = 0.0              # B at x_ref units: L = L_inf + b_ref * (x/x_ref)^-alpha

    def predict(self, x) -> np.ndarray:
        return saturating_curve(vars(self), x)

    def to_dict(self) -> dict:
        return asdict(self)


_ALPHA_MAX = 10.0


def _saturating_log(z, l_inf, b, alpha):
    return np.log(l_inf + b * np.exp(-alpha * z))


def _saturating_start(z: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Best of a grid over L_inf below min(L): for each, log(L - L_inf) = log b - alpha*z by OLS."""
    best, best_sse = None, math.inf
    for frac in (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99):
        l_inf = frac * float(y.min())
        slope, intercept = _ols(z, np.log(y - l_inf))
        alpha = min(max(-slope, 1e-3), _ALPHA_MAX)
        b = math.exp(intercept)
        sse = float(((np.log(y) - _saturating_log(z, l_inf, b, alpha)) ** 2).sum())
        if sse < best_sse:
            best, best_sse = (l_inf, b, alpha), sse
    return best


def _curve_fit(z, y, p0, y_max):
    """scipy's trust-region least squares on log L with the analytic Jacobian (what curve_fit does, without its overhead)."""
    from scipy.optimize import least_squares

    log_y = np.log(y)

    def residuals(p):
        return _saturating_log(z, *p) - log_y

    def jacobian(p):
        l_inf, b, alpha = p
        e = np.exp(-alpha * z)
        g = l_inf + b * e
        return np.stack([1.0 / g, e / g, -b * z * e / g], axis=1)

    lower, upper = [0.0, 1e-12, 0.0], [y_max, np.inf, _ALPHA_MAX]
    p0 = [min(max(p0[0], lower[0]), upper[0] * (1 - 1e-9)), max(p0[1], 1e-9), min(max(p0[2], 1e-6), _ALPHA_MAX * (1 - 1e-9))]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = least_squares(residuals, p0, jac=jacobian, bounds=(lower, upper), method="trf", max_nfev=2000)
    if not result.success or not np.isfinite(result.x).all():
        raise RuntimeError(result.message)
    return result.x, lower, upper


def fit_saturating(x: Sequence[float], y: Sequence[float], *, ci: float = 0.95, n_bootstrap: int = 200, seed: int = 0,
                   what: str = "saturating power-law fit") -> SaturatingFit:
    """Fit L = L_inf + B*x^-alpha by bounded least squares on log L, with case-bootstrap intervals."""
    x, y = check_points(x, y, what, min_points=4)
    x_ref = float(np.exp(np.log(x).mean()))
    z = np.log(x / x_ref)
    y_max = float(y.max())
    try:
        params, lower, upper = _curve_fit(z, y, _saturating_start(z, y), y_max)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{what}: did not converge ({str(exc).splitlines()[0]})") from None
    l_inf, b_ref, alpha = (float(p) for p in params)
    names = ("l_inf", "b", "alpha")
    at_bound = []
    for i, name in enumerate(names):
        if np.isclose(params[i], lower[i], rtol=0, atol=1e-9):
            at_bound.append(f"{name} at lower bound {lower[i]:g}")
        elif np.isfinite(upper[i]) and np.isclose(params[i], upper[i], rtol=1e-6):
            at_bound.append(f"{name} at upper bound {upper[i]:g}")
    with np.errstate(over="ignore"):
        b = b_ref * x_ref ** alpha
    pred = _saturating_log(z, l_inf, b_ref, alpha)

    boot = []
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(z)
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, size=n)
            if len(np.unique(idx)) < 4 or len(np.unique(z[idx])) < 3:
                continue
            try:
                p, _, _ = _curve_fit(z[idx], y[idx], params, float(y[idx].max()))
            except (RuntimeError, ValueError):
                continue
            boot.append(p)
    boot = np.asarray(boot).reshape(-1, 3)
    enough = len(boot) >= n_bootstrap / 2
    return SaturatingFit(n=len(z), l_inf=l_inf, b=float(b) if np.isfinite(b) else None, alpha=alpha, r2=_r2(np.log(y), pred),
                         at_bound=at_bound, l_inf_ci=percentile_ci(boot[:, 0], ci, min_samples=_MIN_BOOTSTRAP) if enough else None,
                         alpha_ci=percentile_ci(boot[:, 2], ci, min_samples=_MIN_BOOTSTRAP) if enough else None,
                         ci_level=ci, n_bootstrap=int(len(boot)), x_ref=x_ref, b_ref=b_ref)
