"""Fine-tuning a preference model: `init_from` a trained tiny checkpoint, a run directory or a released-WorldPM-format
directory; full and LoRA (peft), with exact resume; the merged LoRA export scores like the live adapter model and loads as an
ordinary checkpoint; its adapter/ loads in peft; QLoRA refuses cleanly without a GPU; `data.mix` mixes a forum set and an
imported preference set by weight, end to end."""
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import conversations, make_tiny
from tests.train_helpers import (ROOT, data_fixtures, eval_loss_of_export, free_port, launch, metrics, overrides,
                                 run_in_process, torchrun_cmd)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = ["trainer.pairs_per_step=8", "trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.lr=3e-3"]
LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0.0"]

data, cache = data_fixtures("finetune", 200, 60)


@pytest.fixture(scope="module")
def base(data, cache, tmp_path_factory):
    """The "forum" preference model every fine-tune starts from: 8 steps of tiny on the fixture pairs."""
    out = tmp_path_factory.mktemp("base") / "run"
    run_in_process(data, out, cache, *STEPS, "trainer.max_steps=8", "trainer.save_every=0", "trainer.eval_every=0")
    return out


@pytest.fixture(scope="module")
def hs2(tmp_path_factory):
    """HelpSteer2-Preference pairs collected from the fixture in its published format."""
    from data_prep.collect import run
    from data_prep.entry import compose

    out = tmp_path_factory.mktemp("hs2") / "data"
    run(compose("collect", ["source=helpsteer2", f"source.path={ROOT / 'tests/fixtures/preference_sets/helpsteer2'}",
                            f"output_dir={out}"]))
    return out


def scores(model_dir, convs=None):
    from worldpm.model.reward_model import RewardModel

    return RewardModel.from_pretrained(model_dir).score(convs or conversations())


def test_init_from_a_run_dir_starts_from_its_final_model(base, hs2, cache, tmp_path):
    out = tmp_path / "ft"
    run_in_process(hs2, out, cache, *STEPS, f"init_from={base}", "trainer.max_steps=0", "trainer.eval_every=0")
    assert scores(out / "final") == pytest.approx(scores(base / "final"), abs=1e-6)  # no step taken: the start, exactly
    assert json.loads((out / "final" / "state.json").read_text())["init"] == str(base / "final")


def test_full_fine_tune_from_a_checkpoint_learns_the_new_pairs(base, hs2, cache, tmp_path):
    out = tmp_path / "ft"
    run_in_process(hs2, out, cache, *STEPS, f"init_from={base / 'final'}", "trainer.max_steps=12", "trainer.eval_every=12",
                   "trainer.pairs_per_step=4")
    rows, evals = metrics(out)
    assert rows[-1]["loss"] < rows[0]["loss"] and json.loads((out / "final" / "state.json").read_text())["fresh_head"] is False
    assert eval_loss_of_export(out / "final", hs2)[0] == pytest.approx(evals[-1]["eval/loss"], abs=1e-5)


