"""What `cat-trl eval` and `cat-trl healthbench-eval` share: one `TrlParser` with one-line errors (a YAML config via
`--config`, `--key value` overrides, unknown and removed keys named), the checks YAML values need, the device
rule for local models, and the HealthBench grader's settings (`GraderArguments`) with the engine they describe."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trl import TrlParser


class CliError(ValueError):
    """A command-line or config problem, printed as one line by the commands' `main`."""


def yaml_value(text: str) -> Any:
    """A command-line value parsed as YAML (so `[1, 8]`, `{enable_thinking: false}` and JSON all work)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML value ({str(err).splitlines()[0]})") from None


def _container(hint: Any) -> type | None:
    """`list` or `dict` for a list or dict type, optional or not (`list[int]`, `dict[str, Any] | None`); else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = {_container(a) for a in typing.get_args(hint)} - {None}
        return found.pop() if len(found) == 1 else None
    kind = typing.get_origin(hint) or hint
    return kind if kind in (list, dict) else None


class _ListAction(argparse.Action):
    """A list setting's values: one YAML list (`"[1, 8]"`) is that list; several values (`1 8`, TRL's form) are the
    list of them."""

    def __call__(self, parser, namespace, values, option_string=None):
        one_list = len(values) == 1 and isinstance(values[0], list)
        setattr(namespace, self.dest, values[0] if one_list else list(values))


class CliParser(TrlParser):
    """`TrlParser` for the evaluation commands.

    Differences from a plain `TrlParser`, all about error reporting and YAML-shaped values:
      - argument errors are one-line `CliError`s (argparse would print the usage and exit);
      - a list field takes TRL's `--num_generations 1 8` or one YAML list (`--num_generations "[1, 8]"`, exactly
        the value its YAML key takes); a dict field takes one YAML mapping (HfArgumentParser has no usable form);
      - unknown keys, in the config file or on the command line, are named; `removed` maps a key that is gone to
        what replaces it;
      - no abbreviated flags (`--num_gen` is an unknown key, not `--num_generations`).
    Every field keeps both spellings HfArgumentParser registers: `--grader_base_url` and `--grader-base-url`.
    """

    def __init__(self, dataclass_types: Sequence[type], command: str, removed: Mapping[str, str] | None = None):
        self.command = command
        self.removed = dict(removed or {})
        super().__init__(list(dataclass_types), prog=f"cat-trl {command}", allow_abbrev=False)

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, dc_field: dataclasses.Field):
        if _container(dc_field.type) is None:  # HfArgumentParser has resolved the type by now
            return TrlParser._parse_dataclass_field(parser, dc_field)
        name = dc_field.name
        names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if dc_field.default_factory is not dataclasses.MISSING:
            default = dc_field.default_factory()
        elif dc_field.default is not dataclasses.MISSING:
            default = dc_field.default
        else:
            raise TypeError(f"{name}: a list/dict setting needs a default")
        if _container(dc_field.type) is list:  # `--methods a b` (TRL's form) or `--methods "[a, b]"` (YAML)
            parser.add_argument(*names, type=yaml_value, nargs="+", action=_ListAction, default=default,
                                metavar="VALUE", help=dc_field.metadata.get("help"))
        else:
            parser.add_argument(*names, type=yaml_value, default=default, metavar="YAML",
                                help=dc_field.metadata.get("help"))

    def error(self, message):
        raise CliError(f"{message} (`cat-trl {self.command} --help` lists every setting)")

    @property
    def keys(self) -> set[str]:
        return {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype) if f.init}

    def _check_keys(self, keys: Sequence[str], where: str) -> None:
        for key in keys:
            if key in self.removed:
                raise CliError(f"{where}{key} was removed: {self.removed[key]}")
        if unknown := [k for k in keys if k not in self.keys]:
            raise CliError(f"{where}unknown setting(s) {unknown}; `cat-trl {self.command} --help` lists every "
                           "setting")

    def parse(self, argv: Sequence[str]) -> tuple:
        """The dataclasses from `[--config FILE.yaml] [--key value ...]` (command line over config over defaults)."""
        from .recipe import RecipeError, load_mapping

        argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
        if "--config" in argv:
            i = argv.index("--config")
            if i + 1 == len(argv):
                raise CliError("--config needs a YAML file")
            try:
                config = load_mapping(argv[i + 1], "config")
            except RecipeError as err:
                raise CliError(str(err)) from None
            if not isinstance(config.get("env", {}), dict):
                raise CliError(f"{argv[i + 1]}: `env` must be a mapping of environment variables")
            self._check_keys([k for k in config if k != "env"], f"{argv[i + 1]}: ")
        try:
            *parsed, rest = self.parse_args_and_config(args=argv, return_remaining_strings=True)
        except CliError:
            raise
        except (ValueError, TypeError) as err:  # the dataclasses' __post_init__ checks
            raise CliError(str(err).splitlines()[0] if str(err) else type(err).__name__) from err
        if flags := [s.lstrip("-").split("=", 1)[0].replace("-", "_") for s in rest if s.startswith("-")]:
            self._check_keys(flags, "")
        if rest:
            raise CliError(f"unexpected argument(s) {rest}; settings are `--key value`")
        return tuple(parsed)

    def print_settings(self, doc: str) -> None:
        """`--help`: the module docstring, then every key with its default and help, one section per dataclass (and
        per dataclass it inherits from: a class's own keys first)."""
        print(doc)
        for dtype in self.dataclass_types:
            shown: set[str] = set()
            for cls in [c for c in dtype.__mro__ if dataclasses.is_dataclass(c)]:
                own = [f for f in dataclasses.fields(dtype)
                       if f.name in inspect.get_annotations(cls) and f.name not in shown]
                shown.update(f.name for f in own)
                if own:
                    print(f"\n{(cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip('.')}:")
                for f in own:
                    notes = [f.metadata.get("help", "")]
                    if f.metadata.get("choices"):
                        notes.append(f"One of: {', '.join(map(str, f.metadata['choices']))}.")
                    line = " ".join(n for n in notes if n)
                    print(f"  {f.name}: {self.get_default(f.name)!r}" + (f"  -- {line}" if line else ""))


