"""String normalisation of final answers: the key of the paper's `string` match mode (see `normalize_answer`)."""

from __future__ import annotations

import functools
import logging
import re

logger = logging.getLogger("cat_trl.answers")

_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
# `\\` (a row break) is consumed as a unit and kept, so its second backslash is never read as the start of `\ `.
_SPACING_RE = re.compile(r"\\\\|\\[!,;:]|\\ |\\(?:displaystyle|q?quad)(?![A-Za-z])")
_NEG_SPACE_RE = re.compile(r"(?<!\\)\\!")  # `\!` (negative thin space, `10,\!080`) separates nothing: dropped
#: a run of digits grouped by thin spaces (`10\,000`, `3.141\,592`): joined when the grouping is well formed
_THIN_GROUPS_RE = re.compile(r"(?<![\d.])(\d*\.\d+|\d+)((?:\\,\d{3})+)(?!\d)")
_FRAC_VARIANT_RE = re.compile(r"\\[dt]frac(?![A-Za-z])")
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|°")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_WHITESPACE_RE = re.compile(r"\s+")
_ASSIGN_RE = re.compile(r"^[A-Za-z]=(?!=)")
_LEADING_DOT_RE = re.compile(r"(?<![0-9A-Za-z}\)\]])\.(?=\d)")
_FRAC_ARG = r"(\{[^{}]*\}|[0-9A-Za-z])"
_FRAC_RE = re.compile(r"\\frac" + _FRAC_ARG + _FRAC_ARG)
_SQRT_RE = re.compile(r"\\sqrt([0-9A-Za-z])")
_LATEX_THOUSANDS_RE = re.compile(r"(?<=\d)\{,\}(?=\d)")
#: a well-formed thousands-separated number: a first group of 1-3 digits that does not start with 0, then groups of
#: exactly 3 (`1,000`, `-12,345,678.5`). `0,500`, `01,000`, `1,00`, `1,0000` are not: a comma after a leading zero
#: is a decimal comma or a list, never a separator, and those are left to math-verify.
_THOUSANDS_RE = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
_FIRST_GROUP_RE = re.compile(r"[1-9]\d{0,2}")


def _braced(arg: str) -> str:
    return arg if arg.startswith("{") else "{" + arg + "}"


def _unwrap_text(s: str) -> str:
    """`\\text{...}` (and `\\textbf`, `\\mathrm`, ...) replaced by its content, nested ones too, in one pass with a
    stack of open braces: linear in the input, whatever the nesting depth. Unbalanced braces are kept as they are."""
    out: list[str] = []
    stack: list[bool] = []  # per open brace: True when it opened a text wrapper (its `}` is dropped)
    pos = 0
    while pos < len(s):
        wrapper = _TEXT_CMD_RE.match(s, pos) if s.startswith("\\", pos) else None
        if wrapper is not None:
            stack.append(True)
            pos = wrapper.end()
            continue
        token = _BRACE_TOKEN_RE.match(s, pos)
        if token is None:
            out.append(s[pos])
            pos += 1
            continue
        text = token.group()
        if text == "{":
            stack.append(False)
        elif text == "}" and stack:
            if stack.pop():
                pos += 1
                continue
        out.append(text)
        pos = token.end()
    return "".join(out)


def _strip_outer_braces(s: str) -> str:
    """`{{x}}` -> `x`, `{1}{2}` unchanged: one pass matching braces, then peel matched outer pairs (linear)."""
    if not (s.startswith("{") and s.endswith("}")):
        return s
    match: dict[int, int] = {}
    opened: list[int] = []
    for token in _BRACE_TOKEN_RE.finditer(s):
        if token.group() == "{":
            opened.append(token.start())
        elif token.group() == "}" and opened:
            match[opened.pop()] = token.start()
    i, j = 0, len(s) - 1
    while i < j and s[i] == "{" and match.get(i) == j:
        i, j = i + 1, j - 1
    return s[i : j + 1]


