"""Finding and composing the Hydra configs, and the entry point every verb uses.

Every verb composes `configs/<verb>.yaml` with the user's overrides, so `worldpm train model=tiny` and
`python -m worldpm.train model=tiny` (what launchers start on every rank) resolve identically. The implementation is shared with
data_prep (data_prep/entry.py), which may not import worldpm; here `compose` raises worldpm's `UserError`.
"""
from __future__ import annotations

import importlib
from typing import Callable, Sequence

from omegaconf import DictConfig

from data_prep.entry import compose as _compose
from data_prep.entry import config_dir, fail, group_overrides, hydra_entry
from worldpm.errors import UserError

__all__ = ["compose", "config_dir", "fail", "group_overrides", "hydra_entry", "verb_entry"]


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides; bad overrides become one-line `UserError`s."""
    return _compose(config_name, overrides, error=UserError)


def verb_entry(config_name: str, target: str) -> Callable[[], None]:
    """The `main()` of a verb whose `run(cfg)` is `target` ("module:function"): Hydra composes and checks the overrides
    first, so a bad one fails in one line before the verb's module (torch, transformers) is imported; then `run` is imported
    and called on the composed config (under Hydra: sweeps with -m, launchers such as submitit)."""
    module_name, _, function = target.partition(":")

    def run(cfg: DictConfig):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not exc.name or module_name.startswith(exc.name):
                raise
            raise UserError(f"missing dependency '{exc.name}'; install worldpm with the extra it needs "
                            f"(pip install 'worldpm[all]')") from None
        return getattr(module, function)(cfg)

    run.__name__ = run.__qualname__ = f"run_{config_name}"
    return hydra_entry(config_name)(run)
