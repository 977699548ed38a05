"""`worldpm eval` end to end with the tiny model on every shipped benchmark fixture, the checkpoint-series mode against a run
directory in the trainer's layout, and one-line errors from the command line."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_tiny

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "worldpm" / "assets" / "benchmarks"
ALL = ["rewardbench", "rewardbench2", "rmbench", "ppe", "rmb", "offsetbias", "helpsteer2", "ultrafeedback", "heldout"]
PATHS = {"rewardbench": ASSETS / "rewardbench" / "filtered.jsonl", "rewardbench2": ASSETS / "rewardbench2" / "test.jsonl",
         "rmbench": ASSETS / "rmbench" / "total_dataset.json", "ppe": ASSETS / "ppe", "rmb": ASSETS / "rmb" / "RMB_dataset",
         "offsetbias": ASSETS / "offsetbias" / "biasbench.json", "helpsteer2": ASSETS / "helpsteer2" / "preference.jsonl.gz",
         "ultrafeedback": ASSETS / "ultrafeedback" / "test_prefs.jsonl"}
SUBTASK_KEYS = {"n", "accuracy", "accuracy_ci", "bt_loss", "bt_loss_ci", "category"}


def worldpm(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "worldpm", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def write_heldout(root: Path) -> Path:
    from data_prep.records import pair_id, write_pairs

    rows = [{"id": pair_id("stackexchange", f"t{i}", "a", "b"), "source": "stackexchange", "domain": f"site{i % 2}.stackexchange.com",
             "thread_id": f"t{i}", "prompt": [{"role": "user", "content": f"How do I fix problem {i}?\n\nDetails {i}."}],
             "chosen": f"Restart the service, then check log {i}.", "rejected": "No idea.", "chosen_score": 7.0,
             "rejected_score": 1.0, "meta": "{}"} for i in range(6)]
    write_pairs(rows, root / "test")
    (root / "manifest.json").write_text("{}")
    return root


def save_tiny(path: Path, seed: int = 0, state: dict | None = None) -> Path:
    make_tiny(seed=seed).save_pretrained(path)
    if state is not None:
        (path / "state.json").write_text(json.dumps(state))
    return path


def recompute(rows, rule):
    """Accuracy units and BT losses of one item from rewards.parquet rows alone (independent of worldpm.eval.metrics)."""
    r = {row["response"]: row["reward"] for row in rows}
    pairs = [(row["response"], b) for row in rows for b in row["beats"]]
    diffs = [r[a] - r[b] for a, b in pairs]
    losses = [math.log1p(math.exp(-d)) if d > -30 else -d for d in diffs]
    if not pairs:
        return 0.0, 0, losses
    if rule == "pair":
        return float(sum(d > 0 for d in diffs)), len(pairs), losses
    if rule == "all":
        return float(all(d > 0 for d in diffs)), 1, losses
    return (0.0 if any(d < 0 for d in diffs) else 1.0 / (1 + sum(d == 0 for d in diffs))), 1, losses


@pytest.mark.timeout(600)
def test_every_benchmark_end_to_end_with_the_tiny_model(tmp_path):
    model = save_tiny(tmp_path / "final", state={"step": 30, "pairs_seen": 960, "tokens_seen": 12345, "complete": True})
    heldout = write_heldout(tmp_path / "data")
    out = tmp_path / "eval"
    args = [f"model_path={model}", f"output_dir={out}", f"benchmark=[{','.join(ALL)}]", f"benchmark.heldout.path={heldout}",
            *(f"benchmark.{k}.path={v}" for k, v in PATHS.items())]
    proc = worldpm("eval", *args)  # its speed is measured by scripts/, not asserted here (timings on a shared machine are noise)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert {"model_path", "checkpoint", "benchmarks", "categories", "config"} <= set(results)
    assert results["model_path"] == str(model) and results["checkpoint"]["pairs_seen"] == 960
    assert list(results["benchmarks"]) == ALL
    assert set(results["categories"]) == {"adversarial", "objective", "subjective", "in_distribution"}
    for cat in results["categories"].values():
        assert {"bt_loss", "accuracy", "n_subtasks", "subtasks"} <= set(cat) and cat["n_subtasks"] == len(cat["subtasks"]) > 0
    expected_subtasks = {"rewardbench": {"chat", "chat_hard", "safety", "reasoning"}, "rmbench": {"chat", "code", "math", "safety"},
                         "ppe": {"human_preference", "mmlu_pro", "math", "gpqa", "mbpp_plus", "ifeval"},
                         "rmb": {"helpfulness_pairwise", "harmlessness_pairwise", "helpfulness_bon", "harmlessness_bon"},
                         "heldout": {"test"}}
    for bench, subtasks in expected_subtasks.items():
        assert set(results["benchmarks"][bench]["subtasks"]) == subtasks
    for bench, entry in results["benchmarks"].items():
        assert set(entry) >= {"subtasks", "official"}
        for sub, s in entry["subtasks"].items():
            assert SUBTASK_KEYS <= set(s), (bench, sub)
            if s["accuracy"] is not None:
                assert s["accuracy_ci"][0] <= s["accuracy"] <= s["accuracy_ci"][1]
                assert s["bt_loss_ci"][0] <= s["bt_loss"] <= s["bt_loss_ci"][1]
            cat = s["category"]
            if cat:
                assert f"{bench}/{sub}" in results["categories"][cat]["subtasks"]

    # every accuracy and BT loss recomputed from rewards.parquet alone
    table = pq.read_table(out / "rewards.parquet").to_pylist()
    items = {}
    for row in table:
        items.setdefault((row["benchmark"], row["subtask"], row["item_index"]), []).append(row)
    sums = {}
    for (bench, sub, _), rows in items.items():
        won, n, losses = recompute(rows, rows[0]["rule"])
        s = sums.setdefault((bench, sub), [0.0, 0, []])
        s[0] += won
        s[1] += n
        s[2].extend(losses)
    for (bench, sub), (won, n, losses) in sums.items():
        entry = results["benchmarks"][bench]["subtasks"][sub]
        assert entry["n"] == n
        if n:
            assert entry["accuracy"] == pytest.approx(won / n, abs=1e-9), (bench, sub)
        assert entry["bt_loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5), (bench, sub)
    cats = results["categories"]["adversarial"]
    members = [results["benchmarks"][k.split("/")[0]]["subtasks"][k.split("/")[1]]["bt_loss"] for k in cats["subtasks"]]
    assert cats["bt_loss"] == pytest.approx(float(np.mean(members)))
    # RM-Bench's official hard score from the parquet's style labels
    rm = [rows for (b, _, _), rows in items.items() if b == "rmbench" and rows[0]["subtask"] == "chat"]
    hard = np.mean([[(r[i]["reward"] > r[3 + j]["reward"]) for i in range(3) for j in range(3) if i < j] for r in rm])
    assert rm[0][0]["style"] == "concise" and results["benchmarks"]["rmbench"]["official"]["domains"]["chat"]["hard"] == pytest.approx(hard)
    ppe = results["benchmarks"]["ppe"]["official"]
    assert len(ppe["math"]["best_of_k"]["k"]) == 32 and 0 <= ppe["math"]["roc_auc"] <= 1
    assert set(results["style_control"]) == set(ALL) and "alpha" in results["style_control"]["ppe"]["joint"]

    report = (out / "report.md").read_text()
    for category in ("adversarial", "objective", "subjective"):
        png = out / "plots" / f"{category}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{category}.png" in report
    assert (out / "plots" / "ppe_best_of_k.png").exists() and "## Style control" in report
    assert not list(out.glob(".*tmp*"))


def make_run_dir(root: Path) -> Path:
    """A training run in the trainer's layout (CONVENTIONS.md): checkpoints/step-N/{hf/, state.json}, final/."""
    def state(step):
        return {"step": step, "pairs_seen": step * 32, "tokens_seen": step * 32 * 50, "model_name": "tiny", "n_params": 1,
                "n_params_non_embedding": 1, "seed": 0, "data_path": "runs/data", "complete": True}

    for seed, step in enumerate((10, 20)):
        d = root / "checkpoints" / f"step-{step:08d}"
        save_tiny(d / "hf", seed=seed)
        (d / "state.json").write_text(json.dumps(state(step)))
    save_tiny(root / "checkpoints" / "step-00000030" / "hf", seed=3)  # still being written: no state.json yet
    (root / "checkpoints" / ".step-00000040.tmp-123").mkdir()
    save_tiny(root / "final", seed=2, state=state(35))
    return root


