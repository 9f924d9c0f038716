"""Reading YAML recipes and checking model sources: one clear line naming the file (and line) for every way a recipe
or a model path can be unusable, before any model loads. Every command reads its YAML through `load_mapping`
(`train`, `compare`, `eval`, `healthbench-eval --config`, and `sweep` for its sweep file, the sweep's recipe and the
accelerate config it reads `num_processes` from)."""

from __future__ import annotations

import os
from typing import Any


class RecipeError(ValueError):
    """A recipe file or model source that cannot be used; the message names it."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


def _strict_loader():
    """A `yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last value silently).
    Merge keys (`<<: *base`) are not duplicates: overriding a merged key is what they are for."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                    try:
                        if key in seen:
                            raise _DuplicateKey(key, seen[key], line)
                        seen[key] = line
                    except TypeError:  # an unhashable key: SafeLoader names it below
                        continue
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def load_mapping(path: str, what: str = "recipe") -> dict[str, Any]:
    """The YAML mapping in `path`. Missing files, directories, non-UTF-8 bytes, YAML syntax errors (with line and
    column), a key given twice in one mapping (with both lines), an empty file (or only comments) and documents that
    are not a mapping (a YAML list, a bare string) each raise `RecipeError`."""
    import yaml

    if not os.path.exists(path):
        raise RecipeError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise RecipeError(f"{what} {path}: is a directory, not a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if all(not line.strip() or line.strip().startswith("#") for line in text.splitlines()):
            raise RecipeError(f"{what} {path} is empty (no settings)")  # (tabs alone would be a YAML error)
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as dup:
        lines = f"lines {dup.first} and {dup.second}" if dup.first != dup.second else f"on line {dup.first}"
        raise RecipeError(f"{what} {path}: `{dup.key}` is given twice ({lines}); YAML would silently keep the last "
                          "one") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{what} {path}: not valid UTF-8 (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{what} {path}{where}: YAML syntax error: {problem}") from None
    if data is None:
        raise RecipeError(f"{what} {path} is empty (no settings)")
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
    from ..embedded_model import is_embedded_alias

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
