"""Whole forum threads in training: random threads of 1-16 answers, some truncated, some longer than a micro-batch (split into
parts that each keep the prompt), through the trainer's own planning, collation, pre-pass and train_step, against each
answer scored alone and the objective written out by hand: rewards and every gradient equal (fp32, 1e-5)."""
import math
import random

import pytest
import torch

from tests.conftest import make_tiny
from worldpm.data.packing import rank_micro_batches, use_attention
from worldpm.data.threads import Objective, ThreadTable, tokenize_threads
from worldpm.train.metrics import STATS
from worldpm.train.recipe import Batching, train_step

TOL = 1e-5
MAX_LENGTH = 64
WORDS = "egg boil water salt minutes yolk soft cold ice pan heat lid timer fresh shell peel".split()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_threads(seed: int = 0, n: int = 7) -> list[dict]:
    """ThreadRecords: 1-16 answers with tied and distinct scores, prompts and answers of mixed lengths (some over
    MAX_LENGTH, so truncation cuts their prompt), sampled pairs a random subset of the ranked pairs."""
    rng = random.Random(seed)
    sizes = [1, 16, 2, 5, 11, 3, 8][:n]
    threads = []
    for t, size in enumerate(sizes):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
        answers = []
        for k in range(size):
            words = rng.choice([rng.randint(1, 8), rng.randint(8, 20), rng.randint(40, 70)])  # short, medium, truncated
            answers.append({"id": f"{t}-{k}", "text": " ".join(rng.choice(WORDS) for _ in range(words)),
                            "score": float(rng.randint(-2, 3)), "meta": "{}"})
        ranked = [(i, j) if answers[i]["score"] > answers[j]["score"] else (j, i)
                  for i in range(size) for j in range(i + 1, size) if answers[i]["score"] != answers[j]["score"]]
        pairs = rng.sample(ranked, min(len(ranked), rng.randint(1, 4))) if ranked else []
        threads.append({"id": str(t), "prompt": [{"role": "user", "content": prompt}], "answers": answers,
                        "pairs": [{"chosen": c, "rejected": r} for c, r in pairs]})
    return threads


def thread_table(rm, records):
    import datasets

    batch = {k: [r[k] for r in records] for k in ("id", "prompt", "answers", "pairs")}
    return ThreadTable(datasets.Dataset.from_dict(tokenize_threads(batch, rm.encoder)))


def reference_loss(rm, records, objective: Objective):
    """Every answer scored alone (no packing, no padding, no mask), then the objective written out term by term."""
    rewards, total, weight = [], 0.0, 0.0
    for rec in records:
        convs = [rec["prompt"] + [{"role": "assistant", "content": a["text"]}] for a in rec["answers"]]
        r = [rm(torch.tensor([s]), reward_index=torch.tensor([len(s) - 1]))[0] for s in rm.encode(convs, MAX_LENGTH)]
        rewards.append(r)
        s = [a["score"] for a in rec["answers"]]
        k = len(rec["pairs"])
        if objective.name == "pairs":
            terms = [-torch.nn.functional.logsigmoid(r[p["chosen"]] - r[p["rejected"]]) for p in rec["pairs"]]
        elif objective.likelihood == "bradley_terry":
            terms = [-torch.nn.functional.logsigmoid(r[i] - r[j]) for i in range(len(s)) for j in range(len(s)) if s[i] > s[j]]
        else:  # Plackett-Luce, ties sharing a stage (Breslow): -r_i + log sum_{s_j <= s_i} exp(r_j)
            terms = [-r[i] + torch.logsumexp(torch.stack([r[j] for j in range(len(s)) if s[j] <= s[i]]), 0)
                     for i in range(len(s)) if any(t < s[i] for t in s)]
        w = (k / len(terms) if terms else 0.0) if objective.name == "listwise" and objective.weighting == "thread" else 1.0
        total = total + w * sum(terms, torch.tensor(0.0))
        weight += k if objective.name == "pairs" or objective.weighting == "thread" else len(terms)
    return rewards, total / weight


class Engine:
    """The trainer's engine verbs on a bare model (what TorchEngine does, minus the optimizer)."""

    def __init__(self, model):
        self.model = model

    def forward(self, **inputs):
        return self.model(**inputs)

    def backward(self, loss):
        loss.backward()


