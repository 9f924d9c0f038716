"""Selection baselines as reference estimators: the reference is one of the G rollouts, chosen by the model itself.

The paper's claim is that *synthesis beats selection*; these are the selection methods it compares against
(arXiv 2509.14234, Sec. 4 / App.), behind the same interface as synthesis so that `cat-trl eval` scores them on one
pool of rollouts and CaT-RL can use any of them as its reference (the paper's "RL with selection-based references"):

* `SelfBoNEstimator`: the model is shown the G responses (and the question) and names the best one.
* `MinPPLEstimator`: the rollout with the lowest mean token NLL under the model, as the reply to the prompt.
* `MutualPredictabilityEstimator` (Wen et al. 2025): the rollout with the lowest mean NLL when the other G-1
  rollouts, in random order, precede it as earlier answers to the same question.

Selection reads the question by nature (a rollout's likelihood is a likelihood *given the prompt*), unlike the
question-blind synthesis anchor. A selection that cannot be made (unparseable choice, no scorable rollout) gives a
reference with `text=None` by default, so RL gives the group no reward instead of guessing; `fallback="first"` picks
rollout 1 instead (what `cat-trl eval` does, reporting the failure rate).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..answers import extract_boxed
from ..engines.base import Conversation, Engine, SamplingSettings
from ..messages import question_text
from .base import Group, Reference, ReferenceEstimator
from .synthesis import SynthesisEstimator, water_fill

FALLBACKS = ("none", "first")

SELF_BON_PROMPT = """Below are several candidate responses to the same problem.

The problem:
{question}

{responses}

