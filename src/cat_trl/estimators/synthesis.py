"""CaT's reference estimator: the frozen anchor reads the G rollouts and writes one synthesized reference."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ..answers import extract_boxed
from ..engines.base import Engine, SamplingSettings
from .base import AnchorRequest, Group, Reference, ReferenceEstimator
from .prompts import (
    MATH_SYNTHESIS_PROMPT,
    UNIFIED_HEADER,
    build_synthesis_prompt,
    unified_section,
    validate_template,
)

# Slack for tokenizer merges at the seams between the frame and the inserted rollouts.
_TEMPLATE_SLACK = 8
# A truncated rollout also carries the truncation marker.
_MARK_TOKENS = 8


def water_fill(lengths: list[int], budget: int) -> int | None:
    """The largest per-rollout cap c with sum(min(l, c)) <= budget, or None when everything fits.

    "Truncate evenly": short rollouts keep every token, and the long ones share what is left equally, so no single
    verbose rollout can crowd the others out of the anchor's context.
    """
    if sum(lengths) <= budget:
        return None
    remaining, ordered = budget, sorted(lengths)
    for i, length in enumerate(ordered):
        share = remaining // (len(ordered) - i)
        if length > share:
            return max(share, 0)
        remaining -= length
    return None  # pragma: no cover - unreachable when sum(lengths) > budget


class SynthesisEstimator(ReferenceEstimator):
    """pi_0(. | p_syn, o_1..o_G): one engine call for all groups of the step.

    Args:
        engine: runs the anchor.
        sampling: the anchor's decoding settings (the paper samples it like the policy).
        template: synthesis prompt with `{responses}` (and `{question}` for the ablation).
        include_question: show the question to the anchor (ablation; off in the paper).
        max_context_tokens: the anchor's context window; defaults to the engine's. Rollouts that do not fit are
            truncated evenly (head and tail kept) and counted in `diagnostics["truncated"]`.
        extract_answer: final-answer extractor for verifiable tasks; None for open-ended ones.
        chat_template_kwargs: passed to the anchor's chat template (e.g. `{"enable_thinking": False}` for Qwen3).
    """

    name = "synthesis"
    uses_engine = True

    def __init__(
        self,
        engine: Engine,
        sampling: SamplingSettings,
        *,
        template: str = MATH_SYNTHESIS_PROMPT,
        include_question: bool = False,
        max_context_tokens: int | None = None,
        extract_answer: Callable[[str], str | None] | None = extract_boxed,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        validate_template(template, include_question)
        self.engine = engine
        self.sampling = sampling
        self.template = template
        self.include_question = include_question
        self.max_context_tokens = max_context_tokens or engine.max_context_tokens
        self.extract_answer = extract_answer
        self.chat_template_kwargs = chat_template_kwargs

    def rollout_budget(self, num_rollouts: int, question: str | None = None) -> int | None:
        """Tokens left for the rollouts' text once everything else in the anchor's context is reserved: the chat
        template, the synthesis template, the per-response headers, the question (ablation) and the output."""
        if self.max_context_tokens is None:
            return None
        frame = build_synthesis_prompt(self.template, [""] * num_rollouts, question or "", self.include_question)
        framed = self.engine.count_chat_tokens([{"role": "user", "content": frame}], self.chat_template_kwargs)
        overhead = framed + _TEMPLATE_SLACK + self.sampling.max_new_tokens
        return self.max_context_tokens - overhead

    def check_budget(self, num_generations: int, max_completion_length: int) -> dict[str, int | None]:
        """Start-up report: can G rollouts of full length fit? Raises when not even a useful fraction fits."""
        budget = self.rollout_budget(num_generations)
        if budget is None:
            return {"budget": None, "per_rollout_cap": None}
        per_rollout = budget // num_generations - _MARK_TOKENS
        if per_rollout < 32:
            raise ValueError(
                f"The anchor's context ({self.max_context_tokens} tokens) leaves {budget} tokens for "
                f"{num_generations} rollouts after reserving cat_anchor_max_new_tokens="
                f"{self.sampling.max_new_tokens}: under 32 tokens per rollout. Raise cat_anchor_max_context (or the "
                "engine's max model length: vllm_max_model_length for the colocated vLLM anchor), lower "
                "cat_anchor_max_new_tokens, or lower num_generations."
            )
        cap = None if num_generations * max_completion_length <= budget else per_rollout
        return {"budget": budget, "per_rollout_cap": cap}

    def _fit(self, group: Group) -> tuple[list[str], int]:
        budget = self.rollout_budget(len(group.completions), group.question if self.include_question else None)
        if budget is None:
            return group.completions, 0
        if budget < len(group.completions) * (_MARK_TOKENS + 1):
            raise ValueError(
                f"The anchor's context ({self.max_context_tokens} tokens) has no room for the rollouts "
                f"({budget} tokens left after the prompt frame and {self.sampling.max_new_tokens} output tokens)."
            )
        lengths = [self.engine.count_tokens(c) for c in group.completions]
        cap = water_fill(lengths, max(budget, 0))
        if cap is None:
            return group.completions, 0
        keep = max(cap - _MARK_TOKENS, 1)
        fitted = [c if n <= cap else self.engine.truncate_tokens(c, keep) for c, n in zip(group.completions, lengths)]
        return fitted, sum(n > cap for n in lengths)

    def _plan(self, groups: list[Group]) -> tuple[list[str], list[int], list[list[str]]]:
        """(synthesis prompts, rollouts truncated per group, the rollouts as the anchor sees them)."""
        prompts, truncated, fitted = [], [], []
        for group in groups:
            completions, n_truncated = self._fit(group)
            prompts.append(build_synthesis_prompt(self.template, completions, group.question, self.include_question))
            truncated.append(n_truncated)
            fitted.append(completions)
        return prompts, truncated, fitted

    def anchor_request(self, groups: list[Group]) -> AnchorRequest:
        prompts, _, _ = self._plan(groups)
        return AnchorRequest([[{"role": "user", "content": p}] for p in prompts], self.sampling,
                             self.chat_template_kwargs)

    def _run_anchor(self, groups: list[Group]) -> tuple[list[str], list[int], list, list[list[str]]]:
        """One engine call for all groups: (prompts, rollouts truncated per group, generations, the rollouts as the
        anchor saw them)."""
        prompts, truncated, fitted = self._plan(groups)
        request = AnchorRequest([[{"role": "user", "content": p}] for p in prompts], self.sampling,
                                self.chat_template_kwargs)
        outputs = self.engine.generate(request.conversations, request.sampling, request.chat_template_kwargs)
        return prompts, truncated, outputs, fitted

    def estimate(self, groups: list[Group]) -> list[Reference]:
        prompts, truncated, outputs, fitted = self._run_anchor(groups)
        references = []
        for prompt, n_truncated, out, rollouts in zip(prompts, truncated, outputs, fitted):
            text = unified_section(out.text)
            answer = self.extract_answer(text) if self.extract_answer is not None else None
            references.append(
                Reference(
                    text=text,
                    answer=answer,
                    diagnostics={
                        "truncated": n_truncated,
                        "parse_failed": self.extract_answer is not None and answer is None,
                        # no `# UNIFIED RESPONSE` heading although the prompt asks for one: the whole output was used
                        # as the reference (counted as cat/reference_format_failure)
                        "format_failure": UNIFIED_HEADER in self.template and UNIFIED_HEADER not in (out.text or ""),
                        "anchor_prompt": prompt,
                        # the prompt's parts, so a log can store the template once and the rollouts it already has
                        "anchor_template": self.template,
                        "anchor_rollouts": rollouts,
                        "include_question": self.include_question,
                        "anchor_output": out.text,
                        "anchor_prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                        "anchor_prompt_tokens": out.prompt_tokens,
                        "anchor_completion_tokens": out.completion_tokens,
                        "anchor_finish_reason": out.finish_reason,
                        # the engine could not get this synthesis (server down, 5xx, timed out; `skip` mode)
                        "anchor_failed": out.finish_reason == "error",
                    },
                )
            )
        return references