@pytest.fixture(scope="module")
def lora_run(base, hs2, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    run_in_process(hs2, out, cache, *STEPS, *LORA, f"init_from={base}", "trainer.max_steps=6", "trainer.save_every=3",
                   "trainer.eval_every=6", "trainer.pairs_per_step=4")
    return out


def test_lora_trains_adapters_and_head_only_and_the_merged_export_scores_like_the_live_model(lora_run, base, hs2):
    rows, evals = metrics(lora_run)
    assert rows[-1]["loss"] < rows[0]["loss"]
    state = json.loads((lora_run / "final" / "state.json").read_text())
    assert state["lora"]["r"] == 4 and 0 < state["adapter_params"] < state["trainable_params"] < state["n_params"] / 5
    # the export is an ordinary checkpoint: no adapter tensors, the contract's key names
    from safetensors.torch import load_file

    merged, start = load_file(lora_run / "final" / "model.safetensors"), load_file(base / "final" / "model.safetensors")
    assert set(merged) == set(start)
    assert torch.equal(merged["model.embed_tokens.weight"], start["model.embed_tokens.weight"])  # frozen
    assert torch.equal(merged["model.norm.weight"], start["model.norm.weight"])                  # frozen, not a target
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(merged["score.2.weight"], start["score.2.weight"])                    # the head trains
    # the live adapter model's last held-out evaluation, recomputed from the merged export with RewardModel.score
    assert eval_loss_of_export(lora_run / "final", hs2)[0] == pytest.approx(evals[-1]["eval/loss"], abs=1e-5)


def test_merged_lora_weights_score_exactly_like_the_adapter_model():
    """A RewardModel with random (non-zero) adapters, scored live, against the plain model built from its merged state dict."""
    from worldpm.model.lora import apply_lora, lora_settings, merge_lora_state_dict

    live = make_tiny(seed=3)
    settings = lora_settings({"enabled": True, "r": 4, "alpha": 12, "dropout": 0.0, "use_rslora": True})
    apply_lora(live, settings)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in live.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # peft starts B at 0; a trained adapter is not
    plain = make_tiny(seed=4)
    merged = merge_lora_state_dict(live.state_dict(), settings)
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged)
    want, got = live.score(conversations()), plain.score(conversations())
    assert got == pytest.approx(want, abs=1e-5) and max(abs(a - b) for a, b in zip(want, make_tiny(seed=3).score(conversations()))) > 1e-2


