"""Training checkpoints: resumable state + an exported model, atomic, the last K kept; and preemption signals.

Layout (binding for evaluation and scaling; worldpm.run_layout is its torch-free definition):

    output_dir/checkpoints/step-00000120/
        deepspeed/ | torch_state.pt      engine state (weights, optimizer, lr schedule), per rank under ZeRO
        deepspeed_universal/             the ZeRO state whole per parameter, made when a job of another rank count resumes it
        rng/rank-00000.pt ...            every rank's RNG state
        data.json                        the data stream's position (PairStream.state_dict) and the run counters
        hf/                              the model in the checkpoint contract, gathered from ZeRO-3 partitions (trainer.save_hf)
        state.json                       written last: {"step", "pairs_seen", "tokens_seen", ..., "complete": true}

Only the last `trainer.keep_last` checkpoints stay resumable; older ones are pruned to hf/ + state.json ("resumable": false)
when `trainer.keep_series` is true, so the whole checkpoint series stays available to `worldpm eval checkpoints=all`.

Everything is written into `checkpoints/.step-00000120.tmp/` and the directory is renamed into place only after state.json is
on disk, so a `step-*` directory is always complete: a kill during a save leaves a `.tmp` directory that the next save (or
resume) deletes, and the newest complete checkpoint is untouched. The final model, `output_dir/final/`, is written the same way.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldpm.atomic_dir import replace_dir
from worldpm.errors import UserError
from worldpm.model.checkpoint import RewardSpec, save_checkpoint
from worldpm.model.lora import LoraExport, merge_lora_state_dict, merge_quantized, save_adapter
from worldpm.run_layout import read_state, step_name, step_of
from worldpm.train.distributed import Dist, barrier

log = logging.getLogger("worldpm.train")


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete, resumable checkpoints, oldest first (a directory counts only with a state.json that says complete and was
    not pruned down to its hf/ export)."""
    root = Path(output_dir) / "checkpoints"
    found = []
    for d in root.glob("step-*") if root.is_dir() else []:
        state = _read_state(d)
        if step_of(d) is not None and state.get("complete") is True and state.get("resumable", True):
            found.append(d)
    return sorted(found, key=step_of)


def prune(checkpoint: Path, keep_series: bool) -> None:
    """Drop an old checkpoint's resumable state. With keep_series, its hf/ export and state.json stay (marked not
    resumable): the data-scaling curve is evaluated on every checkpoint of one run, and the export is ~1/8 of the ZeRO state
    (bf16 weights vs fp32 weights + Adam moments)."""
    if not (keep_series and (checkpoint / "hf").is_dir()):
        shutil.rmtree(checkpoint, ignore_errors=True)
        return
    state = _read_state(checkpoint)
    tmp = checkpoint / ".state.json.tmp"
    _write_json(tmp, {**state, "resumable": False})
    os.replace(tmp, checkpoint / "state.json")  # first, so an interrupted prune never looks resumable
    for entry in checkpoint.iterdir():
        if entry.name not in ("hf", "state.json"):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _read_state(directory: Path) -> dict:
    return read_state(directory / "state.json") or {}


def resolve_resume(output_dir: Path, resume) -> Path | None:
    """`trainer.resume`: auto (newest complete checkpoint, if any), never/null, or a checkpoint directory."""
    if resume in (None, False, "never", "none", "null", ""):
        return None
    if str(resume) == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(str(resume))
    if not (path / "state.json").exists() or _read_state(path).get("complete") is not True:
        raise UserError(f"trainer.resume={resume} is not a complete checkpoint directory (no state.json with complete=true)")
    return path


def _write_json(path: Path, payload: dict) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class ExportMeta:
    """What an exported model needs besides its weights (which the engine holds): the backbone config, tokenizer, reward spec."""

    config: Any
    tokenizer: Any
    spec: RewardSpec
    lora: LoraExport | None = None  # a LoRA run: the export merges the adapters and writes them to adapter/ too


