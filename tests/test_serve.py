"""`worldpm serve` on 127.0.0.1 with the tiny model: OpenRLHF's protocol, /v1/score, auth, limits, batching, shutdown."""
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import conversations, make_tiny
from tests.serving import hammer, openrlhf_texts, running_server
from worldpm.errors import UserError
from worldpm.model.reward_model import RewardModel
from worldpm.serve.client import wait_healthy
from worldpm.serve.scorers import LocalScorer
from worldpm.serve.scores import sigmoid
from worldpm.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    """The checkpoint as the server loads it (a separate instance from `tiny_rm`: the round trip is part of what is tested)."""
    return RewardModel.from_pretrained(tiny_ckpt)


def test_get_reward_batched_and_one_per_request_match_the_python_api(tiny_rm, served):
    texts = openrlhf_texts()
    expected = tiny_rm.score_texts(texts)
    # the rendered-elsewhere texts are the conversations themselves: the suffix is completed to WorldPM's
    assert expected[:len(conversations())] == pytest.approx(tiny_rm.score(conversations()), abs=TOL)
    assert max(expected) - min(expected) > 0.05
    with running_server(LocalScorer(served)) as url, httpx.Client(base_url=url, timeout=60) as client:
        batched = client.post("/get_reward", json={"query": texts, "prompts": ["p"] * len(texts), "labels": [None] * len(texts)})
        assert batched.status_code == 200, batched.text
        body = batched.json()
        assert set(body) == {"rewards", "scores", "extra_logs"}
        assert body["rewards"] == pytest.approx(expected, abs=TOL)
        assert body["extra_logs"]["raw_reward"] == pytest.approx(expected, abs=TOL)
        assert body["scores"] == pytest.approx([sigmoid(r) for r in body["rewards"]], abs=1e-9)
        one_by_one = []
        for t in texts:  # OpenRLHF's current client: one sample per request, only `query` required
            r = client.post("/get_reward", json={"query": [t]})
            assert r.status_code == 200, r.text
            one_by_one += r.json()["rewards"]
        assert one_by_one == pytest.approx(expected, abs=TOL)
        empty = client.post("/get_reward", json={"query": []}).json()
        assert empty == {"rewards": [], "scores": [], "extra_logs": {"raw_reward": []}}


def test_v1_score_matches_the_python_api(tiny_rm, served):
    convs = conversations()
    expected = tiny_rm.score(convs)
    with running_server(LocalScorer(served)) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/v1/score", json={"conversations": convs})
        assert r.status_code == 200 and set(r.json()) == {"rewards"}
        assert r.json()["rewards"] == pytest.approx(expected, abs=TOL)
        singles = [client.post("/v1/score", json={"conversations": [c]}).json()["rewards"][0] for c in convs]
        assert singles == pytest.approx(expected, abs=TOL)
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"


