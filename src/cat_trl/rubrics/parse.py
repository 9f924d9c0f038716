"""Parsing the anchor's rubric robustly: the paper parses XML with a standard parser; small anchors wrap it in stray
prose, forget the root element, leave the last tag open or repeat themselves. Anything that still yields too few
criteria is a *failed* rubric (the group's rewards become None and the failure is counted), never a crash."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

_CRITERION = re.compile(r"<criterion\b[^>]*>(.*?)(?:</criterion>|(?=<criterion\b)|(?=</rubric>)|\Z)", re.DOTALL | re.IGNORECASE)
_TAGS = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>")  # real tags only: "dose < 5 mg and > 1" survives
_LIST_MARK = re.compile(r"(?:[-*\u2022]|\d+[.)])\s")
_MAX_CRITERION_CHARS = 500


@dataclass
class ParsedRubric:
    criteria: list[str]
    error: str | None = None  # None when the rubric is usable
    dropped_duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip("\"'").strip()


def _clean(text: str) -> str:
    """Raw markup (regex path): drop nested tags, then decode entities."""
    return _squash(html.unescape(_TAGS.sub(" ", text)))


def _key(text: str) -> str:
    """Duplicate key: case- and punctuation-insensitive, any script (HealthBench is multilingual)."""
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def _rubric_block(text: str) -> str | None:
    """The first `<rubric ...>...</rubric>` span, found with plain searches (what `re.search(r"<rubric\\b[^>]*>.*?
    </rubric>", re.I | re.S)` finds, but linear: the regex rescans to the end from every unclosed `<rubric>`)."""
    lower = text.lower()
    pos = 0
    while True:
        start = lower.find("<rubric", pos)
        if start < 0:
            return None
        after = start + len("<rubric")
        if after < len(text) and (text[after].isalnum() or text[after] == "_"):
            pos = after  # `<rubrics>` is another tag
            continue
        close = text.find(">", after)
        end = lower.find("</rubric>", close + 1) if close >= 0 else -1
        return None if end < 0 else text[start : end + len("</rubric>")]


def _list_items(text: str) -> list[str]:
    """Bulleted or numbered lines (`- x`, `* x`, `• x`, `1. x`, `2) x`), one pass over the lines."""
    items = []
    for line in text.splitlines():
        line = line.strip()
        mark = _LIST_MARK.match(line)
        if mark and line[mark.end():].strip():
            items.append(line[mark.end():].strip())
    return items


def _xml_criteria(text: str) -> list[str] | None:
    block = _rubric_block(text)
    if block:
        try:
            root = ET.fromstring(block)
            found = [_squash("".join(el.itertext())) for el in root.iter() if el.tag.lower() == "criterion"]
            if found:
                return found  # already decoded text: entities like &lt;b&gt; are content, not markup
        except (ET.ParseError, ValueError, UnicodeError):
            pass  # e.g. a bare "&" inside a criterion: fall back to the tolerant scan
    found = [_clean(m.group(1)) for m in _CRITERION.finditer(text)]
    return found or None


def parse_rubric(text: str | None, min_criteria: int = 5, max_criteria: int = 12, allow_list: bool = False) -> ParsedRubric:
    """Criteria from the anchor's output: XML first (`<criterion>` elements, inside `<rubric>` or not), then -- only
    with `allow_list` -- a bulleted or numbered list. Cleans, de-duplicates (case/punctuation-insensitive) and keeps
    at most `max_criteria`; fewer than `min_criteria` is an error."""
    if not isinstance(text, str) or not text.strip():
        return ParsedRubric([], error="empty output")
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates from a byte-level decoder: no crash later
    raw = _xml_criteria(text)
    source = "xml"
    if raw is None and allow_list:
        raw, source = [_clean(item) for item in _list_items(text)], "list"
    if not raw:
        return ParsedRubric([], error="no <criterion> elements" + (" or list items" if allow_list else ""))
    criteria, seen, dupes = [], set(), 0
    for item in raw:
        clean = item[:_MAX_CRITERION_CHARS]
        key = _key(clean)
        if not key:
            continue
        if key in seen:
            dupes += 1
            continue
        seen.add(key)
        criteria.append(clean)
    notes = [f"parsed from {source}"]
    if len(criteria) > max_criteria:
        notes.append(f"kept the first {max_criteria} of {len(criteria)} criteria")
        criteria = criteria[:max_criteria]
    if len(criteria) < min_criteria:
        return ParsedRubric(criteria, error=f"{len(criteria)} distinct criteria, fewer than {min_criteria}",
                            dropped_duplicates=dupes, notes=notes)
    return ParsedRubric(criteria, dropped_duplicates=dupes, notes=notes)