def export_model(engine, directory: Path, meta: ExportMeta, dist: Dist) -> None:
    """The engine's model as a checkpoint-contract directory (worldpm.model.checkpoint). Collective: ZeRO-3 gathers the weights
    on every rank; rank 0 writes. A LoRA run's adapters are merged into the weights (an ordinary checkpoint) and also saved on
    their own, with the reward head, in `adapter/` (worldpm.model.lora)."""
    state_dict = engine.full_state_dict()
    if not dist.is_main:
        return
    if meta.lora is None:
        save_checkpoint(directory, state_dict, meta.config, meta.tokenizer, meta.spec)
        return
    settings = meta.lora.settings
    merged = merge_quantized(engine.model, settings) if settings.quantize else merge_lora_state_dict(state_dict, settings)
    save_checkpoint(directory, merged, meta.config, meta.tokenizer, meta.spec)
    save_adapter(Path(directory) / "adapter", state_dict, settings, meta.lora.base)


def save(engine, output_dir: Path, step: int, state: dict, data_state: dict, dist: Dist, export: ExportMeta | None = None,
         keep_last: int = 3, keep_series: bool = True) -> Path:
    """Write checkpoint `step` atomically (collective: every rank calls it); with `export`, the model goes to hf/ too."""
    root = Path(output_dir) / "checkpoints"
    final = root / step_name(step)
    tmp = root / f".{step_name(step)}.tmp"
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed
        tmp.mkdir()
    barrier(dist)
    engine.save_state(tmp)  # every rank: its ZeRO partition (the torch engine runs in one process only)
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank-{dist.rank:05d}.pt")
    if export is not None:
        export_model(engine, tmp / "hf", export, dist)
    barrier(dist)
    if dist.is_main:
        _write_json(tmp / "data.json", data_state)
        _write_json(tmp / "state.json", {**state, "step": step, "complete": True})
        _fsync_dir(tmp)
        replace_dir(tmp, final)  # the same step may be saved twice (a preemption right after a periodic save)
        _fsync_dir(root)
        for stale in complete_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            prune(stale, keep_series)
        for debris in root.glob(".step-*.tmp"):
            if debris != tmp:
                shutil.rmtree(debris, ignore_errors=True)
    barrier(dist)
    return final


def load(engine, checkpoint: Path, dist: Dist) -> tuple[dict, dict]:
    """Restore engine state and this rank's RNG from a checkpoint; returns (state.json, data.json)."""
    state = _read_state(checkpoint)
    engine.load_state(checkpoint, int(state.get("world_size") or dist.world_size), state.get("zero_stage", engine.stage))
    rng_file = checkpoint / "rng" / f"rank-{dist.rank:05d}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    data = json.loads((checkpoint / "data.json").read_text())
    return state, data


def export_final(engine, output_dir: Path, meta: ExportMeta, state: dict, dist: Dist) -> Path | None:
    """`output_dir/final/`: the model (checkpoint contract) with state.json beside config.json, renamed into place whole."""
    final = Path(output_dir) / "final"
    tmp = Path(output_dir) / ".final.tmp"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    export_model(engine, tmp, meta, dist)
    if dist.is_main:
        _write_json(tmp / "state.json", {**state, "complete": True})
        _fsync_dir(tmp)
        replace_dir(tmp, final)
    barrier(dist)
    return final


# ---------------------------------------------------------------------------------------------------------------- signals
class PreemptionSignals:
    """SIGTERM, SIGUSR1 (SLURM's --signal, preemption) and submitit's preemption signal (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL
    says otherwise) ask the run to checkpoint at the end of the current step and stop.

    The handler only records the signal; the loop agrees across ranks (any rank signalled = all stop at the same step), saves,
    then hands each signal received to whatever handler was installed before: under submitit, its handler requeues the job
    (rank 0, after our checkpoint, instead of mid-step without one).
    """

    def __init__(self):
        self.received: list[int] = []  # in order of arrival, each once
        self.previous: dict[int, object] = {}
        names = {"SIGTERM", "SIGUSR1", "SIGUSR2", "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")}
        for name in sorted(names):
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self.previous[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    pass

    def _handle(self, signum, frame):
        if signum not in self.received:
            self.received.append(signum)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def forward(self) -> None:
        """After the checkpoint: give each signal received to the handler that was there before ours (e.g. submitit's, which
        requeues the job and exits)."""
        self.restore()
        for sig in self.received:
            handler = self.previous.get(sig)
            if callable(handler):
                handler(sig, None)
