"""Test driver: several training runs one after another in ONE process on every rank (as Hydra's sequential multirun does).

    torchrun ... tests/train_sequential.py <out_root> <stage>[,<stage>...] <override> ...

runs `worldpm.train.run` once per stage with `deepspeed=<stage> output_dir=<out_root>/<stage>`.
"""
import sys

from worldpm.config import compose
from worldpm.train.recipe import run

if __name__ == "__main__":
    root, stages, overrides = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
    for stage in stages:
        run(compose("train", [*overrides, f"deepspeed={stage}", f"output_dir={root}/{stage}"]))
