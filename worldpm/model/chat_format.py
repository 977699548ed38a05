"""The reward-token contract: how a conversation becomes token ids, and where its reward is read.

WorldPM's convention (README "Key Notes" of QwenLM/WorldPM): Qwen ChatML, an empty system message whose markers are kept, and the
reward read from the hidden state of an `<|endoftext|>` appended after the reply's `<|im_end|>\\n`:

    <|im_start|>system\\n<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{reply}<|im_end|>\\n<|endoftext|>

The reward token is always the *last* token of an encoded sequence, so its index comes from the sequence length, never from a
pad id (Qwen's pad token is `<|endoftext|>` itself). Truncation to `max_length` keeps it: the prompt is cut from the left first
(the assistant header stays), then the reply's tail; the `<|im_end|>\\n<|endoftext|>` suffix is never cut.

The whole string is tokenised in one call, exactly as WorldPM's README does (`apply_chat_template` then `encode`), so token
boundaries match the reference; character offsets locate the prompt / reply / suffix for truncation.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from worldpm.errors import UserError

REWARD_TOKEN = "<|endoftext|>"
# Padding uses <|im_end|>: HF's sequence-classification pooling reads the rightmost non-pad token, so with this pad it lands on
# the reward token under left or right padding (with pad == <|endoftext|> it would land one token early).
PAD_TOKEN = "<|im_end|>"
ASSISTANT_HEADER = "<|im_start|>assistant\n"
ROLES = ("system", "user", "assistant")

# The same rendering as `render` below, for tools that only call `tokenizer.apply_chat_template` (TRL, RewardBench, OpenRLHF).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\n<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- else %}{{- '<|endoftext|>' }}{%- endif %}"
)


@dataclass(frozen=True)
class Rendered:
    """A ChatML string ending in the reward token, with the character span of the scored reply."""

    text: str
    reply_start: int
    reply_end: int


def check_text(text: str, where: str) -> str:
    """`text` if it can be tokenised: a string that is valid Unicode. JSON can carry a lone UTF-16 surrogate (`"\\ud800"`),
    which Python keeps in a str but no tokenizer (nor UTF-8) can take; that is a one-line UserError naming the item."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{where}: not valid Unicode: lone surrogate {text[exc.start]!r} at character {exc.start} "
                        f"(a JSON \\ud800-\\udfff escape without its pair)") from None
    return text


def check_conversation(conversation, where: str = "conversation") -> list[Mapping[str, str]]:
    """A list of {role, content} messages ending with the assistant's reply; anything else is a one-line UserError."""
    if not isinstance(conversation, Sequence) or isinstance(conversation, (str, bytes)) or not conversation:
        raise UserError(f"{where}: expected a non-empty list of {{role, content}} messages, got {type(conversation).__name__}")
    for i, message in enumerate(conversation):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise UserError(f"{where}: message {i} is not a {{role, content}} mapping")
        if message["role"] not in ROLES:
            raise UserError(f"{where}: message {i} has role {message['role']!r}; expected one of {ROLES}")
        if not isinstance(message["content"], str):
            raise UserError(f"{where}: message {i} content is {type(message['content']).__name__}, not a string")
        check_text(message["content"], f"{where}: message {i} content")
    if conversation[-1]["role"] != "assistant":
        raise UserError(f"{where}: the last message must be the assistant's reply (got role {conversation[-1]['role']!r})")
    return list(conversation)


def responses_conversations(prompt, responses: Sequence[str]) -> list[list[Mapping[str, str]]]:
    """N responses to one prompt (a list of {role, content} messages, or a user message as a string) as N conversations."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return [[*prompt, {"role": "assistant", "content": r}] for r in responses]


def render(conversation, system_prompt: str = "") -> Rendered:
    """Render a conversation (ending with the assistant reply) into WorldPM's ChatML string with the reward token appended."""
    messages = check_conversation(conversation)
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    head = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages[:-1])
    reply = messages[-1]["content"]
    reply_start = len(head) + len(ASSISTANT_HEADER)
    text = f"{head}{ASSISTANT_HEADER}{reply}<|im_end|>\n{REWARD_TOKEN}"
    return Rendered(text, reply_start, reply_start + len(reply))


def render_text(text: str, where: str = "text") -> Rendered:
    """A text rendered elsewhere (e.g. OpenRLHF's decoded prompt+response): scored as given, the reward token appended if absent.

    Only the end is made canonical. A text that stops right after the reply's `<|im_end|>` gets the `\\n` of WorldPM's suffix
    before the reward token (OpenRLHF decodes a ChatML rollout as `...reply<|im_end|>`, with no newline). Trailing copies of the
    reward token collapse into one (a decoded batch can carry pad tokens, and Qwen's pad token *is* `<|endoftext|>`).
    The reply is what follows the last `<|im_start|>assistant\\n` (the whole text when there is none), up to its `<|im_end|>`.
    """
    if not isinstance(text, str):
        raise UserError(f"{where}: expected a string to score, got {type(text).__name__}")
    check_text(text, where)
    body = text
    while body.endswith(REWARD_TOKEN):
        body = body[: -len(REWARD_TOKEN)]
    if body.endswith("<|im_end|>"):
        body += "\n"
    text = body + REWARD_TOKEN
    body_end = len(text) - len(REWARD_TOKEN)
    header = text.rfind(ASSISTANT_HEADER, 0, body_end)
    reply_start = 0 if header < 0 else header + len(ASSISTANT_HEADER)
    im_end = text.find("<|im_end|>", reply_start, body_end)
    return Rendered(text, reply_start, body_end if im_end < 0 else im_end)


