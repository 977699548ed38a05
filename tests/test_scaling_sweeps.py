"""configs/sweep/: the grids expand through Hydra multirun into the right jobs; the SLURM launcher config composes.

The trainer's own config (configs/train.yaml) is not needed here: a stand-in Hydra app with the canonical train keys
(model group, data.path, output_dir, trainer.*) runs the multirun and records each job's resolved config. The same sweep
against the real trainer is in tests/test_scaling_e2e.py.
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

STAND_IN = """\
defaults:
  - model: tiny
  - _self_
data:
  path: ???
output_dir: ???
trainer: {seed: 0, max_steps: 10, pairs_per_step: 8, save_every: 5, lr: 5.0e-6}
deepspeed: null
hydra:
  run: {dir: .}
  output_subdir: null
  job: {chdir: false}
"""

APP = """\
import json, sys
from pathlib import Path
import hydra
from omegaconf import OmegaConf

@hydra.main(config_path=sys.argv.pop(1), config_name="train", version_base="1.3")
def main(cfg):
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(OmegaConf.to_container(cfg, resolve=True)))

main()
"""


def run_stand_in(tmp_path, *overrides):
    (tmp_path / "conf").mkdir(exist_ok=True)
    (tmp_path / "conf" / "train.yaml").write_text(STAND_IN)
    (tmp_path / "app.py").write_text(APP)
    flags = [o for o in overrides if o.startswith("-")]  # hydra's argparse wants its flags before the overrides
    args = [sys.executable, str(tmp_path / "app.py"), str(tmp_path / "conf"), *flags, f"hydra.searchpath=[file://{CONFIGS}]",
            *[o for o in overrides if not o.startswith("-")]]
    return subprocess.run(args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)


def test_ci_grid_expands_to_two_model_sizes_by_two_data_sizes(tmp_path):
    out = run_stand_in(tmp_path, "-m", "+sweep=ci", f"sweep.data_root={tmp_path / 'data'}", f"sweep.root={tmp_path / 'sweep'}")
    assert out.returncode == 0, out.stderr
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").rglob("job.json"))]
    got = sorted((j["model"]["name"], j["data"]["path"], j["trainer"]["max_steps"], j["trainer"]["pairs_per_step"],
                  j["trainer"]["save_every"], j["trainer"]["seed"], j["output_dir"]) for j in jobs)
    want = sorted((model, str(tmp_path / "data" / f"n-{n}"), steps, 16, every, 0, str(tmp_path / "sweep" / model / f"n-{n}" / "seed-0"))
                  for model in ("tiny-small", "tiny-medium") for n, steps, every in ((256, 16, 4), (2048, 128, 32)))
    assert got == want
    assert {j["model"]["arch"]["hidden_size"] for j in jobs} == {32, 128} and all(j["trainer"]["lr"] == 1e-3 for j in jobs)


def test_command_line_narrows_the_grid(tmp_path):
    out = run_stand_in(tmp_path, "-m", "+sweep=ci", f"sweep.data_root={tmp_path / 'data'}", f"sweep.root={tmp_path / 'sweep'}",
                       "model=tiny", "trainer.seed=0,1", "+sweep/data=ci-256")
    assert out.returncode == 0, out.stderr
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").rglob("job.json"))]
    assert sorted((j["model"]["name"], j["trainer"]["seed"], j["data"]["path"]) for j in jobs) == [
        ("tiny", 0, str(tmp_path / "data" / "n-256")), ("tiny", 1, str(tmp_path / "data" / "n-256"))]


def test_paper_grid_is_three_sizes_by_three_data_sizes_by_three_seeds(tmp_path):
    sweep = OmegaConf.load(CONFIGS / "sweep" / "paper.yaml")
    params = sweep.hydra.sweeper.params
    assert params["model"].split(",") == ["qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-72b"]
    assert str(params["trainer.seed"]).split(",") == ["0", "1", "2"]
    sizes = params["+sweep/data"].split(",")
    assert len(sizes) == 3
    # jobs of one model size, one seed: the data sizes resolve to one-epoch runs over nested subsets
    out = run_stand_in(tmp_path, "-m", "+sweep=paper", f"sweep.data_root={tmp_path / 'data'}", f"sweep.root={tmp_path / 'sweep'}",
                       "model=tiny", "trainer.seed=0")
    assert out.returncode == 0, out.stderr
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").rglob("job.json"))]
    pairs = sorted(int(Path(j["data"]["path"]).name.removeprefix("n-")) for j in jobs)
    assert pairs == [1_024_000, 4_096_000, 15_360_000]
    assert all(j["trainer"]["pairs_per_step"] == 10240 for j in jobs)


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


def test_slurm_launcher_composes_with_the_sweep_resources(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    (tmp_path / "train.yaml").write_text(STAND_IN)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("train", [f"hydra.searchpath=[file://{CONFIGS}]", "+sweep=paper", "+sweep/data=paper-15m", "model=tiny",
                                "sweep.data_root=/data/forum-nested", "sweep.slurm.nodes=8", "sweep.slurm.partition=gpu",
                                "hydra/launcher=slurm_sweep"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"], launcher["partition"]) == (8, 8, 8, "gpu")
    assert launcher["name"] == "worldpm-paper" and launcher["max_num_timeout"] == 3
    assert launcher["submitit_folder"].startswith("runs/sweeps/paper/.submitit")
    launcher_obj = instantiate(cfg.hydra.launcher)  # the plugin accepts every field (no submission happens here)
    assert type(launcher_obj).__name__ == "SlurmLauncher"
