"""`worldpm compare`: two real `worldpm eval` outputs of two tiny models on benchmark fixtures (pairwise, multi-pair and
best-of-N rules). Every figure is recomputed here from the two rewards.parquet alone; the paired CI is checked against an
independent bootstrap; an eval compared with itself differs by exactly 0; evals of different items are refused in one line."""
import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.test_eval_run import PATHS, save_tiny

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ["helpsteer2", "rmbench", "rmb"]


def evaluate(model_dir: Path, out: Path, benchmarks=BENCHMARKS) -> Path:
    from worldpm.config import compose
    from worldpm.eval.run import run

    run(compose("eval", [f"model_path={model_dir}", f"benchmark=[{','.join(benchmarks)}]", f"output_dir={out}", "style.enabled=false",
                         "report.plots=false", "bootstrap.samples=200", *[f"benchmark.{b}.path={PATHS[b]}" for b in benchmarks]]))
    return out


@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return (evaluate(save_tiny(root / "m0", seed=0), root / "eval-a"), evaluate(save_tiny(root / "m1", seed=11), root / "eval-b"))


def compare(a, b, out, *extra):
    from worldpm.config import compose
    from worldpm.eval.compare import run

    run(compose("compare", [f"a={a}", f"b={b}", f"output_dir={out}", "a_name=from_base", "b_name=from_worldpm",
                            "bootstrap.samples=2000", *extra]))
    return json.loads((Path(out) / "compare.json").read_text())


def per_item(directory: Path) -> dict:
    """{(benchmark, subtask): {item_index: (accuracy won, accuracy units, [BT losses])}} from rewards.parquet alone."""
    rows = pq.read_table(directory / "rewards.parquet").to_pylist()
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["benchmark"], r["subtask"])][r["item_index"]].append(r)
    out = {}
    for key, items in groups.items():
        out[key] = {}
        for i, rs in items.items():
            reward = {r["response"]: r["reward"] for r in rs}
            diffs = [reward[r["response"]] - reward[b] for r in rs for b in r["beats"]]
            losses = [math.log1p(math.exp(-d)) for d in diffs]
            if rs[0]["rule"] == "pair":
                won, units = sum(d > 0 for d in diffs), len(diffs)
            else:  # "all": the item counts once, won only when every pair is
                assert rs[0]["rule"] == "all"
                won, units = float(bool(diffs) and all(d > 0 for d in diffs)), int(bool(diffs))
            out[key][i] = (won, units, losses)
    return out


def figures(items: dict) -> tuple[float, float]:
    won = sum(v[0] for v in items.values())
    units = sum(v[1] for v in items.values())
    losses = [x for v in items.values() for x in v[2]]
    return won / units, sum(losses) / len(losses)


def test_every_figure_is_recomputed_from_the_two_rewards_tables(evals, tmp_path):
    a, b = evals
    result = compare(a, b, tmp_path / "cmp")
    ia, ib = per_item(a), per_item(b)
    assert set(result["subtasks"]) == {f"{bench}/{sub}" for bench, sub in ia}
    cats = defaultdict(list)
    for (bench, sub), items in ia.items():
        s = result["subtasks"][f"{bench}/{sub}"]
        (acc_a, loss_a), (acc_b, loss_b) = figures(items), figures(ib[(bench, sub)])
        assert s["accuracy"]["from_base"] == pytest.approx(acc_a, abs=1e-12)
        assert s["accuracy"]["from_worldpm"] == pytest.approx(acc_b, abs=1e-12)
        assert s["accuracy"]["difference"] == pytest.approx(acc_b - acc_a, abs=1e-12)
        assert s["bt_loss"]["difference"] == pytest.approx(loss_b - loss_a, abs=1e-6)  # the BT loss is computed in fp32 (bt_losses)
        assert s["n_items"] == len(items)
        lo, hi = s["bt_loss"]["difference_ci"]
        assert lo <= s["bt_loss"]["difference"] <= hi
        results = json.loads((a / "results.json").read_text())
        assert s["category"] == results["benchmarks"][bench]["subtasks"][sub]["category"]
        if s["category"]:
            cats[s["category"]].append((acc_b - acc_a, loss_b - loss_a))
    for cat, diffs in cats.items():  # a category: the unweighted mean over its subtasks
        assert result["categories"][cat]["accuracy"]["difference"] == pytest.approx(np.mean([d[0] for d in diffs]), abs=1e-12)
        assert result["categories"][cat]["bt_loss"]["difference"] == pytest.approx(np.mean([d[1] for d in diffs]), abs=1e-6)
    for name in ("compare.md", "compare.png", "compare.json"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "from_worldpm vs from_base" in table and "| helpsteer2/helpsteer2 |" in table


def test_the_ci_is_a_paired_item_bootstrap(evals, tmp_path):
    """An independent paired bootstrap (own generator, more draws) of the BT-loss difference on the largest subtask."""
    a, b = evals
    result = compare(a, b, tmp_path / "cmp")
    ia, ib = per_item(a), per_item(b)
    key = max(ia, key=lambda k: len(ia[k]))
    ids = sorted(ia[key])
    la = np.array([sum(ia[key][i][2]) for i in ids])
    lb = np.array([sum(ib[key][i][2]) for i in ids])
    n = np.array([len(ia[key][i][2]) for i in ids], dtype=float)
    rng = np.random.default_rng(12345)
    draws = rng.integers(0, len(ids), size=(20000, len(ids)))
    diffs = la[draws].sum(1) / n[draws].sum(1) - lb[draws].sum(1) / n[draws].sum(1)
    want = np.percentile(-diffs, [2.5, 97.5])
    got = result["subtasks"][f"{key[0]}/{key[1]}"]["bt_loss"]["difference_ci"]
    width = want[1] - want[0]
    assert got == pytest.approx(list(want), abs=0.08 * width + 1e-3), (got, want)
    # unpaired intervals would be much wider: the paired one is narrower than the sum of the two models' own half-widths
    own = [json.loads((d / "results.json").read_text())["benchmarks"][key[0]]["subtasks"][key[1]]["bt_loss_ci"] for d in (a, b)]
    assert got[1] - got[0] < (own[0][1] - own[0][0]) + (own[1][1] - own[1][0])


def test_an_eval_compared_with_itself_differs_by_exactly_zero(evals, tmp_path):
    a, _ = evals
    result = compare(a, a, tmp_path / "self")
    for s in [*result["subtasks"].values(), *result["categories"].values()]:
        for metric in ("accuracy", "bt_loss"):
            assert s[metric]["difference"] == 0 and s[metric]["difference_ci"] == [0.0, 0.0] and not s[metric]["ci_excludes_0"]


def test_evals_of_different_items_are_refused_in_one_line(evals, tmp_path):
    from worldpm.errors import UserError

    a, _ = evals
    other = evaluate(Path(a).parent / "m0", tmp_path / "other", ["helpsteer2"])
    with pytest.raises(UserError, match="not the same items") as err:
        compare(a, other, tmp_path / "cmp")
    assert "\n" not in str(err.value) and not (tmp_path / "cmp" / "compare.json").exists()


def test_the_cli_verb_names_a_missing_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "worldpm", "compare", f"a={tmp_path / 'nope'}", f"b={tmp_path}",
                          f"output_dir={tmp_path / 'o'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stderr.splitlines() if "error" in line]
    assert out.returncode == 2 and len(lines) == 1 and "nope" in lines[0], out.stderr
