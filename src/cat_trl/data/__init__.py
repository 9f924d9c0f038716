"""Training prompts for CaT: every loader returns a `Dataset` with exactly `prompt`, `question`, `problem_id` and,
when the source has one, `gold_answer`.

`gold_answer` (`GOLD_COLUMN`) is kept out of the prompt and is only for diagnostic metrics: CaT rewards are
label-free, and the trainer strips the column before any reward function runs.

`load_train_dataset` is called by the entry point before any model is loaded, so that a bad dataset name, path,
format or column fails in seconds, not after a multi-GB download.
"""

from .loading import (
    DATASET_FORMATS,
    GOLD_COLUMN,
    SOURCE_ROW_COLUMN,
    build_messages,
    generate_problems,
    load_generic,
    load_healthbench,
    load_math500,
    load_raw,
    load_synthetic_math,
    load_train_dataset,
    load_validation_dataset,
    looks_like_local_path,
    question_text,
    resolve_format,
)

__all__ = [
    "DATASET_FORMATS",
    "GOLD_COLUMN",
    "SOURCE_ROW_COLUMN",
    "build_messages",
    "generate_problems",
    "load_generic",
    "load_healthbench",
    "load_math500",
    "load_raw",
    "load_synthetic_math",
    "load_train_dataset",
    "load_validation_dataset",
    "looks_like_local_path",
    "question_text",
    "resolve_format",
]
