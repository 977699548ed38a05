"""A loader test per benchmark on small fixtures in the exact format; malformed or missing files fail in one line naming
file and record."""
import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from worldpm.errors import UserError
from worldpm.eval.benchmarks.registry import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "worldpm" / "assets" / "benchmarks"
BAD = ROOT / "tests" / "fixtures" / "eval"


def bcfg(name, **overrides):
    from worldpm.config import compose

    cfg = OmegaConf.to_container(compose("eval", ["output_dir=x", f"benchmark=[{name}]"]).benchmark[name], resolve=True)
    cfg.update(overrides)
    return cfg


def load(name, path, **overrides):
    return load_benchmark(name, bcfg(name, path=str(path), **overrides))


def by_subtask(items):
    out = {}
    for it in items:
        out.setdefault(it.subtask, []).append(it)
    return {k: len(v) for k, v in out.items()}


def test_rewardbench_jsonl_parquet_and_snapshot_directory(tmp_path):
    items = load("rewardbench", ASSETS / "rewardbench" / "filtered.jsonl")
    assert by_subtask(items) == {"chat": 6, "chat_hard": 7, "safety": 5, "reasoning": 8}
    first = items[0]
    assert first.group == "alpacaeval-easy" and first.pairs == [(0, 1)] and first.prompt == [{"role": "user", "content": first.prompt[0]["content"]}]
    assert first.where.endswith("filtered.jsonl:1")
    rows = [json.loads(line) for line in (ASSETS / "rewardbench" / "filtered.jsonl").read_text().splitlines()]
    snap = tmp_path / "reward-bench" / "data"
    snap.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), snap / "filtered-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:3]), snap / "raw-00000-of-00001.parquet")  # a hub snapshot holds both splits
    from_dir = load("rewardbench", tmp_path / "reward-bench")
    assert [(i.uid, i.responses) for i in from_dir] == [(i.uid, i.responses) for i in items]
    assert from_dir[0].where.endswith("filtered-00000-of-00001.parquet[row 0]")


def test_rewardbench2_best_of_4_and_ties():
    items = load("rewardbench2", ASSETS / "rewardbench2" / "test.jsonl")
    assert by_subtask(items) == {"factuality": 2, "precise_if": 2, "math": 2, "safety": 2, "focus": 2, "ties": 4}
    focus = next(i for i in items if i.subtask == "focus")
    assert focus.rule == "top_share" and focus.pairs == [(0, 1), (0, 2), (0, 3)]
    tied = next(i for i in items if i.uid == "tied:1")
    assert tied.rule == "all" and tied.meta == {"kind": "tied", "prompt_id": "1"} and tied.correct == [True] * 3 + [False] * 2
    assert len(tied.pairs) == 6 and all(tied.correct[a] and not tied.correct[b] for a, b in tied.pairs)


def test_rmbench_six_styles_and_merged_safety():
    items = load("rmbench", ASSETS / "rmbench" / "total_dataset.json")
    assert by_subtask(items) == {"chat": 2, "code": 2, "math": 2, "safety": 4}
    assert {i.group for i in items if i.subtask == "safety"} == {"safety-refuse", "safety-response"}
    assert items[0].styles == ["concise", "detailed_plain", "detailed_markdown"] * 2 and len(items[0].pairs) == 9
    assert items[0].where.endswith("total_dataset.json[record 0]")


