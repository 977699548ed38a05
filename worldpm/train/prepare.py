"""What `worldpm train` does before its loop: check the config, set up logging and seeds, build the model to train, and pick
the held-out pairs evaluated along the run. Every check here runs before a process group or a model exists."""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.serialization import _torch as hub_torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from worldpm.config import check
from worldpm.config.schemas import resolve_deepspeed
from worldpm.data.threads import Objective
from worldpm.errors import UserError
from worldpm.model.checkpoint import has_reward_head
from worldpm.model.loader import load_reward_model
from worldpm.model.lora import LoraExport, apply_lora, check_quantization, lora_settings, quantization_config
from worldpm.model.reward_model import RewardModel, init_head
from worldpm.train import checkpointing, distributed

log = logging.getLogger("worldpm.train")

def validate(cfg: DictConfig) -> tuple[DictConfig, str]:
    """The config checked against train's schema (worldpm/config/schemas.py: types, ranges, paths, the micro-batch budget,
    ranks vs pairs per step, the ZeRO choice), `deepspeed=auto` resolved in place, then what only this machine can tell.
    Returns the typed config and what engine runs (and why), for the log. One-line UserErrors naming the key."""
    cfg = check("train", cfg)
    engine = resolve_deepspeed(cfg)
    if cfg.deepspeed is not None and cfg.trainer.precision == "bf16" and not _bf16_supported():
        raise UserError("trainer.precision=bf16 but this machine has no bf16 support; use trainer.precision=fp32")
    check_quantization(lora_settings(cfg.model.get("lora")), cfg.get("deepspeed"))
    return cfg, engine


def objective_of(cfg: DictConfig) -> Objective:
    """`loss.objective` and its listwise options (a one-line UserError for a bad value)."""
    listwise = cfg.loss.get("listwise") or {}
    return Objective(str(cfg.loss.get("objective", "pairs")), str(listwise.get("likelihood", "bradley_terry")),
                     str(listwise.get("weighting", "thread")))


def data_unit(cfg: DictConfig) -> str:
    """What a step draws (`data.unit`): `pairs` or `threads`; `auto` is threads for the listwise objective, else pairs."""
    unit = str(cfg.data.get("unit", "auto"))
    if unit == "auto":
        return "threads" if objective_of(cfg).name == "listwise" else "pairs"
    return unit


def _bf16_supported() -> bool:
    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True


def setup_logging(out: Path, dist: distributed.Dist) -> None:
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "datasets", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except ImportError:
        pass
    logging.getLogger(hub_torch.__file__).setLevel(logging.WARNING)  # its logger is named by file path; one line per save
    for old in [h for h in log.handlers if getattr(h, "worldpm_run_log", False)]:  # an earlier run in this process
        log.removeHandler(old)
        old.close()
    if not dist.is_main:
        log.setLevel(logging.WARNING)
        return
    out.mkdir(parents=True, exist_ok=True)
    if log.getEffectiveLevel() > logging.INFO:  # run() called in-process, with no logging set up: train.log still gets the run
        log.setLevel(logging.INFO)
    handler = logging.FileHandler(out / "train.log")
    handler.worldpm_run_log = True
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_init_from(init_from) -> str | None:
    """`init_from`: a reward checkpoint directory, a run directory (its final/ or newest checkpoint), a step checkpoint, or a
    hub id (e.g. Qwen/WorldPM-72B, read as it is released)."""
    if not init_from:
        return None
    path = Path(str(init_from))
    text = str(init_from)
    if not path.exists() and not text.startswith((".", "/", "~")) and re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return text  # a hub id: the loader reads it (worldpm.model.checkpoint.read_config)
    candidates = [path, path / "hf", path / "final"]
    found = checkpointing.complete_checkpoints(path)
    if found:
        candidates.append(found[-1] / "hf")
    for c in candidates:
        if (c / "config.json").exists():
            return str(c)
    raise UserError(f"init_from={init_from} is not a reward checkpoint (no config.json in it, its hf/ or final/, or a checkpoint)")


