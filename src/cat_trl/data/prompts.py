"""Turn a question into TRL conversational `prompt` messages.

Every loader goes through `build_messages` so that the instruction and the optional system prompt are applied the
same way whatever the source: the policy and the CaT anchor see identical prompts for every dataset.
"""

from __future__ import annotations

from typing import Any

from cat_trl.messages import question_text

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

__all__ = ["DEFAULT_INSTRUCTION", "FEWSHOT_EXAMPLES", "add_fewshot", "build_messages", "question_text"]


def _with_suffix(content: Any, suffix: str) -> Any:
    """Append `suffix` to a message content (plain string or a list of typed parts)."""
    if isinstance(content, str):
        return content + suffix
    if isinstance(content, list):
        return [*content, {"type": "text", "text": suffix.lstrip("\n")}]
    raise ValueError(f"Unsupported message content type {type(content).__name__!r}; expected str or list of parts.")


def _check_messages(messages: list) -> list[dict]:
    if not messages:
        raise ValueError("The prompt is an empty list of messages.")
    cleaned = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"Message {i} of the prompt is not a {{'role', 'content'}} dict: {message!r}")
        # Arrow fills keys missing from some messages with None; drop those so the message stays as written.
        cleaned.append({k: v for k, v in message.items() if v is not None})
    if not any(m["role"] == "user" for m in cleaned):
        raise ValueError("The prompt messages contain no 'user' message.")
    return cleaned


def build_messages(
    question: str | list[dict],
    instruction: str = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
) -> list[dict]:
    """Return `[{"role": "system", ...}?, {"role": "user", "content": question + "\\n\\n" + instruction}]`.

    A `question` that is already a list of chat messages (multi-turn) is kept as is: the system prompt is prepended
    only when it has no system message, and a non-empty instruction is appended to the *last* user message only.
    The gold answer never goes through here: it is a separate column so no reward can read it from the prompt.
    """
    suffix = f"\n\n{instruction}" if instruction else ""
    if isinstance(question, str):
        if not question.strip():
            raise ValueError("The question is empty.")
        messages = [{"role": "user", "content": question + suffix}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages
    if not isinstance(question, (list, tuple)):
        raise ValueError(f"A question must be a string or a list of messages, got {type(question).__name__}.")
    messages = _check_messages(list(question))
    if not question_text(messages).strip():
        raise ValueError("The last user message of the prompt is empty.")
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    if suffix:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user] = {**messages[last_user], "content": _with_suffix(messages[last_user]["content"], suffix)}
    return messages


# Worked examples in the answer format the rewards parse. Small instruct models (e.g. the embedded 135M model) rarely
# emit `\boxed{}` from an instruction alone; one demonstration turn makes most of their answers gradable.
FEWSHOT_EXAMPLES = [
    ("Tom has 3 apples. He buys 4 more. How many apples does Tom have now?",
     "Tom starts with 3 apples and buys 4 more, so he has 3 + 4 = 7 apples.\nThe final answer is \\boxed{7}."),
    ("A shelf holds 5 rows of 6 books. How many books are on the shelf?",
     "There are 5 rows with 6 books each, so 5 * 6 = 30 books.\nThe final answer is \\boxed{30}."),
    ("Sara had 20 stickers and gave 8 to her brother. How many stickers does she have left?",
     "Sara gives away 8 of her 20 stickers, so 20 - 8 = 12 are left.\nThe final answer is \\boxed{12}."),
]


def add_fewshot(messages: list[dict], num_examples: int, instruction: str = DEFAULT_INSTRUCTION) -> list[dict]:
    """Insert `num_examples` built-in worked examples (user/assistant turns) after any system message."""
    if not 0 <= num_examples <= len(FEWSHOT_EXAMPLES):
        raise ValueError(f"prompt_fewshot must be between 0 and {len(FEWSHOT_EXAMPLES)}, got {num_examples}")
    suffix = f"\n\n{instruction}" if instruction else ""
    shots = []
    for question, solution in FEWSHOT_EXAMPLES[:num_examples]:
        shots += [{"role": "user", "content": question + suffix}, {"role": "assistant", "content": solution}]
    head = 1 if messages and messages[0]["role"] == "system" else 0
    return messages[:head] + shots + messages[head:]
