"""A server anchor working while the trainer computes log-probs: `OverlappedEngine`.

GRPO's step is: decode rollouts -> old-policy / reference log-probs of them (forward passes on the training GPUs) ->
rewards. CaT's reward needs the anchor's synthesis, which depends only on the decoded rollouts. With the anchor behind
an OpenAI-compatible server (`cat_anchor_engine: openai`: its own GPUs or node) the synthesis requests can leave as
soon as a rank's rollouts are decoded and be collected when the rewards are computed, hiding the server's latency up to
the length of the log-prob passes.

`CaTGRPOTrainer._generate` (after TRL's) asks the estimator for its first engine call (`anchor_request`) and hands it
to `prefetch`, which sends it from a background thread. When the reward step then makes the same call, `generate`
returns the in-flight result: exactly the requests, sampling and seeds the serial path would have sent, so the
references are the same. Any other call (a different request, the rubric proposal, a judge) goes straight to the
wrapped engine. A prefetched call that fails raises its error where the serial call would have: in `generate`.

Only thread-safe engines may be wrapped (the OpenAI-compatible engine sends from a thread pool anyway); in-process
engines share the GPU with the log-prob passes and gain nothing.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .base import Conversation, Engine, Generation, SamplingSettings


def _key(conversations: list[Conversation], sampling: SamplingSettings, chat_template_kwargs) -> str:
    return json.dumps([conversations, sampling.to_dict(), chat_template_kwargs], sort_keys=True, default=str)


class OverlappedEngine(Engine):
    """Wraps a thread-safe engine; `prefetch` starts a `generate` call early, `generate` collects it.

    Attributes:
        prefetched, collected, discarded: counts (a discarded prefetch was never asked for: its result is dropped).
    """

    def __init__(self, inner: Engine):
        self.inner = inner
        self.name = inner.name
        self.collective = getattr(inner, "collective", False)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cat-anchor-prefetch")
        self._pending: tuple[str, float, Future] | None = None
        self._timing: tuple[float, float] | None = None
        self.prefetched = self.collected = self.discarded = 0

    # the wrapped engine's accounting and budget helpers
    @property
    def stats(self):  # type: ignore[override]
        return self.inner.stats

    @stats.setter
    def stats(self, value) -> None:  # Engine.__init__ is not called; nothing to set
        pass

    @property
    def max_context_tokens(self) -> int | None:
        return self.inner.max_context_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def count_chat_tokens(self, conversation, chat_template_kwargs=None) -> int:
        return self.inner.count_chat_tokens(conversation, chat_template_kwargs)

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        return self.inner.truncate_tokens(text, max_tokens)

    def __getattr__(self, name: str) -> Any:  # e.g. the server engine's `check`, `base_url`
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ------------------------------------------------------------------ overlap

    def prefetch(self, conversations: list[Conversation], sampling: SamplingSettings,
                 chat_template_kwargs: dict[str, Any] | None = None) -> None:
        """Start `generate(conversations, sampling, chat_template_kwargs)` in the background."""
        self._drop()
        if not conversations:
            return
        future = self._pool.submit(self.inner.generate, conversations, sampling, chat_template_kwargs)
        self._pending = (_key(conversations, sampling, chat_template_kwargs), time.perf_counter(), future)
        self.prefetched += 1

    def take_timing(self) -> tuple[float, float] | None:
        """(seconds the last collected prefetch ran before it was asked for, seconds the caller then waited), once;
        None when nothing was collected since the last call."""
        timing, self._timing = self._timing, None
        return timing

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def _drop(self) -> None:
        if self._pending is not None:
            _, _, future = self._pending
            self._pending = None
            self.discarded += 1
            future.cancel()  # not started yet: never sent; running: its result is ignored

    def generate(
        self,
        conversations: list[Conversation],
        sampling: SamplingSettings,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[Generation]:
        if self._pending is not None and self._pending[0] == _key(conversations, sampling, chat_template_kwargs):
            _, started, future = self._pending
            self._pending = None
            asked = time.perf_counter()
            try:
                return future.result()
            finally:
                self._timing = (asked - started, time.perf_counter() - asked)
                self.collected += 1
        if self._pending is not None and conversations:
            self._drop()  # the reward step asks for something else: the prefetch was for nothing
        return self.inner.generate(conversations, sampling, chat_template_kwargs)

    def logprobs(self, conversations, continuations, chat_template_kwargs=None):
        return self.inner.logprobs(conversations, continuations, chat_template_kwargs)

    def next_token_logprobs(self, conversations, candidates, chat_template_kwargs=None):
        return self.inner.next_token_logprobs(conversations, candidates, chat_template_kwargs)

    def close(self) -> None:
        self._drop()
        self._pool.shutdown(wait=False)
