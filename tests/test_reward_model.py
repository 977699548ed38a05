import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import conversations, make_tiny, tiny_arch
from worldpm.model.padding import length_sorted_batches, pad_batch
from worldpm.model.chat_format import REWARD_TOKEN
from worldpm.errors import UserError
from worldpm.model.loader import load_reward_model
from worldpm.model.reward_model import RewardModel

TOL = 1e-5


def manual_reward(rm, ids, offset=0):
    """Independent reading: run the backbone on one unpadded sequence and apply the head at position len-1+offset."""
    with torch.no_grad():
        hidden = rm.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        return rm.head(hidden[len(ids) - 1 + offset]).item()


def test_rewards_differ_between_texts(tiny_rm):
    r = tiny_rm.score(conversations())
    assert max(r) - min(r) > 0.1  # the tolerances below are meaningful


def test_reward_same_alone_in_mixed_batch_and_left_or_right_padded(tiny_rm):
    convs = conversations()
    ids = tiny_rm.encode(convs)
    assert len({len(s) for s in ids}) > 4  # really mixed lengths
    alone = [manual_reward(tiny_rm, s) for s in ids]
    batched = tiny_rm.score(convs)  # length-sorted, right-padded batches
    assert batched == pytest.approx(alone, abs=TOL)
    tiny_batches = tiny_rm.score(convs, max_tokens=64)  # many small batches
    assert tiny_batches == pytest.approx(alone, abs=TOL)
    for side in ("left", "right"):
        input_ids, mask, pos, cols = pad_batch(ids, tiny_rm.pad_id, side=side)
        with torch.no_grad():
            out = tiny_rm(input_ids, attention_mask=mask, position_ids=pos, reward_index=(torch.arange(len(ids)), cols))
        assert out.tolist() == pytest.approx(alone, abs=TOL), side


def test_pad_id_is_never_the_reward_token(tiny_rm):
    assert tiny_rm.pad_id != tiny_rm.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)


def test_packed_row_gives_the_same_rewards(tiny_rm):
    # padding-free: all sequences in one row, position ids restarting, no attention mask (sdpa detects the packing)
    ids = tiny_rm.encode(conversations())
    flat = torch.tensor([[t for s in ids for t in s]])
    pos = torch.tensor([[p for s in ids for p in range(len(s))]])
    ends = torch.tensor([sum(len(s) for s in ids[: i + 1]) - 1 for i in range(len(ids))])
    with torch.no_grad():
        packed = tiny_rm(flat, position_ids=pos, reward_index=ends).tolist()
    assert packed == pytest.approx([manual_reward(tiny_rm, s) for s in ids], abs=TOL)


def test_readout_before_reward_token_reads_the_previous_position():
    rm = make_tiny(readout="before_reward_token")
    ids = rm.encode(conversations()[:3])
    assert rm.score_ids(ids) == pytest.approx([manual_reward(rm, s, offset=-1) for s in ids], abs=TOL)


def test_bf16_scoring_runs_and_is_close():
    rm32 = make_tiny()
    rm16 = make_tiny(dtype="bfloat16")
    assert next(rm16.parameters()).dtype == torch.bfloat16
    a, b = rm32.score(conversations()), rm16.score(conversations())
    assert all(isinstance(x, float) for x in b)
    # bf16 keeps 8 significant bits (unit roundoff 2^-8): four roundoffs of the largest reward (0.05 here) bound the error of a
    # 2-layer forward; measured 0.016 on these conversations. Weights left in fp32 would give exactly a, so demand a change too.
    bound = 4 * 2 ** -8 * max(abs(x) for x in a)
    assert max(abs(x - y) for x, y in zip(a, b)) <= bound and a != b


def test_length_sorted_batches_pad_minimally():
    lengths = [5, 100, 7, 98, 6, 99]
    batches = list(length_sorted_batches(lengths, max_tokens=300))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [1, 5, 3]  # the three long ones together
    assert all(len(b) * max(lengths[i] for i in b) <= 300 for b in batches)


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_save_load_round_trip_is_exact(tmp_path, head):
    import os
    import stat

    rm = make_tiny(head=head)
    rm.save_pretrained(tmp_path / "ckpt")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    rm.save_pretrained(tmp_path / "ckpt")  # saving over an existing checkpoint replaces it whole
    assert not list(tmp_path.glob(".ckpt*"))
    back = RewardModel.from_pretrained(tmp_path / "ckpt")
    assert back.spec == rm.spec
    sd_a, sd_b = rm.state_dict(), back.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert back.score(conversations()) == rm.score(conversations())


