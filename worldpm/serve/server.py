"""`worldpm serve`: an HTTP reward server speaking OpenRLHF's remote reward-model protocol (FastAPI + uvicorn).

Endpoints (the HTTP contract, ARCHITECTURE.md):

- `POST /get_reward` `{"query": [text, ...], "prompts": [...], "labels": [...]}` (only `query` required; each text a full
  rendered prompt+response, scored as given with the reward token appended when absent) ->
  `{"rewards": [...], "scores": [...], "extra_logs": {"raw_reward": [...]}}`. `rewards` are normalised/clipped when asked;
  `scores` = sigmoid(rewards) in (0, 1), what OpenRLHF's dynamic filtering reads; `raw_reward` is the model's own output.
- `POST /v1/score` `{"conversations": [[{role, content}, ...], ...]}` -> `{"rewards": [...]}`; or N responses to one prompt,
  `{"prompt": [{role, content}, ...] or "text", "responses": ["...", ...]}` -> `{"rewards": [...]}` (one per response).
- `GET /health` -> `{"status": "ok", "pending": n, "limits": {...}, "traffic": {...}}` (no auth, no model details; traffic
  holds the micro-batcher's counts since start: requests, sequences, tokens, batches, largest_batch).

Concurrent requests are gathered for `batching.window_ms` up to `batching.max_tokens` and scored in one forward
(worldpm.serve.batcher); responses to one prompt in a gathered batch — one request's, or several requests' — are scored with
the prompt encoded once (`batching.shared_prompt`), the same rewards as alone. Safe by default: binds 127.0.0.1; with `api_key` every scoring request needs
`Authorization: Bearer <api_key>` (compared in constant time); request bodies, items and items' lengths are bounded; bad
requests get a 4xx with `{"error": "..."}` and never reach the model; bodies are never logged. SIGTERM/SIGINT stop taking
connections, finish the requests in flight, then exit 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import signal
import socket
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from omegaconf import DictConfig, OmegaConf
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request  # at module level: FastAPI resolves the (string) annotations of the routes here

from worldpm.config import check
from worldpm.errors import UserError
from worldpm.model.chat_format import check_conversation, check_text, responses_conversations
from worldpm.model.loader import describe, load_reward_model, model_source
from worldpm.serve.scorers import LocalScorer, check_statistics
from worldpm.serve.scores import sigmoid

log = logging.getLogger("worldpm.serve")


@dataclass(frozen=True)
class Limits:
    max_items_per_request: int = 512
    max_chars_per_item: int = 200_000
    max_body_bytes: int = 32 * 1024 * 1024
    max_pending_requests: int = 4096

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise UserError(f"limits.{name} must be a positive integer, got {value!r}")


def check_api_key(api_key) -> None:
    """An api_key that is set must not be blank: refused by both the verb (before the model loads) and create_app."""
    if api_key is not None and not str(api_key).strip():
        raise UserError("api_key is set but empty; give a real key or leave it unset (null)")


TRAFFIC_KEYS = ("requests", "sequences", "tokens", "batches", "largest_batch")  # what /health tells of the traffic: counts only


def traffic(scorer) -> dict:
    snapshot = scorer.batcher.stats.snapshot()
    return {k: snapshot[k] for k in TRAFFIC_KEYS}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# ---------------------------------------------------------------------- request checks
async def read_json(request, max_body_bytes: int):
    """The parsed JSON body; 413 past `max_body_bytes` (checked on the declared length first, then while reading), 400 if bad."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > max_body_bytes:
            raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {max_body_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise ApiError(413, f"request body is over the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {type(exc).__name__}") from None


def _field(body, key: str, required: bool = True):
    if not isinstance(body, dict):
        raise ApiError(422, f"request body must be a JSON object, got {type(body).__name__}")
    if key not in body or body[key] is None:
        if required:
            raise ApiError(422, f"request body has no {key!r} field")
        return None
    value = body[key]
    if not isinstance(value, list):
        raise ApiError(422, f"{key!r} must be a list, got {type(value).__name__}")
    return value


def check_queries(body, limits: Limits) -> list[str]:
    queries = _field(body, "query")
    if len(queries) > limits.max_items_per_request:
        raise ApiError(413, f"'query' has {len(queries)} items; the limit is {limits.max_items_per_request} per request")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise ApiError(422, f"query[{i}] must be a string, got {type(q).__name__}")
        if len(q) > limits.max_chars_per_item:
            raise ApiError(413, f"query[{i}] has {len(q)} characters; the limit is {limits.max_chars_per_item}")
        try:
            check_text(q, f"query[{i}]")
        except UserError as exc:
            raise ApiError(422, str(exc)) from None
    for key in ("prompts", "labels"):  # OpenRLHF sends them alongside; a reward model reads only the full texts
        extra = _field(body, key, required=False)
        if extra is not None and len(extra) != len(queries):
            raise ApiError(422, f"{key!r} has {len(extra)} items but 'query' has {len(queries)}")
    return queries


def check_conversations(body, limits: Limits) -> list[list[dict]]:
    """/v1/score's conversations: `conversations`, or a `prompt` with its `responses` (one conversation per response)."""
    if isinstance(body, dict) and ("responses" in body or "prompt" in body):
        if "conversations" in body:
            raise ApiError(422, "give either 'conversations' or 'prompt' with 'responses', not both")
        responses, prompt, key = _field(body, "responses"), body.get("prompt"), "responses"
        if not isinstance(prompt, (str, list)) or not prompt:
            raise ApiError(422, "'prompt' must be a string or a non-empty list of {role, content} messages")
        for i, r in enumerate(responses):
            if not isinstance(r, str):
                raise ApiError(422, f"responses[{i}] must be a string, got {type(r).__name__}")
        conversations = responses_conversations(prompt, responses)
    else:
        conversations, key = _field(body, "conversations"), "conversations"
    if len(conversations) > limits.max_items_per_request:
        raise ApiError(413, f"'{key}' has {len(conversations)} items; the limit is {limits.max_items_per_request} per request")
    out = []
    for i, conv in enumerate(conversations):
        try:
            messages = check_conversation(conv, where=f"{key}[{i}]")
        except UserError as exc:
            raise ApiError(422, str(exc)) from None
        chars = sum(len(m["content"]) for m in messages)
        if chars > limits.max_chars_per_item:
            raise ApiError(413, f"{key}[{i}] has {chars} characters; the limit is {limits.max_chars_per_item}")
        out.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return out


# ---------------------------------------------------------------------- the app
def create_app(scorer, *, api_key: str | None = None, limits: Limits | None = None, log_every_s: float = 60.0,
               close_scorer: bool = True):
    """The FastAPI app around a LocalScorer. `close_scorer`: drain and stop the scorer when the app shuts down."""
    limits = limits or Limits()
    check_api_key(api_key)
    expected = str(api_key).encode() if api_key is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        reporter = asyncio.create_task(_report(scorer, log_every_s)) if log_every_s and log_every_s > 0 else None
        try:
            yield
        finally:
            if reporter:
                reporter.cancel()
            if close_scorer:  # every request that got an answer future is answered before the worker stops
                await asyncio.to_thread(scorer.close)
            log.info("scorer stopped: %s", json.dumps(scorer.batcher.stats.snapshot()))

    app = FastAPI(title="worldpm reward server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scorer = scorer

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # 404 / 405 in the same {"error": ...} shape
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def authorize(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing 'Authorization: Bearer <api_key>' header", challenge)
        if not hmac.compare_digest(token.strip().encode(), expected):
            raise ApiError(401, "invalid API key", challenge)

    def admit() -> None:
        if scorer.batcher.pending >= limits.max_pending_requests:
            raise ApiError(503, f"server busy: {scorer.batcher.pending} requests queued; retry shortly", {"Retry-After": "1"})

    async def raw_rewards(encode, items) -> list[float]:
        try:
            ids = await asyncio.to_thread(encode, items)  # tokenising off the event loop
        except UserError as exc:
            raise ApiError(422, str(exc)) from None
        return await asyncio.wrap_future(scorer.submit(ids))

    @app.post("/get_reward")
    async def get_reward(request: Request):
        authorize(request)
        admit()
        queries = check_queries(await read_json(request, limits.max_body_bytes), limits)
        raw = await raw_rewards(scorer.encode_texts, queries)
        rewards = scorer.transform(raw)
        return {"rewards": rewards, "scores": [sigmoid(r) for r in rewards], "extra_logs": {"raw_reward": raw}}

    @app.post("/v1/score")
    async def score(request: Request):
        authorize(request)
        admit()
        conversations = check_conversations(await read_json(request, limits.max_body_bytes), limits)
        return {"rewards": scorer.transform(await raw_rewards(scorer.encode_conversations, conversations))}

    @app.get("/health")
    async def health():
        return {"status": "ok", "pending": scorer.batcher.pending,
                "limits": {"max_items_per_request": limits.max_items_per_request,
                           "max_chars_per_item": limits.max_chars_per_item, "max_body_bytes": limits.max_body_bytes},
                "traffic": traffic(scorer)}

    return app


async def _report(scorer, every_s: float) -> None:
    """A log line per period with traffic: requests, batches, how many requests a batch served, how busy the model was."""
    last = scorer.batcher.stats.snapshot()
    while True:
        await asyncio.sleep(every_s)
        now = scorer.batcher.stats.snapshot()
        requests, batches = now["requests"] - last["requests"], now["batches"] - last["batches"]
        if batches:
            log.info("last %.0f s: %d requests, %d sequences, %d tokens in %d batches (%.1f requests/batch), model busy %.0f%%",
                     every_s, requests, now["sequences"] - last["sequences"], now["tokens"] - last["tokens"], batches,
                     requests / batches, 100 * (now["busy_s"] - last["busy_s"]) / every_s)
        last = now


# ---------------------------------------------------------------------- the verb
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def make_server(app, host: str, port: int, shutdown_timeout_s: float, access_log: bool):
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # uvicorn re-raises a caught signal once its graceful shutdown is done, which ends a clean stop with status 143 or
            # a KeyboardInterrupt traceback; here a finished graceful shutdown is a normal exit. A second SIGINT forces it.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=int(shutdown_timeout_s), server_header=False)
    return Server(config)


def run(cfg: DictConfig) -> None:
    cfg = check("serve", cfg)  # types, ranges (port, limits), the api_key (worldpm/config/schemas.py): one line
    host, port = str(cfg.host), cfg.port
    limits = Limits(**OmegaConf.to_container(cfg.limits, resolve=True))
    batching = cfg.batching
    _check_port_free(host, port)

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    check_statistics(cfg.model_path or model_cfg.get("path"), bool(cfg.normalize))
    model = load_reward_model(model_cfg, cfg.model_path, device=cfg.device, dtype=cfg.dtype)
    scorer = LocalScorer(model, normalize=bool(cfg.normalize), clip=cfg.clip, max_length=cfg.max_length,
                         batching=bool(batching.enabled), window_ms=float(batching.window_ms),
                         max_tokens=int(batching.max_tokens), max_batch_size=int(batching.max_batch_size),
                         max_padding=batching.max_padding, shared_prompt=batching.shared_prompt,
                         where=model_source(cfg.model_path, model_cfg))
    app = create_app(scorer, api_key=cfg.api_key, limits=limits, log_every_s=float(cfg.log_every_s))
    log.info("model %s; max_length %d tokens", describe(model, cfg.model_path, model_cfg), scorer.max_length)
    log.info("auth %s; batching %s; rewards %s%s", "on (Bearer api_key)" if cfg.api_key else "off",
             f"on (window {batching.window_ms} ms, budget {batching.max_tokens} tokens)" if batching.enabled else "off",
             "normalised with the checkpoint's mean/std" if scorer.transform.normalizes else "raw",
             f", clipped to ±{cfg.clip}" if cfg.clip is not None else "")
    if not _is_loopback(host) and not cfg.api_key:
        log.warning("listening on %s without api_key: anyone who can reach this port can use the model", host)
    started = time.perf_counter()
    make_server(app, host, port, float(cfg.shutdown_timeout_s), bool(cfg.access_log)).run()
    log.info("stopped after %.0f s", time.perf_counter() - started)
