"""`report.md`: the results as tables, one plot per category (BT loss and accuracy per subtask, with CIs), PPE's best-of-K
curves, the style-control fits; and, for a checkpoint series, `series.md` with the category curves over pairs seen.
"""
from __future__ import annotations

import math
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Mapping

from worldpm.atomic_dir import atomic_path, write_text
from worldpm.eval.benchmarks.registry import module_for
from worldpm.eval.categories import order_categories



def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(value, ci, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else f"{value:.{digits}f}"


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
            out.append((key, v))
    return out


def headline(bench: str, results: Mapping) -> list[tuple[str, Any]]:
    """The official aggregates worth a line in the report: the benchmark module's HEADLINE patterns."""
    bcfg = (results.get("config") or {}).get("benchmark", {}).get(bench, {})
    patterns = getattr(module_for(bench, bcfg), "HEADLINE", ("*",))
    return [(k, v) for k, v in _flatten(results["benchmarks"][bench]["official"]) if any(fnmatchcase(k, p) for p in patterns)]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (matplotlib is in the `eval` extra: imported when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def category_plot(results: Mapping, category: str, path: Path) -> Path | None:
    plt = pyplot()

    names = results["categories"].get(category, {}).get("subtasks", [])
    rows = [(n, results["benchmarks"][n.split("/")[0]]["subtasks"][n.split("/", 1)[1]]) for n in names]
    rows = [(n, s) for n, s in rows if s["bt_loss"] is not None]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.6), sharey=True)
    y = list(range(len(rows)))
    for ax, metric, ref, label in ((axes[0], "bt_loss", math.log(2), "BT loss (ln 2 = chance)"),
                                   (axes[1], "accuracy", 0.5, "accuracy (0.5 = chance)")):
        vals = [s[metric] if s[metric] is not None else float("nan") for _, s in rows]
        err = [[max(0.0, v - (s[f"{metric}_ci"] or [v, v])[0]) for v, (_, s) in zip(vals, rows)],
               [max(0.0, (s[f"{metric}_ci"] or [v, v])[1] - v) for v, (_, s) in zip(vals, rows)]]
        ax.barh(y, vals, xerr=err, color="#4c72b0" if metric == "bt_loss" else "#55a868", capsize=3)
        ax.axvline(ref, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
    axes[0].set_yticks(y, [n for n, _ in rows])
    axes[0].invert_yaxis()
    cat = results["categories"][category]
    fig.suptitle(f"{category}: mean BT loss {_f(cat['bt_loss'])}, mean accuracy {_f(cat['accuracy'])} over {cat['n_subtasks']} subtasks")
    _save(fig, path)
    plt.close(fig)
    return path


def best_of_k_curves(official: Mapping) -> dict[str, Mapping]:
    """PPE's best-of-K curves in a benchmark's official results, by set: PPE's correctness sets (`<set>.best_of_k`) and the
    other benchmarks with several responses per prompt (`best_of_k.<subtask>`: RM-Bench, RewardBench 2, RMB BoN)."""
    curves = {k: v["best_of_k"] for k, v in official.items() if isinstance(v, Mapping) and "expected_correctness" in
              (v.get("best_of_k") or {})}
    curves.update(official.get("best_of_k") or {})
    return curves


def best_of_k_plot(curves: Mapping[str, Mapping], bench: str, path: Path) -> Path | None:
    plt = pyplot()

    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, v) in enumerate(sorted(curves.items())):
        color = f"C{i % 10}"
        ax.plot(v["k"], v["expected_correctness"], color=color, label=f"{name} (reward argmax)")
        ax.plot(v["k"], v["oracle"], color=color, linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (responses drawn)")
    ax.set_ylabel("expected correctness of the pick")
    ax.set_title(f"{bench} best-of-K (dotted: oracle, some drawn response correct)")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def best_of_n_plot(official: Mapping, bench: str, path: Path) -> Path:
    """Gold reward of the best of N against N (CI band; the oracle and the proxy's own belief beside it) and the gain against
    d = sqrt(KL) with Gao et al.'s fit."""
    plt = pyplot()

    n, gold, (lo, hi) = official["n"], official["gold"], official["gold_ci"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.fill_between(n, [x if x is not None else g for x, g in zip(lo, gold)],
                      [x if x is not None else g for x, g in zip(hi, gold)], color="C0", alpha=0.25, linewidth=0)
    left.plot(n, gold, color="C0", label="gold reward of the proxy's pick (95% CI)")
    left.plot(n, official["oracle"], color="grey", linestyle=":", label="gold's own best of N (oracle)")
    left.set_xscale("log", base=2)
    left.set_xlabel("N (replies drawn)")
    left.set_ylabel("gold reward r*")
    proxy = left.twinx()
    proxy.plot(n, official["proxy"], color="C3", linestyle="--", linewidth=1, label="proxy reward of its pick (right axis)")
    proxy.set_ylabel("proxy reward")
    handles = left.get_legend_handles_labels()[0] + proxy.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    best_of_n_gain(right, official, "C0", "")
    right.legend(fontsize=8)
    fig.subplots_adjust(wspace=0.4)  # room for the proxy's axis between the panels
    fit = official["fit"]
    fig.suptitle(f"{bench}: best-of-N against the gold reward ({official['n_prompts']} prompts); fit alpha {_f(fit['alpha'])}, "
                 f"beta {_f(fit['beta'])}" + (f", peak at N = {_n_peak(fit['n_peak'])}" if fit.get("n_peak") else ""))
    _save(fig, path)
    plt.close(fig)
    return path


def best_of_n_gain(ax, official: Mapping, color: str, label: str) -> None:
    """The gold gain gold(N) - gold(1) against d = sqrt(KL) (points) and its fit d (alpha - beta d) (dashed), on `ax`."""
    import numpy as np

    d = np.sqrt(np.asarray(official["kl"]))
    gain = np.asarray(official["gold"]) - official["gold"][0]
    fit = official["fit"]
    ax.plot(d, gain, color=color, marker=".", markersize=3, linewidth=1, label=f"{label}gold gain".strip())
    grid = np.linspace(0, d[-1], 100)
    ax.plot(grid, grid * (fit["alpha"] - fit["beta"] * grid), color=color, linestyle="--", linewidth=1,
            label=f"{label}fit d(α - βd)".strip())
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("d = sqrt(KL), KL = log N - (N-1)/N")
    ax.set_ylabel("gold(N) - gold(1)")


def best_of_n_table(official: Mapping) -> list[str]:
    """Gold reward of the best of N at N = 1, 2, 4, ... with its CI, the KL, the oracle; then the fit and the verdict."""
    rows = ["| N | KL | gold reward [95% CI] | proxy reward | oracle |", "|---:|---:|---|---:|---:|"]
    n = official["n"]
    for i in [2 ** j - 1 for j in range(12) if 2 ** j <= n[-1]]:
        ci = [official["gold_ci"][0][i], official["gold_ci"][1][i]]
        rows.append(f"| {n[i]} | {_f(official['kl'][i])} | {_ci(official['gold'][i], ci if None not in ci else None)} | "
                    f"{_f(official['proxy'][i])} | {_f(official['oracle'][i])} |")
    fit = official["fit"]
    rows += ["", f"Gao et al.'s fit gold(N) - gold(1) = d (α - βd), d = sqrt(KL): α {_ci(fit['alpha'], fit['alpha_ci'])}, "
             f"β {_ci(fit['beta'], fit['beta_ci'])}" + (f"; the fitted gain peaks at d = {_f(fit['d_peak'])} (N ≈ "
                                                         f"{_n_peak(fit['n_peak'])})" if fit.get("n_peak") else "") + ". "
             + ("**Over-optimised**: β > 0 over its whole interval and the fitted gain falls over at least the last doubling "
                "of the measured N. " if official["overoptimised"] else "No over-optimisation within the measured N (β's "
                "interval not above zero, or the fitted peak past half the largest N). ")
             + f"Peak of the measured curve: {_f(official['gold_peak'])} at N = {official['peak_n']}; at N = {n[-1]}: "
             f"{_f(official['gold_end'])} (drop {_ci(official['drop_from_peak'], official['drop_from_peak_ci'])})."]
    return rows


def write_report(results: Mapping, out_dir: Path, plots: bool = True) -> Path:
    out_dir = Path(out_dir)
    lines = ["# Evaluation report", "", f"- model: `{results['model_path']}`"]
    state = results.get("checkpoint") or {}
    if state:
        lines.append(f"- checkpoint: step {state.get('step')}, pairs seen {state.get('pairs_seen')}, tokens seen {state.get('tokens_seen')}")
    sc = results.get("scoring", {})
    lines.append(f"- scored {sc.get('n_unique', 0)} unique sequences ({sc.get('n_sequences', 0)} responses, "
                 f"{sc.get('n_truncated', 0)} truncated) in {_f(sc.get('seconds'), 1)} s; 95% CIs: item-level percentile "
                 f"bootstrap, {sc.get('bootstrap_samples')} resamples")
    lines += ["", "## Categories", "", "| category | subtasks | BT loss | accuracy |", "|---|---:|---|---|"]
    for name, cat in results["categories"].items():
        lines.append(f"| {name} | {cat['n_subtasks']} | {_ci(cat['bt_loss'], cat.get('bt_loss_ci'))} | "
                     f"{_ci(cat['accuracy'], cat.get('accuracy_ci'))} |")
    if plots:
        plot_dir = out_dir / "plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        lines.append("")
        for category in results["categories"]:
            png = category_plot(results, category, plot_dir / f"{category}.png")
            if png:
                lines.append(f"![{category}](plots/{png.name})")
    lines += ["", "## Benchmarks"]
    for bench, entry in results["benchmarks"].items():
        lines += ["", f"### {bench}", "", "| subtask | category | n | accuracy | BT loss |", "|---|---|---:|---|---|"]
        for sub, s in entry["subtasks"].items():
            lines.append(f"| {sub} | {s['category'] or '–'} | {s['n']} | {_ci(s['accuracy'], s['accuracy_ci'])} | "
                         f"{_ci(s['bt_loss'], s['bt_loss_ci'])} |")
        flat = headline(bench, results)
        if flat:
            lines += ["", "Official aggregates: " + "; ".join(f"{k} {_f(v)}" for k, v in flat)]
        curves = best_of_k_curves(entry["official"])
        if curves:
            lines += ["", "Best-of-K (PPE's curve: expected correctness of the reward-argmax among K drawn responses): "
                      + "; ".join(f"{k} K=1 {_f(v['expected_correctness'][0])}, K={v['k'][-1]} {_f(v['expected_correctness'][-1])} "
                                  f"(oracle {_f(v['oracle'][-1])})" for k, v in sorted(curves.items()))]
            if plots:
                png = best_of_k_plot(curves, bench, out_dir / "plots" / f"{bench}_best_of_k.png")
                lines += ["", f"![{bench} best-of-K](plots/{png.name})"]
        if "fit" in entry["official"] and "gold" in entry["official"]:
            lines += ["", *best_of_n_table(entry["official"])]
            if plots:
                png = best_of_n_plot(entry["official"], bench, out_dir / "plots" / f"{bench}.png")
                lines += ["", f"![{bench} best-of-N](plots/{png.name})"]
    style = results.get("style_control") or {}
    if style:
        lines += ["", "## Style control (Eq. 3)", "",
                  "Fitted on each benchmark's own pairs; cross-fitted columns fit on one half of the items and score the other.", "",
                  "| benchmark | pairs | α | β tokens | β headers | β lists | β bold | acc raw | acc α·Δr+βᵀZ | acc style only | "
                  "acc style partialled | cross-fit acc | cross-fit style only |", "|---|---:|---|---|---|---|---|---|---|---|---|---|---|"]
        for bench, s in style.items():
            if "joint" not in s:
                lines.append(f"| {bench} | {s['n_pairs']} | {s.get('skipped', '–')} |" + " |" * 10)
                continue
            b, cf = s["joint"]["beta"], s.get("cross_fitted") or {}
            lines.append(f"| {bench} | {s['n_pairs']} | {_f(s['joint']['alpha'])} | {_f(b['tokens'])} | {_f(b['headers'])} | "
                         f"{_f(b['list_items'])} | {_f(b['bold'])} | {_f(s['accuracy_raw'])} | {_f(s['joint']['accuracy'])} | "
                         f"{_f(s['style_only']['accuracy'])} | {_f(s['style_partialled']['accuracy'])} | "
                         f"{_f((cf.get('joint') or {}).get('accuracy'))} | {_f((cf.get('style_only') or {}).get('accuracy'))} |")
    lines.append("")
    return write_text(out_dir / "report.md", "\n".join(lines))


def write_series_report(series: list[Mapping], out_dir: Path, plots: bool = True) -> Path:
    """series: [{"name", "step", "pairs_seen", "categories": {...}}] in training order."""
    names = order_categories({c for s in series for c in s.get("categories", {})}, all_paper=True)
    lines = ["# Checkpoint series", "", "| checkpoint | step | pairs seen | " + " | ".join(f"{c} BT loss" for c in names) + " |",
             "|---|---:|---:|" + "---|" * len(names)]
    for s in series:
        cats = s.get("categories", {})
        lines.append(f"| {s['name']} | {_f(s.get('step'))} | {_f(s.get('pairs_seen'))} | "
                     + " | ".join(_f((cats.get(c) or {}).get("bt_loss")) for c in names) + " |")
    points = [s for s in series if isinstance(s.get("pairs_seen"), (int, float)) and s["pairs_seen"] > 0]
    if plots and any((p["categories"].get(c) or {}).get("bt_loss") is not None for p in points for c in names):
        plt = pyplot()

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, c in enumerate(names):
            xs = [p["pairs_seen"] for p in points if (p["categories"].get(c) or {}).get("bt_loss") is not None]
            ys = [p["categories"][c]["bt_loss"] for p in points if (p["categories"].get(c) or {}).get("bt_loss") is not None]
            if xs:
                ax.plot(xs, ys, marker="o", color=f"C{i}", label=c)
        ax.set_xscale("log")
        ax.set_xlabel("pairs seen")
        ax.set_ylabel("mean test BT loss")
        ax.legend()
        _save(fig, Path(out_dir) / "series.png")
        plt.close(fig)
        lines += ["", "![category BT loss over training](series.png)"]
    for bench in sorted({b for s in series for b in s.get("best_of_n") or {}}):
        lines += ["", f"## Best-of-N against the gold reward: {bench}", "",
                  "A proxy trained on more pairs is a better proxy: over-optimisation (the gold reward of the best of N falling "
                  "as N grows; β > 0 in d(α - βd)) should recede along the series.", "",
                  "| checkpoint | pairs seen | accuracy vs gold | gold N=1 | gold peak (N) | gold N=max | drop [95% CI] | α | β [95% CI] "
                  "| fitted peak N | over-optimised |", "|---|---:|---:|---:|---|---:|---|---:|---|---:|---|"]
        runs = [(s, s["best_of_n"][bench]) for s in series if bench in (s.get("best_of_n") or {})]
        for s, b in runs:
            fit = b["fit"]
            lines.append(f"| {s['name']} | {_f(s.get('pairs_seen'))} | {_f(b['accuracy'])} | {_f(b['gold_start'])} | "
                         f"{_f(b['gold_peak'])} ({b['peak_n']}) | {_f(b['gold_end'])} | "
                         f"{_ci(b['drop_from_peak'], b['drop_from_peak_ci'])} | {_f(fit['alpha'])} | {_ci(fit['beta'], fit['beta_ci'])} "
                         f"| {_n_peak(fit.get('n_peak'))} | {'yes' if b['overoptimised'] else 'no'} |")
        if plots and runs:
            png = best_of_n_series_plot(runs, bench, Path(out_dir) / f"series_{bench}.png")
            lines += ["", f"![best-of-N over the series]({png.name})"]
    lines.append("")
    return write_text(Path(out_dir) / "series.md", "\n".join(lines))


def _n_peak(n) -> str:
    return "–" if n is None else f"{n:.0f}" if n < 1e5 else f"{n:.1e}"


def best_of_n_series_plot(runs: list[tuple[Mapping, Mapping]], bench: str, path: Path) -> Path:
    """Every checkpoint's best-of-N curve: gold reward against N, and the gain against d with its fit, coloured by pairs seen."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, (s, b) in enumerate(runs):
        color = cmap(i / max(len(runs) - 1, 1))
        label = f"{s['name']} ({_f(s.get('pairs_seen'))} pairs)"
        left.plot(b["n"], b["gold"], color=color, label=label)
        best_of_n_gain(right, b, color, "")
    left.plot(runs[-1][1]["n"], runs[-1][1]["oracle"], color="grey", linestyle=":", label="oracle (gold's own best of N)")
    left.set_xscale("log", base=2)
    left.set_xlabel("N (replies drawn)")
    left.set_ylabel("gold reward of the proxy's pick")
    left.legend(fontsize=7)
    right.set_title("gain against d = sqrt(KL); dashed: d(α - βd)", fontsize=9)
    fig.suptitle(f"{bench}: best-of-N over the checkpoint series (proxies trained on more and more pairs)")
    _save(fig, path)
    plt.close(fig)
    return path


BEST_OF_N_KEYS = ("n", "kl", "gold", "gold_ci", "proxy", "oracle", "fit", "accuracy", "gold_start", "gold_end", "gold_peak", "peak_n",
                  "drop_from_peak", "drop_from_peak_ci", "overoptimised", "n_prompts")


def best_of_n_results(results: Mapping) -> dict:
    """The best-of-N-against-gold results of an evaluation (benchmarks whose official results hold a gold curve), by name."""
    return {b: {k: v["official"][k] for k in BEST_OF_N_KEYS} for b, v in (results.get("benchmarks") or {}).items()
            if "fit" in v["official"] and "gold" in v["official"]}
