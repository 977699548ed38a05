"""`worldpm <verb> key=value ...`: the one console script. Only this module knows every verb.

Each verb lives in its own module whose `main()` is a Hydra entry point (see worldpm.config.hydra_entry), so every verb takes
Hydra overrides, `+key=value` and `-m` sweeps, and `python -m <module>` is the same program.
"""
from __future__ import annotations

import importlib
import sys

VERBS: dict[str, tuple[str, str]] = {
    "collect": ("data_prep.collect", "forum dump or preference set -> pair shards (source=..., source.path=..., output_dir=...)"),
    "train": ("worldpm.train", "Bradley-Terry training, one process or under torchrun/deepspeed (model=..., data.path=...)"),
    "eval": ("worldpm.eval.run", "score benchmarks with a checkpoint, write results (model_path=..., benchmark=[...])"),
    "scaling": ("worldpm.eval.scaling", "fit and plot scaling curves from many eval results (runs=[...], output_dir=...)"),
    "score": ("worldpm.score", "batch-score a file of conversations (model_path=... or model=..., input=..., output=...)"),
    "serve": ("worldpm.serve", "HTTP reward server, OpenRLHF protocol (model_path=..., host=127.0.0.1, port=..., api_key=...)"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: worldpm <verb> [key=value ...] [-m] [--help]", "", "verbs:"]
    lines += [f"  {verb.ljust(width)}  {text}" for verb, (_, text) in VERBS.items()]
    lines += ["", "`worldpm <verb> --help` shows the verb's config; overrides follow Hydra's syntax (key=value, +key=value, -m)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    verb = argv[0]
    if verb not in VERBS:
        print(f"worldpm: error: unknown verb '{verb}' (choose from: {', '.join(VERBS)})", file=sys.stderr)
        raise SystemExit(2)
    module_name = VERBS[verb][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"worldpm: error: verb '{verb}' is not built yet (no module {module_name})", file=sys.stderr)
            raise SystemExit(2)
        print(f"worldpm {verb}: error: missing dependency '{exc.name}'; install worldpm with the extra it needs "
              f"(pip install 'worldpm[all]')", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"worldpm {verb}"] + argv[1:]
    module.main()


if __name__ == "__main__":
    main()
