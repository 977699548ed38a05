"""The cluster path, run as users run it, with SLURM emulated (tests/fake_slurm: sbatch, srun, sacct, squeue, scontrol,
scancel on this machine; two "nodes" of one CPU rank each, gloo):

- resume on another number of ranks: a 2-rank ZeRO-3 run continued on 1 rank, and a 1-rank one on 2, then on ZeRO-2 and in
  plain PyTorch, each with the per-step losses of the uninterrupted 2-rank run (DeepSpeed's universal checkpoint);
- the sbatch script (docs/train.md) at its time limit: the warning signal reaches the trainer, which checkpoints; the script
  requeues the job; the requeued job finishes the run, with the uninterrupted run's losses;
- Hydra's submitit SLURM launcher (docs/train.md) the same way, through submitit's own checkpoint-and-requeue;
- the paper sweep as docs/eval.md writes it (`worldpm train -m +sweep=paper model=... hydra/launcher=slurm_sweep ...`) on the
  repository's sweep and launcher configs, each job a 2-node SLURM array task with its model's recommended setup.

Every run here is tiny-small for 16 steps of 16 pairs (lr 2e-3, constant); they differ only in how they are launched.
"""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.fake_slurm import FakeSlurm
from tests.train_helpers import (PYTHON, ROOT, data_fixtures, env, free_port, launch, metrics, overrides, torchrun_cmd,
                                 wait_for_steps)

STEPS = 16
COMMON = ["model=tiny-small", "trainer.pairs_per_step=16", "trainer.warmup_steps=0", "trainer.lr_schedule=constant",
          "trainer.lr=2e-3", f"trainer.max_steps={STEPS}", "trainer.eval_every=8", "data.eval_pairs=40", "trainer.save_hf=false"]
# the uninterrupted reference and the runs resumed from it keep every checkpoint resumable (keep_last)
SERIES = [*COMMON, "deepspeed=zero3", "trainer.save_every=2", f"trainer.keep_last={STEPS}"]

data, cache = data_fixtures("train_cluster", 320, 60)


def finish(proc, timeout=420) -> str:
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-6000:]
    return out


def losses(out: Path, first: int = 1) -> list[float]:
    rows = metrics(out)[0]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), [r["step"] for r in rows]
    return [r["loss"] for r in rows if r["step"] >= first]


def final_eval(out: Path) -> dict:
    return {k: v for k, v in metrics(out)[1][-1].items() if k.startswith("eval/")}


def state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


