"""Tests for the recipe layer: `CaTGRPOConfig` through `cat_trl.cli.train.parse_args`, `config.preflight.check_dataset`, `main`, the anchor
weight resolution and the `cat-trl` command line. Nothing here loads a model."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from datasets import Dataset
from trl import GRPOConfig

import yaml
from cat_trl import cli
from cat_trl.config import CaTGRPOConfig
from cat_trl.engines.anchor_weights import resolve_anchor_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
from cat_trl.cli.train import ConfigError, main, parse_args
from cat_trl.config.preflight import PreflightError, check_dataset

BASE = {
    "use_cpu": True,
    "bf16": False,
    "report_to": [],
    "model_name_or_path": "/models/does-not-exist",
    "num_generations": 2,
    "per_device_train_batch_size": 8,  # generation batch 8 -> 4 prompts per generation batch
    "max_completion_length": 16,
    "save_strategy": "no",
}


@pytest.fixture
def recipe(tmp_path):
    """Writes a YAML recipe (BASE updated with `overrides`, output_dir under tmp_path) and returns its path."""

    def write(**overrides):
        data = {**BASE, "output_dir": str(tmp_path / "out"), **overrides}
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    return write


def _parse(path, *cli_args):
    return parse_args(["--config", path, *cli_args])


# ---------------------------------------------------------------------------------------------------------------
# parse_args
# ---------------------------------------------------------------------------------------------------------------
def test_valid_recipe_parses(recipe):
    script_args, args, model_args = _parse(recipe(cat_estimator="majority", cat_anchor_max_new_tokens=33))
    assert isinstance(args, CaTGRPOConfig)
    assert args.cat_estimator == "majority" and args.cat_anchor_max_new_tokens == 33
    assert args.num_generations == 2 and args.generation_batch_size == 8
    assert model_args.model_name_or_path == "/models/does-not-exist"
    assert script_args.dataset_name == "synthetic_math"


def test_unknown_yaml_key_is_a_config_error_naming_the_key(recipe):
    with pytest.raises(ConfigError, match="cat_anchor_temprature"):
        _parse(recipe(cat_anchor_temprature=0.7))


@pytest.mark.parametrize(
    "field, value",
    [("cat_estimator", "vote"), ("cat_match", "fuzzy"), ("cat_anchor_weights", "frozen"), ("cat_anchor_engine", "x"),
     ("cat_answer_extraction", "last_line")],
)
def test_bad_choices_name_the_field(recipe, field, value):
    with pytest.raises(ConfigError) as err:
        _parse(recipe(**{field: value}))
    assert field in str(err.value) and value in str(err.value)


def test_ref_model_anchor_needs_beta(recipe):
    with pytest.raises(ConfigError, match="beta"):
        _parse(recipe(cat_anchor_weights="ref_model", beta=0.0))
    _, args, _ = _parse(recipe(cat_anchor_weights="ref_model", beta=0.04))
    assert args.cat_anchor_weights == "ref_model"


def test_ref_model_anchor_refused_with_sync_ref_model(recipe):
    with pytest.raises(ConfigError, match="sync_ref_model"):
        _parse(recipe(cat_anchor_weights="ref_model", beta=0.04, sync_ref_model=True))
    # sync_ref_model alone is fine with the copy anchor
    _, args, _ = _parse(recipe(cat_anchor_weights="copy", beta=0.04, sync_ref_model=True))
    assert args.sync_ref_model is True


def test_generation_batch_must_be_divisible_by_num_generations(recipe):
    with pytest.raises(ConfigError, match="divisible by num_generations"):
        _parse(recipe(num_generations=3))


def test_synthesis_prompt_override_is_validated(recipe):
    with pytest.raises(ConfigError, match=r"\{responses\}"):
        _parse(recipe(cat_synthesis_prompt="Combine the answers."))
    with pytest.raises(ConfigError, match="cat_include_question"):
        _parse(recipe(cat_synthesis_prompt="{question}\n{responses}"))
    _, args, _ = _parse(recipe(cat_synthesis_prompt="{question}\n{responses}", cat_include_question=True))
    assert args.synthesis_template == "{question}\n{responses}"
    _, args, _ = _parse(recipe())
    assert "{responses}" in args.synthesis_template and "{question}" not in args.synthesis_template


def test_anchor_max_new_tokens_must_be_positive(recipe):
    with pytest.raises(ConfigError, match="cat_anchor_max_new_tokens"):
        _parse(recipe(cat_anchor_max_new_tokens=0))


def test_cli_override_beats_yaml(recipe):
    path = recipe(num_generations=2, cat_anchor_max_new_tokens=33)
    _, args, _ = _parse(path, "--num_generations", "4", "--cat_match", "equivalent")
    assert args.num_generations == 4 and args.cat_match == "equivalent"
    assert args.cat_anchor_max_new_tokens == 33  # untouched YAML value


def test_every_cat_field_is_in_the_recorded_config(recipe):
    own = {f.name for f in dataclasses.fields(CaTGRPOConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
    # prefix: no clash with TRL's flat namespace; `prompts_per_step` sizes TRL's batch (a GRPO setting, not a CaT one)
    assert own and all(name.startswith("cat_") for name in own - {"prompts_per_step"}), own
    values = {
        "cat_estimator": "majority",
        "cat_include_question": True,
        "cat_synthesis_prompt": "Q: {question} R: {responses}",
        "cat_anchor_weights": "copy",
        "cat_anchor_max_new_tokens": 33,
        "cat_anchor_temperature": 0.7,
        "cat_anchor_seed": 11,
        "cat_anchor_max_context": 4096,
        "cat_match": "equivalent",
        "cat_gold_column": "solution",
        "cat_log_groups": False,
    }
    _, args, _ = _parse(recipe(**values))
    recorded = args.to_dict()  # what the W&B callback writes into the run config
    assert own <= set(recorded)
    for key, value in values.items():
        assert recorded[key] == value, key


# ---------------------------------------------------------------------------------------------------------------
# check_dataset
# ---------------------------------------------------------------------------------------------------------------
def _dataset(n):
    return Dataset.from_dict({"prompt": [f"What is {i} + {i}?" for i in range(n)], "gold_answer": [str(2 * i) for i in
                                                                                                  range(n)]})


def test_too_few_prompts_for_one_generation_batch(recipe):
    script_args, args, model_args = _parse(recipe())
    with pytest.raises(PreflightError) as err:
        check_dataset(args, model_args, _dataset(3))
    msg = str(err.value)
    assert "3 prompts" in msg and "needs 4" in msg
    assert "generation_batch_size=8" in msg and "num_generations=2" in msg
    check_dataset(args, model_args, _dataset(4))  # exactly one generation batch is enough


def test_peft_base_needs_use_peft(recipe):
    script_args, args, model_args = _parse(recipe(cat_anchor_weights="peft_base"))
    with pytest.raises(PreflightError, match="use_peft"):
        check_dataset(args, model_args, _dataset(8))
    script_args, args, model_args = _parse(recipe(cat_anchor_weights="peft_base", use_peft=True))
    check_dataset(args, model_args, _dataset(8))


def test_ref_model_with_peft_is_refused(recipe):
    script_args, args, model_args = _parse(recipe(cat_anchor_weights="ref_model", beta=0.04, use_peft=True))
    with pytest.raises(PreflightError, match="peft_base"):
        check_dataset(args, model_args, _dataset(8))


def test_model_is_required(recipe):
    script_args, args, model_args = _parse(recipe(model_name_or_path=None))
    with pytest.raises(PreflightError, match="model_name_or_path"):
        check_dataset(args, model_args, _dataset(8))


def test_gold_column_cannot_be_a_trl_input(recipe):
    script_args, args, model_args = _parse(recipe(cat_gold_column="prompt"))
    with pytest.raises(PreflightError, match="cat_gold_column"):
        check_dataset(args, model_args, _dataset(8))


# ---------------------------------------------------------------------------------------------------------------
# main / cli: bad recipes fail fast, before any model loads
# ---------------------------------------------------------------------------------------------------------------
def test_main_rejects_a_bad_recipe_before_loading_a_model(recipe, no_model_loading, capsys, tiny_model_path):
    # A real, loadable model: only the order of the checks keeps it from being loaded.
    path = recipe(synthetic_num_problems=2, model_name_or_path=tiny_model_path)  # a batch needs 4 prompts
    code = main(["--config", path])
    err = capsys.readouterr().err
    assert code == 2
    assert "configuration error" in err and "2 prompts" in err and "needs 4" in err
    assert no_model_loading == []


def test_main_rejects_unknown_keys_and_missing_files(recipe, no_model_loading, capsys, tmp_path):
    assert main(["--config", recipe(cat_bogus=1)]) == 2
    assert "configuration error" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "configuration error" in capsys.readouterr().err
    assert no_model_loading == []


def test_cli_usage_and_exit_codes(recipe, no_model_loading, capsys):
    assert cli.main([]) == 2
    assert "usage: cat-trl" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    assert "usage: cat-trl" in capsys.readouterr().out
    assert cli.main(["frobnicate", "x.yaml"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["train"]) == 2
    assert "missing CONFIG.yaml" in capsys.readouterr().err
    assert cli.main(["train", "--num_generations", "4"]) == 2
    assert "missing CONFIG.yaml" in capsys.readouterr().err
    # `cat-trl train X.yaml --key value` forwards to the train entry point, CLI overrides included
    assert cli.main(["train", recipe(), "--num_generations", "3"]) == 2
    assert "divisible by num_generations" in capsys.readouterr().err
    assert no_model_loading == []


# ---------------------------------------------------------------------------------------------------------------
# resolve_anchor_weights
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "requested, is_peft, has_ref, sync, expected",
    [
        ("auto", True, False, False, "peft_base"),
        ("auto", True, True, False, "peft_base"),  # PEFT: the adapter-disabled base is pi_0, whatever else exists
        ("auto", True, True, True, "peft_base"),
        ("auto", False, True, False, "ref_model"),
        ("auto", False, True, True, "copy"),  # a synced ref model drifts: not pi_0
        ("auto", False, False, False, "copy"),
        ("auto", False, False, True, "copy"),
        ("peft_base", True, False, False, "peft_base"),
        ("peft_base", True, True, True, "peft_base"),
        ("ref_model", False, True, False, "ref_model"),
        ("copy", False, False, False, "copy"),
        ("copy", True, True, True, "copy"),
    ],
)
def test_resolve_anchor_weights(requested, is_peft, has_ref, sync, expected):
    assert resolve_anchor_weights(requested, is_peft=is_peft, has_ref_model=has_ref, sync_ref_model=sync) == expected


@pytest.mark.parametrize(
    "requested, is_peft, has_ref, sync, match",
    [
        ("peft_base", False, False, False, "use_peft"),
        ("peft_base", False, True, False, "use_peft"),
        ("ref_model", False, True, True, "sync_ref_model"),
        ("ref_model", False, False, False, "no reference model"),
        ("ref_model", True, False, False, "peft_base"),
    ],
)
def test_resolve_anchor_weights_refusals(requested, is_peft, has_ref, sync, match):
    with pytest.raises(ValueError, match=match):
        resolve_anchor_weights(requested, is_peft=is_peft, has_ref_model=has_ref, sync_ref_model=sync)


@pytest.mark.parametrize("field", ["cat_anchor_batch_size", "cat_anchor_max_context"])
def test_anchor_sizes_must_be_positive(tmp_path, field):
    from cat_trl.config import CaTGRPOConfig

    with pytest.raises(ValueError, match=field):
        CaTGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{field: 0})


@pytest.mark.parametrize(
    "recipe_path",
    # yaml/sweeps/ holds W&B sweep definitions (checked in tests/test_sweep.py), yaml/eval/ `cat-trl eval` configs
    # (checked in tests/test_testtime_eval.py), yaml/compare/ `cat-trl compare` configs (tests/test_compare.py).
    sorted(str(p) for p in (REPO_ROOT / "yaml").rglob("*.yaml") if not {"sweeps", "eval", "compare"} & set(p.parts)),
)
def test_every_shipped_recipe_parses(recipe_path):
    """Every recipe in yaml/ goes through TrlParser and the CaT config checks (GPU-only settings overridden so the
    check runs on CPU)."""
    from cat_trl.cli.train import parse_args

    script_args, args, model_args = parse_args(["--config", recipe_path, "--bf16", "false", "--use_cpu", "true"])
    assert model_args.model_name_or_path
    assert args.num_generations >= 2
    if args.open_ended:
        assert args.cat_judge_engine in ("openai", "transformers")


def test_removed_setting_names_its_replacement(recipe):
    with pytest.raises(ConfigError, match="reward_weights"):
        _parse(recipe(cat_reward_scale=2.0))
    with pytest.raises(ConfigError, match="reward_weights"):
        parse_args(["--config", recipe(), "--cat_reward_scale", "2"])


def test_cat_gold_column_must_name_a_column_the_loader_wrote(recipe):
    """The loaders write gold answers to `gold_answer`; a renamed cat_gold_column would silently find nothing."""
    script_args, args, model_args = _parse(recipe(cat_gold_column="solution"))
    with pytest.raises(PreflightError, match="dataset_gold_column"):
        check_dataset(args, model_args, _dataset(8))
    data = _dataset(8).rename_column("gold_answer", "solution")
    check_dataset(args, model_args, data)  # a column that exists is fine


def test_every_choice_is_checked_from_python_and_listed_for_the_command_line(tmp_path):
    own = [f for f in dataclasses.fields(CaTGRPOConfig) if f.name.startswith("cat_") and "choices" in f.metadata]
    assert len(own) >= 9
    for f in own:
        with pytest.raises(ValueError, match=f"{f.name}='nope' is not one of"):
            CaTGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{f.name: "nope"})
