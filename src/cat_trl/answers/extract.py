"""Final-answer extraction: the last `\\boxed{}` of a text, and the run-wide extraction strategy.

`boxed` is the paper's: the last `\\boxed{}` (regex + string matching, App. F). `boxed_or_final` falls back to the
text after the last "final answer is" when there is no box -- small models (and small anchors) often write
"The final answer is 10." without boxing it. Rollouts and references always go through the same extractor, so a
run never compares answers extracted two different ways. Everything here is a linear regex scan that never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# A backslash escape is consumed as one unit, so `\{`/`\}` never count as braces while `\\}` still closes a group.
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_TOKEN_RE = re.compile(r"[^\s$]+")


#: a brace-less `\boxed 5` argument: a number, a LaTeX command or a single letter. Anything else (`\boxed as
#: requested`, `\boxed.`) is prose *about* boxing, not a box: it is skipped, never read as an answer.
_BARE_ARG_RE = re.compile(r"[-+]?(?:\d|\\[A-Za-z]|[A-Za-z](?![A-Za-z]))")


def last_box(text) -> tuple[str, str | None]:
    """("ok", content) for the last `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5`; ("malformed", None) when that last
    box is unclosed or empty; ("none", None) when the text has no box at all. Mentions of `\\boxed` without an
    argument (prose such as "I put it in \\boxed as requested") are not boxes and are skipped."""
    if not isinstance(text, str):
        return "none", None
    for box in reversed(list(_BOX_RE.finditer(text))):
        pos = box.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == "{":
            depth = 0
            for m in _BRACE_RE.finditer(text, pos):
                tok = m.group()
                if tok == "{":
                    depth += 1
                elif tok == "}":
                    depth -= 1
                    if depth == 0:
                        content = text[pos + 1 : m.start()].strip()
                        return ("ok", content) if content else ("malformed", None)
            return "malformed", None  # unclosed: cut off mid-answer
        if (pos > box.end() or text[pos : pos + 1].isdigit()) and _BARE_ARG_RE.match(text, pos):  # `\boxed5`
            token = _TOKEN_RE.match(text, pos)
            return "ok", token.group().rstrip(".,;")
    return "none", None


def extract_boxed(text) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` in `text`, or None.

    Braces are balanced (`\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`); the brace-less `\\boxed 5` form yields the
    token up to the next whitespace or `$`. Only the last box counts: models restate and correct themselves, and the
    paper's reward reads the final answer. An unclosed or empty last box gives None rather than falling back to an
    earlier one, which would reward an answer the model moved away from. A prose mention of `\\boxed` with no
    argument is not a box (see `last_box`). Regex scans only, so cost is linear.
    """
    return last_box(text)[1]


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
