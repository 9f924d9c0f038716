"""HealthBench (openai/simple-evals; hub dataset `openai/healthbench`) in its official JSONL schema.

Each record: `prompt` (a multi-turn list of chat messages -- kept as messages, never flattened), `rubrics` (physician
items `{criterion, points, tags}`, points may be negative), `example_tags`, `prompt_id`, optionally
`ideal_completions_data`. Following the paper, a seeded hold-out of 500 examples is kept for evaluation with the
physician rubrics; the rest is for label-free training and validation.

Training rows carry `prompt`, `question` (last user turn), `problem_id` (= `prompt_id`), `example_tags` and the
physician rubric as JSON in `gold_rubrics`: the trainer hides that column from every reward unless the oracle baseline
(`cat_reward: physician_rubric`) is chosen explicitly.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from datasets import Dataset

from cat_trl.data.prompts import question_text
from cat_trl.data.labels import GOLD_RUBRICS_COLUMN

__all__ = ["HEALTHBENCH_FILES", "HEALTHBENCH_HUB_ID", "load_healthbench", "read_healthbench", "split_healthbench"]

HEALTHBENCH_HUB_ID = "openai/healthbench"
#: files of the hub dataset / simple-evals blob store, by subset
HEALTHBENCH_FILES = {
    "all": "2025-05-07-06-14-12_oss_eval.jsonl",
    "hard": "hard_2025-05-08-21-00-10.jsonl",
    "consensus": "consensus_2025-05-09-20-00-46.jsonl",
}
_ROLES = {"system", "developer", "user", "assistant"}


def _check(record: Any, where: str) -> None:
    """Schema errors name the record and the field, before any model is loaded."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object")
    prompt = record.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: `prompt` must be a non-empty list of chat messages")
    for m, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in _ROLES or not isinstance(
            message.get("content"), str
        ):
            raise ValueError(f"{where}: prompt[{m}] must be {{'role': system|user|assistant, 'content': str}}")
    if prompt[-1]["role"] != "user":
        raise ValueError(f"{where}: the conversation must end with a user turn (the response is what is graded)")
    rubrics = record.get("rubrics")
    if not isinstance(rubrics, list) or not rubrics:
        raise ValueError(f"{where}: `rubrics` must be a non-empty list")
    for r, item in enumerate(rubrics):
        if not isinstance(item, dict) or not isinstance(item.get("criterion"), str):
            raise ValueError(f"{where}: rubrics[{r}] needs a string `criterion`")
        points = item.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)):
            raise ValueError(f"{where}: rubrics[{r}].points must be a number, got {points!r}")
        if not isinstance(item.get("tags", []), list):
            raise ValueError(f"{where}: rubrics[{r}].tags must be a list")
    if not any(item["points"] > 0 for item in rubrics):
        raise ValueError(f"{where}: no rubric item has positive points, so the example cannot be scored")
    if not isinstance(record.get("example_tags", []), list):
        raise ValueError(f"{where}: `example_tags` must be a list")
    if not record.get("prompt_id"):
        raise ValueError(f"{where}: `prompt_id` is missing")


def read_healthbench(source: str = HEALTHBENCH_HUB_ID, subset: str = "all") -> list[dict[str, Any]]:
    """Records from a local JSONL file, or from the hub dataset (`subset` picks the file). Every record is checked."""
    if os.path.exists(source):
        path = source
    elif source == HEALTHBENCH_HUB_ID:
        if subset not in HEALTHBENCH_FILES:
            raise ValueError(f"HealthBench subset {subset!r} is not one of {sorted(HEALTHBENCH_FILES)}")
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(HEALTHBENCH_HUB_ID, HEALTHBENCH_FILES[subset], repo_type="dataset")
        except Exception as err:  # offline, gated, renamed
            raise FileNotFoundError(
                f"Could not fetch {HEALTHBENCH_FILES[subset]} from the hub dataset {HEALTHBENCH_HUB_ID} ({err}). "
                "Download it once and pass the local path as dataset_name."
            ) from err
    else:
        raise FileNotFoundError(f"HealthBench source {source!r} is neither a local file nor {HEALTHBENCH_HUB_ID!r}")
    from .generic import (
        read_jsonl,  # names file and line on non-UTF-8 or truncated lines
    )

    records = []
    for n, record in read_jsonl(path):
        _check(record, f"{path}:{n}")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no HealthBench records")
    ids = [r["prompt_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate prompt_id values")
    return records


def split_healthbench(records: list[dict[str, Any]], holdout: int = 500, seed: int = 0):
    """(train, eval): a seeded shuffle, the first `holdout` records for evaluation. Deterministic in (ids, seed)."""
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    if holdout >= len(records):
        raise ValueError(f"holdout={holdout} leaves no training examples out of {len(records)}")
    order = sorted(range(len(records)), key=lambda i: records[i]["prompt_id"])  # independent of file order
    random.Random(seed).shuffle(order)
    held = set(order[:holdout])
    train = [r for i, r in enumerate(records) if i not in held]
    evaluation = [records[i] for i in order[:holdout]]
    return train, evaluation


def load_healthbench(
    source: str = HEALTHBENCH_HUB_ID,
    split: str = "train",
    holdout: int = 500,
    seed: int = 0,
    subset: str = "all",
    system_prompt: str | None = None,
    validation: int = 0,
    validation_seed: int = 0,
) -> Dataset:
    """The `train` (label-free), `validation` or `eval` (hold-out) split as a training-contract `Dataset`.

    `validation` questions are carved (seeded by `validation_seed`) from the non-held-out questions for early
    stopping, as the paper does; `train` then excludes them. The hold-out split is unaffected."""
    if split not in ("train", "validation", "eval"):
        raise ValueError(f"HealthBench split must be 'train', 'validation' or 'eval', got {split!r}")
    if validation < 0:
        raise ValueError(f"healthbench_validation must be >= 0, got {validation}")
    if split == "validation" and validation == 0:
        raise ValueError("the HealthBench validation split is empty: set healthbench_validation > 0")
    train, evaluation = split_healthbench(read_healthbench(source, subset), holdout, seed)
    if validation:
        train, carved = split_healthbench(train, validation, validation_seed)
    rows = {"train": train, "eval": evaluation}.get(split) if split != "validation" else carved
    out = []
    for record in rows:
        prompt = [dict(m) for m in record["prompt"]]
        if system_prompt and prompt[0]["role"] != "system":
            prompt.insert(0, {"role": "system", "content": system_prompt})
        out.append({
            "prompt": prompt,
            "question": question_text(record["prompt"]),
            "problem_id": str(record["prompt_id"]),
            "example_tags": list(record.get("example_tags") or []),
            GOLD_RUBRICS_COLUMN: json.dumps(record["rubrics"]),
        })
    return Dataset.from_list(out)
