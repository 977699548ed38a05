"""Where training metrics go: always `output_dir/metrics.jsonl` (one JSON object per line), and wandb when enabled. Rank 0 only.

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

log = logging.getLogger("worldpm.train")

WANDB_MODES = ("online", "offline", "disabled")


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
        mode = str((wandb_cfg or {}).get("mode", "disabled"))  # one of WANDB_MODES: train.validate checked it
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
