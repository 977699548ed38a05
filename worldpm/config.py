"""Finding and composing the Hydra configs, and the entry point every verb uses.

Every verb composes `configs/<verb>.yaml` with the user's overrides, so `worldpm train model=tiny` and
`python -m worldpm.train model=tiny` (what launchers start on every rank) resolve identically. The implementation is shared with
data_prep (data_prep/entry.py), which may not import worldpm; here `compose` raises worldpm's `UserError`.
"""
from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig

from data_prep.entry import config_dir, fail, group_overrides, hydra_entry
from data_prep.entry import compose as _compose
from worldpm.errors import UserError

__all__ = ["compose", "config_dir", "fail", "group_overrides", "hydra_entry"]


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides; bad overrides become one-line `UserError`s."""
    return _compose(config_name, overrides, error=UserError)
