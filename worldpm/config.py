"""Finding and composing the Hydra configs.

Every verb composes `configs/<verb>.yaml` with the user's overrides through Hydra's compose API, so `worldpm train model=tiny`
and `python -m worldpm.train model=tiny` (what launchers start on every rank) resolve identically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from worldpm.errors import UserError

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The Hydra tree: the top-level `configs/` of a source checkout, else the copy installed as `worldpm/configs`."""
    for candidate in (_PACKAGE_DIR.parent / "configs", _PACKAGE_DIR / "configs"):
        if (candidate / "model").is_dir():
            return candidate
    raise UserError(f"worldpm's config tree is missing (looked in {_PACKAGE_DIR.parent / 'configs'} and {_PACKAGE_DIR / 'configs'}); reinstall worldpm")


def group_overrides(overrides: Sequence[str]) -> list[str]:
    """`group=null` (e.g. the documented `deepspeed=null`) -> Hydra's `~group`: Hydra itself rejects null for a config group."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and value == "null" and key.isidentifier() and (config_dir() / key).is_dir():
            out.append(f"~{key}")
        else:
            out.append(o)
    return out


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides; bad overrides become one-line `UserError`s."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=f"worldpm_{config_name}"):
            return hydra_compose(config_name=config_name, overrides=group_overrides(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"bad override for '{config_name}': {first}") from None


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def fail(verb: str, message: str, status: int = 2) -> "NoReturn":  # noqa: F821
    """Print a one-line error for `verb` to stderr and exit."""
    import sys

    print(f"worldpm {verb}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(status)


def _validate_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose once up front so that a bad override is one line, not Hydra's multi-line report."""
    if any(a in ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")
           or a.startswith(("--cfg", "--info", "--config-")) for a in overrides):
        return
    compose(config_name, [o for o in overrides if not o.startswith(("hydra.", "+hydra.", "hydra/", "~hydra"))])


def hydra_entry(config_name: str):
    """Decorate `run(cfg)` into a `main()` that Hydra drives (overrides, `-m` sweeps, launchers) with one-line user errors.

    The same `main()` serves `worldpm <verb> ...` (the CLI sets sys.argv) and `python -m worldpm.<verb> ...` under launchers.
    """
    import functools
    import sys

    def decorate(run):
        @functools.wraps(run)
        def guarded(cfg: DictConfig):
            try:
                return run(cfg)
            except UserError as exc:
                fail(config_name, str(exc))

        def main() -> None:
            sys.argv[1:] = group_overrides(sys.argv[1:])
            try:
                _validate_overrides(config_name, sys.argv[1:])
            except UserError as exc:
                fail(config_name, str(exc))
            import hydra

            hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(guarded)()

        main.run = run  # the plain function, for tests and in-process callers
        return main

    return decorate
