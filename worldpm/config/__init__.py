"""Finding, composing and checking the Hydra configs, and the entry point every verb uses.

Every verb composes `configs/<verb>.yaml` with the user's overrides, so `worldpm train model=tiny` and
`python -m worldpm.train model=tiny` (what launchers start on every rank) resolve identically; the composed config is checked
against the verb's schema (worldpm/config/schemas.py; the machinery is data_prep/schema.py) before the verb's module, and
torch, are imported. The implementation is shared with data_prep (data_prep/entry.py), which may not import worldpm; here
errors are worldpm's `UserError`.
"""
from __future__ import annotations

import importlib
from typing import Callable, Sequence

from omegaconf import DictConfig

from data_prep.entry import check as _check
from data_prep.entry import compose as _compose
from data_prep.entry import config_dir, fail, group_overrides, hydra_entry
from worldpm.config import schemas  # noqa: F401 (registers the schemas of train, eval, scaling, score, serve)
from worldpm.errors import UserError

__all__ = ["check", "compose", "config_dir", "fail", "group_overrides", "hydra_entry", "verb_entry"]


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides; bad overrides become one-line `UserError`s. Not yet checked
    against the schema (see `check`)."""
    return _compose(config_name, overrides, error=UserError)


def check(config_name: str, cfg: DictConfig) -> DictConfig:
    """`cfg` checked against the verb's schema and rules, typed; a one-line `UserError` naming the key and value otherwise."""
    return _check(config_name, cfg, error=UserError)


def verb_entry(config_name: str, target: str) -> Callable[[], None]:
    """The `main()` of a verb whose `run(cfg)` is `target` ("module:function"): Hydra composes the overrides and they are
    checked against the verb's schema first, so a bad one fails in one line before the verb's module (torch, transformers)
    is imported; then `run` is imported and called on the checked config (under Hydra: sweeps with -m, launchers such as
    submitit)."""
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
