"""The trainer in one process (deepspeed=null): outputs, exact resume after SIGTERM and after a kill during a save, NaN
handling, the exported model, and one-line errors for bad configs."""
import json
import os
import signal

import pytest
import torch

from tests.train_helpers import (PYTHON, data_fixtures, eval_loss_of_export, launch, metrics, overrides, run_in_process,
                                 wait_for_steps)

STEPS = ["trainer.pairs_per_step=8", "trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.lr=3e-3"]



pytestmark = pytest.mark.usefixtures("one_torch_thread")

data, cache = data_fixtures("train_run", 200, 60)


@pytest.fixture(scope="module")
def reference(data, cache, tmp_path_factory):
    """An uninterrupted 8-step run: the per-step losses every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_in_process(data, out, cache, *STEPS, "trainer.max_steps=8", "trainer.save_every=4", "trainer.eval_every=4",
                   "wandb.mode=offline", "wandb.project=worldpm-tests", "wandb.name=reference")
    return out


def test_run_layout_state_and_export(reference, data):
    rows, evals = metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, 9)) and [e["step"] for e in evals] == [4, 8]
    for key in ("loss", "accuracy", "reward_chosen_mean", "reward_chosen_std", "reward_rejected_mean", "reward_rejected_std",
                "margin", "grad_norm", "lr", "tokens_per_s", "padding_fraction", "pairs_seen", "tokens_seen"):
        assert isinstance(rows[-1][key], (int, float)), key
    assert rows[-1]["pairs_seen"] == 64 and rows[0]["padding_fraction"] == 0.0 and rows[0]["tokens_per_s"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"]
    runs = list((reference / "wandb").glob("offline-run-*/run-*.wandb"))  # wandb offline: no network, rank 0 wrote it
    assert len(runs) == 1 and (reference / "wandb_run_id").read_text().strip() in runs[0].name
    ckpts = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000008"]
    state = json.loads((reference / "checkpoints" / "step-00000004" / "state.json").read_text())
    for key in ("step", "pairs_seen", "tokens_seen", "model_name", "n_params", "n_params_non_embedding", "seed", "data_path"):
        assert key in state, key
    assert state["complete"] is True and state["step"] == 4 and state["pairs_seen"] == 32 and state["model_name"] == "tiny"
    assert 0 < state["n_params_non_embedding"] < state["n_params"]
    assert (reference / "checkpoints" / "step-00000004" / "hf" / "config.json").exists()
    final = json.loads((reference / "final" / "state.json").read_text())
    assert final["step"] == 8 and final["pairs_seen"] == 64 and (reference / "final" / "config.json").exists()
    # the export scores the held-out pairs exactly as the live model did at the last evaluation
    loss, acc = eval_loss_of_export(reference / "final", data)
    assert loss == pytest.approx(evals[-1]["eval/loss"], abs=1e-5) and acc == pytest.approx(evals[-1]["eval/accuracy"])
    # the step-4 export is a loadable checkpoint with the same held-out loss as the step-4 evaluation
    assert eval_loss_of_export(reference / "checkpoints" / "step-00000004" / "hf", data)[0] == pytest.approx(evals[0]["eval/loss"], abs=1e-5)


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_is_exact(reference, data, cache, tmp_path):
    out = tmp_path / "run"
    proc = launch([PYTHON, "-m", "worldpm.train", *overrides(data, out, cache, *STEPS, "trainer.max_steps=1000",
                                                                "trainer.save_every=0", "trainer.eval_every=0")])
    wait_for_steps(out, 3, proc)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, log[-3000:]
    assert "preemption signal" in log
    stopped = metrics(out)[0][-1]["step"]
    assert (out / "checkpoints" / f"step-{stopped:08d}" / "state.json").exists()
    run_in_process(data, out, cache, *STEPS, "trainer.max_steps=8", "trainer.save_every=0", "trainer.eval_every=0")
    got, want = metrics(out)[0], metrics(reference)[0]
    assert [r["step"] for r in got] == list(range(1, 9))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-6)


KILL_DURING_SAVE = """
import os, sys
import worldpm.train.checkpointing as c
write = c._write_json
def dying(path, payload):
    if path.name == "state.json" and payload.get("step") == 4:
        os._exit(9)  # killed after the engine state and hf/ export were written, before state.json
    write(path, payload)