def check_fields(obj) -> None:
    """What argparse checks on the command line but not in values from a YAML file, so `__post_init__` calls this:
    list and dict fields hold a list / a mapping (None only where the type allows it), and every field with
    `metadata["choices"]` holds one of them (each element, for a list)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint, value = hints[f.name], getattr(obj, f.name)
        kind = _container(hint)
        optional = type(None) in typing.get_args(hint)
        if kind is not None and not isinstance(value, kind) and not (value is None and optional):
            example = "[a, b]" if kind is list else "{key: value}"
            raise ValueError(f"{f.name} must be a {'list' if kind is list else 'mapping'}, got {value!r} (in YAML: "
                             f"{f.name}: {example})")
        allowed = f.metadata.get("choices")
        if allowed is None:
            continue
        if isinstance(value, list):
            if bad := [v for v in value if v not in allowed]:
                raise ValueError(f"unknown {f.name} {bad}; choose from {', '.join(map(str, allowed))}")
        elif value not in allowed:
            raise ValueError(f"{f.name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_at_least_one(obj, *names: str) -> None:
    """Each named field is >= 1, or unset (None)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def resolve_device(device: str | None) -> str:
    """`auto` (or unset): cuda when available, else cpu; anything else as given."""
    if device not in (None, "", "auto"):
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class GraderArguments:
    """The physician-rubric grader (HealthBench): an OpenAI-compatible server or a local model."""

    grader_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible grader server."})
    grader_model: str | None = field(default=None, metadata={"help": "Served grader name (with grader_base_url)."})
    grader_api_key_env: str = field(default="OPENAI_API_KEY",
                                    metadata={"help": "Environment variable holding the grader server's API key."})
    grader_local: str | None = field(default=None, metadata={
        "help": "A local grader checkpoint / alias (e.g. for smoke tests), instead of grader_base_url."})
    grader_concurrency: int = field(default=16, metadata={"help": "Concurrent requests to a grader server."})

    def __post_init__(self):
        if self.grader_base_url and self.grader_local:
            raise ValueError("set grader_base_url (a server) or grader_local (a local model), not both")
        if self.grader_base_url and not self.grader_model:
            raise ValueError("grader_base_url needs grader_model (the served grader name, e.g. gpt-4o-2024-08-06)")
        check_at_least_one(self, "grader_concurrency")

    def grader_engine(self, device: str | None, batch_size: int | None):
        """The grader's engine, or None when no grader is set. A server is checked now: an unreachable grader fails
        before any response is generated."""
        from ..engines.factory import EngineSpec, build_engine

        if self.grader_base_url:
            engine = build_engine(EngineSpec("openai", weights="server", model=self.grader_model,
                                             base_url=self.grader_base_url, api_key_env=self.grader_api_key_env,
                                             max_concurrency=self.grader_concurrency))
            engine.check()
            return engine
        if self.grader_local:
            return build_engine(EngineSpec("transformers", model=self.grader_local, device=resolve_device(device),
                                           batch_size=batch_size))
        return None
