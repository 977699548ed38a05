"""The Hydra entry point of every verb: `run(cfg)` -> a `main()` with one-line user errors.

`worldpm <verb> ...` (the CLI sets sys.argv) and `python -m <module> ...` (what launchers start on every rank) run the same
`main()`: the overrides are composed once up front so that a bad one is a single line, then Hydra drives the run (sweeps with
`-m`, launchers such as submitit). An `InputError` (data_prep's `CollectError`, worldpm's `UserError`) anywhere in the run
becomes `worldpm <verb>: error: <one line>` and exit status 2. It lives in data_prep because data_prep imports nothing from
worldpm; worldpm.config re-exports it.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

from data_prep.errors import InputError

_HERE = Path(__file__).resolve().parent
_APPEND_HINT = "To append to your config use +"  # Hydra's second line for an override of a key the config lacks
_PASS_THROUGH = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")


def config_dir() -> Path:
    """The Hydra tree: top-level `configs/` of a source checkout, else the copy installed as `worldpm/configs` (found, not imported)."""
    candidates = [_HERE.parent / "configs"]
    spec = importlib.util.find_spec("worldpm")  # locating a top-level package does not import it
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "configs")
    for candidate in candidates:
        if (candidate / "model").is_dir():
            return candidate
    raise InputError(f"the config tree is missing (looked in {', '.join(map(str, candidates))}); reinstall worldpm")


def fail(verb: str, message: str, status: int = 2):
    print(f"worldpm {verb}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(status)


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


def compose(config_name: str, overrides: Sequence[str] = (), error: type[InputError] = InputError):
    """Compose `configs/<config_name>.yaml` with overrides; a bad override becomes a one-line `error`."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=f"worldpm_{config_name}"):
            return hydra_compose(config_name=config_name, overrides=group_overrides(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        first = lines[0]
        if len(lines) > 1 and lines[1].startswith(_APPEND_HINT):  # a key the config does not have: name the override given
            given = lines[1].removeprefix(_APPEND_HINT)
            first = f"{given}: no such setting (to add one: +{given})"
        raise error(f"bad override for '{config_name}': {first}") from None


def hydra_entry(config_name: str):
    """Decorate `run(cfg)` into a Hydra `main()` whose user errors are one line and exit 2."""

    def decorate(run):
        @functools.wraps(run)
        def guarded(cfg):
            try:
                return run(cfg)
            except InputError as exc:
                fail(config_name, str(exc))

        def main() -> None:
            sys.argv[1:] = group_overrides(sys.argv[1:])
            args = sys.argv[1:]
            try:
                if not any(a in _PASS_THROUGH or a.startswith(("--cfg", "--info", "--config-")) for a in args):
                    compose(config_name, [a for a in args if not a.startswith(("hydra.", "+hydra.", "hydra/", "~hydra"))])
                path = config_dir()
            except InputError as exc:
                fail(config_name, str(exc))
            import hydra

            hydra.main(config_path=str(path), config_name=config_name, version_base="1.3")(guarded)()

        main.run = run  # the plain function, for tests and in-process callers
        return main

    return decorate
