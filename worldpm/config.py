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

__all__ = ["compose", "compose_option", "config_dir", "fail", "group_overrides", "hydra_entry", "verb_entry"]


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides; bad overrides become one-line `UserError`s."""
    return _compose(config_name, overrides, error=UserError)


def compose_option(group: str, option: str, key: str) -> DictConfig:
    """One option of a config group (`configs/<group>/<option>.yaml`, its own defaults list applied), composed on its own: for
    a choice that a config value makes (Hydra's defaults list cannot read config values). Inside a Hydra job it is composed on
    that job's search path (so `hydra.searchpath` additions count); `key` names the setting that chose it, for the error."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    name = f"{group}/{option}"
    try:
        if GlobalHydra.instance().is_initialized():
            return hydra_compose(config_name=name)[group]
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=name)[group]
    except HydraException:
        choices = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        raise UserError(f"{key}={option} is not a config in configs/{group}/ (choose from {', '.join(choices)})") from None


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
