"""The client side of `worldpm serve`: `RemoteScorer` (any server of OpenRLHF's /get_reward protocol, and worldpm's /v1/score)
and `wait_healthy` for scripts that start a server. Standard library only (urllib), so the remote reward functions work in any
environment worldpm installs into (a plain TRL or OpenRLHF one included), with neither torch work nor an HTTP package."""
from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from typing import Sequence

from worldpm.errors import UserError
from worldpm.serve.scores import Scores


class RemoteScorer:
    """A client of `worldpm serve` (or any server of OpenRLHF's /get_reward protocol, for texts).

    Connection errors, timeouts, 429 and 5xx answers are retried `retries` times, `backoff_s` apart (doubling, and never sooner
    than a busy server's `Retry-After` asks); a 4xx answer
    (bad input, bad API key) is not retried and raises a one-line UserError with the server's message. Large inputs are sent
    in requests of at most `batch_size` items. `opener`: a `urllib.request.OpenerDirector` of your own (proxies, TLS
    settings); by default urllib's, which honours the usual *_proxy environment variables.
    """

    ENDPOINTS = ("/get_reward", "/v1/score", "/health")

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 180.0, retries: int = 5,
                 backoff_s: float = 1.0, batch_size: int = 64, opener: urllib.request.OpenerDirector | None = None):
        url = str(url).rstrip("/")
        for endpoint in self.ENDPOINTS:  # accept the base URL or an endpoint's URL (OpenRLHF's flag names the endpoint)
            if url.endswith(endpoint):
                url = url[: -len(endpoint)]
        if not url.startswith(("http://", "https://")):
            raise UserError(f"reward server url must start with http:// or https://, got {url!r}")
        self.url, self.retries, self.backoff_s, self.batch_size = url, int(retries), float(backoff_s), int(batch_size)
        self.timeout = float(timeout)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._opener = opener or urllib.request.build_opener()

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, float]:
        """(status, body, seconds its Retry-After asks) of one request; a 4xx/5xx answer is returned, not raised; connection
        troubles raise OSError."""
        request = urllib.request.Request(self.url + path, data=body, headers=self._headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read(), 0.0
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read(), _retry_after(exc.headers)

    def _post(self, path: str, payload: dict) -> dict:
        body = json.dumps(payload).encode()  # ASCII JSON: a lone surrogate travels as \\ud800 and the server names it (422)
        delay, wait, last = self.backoff_s, 0.0, "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(max(delay, wait))
                delay *= 2
            try:
                status, answer, retry_after = self._request("POST", path, body)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, timed out, dropped
                last, wait = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", 0.0
                continue
            if status == 429 or status >= 500:
                last, wait = f"HTTP {status}: {_error_text(answer)}", retry_after
                continue
            if status >= 400:
                raise UserError(f"{self.url}{path} refused the request (HTTP {status}): {_error_text(answer)}")
            try:
                return json.loads(answer)
            except ValueError:
                raise RuntimeError(f"{self.url}{path} answered HTTP {status} with a body that is not JSON: "
                                   f"{answer[:200]!r}") from None
        raise RuntimeError(f"reward server {self.url}{path} gave no answer after {self.retries + 1} tries (last: {last})")

    def _score(self, path: str, key: str, items: list) -> Scores:
        rewards: list[float] = []
        raw: list[float] | None = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            body = self._post(path, {key: chunk})
            got = body.get("rewards")
            if not isinstance(got, list) or len(got) != len(chunk):
                raise RuntimeError(f"{self.url}{path} answered {len(got) if isinstance(got, list) else got!r} rewards "
                                   f"for {len(chunk)} items")
            rewards += [float(r) for r in got]
            chunk_raw = (body.get("extra_logs") or {}).get("raw_reward")
            raw = raw + [float(r) for r in chunk_raw] if raw is not None and isinstance(chunk_raw, list) else None
        return Scores(rewards, raw)

    def score_texts(self, texts: Sequence[str]) -> Scores:
        return self._score("/get_reward", "query", list(texts))

    def score_conversations(self, conversations) -> Scores:
        return self._score("/v1/score", "conversations", [[dict(m) for m in c] for c in conversations])

    def health(self) -> dict:
        status, answer, _ = self._request("GET", "/health")
        if status != 200:
            raise RuntimeError(f"{self.url}/health answered HTTP {status}: {_error_text(answer)}")
        return json.loads(answer)

    def close(self) -> None:
        """Nothing to release (a connection per request); kept so a scorer can be closed whatever its kind."""


def _retry_after(headers, longest: float = 60.0) -> float:
    """The seconds a 429/503 answer's `Retry-After` asks to wait (its delta-seconds form; 0 when absent or a date), at most
    `longest`."""
    try:
        return min(max(float((headers or {}).get("Retry-After", 0)), 0.0), longest)
    except ValueError:
        return 0.0


def _error_text(answer: bytes) -> str:
    try:
        body = json.loads(answer)
        return str(body.get("error") or body.get("detail") or body) if isinstance(body, dict) else str(body)
    except ValueError:
        return answer[:200].decode(errors="replace")


def wait_healthy(url: str, timeout: float = 120.0, proc=None, interval: float = 0.2) -> dict:
    """Wait until a `worldpm serve` at `url` answers GET /health with 200; its body.

    `proc`: the server's `subprocess.Popen` (or pid): its exit ends the wait with a RuntimeError (with the end of its stderr when
    that is a pipe). No answer within `timeout` seconds: TimeoutError.
    """
    url = str(url).rstrip("/")
    if url.endswith("/health"):
        url = url[: -len("/health")]
    deadline = time.monotonic() + timeout
    while True:
        _check_running(proc, url)
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                answer = response.read()
            try:
                return json.loads(answer)
            except ValueError:
                return {}
        except (urllib.error.URLError, OSError, http.client.HTTPException):  # not up yet (or not answering 200 yet)
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health gave no answer within {timeout:g} s")
        time.sleep(interval)


def _check_running(proc, url: str) -> None:
    if proc is None:
        return
    if isinstance(proc, int):
        try:
            os.kill(proc, 0)
        except ProcessLookupError:
            raise RuntimeError(f"the server for {url} (pid {proc}) exited before it answered /health") from None
        return
    if proc.poll() is not None:
        err = proc.communicate()[1] if proc.stderr is not None else ""
        err = err.decode(errors="replace") if isinstance(err, bytes) else err or ""
        raise RuntimeError(f"the server for {url} exited with status {proc.returncode} before it answered /health: "
                           f"{err[-2000:]}")
