"""The open-ended regime: the anchor's rubric from the synthesized reference, and the judge that checks it."""

from .judge import JUDGE_MODES, Judge, JudgeItem, Verdict, parse_yes_no
from .parse import ParsedRubric, parse_rubric
from .prompts import (
    EQUIVALENCE_PROMPT,
    FREEFORM_SYNTHESIS_PROMPT,
    JUDGE_PROMPT,
    RUBRIC_PROMPT,
    render_conversation,
)
from .proposer import RubricEstimator, RubricProposer

__all__ = [
    "EQUIVALENCE_PROMPT",
    "FREEFORM_SYNTHESIS_PROMPT",
    "JUDGE_MODES",
    "JUDGE_PROMPT",
    "Judge",
    "JudgeItem",
    "ParsedRubric",
    "RUBRIC_PROMPT",
    "RubricEstimator",
    "RubricProposer",
    "Verdict",
    "parse_rubric",
    "parse_yes_no",
    "render_conversation",
]
