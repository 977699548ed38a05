"""Every evaluation metric against values computed by hand on crafted rewards (no model involved)."""
import itertools
import math

import numpy as np
import pytest

from worldpm.eval.bootstrap import percentile_ci, ratio_replicates, rng_for
from worldpm.eval.categories import aggregate
from worldpm.eval.items import Item, group_indices
from worldpm.eval.metrics import accuracy_by, accuracy_of, best_of_k, item_stats, oracle_best_of_k, roc_auc


def pair_item(rule="pair", n=2, pairs=((0, 1),), subtask="s", group="", **kw):
    return Item(subtask=subtask, uid="u", prompt=[{"role": "user", "content": "q"}], responses=[f"r{i}" for i in range(n)],
                pairs=list(pairs), rule=rule, group=group, **kw)


def softplus_neg(x):
    return math.log1p(math.exp(-x))


def test_pairwise_accuracy_counts_a_tie_as_wrong_and_bt_loss_is_the_formula():
    items = [pair_item() for _ in range(3)]
    rewards = [np.array([2.0, 1.0]), np.array([0.5, 0.5]), np.array([-1.0, 1.0])]
    stats = item_stats(items, rewards)
    assert stats.accuracy == pytest.approx(1 / 3)
    assert stats.bt_loss == pytest.approx((softplus_neg(1.0) + math.log(2) + softplus_neg(-2.0)) / 3, rel=1e-6)


def test_group_indices_and_accuracy_by_match_item_stats_on_each_slice():
    items = [pair_item("pair", 3, [(0, 1), (0, 2)], subtask="a", group="x", meta={"flags": ["f", "g"]}),
             pair_item("all", 3, [(0, 1), (0, 2)], subtask="b", group="", meta={"flags": ["g"]}),
             pair_item("top_share", 3, [(0, 1), (0, 2)], subtask="a", group="x", meta={"flags": []}),
             pair_item("pair", 2, subtask="b", group="y", meta={"flags": ["f"]})]
    rewards = [np.array(r, dtype=float) for r in ([1, 0, 1], [2, 1, 0], [1, 1, 0], [0, 1])]
    assert group_indices(items, "subtask") == {"a": [0, 2], "b": [1, 3]}
    assert group_indices(items, lambda it: it.group or None) == {"x": [0, 2], "y": [3]}
    assert group_indices(items, lambda it: it.meta["flags"]) == {"f": [0, 3], "g": [0, 1]}
    by = accuracy_by(items, rewards, "group")
    assert list(by) == ["", "x", "y"]
    for g, ix in group_indices(items, "group").items():
        stats = item_stats([items[i] for i in ix], [rewards[i] for i in ix])
        assert by[g] == {"n": len(ix), "accuracy": stats.accuracy} and accuracy_of(items, rewards, ix) == stats.accuracy
    assert accuracy_of(items, rewards) == item_stats(items, rewards).accuracy
    assert accuracy_of(items, rewards, []) is None


def test_rmb_best_of_n_counts_only_if_the_best_beats_every_loser():
    best_of_n = [pair_item("all", 3, [(0, 1), (0, 2)]) for _ in range(3)]
    rewards = [np.array([3.0, 1.0, 2.0]),  # beats both: 1
               np.array([2.0, 1.0, 2.0]),  # ties a loser: 0
               np.array([2.0, 3.0, 1.0])]  # loses to one: 0
    stats = item_stats(best_of_n, rewards)
    assert stats.accuracy == pytest.approx(1 / 3) and stats.acc_n.tolist() == [1, 1, 1]
    assert stats.loss_n.sum() == 6  # BT loss still averages over every (best, loser) pair
    # the same responses under the pairwise rule: 2 + 1 + 1 of 6 pairs won
    assert item_stats([pair_item("pair", 3, [(0, 1), (0, 2)]) for _ in range(3)], rewards).accuracy == pytest.approx(4 / 6)


@pytest.mark.parametrize("rewards,expected", [([2, 1, 1, 1], 1.0), ([2, 2, 1, 2], 1 / 3), ([2, 2, 1, 1], 1 / 2),
                                              ([2, 3, 1, 1], 0.0), ([2, 2, 3, 1], 0.0), ([1, 1, 1, 1], 1 / 4)])
def test_rewardbench2_best_of_4_shares_a_k_way_tie_at_the_top(rewards, expected):
    item = pair_item("top_share", 4, [(0, 1), (0, 2), (0, 3)])
    assert item_stats([item], [np.array(rewards, dtype=float)]).accuracy == pytest.approx(expected)


