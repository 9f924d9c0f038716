"""The judge pi_J: one yes/no verdict per (rollout, criterion) pair.

All pairs of a call go to the engine in one batch, ordered so that pairs sharing a prefix (conversation + rollout)
are adjacent. Two modes:

* `generate` -- the judge writes a short answer; "yes"/"no" is parsed from it. Unparseable answers count as "no" and
  are counted (`Verdict.parsed`).
* `logprob` -- one forward pass: p(yes) vs p(no) as the first token of the reply; no decoding. `Verdict.score` is
  the soft p(yes) / (p(yes) + p(no)).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..engines.base import Engine, SamplingSettings
from .prompts import JUDGE_PROMPT, fill, render_conversation, validate_placeholders

JUDGE_MODES = ("generate", "logprob")
_ANSWER_TAG = re.compile(r"<answer>\s*(yes|no)\b", re.IGNORECASE)
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class JudgeItem:
    conversation: Any  # chat messages (or a string); None for no context
    response: str
    criterion: str


@dataclass
class Verdict:
    met: bool
    score: float  # 1/0 in generate mode; p(yes) normalised over {yes, no} in logprob mode
    parsed: bool = True
    raw: str | None = None


def parse_yes_no(text: str | None) -> bool | None:
    """`<answer>yes</answer>` if present, else the first standalone yes/no word; None when neither appears."""
    if not isinstance(text, str):
        return None
    match = _ANSWER_TAG.search(text) or _WORD.search(text)
    return None if match is None else match.group(1).lower() == "yes"


class Judge:
    """Checks criteria against responses with any `Engine`.

    Args:
        engine: the judge model (independent of the policy: an API, a served model or a separate local model).
        mode: `generate` or `logprob`.
        template: with `{response}` and `{criterion}`, optionally `{conversation}`.
        max_new_tokens: answer length in `generate` mode (greedy).
        min_mass: `logprob` mode: when p(yes) + p(no) is below this, the judge was not answering yes/no (e.g. it
            starts with "<think>" or "The"): the verdict is "no" and counted as unparsed, like in `generate` mode.
    """

    def __init__(
        self,
        engine: Engine,
        mode: str = "generate",
        *,
        template: str = JUDGE_PROMPT,
        max_new_tokens: int = 8,
        chat_template_kwargs: dict[str, Any] | None = None,
        min_mass: float = 0.05,
    ):
        if mode not in JUDGE_MODES:
            raise ValueError(f"judge mode {mode!r} is not one of {JUDGE_MODES}")
        validate_placeholders(template, ("response", "criterion"), "judge template")
        self.engine, self.mode, self.template = engine, mode, template
        self.sampling = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0)
        self.chat_template_kwargs = chat_template_kwargs
        self.min_mass = min_mass

    @property
    def model_name(self) -> str:
        return getattr(self.engine, "name", type(self.engine).__name__)

    def prompt(self, item: JudgeItem) -> str:
        return fill(
            self.template,
            conversation=render_conversation(item.conversation),
            response=(item.response or "").strip(),
            criterion=item.criterion.strip(),
        )

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        if not items and not getattr(self.engine, "collective", False):
            return []
        prompts = [self.prompt(item) for item in items]
        # Shared prefixes adjacent: a stable sort on the prompt text keeps a response's criteria together.
        order = sorted(range(len(items)), key=lambda i: prompts[i])
        conversations = [[{"role": "user", "content": prompts[i]}] for i in order]
        verdicts: list[Verdict | None] = [None] * len(items)
        if self.mode == "logprob":
            scores = self.engine.next_token_logprobs(conversations, ("yes", "no"), self.chat_template_kwargs)
            for i, lp in zip(order, scores):
                yes, no = math.exp(lp["yes"]), math.exp(lp["no"])
                if yes + no < self.min_mass:
                    verdicts[i] = Verdict(met=False, score=0.0, parsed=False, raw=f"p(yes)+p(no)={yes + no:.3g}")
                    continue
                p = yes / (yes + no)
                verdicts[i] = Verdict(met=p > 0.5, score=p)
        else:
            outputs = self.engine.generate(conversations, self.sampling, self.chat_template_kwargs)
            for i, out in zip(order, outputs):
                answer = parse_yes_no(out.text)
                verdicts[i] = Verdict(met=bool(answer), score=float(bool(answer)), parsed=answer is not None,
                                      raw=out.text)
        return verdicts  # type: ignore[return-value]
