"""configs/sweep/: the grids expand through Hydra multirun into the right jobs, each with its model's recommended setup; the
SLURM launcher config composes with the sweep's resources.

The multiruns here run the real `train` config (configs/train.yaml, the sweep and model configs) through Hydra's basic
launcher with a task that records each job's resolved config and the ZeRO config `worldpm train` would use
(worldpm.config.schemas.resolve_deepspeed) instead of training. The same sweeps training for real, on an emulated SLURM, are
in tests/test_train_cluster.py (and the CI grid end to end in tests/test_scaling_e2e.py).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from worldpm.config import config_dir

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = config_dir()

RECORDER = """\
import json
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from worldpm.config import config_dir, group_overrides
from worldpm.config.schemas import resolve_deepspeed


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def main(cfg):
    chosen = resolve_deepspeed(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps({**OmegaConf.to_container(cfg, resolve=True), "chosen": chosen}))


sys.argv[1:] = group_overrides(sys.argv[1:])  # deepspeed=null, as the worldpm entry point reads it
main()
"""


def record_sweep(tmp_path, *overrides):
    """Run `worldpm train -m <overrides>`'s multirun with the recording task; every job's recorded config."""
    (tmp_path / "record.py").write_text(RECORDER)
    flags = [o for o in overrides if o.startswith("-")]  # hydra's argparse wants its flags before the overrides
    args = [sys.executable, str(tmp_path / "record.py"), *flags, *[o for o in overrides if not o.startswith("-")],
            f"sweep.root={tmp_path / 'sweep'}", f"sweep.data_root={tmp_path / 'data'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu"}
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").rglob("job.json"))]


def test_ci_grid_expands_to_two_model_sizes_by_two_data_sizes(tmp_path):
    jobs = record_sweep(tmp_path, "-m", "+sweep=ci", "deepspeed=null")
    got = sorted((j["model"]["name"], j["data"]["path"], j["trainer"]["max_steps"], j["trainer"]["pairs_per_step"],
                  j["trainer"]["save_every"], j["trainer"]["seed"], j["output_dir"]) for j in jobs)
    want = sorted((model, str(tmp_path / "data" / f"n-{n}"), steps, 16, every, 0, str(tmp_path / "sweep" / model / f"n-{n}" / "seed-0"))
                  for model in ("tiny-small", "tiny-medium") for n, steps, every in ((256, 16, 4), (2048, 128, 32)))
    assert got == want
    assert {j["model"]["arch"]["hidden_size"] for j in jobs} == {32, 128} and all(j["trainer"]["lr"] == 1e-3 for j in jobs)
    assert {j["chosen"] for j in jobs} == {"deepspeed=null"} and all(j.get("deepspeed") is None for j in jobs)


def test_command_line_narrows_the_grid(tmp_path):
    jobs = record_sweep(tmp_path, "-m", "+sweep=ci", "model=tiny", "trainer.seed=0,1", "+sweep/data=ci-256")
    assert sorted((j["model"]["name"], j["trainer"]["seed"], j["data"]["path"]) for j in jobs) == [
        ("tiny", 0, str(tmp_path / "data" / "n-256")), ("tiny", 1, str(tmp_path / "data" / "n-256"))]


def test_paper_grid_jobs_get_their_models_recommended_setup(tmp_path):
    """3 model sizes x 3 data sizes x 3 seeds; each job with its own model's ZeRO config, precision, lr, tokens per
    micro-batch and SLURM resources (model.train), as `worldpm train` would run it (deepspeed=auto)."""
    jobs = record_sweep(tmp_path, "-m", "+sweep=paper")
    assert len(jobs) == 27
    assert sorted({(j["model"]["name"], int(Path(j["data"]["path"]).name.removeprefix("n-")), j["trainer"]["seed"]) for j in jobs}) \
        == sorted((m, n, seed) for m in ("qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-72b")
                  for n in (1_024_000, 4_096_000, 15_360_000) for seed in (0, 1, 2))
    assert all(j["trainer"]["pairs_per_step"] == 10240 for j in jobs)
    setup = {j["model"]["name"]: (j["deepspeed"]["zero_optimization"]["stage"], j["trainer"]["precision"], j["trainer"]["lr"],
                                  j["data"]["max_tokens_per_micro_batch"], j["trainer"]["activation_checkpointing"],
                                  j["sweep"]["slurm"]["nodes"], j["sweep"]["slurm"]["tasks_per_node"]) for j in jobs}
    for name, got in setup.items():
        train = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml").train
        stage = OmegaConf.load(CONFIGS / "deepspeed" / f"{train.deepspeed}.yaml").zero_optimization.stage
        assert got == (stage, train.precision, train.lr, train.max_tokens_per_micro_batch, train.activation_checkpointing,
                       train.nodes, train.gpus_per_node), name
    assert {name: got[0] for name, got in setup.items()} == {"qwen2.5-1.5b": 2, "qwen2.5-7b": 2, "qwen2.5-72b": 3}
    assert {name: got[5] for name, got in setup.items()} == {"qwen2.5-1.5b": 1, "qwen2.5-7b": 2, "qwen2.5-72b": 8}


@pytest.mark.parametrize("sweep_name", ["ci", "paper"])
def test_data_options_are_one_epoch_of_their_sweep(sweep_name):
    sweep = OmegaConf.load(CONFIGS / "sweep" / f"{sweep_name}.yaml")
    pps = sweep.trainer.pairs_per_step
    names = sweep.hydra.sweeper.params["+sweep/data"].split(",")
    for name in names:
        d = OmegaConf.load(CONFIGS / "sweep" / "data" / f"{name}.yaml").sweep_data
        assert d.steps * pps == d.pairs, name  # every pair seen exactly once
        assert d.steps % d.save_every == 0 and d.steps // d.save_every >= 4, name  # >= 4 checkpoints: a curve per run
    for model in sweep.hydra.sweeper.params["model"].split(","):
        assert (CONFIGS / "model" / f"{model}.yaml").is_file(), model


def test_tiny_model_sizes_differ_and_are_tiny():
    from worldpm.config import compose
    from worldpm.model.reward_model import RewardModel
    from worldpm.model.tokenizer import load_tokenizer

    counts = {}
    for name in ("tiny-small", "tiny-medium"):
        cfg = OmegaConf.to_container(compose("score", [f"model={name}", "input=x"]).model, resolve=True)
        rm = RewardModel.from_config(cfg["arch"], load_tokenizer(cfg["tokenizer"]), device="meta")
        total = sum(p.numel() for p in rm.parameters())
        counts[name] = total - rm.model.get_input_embeddings().weight.numel()
        assert total < 1e6 and cfg["name"] == name and cfg["tokenizer"] == "tiny"
    assert counts["tiny-medium"] > 10 * counts["tiny-small"]


@pytest.mark.parametrize("extra,nodes", [([], 8), (["sweep.slurm.nodes=4"], 4)])
def test_slurm_launcher_takes_the_models_nodes_unless_overridden(extra, nodes):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", ["+sweep=paper", "+sweep/data=paper-15m", "model=qwen2.5-72b", "sweep.data_root=/data/forum-nested",
                                "sweep.slurm.partition=gpu", "hydra/launcher=slurm_sweep", *extra], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"], launcher["partition"]) == (nodes, 8, 8, "gpu")
    assert launcher["name"] == "worldpm-paper" and launcher["max_num_timeout"] == 20 and launcher["signal_delay_s"] == 900
    assert launcher["submitit_folder"].startswith("runs/sweeps/paper/.submitit")
    launcher_obj = instantiate(cfg.hydra.launcher)  # the plugin accepts every field (no submission happens here)
    assert type(launcher_obj).__name__ == "SlurmLauncher"
