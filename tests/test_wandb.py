"""W&B, offline (no network): the run config carries every cat_* setting, the model, the dataset, G and how the anchor
was resolved; project, group and tags come from the recipe's `env:` block; the per-group table is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import yaml

pytestmark = pytest.mark.multiproc  # subprocess


def test_offline_run_config_and_tables(tmp_path, repo_root, tiny_model_path):
    recipe = yaml.safe_load((repo_root / "tests" / "recipes" / "tiny.yaml").read_text())
    recipe["env"].update(WANDB_PROJECT="cat-trl-tests", WANDB_RUN_GROUP="sweep-G", WANDB_TAGS="cat,tiny",
                         WANDB_DIR=str(tmp_path))
    recipe.update(report_to=["wandb"], max_steps=1, run_name="tiny-G4")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "cat_trl.cli.train", "--config", str(path), "--model_name_or_path", tiny_model_path,
         "--output_dir", str(tmp_path / "out")],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = list((tmp_path / "wandb").glob("offline-run-*"))
    # Offline runs keep config and metadata in the run's record log (protobuf with JSON values): assert on its bytes.
    record = next(run.glob("*.wandb")).read_bytes()
    for key in ("cat_estimator", "cat_anchor_weights", "cat_match", "cat_reward", "cat_judge_model", "num_generations",
                "cat_anchor_seed", "cat_log_groups"):
        assert key.encode() in record, key
    assert b'{"anchor_source":"copy"' in record  # how the anchor was resolved
    assert b'"dataset_name":"synthetic_math"' in record and tiny_model_path.encode() in record
    assert b"cat-trl-tests" in record and b"sweep-G" in record and b"tiny-G4" in record  # project, group, name
    assert b"cat" in record and b"tiny" in record  # tags
    assert list(run.glob("files/media/table/cat/groups_*.table.json"))  # the per-group table
