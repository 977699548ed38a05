"""Scorers: rewards for rendered texts or conversations, from a model in this process or from a running `worldpm serve`.

Both kinds answer the same two calls, so the trainer adapters (worldpm.reward_funcs) work the same against either:

- `score_texts(texts)`: full ChatML texts as OpenRLHF sends them (the reward token is appended when absent);
- `score_conversations(conversations)`: lists of {role, content} ending with the assistant reply.

Each returns `Scores(rewards, raw)`: `rewards` after the optional normalisation with the checkpoint's stored mean/std and
clipping, `raw` the model's own output (None when a server does not report it).

`LocalScorer` puts a `MicroBatcher` in front of the model, so concurrent callers (OpenRLHF calls a local reward function from
many threads, one sample each; the HTTP server from many requests) share forward passes. `worldpm serve` is a LocalScorer
behind HTTP.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import Future
from functools import partial
from typing import Any, Mapping, NamedTuple, Sequence

from worldpm.errors import UserError
from worldpm.micro_batching import MicroBatcher

log = logging.getLogger("worldpm.scorer")


class Scores(NamedTuple):
    rewards: list[float]
    raw: list[float] | None


# ---------------------------------------------------------------------- device and precision
def resolve_device(device: str | None) -> str:
    """`auto`: the first GPU when there is one, else the CPU."""
    import torch

    device = str(device or "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} asked for, but torch sees no CUDA device (use device=cpu or device=auto)")
    if not (device == "cpu" or device.startswith(("cuda", "mps", "xpu"))):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


CHECKPOINT_DTYPE = "checkpoint"  # a dtype value: load the weights in the dtype they are stored in


def resolve_dtype_for(dtype: str | None, device: str) -> str | None:
    """`auto`: bfloat16 on a GPU, float32 on the CPU (CPU bf16 matmuls are slow and no smaller in effect); `checkpoint`: None,
    the checkpoint's own dtype; else as given."""
    if dtype is None or str(dtype) == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if str(dtype) == CHECKPOINT_DTYPE:
        return None
    return str(dtype)


def load_model(model_cfg: Mapping[str, Any], model_path: str | None, device: str = "auto", dtype: str | None = "auto",
               device_map=None):
    """The reward model a score/serve/eval config names, on its device and in its precision, in eval mode.

    `model_path`: a reward checkpoint (RewardModel.from_pretrained); without one, the `model` config is built (its `path`: a
    pretrained backbone with a fresh head, or none: random init). `dtype`: auto (bfloat16 on a GPU, float32 on the CPU), a
    dtype name, or `checkpoint` (the checkpoint's own; for a model built from its config, the config's `dtype`).
    `device_map` (e.g. `auto`, for a model_path): spread the model over the visible GPUs instead of putting it on `device`.
    """
    from worldpm.reward_model import RewardModel, build_reward_model, resolve_dtype

    device = resolve_device(device) if device_map is None else str(device or "cpu")
    model_cfg = dict(model_cfg)
    if model_path or str(dtype) != CHECKPOINT_DTYPE:  # `checkpoint` without a checkpoint: the model config's own dtype
        model_cfg["dtype"] = resolve_dtype_for(dtype, device)
    resolve_dtype(model_cfg.get("dtype"))  # a bad dtype is a one-line error before any loading
    if model_path:
        model = RewardModel.from_pretrained(str(model_path), dtype=model_cfg["dtype"],
                                            attn_implementation=model_cfg.get("attn_implementation", "sdpa"),
                                            device=None if device_map is not None else device, device_map=device_map)
    else:
        model = build_reward_model(model_cfg, device=device)
    if not (model_path or model_cfg.get("path")):
        log.warning("no model_path: scoring with model=%s, RANDOMLY INITIALISED (fine for smoke tests, meaningless rewards)",
                    model_cfg.get("name"))
    return model.eval()


def model_source(model_path: str | None, model_cfg: Mapping[str, Any]) -> str:
    """Where the model comes from: the checkpoint path, the backbone's path, or `model=<name> (random init)`."""
    return str(model_path or model_cfg.get("path") or f"model={model_cfg.get('name')} (random init)")


