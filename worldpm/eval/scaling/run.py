"""`worldpm scaling runs=[dir,...] output_dir=...`: power-law fits and plots of test loss against data and model size.

Reads every results.json under `runs` (the evaluation layout, each carrying its checkpoint's state.json), groups points by
model (checkpoint.model_name / n_params), level (category or benchmark/subtask) and x = checkpoint.pairs_seen, and writes
to output_dir:
- fits.json: every fit, machine-readable (written last: it marks the output complete);
- report.md: the fitted tables, the per-category verdicts, and the figures;
- scaling_{category,subtask}.{png,svg}: loss vs pairs seen, a curve per model, fits overlaid;
- model_scaling_category.{png,svg}: final-checkpoint loss vs parameters.

Per (level, key, model): L(D) = (D/D_c)^-alpha and L(D) = L_inf + B*D^-alpha (worldpm.eval.scaling.power_law). A size "scales" on a
key when the CI of its log-log slope lies below 0; "flat" when it includes 0 (the paper's "no scaling"); "increasing" when
above. Across sizes (smallest first) a key is: scales (decreasing at every size), emergent (decreasing only at the largest
sizes, a non-empty proper suffix), no scaling (decreasing at none), or mixed. Model-size scaling: L(N) fitted the same way
on each model's final checkpoint (per run, then the mean over runs), N = `model_size_param`.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from worldpm.atomic_dir import write_text
from worldpm.config import check
from worldpm.errors import UserError
from worldpm.eval.scaling.power_law import fit_power_law, fit_saturating
from worldpm.eval.scaling.plots import human_count, plot_data_scaling, plot_model_scaling
from worldpm.eval.scaling.points import Gathered, gather, order_keys

log = logging.getLogger("worldpm.scaling")

PATTERNS = ("scales", "emergent", "no scaling", "mixed", "undetermined")


def scaling_pattern(trends: list[str]) -> str:
    """Read per-size trends (smallest model first) as the paper does; sizes whose trend is undetermined are left out."""
    known = [t for t in trends if t != "undetermined"]
    if not known:
        return "undetermined"
    dec = [t == "decreasing" for t in known]
    if all(dec):
        return "scales"
    if not any(dec):
        return "no scaling"
    first = dec.index(True)
    if all(dec[first:]):
        return "emergent"
    return "mixed"


def model_size(model: dict, param: str) -> float | None:
    """N for L(N): the requested count, falling back to the total when the non-embedding count is missing."""
    return model.get(param) or model.get("n_params")


def data_scaling(gathered: Gathered, cfg, models: list[dict]) -> list[dict]:
    fits = []
    settings = dict(ci=float(cfg.ci), seed=int(cfg.bootstrap.seed))
    min_x = float(cfg.min_pairs or 0)
    for level in cfg.levels:
        keys = order_keys({p.key for p in gathered.points if p.level == level}, level)
        for key in keys:
            for m in models:
                pts = [p for p in gathered.points if p.level == level and p.key == key and p.model == m["model"]]
                if not pts:
                    continue
                used = [p for p in pts if p.x > 0 and p.x >= min_x]
                xs, ys = [p.x for p in used], [p.loss for p in used]
                entry = {"level": level, "key": key, "model": m["model"], "n_params": m["n_params"],
                         "n_params_non_embedding": m["n_params_non_embedding"], "n_points": len(used),
                         "n_excluded": len(pts) - len(used), "n_runs": len({p.run for p in used}),
                         "x_range": [min(xs), max(xs)] if xs else None, "trend": "undetermined"}
                what = f"{level} {key!r}, model {m['model']!r}"
                try:
                    pl = fit_power_law(xs, ys, n_bootstrap=int(cfg.bootstrap.n), what=f"power-law fit of {what}",
                                       min_points_bootstrap=int(cfg.bootstrap.min_points), **settings)
                    entry["power_law"], entry["trend"] = pl.to_dict(), pl.trend
                except UserError as exc:
                    entry["error"] = str(exc)
                if cfg.saturating:
                    try:
                        entry["saturating"] = fit_saturating(xs, ys, n_bootstrap=int(cfg.bootstrap.n_saturating),
                                                             what=f"saturating fit of {what}", **settings).to_dict()
                    except UserError as exc:
                        entry["saturating"] = {"error": str(exc)}
                fits.append(entry)
    return fits


def verdicts(fits: list[dict], models: list[dict]) -> dict:
    order = [m["model"] for m in models]
    out: dict = defaultdict(dict)
    by_key = defaultdict(dict)
    for f in fits:
        by_key[(f["level"], f["key"])][f["model"]] = f["trend"]
    for (level, key), trends in by_key.items():
        per_model = {m: trends[m] for m in order if m in trends}
        out[level][key] = {"pattern": scaling_pattern(list(per_model.values())), "trend_by_model": per_model}
    return dict(out)


def model_scaling(gathered: Gathered, cfg, models: list[dict]) -> list[dict]:
    """L(N) from final checkpoints: per run the point at its largest x, then the mean over a model's runs."""
    param = cfg.model_size_param
    out = []
    for level in cfg.levels:
        keys = order_keys({p.key for p in gathered.points if p.level == level}, level)
        for key in keys:
            points = []
            for m in models:
                finals: dict[str, object] = {}
                for p in gathered.points:
                    if p.level == level and p.key == key and p.model == m["model"]:
                        if p.run not in finals or p.x > finals[p.run].x:
                            finals[p.run] = p
                if finals and model_size(m, param):
                    points.append({"model": m["model"], "n": model_size(m, param),
                                   "loss": sum(p.loss for p in finals.values()) / len(finals),
                                   "x": sorted({p.x for p in finals.values()}), "n_runs": len(finals)})
            entry = {"level": level, "key": key, "param": param, "points": points}
            xs = [p["x"][-1] for p in points]
            if xs and max(xs) > 1.1 * min(xs):
                entry["warning"] = f"final checkpoints saw different amounts of data ({min(xs):g} to {max(xs):g} pairs)"
            try:
                entry["power_law"] = fit_power_law([p["n"] for p in points], [p["loss"] for p in points],
                                                   n_bootstrap=int(cfg.bootstrap.n), min_points_bootstrap=int(cfg.bootstrap.min_points),
                                                   what=f"model-size fit of {level} {key!r}", ci=float(cfg.ci),
                                                   seed=int(cfg.bootstrap.seed)).to_dict()
            except UserError as exc:
                entry["error"] = str(exc)
            out.append(entry)
    return out


