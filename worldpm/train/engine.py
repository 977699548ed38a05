"""The optimisation engine behind the training loop: DeepSpeed ZeRO 1/2/3 (+ offload), or plain PyTorch (`deepspeed=null`).

Both expose the same five verbs to `worldpm.train` — forward, backward, step, save/load state, full_state_dict — so the loop is
one plain loop. Both run the same AdamW (decay on matrices only), the same warmup + constant/cosine schedule, the same
clipping, and both *skip* an update whose gradient norm is not finite (DeepSpeed's overflow check, which is on for fp32 and
bf16 in ZeRO; the torch engine checks the clipped norm), leaving weights and optimizer state untouched.

A step has a variable number of token-budget micro-batches, so DeepSpeed runs with `managed_gradient_accumulation: false`:
every `backward` accumulates, every `step` is the accumulation boundary. The loss handed to `backward` is already scaled so
that the gradient is that of the mean loss over the step's global pairs (see recipe.py). `make_engine` picks one.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import os
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch

from worldpm.atomic_dir import replace_dir
from worldpm.config.schemas import SCHEDULES
from worldpm.errors import UserError
from worldpm.train.distributed import Dist, main_first

log = logging.getLogger("worldpm.train")



def lr_lambda(warmup_steps: int, total_steps: int, schedule: str, min_ratio: float):
    """Multiplier of the peak lr after `n` optimizer updates: linear warmup, then constant / cosine / linear decay to min_ratio."""
    if schedule not in SCHEDULES:
        raise UserError(f"trainer.lr_schedule={schedule!r} is not one of {SCHEDULES}")

    def factor(n: int) -> float:
        if warmup_steps > 0 and n < warmup_steps:
            return (n + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (n - warmup_steps) / span)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases and norm weights), as is usual for transformers."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)  # ZeRO-3 parameters are flat partitions; their true shape is ds_shape
        (decay if len(shape) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, tcfg, kind: str):
    groups = param_groups(model, float(tcfg.weight_decay))
    kwargs = dict(lr=float(tcfg.lr), betas=tuple(float(b) for b in tcfg.betas), eps=float(tcfg.eps))
    if kind == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    if kind == "adamw_torch":
        return torch.optim.AdamW(groups, **kwargs)
    raise UserError(f"trainer.optimizer={kind!r} is not one of ['auto', 'adamw_torch', 'cpu_adam']")


def make_scheduler(optimizer, tcfg, total_steps: int):
    warmup = int(tcfg.warmup_steps) if tcfg.get("warmup_steps") is not None else int(round(float(tcfg.warmup_ratio) * total_steps))
    fn = lr_lambda(warmup, total_steps, str(tcfg.lr_schedule), float(tcfg.min_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


# ---------------------------------------------------------------------------------------------------------------- DeepSpeed
def deepspeed_config(ds_cfg: Mapping[str, Any], tcfg) -> dict:
    """The DeepSpeed JSON: the chosen configs/deepspeed/*.yaml plus what the trainer owns (batching, precision, clipping)."""
    cfg = copy.deepcopy(dict(ds_cfg))
    cfg.pop("name", None)
    zero = cfg.setdefault("zero_optimization", {})
    if zero.get("stage") not in (0, 1, 2, 3):
        raise UserError(f"deepspeed config has zero_optimization.stage={zero.get('stage')!r}; expected 0-3")
    cfg.update(
        train_micro_batch_size_per_gpu=1,  # a micro-batch is one packed row of up to data.max_tokens_per_micro_batch tokens
        gradient_accumulation_steps=1,
        managed_gradient_accumulation=False,  # a step has as many micro-batches as its tokens need; step() is the boundary
        gradient_clipping=float(tcfg.max_grad_norm),
        bf16={**dict(cfg.get("bf16") or {}), "enabled": tcfg.precision == "bf16"},
        fp16={"enabled": False},
        steps_per_print=cfg.get("steps_per_print", 10 ** 9),
        zero_allow_untested_optimizer=True,
    )
    if zero["stage"] == 1:
        zero["overlap_comm"] = False  # unmanaged accumulation supports overlap_comm only where gradients are partitioned
    return cfg


def offloads_optimizer(ds_cfg: Mapping[str, Any] | None) -> bool:
    return bool(ds_cfg) and (ds_cfg.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")


def optimizer_kind(ds_cfg: Mapping[str, Any] | None, tcfg) -> str:
    """trainer.optimizer, with `auto` = DeepSpeed's CPU Adam when ZeRO offloads the optimizer, else torch AdamW."""
    kind = str(tcfg.optimizer)
    if kind == "auto":
        return "cpu_adam" if offloads_optimizer(ds_cfg) else "adamw_torch"
    return kind


UNIVERSAL_TAG = "deepspeed_universal"  # beside a checkpoint's deepspeed/: its ZeRO state, whole per parameter


def universal_checkpoint(directory: Path) -> Path:
    """`directory/deepspeed_universal/`: the per-rank ZeRO state in `directory/deepspeed/` converted by DeepSpeed's
    ds_to_universal (ZeRO-1/2/3) into one folder per parameter with its fp32 weights and Adam moments. Made once, atomically
    (a kill mid-way leaves a .tmp directory that the next attempt replaces)."""
    target = directory / UNIVERSAL_TAG
    if target.is_dir():
        return target
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    tmp = directory / f".{UNIVERSAL_TAG}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    workers = max(1, min(8, len(os.sched_getaffinity(0)) // 2))  # 1 = in this process (no fork of a process-group member)
    log.info("converting %s to DeepSpeed's universal checkpoint (%d workers)", directory / "deepspeed", workers)
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines are not the run's output
        ds_to_universal(argparse.Namespace(input_folder=str(directory / "deepspeed"), output_folder=str(tmp),
                                           num_extract_workers=workers, num_merge_workers=workers, keep_temp_folder=False,
                                           strict=True, inject_missing_state=True))
    replace_dir(tmp, target)
    return target


class DeepSpeedEngine:
    def __init__(self, model, ds_config: dict, tcfg, total_steps: int, dist: Dist, hf_ds_config=None):
        import deepspeed

        kind = optimizer_kind(ds_config, tcfg)
        if kind != "cpu_adam" and offloads_optimizer(ds_config):
            ds_config["zero_force_ds_cpu_optimizer"] = False  # torch AdamW on offloaded states: slower, but no JIT build
        optimizer = make_optimizer(model, tcfg, kind)
        scheduler = make_scheduler(optimizer, tcfg, total_steps)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
                                               dist_init_required=False)
        self.stage = int(ds_config["zero_optimization"]["stage"])
        self.dist = dist
        self._hf_ds_config = hf_ds_config  # ZeRO-3: transformers finds the config through a weak reference; keep it alive
        zero = ds_config["zero_optimization"]
        offloaded = [f"{what} offloaded to {(zero.get(f'offload_{what}') or {}).get('device')}" for what in ("optimizer", "param")
                     if (zero.get(f"offload_{what}") or {}).get("device") in ("cpu", "nvme")]
        log.info("engine: DeepSpeed ZeRO-%d%s, optimizer %s, %s", self.stage, "".join(f", {o}" for o in offloaded), kind,
                 "bf16 weights with fp32 masters" if ds_config["bf16"]["enabled"] else "fp32")

    def train(self):
        self.engine.train()

    def eval(self):
        self.engine.eval()

    def forward(self, **inputs) -> torch.Tensor:
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> tuple[bool, float]:
        skipped = self.engine.skipped_steps
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        return self.engine.skipped_steps == skipped, norm

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save_state(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag="deepspeed", save_latest=False)

    def load_state(self, directory: Path, world_size: int, stage: int | None) -> None:
        """Restore the ZeRO state that `world_size` ranks saved in `directory` under ZeRO `stage`. Saved by another number of
        ranks, it is first converted (once, by rank 0) into DeepSpeed's universal checkpoint, which holds every parameter
        whole (fp32 weights and Adam moments) and loads into any number of ranks. DeepSpeed's universal format differs
        between ZeRO-3 and ZeRO-1/2, so the stage must stay (offload may change)."""
        if not (directory / "deepspeed").is_dir():
            raise UserError(f"{directory} holds the state of the PyTorch engine (deepspeed=null), which DeepSpeed cannot load; "
                            "resume it with deepspeed=null, or start a new run from its model with init_from=")
        if (stage == 3) != (self.stage == 3):
            raise UserError(f"{directory} holds ZeRO-{stage} state, which ZeRO-{self.stage} cannot load; resume it with a "
                            f"ZeRO-{stage} config (any number of ranks) or in one process with deepspeed=null")
        universal = world_size != self.dist.world_size
        if universal:
            log.info("resuming the ZeRO-%s state of %d ranks on %d ranks through a universal checkpoint", stage, world_size,
                     self.dist.world_size)
            main_first(self.dist, partial(universal_checkpoint, directory))
        # DeepSpeed reads this flag when it loads (nothing before depends on it), so one engine loads either layout
        self.engine._config.load_universal_checkpoint = universal
        path, _ = self.engine.load_checkpoint(str(directory), tag=UNIVERSAL_TAG if universal else "deepspeed",
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise UserError(f"could not load the DeepSpeed state in {directory}")
        if universal:
            # DeepSpeed's universal load hands every parameter group one shared `step` tensor, which torch's Adam increments
            # in place once per group: the second group would count two steps per update (a wrong bias correction)
            for state in self.engine.optimizer.optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].clone()

    def full_state_dict(self) -> dict | None:
        """The whole model's weights on rank 0 (None elsewhere); ZeRO-3 gathers them layer by layer. Collective."""
        if self.stage == 3:
            return self._gather_zero3()
        if not self.dist.is_main:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.engine.module.state_dict().items()}

    def _gather_zero3(self) -> dict | None:
        """Like DeepSpeed's `_zero3_consolidated_16bit_state_dict` (one module's parameters gathered at a time, so rank 0 never
        holds more than one layer on the accelerator), but copying each tensor: on CPU `.cpu()` is no copy, and DeepSpeed's
        version would hand back views of buffers that are freed when the gather ends."""
        import deepspeed

        state: dict | None = {} if self.dist.is_main else None

        def visit(module, prefix: str) -> None:
            params = list(module.parameters(recurse=False))
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if state is not None:
                    for name, p in module.named_parameters(recurse=False):
                        state[prefix + name] = p.detach().to("cpu", copy=True)
                    for name, buf in module.named_buffers(recurse=False):
                        if name not in module._non_persistent_buffers_set:
                            state[prefix + name] = buf.detach().to("cpu", copy=True)
            for name, child in module.named_children():
                visit(child, prefix + name + ".")

        visit(self.engine.module, "")
        return state


# ---------------------------------------------------------------------------------------------------------------- PyTorch
class TorchEngine:
    """deepspeed=null: one process, plain PyTorch; bf16 through autocast over fp32 weights."""

    def __init__(self, model, tcfg, total_steps: int, dist: Dist):
        self.model = model.to(dist.device)
        self.optimizer = make_optimizer(model, tcfg, optimizer_kind(None, tcfg))
        self.scheduler = make_scheduler(self.optimizer, tcfg, total_steps)
        self.max_grad_norm = float(tcfg.max_grad_norm)
        self.autocast = tcfg.precision == "bf16"
        self.device = dist.device
        self.stage = None
        log.info("engine: PyTorch, one process, optimizer %s, %s", optimizer_kind(None, tcfg),
                 "bf16 autocast over fp32 weights" if self.autocast else "fp32")

    def train(self):
        self.model.train()

    def eval(self):
        self.model.eval()

    def forward(self, **inputs) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> tuple[bool, float]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        limit = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        applied = math.isfinite(norm)
        if applied:  # a non-finite gradient skips the update, as DeepSpeed's overflow check does
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return applied, norm

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save_state(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict()}, directory / "torch_state.pt")

    def load_state(self, directory: Path, world_size: int, stage: int | None) -> None:
        """Restore a torch engine's state, or a DeepSpeed one (any stage, any number of ranks) from its universal form."""
        if (directory / "torch_state.pt").exists():
            state = torch.load(directory / "torch_state.pt", map_location=self.device, weights_only=False)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            return
        log.info("resuming the ZeRO-%s state of %d ranks in one process through a universal checkpoint", stage, world_size)
        zero = universal_checkpoint(directory) / "zero"
        step = torch.load(zero / "optimizer_state.pt", weights_only=False)["optimizer_state_dict"]["state"][0]["step"]
        for name, p in self.model.named_parameters():
            whole = {key: _universal_tensor(zero / name / f"{key}.pt").view_as(p).to(self.device)
                     for key in ("fp32", "exp_avg", "exp_avg_sq")}
            p.data.copy_(whole.pop("fp32"))
            self.optimizer.state[p] = {"step": torch.as_tensor(step, dtype=torch.float32).clone(), **whole}
        model_states = sorted(zero.parent.glob("*model_states.pt"))[0]  # the lr schedule, as every rank saved it
        self.scheduler.load_state_dict(torch.load(model_states, weights_only=False)["lr_scheduler"])

    def full_state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


def _universal_tensor(path: Path) -> torch.Tensor:
    saved = torch.load(path, weights_only=False)  # ZeRO-3 conversions save the tensor, ZeRO-1/2 ones {"param": tensor, ...}
    return saved["param"] if isinstance(saved, dict) else saved


def make_engine(model, ds_config: dict | None, tcfg, total_steps: int, dist: Dist, hf_ds_config=None):
    """DeepSpeed ZeRO for a `deepspeed=` config, else plain PyTorch (one process); the engine owns `model` from here on."""
    if ds_config is not None:
        return DeepSpeedEngine(model, ds_config, tcfg, total_steps, dist, hf_ds_config)
    return TorchEngine(model, tcfg, total_steps, dist)
