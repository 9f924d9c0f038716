"""The bad-input table: every way a user can hand `cat-trl train`, `eval` or `sweep` something unusable gets exit code
2 and ONE line naming the problem, before any model loads -- no traceback, no 250-line usage, no later crash.

Each row builds a broken recipe/data/CLI from a working one (tests/recipes/tiny.yaml with the tiny test model) and
says which words the error must contain. Model loading is refused outright (`no_model_loading`): a row that only
fails after loading weights fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import yaml
from cat_trl import cli

TINY = Path(__file__).parent / "recipes" / "tiny.yaml"


def _jsonl(path: Path, rows: list, tail: bytes = b"") -> str:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)
    return str(path)


def _progress(line: str) -> bool:
    """`datasets`' own progress bars on stderr (not error output)."""
    return "examples/s]" in line or "it/s]" in line


ROWS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
DATA = {"dataset_name": None, "dataset_prompt_column": "prompt", "dataset_gold_column": "answer"}

# (case id, how to break the recipe, words the one-line error must contain)
TRAIN_CASES = [
    ("yaml-syntax-error", lambda r, d: "model_name_or_path: [unclosed\nnum_generations: 4\n",
     ["YAML syntax error", "line 2"]),
    ("yaml-list", lambda r, d: "- num_generations: 4\n- seed: 0\n", ["expected a mapping", "list"]),
    ("yaml-not-utf8", lambda r, d: b"seed: 0\nrun_name: \xff\xfe\n", ["not valid UTF-8"]),
    ("num-generations-0", lambda r, d: {**r, "num_generations": 0}, ["num_generations=0", ">= 2"]),
    ("num-generations-1", lambda r, d: {**r, "num_generations": 1}, ["num_generations=1"]),
    ("batch-0", lambda r, d: {**r, "per_device_train_batch_size": 0}, ["per_device_train_batch_size=0"]),
    ("completion-length-0", lambda r, d: {**r, "max_completion_length": 0}, ["max_completion_length=0"]),
    ("negative-anchor-temperature", lambda r, d: {**r, "cat_anchor_temperature": -0.5},
     ["cat_anchor_temperature=-0.5"]),
    ("zero-temperature", lambda r, d: {**r, "temperature": 0.0}, ["temperature=0.0", "> 0"]),
    ("anchor-top-p-0", lambda r, d: {**r, "cat_anchor_top_p": 0.0}, ["cat_anchor_top_p=0.0"]),
    ("unknown-key", lambda r, d: {**r, "cat_bogus": 1}, ["cat_bogus"]),
    ("bad-choice", lambda r, d: {**r, "cat_match": "fuzzy"}, ["cat_match", "fuzzy"]),
    ("missing-model-dir", lambda r, d: {**r, "model_name_or_path": "/models/does/not/exist"},
     ["no such directory"]),
    ("model-dir-without-config", lambda r, d: {**r, "model_name_or_path": str(d)}, ["no config.json"]),
    ("model-hub-id-offline", lambda r, d: {**r, "model_name_or_path": "someorg/not-cached-model"},
     ["not in the local Hugging Face cache"]),
    ("output-dir-is-a-file", lambda r, d: {**r, "output_dir": str(d / "afile")}, ["is a file"]),
    ("output-dir-under-a-file", lambda r, d: {**r, "output_dir": str(d / "afile" / "run")}, ["is a file"]),
    ("missing-dataset-file", lambda r, d: {**r, **DATA, "dataset_name": str(d / "missing.jsonl")},
     ["does not exist"]),
    ("truncated-jsonl-line", lambda r, d: {**r, **DATA, "dataset_name": _jsonl(d / "t.jsonl", ROWS, b'{"prompt": "Wh')},
     ["t.jsonl", "line 9", "not valid JSON"]),
    ("non-utf8-jsonl", lambda r, d: {**r, **DATA, "dataset_name": _jsonl(d / "u.jsonl", ROWS[:3], b'{"prompt": "\xe9"}\n')},
     ["u.jsonl", "line 4", "UTF-8"]),
    ("jsonl-line-not-an-object", lambda r, d: {**r, **DATA, "dataset_name": _jsonl(d / "l.jsonl", [*ROWS, [1, 2]])},
     ["l.jsonl", "line 9", "JSON object"]),
    ("missing-prompt-column", lambda r, d: {**r, **DATA, "dataset_name": _jsonl(d / "c.jsonl", ROWS),
                                            "dataset_prompt_column": "question"}, ["'question'", "not found"]),
    ("too-few-prompts", lambda r, d: {**r, "synthetic_num_problems": 1}, ["1 prompts", "needs 2"]),
    ("one-megabyte-prompt", lambda r, d: {**r, **DATA, "dataset_name": _jsonl(
        d / "big.jsonl", [*ROWS, {"prompt": "word " * 200_000, "answer": "1"}])}, [f"line {len(ROWS) + 1}", "tokens", "context"]),
    ("anchor-context-too-small", lambda r, d: {**r, "cat_anchor_max_context": 300, "cat_anchor_max_new_tokens": 200},
     ["anchor's context (300 tokens)"]),
    # the recipe's values are type-checked (by the parser every command shares) before prompts_per_step derives the
    # batch, so the message names the key and its type rather than the derivation's "must be integers"
    ("prompts-per-step-not-an-int", lambda r, d: {**r, "prompts_per_step": "two"},
     ["`prompts_per_step` must be an integer", "'two'"]),
]


