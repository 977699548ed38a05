"""Tokenising pairs (the reward-token contract, cached), the weighted resumable data order, and the synthetic fixture."""
import json
from collections import Counter

import pytest

from data_prep.records import COLUMNS, check_record, read_pairs, write_pairs
from tests.synthetic_pairs import generate, write_dataset
from worldpm.errors import UserError
from worldpm.data.pairs import PairTable, load_split
from worldpm.data.stream import PairStream, sources
from worldpm.model.chat_format import ChatEncoder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("pairs") / "data", 120, 30, seed=1)


def test_synthetic_pairs_are_valid_records_and_threads_never_straddle_splits(dataset):
    train, test = read_pairs(dataset / "train").to_pylist(), read_pairs(dataset / "test").to_pylist()
    assert len(train) == 120 and len(test) == 30 and set(train[0]) == set(COLUMNS)
    for row in train + test:
        check_record(row)
        assert row["prompt"][0]["content"].startswith("How do I ") and "\n\n" in row["prompt"][0]["content"]
    assert not {r["thread_id"] for r in train} & {r["thread_id"] for r in test}
    assert len({r["id"] for r in train + test}) == 150
    assert json.loads((dataset / "manifest.json").read_text())["complete"] is True


def test_forum_lengths_are_long_tailed():
    rows = generate(600, 0, seed=0, lengths="forum")["train"]
    lengths = sorted(len(r["chosen"]) + len(r["prompt"][0]["content"]) for r in rows)
    median, p99 = lengths[len(lengths) // 2], lengths[int(0.99 * len(lengths))]
    assert p99 > 4 * median


def test_tokenised_pairs_are_exactly_what_the_reward_model_encodes(dataset, tmp_path):
    from tests.conftest import make_tiny

    rm = make_tiny()
    table = PairTable(load_split(dataset, "train", ChatEncoder(rm.tokenizer, max_length=96), cache_dir=str(tmp_path)))
    rows = read_pairs(dataset / "train").to_pylist()
    pairs = table.pairs(range(len(rows)))
    for row, pair, tokens in zip(rows, pairs, table.tokens):
        chosen, rejected = rm.encode([row["prompt"] + [{"role": "assistant", "content": row["chosen"]}],
                                      row["prompt"] + [{"role": "assistant", "content": row["rejected"]}]], max_length=96)
        assert list(pair.chosen) == chosen and list(pair.rejected) == rejected and tokens == len(chosen) + len(rejected)
        assert pair.prefix == next(i for i, (a, b) in enumerate(zip(chosen + [-1], rejected + [-2])) if a != b)
    assert max(max(len(p.chosen), len(p.rejected)) for p in pairs) == 96  # some were truncated, reward token kept
    reward_id = rm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert all(p.chosen[-1] == reward_id and p.rejected[-1] == reward_id for p in pairs)


def test_pair_table_costs_are_the_collated_pair_costs(dataset, tmp_path):
    from worldpm.data.packing import LAYOUTS, pair_cost
    from worldpm.model.tokenizer import load_tokenizer

    table = PairTable(load_split(dataset, "train", ChatEncoder(load_tokenizer("tiny"), max_length=96), cache_dir=str(tmp_path)))
    pairs = table.pairs(range(len(table)))
    for layout in LAYOUTS:
        assert table.costs(layout).tolist() == [pair_cost(p, layout) for p in pairs], layout
    assert (table.costs("shared_prompt") < table.tokens).any()  # pairs share their rendered prompt (unless truncated away)


def test_tokenisation_is_cached(dataset, tmp_path):
    from worldpm.model.tokenizer import load_tokenizer

    tok = load_tokenizer("tiny")
    first = load_split(dataset, "test", ChatEncoder(tok, max_length=128), cache_dir=str(tmp_path))
    again = load_split(dataset, "test", ChatEncoder(tok, max_length=128), cache_dir=str(tmp_path))
    assert first.cache_files and first.cache_files == again.cache_files
    other = load_split(dataset, "test", ChatEncoder(tok, max_length=64), cache_dir=str(tmp_path))
    assert other.cache_files != first.cache_files  # a different truncation is a different cache entry


def test_stream_resumes_exactly_and_reshuffles_each_epoch():
    a = PairStream([7, 5], [1.0, 1.0], seed=3)
    first = a.take(9)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint stores
    rest = a.take(20)
    b = PairStream([7, 5], [1.0, 1.0], seed=3)
    b.load_state_dict(state)
    assert b.take(20) == rest
    one = PairStream([6], [1.0], seed=0)
    e1, e2 = one.take(6), one.take(6)
    assert sorted(r for _, r in e1) == list(range(6)) == sorted(r for _, r in e2) and e1 != e2
    assert PairStream([7, 5], [1.0, 1.0], seed=3).take(9) == first  # deterministic
    assert PairStream([7, 5], [1.0, 1.0], seed=4).take(9) != first


def test_weighted_mixing_hits_the_weights_in_every_window():
    s = PairStream([1000, 1000, 1000], [3.0, 1.0, 1.0], seed=0)
    for _ in range(4):
        counts = Counter(src for src, _ in s.take(50))
        assert counts == {0: 30, 1: 10, 2: 10}


def test_stream_refuses_a_changed_dataset():
    s = PairStream([7, 5], [1.0, 1.0], seed=3)
    with pytest.raises(UserError, match="data changed"):
        PairStream([8, 5], [1.0, 1.0], seed=3).load_state_dict(s.state_dict())
    with pytest.raises(UserError, match="weights changed"):
        PairStream([7, 5], [2.0, 1.0], seed=3).load_state_dict(s.state_dict())


def test_sources_validate_paths_and_weights(dataset, tmp_path):
    from omegaconf import OmegaConf

    cfg = lambda **kw: OmegaConf.create({"path": str(dataset), "weight": 1.0, "mix": [], **kw})  # noqa: E731
    assert [s.name for s in sources(cfg(mix=[{"path": str(dataset), "weight": 0.5, "name": "again"}]))] == ["main", "again"]
    (tmp_path / "empty" / "train").mkdir(parents=True)
    for bad, needle in ((cfg(path=str(tmp_path / "nope")), "does not exist"), (cfg(path=str(tmp_path / "empty")), "no train/"),
                        (cfg(weight=0), "weight must be > 0"), (cfg(path="???"), "data.path is not set"),
                        (cfg(mix=[{"weight": 1}]), "data.mix[0] has no path")):
        with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            sources(bad)


def test_bad_rows_fail_with_the_pair_id(tmp_path):
    from worldpm.model.tokenizer import load_tokenizer

    row = generate(1, 0)["train"][0]
    row["prompt"] = [{"role": "narrator", "content": "x"}]
    write_pairs([row], tmp_path / "d" / "train")
    with pytest.raises(UserError, match=row["id"]):
        load_split(tmp_path / "d", "train", ChatEncoder(load_tokenizer("tiny"), 128), cache_dir=str(tmp_path / "c"))
