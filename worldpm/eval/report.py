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


def best_of_k_plot(ppe_official: Mapping, path: Path) -> Path | None:
    plt = pyplot()

    sets = {k: v for k, v in ppe_official.items() if isinstance(v, Mapping) and "best_of_k" in v}
    if not sets:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, v) in enumerate(sorted(sets.items())):
        color = f"C{i}"
        ax.plot(v["best_of_k"]["k"], v["best_of_k"]["expected_correctness"], color=color, label=f"{name} (reward argmax)")
        ax.plot(v["best_of_k"]["k"], v["best_of_k"]["oracle"], color=color, linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (responses drawn)")
    ax.set_ylabel("expected correctness of the pick")
    ax.set_title("PPE best-of-K (dotted: oracle, some drawn response correct)")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


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
        if bench == "ppe" and plots:
            png = best_of_k_plot(entry["official"], out_dir / "plots" / "ppe_best_of_k.png")
            if png:
                lines += ["", f"![PPE best-of-K](plots/{png.name})"]
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
    if plots and points:
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
    lines.append("")
    return write_text(Path(out_dir) / "series.md", "\n".join(lines))