def build_model(cfg: DictConfig, ds_config: dict | None) -> tuple[RewardModel, object, dict, LoraExport | None]:
    """The RewardModel to train (pretrained / checkpoint weights or random init, a seeded fresh head, in the training dtype,
    LoRA adapters on a frozen backbone with model.lora.enabled), the ZeRO-3 config object transformers must keep seeing while it
    lives, a description for logs and state.json, and what a LoRA export needs (None for full fine-tuning)."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("train", None)
    lora = lora_settings(model_cfg.pop("lora", None))
    model_cfg["seed"] = int(cfg.trainer.seed)
    # bf16 under DeepSpeed: load 16-bit weights (ZeRO keeps fp32 masters); PyTorch bf16 = fp32 weights under autocast
    dtype = "bfloat16" if (cfg.trainer.precision == "bf16" and ds_config is not None) else "float32"
    init_from = resolve_init_from(cfg.get("init_from"))
    if init_from and not has_reward_head(init_from):
        raise UserError(f"init_from={cfg.init_from} holds no reward head; to start from a pretrained language model use model.path")
    path = init_from or model_cfg.get("path")
    hf_ds_config = None
    if ds_config is not None and ds_config["zero_optimization"]["stage"] == 3:
        from transformers.integrations import HfDeepSpeedConfig  # with deepspeed (an optional dependency)

        hf_ds_config = HfDeepSpeedConfig(ds_config)  # transformers builds / loads the backbone partitioned (zero.Init)
    quant = quantization_config(lora, torch.bfloat16 if cfg.trainer.precision == "bf16" else torch.float32)
    # the engine places the model; a quantised backbone is placed as it loads (bitsandbytes weights do not move)
    model = load_reward_model(model_cfg, path, device=None, dtype=dtype, quantization_config=quant,
                              device_map={"": torch.cuda.current_device()} if quant else None)
    fresh_head = not (path and has_reward_head(str(path)))
    if fresh_head:
        init_fresh_head(model, int(cfg.trainer.seed))
    if cfg.trainer.activation_checkpointing:
        model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    numel = lambda p: int(getattr(p, "ds_numel", p.numel()))  # noqa: E731 (ZeRO-3 parameters are partitioned)
    n_params = sum(numel(p) for p in model.parameters())
    embed = sum(numel(p) for p in model.model.get_input_embeddings().parameters())
    info = {"model_name": str(cfg.model.name), "n_params": n_params, "n_params_non_embedding": n_params - embed,
            "init": init_from or model_cfg.get("path") or "random", "fresh_head": fresh_head}
    export = None
    if lora is not None:
        counts = apply_lora(model, lora, bool(cfg.trainer.activation_checkpointing))
        if quant:  # the head trains in fp32 beside the quantised backbone (autocast mixes it with bf16 activations)
            model.head.to(device=torch.cuda.current_device(), dtype=torch.float32)
        info.update(lora=lora.as_dict(), **counts)
        export = LoraExport(lora, info["init"])
    return model, hf_ds_config, info, export


def init_fresh_head(model, seed: int) -> None:
    """Initialise a new reward head the same way on every rank and every ZeRO stage (a seed of its own, std = initializer_range).

    Under ZeRO-3 a head built inside zero.Init is partitioned: it is gathered, initialised on rank 0 and re-partitioned.
    """
    params = list(model.head.parameters())
    partitioned = any(hasattr(p, "ds_id") for p in params)
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        if partitioned:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    init_head(model.head, std)
        else:
            init_head(model.head, std)


def eval_subset(table, n: int) -> list[int]:
    """The held-out pairs evaluated along the run: a fixed sample (seed 0, the same for every run seed) of the test split."""
    if table is None or n <= 0:
        return []
    order = np.random.default_rng(0).permutation(len(table))
    return sorted(int(i) for i in order[:n])


def make_progress(tcfg, dist, total: int, initial: int):
    setting = str(tcfg.get("progress", "auto")).lower()
    if not dist.is_main or setting in ("false", "0", "off"):
        disable = True
    else:
        disable = None if setting == "auto" else False  # auto: a bar on a terminal, none in logs (tqdm's None)
    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True)