def compose_eval(*overrides):
    from worldpm.config import compose

    return compose("eval", ["benchmark=[rewardbench]", f"benchmark.rewardbench.path={PATHS['rewardbench']}",
                            "bootstrap.samples=50", "report.plots=false", *overrides])


@pytest.mark.timeout(600)
def test_checkpoint_series_writes_one_results_dir_per_checkpoint(tmp_path):
    from worldpm.errors import UserError
    from worldpm.eval.run import run

    run_dir = make_run_dir(tmp_path / "train")
    out = tmp_path / "series"
    series = run(compose_eval("checkpoints=all", f"run_dir={run_dir}", f"output_dir={out}"))
    assert [s["name"] for s in series] == ["step-00000010", "step-00000020", "final"]
    assert [s["pairs_seen"] for s in series] == [320, 640, 1120]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["final", "step-00000010", "step-00000020"]
    first = json.loads((out / "step-00000010" / "results.json").read_text())
    assert first["checkpoint"]["pairs_seen"] == 320 and first["model_path"] == str(run_dir / "checkpoints" / "step-00000010" / "hf")
    final = json.loads((out / "final" / "results.json").read_text())
    assert final["checkpoint"]["step"] == 35 and final["benchmarks"]["rewardbench"]["subtasks"] != first["benchmarks"]["rewardbench"]["subtasks"]
    index = json.loads((out / "series.json").read_text())
    assert [c["name"] for c in index["checkpoints"]] == ["step-00000010", "step-00000020", "final"] and (out / "series.md").exists()

    mtime = (out / "final" / "results.json").stat().st_mtime_ns
    again = run(compose_eval("checkpoints=[step-00000020,final]", f"run_dir={run_dir}", f"output_dir={out}"))
    assert [s["name"] for s in again] == ["step-00000020", "final"]
    assert (out / "final" / "results.json").stat().st_mtime_ns == mtime  # same state.json: not evaluated again
    with pytest.raises(UserError, match=r"\['step-00000030'\] not found complete .*available: step-00000010, step-00000020, final"):
        run(compose_eval("checkpoints=[step-00000030]", f"run_dir={run_dir}", f"output_dir={out}"))
    with pytest.raises(UserError, match="holds no complete checkpoint"):
        run(compose_eval("checkpoints=all", f"run_dir={tmp_path / 'series'}", f"output_dir={out}"))