@pytest.mark.parametrize("case,break_it,words", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_bad_input_in_one_line_before_any_model_loads(case, break_it, words, tmp_path,
                                                                    tiny_model_path, no_model_loading, capsys):
    recipe = {**yaml.safe_load(TINY.read_text()), "model_name_or_path": tiny_model_path,
              "output_dir": str(tmp_path / "out")}
    (tmp_path / "afile").write_text("not a directory")
    broken = break_it(recipe, tmp_path)
    path = tmp_path / "recipe.yaml"
    if isinstance(broken, bytes):
        path.write_bytes(broken)
    else:
        path.write_text(broken if isinstance(broken, str) else yaml.safe_dump(broken))
    code = cli.main(["train", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not _progress(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("weights,extra", [("ref_model", {"beta": 0.01}), ("peft_base", {"use_peft": True}),
                                           ("auto", {"beta": 0.01})])
def test_vllm_anchor_on_an_fsdp1_launch_is_refused_before_any_model_loads(weights, extra, tmp_path, tiny_model_path,
                                                                          no_model_loading, capsys, monkeypatch):
    """FSDP1 flattens parameters (summon_full_params per module): the vLLM anchor streams sharded pi_0 only from FSDP2.
    An explicit `cat_anchor_engine: vllm` on an FSDP1 launch (accelerate's FSDP_VERSION=1) is one line, naming the
    setting and the alternatives; FSDP2 (accelerate_configs/fsdp2.yaml) passes this check."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    recipe = {**yaml.safe_load(TINY.read_text()), "model_name_or_path": tiny_model_path,
              "output_dir": str(tmp_path / "out"), "use_vllm": True, "vllm_mode": "colocate",
              "cat_anchor_engine": "vllm", "cat_anchor_weights": weights, **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli.main(["train", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not _progress(line)]
    assert len(err) == 1, err
    assert "FSDP2" in err[0] and "fsdp_version: 2" in err[0] and "cat_anchor_weights: copy" in err[0], err[0]


@pytest.mark.parametrize("kwargs,refused", [({}, True), ({"max_num_batched_tokens": 16384}, False),
                                             ({"enable_chunked_prefill": False}, False)])
def test_colocated_vllm_anchor_on_cpu_refuses_synthesis_prompts_over_the_scheduler_step(
        kwargs, refused, tmp_path, tiny_model_path, no_model_loading, capsys, monkeypatch):
    """On vLLM's CPU build a seeded synthesis prompt must be prefilled in one scheduler step (TRL's colocated engine:
    4096 tokens): 8 rollouts of 1024 tokens cannot be, and the launch says so in one line before any model loads,
    naming the setting that lifts the limit. With the limit lifted (or chunked prefill off) the check passes."""
    from cat_trl import trl_compat

    monkeypatch.setattr(trl_compat, "vllm_runs_on_cpu", lambda: True)
    recipe = {**yaml.safe_load(TINY.read_text()), "model_name_or_path": tiny_model_path,
              "output_dir": str(tmp_path / "out"), "use_vllm": True, "vllm_mode": "colocate",
              "vllm_max_model_length": 16384, "cat_anchor_engine": "vllm", "cat_anchor_weights": "copy",
              "num_generations": 8, "max_completion_length": 1024, "cat_vllm_llm_kwargs": kwargs}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    if not refused:  # preflight passes; what fails next here (no vLLM in this environment) is not this check
        try:
            cli.main(["train", str(path)])
        except Exception as err:  # noqa: BLE001
            assert "scheduler step" not in str(err)
        assert "scheduler step" not in capsys.readouterr().err
        return
    assert cli.main(["train", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not _progress(line)]
    assert len(err) == 1, err
    assert "4096-token scheduler step" in err[0] and "max_num_batched_tokens" in err[0], err[0]
    assert no_model_loading == []


def test_vllm_anchor_launch_checks_read_the_fsdp_version(monkeypatch):
    from types import SimpleNamespace

    from cat_trl.engines.vllm_colocated import VLLMAnchorUnsupported, check_vllm_anchor_sharding, launch_fsdp_version

    for key in ("ACCELERATE_USE_FSDP", "FSDP_VERSION"):
        monkeypatch.delenv(key, raising=False)
    assert launch_fsdp_version(SimpleNamespace(fsdp_plugin_args=None)) is None  # not an FSDP launch
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert launch_fsdp_version(SimpleNamespace()) == 1  # accelerate's default
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert launch_fsdp_version(SimpleNamespace()) == 2
    assert launch_fsdp_version(SimpleNamespace(fsdp_plugin_args={"fsdp_version": 1})) == 1  # fsdp_config wins
    for source in ("ref_model", "peft_base", "copy"):
        check_vllm_anchor_sharding(source, 2)
        check_vllm_anchor_sharding(source, None)
    check_vllm_anchor_sharding("copy", 1)  # the checkpoint's tensors: nothing sharded to stream
    for source in ("ref_model", "peft_base"):
        with pytest.raises(VLLMAnchorUnsupported, match="FSDP2"):
            check_vllm_anchor_sharding(source, 1)


def test_train_argument_errors_are_one_line_without_the_usage(tmp_path, tiny_model_path, no_model_loading, capsys):
    recipe = {**yaml.safe_load(TINY.read_text()), "model_name_or_path": tiny_model_path,
              "output_dir": str(tmp_path / "out")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli.main(["train", str(path), "--learning_rate", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "learning_rate" in err and "--help" in err


@pytest.mark.parametrize("argv", [["train", "--help"], ["train", "-h"]])
def test_train_help_lists_every_setting_with_default_and_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key in ("--cat_estimator", "--cat_anchor_temperature", "--num_generations", "--dataset_name",
                "--model_name_or_path", "--cat_vllm_llm_kwargs"):
        assert key in out, key
    assert "Reference estimator" in out and "(default: synthesis)" in out


# ---------------------------------------------------------------------------------------------------------------- eval

EVAL_CASES = [
    ("yaml-syntax-error", "model_name_or_path: [oops\n", ["YAML syntax error", "line "]),
    ("yaml-list", "- 1\n- 2\n", ["expected a mapping"]),
    ("missing-dataset", {"dataset_name": "/data/missing.jsonl"}, ["does not exist"]),
    ("missing-model", {"model_name_or_path": "/models/nope/nope"}, ["no such directory"]),
    ("unknown-key", {"bogus_key": 1}, ["bogus_key"]),
    ("unknown-engine", {"engine": "sglang"}, ["engine", "sglang"]),
    ("vllm-kwargs-without-vllm", {"engine": "transformers", "vllm_llm_kwargs": {"enforce_eager": True}},
     ["vllm_llm_kwargs", "transformers"]),
    *([("engine-vllm-not-installed", {"engine": "vllm"}, ["engine: vllm", "not installed"])]
      if importlib.util.find_spec("vllm") is None else []),
]


@pytest.mark.parametrize("case,content,words", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_refuses_bad_input_in_one_line(case, content, words, tmp_path, tiny_model_path, no_model_loading,
                                            capsys):
    base = {"model_name_or_path": tiny_model_path, "dataset_name": "synthetic_math", "synthetic_num_problems": 4,
            "num_generations": [1, 2], "output_dir": str(tmp_path / "out"), "device": "cpu"}
    path = tmp_path / "eval.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump({**base, **content}))
    code = cli.main(["eval", str(path)])
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not _progress(line))
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


# ------------------------------------------------------------------------------------------------------------- compare

COMPARE_CASES = [
    ("heldout-engine-vllm-without-colocated-vllm", ["--heldout_engine", "vllm"],
     ["heldout_engine: vllm", "use_vllm: true", "vllm_mode: colocate"]),
    ("heldout-engine-unknown", ["--heldout_engine", "sglang"], ["heldout_engine", "sglang"]),
]


@pytest.mark.parametrize("case,argv,words", COMPARE_CASES, ids=[c[0] for c in COMPARE_CASES])
def test_compare_refuses_bad_input_in_one_line(case, argv, words, tmp_path, tiny_model_path, no_model_loading,
                                               capsys):
    recipe = Path(__file__).parent / "recipes" / "compare-tiny.yaml"
    code = cli.main(["compare", str(recipe), "--model_name_or_path", tiny_model_path,
                     "--output_dir", str(tmp_path / "cmp"), *argv])
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not _progress(line))
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


# ---------------------------------------------------------------------------------------------------------------- sweep

@pytest.mark.parametrize("values,words", [(["four", 8], ["num_generations must be an integer"]),
                                          ([4.5], ["num_generations must be an integer"])])
def test_sweep_refuses_non_integer_grid_values(values, words, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY.read_text())
    sweep = {"method": "grid", "prompts_per_step": 2, "parameters": {"num_generations": {"values": values}},
             "command": ["python", "-m", "cat_trl.cli.train", "--config", str(recipe), "${args}"]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert cli.main(["sweep", str(path), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_sweep_refuses_a_broken_yaml(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("method: grid\nparameters: {num_generations: {values: [4, 8]\n")
    assert cli.main(["sweep", str(path), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "YAML syntax error" in err


def test_eval_help_lists_its_settings_and_exits_0(capsys):
    assert cli.main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("model_name_or_path:", "num_generations:", "methods:", "dataset_name:", "synthetic_num_problems:"):
        assert key in out, key
