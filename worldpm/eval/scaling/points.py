"""Gather evaluation results (results.json, the shared layout) into scaling points: (model, run, x, level, key) -> loss.

Each results.json carries the `checkpoint` block (the training run's state.json: model_name, n_params, pairs_seen, seed,
data_path, step) that places it on the curves. A run is identified by its directory (the one holding `checkpoints/` and
`final/`: eval's `config.run_dir`, else derived from `model_path`) plus model, seed and data path; within a run, two
evaluations at the same x (the last `step-*` checkpoint and `final/`) are one point, kept once and counted. Levels:
`category` (results["categories"]) and `subtask` (results["benchmarks"][b]["subtasks"][s], keyed "benchmark/subtask").
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from worldpm.errors import UserError
from worldpm.eval.categories import order_categories

log = logging.getLogger("worldpm.scaling")

LEVELS = ("category", "subtask")


@dataclass(frozen=True)
class Point:
    model: str
    n_params: float | None
    n_params_non_embedding: float | None
    run: str
    seed: object
    x: float
    step: int | None
    level: str
    key: str
    loss: float
    n: int | None
    path: str


@dataclass
class Gathered:
    points: list[Point]
    files: list[str]
    skipped: list[dict] = field(default_factory=list)   # results files that could not be placed, with the reason
    duplicates: int = 0                                  # same (run, x) evaluated twice: kept once

    def models(self) -> list[dict]:
        """One entry per model, smallest first (by non-embedding, then total parameters, then name)."""
        seen: dict[str, dict] = {}
        for p in self.points:
            m = seen.setdefault(p.model, {"model": p.model, "n_params": p.n_params,
                                          "n_params_non_embedding": p.n_params_non_embedding, "runs": set(), "seeds": set()})
            m["runs"].add(p.run)
            m["seeds"].add(str(p.seed))
        out = [{**m, "runs": sorted(m["runs"]), "seeds": sorted(m["seeds"])} for m in seen.values()]
        return sorted(out, key=lambda m: (m["n_params_non_embedding"] or m["n_params"] or math.inf, m["n_params"] or math.inf, m["model"]))


def find_results(runs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for run in runs:
        root = Path(run)
        if root.is_file() and root.name == "results.json":
            files.append(root)
            continue
        if not root.is_dir():
            raise UserError(f"runs: {run!r} is not a directory")
        found = sorted(root.rglob("results.json"))
        if not found:
            raise UserError(f"runs: no results.json under {run!r} (evaluate the checkpoints first: worldpm eval checkpoints=all ...)")
        files.extend(found)
    unique, seen = [], set()
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def _run_dir(results: dict, results_path: Path) -> str:
    """The training run's directory: eval's `config.run_dir` when it evaluated a checkpoint series; otherwise (a single
    model_path, or results written before eval kept its config) guessed from `model_path`: the parent of
    `checkpoints/step-*/` or of `final/` (an `hf/` export is looked through)."""
    config = results.get("config") if isinstance(results.get("config"), dict) else {}
    run_dir = config.get("run_dir") if config.get("checkpoints") is not None else None
    if isinstance(run_dir, str) and run_dir:
        return str(Path(run_dir).expanduser())
    model_path = results.get("model_path")
    if not model_path:
        return str(results_path.parent.parent)
    p = Path(model_path)
    if p.name == "hf":
        p = p.parent
    if p.parent.name == "checkpoints":
        return str(p.parent.parent)
    if p.name == "final":
        return str(p.parent)
    return str(p)


def _number(value, what: str, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: {what} must be a number, got {value!r}")
    return float(value)


def _loss(entry: dict, metric: str, where: str, path: Path) -> float | None:
    value = entry.get(metric)
    if value is None:
        return None
    value = _number(value, f"{where}.{metric}", path)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{path}: {where}.{metric} = {value!r} is not a positive finite loss")
    return value


def read_results(path: Path, metric: str, x_key: str, levels: Iterable[str]) -> tuple[list[Point], str | None]:
    """The points of one results.json, or ([], reason) when it cannot be placed on a curve."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a JSON object (the results.json layout)")
    ckpt = results.get("checkpoint") or {}
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: 'checkpoint' must be an object (state.json contents)")
    x = _number(ckpt.get(x_key), f"checkpoint.{x_key}", path)
    if x is None:
        return [], f"no checkpoint.{x_key} (model not evaluated from a training run's checkpoint)"
    model = ckpt.get("model_name")
    if not model:
        return [], "no checkpoint.model_name"
    run = _run_dir(results, path)
    common = dict(model=str(model), n_params=_number(ckpt.get("n_params"), "checkpoint.n_params", path),
                  n_params_non_embedding=_number(ckpt.get("n_params_non_embedding"), "checkpoint.n_params_non_embedding", path),
                  run=f"{run}|{model}|{ckpt.get('seed')}|{ckpt.get('data_path')}", seed=ckpt.get("seed"), x=x,
                  step=ckpt.get("step"), path=str(path))
    points = []
    if "category" in levels:
        for cat, entry in (results.get("categories") or {}).items():
            if not isinstance(entry, dict):
                raise UserError(f"{path}: categories.{cat} must be an object")
            loss = _loss(entry, metric, f"categories.{cat}", path)
            if loss is not None:
                points.append(Point(level="category", key=str(cat), loss=loss, n=entry.get("n_subtasks"), **common))
    if "subtask" in levels:
        for bench, bentry in (results.get("benchmarks") or {}).items():
            for sub, entry in ((bentry or {}).get("subtasks") or {}).items():
                if not isinstance(entry, dict):
                    raise UserError(f"{path}: benchmarks.{bench}.subtasks.{sub} must be an object")
                loss = _loss(entry, metric, f"benchmarks.{bench}.subtasks.{sub}", path)
                if loss is not None:
                    points.append(Point(level="subtask", key=f"{bench}/{sub}", loss=loss, n=entry.get("n"), **common))
    if not points:
        return [], f"no {metric} in categories or benchmarks"
    return points, None


