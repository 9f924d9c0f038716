"""MATH-500 (HuggingFaceH4/MATH-500) from the hub or a local JSON/JSONL copy of it.

The gold is the short final `answer`, not the worked `solution`: it feeds diagnostic accuracy only (CaT rewards never
see it), and the solution would leak the full derivation if it ever reached a prompt.
"""

from __future__ import annotations

from datasets import Dataset

from cat_trl.data.generic import load_raw, resolve_local, to_contract
from cat_trl.data.prompts import DEFAULT_INSTRUCTION

__all__ = ["MATH500_HUB_ID", "load_math500"]

MATH500_HUB_ID = "HuggingFaceH4/MATH-500"
REQUIRED_COLUMNS = ("problem", "answer")


def load_math500(
    source: str = MATH500_HUB_ID,
    split: str = "test",
    instruction: str = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
) -> Dataset:
    """Rows `problem`/`answer`/`unique_id` -> `prompt`, `question`, `problem_id` (= `unique_id`), `gold_answer`.

    `source` is a hub id (loaded with `split`; the hub dataset only has `test`) or a local file with the same schema.
    `subject`, `level` and `solution` are dropped.
    """
    dataset = load_raw(source, split=split if resolve_local(source) is None else "train")
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source!r} is not in MATH-500 format: missing column(s) {missing}; "
            f"found {dataset.column_names} (expected problem, answer, unique_id)."
        )
    ids = [str(v) for v in dataset["unique_id"]] if "unique_id" in dataset.column_names else None
    return to_contract(dataset, "problem", "answer", instruction, system_prompt, source, problem_ids=ids)