def test_rewardbench_sections_weight_subsets_by_example_counts():
    from worldpm.config import compose
    from worldpm.eval.benchmarks.rewardbench import official

    bcfg = compose("eval", ["output_dir=x", "benchmark=[rewardbench]"]).benchmark.rewardbench
    assert bcfg.sections.reasoning["math-prm"] == 984 and bcfg.sections.reasoning["hep-go"] == 164
    spec = [("alpacaeval-easy", [1, 1]), ("mt-bench-easy", [1, 0]), ("math-prm", [1, 0]), ("hep-python", [1]),
            ("llmbar-natural", [0]), ("donotanswer", [1, 1])]
    items, rewards = [], []
    for subset, outcomes in spec:
        for won in outcomes:
            items.append(pair_item(group=subset))
            rewards.append(np.array([1.0, 0.0]) if won else np.array([0.0, 1.0]))
    out = official(items, rewards, bcfg)
    chat = (1.0 * 100 + 0.5 * 28) / (100 + 28)
    reasoning = (0.5 * 984 + 1.0 * 164) / (984 + 164)
    assert out["sections"] == pytest.approx({"chat": chat, "chat_hard": 0.0, "safety": 1.0, "reasoning": reasoning})
    assert out["final"] == pytest.approx((chat + 0.0 + 1.0 + reasoning) / 4)
    assert reasoning != pytest.approx(2 / 3)  # the unweighted pooled accuracy differs: the weighting matters
    assert out["subsets"]["mt-bench-easy"] == {"n": 2, "accuracy": 0.5} and out["sections_missing"] == []


# rewardbench 0.1.4 (`rewardbench/constants.py`): EXAMPLE_COUNTS and SUBSET_MAPPING, as the package ships them.
# scripts/interop_check.sh reads them from the installed package and compares again.
REWARDBENCH_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "math-prm": 984, "refusals-dangerous": 100, "refusals-offensive": 100, "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164}
REWARDBENCH_SECTIONS = {"chat": "Chat", "chat_hard": "Chat Hard", "safety": "Safety", "reasoning": "Reasoning"}


def test_rewardbench_weights_are_rewardbenchs_example_counts():
    from worldpm.config import compose

    sections = compose("eval", ["output_dir=x", "benchmark=[rewardbench]"]).benchmark.rewardbench.sections
    assert set(sections) == set(REWARDBENCH_SECTIONS)
    assert {s: c for counts in sections.values() for s, c in counts.items()} == REWARDBENCH_EXAMPLE_COUNTS


def test_rewardbench_safety_when_the_two_xstest_subsets_differ():
    """The issue's case: XSTest should-refuse all wrong, should-respond all right, every other safety subset right."""
    from worldpm.config import compose
    from worldpm.eval.benchmarks.rewardbench import section_scores

    sections = compose("eval", ["output_dir=x", "benchmark=[rewardbench]"]).benchmark.rewardbench.sections
    accuracy = {s: 1.0 for s in sections.safety}
    accuracy["xstest-should-refuse"] = 0.0
    # by hand with rewardbench's weights: (100 + 100 + 250 + 136) / (100 + 100 + 154 + 250 + 136)
    assert section_scores(accuracy, sections)["safety"] == pytest.approx(586 / 740) == pytest.approx(0.7919, abs=5e-5)


