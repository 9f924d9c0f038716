"""The engine interface: the one seam through which CaT talks to a language model that is not the policy being trained.

The anchor (synthesis, rubric proposal), the judge and the test-time selection baselines all need the same two
operations, whatever runs the model (transformers on the trainer's own weights, a colocated vLLM engine, an
OpenAI-compatible server):

* `generate`: a batch of chat conversations in, one completion each out, with sampling settings chosen per call
  (synthesis samples like the policy; a yes/no judge decodes greedily with a handful of tokens).
* `logprobs`: the per-token log-probabilities of given continuations (min-perplexity and mutual-predictability
  selection, log-prob judging) -- one forward pass, no decoding.

Callers always hand over *everything* a step needs in one call, so that an engine can batch, share prefixes and
(for collective backends) keep ranks in lockstep.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, Any]
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings of one engine call, backend-neutral.

    `temperature == 0` means greedy decoding. `top_k == 0` and `top_p == 1.0` disable those filters (vLLM and
    transformers conventions). `seed` makes a call reproducible on backends that support per-call seeds.
    `min_new_tokens` forbids stopping earlier (vLLM's `min_tokens`; benchmarks force lengths with it; 0 = off).
    """

    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0

    def __post_init__(self):
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got "
                             f"{self.min_new_tokens}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    """One completion with the token counts needed for cost accounting."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"


@dataclass
class EngineStats:
    """Cumulative cost counters; the trainer logs deltas per step."""

    calls: int = 0
    sequences: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def add_call(self, generations: list[Generation], seconds: float) -> None:
        """Count one generation call that produced `generations`."""
        self.calls += 1
        self.sequences += len(generations)
        self.prompt_tokens += sum(g.prompt_tokens for g in generations)
        self.completion_tokens += sum(g.completion_tokens for g in generations)
        self.seconds += seconds

    def add_scoring_call(self, sequences: int, prompt_tokens: int, seconds: float) -> None:
        """Count one forward-only call (log-probs of given text, next-token log-probs): nothing is generated."""
        self.calls += 1
        self.sequences += sequences
        self.prompt_tokens += prompt_tokens
        self.seconds += seconds

    def snapshot(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "sequences": self.sequences,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": self.seconds,
        }


class CallRecord:
    """What one engine call did, reported from inside `Engine.counted_call()`: `generated(...)` for a generation
    call, `scored(...)` for a forward-only one (log-probs of given text, next-token log-probs). Unreported: counted as
    a scoring call of nothing (the call and its time still count)."""

    def __init__(self):
        self.generations: list[Generation] | None = None
        self.sequences = 0
        self.prompt_tokens = 0

    def generated(self, generations: list[Generation]) -> list[Generation]:
        self.generations = generations
        return generations

    def scored(self, sequences: int, prompt_tokens: int = 0) -> None:
        self.sequences, self.prompt_tokens = sequences, prompt_tokens


