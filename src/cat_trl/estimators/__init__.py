"""Reference estimators (group of G completions -> one reference). See `base.ReferenceEstimator`; build one with
`spec.build_estimator(EstimatorSpec(...), engine)`."""

from .base import Group, Reference, ReferenceEstimator
from .majority import MajorityEstimator
from .prompts import (
    MATH_SYNTHESIS_PROMPT,
    build_synthesis_prompt,
    format_responses,
    unified_section,
)
from .selection import (
    SELF_BON_PROMPT,
    MinPPLEstimator,
    MutualPredictabilityEstimator,
    SelfBoNEstimator,
    parse_choice,
)
from .spec import ESTIMATORS, SELECTION, EstimatorSpec, anchor_sampling, build_estimator, check_context_budget
from .synthesis import SynthesisEstimator, water_fill

__all__ = [
    "ESTIMATORS",
    "EstimatorSpec",
    "SELECTION",
    "anchor_sampling",
    "build_estimator",
    "check_context_budget",
    "Group",
    "MATH_SYNTHESIS_PROMPT",
    "MajorityEstimator",
    "MinPPLEstimator",
    "MutualPredictabilityEstimator",
    "SELF_BON_PROMPT",
    "SelfBoNEstimator",
    "parse_choice",
    "Reference",
    "ReferenceEstimator",
    "SynthesisEstimator",
    "build_synthesis_prompt",
    "format_responses",
    "unified_section",
    "water_fill",
]