def test_ppe_human_preference_and_correctness_sets(tmp_path):
    items = load("ppe", ASSETS / "ppe")
    assert by_subtask(items) == {"human_preference": 8, "mmlu_pro": 3, "math": 3, "gpqa": 3, "mbpp_plus": 3, "ifeval": 3}
    rows = [json.loads(line) for line in (ASSETS / "ppe" / "human_preference.jsonl").read_text().splitlines()]
    human = [i for i in items if i.subtask == "human_preference"]
    kept = [r for r in rows if "tie" not in r["winner"]]
    assert [i.pairs for i in human] == [[(0, 1)] if r["winner"] == "model_a" else [(1, 0)] for r in kept]
    assert human[0].meta["flags"]["hard_prompt"] is True
    raw = json.loads((ASSETS / "ppe" / "math.jsonl").read_text().splitlines()[0])
    math0 = next(i for i in items if i.subtask == "math")
    assert len(math0.responses) == 32 and math0.correct == raw["scores"]
    assert len(math0.pairs) == len(raw["sampled_conflict_pairs"]) and all(math0.correct[a] and not math0.correct[b] for a, b in math0.pairs)
    assert [i.pairs for i in items if i.subtask == "math"][2] == []  # a prompt whose responses are all correct
    everything = load("ppe", ASSETS / "ppe", correctness_pairs="all")
    math_all = next(i for i in everything if i.subtask == "math")
    assert len(math_all.pairs) == len(raw["conflict_pairs"])
    # a downloaded hub snapshot: a folder per set named by its hub id
    snap = tmp_path / "ppe"
    shutil.copytree(ASSETS / "ppe", snap)
    (snap / "PPE-GPQA-Best-of-K" / "data").mkdir(parents=True)
    gpqa = [json.loads(line) for line in (snap / "gpqa.jsonl").read_text().splitlines()]
    (snap / "gpqa.jsonl").unlink()
    pq.write_table(pa.Table.from_pylist(gpqa), snap / "PPE-GPQA-Best-of-K" / "data" / "train-00000-of-00001.parquet")
    assert by_subtask(load("ppe", snap))["gpqa"] == 3
    (snap / "ifeval.jsonl").unlink()
    with pytest.raises(UserError, match=r"no file or folder for set 'ifeval'.*~benchmark.ppe.subsets.ifeval"):
        load("ppe", snap)
    cfg = bcfg("ppe", path=str(snap))
    del cfg["subsets"]["ifeval"]
    assert "ifeval" not in by_subtask(load_benchmark("ppe", cfg))


def test_rmb_pairwise_and_best_of_n():
    items = load("rmb", ASSETS / "rmb" / "RMB_dataset")
    assert by_subtask(items) == {"helpfulness_bon": 2, "harmlessness_bon": 2, "harmlessness_pairwise": 3, "helpfulness_pairwise": 6}
    bon = next(i for i in items if i.subtask == "helpfulness_bon")
    assert bon.rule == "all" and bon.pairs == [(0, 1), (0, 2), (0, 3)] and [m["role"] for m in bon.prompt] == ["user", "assistant", "user"]
    assert set(bon.prompt[0]) == {"role", "content"}  # RMB's `language` key dropped
    assert {i.group for i in items if i.subtask == "helpfulness_pairwise"} == {"Pairwise_set/Helpfulness/Chat/Discussion",
                                                                               "Pairwise_set/Helpfulness/Code/Code_Generation"}
    single = load("rmb", ASSETS / "rmb" / "RMB_dataset" / "Pairwise_set" / "Harmlessness" / "S1.json")
    assert by_subtask(single) == {"harmlessness_pairwise": 3}


def test_offsetbias_both_formats():
    bench = load("offsetbias", ASSETS / "offsetbias" / "biasbench.json")
    assert len(bench) == 6 and {i.group for i in bench} == {"length bias", "concreteness", "empty reference"}
    raw = json.loads((ASSETS / "offsetbias" / "biasbench.json").read_text())["length bias"]
    assert [i.pairs for i in bench if i.group == "length bias"] == [[(0, 1)] if r["label"] == 1 else [(1, 0)] for r in raw]
    rows = load("offsetbias", ASSETS / "offsetbias" / "train.jsonl")
    assert [i.pairs for i in rows] == [[(0, 1)], [(1, 0)], [(0, 1)], [(1, 0)]] and {i.subtask for i in rows} == {"offsetbias"}


