"""Best-of-N: the exact best-of-K expectation with real-valued gold rewards, the synthetic world's best-of-N benchmark against
proxies whose behaviour is planted (the gold reward itself, a proxy that loves a penalised word, a reversed one), Gao et al.'s
fit, PPE's best-of-K curves on the other benchmarks with several responses per prompt, and `worldpm eval` end to end (one
model and a checkpoint series) with its plots."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from worldpm.eval.benchmarks import bon_synthetic
from worldpm.eval.metrics import best_of_k

ASSETS = Path(__file__).resolve().parents[1] / "worldpm" / "assets" / "benchmarks"


def brute_force(rewards, values, k):
    """The mean value of the reward-argmax over every k-subset, ties at the top shared equally."""
    total = []
    for subset in itertools.combinations(range(len(rewards)), k):
        top = max(rewards[i] for i in subset)
        winners = [i for i in subset if rewards[i] == top]
        total.append(sum(values[i] for i in winners) / len(winners))
    return sum(total) / len(total)


def test_best_of_k_takes_real_values_exactly():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 9))
        rewards = rng.integers(0, 4, size=n).tolist()  # ties
        values = rng.normal(size=n).tolist()
        got = best_of_k(rewards, values, list(range(1, n + 2)))
        assert got[:n].tolist() == pytest.approx([brute_force(rewards, values, k) for k in range(1, n + 1)], abs=1e-12)
        assert math.isnan(got[n])
    big = rng.normal(size=256)
    assert best_of_k(big, big, [256])[0] == pytest.approx(big.max()) and best_of_k(big, big, [1])[0] == pytest.approx(big.mean())


def test_kl_and_the_gao_fit():
    assert bon_synthetic.kl_best_of_n([1, 2, 256]).tolist() == pytest.approx([0.0, math.log(2) - 0.5, math.log(256) - 255 / 256])
    d = np.sqrt(bon_synthetic.kl_best_of_n(np.arange(1, 257)))
    alpha, beta = bon_synthetic.fit_gao(d, d * (1.7 - 0.6 * d))
    assert (alpha, beta) == pytest.approx((1.7, 0.6), abs=1e-9)
    assert bon_synthetic.fit_grid(256)[:6] == [1, 2, 3, 4, 6, 8] and bon_synthetic.fit_grid(256)[-1] == 256
    assert bon_synthetic.kl_best_of_n(bon_synthetic._n_at(1.3)) == pytest.approx(1.3 ** 2, rel=1e-6)


@pytest.fixture(scope="module")
def items():
    return bon_synthetic.load({"prompts": 60, "samples": 128, "seed": 3}, "bon_synthetic")


def test_the_loader_draws_replies_from_the_training_generator_with_their_gold_rewards(items, tmp_path):
    from data_prep.synthetic import true_reward, write_synthetic_dataset

    assert len(items) == 60 and all(len(it.responses) == 128 for it in items)
    it = items[0]
    assert it.meta["gold"] == [true_reward(r) for r in it.responses] and it.prompt[0]["content"].startswith("Write a short note")
    assert all(it.meta["gold"][a] > it.meta["gold"][b] for a, b in it.pairs) and len(it.pairs) <= 64
    assert bon_synthetic.load({"prompts": 60, "samples": 128, "seed": 3}, "x")[5].responses == items[5].responses  # seeded
    write_synthetic_dataset(tmp_path / "d", n_pairs=200, scale=2.0, reply_words=8)
    scaled = bon_synthetic.load({"path": str(tmp_path / "d"), "prompts": 2, "samples": 4}, "x")
    assert all(len(r.split()) == 8 for r in scaled[0].responses)
    assert scaled[0].meta["gold"] == [true_reward(r, 2.0) for r in scaled[0].responses]
    from worldpm.errors import UserError

    with pytest.raises(UserError, match="benchmark.x.path: .* is not a source=synthetic dataset"):
        bon_synthetic.load({"path": str(tmp_path)}, "x")
    with pytest.raises(UserError, match="benchmark.x.samples=1 must be a whole number >= 2"):
        bon_synthetic.load({"samples": 1}, "x")


def test_a_proxy_that_is_the_gold_reward_is_the_oracle_and_never_over_optimises(items):
    gold = [np.asarray(it.meta["gold"]) for it in items]
    out = bon_synthetic.official(items, gold, {"bootstrap_samples": 200})
    assert out["gold"] == pytest.approx(out["oracle"]) and out["accuracy"] == 1.0
    assert out["gold_end"] == out["gold_peak"] and out["peak_n"] == 128 and not out["overoptimised"]
    assert out["fit"]["alpha"] > 0 and out["gold_ci"][0][10] <= out["gold"][10] <= out["gold_ci"][1][10]
    assert out["gold"][0] == pytest.approx(np.mean([g.mean() for g in gold]))  # N = 1: a random reply


def test_a_proxy_that_loves_a_penalised_word_is_over_optimised(items):
    """Goodhart planted: the proxy is the gold reward plus a large bonus per "cannot" (gold weight -0.5). A little pressure
    finds good replies; more finds replies stuffed with "cannot", and the gold reward falls."""
    from data_prep.synthetic import feature_counts

    def proxy(bonus):
        return [np.asarray([g + bonus * feature_counts(r).get("cannot", 0) for g, r in zip(it.meta["gold"], it.responses)])
                for it in items]

    out = bon_synthetic.official(items, proxy(3.0), {"bootstrap_samples": 200})
    assert out["overoptimised"] and out["fit"]["beta_ci"][0] > 0 and out["fit"]["n_peak"] <= 64
    assert out["peak_n"] < 64 and out["gold_end"] < out["gold_peak"]
    mild = bon_synthetic.official(items, proxy(0.5), {"bootstrap_samples": 200})  # a small bias: still helps at N = 128
    assert not mild["overoptimised"] and mild["peak_n"] == 128 and mild["gold_end"] > 2 * out["gold_end"]
    reversed_ = bon_synthetic.official(items, [-np.asarray(it.meta["gold"]) for it in items], {"bootstrap_samples": 50})
    assert reversed_["gold_end"] < reversed_["gold_start"] < 0.5 and reversed_["fit"]["alpha"] < 0 and not reversed_["overoptimised"]


def test_best_of_k_curves_for_every_benchmark_with_several_responses(tiny_rm):
    from tests.test_eval_loaders import load
    from worldpm.eval.benchmarks.registry import official
    from worldpm.eval.metrics import best_of_k_curve
    from worldpm.eval.scoring import score_items

    for name, path, subtasks in (("rmbench", ASSETS / "rmbench" / "total_dataset.json", {"chat", "code", "math", "safety"}),
                                 ("rewardbench2", ASSETS / "rewardbench2" / "test.jsonl", None),
                                 ("rmb", ASSETS / "rmb" / "RMB_dataset", {"helpfulness_bon", "harmlessness_bon"})):
        items = load(name, path)
        scored = score_items(tiny_rm, items, desc=name)
        curves = official(name, {"subsets": {}} if name != "rewardbench2" else _rb2_cfg(), items, scored.rewards)["best_of_k"]
        assert curves and (subtasks is None or set(curves) == subtasks & {it.subtask for it in items}), (name, set(curves))
        for sub, curve in curves.items():
            part = [(it, r) for it, r in zip(items, scored.rewards) if it.subtask == sub]
            k_max = max(len(it.responses) for it, _ in part)
            assert curve["k"] == list(range(1, k_max + 1)) and curve["oracle"][-1] == pytest.approx(1.0)
            first = np.mean([np.mean(it.correct) for it, _ in part])
            assert curve["random_pick"] == pytest.approx(first)  # K = 1: a random response's correctness
            assert curve == best_of_k_curve([it for it, _ in part], [r for _, r in part])


def _rb2_cfg():
    from worldpm.config import compose

    return dict(compose("eval", ["benchmark=[rewardbench2]", "output_dir=x"]).benchmark.rewardbench2)


def test_worldpm_eval_best_of_n_one_model_and_a_checkpoint_series(tmp_path):
    from tests.test_eval_run import make_run_dir
    from worldpm.config import compose
    from worldpm.eval.run import run

    common = ["benchmark=[bon_synthetic]", "benchmark.bon_synthetic.prompts=12", "benchmark.bon_synthetic.samples=32",
              "benchmark.bon_synthetic.bootstrap_samples=50", "style.enabled=false"]
    results = run(compose("eval", [*common, f"output_dir={tmp_path / 'one'}"]))
    o = results["benchmarks"]["bon_synthetic"]["official"]
    assert o["n"] == list(range(1, 33)) and len(o["gold"]) == len(o["proxy"]) == len(o["oracle"]) == len(o["gold_ci"][0]) == 32
    assert results["benchmarks"]["bon_synthetic"]["subtasks"]["best_of_n"]["category"] is None
    assert results["categories"]["adversarial"]["n_subtasks"] == 0  # reported on its own, in no category mean
    report = (tmp_path / "one" / "report.md").read_text()
    assert "Gao et al.'s fit" in report and (tmp_path / "one" / "plots" / "bon_synthetic.png").read_bytes()[:4] == b"\x89PNG"
    series = run(compose("eval", [*common, "checkpoints=all", f"run_dir={make_run_dir(tmp_path / 'train')}",
                                  f"output_dir={tmp_path / 'series'}"]))
    assert [sorted(s["best_of_n"]) for s in series] == [["bon_synthetic"]] * 3
    index = json.loads((tmp_path / "series" / "series.json").read_text())
    assert index["checkpoints"][0]["best_of_n"]["bon_synthetic"]["gold"] == series[0]["best_of_n"]["bon_synthetic"]["gold"]
    md = (tmp_path / "series" / "series.md").read_text()
    assert "## Best-of-N against the gold reward: bon_synthetic" in md and md.count("| step-0000") >= 2
    assert (tmp_path / "series" / "series_bon_synthetic.png").exists()
