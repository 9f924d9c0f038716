"""An `Engine` over any OpenAI-compatible `/v1/chat/completions` server: GPT-4o-class APIs, `vllm serve`,
llama.cpp's server, `transformers serve`.

This is how the anchor and the judge run off the trainer's GPUs (another node, a hosted API), and how plain-TRL
users plug CaT into `trl grpo`. The transport is the official `openai` client: connection pooling, timeouts, and
retries with exponential backoff and jitter on connection errors, timeouts, 408/409/429 and 5xx (honouring
`Retry-After`); other 4xx fail at once. What this module adds:

* concurrency: one engine call = one batch of requests, sent by a thread pool capped at `max_concurrency` (threads,
  not asyncio: it works unchanged from TRL's async-reward daemon thread and from the main thread);
* a deadline per attempt: the client's timeout bounds each wait for bytes, so a server trickling one byte at a time
  would keep a request alive forever; an attempt ends after `timeout` seconds (plus at most one read gap) with a
  timeout that the client retries like any other;
* responses are cached by the SHA-256 of the request (URL + JSON body): a re-run, a resumed run or a repeated
  evaluation does not pay twice. Sampled requests are cached too -- the cache key contains the seed, so pass
  `SamplingSettings(seed=...)` per step when identical prompts must yield fresh samples, or set `cache=False`;
* failures as `EngineError` (4xx, unusable body) or `EngineUnavailableError` (unreachable, or transient errors
  through every retry), naming the URL, the model and the attempts made;
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

import httpx2
import openai

from .base import Conversation, Engine, Generation, SamplingSettings, word_variants

logger = logging.getLogger(__name__)

#: request fields that `chat.completions.create` takes by name; the others (`top_k`, `min_p`, `chat_template_kwargs`,
#: `extra_body`, ...) are sent through its `extra_body`
_NAMED_FIELDS = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop", "logprobs", "top_logprobs"})


class EngineError(RuntimeError):
    """The server answered, but not with a usable completion (4xx, malformed body, unsupported feature)."""


class EngineUnavailableError(EngineError):
    """The server could not be reached (or kept failing) after every retry."""


class _DeadlineStream(httpx2.SyncByteStream):
    """A response body that ends its attempt once `deadline` (`time.monotonic()`) has passed."""

    def __init__(self, inner: httpx2.SyncByteStream, deadline: float, seconds: float):
        self._inner, self._deadline, self._seconds = inner, deadline, seconds

    def __iter__(self):
        for chunk in self._inner:
            if time.monotonic() > self._deadline:
                raise httpx2.ReadTimeout(f"no complete response within {self._seconds} s (server trickling bytes)")
            yield chunk

    def close(self) -> None:
        self._inner.close()


def _transient(status: int) -> bool:
    """The statuses the client retries (unless the server says otherwise): they mean "try again later"."""
    return status in (408, 409, 429) or status >= 500


class OpenAIEngine(Engine):
    """Chat completions from an OpenAI-compatible server.

    Args:
        base_url: the API root, e.g. `http://127.0.0.1:8000/v1` (a URL without `/v1` gets it appended).
        model: the served model name sent with every request (recorded in the run config and in every score).
        api_key: bearer token; default: the environment variable named by `api_key_env` (may be unset for local
            servers).
        max_concurrency: requests in flight at once.
        timeout: seconds per attempt (each wait for bytes, and the attempt as a whole).
        max_retries: retries after the first attempt, for transient failures only, on the `openai` client's schedule
            (0.5 s doubling to 8 s, with jitter; a server's `Retry-After` of up to 2 minutes is honoured).
        cache: keep responses keyed by request hash; `cache_path` also persists them (JSONL, appended).
        max_context_tokens: the served model's context window, if known (used for the synthesis budget).
        extra_body: extra JSON fields for every request (e.g. vLLM's `{"top_k": 20}`, `{"chat_template_kwargs":
            ...}`).
        on_failure: what `generate` does with a request the server could not answer after its retries (down,
            5xx, timed out): `raise` (`EngineUnavailableError`) or `skip` -- that request's generation comes back
            empty with `finish_reason="error"` and is counted in `stats.extra["failed_requests"]`; the rest of the
            call is kept. A request the server refuses (4xx: a configuration error) raises either way.
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
        cache: bool = True,
        cache_path: str | None = None,
        max_context_tokens: int | None = None,
        extra_body: dict[str, Any] | None = None,
        on_failure: str = "raise",
    ):
        super().__init__()
        if on_failure not in ("raise", "skip"):
            raise ValueError(f"on_failure must be 'raise' or 'skip', got {on_failure!r}")
        self.on_failure = on_failure
        if not base_url:
            raise ValueError("OpenAIEngine needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise ValueError("OpenAIEngine needs the served model name (`model`)")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("max_concurrency >= 1, max_retries >= 0 and timeout > 0 are required")
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.model = model
        self.name = model
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.cache_enabled = cache
        self.cache_path = cache_path
        self._max_context = max_context_tokens
        self.extra_body = dict(extra_body or {})
        self.stats.extra.update(http_requests=0, cache_hits=0, retries=0, failed_requests=0)
        #: the last request failure `skip` absorbed (for the trainer's one-line report)
        self.last_failure: str | None = None
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()  # per worker thread: attempts of the current request, when it was sent
        self._client: openai.OpenAI | None = None
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
        # Reward functions get pickled (multiprocessing, deepcopy): the client and locks are rebuilt on the other side.
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_local", "_client", "_cache")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    @property
    def max_context_tokens(self) -> int | None:
        return self._max_context

    # ---------------------------------------------------------------- transport: the openai client

    def _openai(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None:
                http_client = openai.DefaultHttpxClient(
                    limits=httpx2.Limits(max_connections=self.max_concurrency),
                    event_hooks={"request": [self._on_request], "response": [self._on_response]},
                )
                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=self.api_key or "EMPTY",  # local servers take any key
                    timeout=self.timeout, max_retries=self.max_retries, http_client=http_client,
                )
            return self._client

    def _on_request(self, request: httpx2.Request) -> None:
        """Every attempt, retries included (the sync client sends from the calling thread)."""
        with self._lock:
            self.stats.extra["http_requests"] += 1
        self._local.attempts = getattr(self._local, "attempts", 0) + 1
        self._local.sent = time.monotonic()

    def _on_response(self, response: httpx2.Response) -> None:
        """Bounds the attempt as a whole: headers are in, the body is read through the deadline."""
        deadline = getattr(self._local, "sent", time.monotonic()) + self.timeout
        response.stream = _DeadlineStream(response.stream, deadline, self.timeout)

    def _key(self, path: str, body: dict[str, Any]) -> str:
        blob = json.dumps({"url": self.base_url + path, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _post(self, body: dict[str, Any], validate) -> dict[str, Any]:
        """One chat completion, from the cache or the server. `validate(data)` raises `EngineError` on an unusable
        body; only validated bodies are cached (an error body must not be replayed from the cache forever)."""
        key = self._key("/chat/completions", body) if self.cache_enabled else None
        if key is not None:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self.stats.extra["cache_hits"] += 1
            if hit is not None:
                return hit
        url = self.base_url + "/chat/completions"
        named = {k: v for k, v in body.items() if k in _NAMED_FIELDS}
        extra = {k: v for k, v in body.items() if k not in _NAMED_FIELDS and k not in ("model", "messages")}
        self._local.attempts = 0
        try:
            response = self._openai().chat.completions.with_raw_response.create(
                model=body["model"], messages=body["messages"], **named, extra_body=extra or None
            )
        except openai.APIStatusError as err:
            if _transient(err.status_code):
                raise self._unavailable(url, f"HTTP {err.status_code}: {err.response.text[:300]}") from err
            raise EngineError(f"{url} refused the request (HTTP {err.status_code}): {err.response.text[:500]}") from err
        except openai.APIConnectionError as err:  # refused, reset, DNS, timeouts (APITimeoutError), the deadline
            raise self._unavailable(url, err.__cause__ or err) from err
        finally:
            with self._lock:
                self.stats.extra["retries"] += max(self._local.attempts - 1, 0)
        text = response.http_response.text
        try:
            data = json.loads(text)
        except ValueError as err:
            raise EngineError(f"{url} returned a body that is not JSON: {text[:300]!r}") from err
        validate(data)
        if key is not None:
            self._store(key, data)
        return data

    def _unavailable(self, url: str, last: Exception | str) -> EngineUnavailableError:
        hint = ("the server kept answering with a transient error status (overloaded, rate-limited or out of quota?)"
                if isinstance(last, str) else "is the server running and reachable from this machine?")
        return EngineUnavailableError(
            f"Cannot get a completion from the OpenAI-compatible server at {url} (model {self.model!r}) after "
            f"{self._local.attempts} attempts: {last!r}; {hint}"
        )

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
        client = self._openai().with_options(max_retries=0, timeout=min(self.timeout, 10.0))
        try:
            text = client.models.with_raw_response.list().http_response.text
        except openai.APIStatusError as err:
            logger.warning("%s/models answered HTTP %s; the server is up but lists no models",
                           self.base_url, err.status_code)
            return []
        except openai.APIConnectionError as err:
            raise EngineUnavailableError(
                f"The OpenAI-compatible server at {self.base_url} is unreachable ({err.__cause__ or err!r}). Start it "
                f"(e.g. `vllm serve {self.model}`) or fix the base URL."
            ) from err
        try:
            return [m.get("id") for m in json.loads(text).get("data", [])]
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
        if sampling.min_new_tokens:  # vLLM's server extension; only sent when asked for
            body["min_tokens"] = sampling.min_new_tokens
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
        def one(conversation: Conversation) -> Generation:
            try:
                data = self._post(self._body(conversation, sampling, chat_template_kwargs), self._check_completion)
            except EngineUnavailableError as err:
                if self.on_failure == "raise":
                    raise
                with self._lock:
                    self.stats.extra["failed_requests"] += 1
                    self.last_failure = str(err)
                return Generation("", 0, 0, "error")
            choice = data["choices"][0]
            text = choice["message"].get("content") or ''
            usage = data.get("usage") or {}
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
            return Generation(text, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, finish)

        with self.counted_call() as call:
            return call.generated(self._map(one, list(conversations)))

    def next_token_logprobs(
        self,
        conversations: list[Conversation],
        candidates: tuple[str, ...],
        chat_template_kwargs: dict[str, Any] | None = None,
        top_logprobs: int = 20,
    ) -> list[dict[str, float]]:
        variants = {c: {v.strip().lower() for v in word_variants(c)} for c in candidates}
        sampling = SamplingSettings(max_new_tokens=1, temperature=0.0)

        def one(conversation: Conversation) -> dict[str, float]:
            body = self._body(conversation, sampling, chat_template_kwargs)
            body.update(logprobs=True, top_logprobs=top_logprobs)
            tops = _top_logprobs(self._post(body, self._check_logprobs))
            out = {}
            for cand in candidates:
                probs = [math.exp(t["logprob"]) for t in tops if str(t.get("token", "")).strip().lower() in variants[cand]]
                # Absent from the top-k: at most the smallest listed probability; use a floor well below it.
                out[cand] = math.log(sum(probs)) if probs else min(t["logprob"] for t in tops) - math.log(10.0)
            return out

        with self.counted_call() as call:
            results = self._map(one, list(conversations))
            call.scored(len(results))
        return results


def _top_logprobs(data: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        content = data["choices"][0].get("logprobs", {}) or {}
        first = (content.get("content") or [])[0]
        return [t for t in (first.get("top_logprobs") or []) if isinstance(t.get("logprob"), (int, float))]
    except (KeyError, IndexError, TypeError, AttributeError):
        return []
