"""An `Engine` over any OpenAI-compatible `/v1/chat/completions` server: GPT-4o-class APIs, `vllm serve`,
llama.cpp's server, `transformers serve`.

This is how the anchor and the judge run off the trainer's GPUs (another node, a hosted API), and how plain-TRL
users plug CaT into `trl grpo`. Design points:

* one engine call = one batch of requests, sent concurrently by a thread pool capped at `max_concurrency` (threads,
  not asyncio: it works unchanged from TRL's async-reward daemon thread and from the main thread);
* retries with exponential backoff on connection errors, timeouts, 429 and 5xx (honouring `Retry-After`); other
  4xx fail at once with the server's message; an unreachable server fails with one clear error naming the URL;
* responses are cached by the SHA-256 of the request (URL + JSON body): a re-run, a resumed run or a repeated
  evaluation does not pay twice. Sampled requests are cached too -- the cache key contains the seed, so pass
  `SamplingSettings(seed=...)` per step when identical prompts must yield fresh samples, or set `cache=False`;
* log-probabilities of the next token come from `logprobs` / `top_logprobs` (OpenAI, vLLM). Servers that ignore
  those fields (`transformers serve`) are detected and reported, never silently scored as zero.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import Conversation, Engine, Generation, SamplingSettings, word_variants

logger = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EngineError(RuntimeError):
    """The server answered, but not with a usable completion (4xx, malformed body, unsupported feature)."""


class EngineUnavailableError(EngineError):
    """The server could not be reached (or kept failing) after every retry."""


class OpenAIEngine(Engine):
    """Chat completions from an OpenAI-compatible server.

    Args:
        base_url: the API root, e.g. `http://127.0.0.1:8000/v1` (a URL without `/v1` gets it appended).
        model: the served model name sent with every request (recorded in the run config and in every score).
        api_key: bearer token; default: the environment variable named by `api_key_env` (may be unset for local
            servers).
        max_concurrency: requests in flight at once.
        timeout: seconds per request (connect + read).
        max_retries: retries after the first attempt, for transient failures only.
        backoff: first retry delay in seconds, doubled each retry (capped at 60 s).
        cache: keep responses keyed by request hash; `cache_path` also persists them (JSONL, appended).
        max_context_tokens: the served model's context window, if known (used for the synthesis budget).
        extra_body: extra JSON fields for every request (e.g. vLLM's `{"top_k": 20}`, `{"chat_template_kwargs":
            ...}`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        cache: bool = True,
        cache_path: str | None = None,
        max_context_tokens: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not base_url:
            raise ValueError("OpenAIEngine needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise ValueError("OpenAIEngine needs the served model name (`model`)")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("max_concurrency >= 1, max_retries >= 0, timeout > 0 and backoff >= 0 are required")
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.model = model
        self.name = model
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.cache_enabled = cache
        self.cache_path = cache_path
        self._max_context = max_context_tokens
        self.extra_body = dict(extra_body or {})
        self.stats.extra.update(http_requests=0, cache_hits=0, retries=0)
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._client = None
        self._cache: dict[str, dict[str, Any]] = {}
        if self.cache_enabled and self.cache_path and os.path.exists(self.cache_path):
            with open(self.cache_path) as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        self._cache[entry["key"]] = entry["response"]
                    except (json.JSONDecodeError, KeyError):
                        continue  # a line cut short by a crash

    def __getstate__(self) -> dict[str, Any]:
        # Reward functions get pickled (multiprocessing, deepcopy): sockets and locks are rebuilt on the other side.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_client", "_cache")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    @property
    def max_context_tokens(self) -> int | None:
        return self._max_context

    # ---------------------------------------------------------------- HTTP

    def _http(self):
        import httpx

        with self._lock:
            if self._client is None:
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout),
                    headers=headers,
                    limits=httpx.Limits(max_connections=self.max_concurrency),
                )
            return self._client

    def _key(self, path: str, body: dict[str, Any]) -> str:
        blob = json.dumps({"url": self.base_url + path, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _post(self, path: str, body: dict[str, Any], validate=None) -> dict[str, Any]:
        """One request with caching and retries. `validate(data)` raises `EngineError` on an unusable body; only
        validated bodies are cached (an error body must not be replayed from the cache forever)."""
        import httpx

        key = self._key(path, body) if self.cache_enabled else None
        if key is not None:
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None:
                with self._lock:
                    self.stats.extra["cache_hits"] += 1
                return hit
        url = self.base_url + path
        last: Exception | str | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.extra["retries"] += 1
            delay = min(self.backoff * 2**attempt, 60.0)
            try:
                with self._lock:
                    self.stats.extra["http_requests"] += 1
                status, headers, text = self._request(url, body)
            except httpx.TransportError as err:  # refused, reset, DNS, timeouts, the attempt's deadline
                last = err
                if attempt < self.max_retries:
                    time.sleep(delay)
                continue
            if status in _RETRY_STATUS:
                last = f"HTTP {status}: {text[:300]}"
                if attempt < self.max_retries:
                    time.sleep(_retry_after(headers.get("retry-after"), delay))
                continue
            if status >= 400:
                raise EngineError(f"{url} refused the request (HTTP {status}): {text[:500]}")
            try:
                data = json.loads(text)
            except ValueError as err:
                raise EngineError(f"{url} returned a body that is not JSON: {text[:300]!r}") from err
            if validate is not None:
                validate(data)
            if key is not None:
                self._store(key, data)
            return data
        hint = ("the server kept answering with a transient error status (overloaded, rate-limited or out of quota?)"
                if isinstance(last, str) else "is the server running and reachable from this machine?")
        raise EngineUnavailableError(
            f"Cannot get a completion from the OpenAI-compatible server at {url} (model {self.model!r}) after "
            f"{self.max_retries + 1} attempts: {last!r}; {hint}"
        )

    def _request(self, url: str, body: dict[str, Any]) -> tuple[int, Any, str]:
        """One POST, bounded as a whole by `timeout` seconds (plus at most one read gap): httpx's own timeout bounds
        each wait for bytes, so a server trickling one byte at a time would otherwise keep the call alive forever."""
        import httpx

        deadline = time.monotonic() + self.timeout
        chunks = []
        with self._http().stream("POST", url, json=body) as response:
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"no complete response within {self.timeout} s (server trickling bytes)")
            encoding = response.encoding or "utf-8"
            return response.status_code, response.headers, b"".join(chunks).decode(encoding, errors="replace")

    def _store(self, key: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._cache[key] = data
            if self.cache_path:
                os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "response": data}) + "\n")

    def _map(self, fn, items: list) -> list:
        if len(items) <= 1 or self.max_concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def check(self) -> list[str]:
        """Fails fast, with the URL in the message, when the server is down; returns the served model ids (empty
        when the server answers but cannot list them -- some servers do not implement `/models` properly)."""
        import httpx

        try:
            response = self._http().get(self.base_url + "/models", timeout=min(self.timeout, 10.0))
        except httpx.TransportError as err:
            raise EngineUnavailableError(
                f"The OpenAI-compatible server at {self.base_url} is unreachable ({err!r}). Start it (e.g. "
                f"`vllm serve {self.model}`) or fix the base URL."
            ) from err
        if response.status_code >= 400:
            logger.warning("%s/models answered HTTP %s; the server is up but lists no models",
                           self.base_url, response.status_code)
            return []
        try:
            return [m.get("id") for m in response.json().get("data", [])]
        except (ValueError, AttributeError):
            return []

    # ---------------------------------------------------------------- Engine API

    def _check_completion(self, data: dict[str, Any]) -> None:
        try:
            message = data["choices"][0]["message"]
            if not isinstance(message, dict):
                raise TypeError(type(message).__name__)
        except (KeyError, IndexError, TypeError) as err:
            raise EngineError(f"Malformed chat completion from {self.base_url}: {str(data)[:300]}") from err

    def _check_logprobs(self, data: dict[str, Any]) -> None:
        if not _top_logprobs(data):
            raise EngineError(
                f"The server at {self.base_url} (model {self.model!r}) returned no top_logprobs: it does not "
                "support log-probabilities (transformers serve ignores them). Use the judge's `generate` mode "
                "with this server, or serve the judge with vLLM / an API that returns logprobs."
            )

    def _body(self, conversation: Conversation, sampling: SamplingSettings, chat_template_kwargs) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": conversation,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
        }
        # Only non-default knobs are sent: hosted APIs reject fields they do not know (top_k, min_p, ...).
        if sampling.top_p != 1.0:
            body["top_p"] = sampling.top_p
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if sampling.min_p:
            body["min_p"] = sampling.min_p
        if sampling.repetition_penalty != 1.0:
            body["repetition_penalty"] = sampling.repetition_penalty
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if chat_template_kwargs:
            body["chat_template_kwargs"] = dict(chat_template_kwargs)
        body.update(self.extra_body)
        return body

    def generate(
        self,
        conversations: list[Conversation],
        sampling: SamplingSettings,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[Generation]:
        start = time.perf_counter()

        def one(conversation: Conversation) -> Generation:
            data = self._post("/chat/completions", self._body(conversation, sampling, chat_template_kwargs),
                              validate=self._check_completion)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ''
            usage = data.get("usage") or {}
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
            return Generation(text, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, finish)

        results = self._map(one, list(conversations))
        self.stats.add_call(results, time.perf_counter() - start)
        return results

    def next_token_logprobs(
        self,
        conversations: list[Conversation],
        candidates: tuple[str, ...],
        chat_template_kwargs: dict[str, Any] | None = None,
        top_logprobs: int = 20,
    ) -> list[dict[str, float]]:
        start = time.perf_counter()
        variants = {c: {v.strip().lower() for v in word_variants(c)} for c in candidates}
        sampling = SamplingSettings(max_new_tokens=1, temperature=0.0)

        def one(conversation: Conversation) -> dict[str, float]:
            body = self._body(conversation, sampling, chat_template_kwargs)
            body.update(logprobs=True, top_logprobs=top_logprobs)
            tops = _top_logprobs(self._post("/chat/completions", body, validate=self._check_logprobs))
            out = {}
            for cand in candidates:
                probs = [math.exp(t["logprob"]) for t in tops if str(t.get("token", "")).strip().lower() in variants[cand]]
                # Absent from the top-k: at most the smallest listed probability; use a floor well below it.
                out[cand] = math.log(sum(probs)) if probs else min(t["logprob"] for t in tops) - math.log(10.0)
            return out

        results = self._map(one, list(conversations))
        self.stats.add_scoring_call(len(results), 0, time.perf_counter() - start)
        return results


def _top_logprobs(data: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        content = data["choices"][0].get("logprobs", {}) or {}
        first = (content.get("content") or [])[0]
        return [t for t in (first.get("top_logprobs") or []) if isinstance(t.get("logprob"), (int, float))]
    except (KeyError, IndexError, TypeError, AttributeError):
        return []


def _retry_after(header: str | None, default: float) -> float:
    try:
        return min(max(float(header), 0.0), 60.0) if header is not None else default
    except ValueError:
        return default