def test_mlp_checkpoint_has_the_released_worldpm_layout(tmp_path):
    make_tiny(head="mlp").save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    keys = set(load_file(tmp_path / "ckpt" / "model.safetensors"))
    assert cfg["architectures"] == ["Qwen2ForRewardModel"] and cfg["worldpm"]["head"] == "mlp"
    assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias", "model.embed_tokens.weight"} <= keys
    assert not any(k.startswith("lm_head") for k in keys) and all(k.startswith(("model.", "score.")) for k in keys)
    assert cfg["worldpm"]["reward_token"] == REWARD_TOKEN and cfg["worldpm"]["readout"] == "reward_token"


@pytest.mark.parametrize("side", ["right", "left"])
def test_linear_export_scores_the_same_in_auto_model_for_sequence_classification(tmp_path, side):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = make_tiny(head="linear")
    rm.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForSequenceClassification"]
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    tok.padding_side = side
    convs = conversations()
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]  # the saved template renders our format
    batch = tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        hf_rewards = hf(**batch).logits.squeeze(-1).tolist()
    assert hf_rewards == pytest.approx(rm.score(convs), abs=TOL)


def write_released_worldpm_dir(rm, out):
    """A directory in the released WorldPM-72B layout: Qwen2ForRewardModel + remote-code auto_map, sharded safetensors,
    `model.*` / `score.0.*` / `score.2.*` weights, no `worldpm` block and no pad_token_id; tokenizer with Qwen's own template."""
    out.mkdir()
    cfg = rm.config.to_dict()
    for k in ("pad_token_id", "_attn_implementation_autoset", "worldpm"):
        cfg.pop(k, None)
    cfg.update(architectures=["Qwen2ForRewardModel"], model_type="qwen2", num_labels=1,
               auto_map={"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig", "AutoModel": "modeling_qwen2_rm.Qwen2ForRewardModel"})
    (out / "config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in rm.state_dict().items()}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, out / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    tok = rm.tokenizer
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    tok.pad_token = "<|endoftext|>"
    tok.save_pretrained(out)
    (out / "modeling_qwen2_rm.py").write_text("raise RuntimeError('remote code must not run')\n")


def test_released_worldpm_directory_loads_and_scores_like_the_released_code(tmp_path):
    src = make_tiny(head="mlp")
    write_released_worldpm_dir(src, tmp_path / "WorldPM-72B")
    rm = RewardModel.from_pretrained(tmp_path / "WorldPM-72B")
    assert rm.spec.head == "mlp" and rm.spec.readout == "before_reward_token"
    ids = rm.encode(conversations())
    # the released forward() pools the token before the first <|endoftext|>
    expected = [manual_reward(src, s, offset=-1) for s in ids]
    assert rm.score(conversations()) == pytest.approx(expected, abs=TOL)


def one_line(err):
    return "\n" not in str(err.value)


def test_missing_path_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        RewardModel.from_pretrained(str(tmp_path / "nope"))
    assert one_line(err) and "nope" in str(err.value)


def test_a_plain_language_model_has_no_reward_head(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = tiny_arch()
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch))
    lm.save_pretrained(tmp_path / "lm")
    with pytest.raises(UserError, match="no reward head") as err:
        RewardModel.from_pretrained(tmp_path / "lm")
    assert one_line(err) and "lm" in str(err.value)
    # ...but it is a fine backbone: model.path starts a reward model on it with a fresh head
    rm = load_reward_model({"name": "x", "path": str(tmp_path / "lm"), "tokenizer": "tiny", "head": "linear"})
    assert rm.spec.head == "linear" and len(rm.score(conversations()[:2])) == 2
    assert torch.equal(rm.model.embed_tokens.weight, lm.model.embed_tokens.weight)


def test_model_type_unknown_to_transformers_is_named(tmp_path):
    make_tiny().save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["model_type"] = "florp9000"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="florp9000") as err:
        RewardModel.from_pretrained(tmp_path / "ckpt")
    assert one_line(err)
    with pytest.raises(UserError, match="florp9000"):
        RewardModel.from_config({**tiny_arch(), "model_type": "florp9000"}, make_tiny().tokenizer)


def test_unknown_head_is_named():
    with pytest.raises(UserError, match="'conv'"):
        make_tiny(head="conv")
