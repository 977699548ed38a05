"""Scoring N responses to one prompt with the prompt encoded once: RewardModel.score_ids / score_responses, `worldpm score`'s
responses rows, `worldpm serve`'s /v1/score prompt + responses and its grouping of concurrent requests, `worldpm eval`: the
rewards each response gets alone (fp32, 1e-5), in every head, readout and attention implementation."""
import asyncio
import json
import random

import httpx
import pytest
import torch

from tests.conftest import make_tiny
from tests.serving import running_server
from worldpm.model.segments import shared_prompt_groups

TOL = 1e-5
WORDS = "sort list python key lambda reverse stable dict items value tuple order".split()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prompt_and_responses(n=32, seed=0, long_every=7):
    """A prompt and n responses of mixed lengths: a few identical, every `long_every`-th long enough to be truncated."""
    rng = random.Random(seed)
    prompt = [{"role": "system", "content": "Answer briefly."},
              {"role": "user", "content": "How do I sort a list of tuples by the second item? " + " ".join(rng.choices(WORDS, k=40))}]
    responses = [" ".join(rng.choices(WORDS, k=rng.choice([1, 5, 20, 60]))) for _ in range(n)]
    responses[3] = responses[4]  # duplicates happen among sampled responses
    for i in range(0, n, long_every):
        responses[i] = " ".join(rng.choices(WORDS, k=400))
    return prompt, responses


def alone(rm, prompt, responses, max_length):
    """Each conversation scored on its own: one unpadded sequence, no segments."""
    ids = rm.encode([prompt + [{"role": "assistant", "content": r}] for r in responses], max_length)
    with torch.no_grad():
        return [rm(torch.tensor([s]), reward_index=torch.tensor([len(s) - 1])).item() for s in ids]


@pytest.mark.parametrize("head,readout,attn", [("mlp", "reward_token", "sdpa"), ("linear", "reward_token", "sdpa"),
                                               ("mlp", "before_reward_token", "sdpa"), ("linear", "before_reward_token", "eager")])
def test_score_responses_equals_each_response_alone(head, readout, attn):
    rm = make_tiny(head=head, readout=readout, attn_implementation=attn)
    prompt, responses = prompt_and_responses()
    want = alone(rm, prompt, responses, 256)
    assert max(want) - min(want) > 0.05
    ids = rm.encode([prompt + [{"role": "assistant", "content": r}] for r in responses], 256)
    assert ids.truncated == 5 and ids.prompts.count(None) == 5 and len(set(ids.prompts) - {None}) == 1
    groups = shared_prompt_groups(ids, ids.prompts, 16384)
    assert len(groups) == 1 and len(groups[0][0]) == 27  # one prompt group of the untruncated responses
    for kwargs in ({}, {"max_tokens": 600}):  # 600 tokens: the 27 responses split over rows, each keeping the prompt
        assert rm.score_responses(prompt, responses, max_length=256, **kwargs) == pytest.approx(want, abs=TOL)
    assert rm.score_ids(ids, shared_prompt=False) == pytest.approx(want, abs=TOL)
    assert len(shared_prompt_groups(ids, ids.prompts, 600)) > 1


def test_prompt_keys_group_only_equal_prompts_and_sharing_is_decided_on_the_tokens(tiny_rm):
    prompt, responses = prompt_and_responses(n=6, long_every=100)
    other = [{"role": "user", "content": prompt[1]["content"] + " Thanks."}]
    convs = [prompt + [{"role": "assistant", "content": r}] for r in responses]
    convs += [other + [{"role": "assistant", "content": r}] for r in responses[:3]]
    ids = tiny_rm.encode(convs)
    assert len(set(ids.prompts)) == 2 and ids.prompts[0] == ids.prompts[5] != ids.prompts[6]
    groups = shared_prompt_groups(ids, ids.prompts, 16384)
    assert sorted(len(m) for m, _ in groups) == [3, 6]
    for members, group in groups:
        for j, i in enumerate(members):
            assert group.sequence(j) == ids[i] and group.shares[j]
    # a key is only a proposal: sequences that do not share a prefix under one key are scored alone, correctly
    bogus = shared_prompt_groups(ids, [0] * len(ids), 16384)
    assert tiny_rm.score_ids(ids, prompts=[0] * len(ids)) == pytest.approx(tiny_rm.score_ids(ids, shared_prompt=False), abs=TOL)
    assert all(len(group.prompt) < len(ids[0]) for _, group in bogus)


