import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from data_prep.records import PAIR_SCHEMA, ShardWriter, check_record, pair_id, read_pairs, write_pairs
from worldpm.model.bt_loss import bt_loss, bt_losses


def test_bt_loss_against_the_formula():
    c, r = torch.tensor([2.0, 0.0, -1.0, 30.0]), torch.tensor([1.0, 0.0, 3.0, -30.0])
    expected = [math.log1p(math.exp(-(a - b))) for a, b in zip(c.tolist(), r.tolist())]
    assert bt_losses(c, r).tolist() == pytest.approx(expected, rel=1e-6)
    assert bt_loss(c, r).item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    m = torch.tensor([0.5, 0.0, 0.0, 0.0])
    assert bt_losses(c, r, m)[0].item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)
    centred = bt_loss(c, r, center_coefficient=0.01).item()
    assert centred == pytest.approx(sum(expected) / 4 + 0.01 * ((c + r) ** 2).mean().item(), rel=1e-6)
    assert torch.isfinite(bt_losses(torch.tensor([-200.0]), torch.tensor([200.0]))).all()  # no overflow
    assert bt_losses(torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([0.0], dtype=torch.bfloat16)).dtype == torch.float32


def record(i, thread="t1"):
    return {"id": pair_id("stackexchange", thread, f"a{i}", f"b{i}"), "source": "stackexchange", "domain": "cooking.stackexchange.com",
            "thread_id": thread, "prompt": [{"role": "user", "content": f"Q{i}"}], "chosen": "good", "rejected": "bad",
            "chosen_score": 3.0, "rejected_score": 1.0, "meta": json.dumps({"answer_ids": [i]})}


def test_pair_id_is_stable_and_distinct():
    assert pair_id("s", "1", "2", "3") == pair_id("s", "1", "2", "3") != pair_id("s", "1", "3", "2")


def test_shards_are_bounded_and_round_trip(tmp_path):
    shards = write_pairs((record(i) for i in range(25)), tmp_path / "train", max_rows_per_shard=10)
    assert [pq.read_metadata(s).num_rows for s in shards] == [10, 10, 5]
    table = read_pairs(tmp_path / "train")
    assert table.schema == PAIR_SCHEMA and table.num_rows == 25 and table.column("id").to_pylist()[3] == record(3)["id"]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_failed_write_leaves_no_complete_looking_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "train", max_rows_per_shard=100, row_group_rows=2) as w:
            for i in range(5):
                w.write(record(i))
            raise RuntimeError("killed")
    assert list((tmp_path / "train").iterdir()) == []


@pytest.mark.parametrize("field,value,match", [("prompt", [], "prompt"), ("chosen_score", "3", "chosen_score"),
                                               ("chosen", None, "chosen")])
def test_check_record_names_the_bad_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        check_record({**record(0), field: value})


def test_data_prep_imports_neither_torch_nor_worldpm():
    import subprocess
    import sys

    code = ("import sys, pkgutil, importlib, data_prep\n"
            "for m in pkgutil.walk_packages(data_prep.__path__, 'data_prep.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [n for n in ('torch', 'worldpm', 'transformers', 'deepspeed') if n in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
