"""Prompts of the open-ended regime, written for cat-trl from the paper's descriptions (arXiv 2509.14234; the
verbatim prompts were not published in a recoverable form):

* freeform synthesis -- the anchor *combines* the G responses (question-blind) into one comprehensive response,
  under `# UNIFIED RESPONSE`, not much longer than the originals;
* rubric proposal -- the anchor turns that reference into >= 5 specific, binary, checkable criteria, each an
  important property of the reference, as XML (`<rubric><criterion>...</criterion></rubric>`);
* judging -- an independent judge answers yes/no for one (response, criterion) pair. The conversation and response
  come *first* and the criterion last, so all n criteria of one response share a prompt prefix (prefix caching in
  vLLM / server engines);
* model-as-judge baseline -- is the response semantically equivalent to the reference? (binary).

Placeholders are replaced literally: `{responses}`, `{reference}`, `{conversation}`, `{response}`, `{criterion}`,
`{min_criteria}`, `{max_criteria}`.
"""

from __future__ import annotations

from ..messages import content_text

FREEFORM_SYNTHESIS_PROMPT = """Below are several independent responses to the same conversation. Combine them into one comprehensive, unified response.

{responses}

How to combine them:
1. Keep the points the responses agree on.
2. Where they differ or contradict each other, decide what is most accurate and helpful, and say so when it matters.
3. Include useful information that appears in only one response.
4. Do not make the unified response much longer than the original responses.

Write the unified response under the heading "# UNIFIED RESPONSE", addressed to the user as if it were the only response."""

RUBRIC_PROMPT = """Below is a reference response. Write a rubric for judging other responses against it: between {min_criteria} and {max_criteria} criteria, each one a specific, self-contained, binary (yes/no) statement that a grader can check, and each describing an important property of the reference response (what it says, recommends, avoids, or how it says it).

# Reference response
{reference}

Output only the rubric in this XML format:
<rubric>
<criterion>First criterion.</criterion>
<criterion>Second criterion.</criterion>
</rubric>"""

RUBRIC_CONVERSATION_BLOCK = """# Conversation the reference responds to
{conversation}

"""

JUDGE_PROMPT = """You are grading the last response in a conversation against one criterion.

# Conversation
{conversation}

# Response
{response}

# Criterion
{criterion}

Does the response satisfy the criterion? Answer with one word: yes or no."""

EQUIVALENCE_PROMPT = """You are comparing a response with a reference response to the same conversation.

# Conversation
{conversation}

# Response
{response}

# Reference response
{criterion}

Is the response semantically equivalent to the reference response (same substance, recommendations and conclusions, wording aside)? Answer with one word: yes or no."""


def render_conversation(conversation) -> str:
    """`role: content` turns separated by blank lines (HealthBench's grader renders conversations the same way)."""
    if conversation is None:
        return ""
    if isinstance(conversation, str):
        return conversation
    parts = []
    for message in conversation:
        parts.append(f"{message.get('role', 'user')}: {content_text(message.get('content'))}")
    return "\n\n".join(parts)


def fill(template: str, **values: str) -> str:
    """Literal placeholder replacement (responses may contain braces; `str.format` would choke on them)."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", str(value))
    return template


def validate_placeholders(template: str, required: tuple[str, ...], name: str) -> None:
    missing = [p for p in required if "{" + p + "}" not in template]
    if missing:
        raise ValueError(f"{name} must contain the placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
