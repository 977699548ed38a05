"""The Hydra entry point of every verb: `run(cfg)` -> a `main()` with one-line user errors.

`worldpm <verb> ...` (the CLI sets sys.argv) and `python -m <module> ...` (what launchers start on every rank) run the same
`main()`: the overrides are composed and checked against the verb's schema once up front (data_prep/schema.py: types, unknown
keys, ranges, paths), so that a bad one is a single line before anything is imported or written; then Hydra drives the run
(sweeps with `-m`, launchers such as submitit) and each job's config is checked again before `run` is called with its typed
form. `--help` lists the verb's keys with types, defaults and meanings. An `InputError` (data_prep's `CollectError`, worldpm's
`UserError`) anywhere in the run becomes `worldpm <verb>: error: <one line>` and exit status 2. It lives in data_prep because
data_prep imports nothing from worldpm; worldpm.config re-exports it.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

from data_prep import config_schemas  # noqa: F401 (registers the schemas of collect, nested and synthetic)
from data_prep import schema
from data_prep.errors import InputError

_HERE = Path(__file__).resolve().parent
_APPEND_HINT = "To append to your config use +"  # Hydra's second line for an override of a key the config lacks
_PASS_THROUGH = ("-m", "--multirun", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")
_HELP = ("-h", "--help")


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


def compose(config_name: str, overrides: Sequence[str] = (), error: type[InputError] = InputError, with_hydra: bool = False):
    """Compose `configs/<config_name>.yaml` with overrides; a bad override becomes a one-line `error`. The result is not yet
    checked against the verb's schema (`check`): tests and tools compose configs with placeholder paths."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=f"worldpm_{config_name}"):
            return hydra_compose(config_name=config_name, overrides=group_overrides(overrides), return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        first = lines[0]
        if len(lines) > 1 and lines[1].startswith(_APPEND_HINT):  # a key the config does not have: name the override given
            given = lines[1].removeprefix(_APPEND_HINT)
            key = given.partition("=")[0]
            close = difflib.get_close_matches(key, schema.known_keys(config_name), n=1, cutoff=0.75)
            first = f"{given}: no such setting" + (f" (did you mean {close[0]}?)" if close else "")
        raise error(f"bad override for '{config_name}': {first}") from None


def compose_option(group: str, option: str, key: str, error: type[InputError] = InputError):
    """One option of a config group (`configs/<group>/<option>.yaml`, its own defaults list applied), composed on its own: for
    a choice that a config value makes (Hydra's defaults list cannot read config values, e.g. train's `deepspeed=auto`).
    Inside a Hydra job it is composed on that job's search path (so `hydra.searchpath` additions count); `key` names the
    setting that chose it, for the error."""
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
        raise error(f"{key}={option} is not a config in configs/{group}/ (choose from {', '.join(choices)})") from None


def check(config_name: str, cfg, error: type[InputError] = InputError):
    """`cfg` checked against the verb's schema and rules (data_prep/schema.py), returned typed; one-line `error` otherwise."""
    return schema.check(config_name, cfg, error)


def print_help(config_name: str, overrides: Sequence[str]) -> None:
    """`worldpm <verb> --help`: the verb's keys (as composed with `overrides`) with types, defaults and meanings."""
    from omegaconf import OmegaConf, open_dict

    cfg = compose(config_name, overrides, with_hydra=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    print(schema.help_text(config_name, cfg, config_dir(), choices))


def hydra_entry(config_name: str):
    """Decorate `run(cfg)` into a Hydra `main()` whose user errors are one line and exit 2."""

    def decorate(run):
        @functools.wraps(run)
        def guarded(cfg):
            try:
                return run(check(config_name, cfg))  # every job of a sweep is checked before its run starts
            except InputError as exc:
                fail(config_name, str(exc))

        def main() -> None:
            sys.argv[1:] = group_overrides(sys.argv[1:])
            args = sys.argv[1:]
            own = [a for a in args if not a.startswith(("hydra.", "+hydra.", "hydra/", "~hydra"))]
            try:
                if any(a in _HELP for a in args):
                    print_help(config_name, [a for a in own if a not in _HELP])
                    return
                if not any(a in _PASS_THROUGH or a.startswith(("--cfg", "--info", "--config-")) for a in args):
                    check(config_name, compose(config_name, own))
                path = config_dir()
            except InputError as exc:
                fail(config_name, str(exc))
            import hydra

            hydra.main(config_path=str(path), config_name=config_name, version_base="1.3")(guarded)()

        main.run = run  # the plain function, for tests and in-process callers
        return main

    return decorate