def test_offsetbias_defaults_to_evalbiasbench_and_warns_on_the_training_set(caplog):
    default = bcfg("offsetbias")["path"]
    assert default.startswith("https://") and default.endswith("/data/evalbiasbench/biasbench.json")
    caplog.set_level("WARNING", logger="worldpm.eval")
    load("offsetbias", ASSETS / "offsetbias" / "biasbench.json")
    assert "training" not in caplog.text
    load("offsetbias", ASSETS / "offsetbias" / "train.jsonl")
    assert "4 rows are OffsetBias *training* pairs" in caplog.text


def test_a_benchmark_url_is_downloaded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    monkeypatch.setenv("WORLDPM_CACHE", str(tmp_path / "cache"))
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "www" / "data" / "evalbiasbench"
    served.mkdir(parents=True)
    shutil.copy(ASSETS / "offsetbias" / "biasbench.json", served / "biasbench.json")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/data/evalbiasbench/biasbench.json"
    try:
        first = load("offsetbias", url)
    finally:
        server.shutdown()
        server.server_close()
    local = load("offsetbias", ASSETS / "offsetbias" / "biasbench.json")
    assert [(i.group, i.responses, i.pairs) for i in first] == [(i.group, i.responses, i.pairs) for i in local]
    assert [(i.group, i.pairs) for i in load("offsetbias", url)] == [(i.group, i.pairs) for i in local]  # server gone: cache
    assert not list((tmp_path / "cache").rglob(".biasbench.json.*"))  # no temporary left behind
    with pytest.raises(UserError, match="cannot download .*missing.json.*benchmark.offsetbias.path="):
        load("offsetbias", url.replace("biasbench.json", "missing.json"))  # the server is down now: refused
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the cache and downloads are off"):
        load("offsetbias", url.replace("biasbench.json", "other.json"))


def test_helpsteer2_preference_file_sign_split_and_turns():
    items = load("helpsteer2", ASSETS / "helpsteer2" / "preference.jsonl.gz")
    rows = [json.loads(line) for line in gzip.open(ASSETS / "helpsteer2" / "preference.jsonl.gz", "rt")]
    kept = [r for r in rows if r["split"] == "val" and r["preference_strength"] != 0]
    assert len(items) == len(kept) == 5
    assert [i.pairs for i in items] == [[(0, 1)] if r["preference_strength"] < 0 else [(1, 0)] for r in kept]
    multi = next(i for i in items if len(i.prompt) > 1)
    assert [m["role"] for m in multi.prompt] == ["user", "assistant", "user"] and multi.prompt[1]["content"] == "Hello, how can I help?"
    assert len(load("helpsteer2", ASSETS / "helpsteer2" / "preference.jsonl.gz", record_split=None)) == 6


def test_ultrafeedback_binarized_and_raw():
    binarized = load("ultrafeedback", ASSETS / "ultrafeedback")  # a directory: test_prefs preferred
    assert by_subtask(binarized) == {"binarized": 4}  # one of five rows has equal scores: excluded
    assert binarized[0].prompt[-1]["role"] == "user" and binarized[0].pairs == [(0, 1)]
    raw = load("ultrafeedback", ASSETS / "ultrafeedback" / "raw.jsonl")
    assert by_subtask(raw) == {"raw": 3}
    scores = raw[1].meta["overall_score"]
    assert scores.count(8.0) == 2 and len(raw[1].pairs) == 5  # 6 pairs of 4 replies, one tie left out
    assert all(scores[a] > scores[b] for a, b in raw[1].pairs)


