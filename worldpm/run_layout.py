"""The on-disk layout of a training run that the trainer writes and evaluation reads: one definition, torch-free (evaluation
imports it without pulling in torch or DeepSpeed).

    output_dir/checkpoints/step-00000120/{..., hf/, state.json}   state.json written last: {"step", ..., "complete": true}
    output_dir/final/{config.json, ..., state.json}
"""
from __future__ import annotations

import json
import re
from pathlib import Path

STEP_DIR = re.compile(r"^step-(\d+)$")  # group 1: the step (written as step-{step:08d})


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(directory: Path) -> int | None:
    """The step of a `step-N` directory, None for anything else (a `.step-N.tmp` being written, a stray file)."""
    match = STEP_DIR.match(Path(directory).name)
    return int(match.group(1)) if match else None


def read_state(path: Path) -> dict | None:
    """A state.json's contents; None when it is missing, unreadable, cut short or not a JSON object."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None
