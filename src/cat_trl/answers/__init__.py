"""Verifiable final answers: `\\boxed{}` extraction, normalisation, equivalence, clustering.

This is the layer under the CaT math reward (a rollout scores 1 when its final boxed answer matches the final boxed
answer of the synthesised reference), under majority voting and under evaluation against gold answers. It runs on
every completion of every GRPO step, so everything here is cheap on the common path and never raises or hangs on
malformed model output.

    extract.py    last `\\boxed{}`, "final answer is" fallback, the run-wide extraction strategy
    normalise.py  `normalize_answer` (the `string` mode's key)
    match.py      `AnswerMatcher` (`string` / symmetric math-verify, timeouts, helper process)
    vote.py       `cluster_answers`, `majority_answer`
"""

from .extract import (
    EXTRACTIONS,
    extract_boxed,
    extract_boxed_or_final,
    extract_final_phrase,
    get_extractor,
    is_placeholder,
    last_box,
)
from .match import MATCH_MODES, OWN_FALSE_POSITIVE_FIXES, AnswerMatcher, own_false_positive_fix
from .normalise import normalize_answer
from .vote import cluster_answers, majority_answer

__all__ = [
    "EXTRACTIONS",
    "MATCH_MODES",
    "OWN_FALSE_POSITIVE_FIXES",
    "AnswerMatcher",
    "cluster_answers",
    "extract_boxed",
    "extract_boxed_or_final",
    "extract_final_phrase",
    "get_extractor",
    "is_placeholder",
    "last_box",
    "majority_answer",
    "normalize_answer",
    "own_false_positive_fix",
]
