"""What every `cat-trl` command shares: `CliParser`, the one parser of recipes and command lines (`train`, `compare`,
`eval`, `healthbench-eval`; `sweep` checks its recipe with `train`'s), the checks YAML values need, the device rule for
local models, and the HealthBench grader's settings (`GraderArguments`) with the engine they describe."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import inspect
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..trl_compat import FieldHookParser


class CliError(ValueError):
    """A command-line or config problem, printed as one line by the commands' `main`."""


def yaml_value(text: str) -> Any:
    """A command-line value parsed as YAML (so `[1, 8]`, `{enable_thinking: false}` and JSON all work)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML value ({str(err).splitlines()[0]})") from None


# ------------------------------------------------------------------------------------------------ setting types


def _options(hint: Any) -> list[Any]:
    """The alternatives of a type hint: `int | None` -> [int, NoneType]; `int` -> [int]."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return list(typing.get_args(hint))
    return [hint]


def _is_enum(option: Any) -> bool:
    return isinstance(option, type) and issubclass(option, enum.Enum)


def _is_scalar(option: Any) -> bool:
    """bool / int / float / str, an Enum (given as its string value) or a Literal."""
    return option in (bool, int, float, str) or _is_enum(option) or typing.get_origin(option) is typing.Literal


def _container(hint: Any) -> type | None:
    """`list` or `dict` for a list or dict type, optional or not (`list[int]`, `dict[str, Any] | None`); else None."""
    found = {typing.get_origin(o) or o for o in _options(hint)} & {list, dict}
    return found.pop() if len(found) == 1 else None


def _item_type(hint: Any) -> Any:
    """The element type of a list hint (`list[int] | None` -> int), or None when it is not a scalar type."""
    for option in _options(hint):
        if (typing.get_origin(option) or option) is list:
            args = typing.get_args(option)
            return args[0] if args and _is_scalar(args[0]) else None
    return None


def _expected(options: Sequence[Any], plural: bool = False) -> str:
    """`a number`, `an integer or null`, `a string (one of 'no', 'steps')`... for the options of a type hint."""
    words = []
    kinds = set(options)
    if int in kinds and float not in kinds:
        words.append("integers" if plural else "an integer")
    if float in kinds:
        words.append("numbers" if plural else "a number")
    if bool in kinds:
        words.append("true/false values" if plural else "true or false")
    enums = [o for o in options if _is_enum(o)]
    if str in kinds or enums:
        choices = [e.value for o in enums for e in o]
        words.append(("strings" if plural else "a string")
                     + (f" (one of {', '.join(map(repr, choices[:8]))}{', ...' if len(choices) > 8 else ''})"
                        if choices and str not in kinds else ""))
    words += [repr(v) for o in options if typing.get_origin(o) is typing.Literal for v in typing.get_args(o)]
    for o in options:
        kind = typing.get_origin(o) or o
        if kind is list:
            words.append("a list")
        elif kind is dict:
            words.append("a mapping")
    return " or ".join(dict.fromkeys(words)) or "a value of another type"


def _given(value: Any) -> str:
    """What a YAML value is, for messages: `a list ([1, 2])`, `'abc'`, `true`, `null`."""
    def short(text: str) -> str:
        return text if len(text) <= 60 else text[:57] + "..."

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return f"a list ({short(repr(value))})"
    if isinstance(value, dict):
        return f"a mapping ({short(repr(value))})"
    return short(repr(value))