def encode(tokenizer, rendered: Iterable[Rendered], max_length: int) -> "EncodedBatch":
    """Token ids for each rendered text, each ending in the reward token and at most `max_length` long, with which were cut
    and which share a prompt (EncodedBatch). One batched call to the fast tokenizer; offsets place the prompt/reply/suffix
    boundaries."""
    rendered = list(rendered)
    if not rendered:
        return EncodedBatch()
    reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    enc = tokenizer([r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out, cut, prompts = [], [], []
    for r, ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        if not ids or ids[-1] != reward_id:
            raise UserError(f"text does not end in the reward token {REWARD_TOKEN} after tokenisation: {r.text[-40:]!r}")
        truncated = len(ids) > max_length
        if truncated:
            ids = _truncate(ids, offsets, r, max_length)
        out.append(list(ids))
        cut.append(truncated)
        # the rendered text before the reply (through the assistant header): equal keys, one prompt. A truncated sequence lost
        # the start of its prompt, and a text with no assistant header has no prompt to share.
        prompts.append(None if truncated or r.reply_start == 0 else hash(r.text[:r.reply_start]))
    return EncodedBatch(out, cut, prompts)


def _truncate(ids: list[int], offsets, r: Rendered, max_length: int) -> list[int]:
    header_start = max(0, r.reply_start - len(ASSISTANT_HEADER))
    starts = [s for s, _ in offsets]
    # token boundaries: [0, h) prompt, [h, p) assistant header, [p, s) reply, [s, n) suffix "<|im_end|>\n<|endoftext|>"
    h = next((i for i, st in enumerate(starts) if st >= header_start), len(ids))
    p = next((i for i in range(h, len(ids)) if starts[i] >= r.reply_start), len(ids))
    s = next((i for i in range(p, len(ids)) if starts[i] >= r.reply_end), len(ids) - 1)
    s = min(s, len(ids) - 1)  # the reward token itself is always kept
    keep_fixed = (p - h) + (len(ids) - s)
    if keep_fixed > max_length:
        raise UserError(f"max_length={max_length} is shorter than the assistant header and reward suffix ({keep_fixed} tokens)")
    excess = len(ids) - max_length
    cut_prompt = min(excess, h)
    cut_reply = excess - cut_prompt
    return ids[cut_prompt:h] + ids[h:p] + ids[p:s - cut_reply] + ids[s:]


def encode_conversations(tokenizer, conversations, max_length: int, system_prompt: str = "") -> "EncodedBatch":
    return encode(tokenizer, (render(c, system_prompt) for c in conversations), max_length)


class EncodedBatch(list):
    """Token-id lists, one per input, each ending in the reward token. `truncated`: how many were cut to fit max_length;
    `cut`: which; `prompts`: a key per sequence, equal for sequences rendered from the same prompt (None for a truncated one),
    so scoring can encode a prompt once for all its responses (worldpm.model.segments)."""

    def __init__(self, ids: Iterable[list[int]] = (), cut: Sequence[bool] | None = None,
                 prompts: Sequence[int | None] | None = None):
        super().__init__(ids)
        self.cut = list(cut) if cut is not None else [False] * len(self)
        self.prompts = list(prompts) if prompts is not None else [None] * len(self)
        self.truncated = sum(self.cut)


@dataclass(frozen=True)
class ChatEncoder:
    """How a reward model turns conversations and rendered texts into token ids: its tokenizer, max_length and system prompt.

    `RewardModel.encoder` builds one; it is picklable, so training's tokenising workers (datasets.map) encode pairs exactly as
    scoring encodes conversations.
    """

    tokenizer: Any
    max_length: int
    system_prompt: str = ""

    def conversations(self, conversations, max_length: int | None = None) -> EncodedBatch:
        return encode_conversations(self.tokenizer, conversations, int(max_length or self.max_length), self.system_prompt)

    def texts(self, texts: Sequence[str], max_length: int | None = None) -> EncodedBatch:
        return encode(self.tokenizer, [render_text(t, f"text {i}") for i, t in enumerate(texts)],
                      int(max_length or self.max_length))

    def fingerprint(self) -> str:
        """A stable hash of everything that decides the ids (tokenizer, max_length, system prompt), for caches of encoded data."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        vocab = backend.to_str() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items()))
        return hashlib.sha256("\x1f".join([vocab, str(self.max_length), self.system_prompt]).encode()).hexdigest()[:16]
