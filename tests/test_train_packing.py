"""Padding-free packing: masks, layouts and the attention paths against independent per-sequence computations."""
import itertools

import pytest
import torch

from tests.conftest import make_tiny
from worldpm.model.bt_loss import bt_loss
from worldpm.data.packing import LAYOUTS, TokenizedPair, collate, model_inputs, plan_micro_batches, use_attention
from worldpm.model.attention import segment_mask
from worldpm.model.segments import Segment, common_prefix_length, visibility

TOL = 1e-5



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def forum_pairs(rm, n_threads=3, replies=("Boil it for 9 minutes, then cool it in ice water. " * 3, "idk lol", "Use a timer.")):
    """Pairs sharing a prompt (several answers per question, as on a forum) plus pairs with different prompts."""
    pairs = []
    for t in range(n_threads):
        q = [{"role": "user", "content": f"Question {t}: how do I boil an egg so the yolk stays soft? " * (1 + 2 * t)}]
        ids = rm.encode([q + [{"role": "assistant", "content": r}] for r in replies])
        for a, b in itertools.combinations(ids, 2):
            pairs.append(TokenizedPair(a, b, common_prefix_length(a, b)))
    return pairs


def reference_rewards(rm, pairs):
    """Each sequence alone: no packing, no padding, no mask."""
    with torch.no_grad():
        return torch.tensor([rm(torch.tensor([s]), reward_index=torch.tensor([len(s) - 1])).item()
                             for p in pairs for s in (p.chosen, p.rejected)])


def brute_force_mask(segments, T):
    allowed = torch.zeros(T, T, dtype=torch.bool)
    owner = {}
    for i, s in enumerate(segments):
        for t in range(s.start, s.end):
            owner[t] = i
    for q in range(T):
        for k in range(T):
            if q in owner and k in owner:
                sq, sk = owner[q], owner[k]
                allowed[q, k] = k <= q and (sq == sk or sk in segments[sq].context)
            else:
                allowed[q, k] = q == k  # padding sees only itself
    return allowed


def test_segment_mask_matches_a_brute_force_reading_of_the_visibility_relation():
    # a plain sequence, a prompt with two replies, a prompt/reply/follow-up chain (a tree of turns), then padding
    segs = [Segment(0, 0, 3), Segment(0, 3, 4), Segment(0, 7, 2, (1,)), Segment(0, 9, 3, (1,)),
            Segment(0, 12, 2), Segment(0, 14, 2, (4,)), Segment(0, 16, 2, (4, 5))]
    T = 20
    seg = torch.full((1, T), -1)
    for i, s in enumerate(segs):
        seg[0, s.start:s.end] = i
    mask = segment_mask(seg, visibility(segs))
    assert mask.shape == (1, 1, T, T)
    assert torch.equal(mask[0, 0], brute_force_mask(segs, T))
    assert mask[0, 0, 8, 4] and not mask[0, 0, 10, 7]  # a reply sees its prompt, not its sibling
    assert mask[0, 0].any(-1).all()  # no empty softmax row


@pytest.mark.parametrize("layout,attention", [("packed", "varlen"), ("packed", "block_mask"), ("shared_prompt", "varlen"),
                                              ("shared_prompt", "block_mask"), ("padded", "auto")])
def test_every_layout_and_attention_path_gives_each_sequence_its_own_reward(layout, attention):
    rm = make_tiny()
    pairs = forum_pairs(rm)
    impl = use_attention(rm, attention, layout)
    batch = collate(pairs, layout, rm.pad_id)
    with torch.no_grad():
        rewards = rm(**model_inputs(batch, attention, impl))
    ref = reference_rewards(rm, pairs)
    assert ref.std() > 0.05  # rewards differ, so the tolerance bites
    assert torch.allclose(rewards, ref, atol=TOL)
    assert batch.real_tokens == sum(len(p.chosen) + len(p.rejected) for p in pairs)
    if layout == "shared_prompt":
        assert batch.total_tokens < batch.real_tokens  # each prompt stored once per pair
        assert any(s.context for s in batch.segments)
    if layout != "padded":
        assert batch.pad_tokens == 0 and batch.input_ids.shape[0] == 1


def test_eager_attention_with_an_additive_block_mask():
    rm = make_tiny(attn_implementation="eager")
    pairs = forum_pairs(rm, n_threads=2)
    batch = collate(pairs, "shared_prompt", rm.pad_id)
    with torch.no_grad():
        rewards = rm(**model_inputs(batch, "block_mask", "eager"))
    assert torch.allclose(rewards, reference_rewards(rm, pairs), atol=TOL)


def _loss_and_grads(rm, batch, attention, impl):
    rm.zero_grad(set_to_none=True)
    rewards = rm(**model_inputs(batch, attention, impl))
    loss = bt_loss(rewards[batch.chosen], rewards[batch.rejected])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in rm.named_parameters()}


