"""Recipe and command-line inputs, read the same way by every command: one parser (`cli.common.CliParser`) and one
YAML loader (`cli.recipe.load_mapping`) behind `cat-trl train`, `compare`, `eval`, `healthbench-eval` and `sweep`.

Each table row runs a real entry point (`cat_trl.cli.main`, or the installed `cat-trl` script) on one broken input
and checks exit code 2 and ONE stderr line that names the command and the problem. The model everywhere is a path
that does not exist and model loading is refused outright (`no_model_loading`), so a row passes only if the recipe
error comes first, before any model could load."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import yaml
from cat_trl import cli

REPO = Path(__file__).resolve().parents[1]
HB_FIXTURE = REPO / "tests" / "fixtures" / "healthbench_sample.jsonl"
NO_MODEL = "/nonexistent/model"
COMMANDS = ["train", "compare", "eval", "healthbench-eval", "sweep"]


def _base(command: str, tmp_path: Path) -> dict:
    """A working recipe / config of `command` (its model does not exist: nothing may get as far as loading it)."""
    train = {"model_name_or_path": NO_MODEL, "dataset_name": "synthetic_math", "synthetic_num_problems": 16,
             "use_cpu": True, "bf16": False, "num_generations": 2, "per_device_train_batch_size": 4,
             "max_completion_length": 8, "max_steps": 1, "report_to": [], "save_strategy": "no",
             "output_dir": str(tmp_path / "out")}
    return {
        "train": train,
        "compare": {**train, "arms": ["none", "cat"], "heldout_size": 2},
        "eval": {"model_name_or_path": NO_MODEL, "dataset_name": "synthetic_math", "synthetic_num_problems": 4,
                 "num_generations": [1, 2], "device": "cpu", "output_dir": str(tmp_path / "out")},
        "healthbench-eval": {"data": str(HB_FIXTURE), "holdout": 2, "policy": NO_MODEL,
                             "grader_base_url": "http://127.0.0.1:9/v1", "grader_model": "g",
                             "output": str(tmp_path / "hb.json")},
        # the recipe a sweep's command trains with (the sweep file itself is `_sweep_file`'s)
        "sweep": train,
    }[command]


def _sweep_file(tmp_path: Path, recipe: Path, **changes) -> Path:
    sweep = {"name": "t", "method": "grid", "prompts_per_step": 2,
             "parameters": {"num_generations": {"values": [2, 4]}},
             "command": ["${interpreter}", "-m", "cat_trl.cli.train", "--config", str(recipe), "${args}"], **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _argv(command: str, path: Path, tmp_path: Path) -> list[str]:
    """The command line that reads the YAML file `path` as `command`'s recipe / config."""
    if command == "healthbench-eval":
        return [command, "--config", str(path)]
    if command == "sweep":
        return [command, str(_sweep_file(tmp_path, path)), "--dry_run", "--output_root", str(tmp_path / "sweeps")]
    return [command, str(path)]


def _one_error_line(argv: list[str], capsys) -> str:
    start = time.perf_counter()
    code = cli.main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "examples/s]" not in line and "it/s]" not in line]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"cat-trl {argv[0]}:"), lines[0]  # the command is named
    assert elapsed < 60, elapsed  # no model load, no download
    return lines[0]


def _check(line: str, words: list[str]) -> None:
    for word in words:
        assert word in line, (word, line)


# ------------------------------------------------------------------------------------ 1. one parser, list settings

def test_every_command_parses_with_the_one_shared_parser():
    from cat_trl.cli import compare, eval, healthbench_eval, sweep, train
    from cat_trl.cli.common import CliParser

    for module, command in ((train, "train"), (compare, "compare"), (eval, "eval"),
                            (healthbench_eval, "healthbench-eval"), (sweep, "sweep")):
        parser = module.make_parser()
        assert type(parser) is CliParser and parser.command == command, module
    assert not hasattr(train, "_Parser") and "_Parser" not in Path(compare.__file__).read_text()


def _train(tmp_path, *argv):
    from cat_trl.cli.train import parse_args

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_base("train", tmp_path)))
    return parse_args(["--config", str(path), *argv])


def _compare(tmp_path, *argv):
    from cat_trl.cli.compare import parse_args

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_base("compare", tmp_path)))
    return parse_args(["--config", str(path), *argv])


def _eval(tmp_path, *argv):
    from cat_trl.cli.eval import load_config

    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(_base("eval", tmp_path)))
    return load_config(str(path), argv)


