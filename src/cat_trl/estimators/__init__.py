"""Reference estimators (group of G completions -> one reference). See `base.ReferenceEstimator`."""

from .base import Group, Reference, ReferenceEstimator
from .majority import MajorityEstimator
from .prompts import MATH_SYNTHESIS_PROMPT, build_synthesis_prompt, format_responses, unified_section
from .synthesis import SynthesisEstimator, water_fill

ESTIMATORS = ("synthesis", "majority")

__all__ = [
    "ESTIMATORS",
    "Group",
    "MATH_SYNTHESIS_PROMPT",
    "MajorityEstimator",
    "Reference",
    "ReferenceEstimator",
    "SynthesisEstimator",
    "build_synthesis_prompt",
    "format_responses",
    "unified_section",
    "water_fill",
]