def test_worldpm_score_responses_rows(tiny_rm, tiny_ckpt, tmp_path):
    import pyarrow.parquet as pq

    from worldpm.config import compose
    from worldpm.serve.score import run

    rows = [dict(zip(("prompt", "responses"), prompt_and_responses(n=5 + i, seed=i, long_every=100)), id=f"p{i}") for i in range(4)]
    rows[1]["prompt"] = "A plain question as a string?"
    src = tmp_path / "bon.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for out, extra in ((tmp_path / "rewards.parquet", []), (tmp_path / "separate.jsonl", ["shared_prompt=false"])):
        summary = run(compose("score", [f"model_path={tiny_ckpt}", "device=cpu", f"input={src}", f"output={out}", *extra]))
        assert summary["kind"] == "responses" and summary["n"] == 4 and summary["responses"] == sum(5 + i for i in range(4))
        got = pq.read_table(out).to_pylist() if out.suffix == ".parquet" else [json.loads(x) for x in out.read_text().splitlines()]
        for r, g in zip(rows, got):
            want = alone(tiny_rm, [{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else r["prompt"],
                         r["responses"], 1024)
            assert g["id"] == r["id"] and g["rewards"] == pytest.approx(want, abs=TOL)
            assert g["best"] == max(range(len(want)), key=want.__getitem__)


def test_v1_score_prompt_and_responses_and_concurrent_requests_of_one_prompt_share_it(tiny_ckpt):
    from worldpm.model.reward_model import RewardModel
    from worldpm.serve.scorers import LocalScorer

    model = RewardModel.from_pretrained(tiny_ckpt)
    prompt, responses = prompt_and_responses(n=16, long_every=100)
    want = alone(model, prompt, responses, 1024)
    scorer = LocalScorer(model, window_ms=50)
    seen = []
    score_ids = scorer.batcher.score_ids

    def spy(sequences, prompts=None):
        seen.append(prompts)
        return score_ids(sequences, prompts=prompts) if prompts is not None else score_ids(sequences)

    scorer.batcher.score_ids = spy
    with running_server(scorer) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            r = client.post("/v1/score", json={"prompt": prompt, "responses": responses})
            assert r.status_code == 200 and r.json()["rewards"] == pytest.approx(want, abs=TOL)
            for body, needle in (({"prompt": prompt, "responses": ["a", 3]}, "responses[1] must be a string"),
                                 ({"prompt": 5, "responses": ["a"]}, "'prompt' must be a string"),
                                 ({"prompt": prompt, "responses": ["a"], "conversations": []}, "not both"),
                                 ({"prompt": [{"role": "user"}], "responses": ["a"]}, "responses[0]: message 0")):
                bad = client.post("/v1/score", json=body)
                assert bad.status_code == 422 and needle in bad.json()["error"], bad.text

        async def one_rollout_per_request():  # how an RLHF trainer sends N rollouts of one prompt
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                got = await asyncio.gather(*(client.post("/v1/score", json={"prompt": prompt, "responses": [x]})
                                             for x in responses))
            return [g.json()["rewards"][0] for g in got]

        assert asyncio.run(one_rollout_per_request()) == pytest.approx(want, abs=TOL)
    gathered = [p for p in seen[1:] if p is not None and len(p) > 1]
    assert gathered and all(len(set(p)) == 1 for p in gathered)  # requests of one prompt went to one forward, one key


def test_eval_scores_best_of_k_items_with_the_prompt_once_and_the_same_rewards(tiny_rm):
    from pathlib import Path

    from tests.test_eval_loaders import load
    from worldpm.eval.scoring import score_items

    assets = Path(__file__).resolve().parents[1] / "worldpm" / "assets" / "benchmarks"
    for name, path in (("ppe", assets / "ppe"), ("rmbench", assets / "rmbench" / "total_dataset.json"),
                       ("rewardbench2", assets / "rewardbench2" / "test.jsonl"), ("rmb", assets / "rmb" / "RMB_dataset")):
        items = load(name, path)
        shared = score_items(tiny_rm, items, max_tokens=2048, shared_prompt=True)
        separate = score_items(tiny_rm, items, max_tokens=2048, shared_prompt=False)
        for a, b in zip(shared.rewards, separate.rewards):
            assert a == pytest.approx(b, abs=TOL), name


def test_a_bad_shared_prompt_value_is_one_line(tiny_ckpt, tmp_path):
    from worldpm.config import compose
    from worldpm.errors import UserError
    from worldpm.eval.run import run as eval_run
    from worldpm.serve.score import run as score_run

    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"]}) + "\n")
    with pytest.raises(UserError, match="shared_prompt='often': expected true or false"):
        score_run(compose("score", [f"model_path={tiny_ckpt}", f"input={src}", "shared_prompt=often"]))
    with pytest.raises(UserError, match="shared_prompt='often': expected true or false"):
        eval_run(compose("eval", ["benchmark=[bon_synthetic]", f"output_dir={tmp_path / 'e'}", "shared_prompt=often"]))
