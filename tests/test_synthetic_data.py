"""source=synthetic: BT-sampled labels from a known reward, the Bayes loss, determinism, nesting, splits by thread."""
import hashlib
import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from data_prep.nested import NestedDataError, write_nested_subsets
from data_prep.records import PAIR_SCHEMA, check_record, read_pairs
from data_prep.synthetic import DEFAULTS, FEATURE_WEIGHTS, SyntheticDataError, write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]

# The reward written out again, independently of data_prep.synthetic: a regex word count with the published weights.
WEIGHTS = {"valid": 1.0, "useful": 1.0, "complete": 1.0, "simple": 0.5, "example": 0.5, "details": 0.5,
           "invalid": -1.0, "error": -1.0, "fail": -1.0, "unavailable": -0.5, "ignored": -0.5, "cannot": -0.5}


def r_star(text, scale=1.0):
    return scale * sum(WEIGHTS.get(w, 0.0) for w in re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "big"
    write_synthetic_dataset(out, n_pairs=12000, test_fraction=0.25, seed=7, pairs_per_thread=3)
    return out


def rows(d, split):
    return read_pairs(Path(d) / split).to_pylist()


def test_weights_are_the_documented_ones():
    assert FEATURE_WEIGHTS == WEIGHTS


def test_layout_records_and_manifest(big):
    manifest = json.loads((big / "manifest.json").read_text())
    stats = json.loads((big / "stats.json").read_text())
    assert manifest["complete"] is True and manifest["source"] == "synthetic"
    train, test = rows(big, "train"), rows(big, "test")
    assert len(train) + len(test) == 12000 == stats["input"]["pairs_generated"]
    assert manifest["splits"]["train"]["pairs"] == len(train) == stats["kept"]["train"]
    assert manifest["splits"]["test"]["pairs"] == len(test) == stats["kept"]["test"]
    assert abs(len(test) / 12000 - 0.25) < 0.03
    assert pq.read_schema(next((big / "train").glob("*.parquet"))).equals(PAIR_SCHEMA)
    for row in train[:50] + test[:50]:
        check_record(row)
        assert row["chosen"] != row["rejected"] and row["chosen_score"] > row["rejected_score"]
        assert row["prompt"][0]["role"] == "user"
    assert len({r["id"] for r in train + test}) == 12000
    assert manifest["bayes_bt_loss"] == stats["bayes_bt_loss"] == manifest["bayes"]["test"]["bt_loss"]
    assert manifest["reward"]["weights"] == WEIGHTS and manifest["reward"]["scale"] == 1.0


def test_no_thread_on_both_sides(big):
    train_threads = {r["thread_id"] for r in rows(big, "train")}
    test_threads = {r["thread_id"] for r in rows(big, "test")}
    assert train_threads and test_threads and not train_threads & test_threads
    assert len(train_threads) + len(test_threads) == 4000  # 12000 pairs, 3 per thread


def test_labels_are_bradley_terry_draws_from_the_true_reward(big):
    """Orient each pair label-free (lexicographic order of the two replies), then compare how often the first reply was
    chosen with sigmoid(r*(first) - r*(second)): per value of the difference (|z| < 4) and by a chi-square test over all."""
    from scipy import stats

    groups = {}
    for r in rows(big, "train") + rows(big, "test"):
        first, second = sorted((r["chosen"], r["rejected"]))
        d = round(r_star(first) - r_star(second), 6)
        groups.setdefault(d, []).append(r["chosen"] == first)
    chi2, dof = 0.0, 0
    for d, wins in groups.items():
        if len(wins) < 100:
            continue
        p = 1 / (1 + math.exp(-d))
        n, k = len(wins), sum(wins)
        z = (k - n * p) / math.sqrt(n * p * (1 - p))
        assert abs(z) < 4, (d, n, k, p)
        chi2 += z * z
        dof += 1
    assert dof >= 8  # enough distinct reward differences were tested
    assert stats.chi2.sf(chi2, dof) > 1e-3, (chi2, dof)
    # and the labels carry the signal: the higher-reward reply wins about as often as sigmoid says
    assert groups[2.0].count(True) / len(groups[2.0]) > 0.8 and groups[-2.0].count(True) / len(groups[-2.0]) < 0.2


def test_bayes_loss_against_an_independent_computation(big):
    import torch

    from worldpm.model.bt_loss import bt_losses

    stats = json.loads((big / "stats.json").read_text())
    for split in ("train", "test"):
        rs = rows(big, split)
        rc = np.array([r_star(r["chosen"]) for r in rs])
        rr = np.array([r_star(r["rejected"]) for r in rs])
        realised = np.logaddexp(0.0, -(rc - rr)).mean()
        p = 1 / (1 + np.exp(-(rc - rr)))
        entropy = np.array([0.0 if q in (0.0, 1.0) else -(q * math.log(q) + (1 - q) * math.log(1 - q)) for q in p]).mean()
        got = stats["bayes"][split]
        assert got["n"] == len(rs)
        assert got["bt_loss"] == pytest.approx(realised, rel=1e-10)
        assert got["bt_loss_expected"] == pytest.approx(entropy, rel=1e-10)
        # what worldpm eval reports for a model whose rewards are r* (the one BT loss of training and evaluation)
        assert got["bt_loss"] == pytest.approx(bt_losses(torch.tensor(rc), torch.tensor(rr)).double().mean().item(), rel=1e-6)
        assert got["accuracy"] == pytest.approx(float((rc > rr).mean()))
        assert got["bt_loss_se"] == pytest.approx(np.logaddexp(0.0, -(rc - rr)).std() / math.sqrt(len(rs)), rel=1e-6)
        # realised and expected agree within sampling noise; both well below chance (ln 2)
        assert abs(got["bt_loss"] - got["bt_loss_expected"]) < 4 * got["bt_loss_se"]
        assert 0.3 < got["bt_loss_expected"] < 0.55 < math.log(2)
        for r in rs[:200]:
            meta = json.loads(r["meta"])
            assert meta["reward_chosen"] == pytest.approx(r_star(r["chosen"])) and meta["reward_rejected"] == pytest.approx(r_star(r["rejected"]))


def test_scale_sets_how_deterministic_labels_are(tmp_path):
    losses = []
    for scale in (0.5, 2.0):
        m = write_synthetic_dataset(tmp_path / f"s{scale}", n_pairs=3000, seed=1, scale=scale)
        losses.append(m["bayes"]["train"]["bt_loss_expected"])
        rs = rows(tmp_path / f"s{scale}", "train")
        assert json.loads(rs[0]["meta"])["reward_chosen"] == pytest.approx(r_star(rs[0]["chosen"], scale))
    assert losses[0] > 0.5 > 0.3 > losses[1]


def digest(d):
    h = hashlib.sha256()
    for split in ("train", "test"):
        for r in rows(d, split):
            h.update(json.dumps(r, sort_keys=True).encode())
    return h.hexdigest()


def test_deterministic_by_seed_and_nested_by_prefix(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n_pairs=1000, seed=3)
    b = write_synthetic_dataset(tmp_path / "b", n_pairs=1000, seed=3)
    c = write_synthetic_dataset(tmp_path / "c", n_pairs=1000, seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    assert a == b and a["bayes_bt_loss"] != c["bayes_bt_loss"]
    assert (tmp_path / "a" / "train" / "part-00000.parquet").read_bytes() == (tmp_path / "b" / "train" / "part-00000.parquet").read_bytes()
    # a smaller n with the same seed is the first n pairs of the larger set (split by split, in order)
    write_synthetic_dataset(tmp_path / "small", n_pairs=401, seed=3)
    for split in ("train", "test"):
        small, large = rows(tmp_path / "small", split), rows(tmp_path / "a", split)
        assert small == large[: len(small)] and len(small) > 0
    assert sum(len(rows(tmp_path / "small", s)) for s in ("train", "test")) == 401


def test_nested_subsets_share_the_test_split(tmp_path):
    parent = tmp_path / "syn"
    m = write_synthetic_dataset(parent, n_pairs=1200, seed=5, nested_sizes=[100, 700], max_rows_per_shard=256)
    root = tmp_path / "syn-nested"
    assert m["nested"] == [str(root / "n-100"), str(root / "n-700")]
    parent_train, parent_test = rows(parent, "train"), rows(parent, "test")
    assert len(list((parent / "train").glob("*.parquet"))) > 1  # the prefix crosses shard boundaries
    for n in (100, 700):
        sub = root / f"n-{n}"
        assert rows(sub, "train") == parent_train[:n]
        for f in (parent / "test").glob("*.parquet"):
            assert (sub / "test" / f.name).read_bytes() == f.read_bytes()
        sm = json.loads((sub / "manifest.json").read_text())
        assert sm["complete"] and sm["splits"]["train"]["pairs"] == n and sm["splits"]["test"]["pairs"] == len(parent_test)
        assert sm["bayes_bt_loss"] == m["bayes_bt_loss"] and sm["bayes"]["test"] == m["bayes"]["test"] and "train" not in sm["bayes"]
        assert sm["nested"]["parent"] == str(parent) and sm["source"] == "synthetic"
        st = json.loads((sub / "stats.json").read_text())
        assert st["kept"]["train"] + st["dropped"]["train_beyond_first_n"] == len(parent_train)
    with pytest.raises(NestedDataError, match="not between 1 and"):
        write_nested_subsets(parent, [10**6], tmp_path / "x")
    with pytest.raises(NestedDataError, match="inside the parent dataset"):
        write_nested_subsets(parent, [10], parent / "nested")
    with pytest.raises(NestedDataError, match="exists and is not empty"):
        write_nested_subsets(parent, [100], root)
    assert write_nested_subsets(parent, [100], root, overwrite=True) == [root / "n-100"]


def test_datasets_loads_the_splits(big):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=str(big))
    assert set(ds) == {"train", "test"} and ds["train"].num_rows + ds["test"].num_rows == 12000


def test_feature_words_are_single_tokens_so_a_tiny_transformer_can_count_them(big):
    """Each feature word is one token (after a space) in the tiny and the Qwen tokenizer; in rendered replies the number of
    feature tokens equals the number of feature words, so r* is linear in token counts."""
    from worldpm.model.chat_format import encode_conversations
    from worldpm.model.tokenizer import load_tokenizer

    sample = rows(big, "test")[:100]
    for name in ("tiny", "qwen"):
        tok = load_tokenizer(name)
        ids = {w: tok.encode(" " + w, add_special_tokens=False) for w in WEIGHTS}
        assert all(len(v) == 1 for v in ids.values()), {w: v for w, v in ids.items() if len(v) != 1}
        feature_ids = {v[0]: w for w, v in ids.items()}
        seqs = encode_conversations(tok, [r["prompt"] + [{"role": "assistant", "content": r["chosen"]}] for r in sample], 1024)
        for r, seq in zip(sample, seqs):
            counted = sum(WEIGHTS[feature_ids[t]] for t in seq if t in feature_ids)
            assert counted == pytest.approx(r_star(r["chosen"]))
        lengths = {len(s) for s in seqs}
        assert max(lengths) - min(lengths) <= 8  # replies are all reply_words long; only the topic word varies


def test_config_matches_the_function():
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "source" / "synthetic.yaml"))
    assert cfg.pop("name") == "synthetic"
    params = inspect.signature(write_synthetic_dataset).parameters
    assert set(cfg) <= set(params) and set(cfg) | {"test_fraction", "output_dir", "overwrite"} == set(params)
    for key, value in cfg.items():
        assert DEFAULTS[key] == value, key
        assert params[key].default in (value, ()) or (value == [] and params[key].default == ()), key


