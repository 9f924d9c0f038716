"""Built-in, seeded arithmetic word problems so the quickstart needs no download.

Each problem is sampled as a small structured spec (a start value and a list of `(op, operand)` steps) and then
rendered into English from varied templates; the integer answer is computed from the spec, never parsed back from
text, so it is correct by construction. The answer is returned separately (the `gold_answer` column) and is used only
for diagnostic accuracy: CaT rewards are label-free.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset

from cat_trl.data.prompts import DEFAULT_INSTRUCTION, build_messages

__all__ = ["generate_problems", "load_synthetic_math"]

MAX_ANSWER = 999  # answers stay in [0, 999]

# (name, subject pronoun, object pronoun)
_PEOPLE = [
    ("Mia", "she", "her"), ("Leo", "he", "him"), ("Ava", "she", "her"), ("Noah", "he", "him"),
    ("Zoe", "she", "her"), ("Omar", "he", "him"), ("Lena", "she", "her"), ("Ravi", "he", "him"),
    ("Sofia", "she", "her"), ("Kenji", "he", "him"), ("Emma", "she", "her"), ("Lucas", "he", "him"),
]  # fmt: skip
_OBJECTS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells", "cards", "balloons"]
_CONTAINERS = ["boxes", "bags", "jars", "baskets", "packs"]
_ADD = ["{s} buys {k} more", "{s} finds {k} more", "{f} gives {o} {k} more", "{s} wins {k} more at a fair"]
_SUB = ["{s} gives {k} to {f}", "{s} loses {k} of them", "{s} sells {k} of them", "{s} trades away {k} of them"]
_MUL = [
    "{s} collects more until {s} has {k} times as many as before",
    "the number of {obj} {s} has becomes {k} times as large",
]
_THEN = ["Then", "After that,", "Later,", "Next,"]


@dataclass(frozen=True)
class _Spec:
    """Structured form of one problem: `value = start`, then `value = value <op> operand` for each step."""

    name: str
    pronoun: str
    obj_pronoun: str
    friend: str
    objects: str
    container: str
    start: int
    steps: tuple[tuple[str, int], ...]  # op in {"add", "sub", "mul"}

    def answer(self) -> int:
        value = self.start
        for op, k in self.steps:
            value = _apply(value, op, k)
        return value


def _apply(value: int, op: str, k: int) -> int:
    return value + k if op == "add" else value - k if op == "sub" else value * k


def _sample_spec(rng: random.Random, max_steps: int, min_steps: int = 1) -> _Spec:
    name, pronoun, obj_pronoun = rng.choice(_PEOPLE)
    friend = rng.choice([p[0] for p in _PEOPLE if p[0] != name])
    n_steps = rng.randint(min_steps, max_steps)  # min_steps 1 draws exactly as before it existed
    # A leading multiplication is rendered as "N boxes with K objects in each", so it gets its own ranges.
    if rng.random() < 0.25:
        start, steps = rng.randint(2, 9), [("mul", rng.randint(2, 9))]
    else:
        start, steps = rng.randint(2, 20), []
    value = start * (steps[0][1] if steps else 1)
    while len(steps) < n_steps:
        options = [
            *(["add"] if value < MAX_ANSWER else []),
            *(["sub"] if value > 1 else []),
            *(["mul"] if 0 < value <= MAX_ANSWER // 2 else []),
        ]
        op = rng.choice(options)
        if op == "add":
            k = rng.randint(1, min(15, MAX_ANSWER - value))
        elif op == "sub":
            k = rng.randint(1, value - 1) if rng.random() < 0.9 else value  # occasionally down to zero
        else:
            k = rng.randint(2, min(4, MAX_ANSWER // value))
        steps.append((op, k))
        value = _apply(value, op, k)
    return _Spec(name, pronoun, obj_pronoun, friend, rng.choice(_OBJECTS), rng.choice(_CONTAINERS), start, tuple(steps))


def _render(spec: _Spec, rng: random.Random) -> str:
    steps = list(spec.steps)
    if steps and steps[0][0] == "mul":
        first = f"{spec.name} has {spec.start} {spec.container} with {steps.pop(0)[1]} {spec.objects} in each."
    else:
        first = f"{spec.name} has {spec.start} {spec.objects}."
    sentences = [first]
    for i, (op, k) in enumerate(steps):
        template = rng.choice({"add": _ADD, "sub": _SUB, "mul": _MUL}[op])
        clause = template.format(s=spec.pronoun, o=spec.obj_pronoun, f=spec.friend, k=k, obj=spec.objects)
        if i == 0:  # the step right after the opening sentence needs no connector
            sentences.append(clause[0].upper() + clause[1:] + ".")
        else:
            sentences.append(f"{rng.choice(_THEN)} {clause}.")
    sentences.append(f"How many {spec.objects} does {spec.name} have now?")
    return " ".join(sentences)


def _check_args(num_problems: int, max_steps: int, min_steps: int = 1) -> None:
    if num_problems <= 0:
        raise ValueError(f"synthetic_num_problems must be positive, got {num_problems}.")
    if not 1 <= max_steps <= 3:
        raise ValueError(f"synthetic_max_steps must be in 1..3, got {max_steps}.")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"synthetic_min_steps must be in 1..synthetic_max_steps ({max_steps}), got {min_steps}.")


def _generate_specs(num_problems: int, seed: int = 0, max_steps: int = 2,
                    min_steps: int = 1) -> list[tuple[_Spec, str]]:
    """`(spec, question)` pairs; tests recompute answers from the specs."""
    _check_args(num_problems, max_steps, min_steps)
    rng = random.Random(f"cat-trl-synthetic-{seed}")  # string seeds are stable across Python versions
    out = []
    for _ in range(num_problems):
        spec = _sample_spec(rng, max_steps, min_steps)
        out.append((spec, _render(spec, rng)))
    return out


def generate_problems(num_problems: int, seed: int = 0, max_steps: int = 2, min_steps: int = 1) -> list[dict]:
    """`num_problems` dicts `{question, answer, problem_id}`; the same seed always gives the same problems.

    `answer` is the string of a non-negative integer below 1000; each problem has `min_steps`..`max_steps` (<= 3)
    steps (more steps than training ever had: an out-of-distribution held-out set).
    """
    return [
        {"question": question, "answer": str(spec.answer()), "problem_id": f"synthetic-{seed}-{i:05d}"}
        for i, (spec, question) in enumerate(_generate_specs(num_problems, seed, max_steps, min_steps))
    ]


def load_synthetic_math(
    num_problems: int = 256,
    seed: int = 0,
    max_steps: int = 2,
    instruction: str = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
    min_steps: int = 1,
) -> Dataset:
    """The built-in problems as a `Dataset` with columns `prompt`, `question`, `problem_id`, `gold_answer`."""
    problems = generate_problems(num_problems, seed, max_steps, min_steps)
    return Dataset.from_dict(
        {
            "prompt": [build_messages(p["question"], instruction, system_prompt) for p in problems],
            "question": [p["question"] for p in problems],
            "problem_id": [p["problem_id"] for p in problems],
            "gold_answer": [p["answer"] for p in problems],
        }
    )
