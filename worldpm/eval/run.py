"""`worldpm eval`: score benchmarks with one reward model, or with every checkpoint of a training run, and write results.

    worldpm eval model_path=runs/main/final benchmark=[rewardbench,rmbench] benchmark.rmbench.path=data/total_dataset.json output_dir=runs/eval
    worldpm eval checkpoints=all run_dir=runs/main output_dir=runs/eval-series      # one results dir per checkpoint

Benchmarks are read once (a bad file fails before any model loads), then per model: one scoring pass per benchmark
(scoring.py), per-subtask accuracy / BT loss with bootstrap CIs, the benchmark's official aggregates, categories, style control
(Eq. 3), and the outputs: rewards.parquet, plots, report.md, and results.json last.
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from worldpm.atomic_dir import write_json
from worldpm.config import check
from worldpm.errors import UserError
from worldpm.eval.benchmarks import registry
from worldpm.eval.bootstrap import percentile_ci, ratio_replicates, rng_for
from worldpm.eval.categories import aggregate, category_of
from worldpm.eval.checkpoints import discover, find_state
from worldpm.eval.metrics import item_stats
from worldpm.eval.report import best_of_n_results, write_report, write_series_report
from worldpm.eval.results import reward_rows, write_rewards
from worldpm.eval.scoring import score_items
from worldpm.eval.style import pair_features, response_features, style_control
from worldpm.model.loader import describe, load_reward_model, model_source
from worldpm.model.padding import resolve_max_padding

log = logging.getLogger("worldpm.eval")


def load_benchmarks(cfg: DictConfig) -> dict[str, tuple[dict, list]]:
    selected = OmegaConf.to_container(cfg.benchmark, resolve=True) if cfg.get("benchmark") else {}
    if not selected:
        raise UserError("no benchmark selected (benchmark=[rewardbench,rmbench,ppe,...])")
    return {name: (bcfg, registry.load_benchmark(name, bcfg, int(cfg.seed))) for name, bcfg in selected.items()}


def evaluate_model(model, benchmarks: Mapping[str, tuple[dict, list]], cfg: DictConfig, out_dir: str | Path,
                   model_label: str, checkpoint_state: Mapping | None = None) -> dict:
    """Score every benchmark with `model` and write out_dir/{rewards.parquet, plots/, report.md, results.json}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)  # its presence marks a complete evaluation of what lies beside it
    samples, confidence = int(cfg.bootstrap.samples), float(cfg.bootstrap.confidence)
    results: dict = {"model_path": model_label, "checkpoint": dict(checkpoint_state or {}), "benchmarks": {}, "categories": {},
                     "style_control": {}, "scoring": {}, "config": OmegaConf.to_container(cfg, resolve=True)}
    flat, replicates, rows = {}, {}, []
    totals = defaultdict(float)
    max_padding = resolve_max_padding(cfg.get("max_padding", "auto"), model.device)
    for name, (bcfg, items) in benchmarks.items():
        scored = score_items(model, items, cfg.get("max_length"), int(cfg.max_tokens_per_batch), desc=name,
                             max_batch_size=int(cfg.get("max_batch_size", 64)), max_padding=max_padding,
                             shared_prompt=cfg.get("shared_prompt", True))
        for key in ("n_sequences", "n_unique", "n_truncated", "seconds"):
            totals[key] += getattr(scored, key)
        by_subtask: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_subtask[item.subtask].append(i)
        subtasks = {}
        for sub, idx in by_subtask.items():
            stats = item_stats([items[i] for i in idx], [scored.rewards[i] for i in idx])
            acc_reps, loss_reps = ratio_replicates([(stats.acc_sum, stats.acc_n), (stats.loss_sum, stats.loss_n)],
                                                   rng_for(int(cfg.seed), name, sub), samples)
            subtasks[sub] = {"n": int(stats.acc_n.sum()), "accuracy": stats.accuracy, "accuracy_ci": percentile_ci(acc_reps, confidence),
                             "bt_loss": stats.bt_loss, "bt_loss_ci": percentile_ci(loss_reps, confidence),
                             "category": category_of(name, bcfg, sub), "n_items": len(idx), "n_pairs": int(stats.loss_n.sum()),
                             "rule": items[idx[0]].rule}
            flat[f"{name}/{sub}"] = subtasks[sub]
            replicates[f"{name}/{sub}"] = {"accuracy": acc_reps, "bt_loss": loss_reps}
        results["benchmarks"][name] = {"subtasks": subtasks, "official": registry.official(name, bcfg, items, scored.rewards)}
        features = response_features(items, scored)
        if cfg.style.enabled:
            D, Z, groups = pair_features(items, scored.rewards, features)
            results["style_control"][name] = style_control(D, Z, groups, l2=float(cfg.style.l2), folds=int(cfg.style.folds),
                                                           seed=int(cfg.seed))
        rows.extend(reward_rows(name, items, scored, features))
        log.info("%s: %s", name, ", ".join(f"{s} acc {v['accuracy']:.3f} loss {v['bt_loss']:.3f}" for s, v in subtasks.items()
                                           if v["accuracy"] is not None and v["bt_loss"] is not None))
    results["categories"] = aggregate(flat, replicates, confidence)
    results["scoring"] = {**{k: (int(v) if k != "seconds" else round(v, 3)) for k, v in totals.items()}, "bootstrap_samples": samples}
    write_rewards(out / "rewards.parquet", rows)
    write_report(results, out, plots=bool(cfg.report.plots))
    write_json(out / "results.json", results)
    for cat, c in results["categories"].items():
        if c["n_subtasks"]:
            log.info("category %s: BT loss %.4f, accuracy %.4f over %d subtasks", cat, c["bt_loss"] if c["bt_loss"] is not None else np.nan,
                     c["accuracy"] if c["accuracy"] is not None else np.nan, c["n_subtasks"])
    log.info("wrote %s", out / "results.json")
    return results


