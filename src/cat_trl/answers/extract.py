"""Final-answer extraction: the last `\\boxed{}` of a text, and the run-wide extraction strategy.

`boxed` is the paper's: the last `\\boxed{}` (regex + string matching, App. F). `boxed_or_final` falls back to the
answer phrase ("The final answer is 10.", "The answer is 10", "Answer: 10") when there is no box -- small models
(and small anchors) often answer without boxing. Rollouts and references always go through the same extractor, so
a run never compares answers extracted two different ways. Everything here is a linear regex scan that never raises.

Template placeholders are never answers, in either mode: a model that copies the instruction's `\\boxed{answer}`
(the 135M anchor does, for ~1 in 8 syntheses) has not answered, and two such texts must not "agree" and earn a
reward for it.
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
                        return ("ok", content) if content and not is_placeholder(content) else ("malformed", None)
            return "malformed", None  # unclosed: cut off mid-answer
        if (pos > box.end() or text[pos : pos + 1].isdigit()) and _BARE_ARG_RE.match(text, pos):  # `\boxed5`
            token = _TOKEN_RE.match(text, pos).group().rstrip(".,;")
            return ("malformed", None) if is_placeholder(token) else ("ok", token)
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


EXTRACTIONS = ("boxed", "boxed_or_final", "boxed_numeric", "boxed_or_final_numeric")

#: what instructions put where the answer goes ("ends with \\boxed{answer}"), compared case-insensitively after
#: dropping `\\text{}`-like wrappers, spaces and dots; copying one is not answering
_PLACEHOLDERS = frozenset({"answer", "youranswer", "finalanswer", "theanswer", "answerhere", "", "?", "??", "…"})
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def is_placeholder(answer: str) -> bool:
    """True for a template placeholder copied in place of an answer: `answer`, `your answer`, `\\text{answer}`,
    `...`. Short, fixed strings only -- a real answer is never one of them."""
    if len(answer) > 40:
        return False
    core = _WRAPPER_RE.sub(r"\1", answer)
    return "".join(ch for ch in core.lower() if not ch.isspace() and ch not in ".$*_<>[]") in _PLACEHOLDERS


# "final answer is", "correct answer is", "the answer is", "Answer:" -- the last one in the text wins.
_FINAL = re.compile(r"\banswer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
_HOPE = "i hope it is correct"
# A sentence ends at a dot followed by whitespace (`3.5` and `1.` + end of line are not split mid-number).
_SENTENCE_END_RE = re.compile(r"\.\s")
# Arithmetic on numbers, optionally with unit words: `14 - 5`, `4 boxes * 5 cookies`, `6 x 7`. No `^`, `\\`,
# or single-letter variables, so `x^2 + y^2 = 1` and `2x + 3 = 7` stay whole answers.
_ARITHMETIC_LHS_RE = re.compile(r"[\d\s.,+\-*/×÷·()A-Za-z]{1,200}")
_TIMES_X_RE = re.compile(r"(?<=\d)\s*[xX]\s*(?=\d)")  # `6 x 7`: x between numbers is a times sign
_SINGLE_LETTER_RE = re.compile(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])")
_OPERATOR_RE = re.compile(r"\d\s*(?:[A-Za-z]+\s+)*[+\-*/×÷·]\s*\(?\d")
# A number followed only by words ("20 cookies", "2 apples in total"): the words are units, the number the answer.
_NUMBER_WITH_UNITS_RE = re.compile(r"([-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?),?\s+[A-Za-z][A-Za-z\s,'-]*")
_PROSE_MAX_WORDS = 3


def _answer_from_prose(line: str) -> str | None:
    """The answer in the sentence that follows an answer phrase: the first sentence, without `$`, markdown
    emphasis, trailing dots or "I hope it is correct"; the result of a worked equation (`14 - 5 = 9 cookies` -> `9`);
    the number of a number-with-units (`9 cookies` -> `9`). A wordy sentence with no number or math in it ("the
    one that is correct") is not an answer: None, counted as no answer rather than as a wrong one."""
    line = line.replace("$", "").strip()
    line = _strip_delimiters(line)
    end = _SENTENCE_END_RE.search(line)
    if end is not None:
        line = line[: end.start()]
    # Strip trailing dots and "I hope it is correct." repeatedly (a loop, not a regex: linear on any input).
    while True:
        stripped = line.rstrip(". \t")
        if stripped.lower().endswith(_HOPE):
            stripped = stripped[: -len(_HOPE)]
        if stripped == line:
            break
        line = stripped
    answer = _strip_delimiters(line.strip())
    if "=" in answer:
        lhs, rhs = answer.rsplit("=", 1)
        lhs = _TIMES_X_RE.sub("*", lhs)
        if (
            any(ch.isdigit() for ch in rhs)
            and _ARITHMETIC_LHS_RE.fullmatch(lhs)
            and not _SINGLE_LETTER_RE.search(lhs)
            and _OPERATOR_RE.search(lhs)
        ):
            answer = rhs.strip()
    units = _NUMBER_WITH_UNITS_RE.fullmatch(answer)
    if units is not None:
        answer = units.group(1)
    if not answer or is_placeholder(answer):
        return None
    if not any(ch.isdigit() or ch in "\\^/=+-()[]{}<>" for ch in answer) and len(answer.split()) > _PROSE_MAX_WORDS:
        return None
    return answer


def extract_final_phrase(text) -> str | None:
    """The answer stated after the last "final answer is" / "the answer is" / "Answer:" (see `_answer_from_prose`)."""
    if not isinstance(text, str):
        return None
    matches = list(_FINAL.finditer(text))
    if not matches:
        return None
    return _answer_from_prose(text[matches[-1].end() :].split("\n", 1)[0])


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


# A numeric answer ends in a digit, a closing bracket, a letter (units, `\\pi`), `%` or a LaTeX group -- never in a
# binary operator or `=`: `14 -`, `3 *`, `x =` are an expression cut off before its end.
_DANGLING_RE = re.compile(r"(?:[+\-*/×÷·^=,]|\\(?:cdot|times|div|pm))\s*$")


def is_usable_numeric(answer: str | None) -> bool:
    """Whether an extracted answer can be the answer of a *numeric* task: it has a digit (a prose word --
    "correct", "incorrect", "none" -- is not a number), its brackets balance, and it does not end in an operator (a
    dangling expression like `14 -`). The `*_numeric` extraction modes apply this; a task whose answers may be words
    (MATH-500: `\\text{Evelyn}`, `(C)`) uses the plain modes."""
    if answer is None:
        return False
    core = _WRAPPER_RE.sub(r"\1", answer).strip()
    if not any(ch.isdigit() for ch in core) or _DANGLING_RE.search(core):
        return False
    depth = 0  # one count over all bracket kinds: half-open intervals `[0, 1)` mix them
    for ch in core:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _numeric(extract: Callable[[str], str | None]) -> Callable[[str], str | None]:
    def numeric(text):
        answer = extract(text)
        return answer if is_usable_numeric(answer) else None

    numeric.__name__ = f"{extract.__name__}_numeric"
    return numeric


extract_boxed_numeric = _numeric(extract_boxed)
extract_boxed_or_final_numeric = _numeric(extract_boxed_or_final)


def get_extractor(name: str) -> Callable[[str], str | None]:
    """`boxed` (the paper's), `boxed_or_final`, and their `_numeric` variants for numeric tasks, where an answer with
    no digit or a dangling expression is no answer (`is_usable_numeric`) instead of a parsed wrong one."""
    extractors = {"boxed": extract_boxed, "boxed_or_final": extract_boxed_or_final,
                  "boxed_numeric": extract_boxed_numeric, "boxed_or_final_numeric": extract_boxed_or_final_numeric}
    if name not in extractors:
        raise ValueError(f"answer extraction {name!r} is not one of {', '.join(map(repr, EXTRACTIONS))}")
    return extractors[name]
