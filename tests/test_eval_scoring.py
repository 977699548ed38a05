"""One scoring pass per benchmark: identical (prompt, reply) texts scored once, rewards equal to scoring each alone."""
from pathlib import Path

import numpy as np
import pytest

from worldpm.eval.items import Item, conversation
from worldpm.eval.scoring import score_items

ASSETS = Path(__file__).resolve().parents[1] / "worldpm" / "assets" / "benchmarks"


def test_one_pass_deduplicates_and_matches_scoring_each_conversation_alone(tiny_rm, monkeypatch):
    from tests.test_eval_loaders import load

    items = load("ppe", ASSETS / "ppe")  # 32 templated replies per prompt: many repeats
    calls = []
    original = type(tiny_rm).score_ids

    def counting(self, sequences, **kw):
        calls.append(len(sequences))
        return original(self, sequences, **kw)

    monkeypatch.setattr(type(tiny_rm), "score_ids", counting)
    scored = score_items(tiny_rm, items, max_tokens=2048, desc="ppe")
    distinct = {(str(it.prompt), r) for it in items for r in it.responses}
    assert scored.n_sequences == sum(len(it.responses) for it in items) > scored.n_unique == len(distinct) == sum(calls)
    monkeypatch.undo()
    for item, rewards in list(zip(items, scored.rewards))[::5]:
        alone = [tiny_rm.score([conversation(item.prompt, r)])[0] for r in item.responses[:4]]
        assert rewards[:4] == pytest.approx(alone, abs=1e-5)
    assert all(len(t) == len(it.responses) for t, it in zip(scored.reply_tokens, items))


def test_reply_token_counts_and_truncation_are_reported(tiny_rm):
    long_prompt = [{"role": "user", "content": "word " * 400}]
    items = [Item(subtask="s", uid="0", prompt=long_prompt, responses=["short", "a longer reply " * 5], pairs=[(0, 1)])]
    scored = score_items(tiny_rm, items, max_length=64)
    assert scored.n_truncated == 2 and (scored.seq_tokens[0] <= 64).all()
    tokens = [len(tiny_rm.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in items[0].responses]
    assert scored.reply_tokens[0].tolist() == tokens and np.isfinite(scored.rewards[0]).all()