OBJECTIVES = [Objective("pairs"), Objective("listwise", "bradley_terry", "thread"), Objective("listwise", "bradley_terry", "term"),
              Objective("listwise", "plackett_luce", "thread"), Objective("listwise", "plackett_luce", "term")]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: f"{o.name}-{o.likelihood}-{o.weighting}")
@pytest.mark.parametrize("layout,attention", [("shared_prompt", "varlen"), ("shared_prompt", "block_mask"), ("packed", "varlen"),
                                              ("padded", "auto")])
def test_thread_rewards_and_gradients_equal_each_answer_alone(layout, attention, objective):
    records = random_threads()
    rm = make_tiny(max_length=MAX_LENGTH).train()
    table = thread_table(rm, records)
    assert (table.n_ranked > table.n_pairs).any() and sum(len(r["answers"]) for r in records) == len(table.own_len)
    ref_rewards, ref_loss = reference_loss(rm, records, objective)
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in rm.named_parameters()}
    rm.zero_grad(set_to_none=True)
    assert max(g.abs().max().item() for g in ref_grads.values()) > 1e-3  # the gradients are not trivially small

    capacity = 2 * MAX_LENGTH  # the 16- and 11-answer threads do not fit: they are split into parts
    impl = use_attention(rm, attention, layout)
    batching = Batching(layout, attention, impl, capacity, torch.float32, rm.pad_id, 0, 1, torch.device("cpu"), objective)
    plan = rank_micro_batches([table], [(0, i) for i in range(len(records))], capacity, 1, 0, layout, rm.pad_id, objective)
    assert plan.prepass and plan.prepass_slots == len(plan.prepass)  # split threads are there
    assert plan.pairs == sum(len(r["pairs"]) for r in records)
    stats, counts = train_step(Engine(rm), plan, batching, center=0.0)
    for name, p in rm.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name], atol=TOL), name

    # the rewards: every answer's, from its micro-batch (or from the pre-pass, for split threads), equals it scored alone
    got = {}
    with torch.no_grad():
        for _, batch in plan.batches:
            got.update(zip(batch.keys, batching.forward(Engine(rm), batch).tolist()))
    for t, r in enumerate(ref_rewards):
        needed = range(len(r)) if objective.all_answers else {a for p in records[t]["pairs"] for a in p.values()}
        assert sorted(a for (key, a) in got if key == t) == sorted(needed)
        for a in needed:
            assert got[(t, a)] == pytest.approx(r[a].item(), abs=TOL)
    # statistics count each sampled pair once, split threads included; the logged objective is the loss trained on
    s = dict(zip(STATS, stats.tolist()))
    pairs = [(ref_rewards[t][p["chosen"]], ref_rewards[t][p["rejected"]]) for t, rec in enumerate(records) for p in rec["pairs"]]
    assert counts["pairs"] == len(pairs) == plan.pairs
    assert s["loss"] == pytest.approx(sum(-math.log(1 / (1 + math.exp(-(c - r).item()))) for c, r in pairs), abs=1e-4)
    assert s["objective"] / plan.pairs == pytest.approx(ref_loss.item(), abs=1e-5)
    prepass = sum(plan.batches[k][1].total_tokens for k in plan.prepass)
    assert counts["processed_tokens"] == sum(b.total_tokens for _, b in plan.batches) + prepass  # the parts forwarded twice
    if layout == "shared_prompt":
        assert counts["processed_tokens"] - prepass < counts["real_tokens"]  # prompts stored once per thread (per part)


def test_a_thread_is_one_unit_of_work_and_its_prompt_is_stored_once():
    """The shared layout of a whole thread: [prompt][answer 1][answer 2]..., each answer's positions continuing from the
    prompt's end; a thread of 2 answers costs what its pair costs in the pair layout."""
    from worldpm.data.packing import TokenizedPair, collate, pair_cost

    records = random_threads(seed=3)
    rm = make_tiny(max_length=4096)
    table = thread_table(rm, records)
    thread = table.threads([3])[0]  # 5 answers, none truncated at 4096
    plan = rank_micro_batches([table], [(0, 3)], 10**6, 1, 0, "shared_prompt", rm.pad_id, Objective("listwise"))
    (real, batch), = plan.batches
    p = len(thread.group.prompt)
    assert real and batch.segments[0].start == 0 and batch.segments[0].length == p and p > 10
    assert [s.context for s in batch.segments[1:]] == [(0,)] * 5
    assert all(batch.position_ids[0, s.start].item() == p for s in batch.segments[1:])
    assert batch.total_tokens == p + sum(len(o) for o in thread.group.own)
    two = TokenizedPair(thread.group.sequence(0), thread.group.sequence(1), p)
    plan2 = rank_micro_batches([table], [(0, 3)], 10**6, 1, 0, "shared_prompt", rm.pad_id, Objective("pairs"))
    assert plan2.batches[0][1].total_tokens == p + sum(len(thread.group.own[a]) for a in thread.needed(Objective("pairs")))
    assert collate([two], "shared_prompt").total_tokens == pair_cost(two, "shared_prompt")