def gather(runs: Sequence[str], metric: str = "bt_loss", x_key: str = "pairs_seen", levels: Sequence[str] = LEVELS,
           points: str = "all") -> Gathered:
    """Every usable point under `runs`. `points='final'` keeps only each run's last checkpoint (separate runs per data size)."""
    if points not in ("all", "final"):
        raise UserError(f"points={points!r}: choose all or final")
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise UserError(f"levels: unknown level {bad[0]!r} (choose from {', '.join(LEVELS)})")
    files = find_results(runs)
    out = Gathered(points=[], files=[str(f) for f in files])
    by_key: dict[tuple, Point] = {}
    for f in files:
        pts, reason = read_results(f, metric, x_key, levels)
        if reason:
            out.skipped.append({"path": str(f), "reason": reason})
            log.warning("skipping %s: %s", f, reason)
            continue
        for p in pts:
            key = (p.run, p.x, p.level, p.key)
            if key in by_key:
                out.duplicates += 1
                continue
            by_key[key] = p
    kept = list(by_key.values())
    if points == "final":
        last: dict[str, float] = {}
        for p in kept:
            last[p.run] = max(last.get(p.run, -math.inf), p.x)
        kept = [p for p in kept if p.x == last[p.run]]
    sizes: dict[str, tuple] = {}
    for p in kept:
        size = (p.n_params, p.n_params_non_embedding)
        if sizes.setdefault(p.model, size) != size:
            raise UserError(f"model {p.model!r} has conflicting parameter counts {sizes[p.model]} and {size} ({p.path})")
    if not kept:
        reasons = "; ".join(sorted({s["reason"] for s in out.skipped})) or "no points"
        raise UserError(f"runs: none of the {len(files)} results.json files can be placed on a scaling curve ({reasons})")
    out.points = sorted(kept, key=lambda p: (p.level, p.key, p.model, p.run, p.x))
    return out


def order_keys(keys: Iterable[str], level: str) -> list[str]:
    """Categories in `categories.order_categories` order (the paper's first); subtask keys alphabetically."""
    return order_categories(keys) if level == "category" else sorted(set(keys))
