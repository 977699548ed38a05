"""Helpers for the serving tests: a tiny checkpoint on disk, OpenRLHF-shaped texts, and a server on 127.0.0.1 in a thread."""
from __future__ import annotations

import contextlib
import threading
import time

from tests.conftest import conversations
from worldpm.chat_format import REWARD_TOKEN, render


def openrlhf_texts() -> list[str]:
    """Rollouts as OpenRLHF's client sends them: the decoded prompt+response, ending at the reply's <|im_end|>, plus variants
    already ending in the reward token (one followed by pad tokens) and a non-ChatML text."""
    texts = [render(c).text[: -len("\n" + REWARD_TOKEN)] for c in conversations()]
    texts[1] += "\n" + REWARD_TOKEN
    texts[2] += REWARD_TOKEN * 3
    return texts + ["plain text with no chat markup at all"]


@contextlib.contextmanager
def running_server(scorer, access_log: bool = True, **app_kwargs):
    """`worldpm serve`'s app and uvicorn server (the same classes the verb uses) on 127.0.0.1, a free port; yields the base URL."""
    from worldpm.serve import create_app, make_server

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
