"""Engines: how CaT runs a model other than the policy (anchor, judge). See `base.Engine`."""

from .base import Conversation, Engine, EngineStats, Generation, SamplingSettings, TRUNCATION_MARK
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
