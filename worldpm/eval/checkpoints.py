"""A training run's checkpoints, in the layout the trainer writes (CONVENTIONS.md, "Training run layout"):

    run_dir/checkpoints/step-{step:08d}/{hf/, state.json}   state.json written last: {"step", "pairs_seen", ..., "complete": true}
    run_dir/final/{config.json, ..., state.json}

A checkpoint counts once its state.json says complete and its model directory has a config.json; anything else (a temp
directory, one still being written) is skipped with a log line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from worldpm.errors import UserError
from worldpm.run_layout import read_state, step_of

log = logging.getLogger("worldpm.eval")


@dataclass
class Checkpoint:
    name: str          # step-00000120 | final
    model_dir: Path    # what RewardModel.from_pretrained loads
    state: dict


def find_state(model_path: str | None) -> dict:
    """state.json beside the model (final/) or one level up (checkpoints/step-N/hf/); {} when there is none."""
    if not model_path:
        return {}
    path = Path(str(model_path)).expanduser()
    for candidate in (path / "state.json", path.parent / "state.json"):
        if path.is_dir() and candidate.is_file():
            state = read_state(candidate)
            if state is not None:
                return state
    return {}


def _complete(name: str, model_dir: Path, state_file: Path) -> Checkpoint | None:
    state = read_state(state_file) if state_file.is_file() else None
    if state is None or state.get("complete") is not True:
        log.warning("skipping %s: no complete state.json (%s)", name, state_file)
        return None
    if not (model_dir / "config.json").is_file():
        log.warning("skipping %s: no exported model in %s (trainer.save_hf=false?)", name, model_dir)
        return None
    return Checkpoint(name, model_dir, state)


def discover(run_dir: str | Path, which: str | Sequence[str]) -> list[Checkpoint]:
    run = Path(str(run_dir)).expanduser()
    if not run.is_dir():
        raise UserError(f"run_dir {run} is not a directory (a training output_dir with checkpoints/ and final/)")
    found: list[Checkpoint] = []
    steps = sorted(p for p in (run / "checkpoints").glob("step-*") if p.is_dir() and step_of(p) is not None)
    for step_dir in steps:
        ckpt = _complete(step_dir.name, step_dir / "hf", step_dir / "state.json")
        if ckpt:
            found.append(ckpt)
    found.sort(key=lambda c: (c.state.get("pairs_seen", 0), c.state.get("step", 0)))
    if (run / "final").is_dir():
        ckpt = _complete("final", run / "final", run / "final" / "state.json")
        if ckpt:
            found.append(ckpt)
    if which == "all":
        if not found:
            raise UserError(f"run_dir {run} holds no complete checkpoint (checkpoints/step-*/ with state.json and hf/, or final/)")
        return found
    names = [which] if isinstance(which, str) else list(which)
    by_name = {c.name: c for c in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"checkpoints {missing} not found complete in {run} (available: {', '.join(by_name) or 'none'})")
    return [by_name[n] for n in names]
