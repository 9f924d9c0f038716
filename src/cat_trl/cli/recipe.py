"""Reading YAML recipes and checking model sources: one clear line naming the file (and line) for every way a recipe
or a model path can be unusable, before any model loads. Shared by `cat-trl train`, `eval` and `sweep`."""

from __future__ import annotations

import os
from typing import Any


class RecipeError(ValueError):
    """A recipe file or model source that cannot be used; the message names it."""


def load_mapping(path: str, what: str = "recipe") -> dict[str, Any]:
    """The YAML mapping in `path`. Missing files, directories, non-UTF-8 bytes, YAML syntax errors (with line and
    column) and documents that are not a mapping (a YAML list, a bare string) each raise `RecipeError`."""
    import yaml

    if not os.path.exists(path):
        raise RecipeError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise RecipeError(f"{what} {path}: is a directory, not a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError as err:
        raise RecipeError(f"{what} {path}: not valid UTF-8 (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{what} {path}{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{what} {path}: expected a mapping of `key: value` settings, got a YAML "
                          f"{type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise RecipeError(f"{what} {path}: setting names must be strings, got {bad[:3]}")
    return data


def check_model_source(name_or_path: str, what: str = "model_name_or_path") -> None:
    """Refuse, before loading, a model that cannot load here: a missing local path, a directory without
    `config.json`, or (offline) a hub id that is not in the local Hugging Face cache."""
    from ..data.generic import looks_like_local_path
    from ..models import is_embedded_alias

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise RecipeError(f"{what} is empty")
    if is_embedded_alias(name_or_path):
        return
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise RecipeError(f"{what}={name_or_path!r}: the directory has no config.json (not a model checkpoint)")
        return
    if os.path.exists(path):
        raise RecipeError(f"{what}={name_or_path!r} is a file; pass the checkpoint directory")
    if looks_like_local_path(name_or_path) or name_or_path.count("/") > 1:
        raise RecipeError(f"{what}={name_or_path!r}: no such directory (and not a Hugging Face Hub id)")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise RecipeError(f"{what}={name_or_path!r} is not a local directory and not in the local Hugging Face "
                              "cache, and HF_HUB_OFFLINE=1 forbids downloading it")