def read_bayes(cfg) -> dict | None:
    """`bayes_loss`: a number, or a dataset directory whose manifest.json has `bayes_bt_loss` (source=synthetic)."""
    value = cfg.bayes_loss
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        loss, origin = float(value), "bayes_loss"
    else:
        manifest = Path(str(value)) / "manifest.json"
        if not manifest.is_file():
            raise UserError(f"bayes_loss={value!r}: neither a number nor a dataset directory with manifest.json")
        loss = json.loads(manifest.read_text(encoding="utf-8")).get("bayes_bt_loss")
        if not isinstance(loss, (int, float)):
            raise UserError(f"{manifest}: no bayes_bt_loss (only source=synthetic datasets have a known Bayes loss)")
        loss, origin = float(loss), str(manifest)
    if not (math.isfinite(loss) and loss > 0):
        raise UserError(f"bayes_loss={loss!r} must be a positive number")
    return {"loss": loss, "from": origin, "applies_to": cfg.bayes_key}


def ground_truth(bayes: dict | None, fits: list[dict], model_fits: list[dict]) -> list[dict]:
    """Against the Bayes-optimal loss: each model's final loss, its excess over Bayes, and L_inf - Bayes."""
    if bayes is None:
        return []
    finals = {(f["level"], f["key"], p["model"]): p for f in model_fits for p in f["points"]}
    rows = []
    for f in fits:
        if bayes["applies_to"] not in (None, f["key"]):
            continue
        final = finals.get((f["level"], f["key"], f["model"]))
        sat = f.get("saturating") or {}
        ci = sat.get("l_inf_ci")
        rows.append({"level": f["level"], "key": f["key"], "model": f["model"],
                     "final_loss": final["loss"] if final else None,
                     "final_excess": final["loss"] - bayes["loss"] if final else None,
                     "l_inf": sat.get("l_inf"), "l_inf_ci": ci,
                     "l_inf_minus_bayes": sat["l_inf"] - bayes["loss"] if "l_inf" in sat else None,
                     # the test that matters: is the known answer inside the fit's interval (None: no interval)
                     "bayes_in_l_inf_ci": bool(ci[0] <= bayes["loss"] <= ci[1]) if ci else None})
    return rows


# ---------------------------------------------------------------------------------------------------------- report


def _g(v, fmt=".3g"):
    return "–" if v is None else format(v + 0.0, fmt).replace("-0.000", "0.000")


