"""The export format against what the peers' pinned transformers read (the CI subset of scripts/interop_check.sh, which runs the
peers' released packages themselves: RewardBench 0.1.4 / transformers 4.51, OpenRLHF 0.11.2 / 5.15, TRL 1.16 / newest).

What the older readers take from the files, as their code reads them:
- transformers 4.4x `Qwen2Config.__init__(rope_theta=10000.0, rope_scaling=None, ...)`: flat keys of config.json; an export
  that keeps RoPE only in 5.x's `rope_parameters` loads with rope_theta 10000 and no error (the issue's 0.028 reward gap);
- 4.x `AutoTokenizer`: `tokenizer_class` resolved by name among the classes it has (5.x's `TokenizersBackend` is not one),
  `model_input_names` (its generic class returns token_type_ids otherwise, and Qwen2's forward() refuses them), and
  `chat_template` from tokenizer_config.json (chat_template.jinja is read from 4.50 on, and by 5.x);
- `AutoModelForSequenceClassification` (RewardBench, TRL) and vLLM: `architectures` + `num_labels` + `pad_token_id`;
  OpenRLHF's `get_llm_for_sequence_regression`: `AutoModel` plus `nn.Linear(h, 1, bias=False)` named `value_head_prefix`
  (default `score`), and `mean`/`std` only when it normalises.
"""
import json

import pytest
import torch
from safetensors import safe_open

from tests.conftest import conversations, make_tiny
from worldpm.model.chat_format import CHAT_TEMPLATE, PAD_TOKEN
from worldpm.model.checkpoint import PORTABLE_TOKENIZER_CLASS, legacy_config_fields

TOL = 1e-5
# tokenizer classes transformers 4.51 resolves by name that also exist in 5.x (tokenization_auto's TOKENIZER_MAPPING_NAMES)
RESOLVED_BY_4X_AND_5X = {"PreTrainedTokenizerFast", "Qwen2TokenizerFast"}


@pytest.fixture(scope="module", params=["linear", "mlp"])
def export(request, tmp_path_factory):
    rm = make_tiny(head=request.param)
    return rm, rm.save_pretrained(tmp_path_factory.mktemp(f"export-{request.param}") / "model")


@pytest.fixture(scope="module")
def linear_export(tmp_path_factory):
    rm = make_tiny(head="linear")
    return rm, rm.save_pretrained(tmp_path_factory.mktemp("export-linear") / "model")


def read(path, name):
    return json.loads((path / name).read_text())


def qwen2_config_as_4x_reads_it(cfg: dict) -> dict:
    """The RoPE and dtype values transformers 4.51's Qwen2Config ends up with for this config.json (its defaults when absent)."""
    return {"rope_theta": cfg.get("rope_theta", 10000.0), "rope_scaling": cfg.get("rope_scaling"),
            "torch_dtype": cfg.get("torch_dtype")}


def test_config_json_carries_the_flat_fields_4x_reads(export):
    rm, path = export
    cfg = read(path, "config.json")
    old = qwen2_config_as_4x_reads_it(cfg)
    assert cfg["rope_parameters"]["rope_theta"] == rm.config.rope_parameters["rope_theta"] == 1_000_000.0  # not the default
    assert old == {"rope_theta": 1_000_000.0, "rope_scaling": None, "torch_dtype": "float32"}
    assert cfg["model_type"] == "qwen2" and cfg["num_labels"] == 1 and len(cfg["id2label"]) == 1
    assert cfg["pad_token_id"] == rm.tokenizer.convert_tokens_to_ids(PAD_TOKEN) and "worldpm" in cfg  # the contract stays
    expected = "Qwen2ForSequenceClassification" if rm.spec.head == "linear" else "Qwen2ForRewardModel"
    assert cfg["architectures"] == [expected]


def test_legacy_fields_for_scaled_rope_and_kept_values():
    yarn = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "yarn", "factor": 4.0}, "dtype": "bfloat16"}
    assert legacy_config_fields(yarn) == {"rope_theta": 5e5, "torch_dtype": "bfloat16",
                                          "rope_scaling": {"factor": 4.0, "type": "yarn", "rope_type": "yarn"}}
    assert legacy_config_fields({**yarn, "rope_theta": 1.0, "rope_scaling": None, "torch_dtype": "float16"}) == {}


def test_tokenizer_files_every_version_reads(export):
    rm, path = export
    tok_cfg = read(path, "tokenizer_config.json")
    assert tok_cfg["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS and tok_cfg["tokenizer_class"] in RESOLVED_BY_4X_AND_5X
    assert tok_cfg["chat_template"] == (path / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert tok_cfg["pad_token"] == PAD_TOKEN
    assert tok_cfg["model_input_names"] == ["input_ids", "attention_mask"]  # 4.x's generic class adds token_type_ids otherwise


def test_the_exported_tokenizer_tokenises_like_the_model_s_own(export):
    """Whatever class AutoTokenizer picks for the portable declaration, the ids are the ones the model was trained on."""
    from transformers import AutoTokenizer

    rm, path = export
    texts = [rm.tokenizer.apply_chat_template(c, tokenize=False) for c in conversations()]
    texts += ["  leading spaces, tabs\tand\nnewlines  ", "Ünïcödé — 家 🏠 ﬁ", "x=1_000_000; y = [1, 2, 3]\r\n", "<|im_end|>\n<|endoftext|>"]
    exported = AutoTokenizer.from_pretrained(path)
    assert [exported(t, add_special_tokens=False)["input_ids"] for t in texts] == \
        [rm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert exported(texts[0], add_special_tokens=True)["input_ids"] == exported(texts[0], add_special_tokens=False)["input_ids"]


def test_weights_are_where_each_loader_looks(export):
    rm, path = export
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        heads = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("score.")}
    h = rm.config.hidden_size
    if rm.spec.head == "linear":  # AutoModelForSequenceClassification's and OpenRLHF's `score` (value_head_prefix default)
        assert heads == {"score.weight": (1, h)} and "value_head_prefix" not in read(path, "config.json")
    else:  # vLLM's Qwen2ForRewardModel: score.0 (h -> h), ReLU, score.2 (h -> 1)
        assert heads == {"score.0.weight": (h, h), "score.0.bias": (h,), "score.2.weight": (1, h), "score.2.bias": (1,)}


def test_linear_export_in_plain_transformers_and_the_rope_theta_it_needs(linear_export):
    """Loaded as RewardBench/TRL load it, the export gives worldpm's rewards; read with 4.x's default rope_theta it would not."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    rm, path = linear_export
    tok = AutoTokenizer.from_pretrained(path)
    texts = [tok.apply_chat_template(c, tokenize=False) for c in conversations()]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    expected = rm.score(conversations())
    with torch.no_grad():
        got = AutoModelForSequenceClassification.from_pretrained(path).eval()(**batch).logits[:, 0].tolist()
        assert got == pytest.approx(expected, abs=TOL)
        config = AutoConfig.from_pretrained(path)
        config.rope_parameters = {"rope_theta": 10000.0, "rope_type": "default"}  # what 4.51 read before the flat field
        wrong = AutoModelForSequenceClassification.from_pretrained(path, config=config).eval()(**batch).logits[:, 0].tolist()
    assert max(abs(a - b) for a, b in zip(wrong, expected)) > 100 * TOL  # the field matters: a wrong theta is visible