def _coerce_scalar(value: Any, options: Sequence[Any]) -> Any:
    """`value` as one of the scalar `options`, converted the way the command line converts `--key value` (the string
    "1e-5" is the number 1e-05, the number 7 is the string "7" for a string setting); `ValueError` (no message) when
    it cannot be one."""
    from transformers.hf_argparser import string_to_bool

    kinds = {str if _is_enum(o) else o for o in options if typing.get_origin(o) is not typing.Literal}
    literals = [v for o in options if typing.get_origin(o) is typing.Literal for v in typing.get_args(o)]
    if any(type(value) is type(v) and value == v for v in literals):
        return value
    if isinstance(value, bool):
        if bool in kinds:
            return value
        if str in kinds and not any(_is_enum(o) for o in options):
            return "true" if value else "false"  # as `--key true` on the command line
    elif isinstance(value, int):
        if int in kinds or float in kinds:
            return value
        if bool in kinds and value in (0, 1):
            return bool(value)
        if str in kinds:
            return str(value)
    elif isinstance(value, float):
        if float in kinds:
            return value
        if str in kinds:
            return str(value)
    elif isinstance(value, str):
        if str in kinds:
            return value
        for kind, convert in ((int, int), (float, float), (bool, string_to_bool)):
            if kind in kinds:
                try:
                    return convert(value.strip())
                except (ValueError, argparse.ArgumentTypeError):
                    pass
    elif isinstance(value, (datetime.date, datetime.time)) and str in kinds:  # YAML reads 2024-01-01 as a date
        return str(value)
    raise ValueError


def check_setting(key: str, value: Any, hint: Any, default: Any = dataclasses.MISSING) -> Any:
    """`value` (from a YAML file) checked against the setting's type hint and converted like the command line would
    convert it; a `ValueError` names the key, the expected type and what was given. Types this does not know (`Any`,
    classes) are left to the dataclass."""
    options = _options(hint)
    real = [o for o in options if o is not type(None)]
    if value is None:
        if len(real) < len(options) or default is None or not real:
            return None
        raise ValueError(f"`{key}` must be {_expected(real)}, got null")
    lists = [o for o in real if (typing.get_origin(o) or o) is list]
    dicts = [o for o in real if (typing.get_origin(o) or o) is dict]
    scalars = [o for o in real if _is_scalar(o)]
    if len(lists) + len(dicts) + len(scalars) < len(real):
        return value  # Any, a class: not for this check
    if isinstance(value, list) and lists:
        item = _item_type(hint)
        if item is None:
            return value
        items = []
        for element in value:
            try:
                items.append(_coerce_scalar(element, [item]))
            except ValueError:
                raise ValueError(f"`{key}` must be a list of {_expected([item], plural=True)}, got "
                                 f"{_given(element)} in {_given(value)}") from None
        return items
    if isinstance(value, dict) and dicts or not scalars:
        # A list or dict setting given something else is the dataclass's to judge: PEFT takes `lora_target_modules:
        # all-linear`, and `eval` / `healthbench-eval` refuse the rest in `check_fields`.
        return value
    try:
        return _coerce_scalar(value, scalars)
    except ValueError:
        hint_text = ""
        if isinstance(value, bool) and any(o is str or _is_enum(o) for o in scalars):
            hint_text = (f"; YAML reads an unquoted yes/no/on/off as true/false: quote the word (e.g. {key}: "
                         "\"no\")")
        raise ValueError(f"`{key}` must be {_expected(real)}, got {_given(value)}{hint_text}") from None


def _setting_types(dataclass_types: Sequence[type]) -> dict[str, tuple[Any, Any]]:
    """{setting: (type hint, default)} over the dataclasses a command parses (annotations, not `Field.type`, which
    `HfArgumentParser` narrows in place)."""
    out: dict[str, tuple[Any, Any]] = {}
    for dtype in dataclass_types:
        try:
            hints = typing.get_type_hints(dtype)
        except Exception:  # noqa: BLE001 (an unresolvable annotation: leave that class to HfArgumentParser)
            continue
        for f in dataclasses.fields(dtype):
            if f.init and f.name in hints:
                default = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
                out[f.name] = (hints[f.name], default)
    return out


