"""Engines: how CaT runs a model other than the policy (anchor, judge). See `base.Engine`."""

from .base import (
    TRUNCATION_MARK,
    Conversation,
    Engine,
    EngineStats,
    Generation,
    SamplingSettings,
)
from .transformers_engine import TransformersEngine

__all__ = [
    "Conversation",
    "Engine",
    "EngineStats",
    "Generation",
    "SamplingSettings",
    "TRUNCATION_MARK",
    "TransformersEngine",
]
