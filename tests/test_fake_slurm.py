"""The fake SLURM (tests/fake_slurm) is faithful where the cluster tests rely on it: submitit, unmodified, submits to it,
polls it and reads its jobs' results (multi-node tasks, job arrays); submitit's own checkpoint-and-requeue works on it; and
signals reach the batch shell or the steps' tasks as `--signal` / `scancel` direct. No training here: plain functions."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.fake_slurm import FakeSlurm

submitit = pytest.importorskip("submitit")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake cluster on this process's PATH (submitit calls sbatch, sacct and scontrol from here)."""
    cluster = FakeSlurm(tmp_path / "spool", kill_wait_s=5)
    for key, value in cluster.env().items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    yield cluster
    cluster.shutdown()


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def where_am_i(tag: str) -> dict:
    """Run in every task: what SLURM and submitit tell it."""
    env = submitit.JobEnvironment()
    dist = submitit.helpers.TorchDistributedEnvironment()
    return {"tag": tag, "job_id": env.job_id, "rank": env.global_rank, "local_rank": env.local_rank, "node": env.node,
            "num_tasks": env.num_tasks, "num_nodes": env.num_nodes, "hostnames": list(env.hostnames),
            "master": dist.master_addr, "restart": os.environ.get("SLURM_RESTART_COUNT")}


def test_submitit_runs_a_two_node_job_and_an_array_on_it(fake, tmp_path):
    executor = submitit.SlurmExecutor(folder=tmp_path / "logs" / "%j")
    executor.update_parameters(nodes=2, ntasks_per_node=1, time=5, signal_delay_s=60, partition="cpu")
    job = executor.submit(where_am_i, "one")
    results = job.results()
    assert [(r["rank"], r["local_rank"], r["node"], r["num_tasks"], r["num_nodes"]) for r in results] == [
        (0, 0, 0, 2, 2), (1, 0, 1, 2, 2)]
    assert results[0]["hostnames"] == ["127.0.0.1", "127.0.0.2"] and results[0]["master"] == "127.0.0.1"
    assert job.state == "COMPLETED" or fake.wait(job.job_id, timeout=30)["state"] == "COMPLETED"
    rec = fake.job(job.job_id)
    assert rec["options"]["signal"] == "USR2@60" and rec["options"]["partition"] == "cpu"

    jobs = executor.map_array(where_am_i, ["a", "b"])  # one sbatch --array=0-1
    assert [j.job_id.split("_")[1] for j in jobs] == ["0", "1"] and len({j.job_id.split("_")[0] for j in jobs}) == 1
    assert [[r["tag"] for r in j.results()] for j in jobs] == [["a", "a"], ["b", "b"]]
    assert [j.results()[1]["job_id"] for j in jobs] == [j.job_id for j in jobs]


class WaitsForTheTimeLimit(submitit.helpers.Checkpointable):
    """Waits on its first run (for the time-limit signal); submitit's checkpoint() resubmits it, and the rerun returns."""

    def __call__(self, marker: str) -> str:
        if os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
            Path(marker).write_text("waiting")
            time.sleep(120)
            return "not requeued"
        return f"finished after {os.environ['SLURM_RESTART_COUNT']} requeue"


def test_submitits_own_checkpoint_and_requeue_work_on_it(fake, tmp_path):
    executor = submitit.SlurmExecutor(folder=tmp_path / "logs" / "%j", max_num_timeout=2)
    executor.update_parameters(nodes=1, ntasks_per_node=1, time=60, signal_delay_s=60)
    marker = tmp_path / "marker"
    job = executor.submit(WaitsForTheTimeLimit(), str(marker))
    wait_until(marker.exists, "the job to start")
    fake.time_limit(job.job_id)  # SIGUSR2 to the task: submitit checkpoints, calls `scontrol requeue`, exits
    assert job.result() == "finished after 1 requeue"
    rec = fake.wait(job.job_id, timeout=30)
    assert rec["state"] == "COMPLETED" and rec["restarts"] == 1
    assert "requeue requested" in fake.events(job.job_id)


BATCH = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --signal=B:USR1@60
#SBATCH --output=out-%j.txt
trap 'echo "batch got USR1"' USR1
srun bash -c 'trap "echo task $SLURM_PROCID got USR1; exit 0" USR1; echo "task $SLURM_PROCID on $SLURMD_NODENAME"; \
              while true; do sleep 0.1; done' &
step=$!
while kill -0 "$step" 2>/dev/null; do wait "$step"; done
echo "hosts $(scontrol show hostnames | tr '\\n' ' ')"
"""


def test_signals_reach_the_batch_shell_or_the_steps_as_asked(fake, tmp_path):
    (tmp_path / "job.sh").write_text(BATCH)
    out = subprocess.run(["sbatch", "job.sh"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    job = out.split()[-1]
    log = tmp_path / f"out-{job}.txt"
    wait_until(lambda: log.exists() and log.read_text().count(" on 127.0.0.") == 2, "both tasks to start")
    fake.time_limit(job)  # --signal=B:USR1: the batch shell only
    wait_until(lambda: "batch got USR1" in log.read_text(), "the batch shell's trap")
    time.sleep(1)
    assert "got USR1" not in log.read_text().replace("batch got USR1", "")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # scancel's default: the steps' tasks
    rec = fake.wait(job, timeout=60)
    text = log.read_text()
    assert rec["state"] == "COMPLETED", text
    assert "task 0 got USR1" in text and "task 1 got USR1" in text and text.count("batch got USR1") == 1
    assert "hosts 127.0.0.1 127.0.0.2" in text
    sacct = subprocess.run(["sacct", "-j", job, "-o", "JobID,State,NodeList", "--parsable2"], capture_output=True, text=True,
                           check=True).stdout
    assert sacct.splitlines() == ["JobID|State|NodeList", f"{job}|COMPLETED|127.0.0.[1-2]"]


def test_scancel_ends_a_running_job_and_a_pending_one_never_starts(fake, tmp_path):
    (tmp_path / "job.sh").write_text("#!/bin/bash\n#SBATCH --ntasks=2\nsrun sleep 300\n")
    first, second = (subprocess.run(["sbatch", "--parsable", "job.sh"], cwd=tmp_path, capture_output=True, text=True,
                                    check=True).stdout.strip() for _ in range(2))
    wait_until(lambda: fake.job(first)["state"] == "RUNNING", "the first job to start")
    assert fake.job(second)["state"] == "PENDING"  # one job at a time on this cluster
    subprocess.run(["scancel", second, first], check=True)
    assert fake.wait(first, timeout=30)["state"] == "CANCELLED" and fake.wait(second, timeout=30)["state"] == "CANCELLED"
    assert not any(e.startswith("start") for e in fake.events(second))