c._write_json = dying
from worldpm.cli import main
main(["train"] + sys.argv[1:])
"""


def test_a_kill_during_save_leaves_the_newest_complete_checkpoint_and_resume_is_exact(reference, data, cache, tmp_path):
    out = tmp_path / "run"
    proc = launch([PYTHON, "-c", KILL_DURING_SAVE, *overrides(data, out, cache, *STEPS, "trainer.max_steps=8",
                                                              "trainer.save_every=2", "trainer.eval_every=0")])
    log = proc.communicate(timeout=240)[0]
    assert proc.returncode == 9, log[-3000:]
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [".step-00000004.tmp", "step-00000002"]  # the half-written one never got its final name
    run_in_process(data, out, cache, *STEPS, "trainer.max_steps=8", "trainer.save_every=2", "trainer.eval_every=0")
    from worldpm.train.checkpointing import complete_checkpoints

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-0000000{i}" for i in (2, 4, 6, 8)]
    assert [p.name for p in complete_checkpoints(out)] == ["step-00000004", "step-00000006", "step-00000008"]  # keep_last=3
    assert [r["loss"] for r in metrics(out)[0]] == pytest.approx([r["loss"] for r in metrics(reference)[0]], abs=1e-6)


def _poison(monkeypatch, bad_steps):
    import worldpm.train.recipe as train

    calls = {"n": 0}
    real = train.batch_loss

    def batch_loss(*args, **kw):  # one micro-batch per step here, so call n is step n + 1
        calls["n"] += 1
        loss, counted = real(*args, **kw)
        return (loss * float("nan"), counted * float("nan")) if calls["n"] in bad_steps else (loss, counted)

    monkeypatch.setattr(train, "batch_loss", batch_loss)


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(directory / "hf" / "model.safetensors")


def test_a_non_finite_loss_skips_the_step_and_is_counted(monkeypatch, data, cache, tmp_path):
    _poison(monkeypatch, {3})
    out = tmp_path / "run"
    run_in_process(data, out, cache, *STEPS, "trainer.max_steps=5", "trainer.save_every=1", "trainer.keep_last=10",
                   "trainer.eval_every=0")
    rows = metrics(out)[0]
    assert [r["skipped"] for r in rows] == [False, False, True, False, False]
    assert rows[-1]["skipped_steps"] == 1 and rows[-1]["nonfinite_losses"] == 1
    ck = out / "checkpoints"
    before, after, later = _weights(ck / "step-00000002"), _weights(ck / "step-00000003"), _weights(ck / "step-00000004")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the skipped step changed nothing
    assert not all(torch.equal(after[k], later[k]) for k in after)  # training went on
    assert all(torch.isfinite(v).all() for v in later.values())


def test_non_finite_steps_in_a_row_abort_with_the_last_good_state_saved(monkeypatch, data, cache, tmp_path):
    from worldpm.errors import UserError

    _poison(monkeypatch, {3, 4, 5})
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"3 steps in a row had a non-finite loss.*steps 3-5.*step-00000005"):
        run_in_process(data, out, cache, *STEPS, "trainer.max_steps=10", "trainer.save_every=2", "trainer.keep_last=10",
                       "trainer.max_bad_steps=3", "trainer.eval_every=0")
    good, saved = _weights(out / "checkpoints" / "step-00000002"), _weights(out / "checkpoints" / "step-00000005")
    assert all(torch.equal(good[k], saved[k]) for k in good)
    assert not (out / "final").exists()


@pytest.mark.parametrize("extra,needle", [
    (["data.max_tokens_per_micro_batch=1000"], "data.max_tokens_per_micro_batch=1000 cannot hold one pair"),
    (["data.path=/no/such/dir"], "data.path=/no/such/dir does not exist"),
    (["trainer.precision=fp16"], "trainer.precision='fp16'"),
    (["data.packing=zigzag"], "data.packing='zigzag'"),
    (["trainer.pairs_per_step=0"], "trainer.pairs_per_step=0"),
    (["wandb.mode=sometimes"], "wandb.mode='sometimes'"),
    (["init_from=/no/such/ckpt"], "init_from=/no/such/ckpt"),
    (["loss.margin_column=gap"], "loss.margin_column='gap'"),
])
def test_bad_configs_fail_fast_with_one_line_errors(extra, needle, data, cache, tmp_path):
    from worldpm.errors import UserError

    with pytest.raises(UserError) as err:
        run_in_process(data, tmp_path / "run", cache, "trainer.max_steps=1", *extra)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_deepspeed_null_and_the_slurm_launcher_configs_compose():
    from worldpm.config import compose

    assert compose("train", ["data.path=x", "deepspeed=zero3", "deepspeed=null"]).get("deepspeed") is None
    zero3 = compose("train", ["data.path=x", "deepspeed=zero3_offload"]).deepspeed.zero_optimization
    assert zero3.stage == 3 and zero3.offload_param.device == "cpu" and zero3.offload_optimizer.device == "cpu"
    proc = launch([PYTHON, "-m", "worldpm.train", "hydra/launcher=slurm", "model=qwen2.5-72b", "data.path=x", "--cfg", "all",
                   "--package", "hydra.launcher", "--resolve"])
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "nodes: 8" in out and "tasks_per_node: 8" in out and "signal_delay_s: 900" in out and "SlurmLauncher" in out


@pytest.mark.parametrize("args,stage,source", [
    (["model=qwen2.5-72b"], 3, "deepspeed=zero3 (deepspeed=auto: model.train.deepspeed of qwen2.5-72b)"),
    (["model=qwen2.5-7b"], 2, "deepspeed=zero2 (deepspeed=auto: model.train.deepspeed of qwen2.5-7b)"),
    (["model=qwen2.5-72b", "model.train.deepspeed=zero3_offload"], 3, "deepspeed=zero3_offload (deepspeed=auto:"),
    (["model=qwen2.5-72b", "deepspeed=zero1"], 1, "deepspeed=zero1"),
    (["model=qwen2.5-72b", "deepspeed=null"], None, "deepspeed=null"),
    (["model=tiny"], None, "deepspeed=null (deepspeed=auto: model.train.deepspeed of tiny)"),
])
def test_deepspeed_auto_is_the_models_recommendation_unless_overridden(args, stage, source):
    from worldpm.config import compose
    from worldpm.config.schemas import resolve_deepspeed

    cfg = compose("train", ["data.path=x", *args])
    assert resolve_deepspeed(cfg).startswith(source)
    assert (cfg.deepspeed.zero_optimization.stage if cfg.get("deepspeed") is not None else None) == stage
    if "offload" in source:
        assert cfg.deepspeed.zero_optimization.offload_param.device == "cpu"


def test_deepspeed_auto_errors_name_the_setting(data, monkeypatch, tmp_path):
    from worldpm.config import compose
    from worldpm.errors import UserError
    from worldpm.config.schemas import resolve_deepspeed
    from worldpm.train.prepare import validate

    with pytest.raises(UserError, match=r"^model.train.deepspeed=zero9 is not a config in configs/deepspeed/ \(choose from "):
        resolve_deepspeed(compose("train", ["data.path=x", "model.train.deepspeed=zero9"]))
    monkeypatch.setenv("WORLD_SIZE", "2")  # a 2-rank job whose model recommends one process
    with pytest.raises(UserError, match=r"deepspeed=null \(deepspeed=auto: model.train.deepspeed of tiny\) trains in one process, "
                                        r"but this job has 2 ranks; pass deepspeed=zero1\|zero2\|zero3"):
        validate(compose("train", [f"data.path={data}", f"output_dir={tmp_path}"]))


def test_a_slurm_job_given_other_resources_than_its_config_asks_for_stops(monkeypatch):
    """Hydra's submitit launcher submits a multirun's jobs with the primary config's resources; a job of another model
    (another model.train.nodes) notices before training on the wrong number of GPUs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from worldpm.config import config_dir
    from worldpm.errors import UserError
    from worldpm.config.schemas import check_allocation

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", ["data.path=x", "model=qwen2.5-72b", "hydra/launcher=slurm"], return_hydra_config=True)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    HydraConfig.instance().set_config(cfg)
    try:
        check_allocation(64)  # 8 nodes x 8 tasks, as model.train asks
        with pytest.raises(UserError, match=r"this SLURM job has 8 tasks but its config asks for hydra.launcher.nodes x "
                                            r"tasks_per_node = 8 x 8"):
            check_allocation(8)
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # submitit's local executor: tasks on this machine, not checked
        check_allocation(8)
    finally:
        HydraConfig.instance().cfg = None


