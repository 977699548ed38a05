"""`worldpm compare a=<eval dir> b=<eval dir> output_dir=...`: did starting from WorldPM help? Two evaluations of the same items
side by side, per subtask and category: each one's accuracy and BT loss, and the difference b - a with a paired bootstrap CI.

    worldpm compare a=runs/hs2-from-base/eval b=runs/hs2-from-worldpm/eval a_name=from_base b_name=from_worldpm output_dir=runs/cmp

Both directories are `worldpm eval` outputs (results.json, rewards.parquet) that scored the same items (the same benchmark files);
anything else is refused in one line before any figure is computed. Every figure is recomputed from the two rewards.parquet
(per item, under each item's accuracy rule: worldpm.eval.metrics.item_stats), not copied from results.json. The CI resamples
items, the same draws for a and b, so it is the interval of a paired difference: the variation between items that both models
find hard or easy cancels, which an unpaired comparison of the two results.json CIs would not. A category's figures are the
unweighted means over its subtasks (as results.json's), its CI from the mean of the subtasks' paired replicates.

Outputs in output_dir: compare.md (the table), compare.png (the differences with their CIs), compare.json (written last: its
presence marks a complete comparison).
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from worldpm.atomic_dir import atomic_path, write_json, write_text
from worldpm.errors import UserError
from worldpm.eval.bootstrap import percentile_ci, ratio_replicates, rng_for
from worldpm.eval.categories import order_categories
from worldpm.eval.items import Item
from worldpm.eval.metrics import item_stats
from worldpm.eval.report import pyplot

log = logging.getLogger("worldpm.eval")

METRICS = ("accuracy", "bt_loss")  # accuracy: higher is better; BT loss: lower is better
_KEY = ("benchmark", "subtask", "item", "item_index", "rule", "response", "beats")  # what must match between a and b


def read_eval(directory: str, which: str) -> tuple[dict, dict]:
    """(results.json, rewards.parquet as columns) of an eval output directory; one-line errors naming the key."""
    path = Path(str(directory))
    if not path.is_dir():
        raise UserError(f"{which}={directory} is not a directory (expected a `worldpm eval` output_dir)")
    results, rewards = path / "results.json", path / "rewards.parquet"
    for f in (results, rewards):
        if not f.is_file():
            raise UserError(f"{which}={directory} has no {f.name}: not a complete `worldpm eval` output "
                            "(a checkpoint series has one directory per checkpoint: pick one)")
    try:
        table = pq.read_table(rewards).to_pydict()
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise UserError(f"{rewards}: not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in (*_KEY, "reward") if c not in table]
    if missing:
        raise UserError(f"{rewards} lacks columns {missing}: not a worldpm rewards.parquet")
    return json.loads(results.read_text()), table


def _rows_by_subtask(table: dict) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (b, s) in enumerate(zip(table["benchmark"], table["subtask"])):
        groups[(b, s)].append(i)
    return groups


def _items(table: dict, rows: list[int]) -> tuple[list[Item], list[list[int]]]:
    """The items of one subtask rebuilt from its rows (responses, pairs from `beats`, the accuracy rule), and for each item
    the table rows of its responses in response order."""
    by_item: dict[int, list[int]] = defaultdict(list)
    for i in rows:
        by_item[table["item_index"][i]].append(i)
    items, index = [], []
    for item_index in sorted(by_item):
        rs = sorted(by_item[item_index], key=lambda i: table["response"][i])
        pairs = [(table["response"][i], int(b)) for i in rs for b in (table["beats"][i] or [])]
        items.append(Item(subtask=table["subtask"][rs[0]], uid=str(table["item"][rs[0]]), prompt=[], responses=[""] * len(rs),
                          pairs=pairs, rule=table["rule"][rs[0]]))
        index.append(rs)
    return items, index


def _check_same_items(ta: dict, tb: dict, names: tuple[str, str]) -> None:
    """Both evaluations scored the same items with the same pairs; else the first difference, in one line."""
    def keyed(t):
        return sorted(zip(*(t[k] for k in ("benchmark", "item_index", "response", "subtask", "item", "rule"))),
                      key=lambda r: (r[0], r[1], r[2]))

    ka, kb = keyed(ta), keyed(tb)
    beats_a = {(b, i, r): sorted(x or []) for b, i, r, x in zip(ta["benchmark"], ta["item_index"], ta["response"], ta["beats"])}
    beats_b = {(b, i, r): sorted(x or []) for b, i, r, x in zip(tb["benchmark"], tb["item_index"], tb["response"], tb["beats"])}
    if len(ka) != len(kb):
        only = sorted({r[0] for r in ka} ^ {r[0] for r in kb}) or sorted({r[0] for r in (ka if len(ka) > len(kb) else kb)})
        raise UserError(f"{names[0]} has {len(ka)} scored responses and {names[1]} {len(kb)}: not the same items "
                        f"(benchmarks {', '.join(only)})")
    for ra, rb in zip(ka, kb):
        if ra != rb or beats_a[ra[:3]] != beats_b[rb[:3]]:
            raise UserError(f"{names[0]} and {names[1]} did not score the same items: {ra[0]}/{ra[3]} item {ra[4]} response {ra[2]} "
                            f"differs (evaluate both on the same benchmark files)")


def _category(results: dict, bench: str, sub: str) -> str | None:
    return ((results.get("benchmarks", {}).get(bench) or {}).get("subtasks", {}).get(sub) or {}).get("category")


def compare(results_a: dict, ta: dict, results_b: dict, tb: dict, names: tuple[str, str], samples: int, confidence: float,
            seed: int) -> dict:
    """The comparison as compare.json holds it (module docstring)."""
    _check_same_items(ta, tb, names)
    groups_a, groups_b = _rows_by_subtask(ta), _rows_by_subtask(tb)
    subtasks, replicates = {}, {}
    for (bench, sub), rows_a in groups_a.items():
        items, index_a = _items(ta, rows_a)
        _, index_b = _items(tb, groups_b[(bench, sub)])
        ra = [np.array([ta["reward"][i] for i in rs]) for rs in index_a]
        rb = [np.array([tb["reward"][i] for i in rs]) for rs in index_b]
        sa, sb = item_stats(items, ra), item_stats(items, rb)
        reps = ratio_replicates([(sa.acc_sum, sa.acc_n), (sb.acc_sum, sb.acc_n), (sa.loss_sum, sa.loss_n), (sb.loss_sum, sb.loss_n)],
                                rng_for(seed, "compare", bench, sub), samples)
        key = f"{bench}/{sub}"
        entry = {"benchmark": bench, "subtask": sub, "category": _category(results_a, bench, sub), "n_items": len(items),
                 "n_pairs": int(sa.loss_n.sum())}
        for metric, (x, y), (rep_a, rep_b) in (("accuracy", (sa.accuracy, sb.accuracy), reps[0:2]),
                                               ("bt_loss", (sa.bt_loss, sb.bt_loss), reps[2:4])):
            diff = None if x is None or y is None else y - x
            ci = percentile_ci(rep_b - rep_a, confidence) if diff is not None else None
            entry[metric] = {names[0]: x, names[1]: y, "difference": diff, "difference_ci": ci,
                             "ci_excludes_0": bool(ci is not None and (ci[0] > 0 or ci[1] < 0))}
            replicates.setdefault(key, {})[metric] = rep_b - rep_a
        subtasks[key] = entry
    categories = {}
    present = {s["category"] for s in subtasks.values() if s["category"]}
    for cat in order_categories(present):
        members = [k for k, s in subtasks.items() if s["category"] == cat]
        entry = {"subtasks": members, "n_subtasks": len(members)}
        for metric in METRICS:
            ok = [k for k in members if subtasks[k][metric]["difference"] is not None]
            if not ok:
                entry[metric] = None
                continue
            x = float(np.mean([subtasks[k][metric][names[0]] for k in ok]))
            y = float(np.mean([subtasks[k][metric][names[1]] for k in ok]))
            ci = percentile_ci(np.mean([replicates[k][metric] for k in ok], axis=0), confidence)
            entry[metric] = {names[0]: x, names[1]: y, "difference": y - x, "difference_ci": ci,
                             "ci_excludes_0": bool(ci is not None and (ci[0] > 0 or ci[1] < 0))}
        categories[cat] = entry
    return {"a": {"name": names[0]}, "b": {"name": names[1]}, "difference": f"{names[1]} - {names[0]}",
            "bootstrap": {"samples": samples, "confidence": confidence, "seed": seed, "unit": "item, the same draws for both"},
            "categories": categories, "subtasks": subtasks}


def _f(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _diff(entry: dict | None, better: str) -> str:
    if not entry or entry["difference"] is None:
        return "–"
    ci = entry["difference_ci"]
    text = f"{entry['difference']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
    if entry["ci_excludes_0"]:
        wins = (entry["difference"] > 0) == (better == "higher")
        text = f"**{text}** {'b' if wins else 'a'}"
    return text


def write_table(result: dict, out: Path, plot: str | None) -> Path:
    a, b = result["a"]["name"], result["b"]["name"]
    conf = int(round(100 * result["bootstrap"]["confidence"]))
    lines = [f"# {b} vs {a}", "",
             f"- a = {a}: `{result['a']['path']}`", f"- b = {b}: `{result['b']['path']}`",
             f"- difference = b - a, with its {conf}% paired bootstrap CI over items ({result['bootstrap']['samples']} resamples, "
             "the same draws for both); **bold** where the CI excludes 0, followed by who is better there (accuracy: higher; "
             "BT loss: lower)", ""]
    cols = f"accuracy {a} | accuracy {b} | Δ accuracy | BT loss {a} | BT loss {b} | Δ BT loss |"
    lines += ["## Categories", "", f"| category | subtasks | {cols}", "|---|---:|---|---|---|---|---|---|"]
    for cat, c in result["categories"].items():
        acc, loss = c["accuracy"] or {}, c["bt_loss"] or {}
        lines.append(f"| {cat} | {c['n_subtasks']} | {_f(acc.get(a))} | {_f(acc.get(b))} | {_diff(c['accuracy'], 'higher')} | "
                     f"{_f(loss.get(a))} | {_f(loss.get(b))} | {_diff(c['bt_loss'], 'lower')} |")
    lines += ["", "## Subtasks", "", f"| subtask | category | items | {cols}", "|---|---|---:|---|---|---|---|---|---|"]
    for key, s in result["subtasks"].items():
        acc, loss = s["accuracy"], s["bt_loss"]
        lines.append(f"| {key} | {s['category'] or '–'} | {s['n_items']} | {_f(acc[a])} | {_f(acc[b])} | {_diff(acc, 'higher')} | "
                     f"{_f(loss[a])} | {_f(loss[b])} | {_diff(loss, 'lower')} |")
    if plot:
        lines += ["", f"![differences]({plot})"]
    lines.append("")
    return write_text(out / "compare.md", "\n".join(lines))


def plot_differences(result: dict, path: Path) -> Path | None:
    """One row per category and subtask: b - a with its CI, accuracy left and BT loss right, a line at 0."""
    rows = [(f"[{c}]", e) for c, e in result["categories"].items()] + list(result["subtasks"].items())
    if not rows:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.42 * len(rows) + 1.8), sharey=True)
    y = np.arange(len(rows))
    for ax, metric, label in ((axes[0], "accuracy", "Δ accuracy (b - a; > 0: b better)"),
                              (axes[1], "bt_loss", "Δ BT loss (b - a; < 0: b better)")):
        for k, (_, e) in enumerate(rows):
            entry = e[metric]
            if not entry or entry["difference"] is None:
                continue
            d, ci = entry["difference"], entry["difference_ci"] or [entry["difference"]] * 2
            color = "#4c72b0" if not entry["ci_excludes_0"] else ("#55a868" if (d > 0) == (metric == "accuracy") else "#c44e52")
            ax.errorbar(d, k, xerr=[[d - ci[0]], [ci[1] - d]], fmt="o", color=color, capsize=3)
        ax.axvline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
    axes[0].set_yticks(y, [name for name, _ in rows])
    axes[0].invert_yaxis()
    fig.suptitle(f"{result['b']['name']} - {result['a']['name']}, {int(round(100 * result['bootstrap']['confidence']))}% "
                 "paired bootstrap CI (green: b better, red: a better)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run(cfg: DictConfig) -> dict:
    for key in ("a", "b", "output_dir"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise UserError(f"{key} is required (worldpm compare a=<eval dir> b=<eval dir> output_dir=<dir>)")
    samples, confidence = cfg.bootstrap.samples, cfg.bootstrap.confidence
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 100:
        raise UserError(f"bootstrap.samples={samples} must be an integer >= 100")
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise UserError(f"bootstrap.confidence={confidence} must be strictly between 0 and 1")
    names = (str(cfg.a_name or Path(str(cfg.a)).name), str(cfg.b_name or Path(str(cfg.b)).name))
    if names[0] == names[1]:
        names = (f"{names[0]} (a)", f"{names[1]} (b)")
    results_a, ta = read_eval(cfg.a, "a")
    results_b, tb = read_eval(cfg.b, "b")
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").unlink(missing_ok=True)  # a rerun that dies leaves no stale "complete" marker
    result = compare(results_a, ta, results_b, tb, names, int(samples), float(confidence), int(cfg.seed))
    result["a"].update(path=str(cfg.a), model=results_a.get("model_path"), checkpoint=results_a.get("checkpoint") or {})
    result["b"].update(path=str(cfg.b), model=results_b.get("model_path"), checkpoint=results_b.get("checkpoint") or {})
    png = plot_differences(result, out / "compare.png") if cfg.plots else None
    write_table(result, out, png.name if png else None)
    write_json(out / "compare.json", result)
    for cat, c in result["categories"].items():
        for metric in METRICS:
            e = c[metric]
            if e and e["difference"] is not None:
                log.info("%s %s: %s %.4f, %s %.4f, difference %+.4f %s", cat, metric, names[0], e[names[0]], names[1], e[names[1]],
                         e["difference"], e["difference_ci"])
    log.info("wrote %s", out / "compare.json")
    return result
