"""The setups the model configs recommend and the data options, each run for real on CPU: bf16 + activation checkpointing +
ZeRO-2 and ZeRO-3 with the optimizer (and ZeRO-3's parameters) offloaded to CPU memory on 2 torchrun ranks; several datasets
mixed by weight (`data.mix`); a margin column in the loss (`loss.margin_column`). Each run learns (held-out loss falls well
below chance, ln 2 = 0.693), and a run resumed from its mid-way checkpoint continues with exactly the per-step losses of the
run that was not interrupted."""
import json
import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.train_helpers import (ROOT, data_fixtures, eval_loss_of_export, free_port, launch, make_data, metrics, overrides,
                                 run_in_process, torchrun_cmd)

COMMON = ["trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.eval_every=8", "trainer.save_every=8",
          "trainer.keep_last=5"]
MID, END = 8, 16

data, cache = data_fixtures("train_recipes", 480, 100)


def finish(proc, timeout=600):
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-4000:]
    return out


def copy_checkpoint(run: Path, step: int, to: Path) -> Path:
    """A run's checkpoint copied into a fresh output dir: resuming there continues the run from `step` (trainer.resume=auto)."""
    name = f"step-{step:08d}"
    shutil.copytree(run / "checkpoints" / name, to / "checkpoints" / name)
    return to


def assert_learns_and_resumes_exactly(reference: Path, resumed: Path) -> None:
    rows, evals = metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, END + 1)) and [e["step"] for e in evals] == [MID, END]
    assert evals[-1]["eval/loss"] < 0.6 and evals[-1]["eval/accuracy"] >= 0.75, evals  # chance: 0.693 and 0.5
    got, got_evals = metrics(resumed)
    assert [r["step"] for r in got] == list(range(MID + 1, END + 1))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in rows[MID:]], abs=1e-6)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in rows[MID:]], rel=1e-5)
    assert got[-1]["tokens_seen"] == rows[-1]["tokens_seen"] and got[-1]["pairs_seen"] == rows[-1]["pairs_seen"]
    assert got_evals[-1]["eval/loss"] == pytest.approx(evals[-1]["eval/loss"], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------- the GPU recipe
OFFLOAD = ["zero2_offload", "zero3_offload"]
RECIPE = [*COMMON, "trainer.pairs_per_step=16", "trainer.lr=2e-3", f"trainer.max_steps={END}", "trainer.precision=bf16",
          "trainer.activation_checkpointing=true",
          "trainer.optimizer=adamw_torch",  # torch AdamW on the offloaded states: DeepSpeedCPUAdam would JIT-compile for ~1 min
          "++deepspeed.zero_optimization.stage3_param_persistence_threshold=0"]  # ZeRO-3: partition (and offload) every weight


def sequential_launch(root: Path, data: Path, cache: Path, *extra: str):
    """Both offload setups, one after the other in the same 2 torchrun ranks (as a sequential Hydra sweep runs them), the run
    of each in root/<setup>."""
    args = overrides(data, root / "unused", cache, *RECIPE, *extra)
    return launch(torchrun_cmd(2, free_port(), str(root), ",".join(OFFLOAD), *args,
                               script=str(ROOT / "tests" / "train_sequential.py")))


@pytest.fixture(scope="module")
def offload_runs(data, cache, tmp_path_factory):
    """Each offload setup run uninterrupted, then resumed from its step-8 checkpoint in a fresh output dir."""
    root = tmp_path_factory.mktemp("offload")
    log = finish(sequential_launch(root / "reference", data, cache))
    for setup in OFFLOAD:
        copy_checkpoint(root / "reference" / setup, MID, root / "resumed" / setup)
    finish(sequential_launch(root / "resumed", data, cache))
    return root, log


@pytest.mark.parametrize("setup", OFFLOAD)
def test_bf16_activation_checkpointing_and_offload_learn_and_resume_exactly_on_two_ranks(offload_runs, data, setup):
    root, _ = offload_runs
    reference, resumed = root / "reference" / setup, root / "resumed" / setup
    assert_learns_and_resumes_exactly(reference, resumed)
    log = (reference / "train.log").read_text()
    stage = setup[len("zero"):].split("_")[0]
    offloaded = "optimizer offloaded to cpu" + (", param offloaded to cpu" if stage == "3" else "")
    assert f"engine: DeepSpeed ZeRO-{stage}, {offloaded}, optimizer adamw_torch, bf16 weights with fp32 masters" in log, log
    assert "bf16, activation checkpointing" in log
    ranks = sorted(p.name for p in (reference / "checkpoints" / f"step-{END:08d}" / "deepspeed").glob("bf16_zero_pp_rank_*"))
    assert ranks == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]  # fp32 masters, one part per rank
    final = json.loads((reference / "final" / "config.json").read_text())
    assert final["dtype"] == "bfloat16" and json.loads((reference / "final" / "state.json").read_text())["world_size"] == 2
    # the export (bf16 weights gathered from the ranks) scores the held-out pairs as the live model did, within bf16 rounding
    _, evals = metrics(reference)
    loss, acc = eval_loss_of_export(reference / "final", data)
    assert loss == pytest.approx(evals[-1]["eval/loss"], abs=2e-3) and acc == pytest.approx(evals[-1]["eval/accuracy"], abs=0.02)


# ---------------------------------------------------------------------------------------------------------- data.mix
def pair_tokens(directory: Path) -> int:
    """Tokens of every train pair of a dataset (chosen + rejected sequence), counted with the model's own encoder."""
    from data_prep.records import read_pairs
    from tests.conftest import tiny_arch
    from worldpm.model.reward_model import RewardModel
    from worldpm.model.tokenizer import load_tokenizer

    rm = RewardModel.from_config(tiny_arch(), load_tokenizer("tiny"))
    rows = read_pairs(directory / "train").to_pylist()
    convs = [r["prompt"] + [{"role": "assistant", "content": r[side]}] for r in rows for side in ("chosen", "rejected")]
    return sum(len(ids) for ids in rm.encode(convs))


