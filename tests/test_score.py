"""`worldpm score`: conversations and PairRecords in jsonl/parquet/shard directories -> rewards file, accuracy and BT loss."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.records import PAIR_SCHEMA, pair_id, write_pairs
from tests.conftest import conversations
from worldpm.config import compose
from worldpm.errors import UserError
from worldpm.serve.score import run

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def score(tiny_ckpt, *overrides):
    return run(compose("score", [f"model_path={tiny_ckpt}", "device=cpu", *overrides]))


def many_conversations(n=40):
    base = conversations()
    return [[dict(m, content=m["content"] + f" (variant {i})" * (i % 5)) for m in base[i % len(base)]] for i in range(n)]


def pairs(n=12):
    rows = []
    for i, conv in enumerate(many_conversations(n)):
        prompt, reply = conv[:-1], conv[-1]["content"]
        rows.append({"id": pair_id("test", str(i), "a", "b"), "source": "test", "domain": "example.org", "thread_id": str(i),
                     "prompt": prompt, "chosen": reply, "rejected": reply[: len(reply) // 2] + " hm" * (i % 3),
                     "chosen_score": 3.0, "rejected_score": 1.0, "meta": "{}"})
    return rows


def expected_pair_metrics(tiny_rm, rows):
    chosen = tiny_rm.score([r["prompt"] + [{"role": "assistant", "content": r["chosen"]}] for r in rows])
    rejected = tiny_rm.score([r["prompt"] + [{"role": "assistant", "content": r["rejected"]}] for r in rows])
    # independent of worldpm.model.bt_loss: -log sigmoid(d) = log(1 + exp(-d))
    loss = sum(math.log1p(math.exp(-(c - j))) for c, j in zip(chosen, rejected)) / len(rows)
    accuracy = sum(c > j for c, j in zip(chosen, rejected)) / len(rows)
    return chosen, rejected, accuracy, loss


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_conversations_to_a_rewards_file_in_input_order(tiny_rm, tiny_ckpt, tmp_path, suffix):
    convs = many_conversations()
    src = tmp_path / "convs.jsonl"
    # the three row shapes: a bare list, {"conversation"}, {"messages", "id"}
    src.write_text("".join(json.dumps(c if i % 3 == 0 else {"conversation": c} if i % 3 == 1 else {"messages": c, "id": f"c{i}"})
                           + "\n" for i, c in enumerate(convs)))
    out = tmp_path / f"rewards.{suffix}"
    # small chunks and batches: many length-sorted batches, and rows must still come back in input order
    summary = score(tiny_ckpt, f"input={src}", f"output={out}", "chunk_size=7", "max_tokens_per_batch=300", "max_batch_size=4")
    rows = pq.read_table(out).to_pylist() if suffix == "parquet" else [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(convs)))
    assert [r["reward"] for r in rows] == pytest.approx(tiny_rm.score(convs), abs=TOL)
    assert [r.get("id") for r in rows] == [f"c{i}" if i % 3 == 2 else None for i in range(len(convs))]
    assert summary["n"] == len(convs) and summary["tokens"] == sum(map(len, tiny_rm.encode(convs))) and summary["tokens_per_s"] > 0
    assert json.loads((tmp_path / "rewards.summary.json").read_text())["n"] == len(convs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["convs.jsonl", out.name, "rewards.summary.json"])  # no temp files


def test_parquet_conversations_and_truncation_keep_the_reward_token(tiny_rm, tiny_ckpt, tmp_path):
    convs = many_conversations(10)
    pq.write_table(pa.Table.from_pylist([{"id": str(i), "messages": c} for i, c in enumerate(convs)]), tmp_path / "in.parquet")
    summary = score(tiny_ckpt, f"input={tmp_path / 'in.parquet'}", f"output={tmp_path / 'out.jsonl'}", "max_length=40")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in rows] == pytest.approx(tiny_rm.score(convs, max_length=40), abs=TOL)
    assert summary["truncated"] == sum(len(s) > 40 for s in tiny_rm.encode(convs)) > 0


@pytest.mark.parametrize("layout", ["shards", "collect_output", "parquet_file", "jsonl"])
def test_pair_records_give_accuracy_and_bt_loss(tiny_rm, tiny_ckpt, tmp_path, layout):
    rows = pairs()
    if layout == "shards":
        write_pairs(rows, tmp_path / "shards", max_rows_per_shard=5)  # three shards
        src = tmp_path / "shards"
    elif layout == "collect_output":
        write_pairs(rows[:3], tmp_path / "run" / "train")
        write_pairs(rows, tmp_path / "run" / "test", max_rows_per_shard=4)
        src = tmp_path / "run"  # read at split=test (the default)
    elif layout == "parquet_file":
        pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), tmp_path / "pairs.parquet")
        src = tmp_path / "pairs.parquet"
    else:
        src = tmp_path / "pairs.jsonl"
        src.write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt", "chosen", "rejected")}) + "\n" for r in rows))
    out = tmp_path / "pair_rewards.parquet"
    summary = score(tiny_ckpt, f"input={src}", f"output={out}", "chunk_size=5")
    chosen, rejected, accuracy, loss = expected_pair_metrics(tiny_rm, rows)
    got = pq.read_table(out).to_pylist()
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert [r["chosen_reward"] for r in got] == pytest.approx(chosen, abs=TOL)
    assert [r["rejected_reward"] for r in got] == pytest.approx(rejected, abs=TOL)
    assert 0 < accuracy < 1 and summary["kind"] == "pairs" and summary["n"] == len(rows)
    assert summary["accuracy"] == pytest.approx(accuracy) and summary["bt_loss"] == pytest.approx(loss, abs=1e-5)
    on_disk = json.loads((tmp_path / "pair_rewards.summary.json").read_text())
    assert on_disk["accuracy"] == summary["accuracy"] and on_disk["bt_loss"] == summary["bt_loss"]


def test_a_string_prompt_is_one_user_turn(tiny_rm, tiny_ckpt, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "Paint."}) + "\n")
    summary = score(tiny_ckpt, f"input={src}", f"output={tmp_path / 'o.jsonl'}")
    (row,) = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    user = {"role": "user", "content": "Why is the sky blue?"}
    assert row["chosen_reward"] == pytest.approx(tiny_rm.score([[user, {"role": "assistant", "content": "Rayleigh scattering."}]])[0], abs=TOL)
    assert summary["accuracy"] == (1.0 if row["chosen_reward"] > row["rejected_reward"] else 0.0)


@pytest.mark.parametrize("content,needle", [
    ("not json\n", "not valid JSON"),
    (json.dumps({"text": "no conversation"}) + "\n", "'conversation'/'messages'"),
    (json.dumps([{"role": "user", "content": "no reply"}]) + "\n", "last message must be the assistant"),
    ("", "is empty"),
])
def test_bad_rows_are_one_line_errors_naming_the_line(tiny_ckpt, tmp_path, content, needle):
    src = tmp_path / "bad.jsonl"
    good = json.dumps(conversations()[0]) + "\n"
    src.write_text(good * 3 + content if content else "")
    with pytest.raises(UserError, match=needle) as exc:
        score(tiny_ckpt, f"input={src}", f"output={tmp_path / 'out.parquet'}", "chunk_size=2")
    assert "\n" not in str(exc.value) and (content == "" or "bad.jsonl:4" in str(exc.value))
    assert not (tmp_path / "out.parquet").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]  # no half file


def test_bad_inputs_and_outputs_are_named(tiny_ckpt, tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "other.parquet")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "fake.parquet").write_text("not parquet")
    cases = [([f"input={tmp_path / 'x.csv'}"], "unknown format"),
             ([f"input={tmp_path / 'other.parquet'}"], "neither PairRecord columns"),
             ([f"input={tmp_path / 'empty_dir'}"], "no PairRecord shards"),
             ([f"input={tmp_path / 'fake.parquet'}"], "not a readable parquet file"),
             ([f"input={ROOT / 'worldpm/assets/examples/worldpm_readme.jsonl'}", "output=out.txt"], "out.txt"),
             ([f"input={ROOT / 'worldpm/assets/examples/worldpm_readme.jsonl'}", "chunk_size=0"], "chunk_size")]
    for overrides, needle in cases:
        with pytest.raises(UserError, match=needle):
            score(tiny_ckpt, *overrides)


def test_cli_scores_pairs_and_prints_without_output(tiny_ckpt, tmp_path):
    write_pairs(pairs(4), tmp_path / "shards")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "worldpm", "score", f"model_path={tiny_ckpt}", f"input={tmp_path / 'shards'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert [x[0] for x in lines] == ["0", "1", "2", "3"] and all(len(x) == 3 for x in lines)
    assert "accuracy" in out.stderr and "BT loss" in out.stderr


def test_cli_lone_surrogate_is_one_line_naming_the_line(tiny_ckpt, tmp_path):
    src = tmp_path / "convs.jsonl"
    bad = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "cut \ud800 here"}]
    src.write_text(json.dumps(conversations()[0]) + "\n" + json.dumps(bad) + "\n")  # json.dumps writes the escape "\\ud800"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "worldpm", "score", f"model_path={tiny_ckpt}", f"input={src}",
                          f"output={tmp_path / 'r.jsonl'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "convs.jsonl:2: message 1 content: not valid Unicode: lone surrogate" in errors[0], out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r.jsonl").exists()


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity (Python's json accepts them; JSON does not)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_summary_of_no_pairs_is_strict_json(tiny_ckpt, tmp_path):
    from worldpm.atomic_dir import write_json

    src = tmp_path / "none.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=PAIR_SCHEMA), src)
    summary = score(tiny_ckpt, f"input={src}", f"output={tmp_path / 'out.jsonl'}")
    assert summary["n"] == 0 and math.isnan(summary["accuracy"]) and math.isnan(summary["bt_loss"])
    on_disk = _strict_json((tmp_path / "out.summary.json").read_text())
    assert on_disk["n"] == 0 and on_disk["accuracy"] is None and on_disk["bt_loss"] is None
    path = write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert _strict_json(path.read_text()) == {"a": None, "b": [None, 1.5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.parquet", "out.jsonl", "out.summary.json", "x.json"]
