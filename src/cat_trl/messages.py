"""Text of chat messages, prompts and completions: the one place that flattens TRL's message formats.

TRL hands prompts and completions over as plain strings (standard format) or lists of `{"role", "content"}`
messages (conversational format), and a content may be a string, a list of typed parts (`{"type": "text", "text":
...}`; images carry no text) or None. Rewards, estimators, metrics and loaders all read text through these helpers,
which never raise on malformed input: a model output must never crash a training step.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["completion_text", "content_text", "question_text", "strip_thinking"]

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)


def content_text(content: Any) -> str:
    """Text of one message content: the string itself, the concatenated text parts of a part list, "" for None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if content is None else str(content)


def completion_text(completion: Any) -> str:
    """Text of a TRL completion: a string (standard) or the last message of a list (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        return content_text(last.get("content") if isinstance(last, dict) else last)
    return "" if completion is None else str(completion)


def question_text(prompt: Any) -> str:
    """The question a prompt asks: the prompt string, or the text of the last user message of a conversation
    ("" when it has none)."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        return "" if prompt is None else str(prompt)
    for message in reversed(prompt):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def strip_thinking(text: str) -> str:
    """A response without its `<think>...</think>` trace (an unclosed one runs to the end): graders score what the
    user sees, not the reasoning."""
    return _THINK.sub("", text).strip()
