"""Reward functions for TRL (GRPOTrainer reward_funcs) and OpenRLHF (local reward_func), in-process and against a server."""
import contextlib
import http.server
import importlib.util
import inspect
import json
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.conftest import conversations
from tests.serving import openrlhf_texts, running_server
from worldpm.serve import reward_funcs
from worldpm.errors import UserError
from worldpm.serve.reward_funcs import OpenRLHFRewardFunc, TRLRewardFunc, openrlhf_reward_func, trl_reward_func
from worldpm.model.reward_model import RewardModel
from worldpm.serve.client import RemoteScorer
from worldpm.serve.scorers import LocalScorer
from worldpm.serve.scores import sigmoid

TOL = 1e-5
KEY = "reward-funcs-key"


@pytest.fixture(scope="module")
def local(tiny_rm):
    scorer = LocalScorer(tiny_rm)
    yield scorer
    scorer.close()


def trl_batch():
    """What GRPOTrainer passes, conversational format: prompt messages, and completions as one assistant message each."""
    convs = conversations()
    return [c[:-1] for c in convs], [[c[-1]] for c in convs], convs


def test_trl_conversational_format_matches_the_python_api(tiny_rm, local):
    prompts, completions, convs = trl_batch()
    f = trl_reward_func(local)
    got = f(prompts=prompts, completions=completions, completion_ids=[[1, 2]] * len(prompts), trainer_state=object(),
            ground_truth=["x"] * len(prompts), log_extra=None)  # the trainer's extra keywords and dataset columns
    assert isinstance(got, list) and all(type(r) is float for r in got)
    assert got == pytest.approx(tiny_rm.score(convs), abs=TOL)
    assert f.__name__ == "worldpm_reward" and trl_reward_func(local, name="helpfulness").__name__ == "helpfulness"
    params = inspect.signature(f.__call__).parameters
    assert {"prompts", "completions"} <= set(params) and any(p.kind is p.VAR_KEYWORD for p in params.values())