@functools.lru_cache(maxsize=65536)
def _normalize(s: str) -> str:
    s = s.strip()
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _THIN_GROUPS_RE.sub(_join_thin_groups, s)
    s = _NEG_SPACE_RE.sub("", s)
    # Spacing commands become a space (not nothing): `3 \quad 4` must not turn into `34`.
    s = _SPACING_RE.sub(lambda m: m.group() if m.group() == "\\\\" else " ", s)
    s = _FRAC_VARIANT_RE.sub(r"\\frac", s)
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _unwrap_text(s)
    # A comma followed by a space separates items (`1, 234` is a pair), so only unspaced groups are thousands.
    spaced_comma = bool(re.search(r",\s", s))
    # whitespace goes, except one space keeping two numbers side by side apart
    s = _WHITESPACE_RE.sub(lambda m: " " if _between_digits(m, s) else "", s)
    s = s.rstrip(".")
    if _ASSIGN_RE.match(s) and s.count("=") == 1:
        s = s[2:]
    s = _strip_outer_braces(s)
    s = _LEADING_DOT_RE.sub("0.", s)
    s = _FRAC_RE.sub(lambda m: "\\frac" + _braced(m.group(1)) + _braced(m.group(2)), s)
    s = _SQRT_RE.sub(r"\\sqrt{\1}", s)
    s = _LATEX_THOUSANDS_RE.sub(",", s)
    if not spaced_comma and _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s


def _join_thin_groups(m: re.Match) -> str:
    """`10\\,000` -> `10000` and the decimals `3.141\\,592` -> `3.141592`; `0\\,500` (a first group with a
    leading zero, or longer than 3 digits) is left alone: it is not a thousands-grouped number."""
    if "." in m.group(1) or _FIRST_GROUP_RE.fullmatch(m.group(1)):
        return m.group(1) + m.group(2).replace("\\,", "")
    return m.group()


def _between_digits(m: re.Match, s: str) -> bool:
    return 0 < m.start() and m.end() < len(s) and s[m.start() - 1].isdigit() and s[m.end()].isdigit()


def normalize_answer(answer: str) -> str:
    """Conservative Hendrycks-MATH-style (`strip_string`) normalisation: the paper's `string` match mode.

    Exactly what it does, in order (this is more than the paper's plain string match, and docs/answer-matching.md
    lists it too):
    drops `\\left`/`\\right`; removes `\\,` used as a thousands separator in well-formed groups (`10\\,000`);
    turns spacing commands (`\\,` `\\;` `\\:` `\\ ` `\\quad` `\\qquad` `\\displaystyle`) into a space and drops
    `\\!`; `\\dfrac`/`\\tfrac` -> `\\frac`; drops degree marks, `$`, `\\$`, `%`, `\\%`; unwraps `\\text{}`-like
    wrappers; removes whitespace except one space between two digits (`3 \\quad 4` stays two numbers); drops trailing
    dots, a leading single-letter `x =`, and matched outer braces; `.5` -> `0.5`; `\\frac12` -> `\\frac{1}{2}`;
    `\\sqrt2` -> `\\sqrt{2}`; `1{,}000` / `1,000` -> `1000` only when no comma in the answer is followed by a space
    (`1, 234` is a pair) and the groups are well formed: a first group of 1-3 digits not starting with 0, then groups
    of exactly 3 (`0,500`, `01,000`, `1,00` stay as they are: a comma after a leading zero is a European decimal
    comma or a list, never a separator, and math-verify reads it). It never rewrites values (`0.5` stays `0.5`, `1/2`
    stays `1/2`) and keeps `\\\\` row breaks: value-level equivalence is the job of the `equivalent` mode. Linear
    time on any input (no nested rescans), deterministic, cached, and never raises (non-strings give "", an internal
    error gives the stripped input).
    """
    if not isinstance(answer, str):
        return ""
    try:
        return _normalize(answer)
    except Exception:  # pragma: no cover - defensive: the reward path must not raise
        logger.debug("normalize_answer failed on %r", answer, exc_info=True)
        return answer.strip()