def describe(model, model_path: str | None, model_cfg: Mapping[str, Any]) -> str:
    p = next(model.parameters())
    return f"{model_source(model_path, model_cfg)} (head={model.spec.head}, readout={model.spec.readout}, {p.dtype}, {p.device})"


# ---------------------------------------------------------------------- batched forward
def resolve_max_padding(value, device) -> float | None:
    """`auto`: 0.2 on a CPU, where padding costs as much compute as real tokens; none on a GPU, where one larger forward is
    cheaper than several tight ones. Otherwise a fraction in [0, 1), or null for no bound."""
    if value is None or str(value) in ("null", "None"):
        return None
    if str(value) == "auto":
        return 0.2 if str(device).startswith("cpu") else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if not 0 <= value < 1:
        raise UserError(f"max_padding must be auto, null or a fraction in [0, 1), got {value!r}")
    return value


# ---------------------------------------------------------------------- normalisation
class RewardTransform:
    """(r - mean) / std with the checkpoint's stored statistics when `normalize`, then clipping to [-clip, clip] when `clip`."""

    def __init__(self, mean: float | None = None, std: float | None = None, clip: float | None = None):
        if clip is not None and not clip > 0:
            raise UserError(f"clip must be a positive number (rewards are clipped to [-clip, clip]), got {clip!r}")
        if std is not None and not std > 0:
            raise UserError(f"reward_std must be positive to normalise, got {std!r}")
        self.mean, self.std, self.clip = mean, std, clip

    @classmethod
    def from_stats(cls, mean: float | None, std: float | None, normalize: bool, clip: float | None,
                   where: str = "the checkpoint") -> "RewardTransform":
        """The transform for stored statistics `mean`/`std` (None when `where` stores none)."""
        if not normalize:
            return cls(clip=clip)
        if mean is None or std is None:
            raise UserError(f"normalize=true, but {where} stores no reward_mean/reward_std in its worldpm block "
                            f"(config.json); serve without normalisation or add the statistics of a held-out set")
        return cls(float(mean), float(std), clip)

    @classmethod
    def for_model(cls, spec, normalize: bool, clip: float | None, where: str = "the checkpoint") -> "RewardTransform":
        return cls.from_stats(spec.reward_mean, spec.reward_std, normalize, clip, where)

    @property
    def normalizes(self) -> bool:
        return self.mean is not None

    def __call__(self, raw: Sequence[float]) -> list[float]:
        out = []
        for r in raw:
            if self.mean is not None:
                r = (r - self.mean) / self.std
            if self.clip is not None:
                r = min(max(r, -self.clip), self.clip)
            out.append(float(r))
        return out


def check_statistics(path: str | None, normalize: bool) -> None:
    """Fail before loading weights when normalisation is asked of a checkpoint that stores no statistics."""
    from worldpm.reward_model import _read_config

    if normalize and path:
        block = _read_config(str(path)).get("worldpm") or {}
        RewardTransform.from_stats(block.get("reward_mean"), block.get("reward_std"), True, None, where=str(path))