def load_model(path: str | None, cfg: DictConfig):
    """The reward checkpoint at `path` (or, without one, the `model` config's model) on eval's device, in its dtype
    (worldpm.model.loader: the same meanings as score and serve)."""
    return load_reward_model(OmegaConf.to_container(cfg.model, resolve=True), path, device=cfg.device, dtype=cfg.dtype,
                             device_map=cfg.get("device_map") or None)


def _log_to_file(out_dir: Path) -> logging.Handler:
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / "eval.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    return handler


def _evaluate_series(cfg: DictConfig, benchmarks, out: Path) -> list[dict]:
    which = cfg.checkpoints if isinstance(cfg.checkpoints, str) else list(cfg.checkpoints)
    ckpts = discover(cfg.run_dir, which)
    log.info("evaluating %d checkpoints of %s: %s", len(ckpts), cfg.run_dir, ", ".join(c.name for c in ckpts))
    series = []
    for ckpt in tqdm(ckpts, desc="checkpoints", unit="ckpt", disable=None):
        target = out / ckpt.name
        done = target / "results.json"
        if cfg.series.skip_done and done.exists():
            previous = json.loads(done.read_text())
            same_benchmarks = (previous.get("config") or {}).get("benchmark") == OmegaConf.to_container(cfg.benchmark, resolve=True)
            if previous.get("checkpoint") == ckpt.state and same_benchmarks:
                log.info("%s: results.json exists for this checkpoint state and these benchmarks; skipped "
                         "(series.skip_done=false redoes it)", ckpt.name)
                series.append({"name": ckpt.name, **_label(ckpt.state), "categories": previous.get("categories", {}),
                               "best_of_n": best_of_n_results(previous), "results": str(done)})
                continue
        model = load_model(str(ckpt.model_dir), cfg)
        results = evaluate_model(model, benchmarks, cfg, target, str(ckpt.model_dir), ckpt.state)
        del model
        series.append({"name": ckpt.name, **_label(ckpt.state), "categories": results["categories"],
                       "best_of_n": best_of_n_results(results), "results": str(done)})
    write_json(out / "series.json", {"run_dir": str(cfg.run_dir), "checkpoints": series})
    write_series_report(series, out, plots=bool(cfg.report.plots))
    return series


def _label(state: Mapping) -> dict:
    return {k: state.get(k) for k in ("step", "pairs_seen", "tokens_seen")}


def run(cfg: DictConfig):
    cfg = check("eval", cfg)  # types, choices, paths and the benchmark selection (worldpm/config/schemas.py): one line
    out = Path(str(cfg.output_dir))
    handler = _log_to_file(out)
    start = time.perf_counter()
    try:
        if cfg.checkpoints is not None:
            benchmarks = load_benchmarks(cfg)
            return _evaluate_series(cfg, benchmarks, out)
        benchmarks = load_benchmarks(cfg)
        model_path = str(cfg.model_path) if cfg.model_path else None
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        model = load_model(model_path, cfg)
        label = model_source(model_path, model_cfg)
        log.info("evaluating %s", describe(model, model_path, model_cfg))
        return evaluate_model(model, benchmarks, cfg, out, label, find_state(cfg.model_path))
    finally:
        log.info("eval finished in %.1f s", time.perf_counter() - start)
        logging.getLogger().removeHandler(handler)
        handler.close()
