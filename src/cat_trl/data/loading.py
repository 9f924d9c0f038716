"""Which loader a `dataset_name` goes to (`resolve_format`), and the train / validation datasets of a run with
the prompt built, few-shot turns added and labels in `gold_answer` (see the package docstring)."""


from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from datasets import Dataset

from cat_trl.data.generic import (
    GOLD_COLUMN,
    load_generic,
    load_raw,
    looks_like_local_path,
    resolve_local,
    row_locations,
)
from cat_trl.data.healthbench import HEALTHBENCH_HUB_ID, load_healthbench
from cat_trl.data.math500 import MATH500_HUB_ID, load_math500
from cat_trl.data.prompts import (
    DEFAULT_INSTRUCTION,
    add_fewshot,
    build_messages,
    question_text,
)
from cat_trl.data.synthetic import generate_problems, load_synthetic_math

if TYPE_CHECKING:
    from cat_trl.config.script_args import CaTScriptArguments


DATASET_FORMATS = ("auto", "synthetic_math", "math500", "healthbench", "generic")
SYNTHETIC_NAME = "synthetic_math"
MATH500_NAMES = ("math500", MATH500_HUB_ID)
#: with `load_train_dataset(..., source_rows=True)`: where each row is in its source (`data.jsonl, line 7`), for
#: messages about a row after `dataset_max_samples` shuffled the rows
SOURCE_ROW_COLUMN = "source_row"


def _first_json_row(path: str) -> dict | None:
    """First record of a JSON Lines or JSON-array file, or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            is_array = f.read(4096).lstrip().startswith("[")
            f.seek(0)
            if is_array:
                rows = json.load(f)
                first = rows[0] if rows else None
            else:
                first = json.loads(next(line for line in f if line.strip()))
    except (OSError, ValueError, StopIteration):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return first if isinstance(first, dict) else None


def resolve_format(dataset_name: str | None, dataset_format: str = "auto") -> str:
    """The concrete format (`synthetic_math`, `math500` or `generic`) for a name and a possibly-`auto` format.

    Raises `ValueError` for an unknown format or a missing name, `FileNotFoundError` for a missing local path.
    """
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"Unknown dataset_format {dataset_format!r}; valid formats: {', '.join(DATASET_FORMATS)}.")
    if dataset_format == "synthetic_math" or (dataset_format == "auto" and dataset_name == SYNTHETIC_NAME):
        return "synthetic_math"
    if not dataset_name:
        raise ValueError(f"dataset_name is required for dataset_format={dataset_format!r}.")
    path = None if dataset_name in (*MATH500_NAMES, HEALTHBENCH_HUB_ID) else resolve_local(dataset_name)
    if dataset_format != "auto":
        return dataset_format
    if dataset_name in MATH500_NAMES:
        return "math500"
    if dataset_name == HEALTHBENCH_HUB_ID:
        return "healthbench"
    if path is not None and os.path.isfile(path) and path.lower().endswith((".jsonl", ".json")):
        row = _first_json_row(path)
        if row is not None and {"problem", "answer", "unique_id"} <= row.keys():
            return "math500"
        if row is not None and {"prompt", "rubrics", "prompt_id"} <= row.keys():
            return "healthbench"
    return "generic"


def load_validation_dataset(script_args: CaTScriptArguments) -> Dataset | None:
    """The validation set scored during training for early stopping (HealthBench with `healthbench_validation`), or
    None. Carved from the training questions, so it never overlaps the hold-out split or the training set."""
    if resolve_format(script_args.dataset_name, script_args.dataset_format) != "healthbench":
        if getattr(script_args, "healthbench_validation", 0):
            raise ValueError("healthbench_validation applies to HealthBench data only")
        return None
    if not script_args.healthbench_validation:
        return None
    import dataclasses

    return load_train_dataset(dataclasses.replace(script_args, dataset_train_split="validation"))


def load_train_dataset(script_args: CaTScriptArguments, source_rows: bool = False) -> Dataset:
    """Build the training prompts from `CaTScriptArguments`; cheap argument checks run before any loading.

    With `source_rows`, every row also has `SOURCE_ROW_COLUMN`: its place in the source, before any shuffling (the
    line of a JSON Lines file, the row of another source, the prompt_id of a HealthBench record), so a message about
    a row names one the user can find."""
    args = script_args
    if args.dataset_max_samples is not None and args.dataset_max_samples <= 0:
        raise ValueError(f"dataset_max_samples must be positive (or None for all rows), got {args.dataset_max_samples}")
    if getattr(args, "dataset_streaming", False):
        raise ValueError("dataset_streaming is not supported: CaT needs a map-style dataset.")
    fmt = resolve_format(args.dataset_name, args.dataset_format)
    common = {"instruction": args.prompt_instruction, "system_prompt": args.system_prompt}
    if fmt == "synthetic_math":
        dataset = load_synthetic_math(
            args.synthetic_num_problems, args.synthetic_seed, args.synthetic_max_steps, **common,
            min_steps=args.synthetic_min_steps,
        )
    elif fmt == "math500":
        source = MATH500_HUB_ID if args.dataset_name == "math500" else args.dataset_name
        # The hub MATH-500 only has a `test` split; map the ScriptArguments default `train` onto it.
        split = "test" if args.dataset_train_split == "train" else args.dataset_train_split
        dataset = load_math500(source, split=split, **common)
    elif fmt == "healthbench":
        if args.prompt_instruction not in ("", DEFAULT_INSTRUCTION):
            raise ValueError("prompt_instruction is not applied to HealthBench conversations; leave it unset.")
        source = args.dataset_name if args.dataset_name != HEALTHBENCH_HUB_ID else HEALTHBENCH_HUB_ID
        path = resolve_local(source) if source != HEALTHBENCH_HUB_ID else None
        dataset = load_healthbench(
            path or source,
            split={"eval": "eval", "test": "eval", "validation": "validation"}.get(args.dataset_train_split, "train"),
            holdout=args.healthbench_holdout,
            seed=args.healthbench_seed,
            subset=args.healthbench_subset,
            system_prompt=args.system_prompt,
            validation=args.healthbench_validation,
            validation_seed=args.healthbench_validation_seed,
        )
    else:
        dataset = load_generic(
            args.dataset_name,
            args.dataset_config,
            args.dataset_train_split,
            args.dataset_prompt_column,
            args.dataset_gold_column,
            **common,
        )
    if source_rows:
        if fmt == "synthetic_math":
            where = [f"synthetic_math problem {pid}" for pid in dataset["problem_id"]]
        elif fmt == "healthbench":
            where = [f"{args.dataset_name}, prompt_id {pid}" for pid in dataset["problem_id"]]
        else:
            where = row_locations(source if fmt == "math500" else args.dataset_name, len(dataset))
        dataset = dataset.add_column(SOURCE_ROW_COLUMN, where)
    if args.prompt_fewshot:
        add_fewshot([], args.prompt_fewshot)  # validates the count before touching the data
        dataset = dataset.map(
            lambda row: {"prompt": add_fewshot(row["prompt"], args.prompt_fewshot, args.prompt_instruction)}
        )
    if args.dataset_max_samples is not None:
        dataset = dataset.shuffle(seed=args.dataset_shuffle_seed)
        dataset = dataset.select(range(min(args.dataset_max_samples, len(dataset))))
    return dataset
