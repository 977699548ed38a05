"""Helpers for the serving tests (and scripts/bench_serve.py): OpenRLHF-shaped texts, a server on 127.0.0.1 in a thread, and
concurrent one-sample clients. Importing this module imports neither pytest nor the test configuration."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from worldpm.model.chat_format import REWARD_TOKEN, render


def openrlhf_texts() -> list[str]:
    """Rollouts as OpenRLHF's client sends them: the decoded prompt+response, ending at the reply's <|im_end|>, plus variants
    already ending in the reward token (one followed by pad tokens) and a non-ChatML text."""
    from tests.conftest import conversations

    texts = [render(c).text[: -len("\n" + REWARD_TOKEN)] for c in conversations()]
    texts[1] += "\n" + REWARD_TOKEN
    texts[2] += REWARD_TOKEN * 3
    return texts + ["plain text with no chat markup at all"]


@contextlib.contextmanager
def running_server(scorer, access_log: bool = True, **app_kwargs):
    """`worldpm serve`'s app and uvicorn server (the same classes the verb uses) on 127.0.0.1, a free port; yields the base URL."""
    from worldpm.serve.server import create_app, make_server

    app = create_app(scorer, **app_kwargs)
    server = make_server(app, "127.0.0.1", 0, shutdown_timeout_s=10, access_log=access_log)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


async def hammer(url: str, texts: list[str], clients: int, requests_each: int, headers: dict | None = None,
                 timeout: float = 300.0) -> tuple[list[tuple[int, float, float]], float]:
    """`clients` concurrent clients, each posting `requests_each` one-sample OpenRLHF requests (`{"query": [text]}`) back to
    back, as OpenRLHF's remote reward client does: (text index, reward, latency in s) per request, and the wall time in s."""
    import httpx

    async def client_loop(c):
        got = []
        async with httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers) as client:
            for k in range(requests_each):
                i = (c * requests_each + k) % len(texts)
                t0 = time.perf_counter()
                r = await client.post("/get_reward", json={"query": [texts[i]], "prompts": [""], "labels": [""]})
                assert r.status_code == 200, r.text
                got.append((i, r.json()["rewards"][0], time.perf_counter() - t0))
        return got

    start = time.perf_counter()
    results = await asyncio.gather(*(client_loop(c) for c in range(clients)))
    return [x for per_client in results for x in per_client], time.perf_counter() - start