def test_auth_on_and_off(served):
    payload = {"query": openrlhf_texts()[:2]}
    with running_server(LocalScorer(served), api_key=KEY) as url, httpx.Client(base_url=url, timeout=60) as client:
        for headers, message in (({}, "missing"), ({"Authorization": "Bearer wrong-key"}, "invalid API key"),
                                 ({"Authorization": f"Basic {KEY}"}, "missing"), ({"Authorization": "Bearer"}, "missing"),
                                 ({"Authorization": f"Bearer {KEY}x"}, "invalid API key")):
            for path, body in (("/get_reward", payload), ("/v1/score", {"conversations": conversations()[:1]})):
                r = client.post(path, json=body, headers=headers)
                assert r.status_code == 401 and message in r.json()["error"], (path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        ok = client.post("/get_reward", json=payload, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and len(ok.json()["rewards"]) == 2
        assert client.post("/v1/score", json={"conversations": conversations()[:1]},
                           headers={"authorization": f"bearer {KEY}"}).status_code == 200  # scheme is case-insensitive
        assert client.get("/health").status_code == 200  # health needs no key and tells nothing about the model
    with running_server(LocalScorer(served)) as url:  # no api_key: no header needed
        assert httpx.post(f"{url}/get_reward", json=payload, timeout=60).status_code == 200
    with pytest.raises(UserError, match="empty"):
        running_server(LocalScorer(served), api_key="  ").__enter__()


def _chunked(data: bytes, size: int = 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


BAD_REQUESTS = [
    # (name, path, content bytes | json object, expected status, text in the error)
    ("not json", "/get_reward", b'{"query": ["a"', 400, "not valid JSON"),
    ("not utf-8", "/get_reward", b'\xff\xfe{"query": 1}', 400, "not valid JSON"),
    ("empty body", "/get_reward", b"", 400, "not valid JSON"),
    ("body not an object", "/get_reward", [1, 2], 422, "JSON object"),
    ("no query", "/get_reward", {"prompts": ["a"]}, 422, "no 'query'"),
    ("query is a string", "/get_reward", {"query": "a text"}, 422, "'query' must be a list"),
    ("query item not a string", "/get_reward", {"query": ["ok", 3]}, 422, "query[1] must be a string"),
    ("prompts not a list", "/get_reward", {"query": ["a"], "prompts": "p"}, 422, "'prompts' must be a list"),
    ("labels of another length", "/get_reward", {"query": ["a"], "labels": [1, 2]}, 422, "'labels' has 2 items"),
    ("too many items", "/get_reward", {"query": ["a"] * 9}, 413, "limit is 8"),
    ("item too long", "/get_reward", {"query": ["a", "x" * 2001]}, 413, "query[1] has 2001 characters"),
    ("body too large", "/get_reward", {"query": ["y" * 1000] * 5, "prompts": ["z" * 4000] * 5}, 413, "over the limit"),
    ("conversations missing", "/v1/score", {"query": ["a"]}, 422, "no 'conversations'"),
    ("conversation not a list", "/v1/score", {"conversations": ["hello"]}, 422, "conversations[0]"),
    ("message without role", "/v1/score", {"conversations": [[{"content": "hi"}]]}, 422, "message 0"),
    ("unknown role", "/v1/score", {"conversations": [[{"role": "robot", "content": "hi"}]]}, 422, "'robot'"),
    ("content not a string", "/v1/score", {"conversations": [[{"role": "assistant", "content": 5}]]}, 422, "content is int"),
    ("last turn not the assistant", "/v1/score", {"conversations": [[{"role": "user", "content": "hi"}]]}, 422,
     "assistant"),
    ("lone surrogate in a query", "/get_reward", {"query": ["fine", "bad \ud800 text"]}, 422,
     "query[1]: not valid Unicode: lone surrogate '\\ud800' at character 4"),
    ("lone surrogate in a message", "/v1/score", {"conversations": [conversations()[0], [{"role": "user", "content": "q"},
                                                                                   {"role": "assistant", "content": "\udfff"}]]},
     422, "conversations[1]: message 1 content: not valid Unicode"),
    ("conversation too long", "/v1/score", {"conversations": [[{"role": "user", "content": "q" * 1500},
                                                                {"role": "assistant", "content": "a" * 600}]]}, 413,
     "2100 characters"),
]


def test_every_bad_request_gets_a_json_4xx_and_the_server_keeps_serving(tiny_rm, served):
    from worldpm.serve.server import Limits

    limits = Limits(max_items_per_request=8, max_chars_per_item=2000, max_body_bytes=16384)
    good = openrlhf_texts()[:3]
    with running_server(LocalScorer(served), limits=limits) as url, httpx.Client(base_url=url, timeout=60) as client:
        for name, path, content, status, needle in BAD_REQUESTS:
            data = content if isinstance(content, bytes) else json.dumps(content).encode()
            r = client.post(path, content=data, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (name, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json" and needle in r.json()["error"], (name, r.text)
        # an oversize body sent chunked (no Content-Length) is refused while it is read
        big = json.dumps({"query": ["w" * 1500] * 12}).encode()
        r = client.post("/get_reward", content=_chunked(big), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]
        assert client.get("/get_reward").status_code == 405 and "error" in client.get("/get_reward").json()
        assert client.get("/nowhere").status_code == 404
        r = client.post("/get_reward", json={"query": good})
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx(tiny_rm.score_texts(good), abs=TOL)


def test_a_lone_surrogate_is_a_4xx_naming_the_item_and_no_traceback(served, caplog):
    """JSON may escape half a UTF-16 pair ("\\ud800"); no tokenizer takes it. The answer names the item; the log has no traceback."""
    caplog.set_level(logging.DEBUG)
    with running_server(LocalScorer(served)) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/get_reward", content=b'{"query": ["ok", "x\\ud800"]}', headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith("query[1]: not valid Unicode"), r.text
        r = client.post("/v1/score", content=b'{"conversations": [[{"role": "user", "content": "\\udc00"}, '
                                             b'{"role": "assistant", "content": "a"}]]}', headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith("conversations[0]: message 0 content"), r.text
        assert client.post("/get_reward", json={"query": ["ok \U0001F600 paired"]}).status_code == 200  # a real pair is fine
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text


def test_normalisation_and_clipping_with_the_checkpoint_statistics(tiny_rm, tmp_path):
    texts = openrlhf_texts()
    raw = tiny_rm.score_texts(texts)
    mean, std = sum(raw) / len(raw), (max(raw) - min(raw)) / 4  # normalised rewards spread over about [-2, 2]
    stats_rm = make_tiny(reward_mean=mean, reward_std=std)  # same weights as `tiny_rm` (same seeds), statistics in the worldpm block
    path = stats_rm.save_pretrained(tmp_path / "with-stats")
    assert json.loads((path / "config.json").read_text())["worldpm"]["reward_std"] == std
    loaded = RewardModel.from_pretrained(path)
    with running_server(LocalScorer(loaded, normalize=True, clip=1.5)) as url:
        body = httpx.post(f"{url}/get_reward", json={"query": texts}, timeout=60).json()
    expected = [min(max((r - mean) / std, -1.5), 1.5) for r in raw]
    assert body["extra_logs"]["raw_reward"] == pytest.approx(raw, abs=TOL)
    assert body["rewards"] == pytest.approx(expected, abs=1e-4)
    assert any(abs(r) == 1.5 for r in body["rewards"]) and any(abs(r) < 1.5 for r in body["rewards"])
    with running_server(LocalScorer(loaded, clip=0.001)) as url:  # clipping alone, on raw rewards
        clipped = httpx.post(f"{url}/v1/score", json={"conversations": conversations()}, timeout=60).json()["rewards"]
    assert clipped == pytest.approx([min(max(r, -0.001), 0.001) for r in tiny_rm.score(conversations())], abs=TOL)


def test_normalisation_without_statistics_is_a_clear_error(served):
    with pytest.raises(UserError, match="stores no reward_mean/reward_std"):
        LocalScorer(served, normalize=True)
    with pytest.raises(UserError, match="clip must be a positive"):
        LocalScorer(served, clip=-1.0)


def test_32_concurrent_clients_x_20_requests_share_forwards_and_all_get_their_own_reward(tiny_rm, served):
    texts = openrlhf_texts()
    expected = tiny_rm.score_texts(texts)
    scorer = LocalScorer(served, window_ms=10)
    with running_server(scorer, api_key=KEY) as url:
        got, _ = asyncio.run(hammer(url, texts, clients=32, requests_each=20, headers={"Authorization": f"Bearer {KEY}"},
                                    timeout=120))
    assert len(got) == 640
    for i, reward, _ in got:
        assert reward == pytest.approx(expected[i], abs=TOL)
    stats = scorer.batcher.stats.snapshot()
    assert stats["requests"] == 640 and stats["batches"] < 640 / 2 and stats["largest_batch"] > 4, stats  # gathered


def test_batching_off_scores_every_request_alone(tiny_rm, served):
    texts = openrlhf_texts()
    scorer = LocalScorer(served, batching=False)
    with running_server(scorer) as url:
        got, _ = asyncio.run(hammer(url, texts, clients=8, requests_each=4, timeout=120))
        health = wait_healthy(url, timeout=10)
    expected = tiny_rm.score_texts(texts)
    assert all(r == pytest.approx(expected[i], abs=TOL) for i, r, _ in got)
    stats = scorer.batcher.stats.snapshot()
    assert stats["requests"] == stats["batches"] == 32 and stats["largest_batch"] == 1
    # /health reports the traffic counts (nothing else of the batcher: no timings)
    assert health["traffic"] == {k: stats[k] for k in ("requests", "sequences", "tokens", "batches", "largest_batch")}


class RecordingHandler(urllib.request.BaseHandler):
    """A urllib handler that notes each answer's status and when it came (what a client saw, in order)."""

    handler_order = 100  # before urllib's error handling turns a 503 into an exception

    def __init__(self):
        self.answers: list[tuple[int, float]] = []

    def http_response(self, request, response):
        self.answers.append((response.status, time.monotonic()))
        return response


def test_a_full_queue_answers_503_with_retry_after_and_a_client_that_waits_gets_its_reward(tiny_rm, served):
    """Back-pressure, for real: the model is held busy, the queue fills to limits.max_pending_requests, the next requests
    get 503 + Retry-After without reaching the model, /health stays up, and once the model is free every queued request and
    the RemoteScorer that backed off (for the Retry-After's second, not its own shorter backoff) get their rewards."""
    from worldpm.serve.client import RemoteScorer
    from worldpm.serve.server import Limits

    texts = openrlhf_texts()
    expected = tiny_rm.score_texts(texts)
    scorer = LocalScorer(served, batching=False)
    release, entered = threading.Event(), threading.Event()
    score_ids = scorer.batcher.score_ids

    def held_model(sequences, **prompts):
        entered.set()
        release.wait(60)
        return score_ids(sequences, **prompts)

    scorer.batcher.score_ids = held_model
    answers, threads = {}, []

    def post(name, i):
        answers[name] = httpx.post(f"{url}/get_reward", json={"query": [texts[i]]}, timeout=60)

    try:
        with running_server(scorer, limits=Limits(max_pending_requests=2)) as url:
            for name, i in (("first", 0), ("second", 1)):
                threads.append(threading.Thread(target=post, args=(name, i)))
                threads[-1].start()
            deadline = time.monotonic() + 60
            while httpx.get(f"{url}/health", timeout=10).json()["pending"] < 2:  # one in the model, one queued
                assert time.monotonic() < deadline, "the two requests were never queued"
                time.sleep(0.01)
            assert entered.is_set()
            busy = httpx.post(f"{url}/get_reward", json={"query": [texts[2]]}, timeout=10)
            busy_v1 = httpx.post(f"{url}/v1/score", json={"conversations": conversations()[:1]}, timeout=10)
            for r in (busy, busy_v1):
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                assert "server busy: 2 requests queued" in r.json()["error"]
            assert httpx.get(f"{url}/health", timeout=10).json()["pending"] == 2  # refused requests were never queued
            transport = RecordingHandler()
            remote = RemoteScorer(url, retries=5, backoff_s=0.05, opener=urllib.request.build_opener(transport))
            threads.append(threading.Thread(target=lambda: answers.update(remote=remote.score_texts([texts[3]]))))
            threads[-1].start()
            while not transport.answers:  # its first try is refused while the queue is full
                assert time.monotonic() < deadline and threads[-1].is_alive()
                time.sleep(0.01)
            release.set()
            for t in threads:
                t.join(60)
            remote.close()
            after = httpx.post(f"{url}/get_reward", json={"query": [texts[4]]}, timeout=60)
    finally:
        release.set()
    assert [status for status, _ in transport.answers] == [503, 200]
    assert transport.answers[1][1] - transport.answers[0][1] >= 0.95  # it waited for Retry-After, not its 0.05 s backoff
    assert answers["remote"].rewards == pytest.approx([expected[3]], abs=TOL)
    for name, i in (("first", 0), ("second", 1)):
        assert answers[name].status_code == 200 and answers[name].json()["rewards"] == pytest.approx([expected[i]], abs=TOL)
    assert after.status_code == 200 and after.json()["rewards"] == pytest.approx([expected[4]], abs=TOL)
    stats = scorer.batcher.stats.snapshot()
    assert stats["requests"] == 4  # the two queued, the client's retry, the one after: the 503s never reached the model


def test_wait_healthy_stops_when_the_server_process_exits_or_the_time_is_up():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError, match="exited with status 3.*boom"):
        wait_healthy(url, timeout=60, proc=proc)
    with pytest.raises(TimeoutError, match="/health"):
        wait_healthy(url, timeout=0.3, interval=0.05)


def test_request_bodies_are_never_logged(served, caplog):
    marker = "SECRET-PROMPT-7f3a9c"
    caplog.set_level(logging.DEBUG)
    with running_server(LocalScorer(served), api_key=KEY, log_every_s=0.05) as url, httpx.Client(base_url=url, timeout=60) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert client.post("/get_reward", json={"query": [f"<|im_start|>user\n{marker}<|im_end|>"]}, headers=auth).status_code == 200
        assert client.post("/get_reward", json={"query": [marker, 1]}, headers=auth).status_code == 422
        assert client.post("/get_reward", content=f'{{"query": ["{marker}"'.encode(), headers=auth).status_code == 400
        assert client.post("/v1/score", json={"conversations": [[{"role": "robot", "content": marker}]]},
                           headers=auth).status_code == 422
        assert client.post("/get_reward", json={"query": [marker]}).status_code == 401
        time.sleep(0.2)  # let the traffic summary run
    assert "POST /get_reward" in caplog.text  # the access log is on, and it is the only trace of a request
    assert "requests/batch" in caplog.text
    assert marker not in caplog.text and KEY not in caplog.text


# ---------------------------------------------------------------------- the verb, as a process
def _serve_process(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLDPM_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "worldpm", "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(tiny_rm, tiny_ckpt):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # a 1.5 s batching window keeps the request in flight while the signal arrives
    proc = _serve_process(f"model_path={tiny_ckpt}", f"port={port}", "batching.window_ms=1500", "access_log=true")
    try:
        wait_healthy(url, timeout=120, proc=proc)
        texts = openrlhf_texts()
        answer = {}
        sender = threading.Thread(target=lambda: answer.update(r=httpx.post(f"{url}/get_reward", json={"query": texts}, timeout=60)))
        sender.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        sender.join(60)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert answer["r"].status_code == 200, err
    assert answer["r"].json()["rewards"] == pytest.approx(tiny_rm.score_texts(texts), abs=TOL)
    assert proc.returncode == 0, err
    assert "Shutting down" in err and "scorer stopped" in err and "Traceback" not in err
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/get_reward", json={"query": texts[:1]}, timeout=5)


@pytest.mark.parametrize("args,needle", [
    (["normalize=true"], "reward_mean/reward_std"),
    (["port=70000"], "70000"),
    (["api_key="], "api_key"),
    (["dtype=float8"], "float8"),
    (["batching.shared_prompt=sometimes"], "batching.shared_prompt='sometimes': expected true or false"),
])
def test_bad_serve_config_is_a_one_line_error(tiny_ckpt, args, needle):
    proc = _serve_process(f"model_path={tiny_ckpt}", *args)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert proc.returncode == 2 and len(lines) == 1 and "error" in lines[0] and needle in lines[0], err


def test_port_in_use_is_a_one_line_error(tiny_ckpt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = _serve_process(f"model_path={tiny_ckpt}", f"port={s.getsockname()[1]}")
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "cannot listen on 127.0.0.1" in err and "Traceback" not in err
