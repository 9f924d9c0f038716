"""Reference estimators (group of G completions -> one reference). See `base.ReferenceEstimator`."""

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
from .synthesis import SynthesisEstimator, water_fill

#: estimators a CaT-RL run can use as its reference (`cat_estimator`)
ESTIMATORS = ("synthesis", "majority", "self_bon", "min_ppl", "mutual_predictability")

__all__ = [
    "ESTIMATORS",
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