def _hb(tmp_path, *argv):
    from cat_trl.cli.healthbench_eval import parse_args

    path = tmp_path / "hb.yaml"
    path.write_text(yaml.safe_dump(_base("healthbench-eval", tmp_path)))
    return (parse_args(["--config", str(path), *argv]),)


# (command, parse, the key, TRL's form, the YAML form, what the setting must hold, where it is in the result)
LIST_FORMS = [
    ("compare", _compare, "seeds", ["0", "1"], "[0, 1]", [0, 1], lambda r: r[0].seeds),
    ("compare", _compare, "seeds", ["1"], "[1]", [1], lambda r: r[0].seeds),  # README: --seeds "[1]"
    ("compare", _compare, "arms", ["gold", "cat_sft"], "[gold, cat_sft]", ["gold", "cat_sft"],
     lambda r: r[0].arms),  # README: --arms "[gold, cat_sft]"
    ("train", _train, "lora_target_modules", ["q_proj", "v_proj"], "[q_proj, v_proj]", ["q_proj", "v_proj"],
     lambda r: r[2].lora_target_modules),
    ("train", _train, "reward_weights", ["1", "0.5"], "[1, 0.5]", [1.0, 0.5], lambda r: r[1].reward_weights),
    ("eval", _eval, "num_generations", ["1", "8"], "[1, 8]", [1, 8], lambda r: r[0].num_generations),
    ("eval", _eval, "methods", ["single", "synthesis"], "[single, synthesis]", ["single", "synthesis"],
     lambda r: r[0].methods),
    ("eval", _eval, "methods", ["synthesis"], "[synthesis]", ["synthesis"], lambda r: r[0].methods),
]


@pytest.mark.parametrize("command,parse,key,trl_form,yaml_form,expected,get", LIST_FORMS,
                         ids=[f"{c[0]}-{c[2]}-{len(c[3])}" for c in LIST_FORMS])
def test_a_list_setting_takes_trl_and_yaml_forms_in_every_command(command, parse, key, trl_form, yaml_form,
                                                                  expected, get, tmp_path):
    assert get(parse(tmp_path, f"--{key}", *trl_form)) == expected
    assert get(parse(tmp_path, f"--{key}", yaml_form)) == expected
    assert get(parse(tmp_path, f"--{key}={yaml_form}")) == expected


# (command, parse, arguments, what the parsed setting holds, where it is)
MAPPING_AND_STRING_FORMS = [
    # a dict setting takes a YAML or a JSON mapping
    ("healthbench-eval", _hb, ["--chat_template_kwargs", "{enable_thinking: false}"], {"enable_thinking": False},
     lambda r: r[0].chat_template_kwargs),
    ("healthbench-eval", _hb, ["--chat-template-kwargs", '{"enable_thinking": false}'], {"enable_thinking": False},
     lambda r: r[0].chat_template_kwargs),
    ("eval", _eval, ["--chat_template_kwargs", "{enable_thinking: false}"], {"enable_thinking": False},
     lambda r: r[0].chat_template_kwargs),
    ("train", _train, ["--chat_template_kwargs", "{enable_thinking: false}"], {"enable_thinking": False},
     lambda r: r[1].chat_template_kwargs),
    # a TRL setting that takes a list or a string keeps one plain value as the string TrlParser would give
    ("train", _train, ["--optim_target_modules", "all-linear"], "all-linear", lambda r: r[1].optim_target_modules),
    ("train", _train, ["--report_to", "none"], [], lambda r: r[1].report_to),
    ("train", _train, ["--report_to", "[]"], [], lambda r: r[1].report_to),
]


@pytest.mark.parametrize("command,parse,argv,expected,get", MAPPING_AND_STRING_FORMS,
                         ids=[f"{c[0]}-{c[2][0].lstrip('-')}-{i}" for i, c in enumerate(MAPPING_AND_STRING_FORMS)])
def test_mapping_and_string_forms(command, parse, argv, expected, get, tmp_path):
    assert get(parse(tmp_path, *argv)) == expected