def split_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the `--config FILE` / `--config=FILE` path or None, the other arguments); a second `--config` is an error."""
    paths, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                raise CliError("--config needs a YAML file")
            paths.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    if len(paths) > 1:
        raise CliError(f"--config is given {len(paths)} times ({', '.join(paths)}); pass one YAML file")
    return (paths[0] if paths else None), rest


# ----------------------------------------------------------------------------------------------------- the parser


class _ListAction(argparse.Action):
    """A list setting's values: TRL's `--key a b` (each value converted to the item type) or one YAML list
    (`--key "[a, b]"`, exactly what the YAML key takes). Where the setting also takes a string (`report_to`), one
    plain value stays that string, as `TrlParser` would parse it."""

    def __init__(self, *args, item_type: Any = None, keeps_string: bool = False, **kwargs):
        self.item_type, self.keeps_string = item_type, keeps_string
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 and values[0].lstrip().startswith("["):
            try:
                parsed = yaml_value(values[0])
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentError(self, str(err)) from None
            items = parsed if isinstance(parsed, list) else [parsed]
        elif len(values) == 1 and self.keeps_string:
            setattr(namespace, self.dest, values[0])
            return
        else:
            items = list(values)
        if self.item_type is None:
            items = [yaml_value(v) if isinstance(v, str) else v for v in items]
        else:
            converted = []
            for item in items:
                try:
                    converted.append(_coerce_scalar(item, [self.item_type]))
                except ValueError:
                    kind = getattr(self.item_type, "__name__", str(self.item_type))
                    raise argparse.ArgumentError(self, f"invalid {kind} value: {item!r}") from None
            items = converted
        setattr(namespace, self.dest, items)


def _mapping_value(keeps_string: bool):
    """A dict setting's command-line value: one YAML (or JSON) mapping. Where the setting also takes a string (TRL's
    `model_init_kwargs`, a path for `fsdp_config`), anything that is not a mapping stays the string it was."""

    def parse(text: str) -> Any:
        try:
            value = yaml_value(text)
        except argparse.ArgumentTypeError:
            if keeps_string:
                return text
            raise
        return text if keeps_string and not isinstance(value, dict) and value is not None else value

    parse.__name__ = "YAML mapping"  # argparse names the type in "invalid ... value"
    return parse


class CliParser(FieldHookParser):
    """The `TrlParser` of every `cat-trl` command (`cat-trl <command> --config FILE.yaml --key value ...`).

    Differences from a plain `TrlParser`, all about error reporting and YAML-shaped values:
      - argument errors are one-line `CliError`s naming the command (argparse would print the usage and exit);
      - the YAML file is read by `recipe.load_mapping` (a key given twice, an empty file, a YAML error: one line with
        the file and line), and each value is checked against its dataclass field's type before any dataclass is
        built (`learning_rate: [1e-5, 2e-5]` is "`learning_rate` must be a number, got a list", not a comparison
        error from deep inside TRL); values are converted as the command line would convert them (`1e-5`, which YAML
        reads as a string, is the number);
      - a list field takes TRL's `--arms a b` or one YAML list (`--arms "[a, b]"`, exactly the value its YAML key
        takes); a dict field takes one YAML (or JSON) mapping;
      - unknown keys, in the config file or on the command line, are named; `removed` maps a key that is gone to
        what replaces it;
      - no abbreviated flags (`--num_gen` is an unknown key, not `--num_generations`).
    Every field keeps both spellings HfArgumentParser registers: `--grader_base_url` and `--grader-base-url`.
    """

    def __init__(self, dataclass_types: Sequence[type], command: str, removed: Mapping[str, str] | None = None,
                 what: str = "config"):
        self.command = command
        self.removed = dict(removed or {})
        self.what = what  # what messages call the YAML file: `recipe` for train and compare
        super().__init__(list(dataclass_types), prog=f"cat-trl {command}", allow_abbrev=False)

    def add_dataclass_field(self, parser: argparse.ArgumentParser, dc_field: dataclasses.Field) -> None:
        kind = _container(dc_field.type)  # HfArgumentParser has resolved the type by now
        if kind is None:
            return super().add_dataclass_field(parser, dc_field)
        name = dc_field.name
        names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if dc_field.default_factory is not dataclasses.MISSING:
            default = dc_field.default_factory()
        elif dc_field.default is not dataclasses.MISSING:
            default = dc_field.default
        else:
            raise TypeError(f"{name}: a list/dict setting needs a default")
        keeps_string = str in _options(dc_field.type)
        if kind is list:  # `--methods a b` (TRL's form) or `--methods "[a, b]"` (YAML)
            parser.add_argument(*names, nargs="+", action=_ListAction, item_type=_item_type(dc_field.type),
                                keeps_string=keeps_string, default=default, metavar="VALUE",
                                help=dc_field.metadata.get("help"))
        else:
            parser.add_argument(*names, type=_mapping_value(keeps_string), default=default, metavar="YAML",
                                help=dc_field.metadata.get("help"))

    def error(self, message):
        raise CliError(f"{message} (`cat-trl {self.command} --help` lists every setting)")

    @property
    def keys(self) -> set[str]:
        return {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype) if f.init}

    def _check_keys(self, keys: Sequence[str], where: str) -> None:
        for key in keys:
            if key in self.removed:
                reason = self.removed[key]
                raise CliError(f"{where}{reason if reason.startswith(key) else f'{key} was removed: {reason}'}")
        if unknown := [k for k in keys if k not in self.keys]:
            raise CliError(f"{where}unknown setting(s) {unknown}; `cat-trl {self.command} --help` lists every "
                           "setting")

    def check_config(self, config: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """`config` (settings read from YAML, without `env`) with unknown and removed keys refused and every value
        checked against its field's type and converted (see `check_setting`); problems are one-line `CliError`s
        starting with `where`."""
        self._check_keys(list(config), where)
        types_ = _setting_types(self.dataclass_types)
        out = {}
        for key, value in config.items():
            hint, default = types_.get(key, (Any, dataclasses.MISSING))
            try:
                out[key] = check_setting(key, value, hint, default)
            except ValueError as err:
                raise CliError(f"{where}{err}") from None
        return out

    def read_config(self, path: str) -> dict[str, Any]:
        """The settings of the YAML file `path`, checked (`check_config`); its `env:` block, a mapping, is kept
        under `env`. Every problem is a one-line `CliError` naming the file."""
        from .recipe import RecipeError, load_mapping

        try:
            config = load_mapping(path, self.what)
        except RecipeError as err:
            raise CliError(str(err)) from None
        env = config.pop("env", {})
        if not isinstance(env, dict):
            raise CliError(f"{path}: `env` must be a mapping of environment variables")
        return {**self.check_config(config, f"{path}: "), **({"env": env} if env else {})}

    def parse(self, argv: Sequence[str], config: Mapping[str, Any] | None = None) -> tuple:
        """The dataclasses from `[--config FILE.yaml] [--key value ...]` (command line over config over defaults).
        `config`, when given, is the already-read `read_config` of the `--config` file (which is then not read
        again)."""
        path, argv = split_config(list(argv))
        if config is None:
            config = self.read_config(path) if path is not None else {}
        config = dict(config)
        for key, value in config.pop("env", {}).items():  # as TrlParser: the recipe's env wins over the shell's
            os.environ[key] = str(value)
        self.set_defaults_with_config(**config)
        try:
            *parsed, rest = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
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


def resolve_engine_kind(engine: str | None) -> str:
    """`auto` (or unset): `vllm` where vLLM is installed, else `transformers`; an explicit `vllm` without vLLM is refused
    here, before any model loads."""
    import importlib.util

    installed = importlib.util.find_spec("vllm") is not None
    if engine in (None, "", "auto"):
        return "vllm" if installed else "transformers"
    if engine not in ("vllm", "transformers"):
        raise ValueError(f"engine must be auto, vllm or transformers, got {engine!r}")
    if engine == "vllm" and not installed:
        raise ValueError("engine: vllm, but vLLM is not installed in this environment (pip install vllm; on CPU "
                         "`make setup-vllm`), or set engine: transformers")
    return engine


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
