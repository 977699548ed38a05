import pytest

from tests.conftest import conversations
from worldpm.model.chat_format import ASSISTANT_HEADER, REWARD_TOKEN, encode, encode_conversations, render, render_text
from worldpm.errors import UserError
from worldpm.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def test_render_is_worldpm_chatml_with_empty_system_kept():
    r = render([{"role": "user", "content": "Tips for better sleep?"}, {"role": "assistant", "content": "Sleep early."}])
    assert r.text == ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nTips for better sleep?<|im_end|>\n"
                      "<|im_start|>assistant\nSleep early.<|im_end|>\n<|endoftext|>")
    assert r.text[r.reply_start:r.reply_end] == "Sleep early."


@pytest.mark.parametrize("conv", conversations())
def test_render_equals_the_saved_tokenizer_chat_template(tok, conv):
    # external tools (TRL, RewardBench) render with apply_chat_template: they must get the same string
    assert tok.apply_chat_template(conv, tokenize=False) == render(conv).text


def test_render_text_appends_reward_token_once_and_finds_reply():
    text = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nthe answer<|im_end|>\n"
    r = render_text(text)
    assert r.text == text + REWARD_TOKEN and r.text[r.reply_start:r.reply_end] == "the answer"
    assert render_text(r.text).text == r.text  # already there: not appended twice
    plain = render_text("just some text")
    assert plain.text[plain.reply_start:plain.reply_end] == "just some text"


def test_render_text_completes_the_suffix_of_an_openrlhf_rollout():
    # OpenRLHF decodes prompt+response ids: a ChatML rollout ends at the reply's <|im_end|>, maybe followed by pad tokens
    # (<|endoftext|> for Qwen); both become the exact suffix that render() produces, so the reward is read in-distribution.
    conv = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "the answer"}]
    canonical = render(conv).text
    stem = canonical[: -len("\n" + REWARD_TOKEN)]
    assert stem.endswith("<|im_end|>")
    for given in (stem, stem + REWARD_TOKEN * 3, stem + "\n", canonical, canonical + REWARD_TOKEN):
        assert render_text(given).text == canonical, given[-30:]
    assert render_text("plain" + REWARD_TOKEN * 2).text == "plain" + REWARD_TOKEN


def test_every_encoding_ends_in_the_reward_token(tok):
    ids = encode_conversations(tok, conversations(), max_length=4096)
    reward_id = tok.convert_tokens_to_ids(REWARD_TOKEN)
    assert ids.truncated == 0 and ids.cut == [False] * len(ids) and all(seq[-1] == reward_id for seq in ids)
    # one call on the whole string: identical to tokenising the rendered text directly
    assert ids[0] == tok(render(conversations()[0]).text, add_special_tokens=False)["input_ids"]


def test_truncation_cuts_prompt_from_the_left_first_and_keeps_reward_token(tok):
    prompt = " ".join(f"w{i}" for i in range(300))
    reply = "The reply stays whole."
    conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    full = encode_conversations(tok, [conv], max_length=10_000)
    max_len = len(full[0]) - 50
    enc = encode_conversations(tok, [conv], max_length=max_len)
    (ids,) = enc
    text = tok.decode(ids)
    assert enc.truncated == 1 and enc.cut == [True] and enc.prompts == [None] and len(ids) == max_len
    assert text.endswith(f"{ASSISTANT_HEADER}{reply}<|im_end|>\n{REWARD_TOKEN}")
    assert "<|im_start|>system" not in text  # the left of the prompt went first
    assert "w299" in text and "w0 " not in text  # the prompt's end survives
    assert ids == full[0][50:]  # exactly the first 50 tokens were dropped


def test_truncation_cuts_reply_tail_once_prompt_is_gone(tok):
    reply = " ".join(f"r{i}" for i in range(400))
    conv = [{"role": "user", "content": "short question"}, {"role": "assistant", "content": reply}]
    (ids,) = encode_conversations(tok, [conv], max_length=64)
    text = tok.decode(ids)
    assert len(ids) == 64 and ids[-1] == tok.convert_tokens_to_ids(REWARD_TOKEN)
    assert text.startswith(ASSISTANT_HEADER + "r0 r1")  # prompt fully cut, reply head kept
    assert text.endswith("<|im_end|>\n" + REWARD_TOKEN) and "r399" not in text


def test_max_length_below_fixed_tokens_is_a_clear_error(tok):
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a long reply " * 20}]
    with pytest.raises(UserError, match="max_length=3"):
        encode_conversations(tok, [conv], max_length=3)


@pytest.mark.parametrize("bad,match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user", "content": "q"}], "last message must be the assistant"),
    ([{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}], "role 'robot'"),
    ([{"role": "user"}, {"role": "assistant", "content": "a"}], "message 0"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}], "content is int"),
])
def test_bad_conversations_are_one_line_errors(bad, match):
    with pytest.raises(UserError, match=match) as err:
        render(bad)
    assert "\n" not in str(err.value)


def test_encode_rejects_text_not_ending_in_reward_token(tok):
    from worldpm.model.chat_format import Rendered

    with pytest.raises(UserError, match="reward token"):
        encode(tok, [Rendered("no reward token here", 0, 5)], max_length=100)