# (command, command-line arguments after the recipe, words of the one-line error)
BAD_ARGUMENTS = [
    ("compare", ["--seeds", "[a]"], ["--seeds", "invalid int value: 'a'", "cat-trl compare --help"]),
    ("compare", ["--seeds", "0", "x"], ["--seeds", "invalid int value: 'x'"]),
    ("compare", ["--heldout_size", "[2]"], ["--heldout_size", "invalid int value"]),
    ("train", ["--reward_weights", "[1, heavy]"], ["--reward_weights", "invalid float value: 'heavy'",
                                                   "cat-trl train --help"]),
    ("train", ["--learning_rate", "fast"], ["--learning_rate", "invalid float value", "cat-trl train --help"]),
    ("train", ["--num_generations", "[4, 8]"], ["--num_generations", "invalid int value"]),
    ("train", ["--cat_bogus", "1"], ["unknown setting(s) ['cat_bogus']"]),
    ("train", ["--config", "other.yaml"], ["--config is given 2 times"]),
    ("compare", ["--cat_reward_scale", "2"], ["cat_reward_scale was removed", "reward_weights"]),
    ("eval", ["--num_generations", "[1, x]"], ["--num_generations", "invalid int value: 'x'", "cat-trl eval --help"]),
    ("eval", ["--num_gen", "4"], ["unknown setting(s) ['num_gen']"]),
    ("healthbench-eval", ["--holdout", "[2]"], ["--holdout", "invalid int value"]),
    ("sweep", ["--dry_run", "maybe"], ["--dry_run", "Truthy value expected", "cat-trl sweep --help"]),
    ("sweep", ["--bogus", "1"], ["unknown setting(s) ['bogus']"]),
]


@pytest.mark.parametrize("command,argv,words", BAD_ARGUMENTS,
                         ids=[f"{c[0]}-{c[1][0].lstrip('-')}-{i}" for i, c in enumerate(BAD_ARGUMENTS)])
def test_bad_command_line_values_are_one_line_naming_the_command(command, argv, words, tmp_path, no_model_loading,
                                                                 capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_base(command, tmp_path)))
    _check(_one_error_line([*_argv(command, path, tmp_path), *argv], capsys), words)