def test_heldout_pair_records(tmp_path):
    from data_prep.records import pair_id, write_pairs

    rows = [{"id": pair_id("stackexchange", f"t{i}", "a", "b"), "source": "stackexchange" if i % 2 else "reddit",
             "domain": "cooking.stackexchange.com", "thread_id": f"t{i}", "prompt": [{"role": "user", "content": f"Q{i}"}],
             "chosen": "good", "rejected": "bad", "chosen_score": 5.0, "rejected_score": 1.0, "meta": "{}"} for i in range(5)]
    write_pairs(rows, tmp_path / "data" / "test")
    items = load("heldout", tmp_path / "data")
    assert len(items) == 5 and items[0].subtask == "test" and items[0].responses == ["good", "bad"] and items[0].uid == rows[0]["id"]
    assert len(load("heldout", tmp_path / "data" / "test")) == 5
    with pytest.raises(UserError, match="no parquet shards"):
        load("heldout", tmp_path)


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []
    rows = [json.loads(line) for line in (ASSETS / "rewardbench" / "filtered.jsonl").read_text().splitlines()]

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_benchmark("rewardbench", bcfg("rewardbench"))
    assert calls == [("allenai/reward-bench", {"split": "filtered"})] and len(items) == 26
    assert items[0].where == "allenai/reward-bench[filtered][row 0]"
    calls.clear()
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: calls.append((path, kw)) or [])
    with pytest.raises(UserError, match="no items"):
        load_benchmark("ppe", bcfg("ppe"))  # path is the organisation: each set is <org>/<hub name>
    assert calls[0] == ("lmarena-ai/PPE-Human-Preference-V1", {"split": "test"})


def test_an_unreachable_hub_id_is_one_line(monkeypatch):
    with pytest.raises(UserError) as err:
        load("rewardbench", "someone/not-a-dataset")
    assert "someone/not-a-dataset" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,path,needle", [
    ("rewardbench", BAD / "rewardbench_bad_record.jsonl", "rewardbench_bad_record.jsonl:2: missing field 'chosen'"),
    ("rewardbench", BAD / "broken.jsonl", "broken.jsonl:3: not valid JSON"),
    ("rmbench", BAD / "rmbench_two_styles.json", "rmbench_two_styles.json[record 1]: field 'chosen' should hold 3 responses"),
    ("rmb", BAD / "rmb_rejected_key", "Discussion.json[record 0]: missing field 'reject'"),
    ("rewardbench", BAD / "no_such_file.jsonl", "no_such_file.jsonl does not exist"),
    ("rmb", BAD / "no_such_dir", "no_such_dir does not exist"),
    ("ppe", BAD, "no file or folder for set 'human_preference'"),
])
def test_malformed_or_missing_files_fail_in_one_line_naming_file_and_record(name, path, needle):
    with pytest.raises(UserError) as err:
        load(name, path)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,filename,record,needle", [
    ("rewardbench", "rb.jsonl", {"prompt": "q", "chosen": "a", "rejected": "b", "subset": "not-a-subset"}, "unknown RewardBench subset 'not-a-subset'"),
    ("rewardbench2", "rb2.jsonl", {"id": "tie-1", "prompt": "q", "chosen": ["a"], "rejected": ["b"], "subset": "Ties"}, "'ref:N' or 'tied:N'"),
    ("rmbench", "rm.json", [{"prompt": "q", "chosen": ["a"] * 3, "rejected": ["b"] * 3, "domain": "poetry"}], "unknown RM-Bench domain 'poetry'"),
    ("offsetbias", "ob.jsonl", {"instruction": "q", "output_1": "a", "output_2": "b", "label": 3}, "label should be 1 or 2"),
    ("helpsteer2", "hs.jsonl", {"split": "val", "prompt": "q", "response_1": "a", "response_2": "b", "preference_strength": 5}, "in -3..3"),
    ("ultrafeedback", "uf.jsonl", {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                   "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, "same prompt turns"),
    ("ultrafeedback", "uf2.jsonl", {"prompt": "q", "answer": "a"}, "neither a binarized record"),
])
def test_bad_records_name_file_and_record(tmp_path, name, filename, record, needle):
    path = tmp_path / filename
    path.write_text(json.dumps(record) + "\n" if filename.endswith(".jsonl") else json.dumps(record))
    with pytest.raises(UserError) as err:
        load(name, path)
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_ppe_conflict_pair_of_equal_correctness_is_refused(tmp_path):
    row = json.loads((ASSETS / "ppe" / "math.jsonl").read_text().splitlines()[0])
    same = next([i, j] for i in range(32) for j in range(i + 1, 32) if row["scores"][i] == row["scores"][j])
    row["sampled_conflict_pairs"] = [same]
    d = tmp_path / "ppe"
    d.mkdir()
    (d / "math.jsonl").write_text(json.dumps(row) + "\n")
    cfg = bcfg("ppe", path=str(d))
    cfg["subsets"] = {"math": cfg["subsets"]["math"]}
    with pytest.raises(UserError, match=r"math.jsonl:1: conflict pair .* equal correctness"):
        load_benchmark("ppe", cfg)