def test_the_adapter_directory_loads_in_peft(lora_run, base):
    """adapter/ in peft's layout: PeftModel on the base backbone + reward_head.safetensors = the merged export."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from worldpm.model.reward_model import RewardModel

    start = RewardModel.from_pretrained(base / "final")
    adapter = lora_run / "final" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(base / "final")
    peft_backbone = PeftModel.from_pretrained(start.model, str(adapter)).merge_and_unload()
    rm = RewardModel(peft_backbone, start.tokenizer, start.spec)
    rm.head.load_state_dict({k.removeprefix("score."): v for k, v in load_file(adapter / "reward_head.safetensors").items()})
    assert rm.score(conversations()) == pytest.approx(scores(lora_run / "final"), abs=1e-5)


def test_lora_resumes_exactly(lora_run, base, hs2, cache, tmp_path):
    out = tmp_path / "run"
    args = [*STEPS, *LORA, f"init_from={base}", "trainer.save_every=3", "trainer.eval_every=0", "trainer.pairs_per_step=4"]
    run_in_process(hs2, out, cache, *args, "trainer.max_steps=3")
    run_in_process(hs2, out, cache, *args, "trainer.max_steps=6")  # resumes from step 3: engine (adapters + optimizer), data, RNG
    assert [r["step"] for r in metrics(out)[0]] == list(range(1, 7))
    assert [r["loss"] for r in metrics(out)[0]] == pytest.approx([r["loss"] for r in metrics(lora_run)[0]], abs=1e-6)


def test_init_from_a_released_worldpm_directory(hs2, cache, tmp_path):
    """The released WorldPM-72B layout as it is (no worldpm block, score.0/score.2, readout before the reward token)."""
    from tests.test_reward_model import write_released_worldpm_dir

    write_released_worldpm_dir(make_tiny(seed=5), tmp_path / "WorldPM-72B")
    out = tmp_path / "ft"
    run_in_process(hs2, out, cache, *STEPS, *LORA, f"init_from={tmp_path / 'WorldPM-72B'}", "trainer.max_steps=0",
                   "trainer.eval_every=0")
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["worldpm"]["readout"] == "before_reward_token" and cfg["worldpm"]["head"] == "mlp"
    assert scores(out / "final") == pytest.approx(scores(tmp_path / "WorldPM-72B"), abs=1e-6)
    run_in_process(hs2, tmp_path / "ft2", cache, *STEPS, *LORA, f"init_from={tmp_path / 'WorldPM-72B'}", "trainer.max_steps=4",
                   "trainer.eval_every=0", "trainer.pairs_per_step=4")
    assert scores(tmp_path / "ft2" / "final") != pytest.approx(scores(tmp_path / "WorldPM-72B"), abs=1e-4)


@pytest.mark.parametrize("extra,needle", [
    (["model.lora.quantize=4bit"], "needs a CUDA GPU"),
    (["model.lora.r=0"], "model.lora.r=0"),
    (["model.lora.quantize=3bit"], "model.lora.quantize='3bit'"),
    (["model.lora.target_modules=[nope_proj]"], "nope_proj"),
])
def test_bad_lora_settings_are_one_line_errors(data, cache, tmp_path, extra, needle):
    from worldpm.errors import UserError

    if torch.cuda.is_available() and "CUDA" in needle:
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match=needle.replace("[", r"\[")) as err:
        run_in_process(data, tmp_path / "run", cache, *STEPS, "model.lora.enabled=true", *extra, "trainer.max_steps=1")
    assert "\n" not in str(err.value)


def test_lora_under_zero3_on_two_ranks_exports_a_merged_model(base, hs2, cache, tmp_path):
    """ZeRO-3 partitions the frozen base and the adapters; the export gathers them and merges."""
    out = tmp_path / "run"
    args = overrides(hs2, out, cache, *STEPS, *LORA, f"init_from={base}", "deepspeed=zero3", "trainer.max_steps=4",
                     "trainer.pairs_per_step=4", "trainer.eval_every=4", "trainer.save_every=0")
    proc = launch(torchrun_cmd(2, free_port(), *args))
    log = proc.communicate(timeout=420)[0]
    assert proc.returncode == 0, log[-4000:]
    evals = metrics(out)[1]
    assert eval_loss_of_export(out / "final", hs2)[0] == pytest.approx(evals[-1]["eval/loss"], abs=1e-5)
    assert (out / "final" / "adapter" / "adapter_model.safetensors").exists()


def test_score_gap_margin_trains_bt_with_the_preference_strength(hs2, cache, tmp_path):
    """loss.margin_column=score_gap: HelpSteer2's |strength| (chosen_score - rejected_score) inside the sigmoid."""
    args = [*STEPS, "trainer.max_steps=1", "trainer.eval_every=0", "trainer.save_every=0", "trainer.pairs_per_step=4"]
    run_in_process(hs2, tmp_path / "plain", cache, *args)
    run_in_process(hs2, tmp_path / "margin", cache, *args, "loss.margin_column=score_gap")
    plain, margin = metrics(tmp_path / "plain")[0][0], metrics(tmp_path / "margin")[0][0]
    assert margin["loss"] == pytest.approx(plain["loss"], abs=1e-6)  # the same pairs, the same start: the same plain BT loss
    assert plain["objective"] == pytest.approx(plain["loss"], abs=1e-6)
    assert margin["objective"] > margin["loss"] + 0.5  # margins of 1-3 at near-zero reward gaps: a much larger objective


def test_data_mix_mixes_forum_pairs_and_a_preference_set_by_weight(data, hs2, cache, tmp_path):
    """`data.mix` end to end: the forum fixture and HelpSteer2 pairs collected by `worldpm collect`, weights 3:1."""
    out = tmp_path / "run"
    run_in_process(data, out, cache, *STEPS, "data.weight=3", f"data.mix=[{{path: {hs2}, weight: 1, name: helpsteer2}}]",
                   "trainer.max_steps=4", "trainer.save_every=4", "trainer.eval_every=0")
    stream = json.loads((out / "checkpoints" / "step-00000004" / "data.json").read_text())["stream"]
    drawn = [e * n + c for e, n, c in zip(stream["epoch"], stream["sizes"], stream["cursor"])]
    assert stream["sizes"][1] == 11 and drawn == [24, 8]  # 32 pairs in 4 steps of 8, 3:1, HelpSteer2 over its 11 pairs
    assert metrics(out)[0][-1]["pairs_seen"] == 32