def test_the_installed_command_takes_the_readme_list_forms(tmp_path):
    """README: `cat-trl compare RECIPE --seeds "[1]"` / `--arms "[gold, cat_sft]"`. The lists parse; the run then
    stops at the first check after parsing (max_steps: 0), before any model loads."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_base("compare", tmp_path)))
    script = Path(sys.executable).parent / "cat-trl"
    proc = subprocess.run([str(script), "compare", str(path), "--seeds", "[1]", "--arms", "[gold, cat_sft]",
                           "--max_steps", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "needs max_steps >= 1" in proc.stderr and "invalid" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------ 2. a key given twice

# (command, YAML text appended to the working recipe, the key, which line of the working recipe has it first (None:
# the appended text holds both))
DUPLICATES = [
    ("train", "learning_rate: 1.0e-5\nlearning_rate: 2.0e-5\n", "learning_rate", None),
    ("train", "model_name_or_path: /elsewhere\n", "model_name_or_path", "model_name_or_path"),
    ("train", "env:\n  WANDB_MODE: offline\n  WANDB_MODE: online\n", "WANDB_MODE", None),  # nested too
    ("compare", "heldout_size: 4\n", "heldout_size", "heldout_size"),
    ("eval", "num_generations: [1]\n", "num_generations", "num_generations"),
    ("healthbench-eval", "holdout: 3\n", "holdout", "holdout"),
    ("sweep", "seed: 1\nseed: 2\n", "seed", None),  # the sweep command's recipe
]


@pytest.mark.parametrize("command,extra,key,first_key", DUPLICATES,
                         ids=[f"{c[0]}-{c[2]}" for c in DUPLICATES])
def test_a_key_given_twice_is_refused_with_both_lines(command, extra, key, first_key, tmp_path, no_model_loading,
                                                      capsys):
    text = yaml.safe_dump(_base(command, tmp_path), sort_keys=False)
    lines = (text + extra).splitlines()
    where = [i + 1 for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")]
    assert len(where) == 2
    if first_key is not None:
        assert lines[where[0] - 1].startswith(first_key)
    path = tmp_path / "recipe.yaml"
    path.write_text(text + extra)
    line = _one_error_line(_argv(command, path, tmp_path), capsys)
    _check(line, [str(path), f"`{key}` is given twice (lines {where[0]} and {where[1]})"])


def test_a_key_given_twice_in_a_sweep_file_or_its_accelerate_config_is_refused(tmp_path, no_model_loading, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_base("train", tmp_path)))
    sweep = _sweep_file(tmp_path, recipe)
    sweep.write_text(sweep.read_text() + "prompts_per_step: 4\n")
    first = next(i + 1 for i, line in enumerate(sweep.read_text().splitlines()) if line.startswith("prompts_per"))
    last = len(sweep.read_text().splitlines())
    line = _one_error_line(["sweep", str(sweep), "--dry_run"], capsys)
    _check(line, ["sweep file", f"`prompts_per_step` is given twice (lines {first} and {last})"])

    accelerate = tmp_path / "accelerate.yaml"
    accelerate.write_text("num_processes: 2\nmixed_precision: 'no'\nnum_processes: 4\n")
    sweep = _sweep_file(tmp_path, recipe, command=["accelerate", "launch", "--config_file", str(accelerate), "-m",
                                                   "cat_trl.cli.train", "--config", str(recipe), "${args}"])
    line = _one_error_line(["sweep", str(sweep), "--dry_run"], capsys)
    _check(line, ["accelerate config", "`num_processes` is given twice (lines 1 and 3)"])


def test_merge_keys_and_equal_keys_in_different_mappings_are_not_duplicates(tmp_path):
    from cat_trl.cli.recipe import load_mapping

    path = tmp_path / "r.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\nthird: {x: 4}\n")
    assert load_mapping(str(path)) == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}, "third": {"x": 4}}
    path.write_text("seed: 0\nmodel_init_kwargs: {dtype: float32, dtype: bfloat16}\n")  # a flow mapping, one line
    with pytest.raises(ValueError, match=r"`dtype` is given twice \(on line 2\)"):
        load_mapping(str(path))


# ------------------------------------------------------------------------------------ 3. a value of the wrong type

# (command, settings over the working recipe, words of the one-line error)
WRONG_TYPES = [
    ("train", {"learning_rate": [1e-5, 2e-5]}, ["`learning_rate` must be a number", "got a list"]),
    ("train", {"max_steps": {"a": 1}}, ["`max_steps` must be an integer", "got a mapping"]),
    ("train", {"num_generations": [4, 8]}, ["`num_generations` must be an integer", "got a list ([4, 8])"]),
    ("train", {"learning_rate": "abc"}, ["`learning_rate` must be a number", "got 'abc'"]),
    ("train", {"seed": 1.5}, ["`seed` must be an integer", "got 1.5"]),
    ("train", {"use_cpu": "maybe"}, ["`use_cpu` must be true or false", "got 'maybe'"]),
    ("train", {"temperature": None}, ["`temperature` must be a number", "got null"]),
    ("train", {"save_strategy": False}, ["`save_strategy` must be a string", "got false", "quote"]),
    ("train", {"cat_anchor_max_new_tokens": [24]}, ["`cat_anchor_max_new_tokens` must be an integer"]),
    ("train", {"dataset_max_samples": "all"}, ["`dataset_max_samples` must be an integer", "got 'all'"]),
    ("train", {"lora_r": [8]}, ["`lora_r` must be an integer"]),
    ("train", {"prompts_per_step": [2, 4]}, ["`prompts_per_step` must be an integer"]),  # before the batch derivation
    ("compare", {"learning_rate": [1e-5, 2e-5]}, ["`learning_rate` must be a number", "got a list"]),
    ("compare", {"heldout_size": [2]}, ["`heldout_size` must be an integer"]),
    ("compare", {"heldout_temperature": "hot"}, ["`heldout_temperature` must be a number", "got 'hot'"]),
    ("compare", {"num_generations": {"a": 1}}, ["`num_generations` must be an integer", "got a mapping"]),
    ("eval", {"temperature": [1.0, 0.5]}, ["`temperature` must be a number", "got a list"]),
    ("eval", {"top_k": "abc"}, ["`top_k` must be an integer", "got 'abc'"]),
    ("eval", {"progress": "maybe"}, ["`progress` must be true or false"]),
    ("eval", {"max_new_tokens": {"a": 1}}, ["`max_new_tokens` must be an integer", "got a mapping"]),
    ("eval", {"dataset_max_samples": [2]}, ["`dataset_max_samples` must be an integer"]),
    ("healthbench-eval", {"holdout": [1]}, ["`holdout` must be an integer", "got a list"]),
    ("healthbench-eval", {"bootstrap_samples": "many"}, ["`bootstrap_samples` must be an integer", "'many'"]),
    ("healthbench-eval", {"policy_temperature": [0.0]}, ["`policy_temperature` must be a number"]),
    ("healthbench-eval", {"grader_concurrency": {"a": 1}}, ["`grader_concurrency` must be an integer"]),
    ("sweep", {"weight_decay": [0.1]}, ["the sweep command's recipe", "`weight_decay` must be a number"]),
    ("sweep", {"max_steps": "two"}, ["`max_steps` must be an integer", "got 'two'"]),
]


@pytest.mark.parametrize("command,settings,words", WRONG_TYPES,
                         ids=[f"{c[0]}-{next(iter(c[1]))}-{i}" for i, c in enumerate(WRONG_TYPES)])
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(command, settings, words, tmp_path, no_model_loading,
                                                               capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**_base(command, tmp_path), **settings}))
    _check(_one_error_line(_argv(command, path, tmp_path), capsys), [str(path), *words])


def test_a_grid_point_of_the_wrong_type_is_refused_before_launch(tmp_path, no_model_loading, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_base("train", tmp_path)))
    sweep = _sweep_file(tmp_path, recipe, parameters={"num_generations": {"values": [2]},
                                                      "learning_rate": {"values": [1e-5, "abc"]}})
    line = _one_error_line(["sweep", str(sweep), "--dry_run"], capsys)
    _check(line, ["grid point", "`learning_rate` must be a number", "got 'abc'"])


# (command, settings over the working recipe, what each setting holds once parsed)
CONVERTED = [
    # YAML reads 1e-5 (no dot) as a string: it is the number, as on the command line
    ("train", "learning_rate: 1e-5\nuse_cpu: 'yes'\nrun_name: 123\n",
     {"learning_rate": 1e-5, "use_cpu": True, "run_name": "123"}),
    # a string setting given true: as `--resume_from_checkpoint true` on the command line
    ("train", "resume_from_checkpoint: true\n", {"resume_from_checkpoint": "true"}),
    ("eval", "temperature: '0.5'\ntop_k: '4'\n", {"temperature": 0.5, "top_k": 4}),
    ("compare", "heldout_temperature: 5e-1\nseeds: ['1', 2]\n", {"heldout_temperature": 0.5, "seeds": [1, 2]}),
]


@pytest.mark.parametrize("command,extra,expected", CONVERTED, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONVERTED)])
def test_values_are_converted_as_the_command_line_converts_them(command, extra, expected, tmp_path):
    from cat_trl.cli import compare, eval, train

    path = tmp_path / "recipe.yaml"
    base = {k: v for k, v in _base(command, tmp_path).items() if f"\n{k}:" not in f"\n{extra}"}
    path.write_text(yaml.safe_dump(base) + extra)
    parsed = {"train": lambda: train.parse_args(["--config", str(path)]),
              "eval": lambda: eval.load_config(str(path)),
              "compare": lambda: compare.parse_args(["--config", str(path)])[:1]}[command]()
    for key, value in expected.items():
        got = [getattr(obj, key) for obj in parsed if hasattr(obj, key)]
        assert got == [value], (key, got)


# ------------------------------------------------------------------------------------ 4. an empty recipe

EMPTY = [("0-bytes", ""), ("comments-only", "# nothing set yet\n\n# still nothing\n"), ("whitespace-only", "  \n\t\n")]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case,text", EMPTY, ids=[c[0] for c in EMPTY])
def test_an_empty_recipe_says_it_is_empty(command, case, text, tmp_path, no_model_loading, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    _check(_one_error_line(_argv(command, path, tmp_path), capsys), [f"{path} is empty (no settings)"])


def test_sweep_without_its_file_is_one_line(capsys):
    _check(_one_error_line(["sweep", "--local"], capsys), ["missing the sweep file"])


def test_an_empty_sweep_file_says_it_is_empty(tmp_path, no_model_loading, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("# a sweep, some day\n")
    _check(_one_error_line(["sweep", str(path), "--dry_run"], capsys), [f"{path} is empty (no settings)"])


# ------------------------------------------------------------------------------------ 5. rows named by source line

def _data_file(tmp_path: Path, kind: str) -> tuple[Path, int | None]:
    """A data file with 8 questions and one without a gold answer; (its path, the 1-based line of that question in
    the file (JSONL) or its 0-based row (CSV))."""
    rows = [{"q": f"What is {i} + {i}?", "a": str(2 * i)} for i in range(8)]
    rows[5]["a"] = None
    if kind == "jsonl":  # blank lines in the file: the line is not the row index + 1
        path = tmp_path / "d.jsonl"
        text = "\n".join(json.dumps(r) + ("\n" if i % 3 == 0 else "") for i, r in enumerate(rows)) + "\n"
        path.write_text(text)
        line = next(n for n, raw in enumerate(text.splitlines(), start=1) if '"a": null' in raw)
        return path, line
    path = tmp_path / "d.csv"
    path.write_text("q,a\n" + "".join(f"{r['q']},{r['a'] or ''}\n" for r in rows))
    return path, 5


# (case, data kind, extra eval settings, words of the error ({path}, {where} filled in))
MISSING_GOLD = [
    ("jsonl-shuffled", "jsonl", {"dataset_max_samples": 8, "dataset_shuffle_seed": 3},
     ["{path}, line {where} has no gold answer"]),
    ("jsonl-unshuffled", "jsonl", {}, ["{path}, line {where} has no gold answer"]),
    ("csv-shuffled", "csv", {"dataset_max_samples": 8, "dataset_shuffle_seed": 1},
     ["{path}, row {where} (0-based, source order) has no gold answer"]),
    ("no-gold-column", "jsonl", {"dataset_gold_column": None}, ["{path}: no gold answers", "dataset_gold_column"]),
]


@pytest.mark.parametrize("case,kind,settings,words", MISSING_GOLD, ids=[c[0] for c in MISSING_GOLD])
def test_eval_names_the_data_files_own_line_of_a_question_without_gold(case, kind, settings, words, tmp_path,
                                                                       no_model_loading, capsys):
    data, where = _data_file(tmp_path, kind)
    config = {**_base("eval", tmp_path), "dataset_name": str(data), "dataset_prompt_column": "q",
              "dataset_gold_column": "a", **settings}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    line = _one_error_line(["eval", str(path)], capsys)
    _check(line, [w.format(path=data, where=where) for w in words])


@pytest.mark.parametrize("kind", ["jsonl", "csv", "synthetic_math", "healthbench"])
def test_source_rows_survive_the_shuffle(kind, tmp_path):
    """`load_train_dataset(source_rows=True)`: after `dataset_max_samples` shuffled and cut the rows, every row still
    names its own place in the source."""
    from cat_trl.data import SOURCE_ROW_COLUMN, load_train_dataset
    from cat_trl.config.script_args import CaTScriptArguments

    if kind in ("jsonl", "csv"):
        data, _ = _data_file(tmp_path, kind)
        args = CaTScriptArguments(dataset_name=str(data), dataset_prompt_column="q", dataset_gold_column="a",
                                  dataset_max_samples=5, dataset_shuffle_seed=7)
    elif kind == "healthbench":
        args = CaTScriptArguments(dataset_name=str(HB_FIXTURE), healthbench_holdout=2, dataset_max_samples=3)
    else:
        args = CaTScriptArguments(dataset_name="synthetic_math", synthetic_num_problems=6, dataset_max_samples=4)
    plain = load_train_dataset(args)
    tagged = load_train_dataset(args, source_rows=True)
    assert tagged.remove_columns(SOURCE_ROW_COLUMN).to_list() == plain.to_list()  # the same rows, the same order
    assert SOURCE_ROW_COLUMN not in plain.column_names
    for row in tagged:
        where = row[SOURCE_ROW_COLUMN]
        if kind == "jsonl":
            number = int(where.rsplit("line ", 1)[1])
            assert json.loads(data.read_text().splitlines()[number - 1])["q"] == row["question"], where
        elif kind == "csv":
            index = int(where.split(", row ", 1)[1].split()[0])
            assert data.read_text().splitlines()[index + 1].split(",")[0] == row["question"], where
        else:
            assert str(row["problem_id"]) in where


def test_a_bad_row_is_named_with_its_file_line(tmp_path, no_model_loading, capsys):
    """The loader's own row errors (before any shuffle) add the file's line to the row index."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "1 + 1?", "a": "2"}\n\n{"q": "2 + 2?", "a": "4"}\n\n{"q": "", "a": "0"}\n')
    for command in ("train", "eval"):
        config = {**_base(command, tmp_path), "dataset_name": str(data), "dataset_prompt_column": "q",
                  "dataset_gold_column": "a"}
        path = tmp_path / f"{command}.yaml"
        path.write_text(yaml.safe_dump(config))
        _check(_one_error_line([command, str(path)], capsys), ["Row 2 of dataset", "(line 5)", "empty 'q'"])
