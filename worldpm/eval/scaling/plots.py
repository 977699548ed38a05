"""Figures of the scaling analysis, after the paper's main one: a panel per category (or subtask), log-log loss against pairs
seen, a curve per model size, the fits overlaid; and loss against model size from the final checkpoints."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from worldpm.atomic_dir import atomic_path
from worldpm.eval.report import pyplot
from worldpm.eval.scaling.power_law import power_law_curve, saturating_curve


def human_count(n: float | None) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def model_label(model: dict) -> str:
    return f"{model['model']} ({human_count(model.get('n_params'))})"


def _figure(n_panels: int):
    plt = pyplot()
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n_panels])


def _save(plt, fig, stem: Path, formats: Sequence[str]) -> list[str]:
    fig.tight_layout()
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=130, format=fmt)
        written.append(str(path))
    plt.close(fig)
    return written


def _log_axes(ax) -> None:
    """Log-log axes whose loss ticks read as plain numbers (0.45, not 4.5x10^-1): losses span less than a decade."""
    from matplotlib.ticker import FormatStrFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 1.25:  # a flat curve should look flat, not fill the panel with noise
        mid = math.sqrt(lo * hi)
        ax.set_ylim(mid / 1.12, mid * 1.12)
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(True, which="both", alpha=0.25)


def _colors(n: int):
    cmap = pyplot().colormaps["viridis"]
    return [cmap(0.1 + 0.75 * i / max(n - 1, 1)) for i in range(n)]


def plot_data_scaling(points, fits: list[dict], models: list[dict], keys: list[str], level: str, stem: Path,
                      formats: Sequence[str], x_label: str = "pairs seen", bayes: dict | None = None) -> list[str]:
    """One panel per key: mean loss over runs at each x (markers, a band from min to max when there are several runs),
    the power law dashed and the saturating form dotted over the range they were fitted on."""
    plt, fig, axes = _figure(len(keys))
    colors = dict(zip([m["model"] for m in models], _colors(len(models))))
    fit_of = {(f["key"], f["model"]): f for f in fits if f["level"] == level}
    for ax, key in zip(axes, keys):
        for m in models:
            by_x = defaultdict(list)
            for p in points:
                if p.level == level and p.key == key and p.model == m["model"] and p.x > 0:
                    by_x[p.x].append(p.loss)
            if not by_x:
                continue
            xs = np.array(sorted(by_x))
            mean = np.array([np.mean(by_x[x]) for x in xs])
            color = colors[m["model"]]
            fit = fit_of.get((key, m["model"]), {})
            pl = fit.get("power_law")
            label = model_label(m) + (f", α={pl['alpha']:.3g}" if pl else "")
            ax.plot(xs, mean, "o-", color=color, ms=4, lw=0.6, alpha=0.6, label=label)
            if any(len(v) > 1 for v in by_x.values()):
                ax.fill_between(xs, [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs], color=color, alpha=0.15, lw=0)
            if pl:
                grid = np.geomspace(*fit["x_range"], 100)
                ax.plot(grid, power_law_curve(pl, grid), "--", color=color, lw=1.6)
            sat = fit.get("saturating") or {}
            if "l_inf" in sat:
                grid = np.geomspace(*fit["x_range"], 100)
                ax.plot(grid, saturating_curve(sat, grid), ":", color=color, lw=1.4)
        if bayes is not None and bayes.get("applies_to") in (None, key):
            ax.axhline(bayes["loss"], color="black", ls="-.", lw=1, label=f"Bayes-optimal {bayes['loss']:.3f}")
        _log_axes(ax)
        ax.set_title(key)
        ax.set_xlabel(x_label + " (log)")
        ax.set_ylabel("test BT loss (log)")
        ax.legend(fontsize=7)
    # two lines: on one line the key overflows a single-panel figure
    fig.suptitle("loss vs data\nmeasured (markers), power law (dashed), L∞ + B·D^-α (dotted)", fontsize=9)
    return _save(plt, fig, stem, formats)


def plot_model_scaling(model_fits: list[dict], keys: list[str], level: str, stem: Path, formats: Sequence[str],
                       param: str) -> list[str]:
    """One panel per key: final-checkpoint loss against parameters, with the L(N) power law."""
    plt, fig, axes = _figure(len(keys))
    fit_of = {f["key"]: f for f in model_fits if f["level"] == level}
    for ax, key in zip(axes, keys):
        fit = fit_of.get(key)
        if not fit or not fit["points"]:
            ax.set_title(f"{key} (no points)")
            continue
        ns = np.array([p["n"] for p in fit["points"]])
        losses = np.array([p["loss"] for p in fit["points"]])
        ax.plot(ns, losses, "o", color="tab:blue", ms=5)
        for p in fit["points"]:
            ax.annotate(p["model"], (p["n"], p["loss"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        pl = fit.get("power_law")
        title = key
        if pl:
            grid = np.geomspace(ns.min(), ns.max(), 50)
            ax.plot(grid, power_law_curve(pl, grid), "--", color="tab:blue")
            title += f"  α_N={pl['alpha']:.3g}"
        _log_axes(ax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{param} (log)")
        ax.set_ylabel("final test BT loss (log)")
    return _save(plt, fig, stem, formats)