SUBSAMPLE = ("from tests.test_eval_loaders import ASSETS, load; "
             "print(' '.join(i.uid for i in load('rewardbench', ASSETS / 'rewardbench' / 'filtered.jsonl', max_items=2)))")


def test_max_items_subsamples_each_subtask_reproducibly():
    import os
    import subprocess
    import sys

    from worldpm.eval.benchmarks.registry import subsample

    full = load("rewardbench", ASSETS / "rewardbench" / "filtered.jsonl")
    a = load("rewardbench", ASSETS / "rewardbench" / "filtered.jsonl", max_items=2)
    assert by_subtask(full) == {"chat": 6, "chat_hard": 7, "safety": 5, "reasoning": 8}
    assert by_subtask(a) == {"chat": 2, "chat_hard": 2, "safety": 2, "reasoning": 2}
    order = [i.uid for i in full]
    assert [i.uid for i in a] == [u for u in order if u in {i.uid for i in a}]  # a subset, in file order
    # reproducible across processes (string hashing is salted per process: PYTHONHASHSEED), not only within one
    runs = [subprocess.run([sys.executable, "-c", SUBSAMPLE], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}).stdout.split() for seed in ("1", "2")]
    assert runs[0] == runs[1] == [i.uid for i in a]
    # each subtask's draw depends on the seed and its own name only: other subtasks' items do not move it
    chat = [i for i in full if i.subtask == "chat"]
    assert [i.uid for i in subsample(chat, 2, 0, "rewardbench")] == [i.uid for i in a if i.subtask == "chat"]
    # and the seed matters: some other seed draws a different subset
    assert any([i.uid for i in subsample(full, 2, seed, "rewardbench")] != [i.uid for i in a] for seed in range(1, 4))


def test_json_lines_locators_name_the_file_line_in_one_pass(tmp_path, monkeypatch):
    from worldpm.eval.benchmarks import sources

    rows = [{"a": 1}, {"a": 2}, {"a": 3}]
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n" + json.dumps(rows[0]) + "\r\n\n  \n" + json.dumps(rows[1]) + "\n" + json.dumps(rows[2]))
    opened = []
    real = sources._open_text
    monkeypatch.setattr(sources, "_open_text", lambda p: opened.append(p) or real(p))
    records = sources.read_local(path)
    assert [r.data for r in records] == rows and [r.where for r in records] == [f"{path}:2", f"{path}:5", f"{path}:6"]
    assert opened == [path]  # decompressed once


def test_rmb_reads_through_read_local_and_refuses_a_json_object(tmp_path):
    src = ASSETS / "rmb" / "RMB_dataset" / "Pairwise_set" / "Harmlessness" / "S1.json"
    d = tmp_path / "RMB_dataset" / "Pairwise_set" / "Harmlessness"
    d.mkdir(parents=True)
    rows = [{k: v for k, v in r.items() if k != "category_path"} for r in json.loads(src.read_text())]
    (d / "S1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load("rmb", tmp_path / "RMB_dataset")
    assert by_subtask(items) == {"harmlessness_pairwise": 3} and items[1].where == f"{d / 'S1.jsonl'}:2"
    assert {i.group for i in items} == {"Pairwise_set/Harmlessness/S1"}  # the file's path, data suffix dropped
    (d / "S2.json").write_text(json.dumps({"conversation_input": []}))
    with pytest.raises(UserError, match=r"S2.json: expected a JSON list of RMB records, got a JSON dict"):
        load("rmb", tmp_path / "RMB_dataset")