def test_evaluating_a_step_checkpoint_finds_its_state_one_level_up(tmp_path):
    from worldpm.eval.checkpoints import find_state

    run_dir = make_run_dir(tmp_path / "train")
    assert find_state(str(run_dir / "checkpoints" / "step-00000020" / "hf"))["pairs_seen"] == 640
    assert find_state(str(run_dir / "final"))["step"] == 35 and find_state(str(tmp_path)) == {} and find_state(None) == {}


@pytest.mark.parametrize("args,needle", [
    ([f"benchmark.rewardbench.path={ROOT / 'tests/fixtures/eval/broken.jsonl'}"], "broken.jsonl:3: not valid JSON"),
    ([f"benchmark.rewardbench.path={PATHS['rewardbench']}", "model_path=/no/such/ckpt"], "/no/such/ckpt"),
    (["checkpoints=all"], "needs run_dir"),
    (["benchmark.rmbench.path=x"], "benchmark.rmbench.path"),
    (["benchmark=[nonexistent]"], "nonexistent"),
    (["benchmark.rewardbench.path=/nowhere/rb.jsonl"], "/nowhere/rb.jsonl does not exist"),
])
def test_cli_errors_are_one_line(tmp_path, args, needle):
    base = ["benchmark=[rewardbench]", f"output_dir={tmp_path / 'out'}"]
    proc = worldpm("eval", *base, *args)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "INFO" not in line and "WARNING" not in line]
    assert proc.returncode == 2 and len(lines) == 1 and "error" in lines[0] and needle in lines[0], proc.stderr


def test_missing_output_dir_is_one_line():
    proc = worldpm("eval", "benchmark=[rewardbench]")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "output_dir" in lines[0], proc.stderr


def test_evaluation_never_imports_the_trainer():
    code = ("import sys, worldpm.eval.run as r, worldpm.eval.benchmarks.registry as b, worldpm.eval.scoring, worldpm.eval.report\n"
            "import importlib\n[importlib.import_module(m) for m in b.LOADERS.values()]\n"
            "bad = [m for m in sys.modules if m.startswith(('worldpm.train', 'deepspeed'))]\nassert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