def test_trl_assistant_prefix_and_multimodal_content(tiny_rm, local):
    q = "Name a prime number."
    # the prompt ends with an assistant prefix that the policy continued: TRL's completion carries prefix + continuation
    prompts = [[{"role": "user", "content": q}, {"role": "assistant", "content": "Sure: "}],
               [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "image"},
                                              {"type": "text", "text": "shown here?"}]}]]
    completions = [[{"role": "assistant", "content": "Sure: 7 is prime."}],
                   [{"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]]
    expected = tiny_rm.score([[{"role": "user", "content": q}, {"role": "assistant", "content": "Sure: 7 is prime."}],
                         [{"role": "user", "content": "What is shown here?"}, {"role": "assistant", "content": "A cat."}]])
    assert trl_reward_func(local)(prompts=prompts, completions=completions) == pytest.approx(expected, abs=TOL)


def test_trl_standard_format_plain_and_chatml_prompts(tiny_rm, local):
    convs = conversations()[:3]
    plain_prompts = ["What is 2+2?", "Tips for sleeping better?"]
    plain_completions = [" 4", " Keep a regular bedtime."]
    # a standard-format prompt already rendered with the chat template (what a ChatML policy's dataset holds)
    chatml_prompts = [f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{c[0]['content']}<|im_end|>\n<|im_start|>assistant\n"
                      for c in convs]
    chatml_completions = [c[1]["content"] + "<|im_end|>" for c in convs]
    got = trl_reward_func(local)(prompts=plain_prompts + chatml_prompts, completions=plain_completions + chatml_completions)
    expected = tiny_rm.score([[{"role": "user", "content": p}, {"role": "assistant", "content": c}]
                         for p, c in zip(plain_prompts, plain_completions)] + convs)
    assert got == pytest.approx(expected, abs=TOL)


def test_trl_bad_input_is_a_clear_error(local):
    f = trl_reward_func(local)
    with pytest.raises(UserError, match="2 prompts but 1 completions"):
        f(prompts=["a", "b"], completions=["c"])
    with pytest.raises(UserError, match="must both be strings"):
        f(prompts=[3], completions=["c"])
    with pytest.raises(UserError, match="role"):
        f(prompts=[[{"role": "user", "content": "q"}]], completions=[[{"role": "tool", "content": "x"}]])
    assert f(prompts=[], completions=[]) == []


def test_openrlhf_local_reward_func_matches_the_python_api_and_batches_threaded_calls(tiny_rm, tiny_ckpt):
    texts = openrlhf_texts()
    expected = tiny_rm.score_texts(texts)
    scorer = LocalScorer(RewardModel.from_pretrained(tiny_ckpt), window_ms=20)
    f = openrlhf_reward_func(scorer)
    out = f(texts, [""] * len(texts), [None] * len(texts))
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].dtype == torch.float32
    assert out["rewards"].tolist() == pytest.approx(expected, abs=TOL)
    assert out["scores"].tolist() == pytest.approx([sigmoid(r) for r in expected], abs=TOL)
    assert ((out["scores"] > 0) & (out["scores"] < 1)).all()
    assert out["extra_logs"]["raw_reward"].tolist() == pytest.approx(expected, abs=TOL)
    before = scorer.batcher.stats.snapshot()
    with ThreadPoolExecutor(16) as pool:  # OpenRLHF calls the function from threads, one sample each
        singles = list(pool.map(lambda i: f([texts[i % len(texts)]], [""], [""]), range(64)))
    after = scorer.batcher.stats.snapshot()
    scorer.close()
    assert [s["rewards"].item() for s in singles] == pytest.approx([expected[i % len(texts)] for i in range(64)], abs=TOL)
    assert after["requests"] - before["requests"] == 64 and after["batches"] - before["batches"] < 64  # shared forwards


def test_both_adapters_give_the_same_rewards_against_a_server(tiny_rm, tiny_ckpt, local):
    prompts, completions, convs = trl_batch()
    texts = openrlhf_texts()
    server_scorer = LocalScorer(RewardModel.from_pretrained(tiny_ckpt))
    with running_server(server_scorer, api_key=KEY) as url:
        remote = RemoteScorer(f"{url}/get_reward", api_key=KEY, batch_size=3)  # an endpoint URL works too; 3 per request
        assert trl_reward_func(remote)(prompts=prompts, completions=completions) == pytest.approx(
            trl_reward_func(local)(prompts=prompts, completions=completions), abs=TOL)
        out = openrlhf_reward_func(remote)(texts, None, None)
        assert out["rewards"].tolist() == pytest.approx(tiny_rm.score_texts(texts), abs=TOL)
        assert out["extra_logs"]["raw_reward"].tolist() == pytest.approx(tiny_rm.score_texts(texts), abs=TOL)
        assert remote.health()["status"] == "ok"
        with pytest.raises(UserError, match="HTTP 401.*invalid API key"):
            trl_reward_func(url=url, api_key="wrong")(prompts=prompts, completions=completions)
        with pytest.raises(UserError, match="HTTP 422"):
            RemoteScorer(url, api_key=KEY).score_conversations([[{"role": "user", "content": "no reply"}]])
        remote.close()


@contextlib.contextmanager
def scripted_server(answers):
    """A plain HTTP server on 127.0.0.1 answering POSTs with `answers` in turn ((status, JSON body); the last one repeats);
    yields (base URL, the paths it was asked for)."""
    calls = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            calls.append(self.path)
            status, body = answers[min(len(calls), len(answers)) - 1]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


def test_remote_scorer_retries_transient_failures_then_gives_up():
    ok = (200, {"rewards": [0.5], "scores": [0.62], "extra_logs": {"raw_reward": [1.0]}})
    with scripted_server([(503, {"error": "server busy"}), (503, {"error": "server busy"}), ok]) as (url, calls):
        scorer = RemoteScorer(url, retries=3, backoff_s=0.001)
        assert scorer.score_texts(["t"]) == ([0.5], [1.0]) and calls == ["/get_reward"] * 3
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(RuntimeError, match="no answer after 3 tries.*(refused|URLError)"):
        RemoteScorer(f"http://127.0.0.1:{closed}", retries=2, backoff_s=0.001).score_texts(["t"])
    with scripted_server([(200, {"rewards": []})]) as (url, _):
        with pytest.raises(RuntimeError, match="0 rewards for 1 items"):
            RemoteScorer(url).score_texts(["t"])
    with scripted_server([(422, {"error": "query[0]: not valid Unicode"})]) as (url, calls):
        with pytest.raises(UserError, match=r"HTTP 422\): query\[0\]: not valid Unicode"):
            RemoteScorer(url, retries=3, backoff_s=0.001).score_texts(["t"])
        assert len(calls) == 1  # a 4xx is not retried
    with pytest.raises(UserError, match="http://"):
        RemoteScorer("rm.test:5000")


def test_remote_client_needs_only_the_standard_library():
    """The remote reward functions install anywhere: importing them pulls in no HTTP package and not torch."""
    code = ("import sys; import worldpm.serve.reward_funcs, worldpm.serve.client; "
            "bad = sorted(m for m in ('httpx', 'requests', 'aiohttp', 'torch', 'transformers', 'fastapi') if m in sys.modules); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_openrlhf_file_hook_loads_like_openrlhf_and_reads_the_environment(tiny_rm, tiny_ckpt, monkeypatch):
    def load_as_openrlhf_does():  # openrlhf/utils/agent.py: spec_from_file_location("reward_func", path) + exec_module
        spec = importlib.util.spec_from_file_location("reward_func", reward_funcs.__file__)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.reward_func

    texts = openrlhf_texts()
    monkeypatch.delenv("WORLDPM_REWARD_URL", raising=False)
    monkeypatch.delenv("WORLDPM_MODEL_PATH", raising=False)
    with pytest.raises(UserError, match="WORLDPM_REWARD_URL"):
        load_as_openrlhf_does()(texts[:1], [""], [""])
    monkeypatch.setenv("WORLDPM_MODEL_PATH", tiny_ckpt)
    monkeypatch.setenv("WORLDPM_DEVICE", "cpu")
    hook = load_as_openrlhf_does()
    assert hook(texts, [""] * len(texts), [""] * len(texts))["rewards"].tolist() == pytest.approx(tiny_rm.score_texts(texts), abs=TOL)
    monkeypatch.delenv("WORLDPM_MODEL_PATH")
    with running_server(LocalScorer(RewardModel.from_pretrained(tiny_ckpt)), api_key=KEY) as url:
        monkeypatch.setenv("WORLDPM_REWARD_URL", url)
        monkeypatch.setenv("WORLDPM_API_KEY", KEY)
        out = load_as_openrlhf_does()(texts[:2], ["", ""], ["", ""])
    assert out["rewards"].tolist() == pytest.approx(tiny_rm.score_texts(texts[:2]), abs=TOL)


def test_adapter_types():
    assert isinstance(trl_reward_func(scorer=object()), TRLRewardFunc)
    assert isinstance(openrlhf_reward_func(scorer=object()), OpenRLHFRewardFunc)
    with pytest.raises(UserError, match="exactly one"):
        trl_reward_func()