@pytest.mark.usefixtures("one_torch_thread")
def test_data_mix_draws_each_dataset_by_weight_learns_and_resumes_exactly(tmp_path):
    """Two datasets, weights 3:1, 192 and 64 train pairs: 16 steps of 16 pairs walk each exactly once (smooth weighted
    round-robin keeps the proportions exact), so the tokens trained on are all of both datasets' tokens, whatever the order;
    with the mix ignored they would be 256 pairs of the first."""
    main = make_data(tmp_path / "main", 192, 100, seed=0)
    extra = make_data(tmp_path / "extra", 64, 10, seed=1)
    mix = [*COMMON, "trainer.pairs_per_step=16", "trainer.lr=3e-3", f"trainer.max_steps={END}", "data.weight=3",
           f"data.mix=[{{path: {extra}, weight: 1}}]"]
    cache = tmp_path / "cache"
    run_in_process(main, tmp_path / "reference", cache, *mix)
    run_in_process(main, copy_checkpoint(tmp_path / "reference", MID, tmp_path / "resumed"), cache, *mix)
    assert_learns_and_resumes_exactly(tmp_path / "reference", tmp_path / "resumed")
    rows, _ = metrics(tmp_path / "reference")
    assert rows[-1]["pairs_seen"] == 256 and rows[-1]["tokens_seen"] == pair_tokens(main) + pair_tokens(extra)
    assert "main=192 (weight 3), extra=64 (weight 1)" in (tmp_path / "reference" / "train.log").read_text()


# ---------------------------------------------------------------------------------------------------------- loss.margin_column
def with_margin(directory: Path) -> Path:
    """Give every shard a `vote_margin` column: the chosen answer's vote lead, scaled to 0.1-2 (Llama-2's margins are small)."""
    for shard in directory.glob("*/*.parquet"):
        table = pq.read_table(shard)
        lead = [min(c - r, 20.0) / 10 for c, r in zip(table["chosen_score"].to_pylist(), table["rejected_score"].to_pylist())]
        pq.write_table(table.append_column("vote_margin", [lead]), shard)
    return directory


@pytest.mark.usefixtures("one_torch_thread")
def test_margin_column_is_subtracted_inside_the_sigmoid(tmp_path):
    """One step over all 48 train pairs with a learning rate of 1e-12 (so the exported model is the one that step scored):
    its objective is mean(-log sigmoid(r_c - r_r - margin)) recomputed from the export, and its loss the plain BT loss."""
    from data_prep.records import read_pairs
    from worldpm.model.bt_loss import bt_losses
    from worldpm.model.reward_model import RewardModel

    pairs = with_margin(make_data(tmp_path / "data", 48, 10))
    run_in_process(pairs, tmp_path / "run", tmp_path / "cache", "loss.margin_column=vote_margin", "trainer.pairs_per_step=48",
                   "trainer.max_steps=1", "trainer.lr=1e-12", "trainer.warmup_steps=0", "trainer.eval_every=0")
    (step,), _ = metrics(tmp_path / "run")
    rows = read_pairs(pairs / "train").to_pylist()
    rm = RewardModel.from_pretrained(tmp_path / "run" / "final")
    rc = torch.tensor(rm.score([r["prompt"] + [{"role": "assistant", "content": r["chosen"]}] for r in rows]))
    rr = torch.tensor(rm.score([r["prompt"] + [{"role": "assistant", "content": r["rejected"]}] for r in rows]))
    margin = torch.tensor(pq.read_table(pairs / "train").column("vote_margin").to_pylist())
    assert step["objective"] == pytest.approx(bt_losses(rc, rr, margin).mean().item(), abs=1e-5)
    assert step["loss"] == pytest.approx(bt_losses(rc, rr).mean().item(), abs=1e-5)
    assert step["objective"] - step["loss"] > 0.3  # margins of 0.1-2 in favour of chosen make the objective clearly larger


@pytest.mark.usefixtures("one_torch_thread")
def test_margin_column_training_learns_and_resumes_exactly(tmp_path):
    pairs = with_margin(make_data(tmp_path / "data", 256, 100))
    margin = [*COMMON, "loss.margin_column=vote_margin", "trainer.pairs_per_step=16", "trainer.lr=3e-3", f"trainer.max_steps={END}"]
    cache = tmp_path / "cache"
    run_in_process(pairs, tmp_path / "reference", cache, *margin)
    run_in_process(pairs, copy_checkpoint(tmp_path / "reference", MID, tmp_path / "resumed"), cache, *margin)
    assert_learns_and_resumes_exactly(tmp_path / "reference", tmp_path / "resumed")
    rows, _ = metrics(tmp_path / "reference")
    assert all(r["objective"] > r["loss"] for r in rows[:4]) and math.isfinite(rows[-1]["objective"])


def test_a_margin_column_missing_from_a_mixed_dataset_is_one_line_naming_it(tmp_path):
    """loss.margin_column must be a column of every dataset trained on, data.mix's included: found before any training."""
    from worldpm.errors import UserError

    main = with_margin(make_data(tmp_path / "main", 32, 10))
    extra = make_data(tmp_path / "extra", 32, 10, seed=1)
    with pytest.raises(UserError, match=r"loss.margin_column='vote_margin' is not a column of .*extra/train"):
        run_in_process(main, tmp_path / "run", tmp_path / "cache", "loss.margin_column=vote_margin", "trainer.max_steps=1",
                       f"data.mix=[{{path: {extra}}}]")
    assert not (tmp_path / "run" / "checkpoints").exists()