@pytest.mark.parametrize("layout,attention", [("packed", "varlen"), ("packed", "block_mask"), ("shared_prompt", "varlen")])
def test_packed_loss_and_gradients_equal_the_padded_batch(layout, attention):
    rm = make_tiny().train()
    pairs = forum_pairs(rm)
    ref_loss, ref_grads = _loss_and_grads(rm, collate(pairs, "padded", rm.pad_id), "auto", rm.config._attn_implementation)
    padded = collate(pairs, "padded", rm.pad_id)
    assert padded.pad_tokens > 0.2 * padded.total_tokens  # the padded batch really is padded
    impl = use_attention(rm, attention, layout)
    loss, grads = _loss_and_grads(rm, collate(pairs, layout, rm.pad_id), attention, impl)
    assert loss == pytest.approx(ref_loss, abs=TOL)
    assert max(g.abs().max().item() for g in ref_grads.values()) > 1e-3
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=TOL), name


def test_margins_travel_with_their_pairs():
    pairs = [TokenizedPair([1, 2, 3], [1, 2, 4], 2, margin=0.5), TokenizedPair([5, 6], [7], 0, margin=2.0)]
    for layout in LAYOUTS:
        batch = collate(pairs, layout, 0)
        assert batch.margin.tolist() == [0.5, 2.0] and batch.chosen.tolist() == [0, 2] and batch.rejected.tolist() == [1, 3]
    assert collate([TokenizedPair([1], [2])], "packed").margin is None


def test_shared_prefix_never_swallows_a_reward_token():
    # identical sequences: the whole thing is "shared", but each reply keeps its last two positions (the reward token and the
    # one before it, where readout before_reward_token reads), so both readouts read inside the reply's own segment
    pair = TokenizedPair([1, 2, 3, 4], [1, 2, 3, 4], 4)
    batch = collate([pair], "shared_prompt", 0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 3, 4]] and batch.reward_index.tolist() == [3, 5]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 3]]


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_plan_covers_every_pair_once_within_budget_with_equal_counts_per_rank(layout):
    import random

    rng = random.Random(0)
    tokens, widths = [], []
    for _ in range(203):
        a, b = int(rng.lognormvariate(5, 0.8)) + 8, int(rng.lognormvariate(5, 0.8)) + 8
        a, b = min(a, 1000), min(b, 1000)
        tokens.append(a + b)
        widths.append(max(a, b))
    for world in (1, 2, 3, 8):
        plan = plan_micro_batches(tokens, widths, 2048, world, layout)
        assert len({len(r) for r in plan}) == 1
        flat = sorted(i for r in plan for mb in r if mb for i in mb)
        assert flat == list(range(203))
        for r in plan:
            for mb in r:
                cost = sum(tokens[i] for i in mb) if layout == "packed" else 2 * len(mb) * max(widths[i] for i in mb)
                assert cost <= 2048
        assert plan == plan_micro_batches(tokens, widths, 2048, world, layout)  # deterministic: every rank agrees
    packed = plan_micro_batches(tokens, widths, 2048, 1, "packed")[0]
    assert len(packed) <= -(-sum(tokens) // 2048) + 1  # best-fit decreasing: close to the lower bound


def test_plan_with_fewer_pairs_than_ranks_gives_placeholders():
    plan = plan_micro_batches([10, 20, 30], [5, 10, 15], 100, 4)
    assert [len(r) for r in plan] == [1, 1, 1, 1] and sum(mb is None for r in plan for mb in r) == 1
    plan = plan_micro_batches([60, 60, 60], [30, 30, 30], 100, 2)  # 3 bins on 2 ranks: one rank idles once
    assert [len(r) for r in plan] == [2, 2] and sum(mb is None for r in plan for mb in r) == 1


def test_pair_costs_from_the_length_arrays_equal_pair_cost():
    """What the trainer plans with (PairTable's arrays, no pair read) is what each pair costs when collated."""
    import numpy as np

    from worldpm.data.packing import pair_cost, pair_costs

    rng = np.random.default_rng(0)
    pairs = [TokenizedPair([1], [1], 1), TokenizedPair([1, 2], [1, 2], 2), TokenizedPair([3], [4, 5], 0)]  # edge cases
    for _ in range(20000):
        shared = rng.integers(0, 4, size=int(rng.integers(0, 30))).tolist()  # a small vocabulary: prefixes run on by chance
        a = shared + rng.integers(0, 4, size=int(rng.integers(1, 20))).tolist()
        b = shared + rng.integers(0, 4, size=int(rng.integers(1, 20))).tolist()
        pairs.append(TokenizedPair(a, b, common_prefix_length(a, b)))
    tokens = np.array([len(p.chosen) + len(p.rejected) for p in pairs])
    widths = np.array([max(len(p.chosen), len(p.rejected)) for p in pairs])
    prefix = np.array([p.prefix for p in pairs])
    for layout in LAYOUTS:
        assert pair_costs(tokens, widths, prefix, layout).tolist() == [pair_cost(p, layout) for p in pairs], layout
    assert (pair_costs(tokens, widths, prefix, "shared_prompt") < tokens).mean() > 0.5  # the shared layout does save tokens
    for p in pairs[:500]:  # and the cost is the row length collate builds
        assert collate([p], "shared_prompt").total_tokens == pair_cost(p, "shared_prompt")