def resumable_copy(run: Path, step: int, dest: Path) -> Path:
    """`run` as a job killed right after checkpoint `step`: later checkpoints and the final model gone."""
    shutil.copytree(run, dest)
    shutil.rmtree(dest / "final")
    for ckpt in (dest / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    return dest


@pytest.fixture(scope="module")
def reference(data, cache, tmp_path_factory):
    """The uninterrupted run: ZeRO-3 on 2 ranks (torchrun), a checkpoint every 2 steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    finish(launch(torchrun_cmd(2, free_port(), *overrides(data, out, cache, *SERIES))))
    assert state(out / "final")["world_size"] == 2 and state(out / "final")["zero_stage"] == 3
    return out


# ---------------------------------------------------------------------------------------------------------------- rank counts
@pytest.fixture(scope="module")
def on_one_rank(reference, data, cache, tmp_path_factory):
    """The reference's checkpoint of step 2 (2 ranks) resumed by one process, ZeRO-3."""
    out = resumable_copy(reference, 2, tmp_path_factory.mktemp("two_to_one") / "run")
    log = finish(launch([PYTHON, "-m", "worldpm.train", *overrides(data, out, cache, *SERIES)]))
    return out, log


def test_two_rank_zero3_run_continues_on_one_rank(reference, on_one_rank):
    out, log = on_one_rank
    assert "universal checkpoint" in log
    assert (out / "checkpoints" / "step-00000002" / "deepspeed_universal").is_dir()
    assert state(out / "checkpoints" / "step-00000004")["world_size"] == 1
    assert losses(out, 3) == pytest.approx(losses(reference, 3), abs=1e-5)
    assert final_eval(out) == pytest.approx(final_eval(reference), abs=1e-5)


@pytest.fixture(scope="module")
def on_two_ranks(on_one_rank, data, cache, tmp_path_factory):
    """The 1-rank continuation's checkpoint of step 4 resumed by 2 ranks, ZeRO-3."""
    out = resumable_copy(on_one_rank[0], 4, tmp_path_factory.mktemp("one_to_two") / "run")
    finish(launch(torchrun_cmd(2, free_port(), *overrides(data, out, cache, *SERIES))))
    return out


def test_one_rank_zero3_checkpoint_continues_on_two_ranks(reference, on_two_ranks):
    assert state(on_two_ranks / "checkpoints" / "step-00000006")["world_size"] == 2
    assert losses(on_two_ranks, 5) == pytest.approx(losses(reference, 5), abs=1e-5)
    assert final_eval(on_two_ranks) == pytest.approx(final_eval(reference), abs=1e-5)


def test_zero3_checkpoint_continues_in_plain_pytorch_and_not_under_another_stage(reference, on_two_ranks, data, cache,
                                                                                 tmp_path):
    from tests.train_helpers import run_in_process
    from worldpm.errors import UserError

    out = resumable_copy(on_two_ranks, 6, tmp_path / "run")
    run_in_process(data, out, cache, *SERIES, "deepspeed=null")
    assert state(out / "checkpoints" / "step-00000008")["zero_stage"] is None
    assert losses(out, 7) == pytest.approx(losses(reference, 7), abs=1e-5)
    # DeepSpeed's universal layouts of ZeRO-3 and ZeRO-1/2 differ, and the torch engine's state is not DeepSpeed's: refused
    with pytest.raises(UserError, match="holds ZeRO-3 state"):
        run_in_process(data, resumable_copy(on_two_ranks, 6, tmp_path / "other"), cache, *SERIES, "deepspeed=zero2")
    with pytest.raises(UserError, match="PyTorch engine"):
        run_in_process(data, resumable_copy(out, 8, tmp_path / "back"), cache, *SERIES, "deepspeed=zero3")


def test_zero1_checkpoint_of_one_rank_continues_on_two_ranks_under_zero2(data, cache, tmp_path):
    # the uninterrupted run: ZeRO-1 in one process (ZeRO-3 builds the model partitioned: another initialisation)
    first = tmp_path / "zero1"
    finish(launch([PYTHON, "-m", "worldpm.train", *overrides(data, first, cache, *SERIES, "deepspeed=zero1")]))
    out = resumable_copy(first, 4, tmp_path / "run")
    log = finish(launch(torchrun_cmd(2, free_port(), *overrides(data, out, cache, *SERIES, "deepspeed=zero2"))))
    assert "universal checkpoint" in log and state(out / "final")["zero_stage"] == 2
    assert losses(out, 5) == pytest.approx(losses(first, 5), abs=1e-5)
    assert final_eval(out) == pytest.approx(final_eval(first), abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------- SLURM
@pytest.fixture
def fake(tmp_path):
    cluster = FakeSlurm(tmp_path / "spool")
    yield cluster
    cluster.shutdown()


def slurm_env(fake: FakeSlurm) -> dict:
    """The fake SLURM's commands first on PATH, then this venv's (the batch script runs `python`, as in an activated venv)."""
    base = env()
    return fake.env({**base, "PATH": f"{Path(PYTHON).parent}{os.pathsep}{base['PATH']}"})


def wait_for_job_steps(fake: FakeSlurm, job: str, out: Path, n: int, timeout: float = 240) -> None:
    """Wait until the fake SLURM job `job` has logged `n` training steps in `out`; fail if it ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert fake.job(job)["state"] in ("PENDING", "RUNNING"), fake.events(job)
        try:
            if len(metrics(out)[0]) >= n:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not reach step {n} in {timeout} s")


def wait_for_job(fake: FakeSlurm, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        running = [j["key"] for j in fake.jobs() if j["state"] == "RUNNING"]
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"no fake SLURM job started: {fake.events()}")


def test_sbatch_script_checkpoints_at_its_time_limit_and_requeues_itself(reference, data, cache, tmp_path, fake):
    """docs/train.md: `sbatch scripts/slurm_train.sbatch DATA OUT [overrides]`, on 2 nodes instead of 8."""
    out = tmp_path / "run"
    extra = [f"data.cache_dir={cache}", "wandb.mode=disabled", "trainer.progress=false", "trainer.log_every=1",
             *COMMON, "deepspeed=zero3", "trainer.save_every=100"]
    submit = subprocess.run(["sbatch", "--nodes=2", "--ntasks-per-node=1", "--job-name=wpm", str(ROOT / "scripts" / "slurm_train.sbatch"),
                             str(data), str(out), *extra], cwd=tmp_path, env=slurm_env(fake), capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0 and submit.stdout.startswith("Submitted batch job "), submit.stderr
    job = submit.stdout.split()[-1]
    wait_for_job_steps(fake, job, out, 3)
    fake.time_limit(job)  # SLURM's --signal=B:USR1@900: the batch shell gets USR1
    rec = fake.wait(job, timeout=400)
    log = (tmp_path / f"wpm-{job}.out").read_text()
    assert rec["state"] == "COMPLETED" and rec["restarts"] == 1, (fake.events(job), log[-4000:])
    events = fake.events(job)
    assert any(e.startswith("signal SIGUSR1 to batch") for e in events) and "requeue requested" in events, events
    stopped = int(log.split("stopped by a preemption signal at step ")[1].split(";")[0])
    assert 3 <= stopped < STEPS and (out / "checkpoints" / f"step-{stopped:08d}").is_dir()
    assert "requeueing job" in log and "start 1" in log
    assert losses(out) == pytest.approx(losses(reference), abs=1e-6)
    assert final_eval(out) == pytest.approx(final_eval(reference), abs=1e-6)


def test_submitit_launcher_checkpoints_at_the_time_limit_and_requeues(reference, data, cache, tmp_path, fake):
    """docs/train.md: `worldpm train -m hydra/launcher=slurm model=... data.path=... output_dir=...`: 2 nodes x 1 task and
    ZeRO-3 come from the model's recommendation (model.train)."""
    out = tmp_path / "run"
    cmd = [PYTHON, "-m", "worldpm", "train", "-m", "hydra/launcher=slurm", *overrides(data, out, cache, *COMMON),
           "model.train.nodes=2", "model.train.gpus_per_node=1", "model.train.deepspeed=zero3", "trainer.save_every=100",
           "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    main = subprocess.Popen(cmd, cwd=tmp_path, env=slurm_env(fake), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        job = wait_for_job(fake)
        wait_for_steps(out, 3, main, timeout=240, poll=0.1)
        fake.time_limit(job)  # submitit's --signal=USR2@900: every task gets USR2
        main_out = main.communicate(timeout=400)[0]
    finally:
        if main.poll() is None:
            main.kill()
    rec = fake.wait(job, timeout=60)  # the results are read as soon as they are written, before the job has ended
    assert main.returncode == 0 and rec["state"] == "COMPLETED" and rec["restarts"] == 1, (main_out[-4000:], fake.events(job))
    assert (rec["nodes"], rec["ntasks"]) == (2, 2) and rec["options"]["signal"] == "USR2@900"
    assert "requeue requested" in fake.events(job)
    task0 = (out / "submitit" / job / f"{job}_0_log.err").read_text()  # our checkpoint first, then submitit's requeue
    stopped = int(task0.split("stopped by a preemption signal at step ")[1].split(";")[0])
    assert 3 <= stopped < STEPS and task0.index("preemption signal at step") < task0.index(f"Requeued job {job}"), task0[-3000:]
    assert losses(out) == pytest.approx(losses(reference), abs=1e-6)
    assert final_eval(out) == pytest.approx(final_eval(reference), abs=1e-6)
    assert state(out / "final")["world_size"] == 2 and state(out / "final")["zero_stage"] == 3


def test_paper_sweep_on_slurm_runs_as_the_docs_write_it(data, cache, tmp_path, fake):
    """docs/eval.md "Sweeps": `worldpm train -m +sweep=paper model=<size> hydra/launcher=slurm_sweep sweep.data_root=...
    sweep.slurm.partition=... sweep.slurm.account=...` with the model overridden to a tiny one whose recommended setup
    (model.train) is 2 nodes x 1 GPU under ZeRO-3, one data size and two seeds: a SLURM array of two 2-node jobs."""
    nested = tmp_path / "forum-nested"
    nested.mkdir()
    (nested / "n-1024000").symlink_to(data)  # the data-size point the sweep reads (a stand-in dataset)
    sweep_root = tmp_path / "sweeps" / "paper"
    cmd = [PYTHON, "-m", "worldpm", "train", "-m", "+sweep=paper", "model=tiny-small", "hydra/launcher=slurm_sweep",
           f"sweep.data_root={nested}", "sweep.slurm.partition=cpu", "sweep.slurm.account=test",
           "+sweep/data=paper-1m", "trainer.seed=0,1", f"sweep.root={sweep_root}",
           "model.train.nodes=2", "model.train.gpus_per_node=1", "model.train.deepspeed=zero3", "sweep.slurm.cpus_per_task=1",
           "trainer.pairs_per_step=16", "trainer.max_steps=3", "trainer.save_every=2", "data.eval_pairs=20",
           f"data.cache_dir={cache}", "wandb.mode=disabled", "trainer.progress=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=slurm_env(fake), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    jobs = [fake.wait(j["key"], timeout=60) for j in fake.jobs()]
    assert [(j["array_task_id"], j["nodes"], j["ntasks"], j["state"]) for j in jobs] == [(0, 2, 2, "COMPLETED"), (1, 2, 2, "COMPLETED")]
    assert len({j["array_job_id"] for j in jobs}) == 1 and jobs[0]["options"]["partition"] == "cpu"
    assert jobs[0]["options"]["account"] == "test" and jobs[0]["options"]["job-name"] == "worldpm-paper"
    runs = [sweep_root / "tiny-small" / "n-1024000" / f"seed-{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        final = state(run / "final")
        assert (final["world_size"], final["zero_stage"], final["seed"], final["step"]) == (2, 3, seed, 3)
        assert [p.name for p in sorted((run / "checkpoints").glob("step-*"))] == ["step-00000002", "step-00000003"]
        assert "deepspeed=zero3 (deepspeed=auto: model.train.deepspeed of tiny-small) on 2 ranks" in (run / "train.log").read_text()
    assert losses_of(runs[0]) != losses_of(runs[1])  # the seeds differ


def losses_of(run: Path) -> list[float]:
    return [r["loss"] for r in metrics(run)[0]]
