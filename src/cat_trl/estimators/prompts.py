"""Prompts the anchor sees. Written for cat-trl from the paper's description of its "CoT/Reasoning synthesis prompt"
(arXiv 2509.14234, App. F): aggregate the responses, reconcile differences, keep unique and contradictory insights,
`# SUMMARY` then `# UNIFIED RESPONSE` ending in a boxed final answer.

Templates use two placeholders, replaced literally (not with `str.format`, so LaTeX braces need no escaping):
`{responses}` (required) and `{question}` (only for the with-question ablation; the paper's anchor is
question-blind so that it reconciles the rollouts instead of answering the question afresh).
"""

from __future__ import annotations

RESPONSES = "{responses}"
QUESTION = "{question}"

MATH_SYNTHESIS_PROMPT = r"""Below are several independent responses to the same problem. Your job is to synthesize them into a single, cohesive, correct response.

{responses}

How to synthesize:
1. Identify the approaches, intermediate results and conclusions that the responses have in common.
2. Reconcile their differences: where they disagree, check the reasoning and decide which is right, and why.
3. Keep useful insights that appear in only one response, and address contradictory claims explicitly instead of silently dropping them.
4. Under the heading "# SUMMARY", briefly summarize what the responses agree on, where they differ and how you resolved each difference.
5. Under the heading "# UNIFIED RESPONSE", write one complete, self-contained solution with its reasoning. End it with exactly: "Therefore, the final answer is: $\boxed{answer}$. I hope it is correct." where answer is the final answer."""

QUESTION_BLOCK = "The problem was:\n{question}\n\n"

UNIFIED_HEADER = "# UNIFIED RESPONSE"


def validate_template(template: str, include_question: bool) -> None:
    """Fails fast (at config time) on a template that would silently drop the rollouts or leak the question."""
    if RESPONSES not in template:
        raise ValueError("cat_synthesis_prompt must contain the placeholder {responses} (where the rollouts go).")
    if QUESTION in template and not include_question:
        raise ValueError(
            "cat_synthesis_prompt contains {question} but cat_include_question is false: the anchor is "
            "question-blind by default. Remove {question} or set cat_include_question: true (ablation)."
        )


def format_responses(completions: list[str]) -> str:
    """Numbered, clearly delimited rollouts."""
    return "\n\n".join(f"## Response {i}\n{text.strip()}" for i, text in enumerate(completions, start=1))


def build_synthesis_prompt(
    template: str, completions: list[str], question: str | None = None, include_question: bool = False
) -> str:
    text = template
    if include_question:
        if question is None:
            raise ValueError("cat_include_question is true but the group has no question text")
        if QUESTION not in text:
            text = QUESTION_BLOCK + text
        text = text.replace(QUESTION, question.strip())
    return text.replace(RESPONSES, format_responses(completions))


def unified_section(output: str) -> str:
    """The part after the last `# UNIFIED RESPONSE` heading (the reference). Fallback when the anchor wrote no such
    heading: the whole output is the reference (its final answer is still extracted from it). The trainer counts
    these as `cat/reference_format_failure` so the fallback is visible, never silent."""
    head = output.rfind(UNIFIED_HEADER)
    return output if head < 0 else output[head + len(UNIFIED_HEADER) :].lstrip(" :\n")