def sigmoid(x: float) -> float:
    """BT probability that a reply with reward x beats one with reward 0 (the mean reply, when rewards are normalised)."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# ---------------------------------------------------------------------- in-process
class LocalScorer:
    """A RewardModel behind a MicroBatcher; safe to call from many threads at once."""

    def __init__(self, model, *, normalize: bool = False, clip: float | None = None, max_length: int | None = None,
                 batching: bool = True, window_ms: float = 5.0, max_tokens: int = 16384, max_batch_size: int = 256,
                 max_padding="auto", where: str = "the checkpoint"):
        self.model = model.eval()
        self.transform = RewardTransform.for_model(model.spec, normalize, clip, where)
        self.max_length = int(max_length or model.spec.max_length)
        self.max_padding = resolve_max_padding(max_padding, model.device)
        self._tokenize_lock = threading.Lock()  # a HF fast tokenizer is not safe to call from several threads at once
        self.batcher = MicroBatcher(partial(model.score_ids, max_tokens=max_tokens, max_batch_size=max_batch_size,
                                            max_padding=self.max_padding),
                                    enabled=batching, window_ms=window_ms, max_tokens=max_tokens)

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str | None = "auto", **options) -> "LocalScorer":
        from worldpm.reward_model import RewardModel

        device = resolve_device(device)
        model = RewardModel.from_pretrained(path, dtype=resolve_dtype_for(dtype, device), device=device)
        return cls(model, where=str(path), **options)

    # tokenisation (callers may run it in a thread of their own, off an event loop)
    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        with self._tokenize_lock:
            return self.model.encode_texts(texts, self.max_length)

    def encode_conversations(self, conversations) -> list[list[int]]:
        with self._tokenize_lock:
            return self.model.encode(conversations, self.max_length)

    def submit(self, sequences: Sequence[Sequence[int]]) -> Future:
        """Raw rewards of token-id sequences, as a future (batched with whatever else is being scored)."""
        return self.batcher.submit(sequences)

    def score_texts(self, texts: Sequence[str]) -> Scores:
        raw = self.submit(self.encode_texts(list(texts))).result()
        return Scores(self.transform(raw), raw)

    def score_conversations(self, conversations) -> Scores:
        raw = self.submit(self.encode_conversations(list(conversations))).result()
        return Scores(self.transform(raw), raw)

    def close(self) -> None:
        self.batcher.close()


# ---------------------------------------------------------------------- against a server
class RemoteScorer:
    """A client of `worldpm serve` (or any server of OpenRLHF's /get_reward protocol, for texts).

    Connection errors, timeouts, 429 and 5xx answers are retried `retries` times, `backoff_s` apart (doubling); a 4xx answer
    (bad input, bad API key) is not retried and raises a one-line UserError with the server's message. Large inputs are sent
    in requests of at most `batch_size` items.
    """

    ENDPOINTS = ("/get_reward", "/v1/score", "/health")

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 180.0, retries: int = 5,
                 backoff_s: float = 1.0, batch_size: int = 64, transport=None):
        import httpx

        url = str(url).rstrip("/")
        for endpoint in self.ENDPOINTS:  # accept the base URL or an endpoint's URL (OpenRLHF's flag names the endpoint)
            if url.endswith(endpoint):
                url = url[: -len(endpoint)]
        if not url.startswith(("http://", "https://")):
            raise UserError(f"reward server url must start with http:// or https://, got {url!r}")
        self.url, self.retries, self.backoff_s, self.batch_size = url, int(retries), float(backoff_s), int(batch_size)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
                                    transport=transport)  # an httpx transport of your own: proxies, TLS settings, mocks

    def _post(self, path: str, payload: dict) -> dict:
        import httpx

        delay, last = self.backoff_s, "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            try:
                response = self._client.post(path, json=payload)
            except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last = f"HTTP {response.status_code}: {_error_text(response)}"
                continue
            if response.status_code >= 400:
                raise UserError(f"{self.url}{path} refused the request (HTTP {response.status_code}): {_error_text(response)}")
            return response.json()
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
        response = self._client.get("/health")
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self._client.close()


def _error_text(response) -> str:
    try:
        body = response.json()
        return str(body.get("error") or body.get("detail") or body)
    except ValueError:
        return response.text[:200]


def wait_healthy(url: str, timeout: float = 120.0, proc=None, interval: float = 0.2) -> dict:
    """Wait until a `worldpm serve` at `url` answers GET /health with 200; its body.

    `proc`: the server's `subprocess.Popen` (or pid): its exit ends the wait with a RuntimeError (with the end of its stderr when
    that is a pipe). No answer within `timeout` seconds: TimeoutError.
    """
    import httpx

    url = str(url).rstrip("/")
    if url.endswith("/health"):
        url = url[: -len("/health")]
    deadline = time.monotonic() + timeout
    while True:
        _check_running(proc, url)
        try:
            response = httpx.get(f"{url}/health", timeout=2)
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    return {}
        except httpx.TransportError:
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


def make_scorer(model_path: str | None = None, url: str | None = None, api_key: str | None = None, **options):
    """A LocalScorer for `model_path` (a checkpoint directory, or an already-loaded RewardModel) or a RemoteScorer for `url`."""
    if (model_path is None) == (url is None):
        raise UserError("give exactly one of model_path (score in this process) or url (score with a running worldpm serve)")
    if url is not None:
        return RemoteScorer(url, api_key=api_key, **options)
    if hasattr(model_path, "score_ids"):
        return LocalScorer(model_path, **options)
    return LocalScorer.from_pretrained(str(model_path), **options)
