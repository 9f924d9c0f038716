"""The README's main job: the quickstart recipe on the embedded model (slow: several minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quickstart_trains_and_reports(tmp_path, embedded_model_path, repo_root):
    out = tmp_path / "qs"
    env = {**os.environ, "WANDB_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "cat_trl.cli", "train", "yaml/quickstart.yaml", "--output_dir", str(out)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "CaT-RL finished 10 steps" in proc.stdout
    summary = json.loads((out / "cat_summary.json").read_text())
    assert summary["steps"] == 10
    assert {"cat/label_accuracy", "cat/reference_parse_failure"} <= set(summary["metrics"])
    rows = [json.loads(line) for line in (out / "cat_groups.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all(len(r["completions"]) == 4 for r in rows)
    # Some anchor references were parseable, so some rewards were real numbers, not all None.
    assert any(r["reference_answer"] is not None for r in rows)
    # W&B ran offline and wrote its run files.
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
    # ...including the per-group table (prompt, G completions, reference, rewards) at every logging step.
    tables = sorted(runs[0].glob("files/media/table/cat/groups_*.table.json"))
    assert len(tables) == 10
    table = json.loads(tables[-1].read_text())
    assert {"prompt", "completions", "reference", "rewards"} <= set(table["columns"]) and len(table["data"]) == 2
