"""The fake SLURM of the tests (see slurm.py): its executables on PATH, and what a test asks of the "cluster"."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = HERE / "bin"


class FakeSlurm:
    """A cluster whose state lives in `spool`: `env()` puts sbatch, srun, sacct, squeue, scontrol and scancel on PATH."""

    def __init__(self, spool: Path, kill_wait_s: float = 10, grace_s: float = 300):
        self.spool = Path(spool)
        self.settings = {"FAKE_SLURM_SPOOL": str(self.spool), "FAKE_SLURM_PYTHON": sys.executable,
                         "FAKE_SLURM_KILL_WAIT_S": str(kill_wait_s), "FAKE_SLURM_GRACE_S": str(grace_s)}

    def env(self, base: dict | None = None) -> dict:
        base = dict(os.environ if base is None else base)
        return {**base, **self.settings, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}"}

    def command(self, *args: str) -> str:
        return subprocess.run([sys.executable, str(HERE / "slurm.py"), *args], env=self.env(), capture_output=True, text=True,
                              check=True).stdout

    def jobs(self) -> list[dict]:
        root = self.spool / "jobs"
        recs = [json.loads((d / "job.json").read_text()) for d in root.iterdir() if (d / "job.json").exists()] if root.is_dir() else []
        return sorted(recs, key=lambda r: r["key"])

    def job(self, key: str) -> dict:
        return json.loads((self.spool / "jobs" / key / "job.json").read_text())

    def events(self, key: str | None = None) -> list[str]:
        path = self.spool / "events.log"
        lines = [line.split(" ", 2)[1:] for line in path.read_text().splitlines()] if path.exists() else []
        return [text for k, text in lines if key is None or k == key]

    def time_limit(self, key: str) -> None:
        """The job's time limit is now its --signal delay away (SLURM sends the warning signal it asked for)."""
        self.command("timelimit", key)

    def shutdown(self) -> None:
        """Cancel every job still pending or running (a test that failed half-way leaves nothing running)."""
        for rec in self.jobs():
            if rec["state"] in ("PENDING", "RUNNING"):
                subprocess.run([sys.executable, str(HERE / "slurm.py"), "scancel", rec["key"]], env=self.env(), check=False,
                               capture_output=True)
        for rec in self.jobs():
            try:
                self.wait(rec["key"], timeout=60)
            except AssertionError:
                pass

    def wait(self, key: str, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                rec = self.job(key)
                if rec["state"] in states:
                    return rec
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"fake SLURM job {key} did not reach {states} in {timeout} s: {self.events(key)}")
