"""Load any Hugging Face dataset id, local file or `save_to_disk` directory into the prompt contract.

The gold column is optional and kept apart from the prompt (`gold_answer`): CaT trains without labels, so gold is
only ever read by diagnostic metrics, never by a reward.
"""

from __future__ import annotations

import os
import re
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from cat_trl.data.prompts import DEFAULT_INSTRUCTION, build_messages, question_text
from cat_trl.data.labels import GOLD_COLUMN  # diagnostic-only column; the trainer strips it before computing rewards

__all__ = ["GOLD_COLUMN", "load_generic", "load_raw", "looks_like_local_path", "read_jsonl", "resolve_local",
           "row_locations", "to_contract"]

ID_COLUMNS = ("id", "problem_id", "unique_id")
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_local_path(name: str) -> bool:
    """True when `name` cannot be a hub id (`name` or `org/name`) and so must be an existing local path."""
    if os.path.splitext(name)[1].lower() in BUILDERS:
        return True
    return name.startswith((".", "/", "~")) or not _HUB_ID.match(name.replace(os.sep, "/"))


def resolve_local(name: str) -> str | None:
    """The local path `name` points to, `None` for a hub id; `FileNotFoundError` for a missing local path."""
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return path
    if looks_like_local_path(name):
        raise FileNotFoundError(f"Dataset path {name!r} does not exist (and is not a Hugging Face Hub dataset id).")
    return None


def read_jsonl(path: str) -> list[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a JSONL file. A line that is not UTF-8 or not JSON (a
    truncated last line, say) raises `ValueError` naming the file and the line, instead of a generation error from
    the dataset builder naming neither."""
    import json

    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid UTF-8 (byte {err.start} of the line: "
                                 f"{raw[err.start:err.start + 4]!r}); save the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno}); a "
                                 "truncated or hand-edited line?") from None
    return rows


def _jsonl_file(name_or_path: str) -> str | None:
    """The local path when `name_or_path` is a JSON Lines file, else None."""
    path = os.path.expanduser(name_or_path)
    return path if path.lower().endswith(".jsonl") and os.path.isfile(path) else None


def _jsonl_lines(path: str) -> list[int]:
    """1-based line numbers of the rows of a JSON Lines file: its non-blank lines (the JSON builder skips the
    blank ones)."""
    with open(path, "rb") as f:
        return [number for number, raw in enumerate(f, start=1) if raw.strip()]


def row_locations(name_or_path: str, count: int) -> list[str]:
    """Where each of the `count` rows `load_raw(name_or_path)` returns is in its source, for messages about a row
    after the rows were shuffled or sampled: `data.jsonl, line 7` for a local JSON Lines file (the file's own line),
    else `NAME, row 12 (0-based, source order)`."""
    path = _jsonl_file(name_or_path)
    if path is not None:
        lines = _jsonl_lines(path)
        if len(lines) == count:
            return [f"{name_or_path}, line {n}" for n in lines]
    return [f"{name_or_path}, row {i} (0-based, source order)" for i in range(count)]


def _line_note(source: str, row: int) -> str:
    """` (line 7)` for row `row` of a local JSON Lines file, else nothing."""
    path = _jsonl_file(source)
    if path is None:
        return ""
    lines = _jsonl_lines(path)
    return f" (line {lines[row]})" if row < len(lines) else ""


def _check_text_file(path: str, ext: str) -> None:
    """Fail early, naming file and line/row, on what the `datasets` builders report without either."""
    if ext == ".jsonl":
        for number, value in read_jsonl(path):
            if not isinstance(value, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object per line, got "
                                 f"{type(value).__name__}.")
    elif ext == ".csv":
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise ValueError(f"{path}, line {number}: not valid UTF-8 (byte {err.start} of the line); save "
                                     "the file as UTF-8.") from None


def load_raw(name_or_path: str, config: str | None = None, split: str = "train") -> Dataset:
    """Load the raw rows: a local file (builder chosen by extension), a `save_to_disk` directory, or a hub id.

    A single local file has one split, so `split` is ignored for it.
    """
    path = resolve_local(name_or_path)
    if path is None:
        return load_dataset(name_or_path, config, split=split)
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            data = load_from_disk(path)
            if isinstance(data, DatasetDict):
                if split not in data:
                    raise ValueError(f"Split {split!r} not found in {path!r}; available: {sorted(data)}.")
                data = data[split]
            return data
        return load_dataset(path, config, split=split)
    ext = os.path.splitext(path)[1].lower()
    if ext not in BUILDERS:
        raise ValueError(f"Unsupported dataset file {path!r}: expected one of {sorted(BUILDERS)} or a directory.")
    _check_text_file(path, ext)
    try:
        return load_dataset(BUILDERS[ext], data_files=path, split="train")
    except Exception as err:  # DatasetGenerationError & co. name neither file nor row
        if isinstance(err, (ValueError, FileNotFoundError)) and str(path) in str(err):
            raise
        raise ValueError(f"{path}: could not be read as {BUILDERS[ext]} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err


def _problem_ids(dataset: Dataset) -> list[str]:
    for column in ID_COLUMNS:
        if column in dataset.column_names:
            return [str(v) for v in dataset[column]]
    return [str(i) for i in range(len(dataset))]


def to_contract(
    dataset: Dataset,
    prompt_column: str,
    gold_column: str | None,
    instruction: str,
    system_prompt: str | None,
    source: str,
    problem_ids: list[str] | None = None,
) -> Dataset:
    """Build the `prompt`/`question`/`problem_id`(/`gold_answer`) dataset; every other column is dropped."""
    for column in (prompt_column, gold_column):
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"Column {column!r} not found in dataset {source!r}; available columns: {dataset.column_names}."
            )
    prompts, questions = [], []
    for i, raw in enumerate(dataset[prompt_column]):
        if raw is None or (isinstance(raw, str) and not raw.strip()) or (isinstance(raw, list) and not raw):
            raise ValueError(f"Row {i} of dataset {source!r}{_line_note(source, i)} has an empty {prompt_column!r}.")
        try:
            prompts.append(build_messages(raw, instruction, system_prompt))
        except ValueError as err:
            raise ValueError(f"Row {i} of dataset {source!r}{_line_note(source, i)}, column {prompt_column!r}: "
                             f"{err}") from err
        questions.append(question_text(raw))
    columns: dict[str, Any] = {
        "prompt": prompts,
        "question": questions,
        "problem_id": problem_ids if problem_ids is not None else _problem_ids(dataset),
    }
    if gold_column is not None:
        # None stays None (unknown gold) rather than becoming the string "None".
        columns[GOLD_COLUMN] = [None if g is None else str(g) for g in dataset[gold_column]]
    return Dataset.from_dict(columns)


def load_generic(
    name_or_path: str,
    config: str | None = None,
    split: str = "train",
    prompt_column: str = "prompt",
    gold_column: str | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
) -> Dataset:
    """Any dataset whose `prompt_column` holds a question string or a list of chat messages.

    `problem_id` comes from an `id`/`problem_id`/`unique_id` column when present, else the row index.
    """
    dataset = load_raw(name_or_path, config, split)
    return to_contract(dataset, prompt_column, gold_column, instruction, system_prompt, name_or_path)
