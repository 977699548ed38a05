"""What `worldpm train` does before its loop: check the config, set up logging and seeds, build the model to train, and pick
the held-out pairs evaluated along the run. Every check here runs before a process group or a model exists."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.serialization import _torch as hub_torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from worldpm.data.packing import ATTENTION, LAYOUTS
from worldpm.data.stream import sources
from worldpm.data.threads import Objective
from worldpm.errors import UserError
from worldpm.model.checkpoint import has_reward_head
from worldpm.model.loader import load_reward_model
from worldpm.model.reward_model import RewardModel, init_head
from worldpm.train import checkpointing, distributed
from worldpm.train.metrics import WANDB_MODES

log = logging.getLogger("worldpm.train")

PRECISIONS = ("fp32", "bf16")
UNITS = ("auto", "pairs", "threads")


def validate(cfg: DictConfig) -> None:
    """Everything checkable before a process group or a model exists: one-line UserErrors naming the bad key."""
    tcfg, dcfg = cfg.trainer, cfg.data
    if not cfg.get("output_dir"):
        raise UserError("output_dir is not set")
    if tcfg.precision not in PRECISIONS:
        raise UserError(f"trainer.precision={tcfg.precision!r} is not one of {PRECISIONS}")
    if dcfg.packing not in LAYOUTS:
        raise UserError(f"data.packing={dcfg.packing!r} is not one of {LAYOUTS}")
    if dcfg.attention not in ATTENTION:
        raise UserError(f"data.attention={dcfg.attention!r} is not one of {ATTENTION}")
    objective, unit = objective_of(cfg), data_unit(cfg)
    sources(dcfg, unit)  # data.path / data.mix exist and hold train shards (and thread shards for threads)
    if objective.name == "listwise" and unit != "threads":
        raise UserError("loss.objective=listwise reads whole threads: set data.unit=threads (or auto)")
    if unit == "threads" and cfg.loss.get("margin_column"):
        raise UserError("loss.margin_column is a column of pair shards; thread shards have none (data.unit=pairs)")
    if objective.name == "listwise" and objective.likelihood == "plackett_luce" and float(cfg.loss.center_coefficient):
        raise UserError("loss.center_coefficient centres pairs of rewards; with loss.listwise.likelihood=plackett_luce set it to 0")
    if str((cfg.get("wandb") or {}).get("mode", "disabled")) not in WANDB_MODES:
        raise UserError(f"wandb.mode={cfg.wandb.mode!r} is not one of {WANDB_MODES}")
    for key in ("pairs_per_step", "max_bad_steps", "log_every"):
        if int(tcfg[key]) < 1:
            raise UserError(f"trainer.{key}={tcfg[key]} must be >= 1")
    if tcfg.get("max_steps") is not None and int(tcfg.max_steps) < 0:
        raise UserError(f"trainer.max_steps={tcfg.max_steps} must be >= 0")
    if not float(tcfg.lr) > 0:
        raise UserError(f"trainer.lr={tcfg.lr} must be > 0")
    world = distributed.expected_world_size()
    if int(tcfg.pairs_per_step) < world:
        raise UserError(f"trainer.pairs_per_step={tcfg.pairs_per_step} is smaller than the {world} ranks of this job: "
                        "every rank needs at least one pair per step")
    max_length = int(cfg.model.max_length)
    need = 2 * max_length
    if int(dcfg.max_tokens_per_micro_batch) < need:
        raise UserError(f"data.max_tokens_per_micro_batch={dcfg.max_tokens_per_micro_batch} cannot hold one pair: two sequences of "
                        f"up to model.max_length={max_length} tokens need {need}; raise it or lower model.max_length")
    if cfg.get("deepspeed") is not None and tcfg.precision == "bf16" and not _bf16_supported():
        raise UserError("trainer.precision=bf16 but this machine has no bf16 support; use trainer.precision=fp32")


def objective_of(cfg: DictConfig) -> Objective:
    """`loss.objective` and its listwise options (a one-line UserError for a bad value)."""
    listwise = cfg.loss.get("listwise") or {}
    return Objective(str(cfg.loss.get("objective", "pairs")), str(listwise.get("likelihood", "bradley_terry")),
                     str(listwise.get("weighting", "thread")))


def data_unit(cfg: DictConfig) -> str:
    """What a step draws (`data.unit`): `pairs` or `threads`; `auto` is threads for the listwise objective, else pairs."""
    unit = str(cfg.data.get("unit", "auto"))
    if unit not in UNITS:
        raise UserError(f"data.unit={unit!r} is not one of {UNITS}")
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
    handler = logging.FileHandler(out / "train.log")
    handler.worldpm_run_log = True
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_init_from(init_from) -> str | None:
    """`init_from`: a reward checkpoint directory, a run directory (its final/ or newest checkpoint), or a step checkpoint."""
    if not init_from:
        return None
    path = Path(str(init_from))
    candidates = [path, path / "hf", path / "final"]
    found = checkpointing.complete_checkpoints(path)
    if found:
        candidates.append(found[-1] / "hf")
    for c in candidates:
        if (c / "config.json").exists():
            return str(c)
    raise UserError(f"init_from={init_from} is not a reward checkpoint (no config.json in it, its hf/ or final/, or a checkpoint)")


def build_model(cfg: DictConfig, ds_config: dict | None) -> tuple[RewardModel, object, dict]:
    """The RewardModel to train (pretrained / checkpoint weights or random init, a seeded fresh head, in the training dtype),
    the ZeRO-3 config object transformers must keep seeing while it lives, and a description for logs and state.json."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("train", None)
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
    model = load_reward_model(model_cfg, path, device=None, dtype=dtype)  # the engine places it
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
    return model, hf_ds_config, info


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