def test_preemption_signals_reach_the_handler_that_was_there_before(monkeypatch):
    """submitit installs its requeue handler on SIGUSR2 before the trainer starts: the trainer records the signal (and
    checkpoints), then hands it on; every signal received is handed on, once, in order."""
    from worldpm.train.checkpointing import PreemptionSignals

    seen = []
    before = {s: signal.signal(s, lambda signum, frame: seen.append(signum)) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        signals = PreemptionSignals()
        for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGTERM):
            signal.raise_signal(s)
        assert signals.received == [signal.SIGTERM, signal.SIGUSR2] and seen == []
        signals.forward()
        assert seen == [signal.SIGTERM, signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is not signals._handle  # restored
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("args,needle", [
    (["model=no-such-model", "data.path=x"], "no-such-model"),
    (["output_dir=/tmp/x"], "data.path"),
    (["data.path=/no/such/dir"], "data.path=/no/such/dir does not exist"),
])
def test_cli_errors_are_one_line_with_exit_status_2(args, needle):
    proc = launch([PYTHON, "-m", "worldpm", "train", *args, "wandb.mode=disabled"])
    out = proc.communicate(timeout=120)[0]
    lines = [line for line in out.splitlines() if line.strip() and "Setting accelerator" not in line]
    assert proc.returncode == 2, out
    assert len(lines) == 1 and lines[0].startswith("worldpm train: error:") and needle in lines[0], out


def test_lr_schedule_warmup_then_constant_or_cosine_to_the_floor():
    from worldpm.train.engine import lr_lambda

    cosine = lr_lambda(warmup_steps=4, total_steps=14, schedule="cosine", min_ratio=0.1)
    assert [cosine(n) for n in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert cosine(4) == pytest.approx(1.0) and cosine(9) == pytest.approx(0.55) and cosine(14) == pytest.approx(0.1)
    assert cosine(100) == pytest.approx(0.1)
    constant = lr_lambda(warmup_steps=0, total_steps=10, schedule="constant", min_ratio=0.1)
    assert {constant(n) for n in range(20)} == {1.0}


def test_old_checkpoints_are_pruned_to_their_export_so_the_series_survives(data, cache, tmp_path):
    from worldpm.train.checkpointing import complete_checkpoints

    out = tmp_path / "run"
    run_in_process(data, out, cache, *STEPS, "trainer.max_steps=4", "trainer.save_every=1", "trainer.keep_last=2",
                   "trainer.eval_every=0")
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == [f"step-0000000{i}" for i in (1, 2, 3, 4)]
    assert [p.name for p in complete_checkpoints(out)] == ["step-00000003", "step-00000004"]  # resumable: the last 2
    for old in ("step-00000001", "step-00000002"):
        assert sorted(p.name for p in (ck / old).iterdir()) == ["hf", "state.json"]
        state = json.loads((ck / old / "state.json").read_text())
        assert state["complete"] is True and state["resumable"] is False and state["pairs_seen"] == 8 * int(old[-1])
        eval_loss_of_export(ck / old / "hf", data)  # still a loadable model for the scaling series
    assert len(list((ck / "step-00000004").iterdir())) > 2
    run_in_process(data, tmp_path / "run2", cache, *STEPS, "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_last=1",
                   "trainer.keep_series=false", "trainer.eval_every=0")
    assert sorted(p.name for p in (tmp_path / "run2" / "checkpoints").iterdir()) == ["step-00000002"]


def test_micro_batch_stats_stay_on_the_device_and_match_the_per_pair_values():
    from worldpm.model.bt_loss import bt_loss, bt_losses
    from worldpm.train.metrics import STATS, micro_batch_stats

    torch.manual_seed(0)
    rc, rr = torch.randn(7), torch.randn(7)
    objective = bt_loss(rc, rr, torch.full((7,), 0.3), 0.01) * 7  # summed over the pairs
    got = dict(zip(STATS, micro_batch_stats(rc, rr, objective).tolist()))
    want = {"loss": bt_losses(rc, rr).sum().item(), "objective": objective.item(), "correct": (rc > rr).sum().item(),
            "rc": rc.sum().item(), "rc2": (rc * rc).sum().item(), "rr": rr.sum().item(), "rr2": (rr * rr).sum().item(),
            "margin": (rc - rr).sum().item(), "nonfinite": 0}
    assert got == want  # exactly: float32 sums carried in float64, as the host values were
    assert dict(zip(STATS, micro_batch_stats(rc, rr, objective * float("nan")).tolist()))["nonfinite"] == 1
    rc[2] = float("nan")
    assert dict(zip(STATS, micro_batch_stats(rc, rr, objective).tolist()))["nonfinite"] == 1