def test_rmbench_matrix_on_two_items():
    from worldpm.eval.benchmarks.rmbench import official, style_matrix

    a = np.array([3, 2, 1, 2.5, 1.5, 0.5])  # chosen [c0, c1, c2], rejected [r0, r1, r2]
    b = np.array([0, 1, 2, 1, 1, 1])        # ties with every rejected at c1: wrong
    m = style_matrix([a, b])
    assert m.tolist() == [[0.5, 0.5, 0.5], [0.0, 0.5, 0.5], [0.5, 0.5, 1.0]]
    items = [pair_item(n=6, pairs=[(i, 3 + j) for i in range(3) for j in range(3)], subtask="chat") for _ in range(2)]
    out = official(items, [a, b], {})
    chat = out["domains"]["chat"]
    assert chat["hard"] == pytest.approx(0.5) and chat["normal"] == pytest.approx(2 / 3) and chat["easy"] == pytest.approx(1 / 3)
    assert chat["average"] == pytest.approx(0.5) and out["overall"] == pytest.approx(0.5)
    # a second domain: overall and easy/normal/hard are means over domains
    items.append(pair_item(n=6, pairs=items[0].pairs, subtask="math"))
    out = official(items, [a, b, np.array([1, 1, 1, 0, 0, 0.0])], {})
    assert out["overall"] == pytest.approx((0.5 + 1.0) / 2) and out["hard"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["easy"] == pytest.approx((1 / 3 + 1.0) / 2) and out["domains_missing"] == ["code", "safety"]
    # the subtask accuracy pools the 9 pairs of each item: the mean of the matrix
    assert item_stats(items[:2], [a, b]).accuracy == pytest.approx(m.mean())


def brute_force_best_of_k(rewards, correct, k):
    total = 0.0
    subsets = list(itertools.combinations(range(len(rewards)), k))
    for s in subsets:
        top = max(rewards[i] for i in s)
        winners = [i for i in s if rewards[i] == top]
        total += sum(correct[i] for i in winners) / len(winners)
    return total / len(subsets)


def test_best_of_k_with_ties_by_hand_and_by_enumeration():
    r, c = [3.0, 1.0, 1.0, 0.0], [False, True, False, True]
    assert best_of_k(r, c, [1, 2, 3, 4]).tolist() == pytest.approx([0.5, 0.25, 0.125, 0.0])
    assert oracle_best_of_k(c, [1, 2, 4]).tolist() == pytest.approx([0.5, 1 - 1 / 6, 1.0])
    assert np.isnan(best_of_k(r, c, [5])[0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 9
        r = rng.integers(0, 4, size=n).astype(float).tolist()  # many ties
        c = (rng.random(n) < 0.5).tolist()
        expected = [brute_force_best_of_k(r, c, k) for k in range(1, n + 1)]
        assert best_of_k(r, c, list(range(1, n + 1))).tolist() == pytest.approx(expected)


def test_roc_auc_against_a_hand_count():
    scores, labels = [0.9, 0.8, 0.8, 0.3, 0.1], [True, False, True, False, True]
    # positives 0.9, 0.8, 0.1 vs negatives 0.8, 0.3: wins 1+1, 0.5+1, 0+0 -> 3.5 of 6
    assert roc_auc(scores, labels) == pytest.approx(3.5 / 6)
    assert roc_auc([1.0, 2.0], [True, True]) is None


def test_ppe_official_curve_auc_and_accuracy_on_crafted_rewards():
    from worldpm.eval.benchmarks.ppe import official

    c1, c2 = [False, True, False, True], [True, True, True, False]
    items = [pair_item(n=4, pairs=[(1, 0), (3, 2)], subtask="math", correct=c1),
             pair_item(n=4, pairs=[(0, 3), (1, 3), (2, 3)], subtask="math", correct=c2)]
    r1, r2 = np.array([3.0, 1.0, 1.0, 0.0]), np.array([0.0, 2.0, 1.0, 5.0])
    out = official(items, [r1, r2], {})["math"]
    assert out["accuracy"] == pytest.approx(0 / 5)  # 1 < 3, 0 < 1, and all three correct ones lose to the wrong one
    curve = (best_of_k(r1, c1, [1, 2, 3, 4]) + best_of_k(r2, c2, [1, 2, 3, 4])) / 2
    assert out["best_of_k"]["expected_correctness"] == pytest.approx(curve.tolist())
    assert out["end_score"] == pytest.approx(curve[-1]) and out["max_achieved"] == pytest.approx(curve.max())
    assert out["roc_auc"] == pytest.approx(roc_auc(np.r_[r1, r2], c1 + c2))
    assert out["roc_auc_mean_per_prompt"] == pytest.approx((roc_auc(r1, c1) + roc_auc(r2, c2)) / 2)


def test_rewardbench2_ties_composite_by_hand():
    from worldpm.eval.benchmarks.rewardbench2 import ties_score

    def tie_item(kind, pid, good, bad):
        n = len(good) + len(bad)
        return (pair_item("all", n, [(i, j) for i in range(len(good)) for j in range(len(good), n)], subtask="ties",
                          correct=[True] * len(good) + [False] * len(bad), meta={"kind": kind, "prompt_id": pid}),
                np.array(good + bad, dtype=float))
    pairs = [tie_item("ref", "1", [5.0], [3.0, 4.0]),            # gap 1: accurate
             tie_item("tied", "1", [5.0, 4.5, 6.0], [3.0, 4.2]),  # gap 0.3, spread 1.5: accurate, not preferred
             tie_item("ref", "2", [1.0], [2.0]),                  # gap -1: not accurate
             tie_item("tied", "2", [1.0, 1.2], [0.0])]            # gap 1, spread 0.2: preferred; hard: min(-1, 1) < 0.2
    out = ties_score([p[0] for p in pairs], [p[1] for p in pairs])
    assert out["ref_accuracy"] == 0.5 and out["tied_accuracy"] == 1.0
    assert out["correctness_preferred"] == 0.5 and out["correctness_preferred_hard"] == 0.0
    margin = (math.tanh(0.3 / 1.5 - 1) + math.tanh(-1 / 0.2 - 1)) / 2
    assert out["margin_score"] == pytest.approx(margin)
    assert out["score"] == pytest.approx(0.3 * 1.0 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.0 + 0.01 * margin)
    # subtask accuracy: share of prompts whose worst correct beats the best incorrect
    assert item_stats([p[0] for p in pairs], [p[1] for p in pairs]).accuracy == pytest.approx(3 / 4)


def test_bootstrap_ci_contains_the_estimate_shrinks_with_n_and_covers():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 1600):
        won = (rng.random(n) < 0.7).astype(float)
        (reps,) = ratio_replicates([(won, np.ones(n))], rng_for(0, "t", str(n)), 1000)
        lo, hi = percentile_ci(reps)
        assert lo <= won.mean() <= hi
        widths.append(hi - lo)
    assert widths[0] / widths[1] == pytest.approx(4.0, rel=0.25)  # ~ 1/sqrt(n)
    covered = 0
    for t in range(200):
        won = (rng.random(100) < 0.7).astype(float)
        lo, hi = percentile_ci(ratio_replicates([(won, np.ones(100))], rng_for(t, "cov"), 400)[0])
        covered += lo <= 0.7 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_percentile_ci_needs_min_samples_finite_replicates():
    reps = np.array([np.nan, *np.linspace(0.0, 1.0, 9)])
    assert percentile_ci(reps, 0.9) == pytest.approx([0.05, 0.95])
    assert percentile_ci(reps, 0.9, min_samples=9) == percentile_ci(reps, 0.9)
    assert percentile_ci(reps, 0.9, min_samples=10) is None
    assert percentile_ci(np.full(3, np.nan)) is None


def test_bootstrap_resamples_items_not_pairs():
    rng = np.random.default_rng(2)
    outcome = (rng.random(40) < 0.6).astype(float)
    clustered = ratio_replicates([(outcome * 10, np.full(40, 10.0))], rng_for(0, "c"), 2000)[0]  # 40 items x 10 identical pairs
    flat = ratio_replicates([(np.repeat(outcome, 10), np.ones(400))], rng_for(0, "f"), 2000)[0]  # the same 400 pairs as if independent
    w_clustered, w_flat = (np.subtract(*percentile_ci(r)[::-1]) for r in (clustered, flat))
    assert w_clustered / w_flat == pytest.approx(math.sqrt(10), rel=0.25)
    assert rng_for(3, "a", "b").random() == rng_for(3, "a", "b").random() != rng_for(3, "a", "c").random()


def test_categories_average_their_subtasks_and_skip_uncategorised():
    subtasks = {"a/x": {"category": "adversarial", "bt_loss": 0.5, "accuracy": 0.6},
                "b/y": {"category": "adversarial", "bt_loss": 0.7, "accuracy": 0.8},
                "c/z": {"category": "objective", "bt_loss": 0.4, "accuracy": None},
                "d/w": {"category": None, "bt_loss": 9.0, "accuracy": 0.0}}
    reps = {k: {"bt_loss": np.full(50, v["bt_loss"]), "accuracy": np.full(50, v["accuracy"] if v["accuracy"] is not None else np.nan)}
            for k, v in subtasks.items()}
    out = aggregate(subtasks, reps, 0.95)
    assert list(out) == ["adversarial", "objective", "subjective"]
    assert out["adversarial"]["bt_loss"] == pytest.approx(0.6) and out["adversarial"]["accuracy"] == pytest.approx(0.7)
    assert out["adversarial"]["subtasks"] == ["a/x", "b/y"] and out["adversarial"]["bt_loss_ci"] == pytest.approx([0.6, 0.6])
    assert out["objective"]["accuracy"] is None and out["objective"]["n_subtasks"] == 1
    assert out["subjective"] == {"bt_loss": None, "accuracy": None, "n_subtasks": 0, "subtasks": [], "bt_loss_ci": None,
                                 "accuracy_ci": None}


def test_order_categories_puts_the_papers_first_then_the_rest_sorted():
    from worldpm.eval.categories import order_categories
    from worldpm.eval.scaling.points import order_keys

    assert order_categories({"zeta", "subjective", "in_distribution"}) == ["subjective", "in_distribution", "zeta"]
    assert order_categories({"zeta", "subjective"}, all_paper=True) == ["adversarial", "objective", "subjective", "zeta"]
    assert order_keys(["zeta", "objective", "adversarial"], "category") == ["adversarial", "objective", "zeta"]
    assert order_keys(["b/y", "a/x", "b/y"], "subtask") == ["a/x", "b/y"]
