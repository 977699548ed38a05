"""`worldpm <verb> key=value ...`: the one console script. Only this module knows every verb.

Each verb is a `run(cfg)` function in its own module, started through a Hydra entry point (worldpm.config.verb_entry): the
overrides are composed and checked first, so a bad value is a one-line error before the verb's module (and torch) is imported;
every verb takes Hydra overrides, `+key=value` and `-m` sweeps. `python -m worldpm.train` is the same entry for launchers.
"""
from __future__ import annotations

import importlib.util
import sys

from worldpm.config import verb_entry

# verb -> (config name, "module:function" run with the composed config, one line of help)
VERBS: dict[str, tuple[str, str, str]] = {
    "collect": ("collect", "data_prep.collect:run",
                "forum dump or preference set -> pair shards (source=..., source.path=..., output_dir=...)"),
    "train": ("train", "worldpm.train.recipe:run",
              "Bradley-Terry training, one process or under torchrun/deepspeed (model=..., data.path=...)"),
    "eval": ("eval", "worldpm.eval.run:run", "score benchmarks with a checkpoint, write results (model_path=..., benchmark=[...])"),
    "scaling": ("scaling", "worldpm.eval.scaling.run:run",
                "fit and plot scaling curves from many eval results (runs=[...], output_dir=...)"),
    "compare": ("compare", "worldpm.eval.compare:run",
                "two evals of the same items side by side, paired bootstrap CIs of the difference (a=..., b=..., output_dir=...)"),
    "score": ("score", "worldpm.serve.score:run",
              "batch-score a file of conversations (model_path=... or model=..., input=..., output=...)"),
    "serve": ("serve", "worldpm.serve.server:run",
              "HTTP reward server, OpenRLHF protocol (model_path=..., host=127.0.0.1, port=..., api_key=...)"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: worldpm <verb> [key=value ...] [-m] [--help]", "", "verbs:"]
    lines += [f"  {verb.ljust(width)}  {text}" for verb, (_, _, text) in VERBS.items()]
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
    config_name, target, _ = VERBS[verb]
    module = target.partition(":")[0]
    if importlib.util.find_spec(module) is None:  # finding a module imports its parent packages only (light)
        print(f"worldpm: error: verb '{verb}' is not built yet (no module {module})", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"worldpm {verb}"] + argv[1:]
    verb_entry(config_name, target)()


if __name__ == "__main__":
    main()
