"""The reference-estimator interface: a group of G completions in, one reference (plus diagnostics) out.

CaT is "reference estimation + reward derivation". Estimators are the first half and are interchangeable: the
anchor's synthesis (the paper's method), majority vote (TTRL), and the selection baselines of the test-time
benchmark all map a group to a `Reference`. Rewards never see how the reference was made -- only its text.

`estimate` takes *all* groups a process owns for the step, so an engine-backed estimator makes exactly one engine
call per step (batched decoding instead of G-sized dribbles).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from ..engines.base import Conversation, SamplingSettings


@dataclass
class Group:
    """The G completions sampled for one prompt.

    `question` is the raw question text; estimators may only read it when configured to (the anchor is
    question-blind by default). Gold answers are deliberately *not* a field: nothing on the reward path can see them.
    """

    prompt: Conversation | str
    completions: list[str]
    question: str | None = None


@dataclass
class Reference:
    """An estimated reference for one group.

    `text` is what rewards score against (for synthesis: the unified response; for majority: `\\boxed{answer}`);
    `answer` is its extracted final answer for verifiable tasks (None when absent -- the group then gets no reward).
    """

    text: str | None
    answer: str | None = None
    rubric: list[str] | None = None  # open-ended regime: criteria the anchor derived from `text`
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnchorRequest:
    """The first engine call `estimate` will make for some groups, known before it is made: what the trainer sends
    ahead (`OverlappedEngine.prefetch`) so that a server anchor works while the policy's log-probs are computed."""

    conversations: list[Conversation]
    sampling: SamplingSettings
    chat_template_kwargs: dict[str, Any] | None = None


class ReferenceEstimator(ABC):
    """Maps groups to references. Subclasses set `name` and whether they call an engine."""

    name: str = "estimator"
    #: True when `estimate` calls an engine (the trainer then times it as anchor work)
    uses_engine: bool = False

    @abstractmethod
    def estimate(self, groups: list[Group]) -> list[Reference]:
        """One reference per group, in order. Must accept an empty list. Must not raise on malformed completions."""

    def anchor_request(self, groups: list[Group]) -> AnchorRequest | None:
        """The engine call `estimate(groups)` starts with, exactly as it will make it (None: none, or not knowable in
        advance). Must not call the engine."""
        return None


class NoReference(ReferenceEstimator):
    """For rewards that use no reference (the physician-rubric oracle baseline): no anchor call at all."""

    name = "none"

    def estimate(self, groups: list[Group]) -> list[Reference]:
        return [Reference(text=None) for _ in groups]
