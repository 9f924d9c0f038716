"""Sweeps over G: batch derivation, validation of every shipped sweep before launch, and a real local grid run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import yaml
from cat_trl.cli.sweep import (
    SweepError,
    derive_batch,
    load_sweep,
    local_commands,
    wandb_definition,
)
from cat_trl.cli.train import parse_args
from cat_trl.config import derive_batch

REPO = Path(__file__).resolve().parents[1]


def test_derive_batch_keeps_prompts_per_step():
    assert derive_batch(8, 256, 8, 32) == 8  # the paper's 256 prompts x G=8 on 8 GPUs, 32 steps per generation
    assert derive_batch(2, 2, 1, 1) == 4
    for g in (2, 4, 8, 16):
        assert derive_batch(g, 256, 8, 32) * 8 * 32 == 256 * g
    with pytest.raises(ValueError, match="cannot be split.*values that work"):
        derive_batch(3, 2, 4, 1)


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "yaml" / "sweeps").glob("*.yaml")))
def test_shipped_sweeps_validate(path, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = load_sweep(path)
    assert sweep["_plan"] and all(e["per_device_train_batch_size"] >= 1 for e in sweep["_plan"])
    definition = wandb_definition(sweep)
    assert "prompts_per_step" not in definition and "_plan" not in definition  # a clean W&B definition
    command = definition["command"]
    assert command[-1] == "${args}" and any(t.startswith("--prompts_per_step=") for t in command)
    # Every grid point goes through the real entry point: the batch derived on each rank (WORLD_SIZE from the
    # launcher) is the planned one, and the recipe + point parse and validate (GPU-only settings overridden here).
    for entry, cmd in zip(sweep["_plan"], local_commands(sweep, "/tmp/x")):
        argv = cmd[cmd.index("cat_trl.cli.train") + 1 :]
        _, args, _ = parse_args([*argv, "--bf16", "false", "--use_cpu", "true"])
        assert args.generation_batch_size == sweep["prompts_per_step"] * args.num_generations
        assert args.batch_for(entry["num_processes"]) == entry["per_device_train_batch_size"]


def test_bad_sweeps_fail_before_launch(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    base = yaml.safe_load((REPO / "tests" / "recipes" / "tiny-sweep.yaml").read_text())

    def check(mutate, message):
        data = json.loads(json.dumps(base))
        mutate(data)
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(SweepError, match=message):
            load_sweep(str(path))

    def odd_g(d):
        d["parameters"]["num_generations"]["values"] = [2, 3]
        d["parameters"]["steps_per_generation"] = {"value": 4}  # 2 prompts x G=3 = 6 completions over 4 steps

    check(odd_g, r"grid point \{'num_generations': 3, 'steps_per_generation': 4\}.*cannot be split")
    check(lambda d: d.update(command=" ".join(d["command"])), "tokenised")
    check(lambda d: d["command"].remove("${args}"), r"\$\{args\}")
    check(lambda d: d.update(method="bayes"), "grid")
    check(lambda d: d.pop("prompts_per_step"), "prompts_per_step")


def test_prompts_per_step_in_the_config():
    """The config derives the batch on every rank from WORLD_SIZE (set by the launcher), G and steps_per_generation,
    before TRL checks it; the recipe's own per_device_train_batch_size is replaced."""
    recipe = ["--config", str(REPO / "tests/recipes/tiny.yaml"), "--prompts_per_step", "3", "--num_generations=4",
              "--bf16", "false", "--use_cpu", "true"]
    _, args, _ = parse_args(recipe)
    assert (args.per_device_train_batch_size, args.generation_batch_size) == (12, 12)
    _, args, _ = parse_args([*recipe, "--steps_per_generation", "2", "--num_generations=6"])
    assert (args.per_device_train_batch_size, args.generation_batch_size) == (9, 18)  # 3 x 6 / 2 steps
    with pytest.raises(ValueError, match="cannot be split"):
        args.batch_for(4)  # 3 x 6 = 18 completions over 4 processes x 2 steps
    _, args, _ = parse_args(recipe)
    assert args.batch_for(2) == 6  # 3 prompts x 4 / 2 processes: what each of 2 ranks derives from WORLD_SIZE=2
    from cat_trl.cli.train import ConfigError

    with pytest.raises(ConfigError, match="cannot be split"):
        parse_args([*recipe, "--num_generations=5", "--steps_per_generation", "2"])
    with pytest.raises(ConfigError, match="both set"):
        parse_args([*recipe, "--generation_batch_size", "12"])


@pytest.mark.multiproc
def test_local_sweep_runs_the_grid_and_reports(tmp_path, tiny_model_path, monkeypatch):
    from cat_trl.cli.sweep import main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc = main(["tests/recipes/tiny-sweep.yaml", "--local", "--output_root", str(tmp_path / "sweeps"), "--",
               "--model_name_or_path", tiny_model_path, "--max_steps", "2", "--report_to", "wandb"])
    assert rc == 0
    root = tmp_path / "sweeps" / "tiny-G"
    saved = json.loads((root / "sweep_results.json").read_text())
    results = saved["points"]
    assert saved["provenance"]["packages"]["trl"] and saved["sweep"]["name"] == "tiny-G"
    assert [r["G"] for r in results] == [2, 4] and all(r["steps"] == 2 for r in results)
    assert all(r["step_time"] and r["step_time"] > 0 for r in results)
    for r in results:  # prompts per step fixed: 2 groups per step whatever G is
        rows = [json.loads(line) for line in Path(r["output_dir"], "cat_groups.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(len(row["completions"]) == r["G"] for row in rows)
    assert (root / "sweep_vs_G.png").stat().st_size > 1000
    assert "| 2 |" in (root / "sweep_report.md").read_text()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert all(b"tiny-G-" in next(run.glob("*.wandb")).read_bytes() for run in runs)  # grouped under one name
