"""The anchor turns each group's reference into a rubric: R = pi_0(. | p_rub, s). One rubric per prompt per step,
shared by the G rollouts; one engine call for all groups a process owns."""

from __future__ import annotations

from typing import Any

from ..engines.base import Engine, SamplingSettings
from ..estimators.base import Group, Reference, ReferenceEstimator
from .parse import ParsedRubric, parse_rubric
from .prompts import (
    RUBRIC_CONVERSATION_BLOCK,
    RUBRIC_PROMPT,
    fill,
    render_conversation,
    validate_placeholders,
)


class RubricProposer:
    """Writes rubrics from references with the anchor.

    Args:
        engine: the anchor (the same engine as the synthesis).
        sampling: the anchor's decoding settings for rubric writing.
        template: must contain `{reference}`; may contain `{conversation}` (else it is prepended when
            `include_conversation`), `{min_criteria}`, `{max_criteria}`.
        include_conversation: let the rubric writer see the conversation (the paper's equations condition on s only).
        min_criteria / max_criteria: a rubric with fewer distinct criteria fails; extra ones are dropped.
        allow_list: also accept a bulleted/numbered list when no XML criteria are found.
    """

    def __init__(
        self,
        engine: Engine,
        sampling: SamplingSettings,
        *,
        template: str = RUBRIC_PROMPT,
        include_conversation: bool = False,
        min_criteria: int = 5,
        max_criteria: int = 12,
        allow_list: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        validate_placeholders(template, ("reference",), "cat_rubric_prompt")
        if not 1 <= min_criteria <= max_criteria:
            raise ValueError(f"need 1 <= min_criteria <= max_criteria, got {min_criteria}, {max_criteria}")
        if "{conversation}" in template and not include_conversation:
            raise ValueError("cat_rubric_prompt contains {conversation} but cat_rubric_include_conversation is false")
        self.engine, self.sampling, self.template = engine, sampling, template
        self.include_conversation = include_conversation
        self.min_criteria, self.max_criteria, self.allow_list = min_criteria, max_criteria, allow_list
        self.chat_template_kwargs = chat_template_kwargs

    def prompt(self, reference: str, conversation: Any = None) -> str:
        template = self.template
        if self.include_conversation and "{conversation}" not in template:
            template = RUBRIC_CONVERSATION_BLOCK + template
        return fill(
            template,
            conversation=render_conversation(conversation) if self.include_conversation else "",
            min_criteria=str(self.min_criteria),
            max_criteria=str(self.max_criteria),
            reference=(reference or "").strip(),
        )

    def propose(self, references: list[Reference], groups: list[Group]) -> None:
        """Sets `rubric` (or None) and rubric diagnostics on each reference, in place. References without text get
        no rubric and cost no engine call."""
        todo = [i for i, ref in enumerate(references) if ref.text and ref.text.strip()]
        prompts = [self.prompt(references[i].text, groups[i].prompt) for i in todo]
        outputs = []
        if todo or getattr(self.engine, "collective", False):  # a sharded anchor needs every rank to call
            outputs = self.engine.generate(
                [[{"role": "user", "content": p}] for p in prompts], self.sampling, self.chat_template_kwargs
            )
        for ref in references:
            ref.rubric = None
            ref.diagnostics.update(rubric_failed=True, rubric_error="no reference text", rubric_size=0)
        for i, prompt, out in zip(todo, prompts, outputs):
            try:
                parsed = parse_rubric(out.text, self.min_criteria, self.max_criteria, self.allow_list)
            except Exception as err:  # a malformed anchor output must never crash a training step
                parsed = ParsedRubric([], error=f"unparseable output ({type(err).__name__})")
            ref = references[i]
            ref.rubric = parsed.criteria if parsed.ok else None
            ref.diagnostics.update(
                rubric_failed=not parsed.ok,
                rubric_error=parsed.error,
                rubric_size=len(parsed.criteria) if parsed.ok else 0,
                rubric_duplicates=parsed.dropped_duplicates,
                rubric_prompt=prompt,
                rubric_output=out.text,
                rubric_completion_tokens=out.completion_tokens,
            )


class RubricEstimator(ReferenceEstimator):
    """A reference estimator followed by rubric proposal: synthesis (freeform prompt) -> s -> rubric R."""

    name = "synthesis+rubric"
    uses_engine = True

    def __init__(self, estimator: ReferenceEstimator, proposer: RubricProposer):
        self.estimator, self.proposer = estimator, proposer

    def __getattr__(self, name: str):  # sampling, check_budget, engine, ... of the wrapped estimator
        if name in ("estimator", "proposer"):
            raise AttributeError(name)
        return getattr(self.estimator, name)

    @property
    def sampling(self):
        return self.estimator.sampling

    @sampling.setter
    def sampling(self, value):  # the trainer re-seeds the anchor per step
        self.estimator.sampling = value
        if value.seed is not None:
            from dataclasses import replace

            self.proposer.sampling = replace(self.proposer.sampling, seed=value.seed + 1)

    def estimate(self, groups: list[Group]) -> list[Reference]:
        references = self.estimator.estimate(groups)
        self.proposer.propose(references, groups)
        return references
