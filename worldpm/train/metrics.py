"""What a training step measures, and where it goes: always `output_dir/metrics.jsonl` (one JSON object per line), and wandb
when enabled. Rank 0 only.

A step's statistics are summed per micro-batch on each rank (`micro_batch_stats`, kept on the device so a micro-batch costs no
host sync), then over ranks in the step's one all_reduce, then turned into the logged row (`step_metrics`).

metrics.jsonl is the record evaluation and scaling read and tests compare; on resume, lines past the resumed step are dropped
(they belonged to the killed run's unsaved tail), so the file has exactly one line per step and per evaluation.
wandb: `wandb.mode` = online | offline | disabled (offline and disabled need no network); project / group / name from config;
the run id is kept in output_dir/wandb_run_id so a resumed run continues the same wandb run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path

import torch

from worldpm.model.bt_loss import bt_losses

log = logging.getLogger("worldpm.train")

# Summed per step on each rank, then over ranks in the step's one all_reduce (the order of that tensor). STATS come from the
# rewards and stay on the device (float64) until then; COUNTS are known on the host.
STATS = ("loss", "objective", "correct", "rc", "rc2", "rr", "rr2", "margin", "nonfinite")
# terms: the loss's terms (the pairs for `pairs`; every ranked pair or Plackett-Luce stage for listwise); stop: this rank got a
# preemption signal
COUNTS = ("pairs", "terms", "real_tokens", "pad_tokens", "processed_tokens", "stop")
SUMS = STATS + COUNTS


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity; keep the information
    return value


class MetricsLog:
    def __init__(self, output_dir: Path, enabled: bool, resumed_step: int, wandb_cfg=None, run_config: dict | None = None):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.run = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resumed_step)
        mode = str((wandb_cfg or {}).get("mode", "disabled"))  # one of WANDB_MODES: the config's schema checked it
        if mode != "disabled":
            self.run = self._start_wandb(output_dir, wandb_cfg, mode, run_config)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if int(row.get("step", 0)) <= step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    @staticmethod
    def _start_wandb(output_dir: Path, wcfg, mode: str, run_config):
        import wandb

        id_file = Path(output_dir) / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(project=wcfg.get("project"), group=wcfg.get("group"), name=wcfg.get("name"), mode=mode,
                         dir=str(output_dir), id=run_id, resume="allow", config=run_config, tags=list(wcfg.get("tags") or []))
        log.info("wandb run %s (%s) in %s", run_id, mode, output_dir)
        return run

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.run is not None:
            step = row.get("step")
            self.run.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def micro_batch_stats(rc: torch.Tensor, rr: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
    """A micro-batch's STATS as one float64 tensor on the rewards' device (no host sync), over its sampled pairs (rc, rr).
    `loss` is the plain BT loss summed over the pairs; `objective` the loss trained on (margin, centring, listwise terms),
    scaled so that the step's sum divided by its pairs is the step's weighted mean objective (train.loss)."""
    rc, rr = rc.float(), rr.float()
    losses = bt_losses(rc, rr)
    finite = torch.isfinite(losses).all() & torch.isfinite(objective)
    values = {
        "loss": losses.sum(), "objective": objective.double(), "correct": (rc > rr).sum(), "rc": rc.sum(),
        "rc2": (rc * rc).sum(), "rr": rr.sum(), "rr2": (rr * rr).sum(), "margin": (rc - rr).sum(), "nonfinite": ~finite,
    }
    return torch.stack([values[k].double() for k in STATS])


def step_metrics(s: dict, counters: dict, grad_norm: float, lr: float, elapsed: float, skipped: bool, epoch: float) -> dict:
    n = max(s["pairs"], 1.0)
    std = lambda total, sq: math.sqrt(max(sq / n - (total / n) ** 2, 0.0))  # noqa: E731
    return {
        "step": counters["step"], "loss": s["loss"] / n, "objective": s["objective"] / n, "accuracy": s["correct"] / n,
        "reward_chosen_mean": s["rc"] / n, "reward_chosen_std": std(s["rc"], s["rc2"]),
        "reward_rejected_mean": s["rr"] / n, "reward_rejected_std": std(s["rr"], s["rr2"]), "margin": s["margin"] / n,
        "grad_norm": grad_norm, "lr": lr, "pairs": int(s["pairs"]), "terms": int(s["terms"]), "tokens": int(s["real_tokens"]),
        "processed_tokens": int(s["processed_tokens"]),
        "tokens_per_s": s["real_tokens"] / elapsed,
        "padding_fraction": s["pad_tokens"] / max(s["processed_tokens"], 1.0), "step_time_s": elapsed,
        "pairs_seen": counters["pairs_seen"], "tokens_seen": counters["tokens_seen"], "epoch": epoch,
        "skipped": skipped, "skipped_steps": counters["skipped_steps"], "nonfinite_losses": counters["nonfinite_losses"],
    }