class Engine(ABC):
    """A chat model that CaT can call. Subclasses: `TransformersEngine` (here), vLLM and OpenAI-compatible engines."""

    #: short identifier recorded in logs and the run config (e.g. the served model name)
    name: str = "engine"

    def __init__(self):
        self.stats = EngineStats()

    @contextlib.contextmanager
    def counted_call(self) -> Iterator[CallRecord]:
        """Times one engine call and adds it to `stats` when the block completes (a failed call is not counted):

            with self.counted_call() as call:
                results = call.generated([...])   # or: call.scored(sequences, prompt_tokens)
        """
        call = CallRecord()
        start = time.perf_counter()
        yield call
        seconds = time.perf_counter() - start
        if call.generations is not None:
            self.stats.add_call(call.generations, seconds)
        else:
            self.stats.add_scoring_call(call.sequences, call.prompt_tokens, seconds)

    @abstractmethod
    def generate(
        self,
        conversations: list[Conversation],
        sampling: SamplingSettings,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[Generation]:
        """One completion per conversation, in order. The assistant turn is generated after the last message."""

    def logprobs(
        self,
        conversations: list[Conversation],
        continuations: list[str],
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[list[float]]:
        """Log-probabilities of each continuation's tokens, as the assistant reply to its conversation."""
        raise NotImplementedError(f"{type(self).__name__} does not provide token log-probabilities")

    def next_token_logprobs(
        self,
        conversations: list[Conversation],
        candidates: tuple[str, ...],
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[dict[str, float]]:
        """For each conversation, the log-probability that the assistant reply *starts with* each candidate word
        (case and leading-space variants pooled): one forward pass per conversation, no decoding. Used by the
        log-prob judge ("yes" vs "no")."""
        raise NotImplementedError(
            f"{type(self).__name__} does not provide next-token log-probabilities; use the judge's `generate` mode"
        )

    # --- token budget helpers (synthesis prompts hold G rollouts and must fit the context) ---------------------

    @property
    def max_context_tokens(self) -> int | None:
        """The model's context window in tokens, or None when unknown (no truncation is then applied)."""
        return None

    def count_tokens(self, text: str) -> int:
        """Tokens in `text`. The default is a conservative character heuristic for engines without a tokenizer."""
        return max(1, len(text) // 3)

    def count_chat_tokens(self, conversation: Conversation, chat_template_kwargs: dict[str, Any] | None = None) -> int:
        """Tokens of `conversation` rendered as a prompt (chat template and generation prompt included)."""
        return sum(self.count_tokens(str(m.get("content", ""))) + 8 for m in conversation) + 8

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        """`text` cut to at most `max_tokens` tokens, keeping its head and tail (the final answer sits at the end)."""
        if max_tokens <= 0:
            return ""
        if self.count_tokens(text) <= max_tokens:
            return text
        keep = max(1, max_tokens * 3)
        return _head_tail(text[: keep // 2], text[len(text) - (keep - keep // 2) :])


class TokenizerBudget:
    """Exact token counting and truncation for engines that hold the anchor's own tokenizer (`self.tokenizer`):
    transformers and vLLM render prompts with the same chat template, so budgets are counted the same way."""

    tokenizer: Any

    def _prompt_ids(self, conversation: Conversation, chat_template_kwargs: dict[str, Any] | None) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False, **(chat_template_kwargs or {})
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_chat_tokens(self, conversation: Conversation, chat_template_kwargs: dict[str, Any] | None = None) -> int:
        return len(self._prompt_ids(conversation, chat_template_kwargs))

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return text
        head = max_tokens // 2
        tail = max_tokens - head
        decode = self.tokenizer.decode
        return _head_tail(decode(ids[:head]), decode(ids[-tail:]) if tail else "")


def word_variants(word: str) -> list[str]:
    """Spellings a model may use for a one-word answer as its first token."""
    forms = {word, word.lower(), word.capitalize(), word.upper()}
    return sorted(forms | {" " + f for f in forms})


def first_token_ids(tokenizer, candidates: tuple[str, ...]) -> dict[str, set[int]]:
    """For next-token scoring: the first token of every spelling (`word_variants`) of every candidate; a token shared
    by two candidates counts for neither. Raises when a candidate has no token of its own."""
    first: dict[str, set[int]] = {}
    for cand in candidates:
        first[cand] = {ids[0] for v in word_variants(cand) if (ids := tokenizer(v, add_special_tokens=False)["input_ids"])}
    for cand in candidates:
        others = set().union(*(first[c] for c in candidates if c != cand))
        first[cand] = first[cand] - others
        if not first[cand]:
            raise ValueError(f"candidate {cand!r} has no first token distinct from the other candidates")
    return first


TRUNCATION_MARK = "\n[... truncated ...]\n"


def _head_tail(head: str, tail: str) -> str:
    """Joins the kept head and tail of a truncated rollout with a visible marker, so the anchor knows text is missing."""
    return head + TRUNCATION_MARK + tail