Read every response carefully and decide which single response is the best: correct, complete and well reasoned. Do not write a new solution. End your reply with a line of the form "BEST: k", where k is the number of the best response."""

_BEST_LINE = re.compile(r"^\W*best\s*:\s*(?:response\s*)?#?\s*(\d+)\W*$", re.IGNORECASE | re.MULTILINE)
_BEST = re.compile(r"best\s*(?:response)?\s*(?:is|:|=|-)?\s*(?:response\s*)?[#(\[]?\s*(\d+)", re.IGNORECASE)
_RESPONSE_N = re.compile(r"response\s*#?\s*(\d+)", re.IGNORECASE)
_BARE = re.compile(r"^\W*(\d+)\W*$")


def parse_choice(text: str | None, num_candidates: int, *, strict: bool = False) -> int | None:
    """The 0-based index of the chosen response, or None.

    Tried in order: the last "BEST: k" (also "best response is k", "Best: Response #k"); a reply that is only a
    number; the last "Response k" mentioned. A number outside 1..num_candidates is not a choice. `strict` accepts only
    a completed line of the form "BEST: k" -- for a reply cut off by the token limit, whose last "Response k" is
    wherever the comparison happened to stop and whose last line may be cut mid-number.
    """
    if not isinstance(text, str):
        return None
    if strict:  # a verdict line "BEST: k" that was finished: the last line may have been cut mid-number ("BEST: 1|2")
        found = _BEST_LINE.findall(text.rsplit("\n", 1)[0] if "\n" in text else "")
        k = int(found[-1]) if found else 0
        return k - 1 if 1 <= k <= num_candidates else None
    candidates: list[str] = []
    for pattern in (_BEST, _BARE, _RESPONSE_N):
        found = pattern.findall(text.strip())
        if found:
            candidates = found
            break
    if not candidates:
        return None
    k = int(candidates[-1])
    return k - 1 if 1 <= k <= num_candidates else None


def _as_conversation(prompt: Conversation | str) -> Conversation:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _selected(group: Group, choice: int | None, fallback: str, extract, diagnostics: dict[str, Any]) -> Reference:
    failed = choice is None
    if failed and fallback == "first" and group.completions:
        choice = 0
    diagnostics = {"choice": choice, "selection_failed": failed, "truncated": 0, **diagnostics}
    if choice is None:
        return Reference(text=None, answer=None, diagnostics={**diagnostics, "parse_failed": True})
    text = group.completions[choice]
    answer = extract(text) if extract is not None else None
    diagnostics["parse_failed"] = extract is not None and answer is None
    return Reference(text=text, answer=answer, diagnostics=diagnostics)


def _check_fallback(fallback: str) -> None:
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")


class SelfBoNEstimator(SynthesisEstimator):
    """The model picks its own best response. Shares synthesis's prompt building and even truncation of long
    rollouts (so G responses always fit the context); only the instruction and the reading of the output differ."""

    name = "self_bon"
    uses_engine = True

    def __init__(
        self,
        engine: Engine,
        sampling: SamplingSettings,
        *,
        template: str = SELF_BON_PROMPT,
        include_question: bool = True,
        fallback: str = "none",
        max_context_tokens: int | None = None,
        extract_answer: Callable[[str], str | None] | None = extract_boxed,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        _check_fallback(fallback)
        super().__init__(
            engine,
            sampling,
            template=template,
            include_question=include_question,
            max_context_tokens=max_context_tokens,
            extract_answer=extract_answer,
            chat_template_kwargs=chat_template_kwargs,
        )
        self.fallback = fallback

    def estimate(self, groups: list[Group]) -> list[Reference]:
        if self.include_question:  # selection reads the question; fall back to the prompt's text when not given
            groups = [g if g.question is not None else replace(g, question=question_text(g.prompt)) for g in groups]
        _, truncated, outputs, _ = self._run_anchor(groups)
        references = []
        for group, n_truncated, out in zip(groups, truncated, outputs):
            cut_off = out.finish_reason == "length"
            choice = parse_choice(out.text, len(group.completions), strict=cut_off)
            ref = _selected(
                group,
                choice,
                self.fallback,
                self.extract_answer,
                {
                    "selector_output": out.text,
                    "selector_prompt_tokens": out.prompt_tokens,
                    "selector_completion_tokens": out.completion_tokens,
                    "selector_cut_off": cut_off,
                },
            )
            ref.diagnostics["truncated"] = n_truncated
            references.append(ref)
        return references


class _LikelihoodSelector(ReferenceEstimator):
    """Shared part of min-PPL and mutual predictability: one `Engine.logprobs` call for every (context, rollout)
    pair of the step, then the rollout with the lowest mean token NLL wins (ties: the earlier rollout)."""

    uses_engine = True

    def __init__(
        self,
        engine: Engine,
        *,
        fallback: str = "none",
        extract_answer: Callable[[str], str | None] | None = extract_boxed,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        _check_fallback(fallback)
        self.engine = engine
        self.fallback = fallback
        self.extract_answer = extract_answer
        self.chat_template_kwargs = chat_template_kwargs

    def _pairs(self, group: Group) -> list[tuple[Conversation, str]]:
        raise NotImplementedError

    def estimate(self, groups: list[Group]) -> list[Reference]:
        conversations, continuations, spans = [], [], []
        for group in groups:
            pairs = self._pairs(group)
            spans.append((len(conversations), len(pairs)))
            conversations += [c for c, _ in pairs]
            continuations += [t for _, t in pairs]
        logps = self.engine.logprobs(conversations, continuations, self.chat_template_kwargs)
        references = []
        for group, (start, n) in zip(groups, spans):
            nll = [(-sum(lp) / len(lp)) if lp else math.inf for lp in logps[start : start + n]]
            finite = [i for i, v in enumerate(nll) if math.isfinite(v)]
            choice = min(finite, key=lambda i: (nll[i], i)) if finite else None
            references.append(
                _selected(
                    group,
                    choice,
                    self.fallback,
                    self.extract_answer,
                    {"mean_nll": [v if math.isfinite(v) else None for v in nll],
                     "scored_tokens": sum(len(lp) for lp in logps[start : start + n])},
                )
            )
        return references


class MinPPLEstimator(_LikelihoodSelector):
    """argmin_j mean NLL(o_j | prompt). The paper reports mean NLL rather than its exponential (same argmin)."""

    name = "min_ppl"

    def _pairs(self, group: Group) -> list[tuple[Conversation, str]]:
        prompt = _as_conversation(group.prompt)
        return [(prompt, c) for c in group.completions]


class MutualPredictabilityEstimator(_LikelihoodSelector):
    """argmin_j mean NLL(o_j | prompt, o_{-j}) (Wen et al. 2025, as used in the CaT paper).

    The other G-1 rollouts precede o_j as earlier turns of the same conversation (the prompt asked again before each
    answer), in an order shuffled per (group, j) with a seeded RNG, so the context is the model's own in-context
    evidence about what answers to this question look like. When the context would overflow `max_context_tokens`,
    the preceding rollouts are truncated evenly (head and tail kept), never o_j itself.
    """

    name = "mutual_predictability"

    def __init__(self, engine: Engine, *, seed: int = 0, max_context_tokens: int | None = None, **kwargs):
        super().__init__(engine, **kwargs)
        self.seed = seed
        self.max_context_tokens = max_context_tokens or engine.max_context_tokens

    def _pairs(self, group: Group) -> list[tuple[Conversation, str]]:
        prompt = _as_conversation(group.prompt)
        digest = hashlib.sha256("\x00".join(group.completions).encode()).hexdigest()[:16]
        pairs = []
        for j, target in enumerate(group.completions):
            others = [c for i, c in enumerate(group.completions) if i != j]
            random.Random(f"{self.seed}:{digest}:{j}").shuffle(others)
            others = self._fit(prompt, others, target)
            pairs.append((_history(prompt, others), target))
        return pairs

    def _fit(self, prompt: Conversation, others: list[str], target: str) -> list[str]:
        if self.max_context_tokens is None or not others:
            return others
        # The frame is the very conversation that will be scored, with empty earlier answers: strict-alternation
        # templates (Gemma, Mistral) see the same turn structure here as in `logprobs`.
        frame = self.engine.count_chat_tokens(_history(prompt, [""] * len(others)), self.chat_template_kwargs)
        budget = self.max_context_tokens - frame - self.engine.count_tokens(target) - 8 * (len(others) + 1)
        lengths = [self.engine.count_tokens(o) for o in others]
        cap = water_fill(lengths, max(budget, len(others)))
        if cap is None:
            return others
        return [o if n <= cap else self.engine.truncate_tokens(o, max(cap - 8, 1)) for o, n in zip(others, lengths)]


def _history(prompt: Conversation, earlier_answers: list[str]) -> Conversation:
    """system messages once, then (prompt turns, earlier answer) per earlier answer, then the prompt turns again:
    user and assistant strictly alternate, as every chat template accepts."""
    system = [m for m in prompt if m.get("role") == "system"]
    turns = [m for m in prompt if m.get("role") != "system"]
    history: Conversation = list(system)
    for answer in earlier_answers:
        history += [*turns, {"role": "assistant", "content": answer}]
    return [*history, *turns]