def _ci(ci, fmt=".3g"):
    return "" if not ci else f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def _data_table(fits: list[dict], level: str, with_saturating: bool) -> list[str]:
    head = "| key | model | N | points | pairs seen | α [CI] | CI from | D_c | R² | trend |"
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    if with_saturating:
        head += " L∞ [CI] | α (sat.) [CI] | R² (sat.) |"
        sep += "---|---|---|"
    lines = [head, sep]
    for f in fits:
        if f["level"] != level:
            continue
        pl = f.get("power_law")
        xr = f["x_range"]
        row = (f"| {f['key']} | {f['model']} | {human_count(f['n_params'])} | {f['n_points']} | "
               f"{human_count(xr[0]) + '–' + human_count(xr[1]) if xr else '–'} | ")
        if pl:
            row += (f"{pl['alpha']:.3g}{_ci(pl['alpha_ci'])} | {pl['ci_method']} | {_g(pl['x_c'])} | {_g(pl['r2'], '.3f')} | "
                    f"**{f['trend']}** |")
        else:
            row += f"not fitted: {f.get('error', '')} | | | | {f['trend']} |"
        if with_saturating:
            sat = f.get("saturating") or {}
            if "l_inf" in sat:
                flag = f" ({', '.join(sat['at_bound'])})" if sat["at_bound"] else ""
                row += (f" {sat['l_inf']:.3g}{_ci(sat['l_inf_ci'])} | {sat['alpha']:.3g}{_ci(sat['alpha_ci'])}{flag} | "
                        f"{_g(sat['r2'], '.3f')} |")
            else:
                row += f" – | {sat.get('error', '–')} | – |"
        lines.append(row)
    return lines


