"""Shared pieces of the training tests: a learnable fixture dataset, config composition, reading run outputs."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.synthetic_pairs import write_dataset  # noqa: F401 (fixture datasets, pairs and threads)
from worldpm.ports import free_port  # noqa: F401 (the tests' launchers take their port from here)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def make_data(directory: Path, train_pairs=400, test_pairs=100, seed=0, lengths="short", threads=False) -> Path:
    if not (directory / "manifest.json").exists():
        write_dataset(directory, train_pairs, test_pairs, seed=seed, lengths=lengths, threads=threads)
    return directory


def data_fixtures(name: str, train_pairs: int, test_pairs: int):
    """A test module's module-scoped `data` (a fixture dataset under a temp dir called `name`) and `cache` (tokenisation
    cache) fixtures: `data, cache = data_fixtures("train_run", 200, 60)` at module level."""
    import pytest

    @pytest.fixture(scope="module")
    def data(tmp_path_factory):
        return make_data(tmp_path_factory.mktemp(name) / "data", train_pairs, test_pairs)

    @pytest.fixture(scope="module")
    def cache(tmp_path_factory):
        return tmp_path_factory.mktemp("cache")

    return data, cache


def overrides(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    wandb = [] if any(e.startswith("wandb.mode=") for e in extra) else ["wandb.mode=disabled"]
    return [f"data.path={data}", f"output_dir={out}", f"data.cache_dir={cache}", *wandb, "trainer.progress=false",
            "trainer.log_every=1", *extra]


def run_in_process(data, out, cache, *extra):
    from worldpm.config import compose
    from worldpm.train.recipe import run

    return run(compose("train", overrides(data, out, cache, *extra)))


# what an in-process DeepSpeed run leaves in this process's environment: a launched job must find its own
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def env() -> dict:
    inherited = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    return {**inherited, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def launch(cmd: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def torchrun_cmd(nproc: int, port: int, *args: str, nnodes: int = 1, node_rank: int = 0, script: str | None = None) -> list[str]:
    target = [script] if script else ["-m", "worldpm.train"]
    return [TORCHRUN, f"--nproc_per_node={nproc}", f"--nnodes={nnodes}", f"--node_rank={node_rank}", "--master_addr=127.0.0.1",
            f"--master_port={port}", *target, *args]


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it at once (torchrun puts its workers in sessions of their own)."""
    import psutil

    root = psutil.Process(pid)
    procs = root.children(recursive=True) + [root]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def metrics(out: Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval/loss" in r]


def wait_for_steps(out: Path, n: int, proc: subprocess.Popen, timeout: float = 240, poll: float = 0.2) -> None:
    """Wait until a launched run has logged `n` training steps; fail with its output if it exits first or takes too long."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"training exited early ({proc.returncode}):\n{proc.stdout.read()[-4000:]}"
        try:
            if len(metrics(out)[0]) >= n:
                return
        except (FileNotFoundError, ValueError):  # not written yet, or a line being written (JSONDecodeError)
            pass
        time.sleep(poll)
    raise AssertionError(f"training did not reach step {n} in {timeout} s")


def eval_loss_of_export(model_dir: Path, data: Path, eval_pairs: int = 2000) -> tuple[float, float]:
    """Held-out BT loss / accuracy of an exported model, recomputed from the test shards with RewardModel.score
    (padded batches, a different code path from the trainer's packed one), on the same fixed sample the trainer evaluates."""
    import torch

    from data_prep.records import read_pairs
    from worldpm.model.bt_loss import bt_losses
    from worldpm.model.reward_model import RewardModel
    from worldpm.train.prepare import eval_subset

    rows = read_pairs(Path(data) / "test").to_pylist()
    rows = [rows[i] for i in eval_subset(rows, eval_pairs)]
    rm = RewardModel.from_pretrained(model_dir)
    rc = rm.score([r["prompt"] + [{"role": "assistant", "content": r["chosen"]}] for r in rows])
    rr = rm.score([r["prompt"] + [{"role": "assistant", "content": r["rejected"]}] for r in rows])
    rc, rr = torch.tensor(rc), torch.tensor(rr)
    return bt_losses(rc, rr).mean().item(), (rc > rr).float().mean().item()
