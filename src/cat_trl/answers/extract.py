"""Final-answer extraction: the last `\\boxed{}` of a text, and the run-wide extraction strategy.

`boxed` is the paper's: the last `\\boxed{}` (regex + string matching, App. F). `boxed_or_final` falls back to the
answer phrase ("The final answer is 10.", "The answer is 10", "Answer: 10") when there is no box -- small models
(and small anchors) often answer without boxing. Rollouts and references always go through the same extractor, so
a run never compares answers extracted two different ways. Everything here is a linear regex scan that never raises.

Template placeholders are never answers, in either mode: a model that copies the instruction's `\\boxed{answer}`
(the 135M anchor does, for ~1 in 8 syntheses) has not answered, and two such texts must not "agree" and earn a
reward for it. That is a class, not a list: the instruction's wording in any case, spacing or `\\text{}`-like markup
(`\\boxed{\\text{your final answer}}`, `\\boxed{\\text{Final Answer Here}}`), and bare marks (`...`, `?`), see
`is_placeholder`.

The answer-phrase fallback reads the phrase as models write it: Markdown-bold labels (`**Answer:** 42`, `**Final
answer**: 42`, a `**Final Answer**` line followed by the answer), an appositive or restatement after the answer
(`42, which is the number of apples` -> `42`), and a worked equation in math delimiters followed by units
(`$3 \\times 4 = 12$ apples` -> `12`, the right-hand side of the last `=`); see `_answer_from_prose`.
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

#: LaTeX wrappers around (parts of) a placeholder: `\\text{your final answer}`, `\\textbf{\\text{Answer}}`
_PLACEHOLDER_WRAPPER_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|textnormal|emph|mathrm|mathbf|mathit|mathsf|mathtt|mbox"
    r"|operatorname|boldsymbol)(?![A-Za-z])"
)
_PLACEHOLDER_BRACE_RE = re.compile(r"(?<!\\)[{}]")
#: LaTeX that carries no content in a placeholder: ellipses, spacing, an escaped underscore (`your\\_answer`)
_PLACEHOLDER_NOISE_RE = re.compile(r"\\(?:[ldc]?dots[cbmio]?|q?quad|[lr]angle|hspace\*?)(?![A-Za-z])|\\[_ ,;:!]")
#: the instruction's words for "the answer goes here", read from the letters of the candidate, lower-cased and
#: concatenated (spacing, case, punctuation and markup do not matter): `answer`, `your answer`, `Your Final Answer`,
#: `final answer here`, `insert your answer here`, `[your_answer]`, `<result>`. It must name the answer (`answer`/
#: `result`); every other word is instruction filler. A real answer never is one of these.
_PLACEHOLDER_WORDS_RE = re.compile(
    r"(?:please)?(?:put|insert|write|enter|type|place|give|state|fill(?:in)?)?"
    r"(?:your|the|my|our|an?)?(?:final|numerical|numeric|exact|simplified|correct|actual)?"
    r"(?:answer|result)s?(?:is)?(?:goes)?(?:here)?"
)
#: characters that, alone, are no answer either: `...`, `?`, `___`, `[ ]`, `<>`
_PLACEHOLDER_MARKS = frozenset(".…?*_<>[]$~ \t\n")
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def is_placeholder(answer: str) -> bool:
    """True for a template placeholder copied in place of an answer: the instruction's wording in any case, spacing
    or markup (`answer`, `your answer`, `\\text{your final answer}`, `\\textbf{Final Answer}`, `final answer here`,
    `<your_answer>`) and bare marks (`...`, `\\ldots`, `?`, `\\_\\_\\_`). A candidate with a digit or any other LaTeX
    command (`\\pi`, `\\{\\}`) is never one. Short strings only; linear."""
    if not isinstance(answer, str) or len(answer) > 80:
        return False
    # wrapper commands and grouping braces go (`\textbf{\text{answer}}`, `\text{{answer}}`); escaped braces stay
    core = _PLACEHOLDER_BRACE_RE.sub(" ", _PLACEHOLDER_WRAPPER_RE.sub(" ", answer))
    core = _PLACEHOLDER_NOISE_RE.sub(" ", core)
    if "\\" in core or any(ch.isdigit() for ch in core):
        return False
    letters = "".join(ch for ch in core.lower() if ch.isalpha())
    if not letters:
        return all(ch in _PLACEHOLDER_MARKS for ch in core)
    return _PLACEHOLDER_WORDS_RE.fullmatch(letters) is not None


# "final answer is", "correct answer is", "the answer is", "Answer:" -- the last one in the text wins. Markdown bold
# or italics around the label count as part of it (`**Answer:** 42`, `**Final answer**: 42`, `*Answer*: 42`), and a
# label alone on its line (`**Final Answer**`, `### Final Answer`, `The final answer is:`) is followed by the answer on
# the next line.
_EMPHASIS = r"(?:\*{1,3}|_{1,3})"
#: what may open a label line: indentation, `#` headings, `>` quotes, emphasis, a list bullet or number (`- `, `3. `)
_LABEL_PREFIX = (
    r"[ \t#>*_]*(?:(?:[-+]|\d{1,3}[.)])[ \t][ \t*_]*)?(?:(?:the|my|our)[ \t]+)?(?:(?:final|correct)[ \t]+)?"
)
_FINAL = re.compile(
    # `answer` not inside an identifier (`extract_answer:`), though `__Answer:__` is emphasis
    r"(?<![A-Za-z0-9])(?<![A-Za-z0-9]_)answer"
    r"(?:[ \t]*" + _EMPHASIS + r")?\s*(?:is\b\s*:?|:)(?:" + _EMPHASIS + r"(?=\s|$))?"
    r"|^" + _LABEL_PREFIX + r"answer[ \t*_:\r]*$",
    re.IGNORECASE | re.MULTILINE,
)
#: a line holding only an answer label (then the answer is on the next non-empty line)
_LABEL_LINE_RE = re.compile(_LABEL_PREFIX + r"answer(?:[ \t*_]*is)?[ \t*_:\r]*", re.IGNORECASE)
#: a line with no content between a label and its answer: blank, `$$`, `\[`, `\]`, emphasis marks
_EMPTY_LINE_RE = re.compile(r"[\s$*_:]*(?:\\[\[\]()][\s$*_]*)*")
_LABEL_LOOKAHEAD_LINES = 4
_HOPE = "i hope it is correct"
# A sentence ends at a dot followed by whitespace (`3.5` and `1.` + end of line are not split mid-number), also when
# a closing emphasis sits in between (`**42.** Then ...`).
_SENTENCE_END_RE = re.compile(r"\.[*_]*\s")
#: inline/display math delimiters inside a prose answer (`\( 3 \times 4 = 12 \) apples`); `$` is removed separately
_MATH_DELIMITER_RE = re.compile(r"\\[()\[\]]")
# Arithmetic on numbers, optionally with unit words: `14 - 5`, `4 boxes * 5 cookies`, `6 x 7`, `2^3`, and the LaTeX
# forms `3 \times 4`, `3 \cdot 4`, `12 \div 3`, `\frac{12}{3}` (rewritten by `_plain_arithmetic` first). No other `\\`
# command and no single-letter variables, so `x^2 + y^2 = 1` and `2x + 3 = 7` stay whole answers.
_ARITHMETIC_LHS_RE = re.compile(r"[\d\s.,+\-*/×÷·^()A-Za-z]{1,200}")
_TIMES_X_RE = re.compile(r"(?<=\d)\s*[xX]\s*(?=\d)")  # `6 x 7`: x between numbers is a times sign
_SINGLE_LETTER_RE = re.compile(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])")
_OPERATOR_RE = re.compile(r"\d\)*\s*(?:[A-Za-z]+\s+)*[+\-*/×÷·^]\s*\(*\d")
_LATEX_SPACING_RE = re.compile(r"\\(?:left|right|q?quad)(?![A-Za-z])|\\[,;:! ]")
_LATEX_TIMES_RE = re.compile(r"\\(?:times|cdot|ast)(?![A-Za-z])")
_LATEX_DIV_RE = re.compile(r"\\div(?![A-Za-z])")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
# A number followed only by words ("20 cookies", "2 apples in total"): the words are units, the number the answer.
_NUMBER_WITH_UNITS_RE = re.compile(r"([-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?),?\s+[A-Za-z][A-Za-z\s,'-]*")
# An appositive or restatement after the answer: `, which is ...`, `, so she has 12 left`, `, not 13`, `; i.e. 12`,
# `-- the number of apples`. The word after the separator is prose (two letters or more, or `i.e.`/`e.g.`; not a
# function or variable: `, xy = 6`, `, f(x)` are not prose).
_APPOSITIVE_SEPARATORS = ",;\u2014\u2013"  # comma, semicolon, em dash, en dash
#: words that open an appositive or restatement even after an answer in words (`Evelyn, who ...`, `B, which ...`)
_CONNECTIVES = frozenset({"which", "who", "whom", "whose", "that", "so", "because", "since", "as", "where", "when",
                          "i.e.", "i.e", "e.g.", "e.g", "not", "but", "hence", "thus", "therefore", "meaning"})
_APPOSITIVE_RE = re.compile(
    r"[,;\u2014\u2013]\s*((?:[ie]\.[eg]\.?)|[A-Za-z]{2,}(?![A-Za-z])(?!\s*[=(_^]))(\s+[A-Za-z]{2,})?"
)
_PROSE_MAX_WORDS = 3


def _strip_unpaired_emphasis(text: str) -> str:
    """`42**` -> `42`, `** 42` -> `42` (the other half of the bold belonged to the label); `**42**` is left alone."""
    lead = len(text) - len(text.lstrip("*_"))
    trail = len(text) - len(text.rstrip("*_"))
    if lead and not trail:  # all of a run like `* * - x` at once: one pass, not one per mark (linear)
        return text.lstrip("*_ \t").strip()
    if trail and not lead:
        return text.rstrip("*_ \t").strip()
    return text


def _plain_arithmetic(lhs: str) -> str:
    """The LaTeX of a worked equation's left-hand side as plain arithmetic: `3 \\times 4` -> `3 * 4`,
    `\\frac{12}{3}` -> `(12)/(3)`, `2^{3}` -> `2^(3)`; anything else LaTeX keeps its backslash (then it is no
    arithmetic)."""
    lhs = _LATEX_SPACING_RE.sub(" ", _WRAPPER_RE.sub(r" \1 ", lhs))
    lhs = _LATEX_FRAC_RE.sub(r"(\1)/(\2)", lhs)
    lhs = _LATEX_TIMES_RE.sub("*", lhs)
    lhs = _LATEX_DIV_RE.sub("/", lhs)
    return _TIMES_X_RE.sub("*", lhs.replace("{", "(").replace("}", ")"))


def _cut_appositive(answer: str) -> str:
    """`42, which is the number of apples` -> `42`; `12, so she has 12 left` -> `12`; `3, 5, 7, which ...` ->
    `3, 5, 7`. The cut is at the first separator (`,` or `;` followed by a space, or a dash), outside brackets, that
    a prose word follows (`_APPOSITIVE_RE`; `and`/`or` count only before another word, so `1, 2, and 3`,
    `x = 1, y = 2` and `(1, 2)` stay whole). When what precedes it is only words (no digit, LaTeX command or math
    sign), the word must be a connective (`Evelyn, who ...`, `B, which ...`), so word lists (`Monday, Tuesday`) stay
    whole. One pass over the answer: linear."""
    depth = 0
    math = False  # whether the text before the current position has a digit, a LaTeX command or a math sign
    for i, ch in enumerate(answer):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in _APPOSITIVE_SEPARATORS and depth <= 0 and (ch in "\u2014\u2013" or answer[i + 1 : i + 2].isspace()):
            m = _APPOSITIVE_RE.match(answer, i)
            if m is not None and not (m.group(1).lower() in ("and", "or") and m.group(2) is None):
                if math or m.group(1).lower() in _CONNECTIVES:
                    return answer[:i].rstrip()
        math = math or ch.isdigit() or ch in "\\^_=+-*/()[]{}<>"
    return answer


def _answer_from_prose(line: str) -> str | None:
    """The answer in the sentence that follows an answer phrase: the first sentence, without `$`/`\\(`/`\\[`,
    markdown emphasis, trailing dots or "I hope it is correct"; cut before an appositive or restatement (`42, which
    is ...` -> `42`); the result of a worked equation (`14 - 5 = 9 cookies` -> `9`, `3 \\times 4 = 12` apples ->
    `12`: the right-hand side of the last `=`); the number of a number-with-units (`9 cookies` -> `9`). A wordy
    sentence with no number or math in it ("the one that is correct") is not an answer: None, counted as no answer
    rather than as a wrong one."""
    line = _MATH_DELIMITER_RE.sub(" ", line.replace("\\$", "").replace("$", "")).strip()
    line = _strip_delimiters(_strip_unpaired_emphasis(line))
    end = _SENTENCE_END_RE.search(line)
    if end is not None:
        line = line[: end.start()]
    # Strip trailing dots, unpaired emphasis and "I hope it is correct." repeatedly (a loop, not a regex: linear).
    while True:
        stripped = _strip_unpaired_emphasis(line.rstrip(". \t"))
        if stripped[-len(_HOPE):].lower() == _HOPE:  # the tail only: lowering the whole line each pass is quadratic
            stripped = stripped[: -len(_HOPE)]
        if stripped == line:
            break
        line = stripped
    answer = _cut_appositive(_strip_delimiters(line.strip()))
    if "=" in answer:
        lhs, rhs = answer.rsplit("=", 1)
        lhs = _plain_arithmetic(lhs)
        if (
            any(ch.isdigit() for ch in rhs)
            and _ARITHMETIC_LHS_RE.fullmatch(lhs)
            and not _SINGLE_LETTER_RE.search(lhs)
            and _OPERATOR_RE.search(lhs)
        ):
            answer = rhs.strip()
    units = _NUMBER_WITH_UNITS_RE.fullmatch(_LATEX_SPACING_RE.sub(" ", _WRAPPER_RE.sub(r"\1", answer)).strip())
    if units is not None:
        answer = units.group(1)
    if not answer or is_placeholder(answer):
        return None
    if not any(ch.isdigit() or ch in "\\^/=+-()[]{}<>" for ch in answer) and len(answer.split()) > _PROSE_MAX_WORDS:
        return None
    return answer


def extract_final_phrase(text) -> str | None:
    """The answer stated after the last "final answer is" / "the answer is" / "Answer:" (see `_answer_from_prose`),
    Markdown-bold labels included. When the label stands alone on its line (`**Final Answer**`, `The final answer
    is:`), the answer is the first non-empty line after it (blank lines and lone `$$` / `\\[` skipped), and only
    when that line gives a number or math."""
    if not isinstance(text, str):
        return None
    matches = list(_FINAL.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    line, _, after = text[last.end() :].partition("\n")
    if not _EMPTY_LINE_RE.fullmatch(line):
        return _answer_from_prose(line)
    label = text[text.rfind("\n", 0, last.start()) + 1 : last.end()] + line
    if not _LABEL_LINE_RE.fullmatch(label):
        return None
    for following in after.split("\n", _LABEL_LOOKAHEAD_LINES)[:_LABEL_LOOKAHEAD_LINES]:
        if _EMPTY_LINE_RE.fullmatch(following):
            continue
        answer = _answer_from_prose(following)
        return answer if answer is not None and any(c.isdigit() or c == "\\" for c in answer) else None
    return None


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