def write_report(path: Path, result: dict, figures: list[str]) -> None:
    s = result["settings"]
    inp = result["inputs"]
    lines = ["# Scaling analysis", "",
             f"{inp['n_results']} results.json files under {', '.join(s['runs'])}: {inp['n_points']} points used, "
             f"{len(inp['skipped'])} files skipped, {inp['duplicates']} duplicate evaluations (same run and {s['x']}) kept once.",
             f"Metric `{s['metric']}` against `checkpoint.{s['x']}`; fits use points with {s['x']} ≥ {s['min_pairs']} "
             f"(and > 0); points: {s['points']}.", "",
             "Fits: L(D) = (D/D_c)^-α by OLS of log L on log D; L(D) = L∞ + B·D^-α by bounded least squares on log L. "
             f"Intervals are {s['ci']:.0%}: a case bootstrap of the points ({s['bootstrap']['n']} resamples; "
             f"{s['bootstrap']['n_saturating']} for the saturating form) when a curve has ≥ {s['bootstrap']['min_points']} points, "
             "else the OLS t interval. **trend**: decreasing when the CI of the log-log slope lies below 0, flat when it includes 0 "
             "(no scaling at that size), increasing when above. R² is that of log L.", ""]
    for fig in figures:
        if fig.endswith(".png"):
            lines += [f"![{Path(fig).stem}]({Path(fig).name})", ""]
    if "category" in result["verdicts"]:
        lines += ["## Verdicts per category", "", "| category | pattern | " + " | ".join(m["model"] for m in result["models"]) + " |",
                  "|---|---|" + "---|" * len(result["models"])]
        for key, v in result["verdicts"]["category"].items():
            lines.append(f"| {key} | **{v['pattern']}** | " + " | ".join(v["trend_by_model"].get(m["model"], "–") for m in result["models"]) + " |")
        lines += ["", "Patterns (sizes smallest first): scales = decreasing at every size; emergent = decreasing only at the "
                  "largest sizes; no scaling = decreasing at none; mixed = otherwise.", ""]
    for level in s["levels"]:
        lines += [f"## Loss vs data ({level})", ""] + _data_table(result["data_scaling"], level, s["saturating"]) + [""]
    lines += ["## Loss vs model size (final checkpoints)", "",
              f"L(N) = (N/N_c)^-α_N, N = {s['model_size_param']}.", "",
              "| level | key | models | α_N [CI] | R² | trend | note |", "|---|---|---|---|---|---|---|"]
    for f in result["model_scaling"]:
        pl = f.get("power_law")
        fit = (f"{pl['alpha']:.3g}{_ci(pl['alpha_ci'])} | {_g(pl['r2'], '.3f')} | {pl['trend']}" if pl
               else f"not fitted | – | –")
        note = f.get("warning") or f.get("error") or ""
        lines.append(f"| {f['level']} | {f['key']} | {len(f['points'])} | {fit} | {note} |")
    if result["ground_truth"]:
        b = result["bayes"]
        lines += ["", "## Against the known Bayes-optimal loss", "",
                  f"Bayes-optimal test BT loss {b['loss']:.4f} (from {b['from']}).", "",
                  "| key | model | final loss | excess over Bayes | L∞ [CI] | L∞ − Bayes | Bayes inside the CI |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["ground_truth"]:
            inside = {True: "yes", False: "**no**", None: "–"}[r["bayes_in_l_inf_ci"]]
            lines.append(f"| {r['key']} | {r['model']} | {_g(r['final_loss'], '.4f')} | {_g(r['final_excess'], '+.4f')} | "
                         f"{_g(r['l_inf'], '.4f')}{_ci(r['l_inf_ci'], '.4f')} | {_g(r['l_inf_minus_bayes'], '+.4f')} | {inside} |")
    if inp["skipped"]:
        lines += ["", "## Skipped results", ""] + [f"- {s_['path']}: {s_['reason']}" for s_ in inp["skipped"]]
    write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------- verb


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def run(cfg: DictConfig) -> dict:
    cfg = check("scaling", cfg)  # types, choices and paths (worldpm/config/schemas.py): one line, before any work
    runs = _as_list(cfg.runs)
    levels = _as_list(cfg.levels)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "scaling.log", mode="w")
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    old_level = log.level
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))  # the log file gets the INFO lines even when called in-process
    try:
        (out / "fits.json").unlink(missing_ok=True)  # a rerun that dies leaves no stale "complete" marker
        gathered = gather(runs, metric=cfg.metric, x_key=cfg.x, levels=levels, points=cfg.points)
        models = gathered.models()
        log.info("%d results files, %d points, %d models (%s), %d skipped, %d duplicates", len(gathered.files),
                 len(gathered.points), len(models), ", ".join(m["model"] for m in models), len(gathered.skipped), gathered.duplicates)
        bayes = read_bayes(cfg)
        fits = data_scaling(gathered, cfg, models)
        if not any("power_law" in f for f in fits):
            first = next((f["error"] for f in fits if "error" in f), "no points")
            raise UserError(f"nothing to fit: no (model, {'/'.join(levels)}) curve has 2 distinct {cfg.x} values > 0 "
                            f"(first: {first})")
        model_fits = model_scaling(gathered, cfg, models)
        settings = OmegaConf.to_container(cfg, resolve=True)
        settings.pop("hydra", None)
        settings.update(runs=runs, levels=levels)
        result = {
            "settings": settings,
            "inputs": {"n_results": len(gathered.files), "n_points": len(gathered.points), "skipped": gathered.skipped,
                       "duplicates": gathered.duplicates},
            "models": models,
            "data_scaling": fits,
            "verdicts": verdicts(fits, models),
            "model_scaling": model_fits,
            "bayes": bayes,
            "ground_truth": ground_truth(bayes, fits, model_fits),
        }
        for level, keys in result["verdicts"].items():
            for key, v in keys.items():
                if level == "category" or len(keys) <= 12:
                    log.info("%s %s: %s (%s)", level, key, v["pattern"], ", ".join(f"{m}: {t}" for m, t in v["trend_by_model"].items()))
        figures: list[str] = []
        if cfg.plots:
            formats = _as_list(cfg.formats)
            x_label = cfg.x.replace("_", " ")
            for level in levels:
                keys = order_keys({p.key for p in gathered.points if p.level == level}, level)
                if keys:
                    figures += plot_data_scaling(gathered.points, fits, models, keys, level, out / f"scaling_{level}", formats,
                                                 x_label=x_label, bayes=bayes)
            level = levels[0]
            keys = order_keys({p.key for p in gathered.points if p.level == level}, level)
            if len(models) > 1 and keys:
                figures += plot_model_scaling(model_fits, keys, level, out / f"model_scaling_{level}", formats, cfg.model_size_param)
        result["figures"] = [Path(f).name for f in figures]
        write_report(out / "report.md", result, figures)
        write_text(out / "fits.json", json.dumps(result, indent=2, default=str) + "\n")
        log.info("wrote %s, %s and %d figures", out / "fits.json", out / "report.md", len(figures))
        return result
    finally:
        log.setLevel(old_level)
        logging.getLogger().removeHandler(handler)
        handler.close()