@pytest.mark.parametrize("kwargs,needle", [
    ({"n_pairs": 1}, "n_pairs=1"),
    ({"n_pairs": 10.5}, "n_pairs=10.5"),
    ({"test_fraction": 0.0}, "test_fraction=0.0"),
    ({"test_fraction": 1.5}, "test_fraction=1.5"),
    ({"scale": -1}, "scale=-1"),
    ({"feature_rate": 1}, "feature_rate=1"),
    ({"reply_words": 1}, "reply_words=1"),
    ({"n_pairs": 3, "test_fraction": 0.01}, "split is empty"),
])
def test_bad_parameters_are_one_line_errors(tmp_path, kwargs, needle):
    with pytest.raises(SyntheticDataError) as err:
        write_synthetic_dataset(tmp_path / "o", **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o" / "manifest.json").exists()


def cli(*args, module="data_prep.synthetic"):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_and_overwrite(tmp_path):
    out = cli(f"output_dir={tmp_path / 'd'}", "n_pairs=300", "seed=2", "nested_sizes=[50,100]")
    assert out.returncode == 0, out.stderr
    assert "Bayes-optimal test BT loss" in out.stdout and (tmp_path / "d-nested" / "n-50" / "manifest.json").is_file()
    again = cli(f"output_dir={tmp_path / 'd'}", "n_pairs=300")
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and "overwrite=true" in again.stderr
    assert cli(f"output_dir={tmp_path / 'd'}", "n_pairs=300", "seed=2", "overwrite=true", "nested_sizes=[50,100]").returncode == 0
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["params"]["seed"] == 2
    for args, needle in ((["n_pairs=300"], "output_dir is required"), ([f"output_dir={tmp_path / 'e'}", "colour=red"], "colour=red"),
                         ([f"output_dir={tmp_path / 'e'}", "n_pairs=many"], "n_pairs='many'")):
        bad = cli(*args)
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and needle in bad.stderr, bad.stderr
    nested = cli(f"input={tmp_path / 'd'}", "sizes=[20]", f"output_dir={tmp_path / 'n'}", module="data_prep.nested")
    assert nested.returncode == 0 and (tmp_path / "n" / "n-20" / "manifest.json").is_file(), nested.stderr
    bad = cli(f"input={tmp_path / 'nope'}", "sizes=[20]", f"output_dir={tmp_path / 'n'}", module="data_prep.nested")
    assert bad.returncode == 2 and "no manifest.json" in bad.stderr and bad.stderr.strip().count("\n") == 0


def test_data_prep_imports_neither_torch_nor_worldpm():
    code = "import sys, data_prep.synthetic, data_prep.nested; bad = [m for m in ('torch', 'worldpm') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_collect_verb_writes_the_synthetic_source(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "syn"
    cmd = [sys.executable, "-m", "worldpm", "collect", "source=synthetic", f"output_dir={out}", "source.n_pairs=300",
           "split.test_fraction=0.2", "source.seed=3"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "synthetic" and manifest["params"]["seed"] == 3
    assert read_pairs(out / "train").num_rows + read_pairs(out / "test").num_rows == 300
    again = subprocess.run(cmd, cwd=root, capture_output=True, text=True)  # a completed output is refused
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1
    bad = subprocess.run(cmd[:-1] + ["source.scale=-1", "overwrite=true"], cwd=root, capture_output=True, text=True)
    assert bad.returncode == 2 and "scale" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("override,needle", [
    ("pairs.max_per_question=3", "pairs.max_per_question=3"),
    ("workers=4", "workers=4"),
    ("dedup.near.enabled=false", "dedup.near.enabled=False"),
    (f"contamination.benchmarks=[{ROOT}/worldpm/assets/benchmarks/rewardbench/filtered.jsonl]",
     f"contamination.benchmarks=['{ROOT}/worldpm/assets/benchmarks/rewardbench/filtered.jsonl']"),
    ("output.max_rows_per_shard=10", "use source.max_rows_per_shard"),
])
def test_collect_synthetic_refuses_the_collect_keys_it_does_not_read(tmp_path, override, needle):
    """source=synthetic has no forum pipeline: a collect key it would ignore is a one-line error before anything is written."""
    from data_prep.collect import run
    from data_prep.entry import compose
    from data_prep.errors import CollectError

    cfg = compose("collect", ["source=synthetic", f"output_dir={tmp_path / 'o'}", "source.n_pairs=60", override])
    with pytest.raises(CollectError) as err:
        run(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value) and "source=synthetic does not read" in str(err.value)
    assert not (tmp_path / "o").exists()
    # the keys it reads are honoured
    run(compose("collect", ["source=synthetic", f"output_dir={tmp_path / 'o'}", "source.n_pairs=60", "split.test_fraction=0.5",
                            "source.max_rows_per_shard=7"]))
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["params"]["test_fraction"] == 0.5 and len(list((tmp_path / "o" / "train").glob("*.parquet"))) > 1
