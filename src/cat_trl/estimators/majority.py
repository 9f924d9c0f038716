"""TTRL-style majority vote as a reference estimator: no anchor call, the most common final answer wins."""

from __future__ import annotations

from collections.abc import Callable

from ..answers import AnswerMatcher, extract_boxed, majority_answer
from .base import Group, Reference, ReferenceEstimator


class MajorityEstimator(ReferenceEstimator):
    """Clusters the rollouts' final answers by equivalence (`matcher`) and returns the largest cluster's answer.

    Ties go to the answer that appears first in the group, so the result is deterministic for a given rollout order.
    """

    name = "majority"
    uses_engine = False

    def __init__(self, matcher: AnswerMatcher | None = None, extract: Callable[[str], str | None] = extract_boxed):
        self.matcher = matcher or AnswerMatcher("string")
        self.extract_answer = extract

    def estimate(self, groups: list[Group]) -> list[Reference]:
        references = []
        for group in groups:
            answers = [self.extract_answer(c) for c in group.completions]
            answer, size, clusters = majority_answer(answers, self.matcher)
            references.append(
                Reference(
                    text=None if answer is None else f"\\boxed{{{answer}}}",
                    answer=answer,
                    diagnostics={
                        "truncated": 0,
                        "parse_failed": answer is None,
                        "majority_size": size,
                        "num_clusters": len(clusters),
                    },
                )
            )
        return references