def test_split_threads_stay_on_one_rank_and_every_rank_makes_as_many_forwards():
    records = random_threads(seed=1) * 3
    rm = make_tiny(max_length=MAX_LENGTH)
    table = thread_table(rm, records)
    draws = [(0, i) for i in range(len(records))]
    for world in (1, 2, 3):
        plans = [rank_micro_batches([table], draws, 2 * MAX_LENGTH, world, r, "shared_prompt", rm.pad_id, Objective("listwise"))
                 for r in range(world)]
        assert len({len(p.batches) for p in plans}) == 1 and len({p.prepass_slots for p in plans}) == 1
        owner = {}
        for r, p in enumerate(plans):
            for real, batch in p.batches:
                if real:
                    for key, _ in batch.keys:
                        assert owner.setdefault(key, r) == r  # a thread's parts never straddle ranks
            assert len(p.prepass) <= p.prepass_slots
        assert set(owner) == set(range(len(records)))  # every thread placed, once
        assert sum(p.pairs for p in plans[:1]) == sum(len(r["pairs"]) for r in records)


def test_thread_options_fail_fast_with_one_line_errors(tmp_path):
    from tests.train_helpers import make_data, run_in_process
    from worldpm.errors import UserError

    data = make_data(tmp_path / "pairs_only", 20, 10)
    for extra, needle in ((["loss.objective=listwise"], "threads/train/*.parquet thread shards"),
                          (["loss.objective=listwise", "data.unit=pairs"], "loss.objective=listwise reads whole threads"),
                          (["loss.objective=ranking"], "loss.objective='ranking'"),
                          (["loss.listwise.weighting=all"], "loss.listwise.weighting='all'"),
                          (["data.unit=posts"], "data.unit='posts'")):
        with pytest.raises(UserError) as err:
            run_in_process(data, tmp_path / "run", tmp_path / "cache", "trainer.max_steps=1", *extra)
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_threads_on_two_ranks_match_one_process_and_zero3_runs_the_prepass_in_step(tmp_path):
    """A listwise run over whole threads, some split into parts: ZeRO-2 on 2 ranks gives one process's losses (the loss
    scaling by the step's total weight, the parts' pre-pass), and ZeRO-3 (collective forwards: every rank makes as many
    pre-pass forwards) trains and evaluates without hanging."""
    from tests.train_helpers import ROOT, free_port, launch, metrics, overrides, run_in_process, torchrun_cmd, write_dataset

    data = tmp_path / "data"
    write_dataset(data, 240, 60, lengths="forum", threads=True)
    common = ["loss.objective=listwise", "data.packing=shared_prompt", "model.max_length=64", "data.max_tokens_per_micro_batch=128",
              "trainer.pairs_per_step=16", "trainer.warmup_steps=0", "trainer.lr=2e-3", "trainer.max_steps=3", "trainer.save_every=0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_in_process(data, tmp_path / "null", tmp_path / "cache", *common, "trainer.eval_every=0")
    finally:
        torch.set_num_threads(threads)
    want = [r["loss"] for r in metrics(tmp_path / "null")[0]]
    args = overrides(data, tmp_path / "unused", tmp_path / "cache", *common, "trainer.eval_every=3")
    proc = launch(torchrun_cmd(2, free_port(), str(tmp_path), "zero2,zero3", *args, script=str(ROOT / "tests" / "train_sequential.py")))
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    rows, evals = metrics(tmp_path / "zero2")
    assert [r["loss"] for r in rows] == pytest.approx(want, abs=1e-5) and want[0] != want[2]
    rows3, evals3 = metrics(tmp_path / "zero3")
    assert len(rows3) == 3 and all(math.isfinite(r["loss"]) for r in rows3) and evals3[-1]["eval/n"] == evals[-1]["eval/n"] > 0
