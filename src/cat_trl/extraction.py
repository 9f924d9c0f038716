"""Final-answer extraction strategies, chosen once per run and shared by rewards, estimators and metrics.

`boxed` is the paper's: the last `\\boxed{}` (regex + string matching, App. F). `boxed_or_final` falls back to the
text after the last "final answer is" when there is no box -- small models (and small anchors) often write
"The final answer is 10." without boxing it. Rollouts and references always go through the same extractor, so a
run never compares answers extracted two different ways.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .answers import extract_boxed, last_box

EXTRACTIONS = ("boxed", "boxed_or_final")

_FINAL = re.compile(r"final answer is\s*:?", re.IGNORECASE)
_HOPE = "i hope it is correct"


def extract_final_phrase(text) -> str | None:
    """The rest of the line after the last "final answer is", without `$` and trailing punctuation."""
    if not isinstance(text, str):
        return None
    matches = list(_FINAL.finditer(text))
    if not matches:
        return None
    line = text[matches[-1].end() :].split("\n", 1)[0]
    line = line.replace("$", "").strip()
    line = _strip_delimiters(line)
    # Strip trailing dots and "I hope it is correct." repeatedly (a loop, not a regex: linear on any input).
    while True:
        stripped = line.rstrip(". \t")
        if stripped.lower().endswith(_HOPE):
            stripped = stripped[: -len(_HOPE)]
        if stripped == line:
            break
        line = stripped
    return _strip_delimiters(line.strip()) or None


#: Markdown emphasis and inline-math delimiters around a whole final answer (`**7**`, `\( 7 \)`, `\[7\]`)
_DELIMITERS = (("**", "**"), ("__", "__"), ("*", "*"), ("_", "_"), ("\\(", "\\)"), ("\\[", "\\]"))


def _strip_delimiters(text: str) -> str:
    changed = True
    while changed and text:
        changed = False
        for left, right in _DELIMITERS:
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text, changed = text[len(left) : len(text) - len(right)].strip(), True
    return text


def extract_boxed_or_final(text) -> str | None:
    """The boxed answer; the "final answer is" phrase only when the text has no box at all (an empty or unclosed
    box is a malformed answer, not an invitation to read the phrase around it)."""
    status, boxed = last_box(text)
    return boxed if status != "none" else extract_final_phrase(text)


def get_extractor(name: str) -> Callable[[str], str | None]:
    if name == "boxed":
        return extract_boxed
    if name == "boxed_or_final":
        return extract_boxed_or_final
    raise ValueError(f"answer extraction {name!r} is not one of {', '.join(map(repr, EXTRACTIONS))}")
