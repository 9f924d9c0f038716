"""`yaml/healthbench/smoke-cpu.yaml`, the open-ended pipeline on CPU, must drive every stage -- the anchor's rubric
parsed, the judge called, rewards that are judged fractions of criteria -- not only exit 0 (slow: ~1-2 min on 2
cores, the embedded 135M model as policy, anchor and judge)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_smoke_recipe_proposes_rubrics_calls_the_judge_and_rewards_fractions(tmp_path, embedded_model_path, repo_root):
    out = tmp_path / "smoke"
    proc = subprocess.run(
        [sys.executable, "-m", "cat_trl.cli", "train", "yaml/healthbench/smoke-cpu.yaml", "--output_dir", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "cat/rubric_failure" in h]
    assert len(steps) == 2
    # Rubric stage: the anchor's rubric parsed for some groups.
    assert min(h["cat/rubric_failure"] for h in steps) < 1.0
    # Judge stage: (rollout, criterion) pairs were judged.
    assert sum(h.get("cat/judge_calls", 0) for h in steps) > 0
    # Reward stage: no rollout is length-penalised, and the scored rollouts' rewards are fractions of their group's
    # criteria the judge marked met -- not one constant for every rollout.
    assert not any(h.get("cat/length_penalty_rate") for h in steps)
    rows = [json.loads(line) for line in (out / "cat_groups.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["rewards"]) == 4 for r in rows)
    scored = [(r["rubric"], reward) for r in rows for reward in r["rewards"] if reward is not None]
    assert scored, "no rollout got a judged reward"
    for rubric, reward in scored:
        assert rubric and 3 <= len(rubric) <= 5
        assert 0.0 <= reward <= 1.0
        met = reward * len(rubric)
        assert math.isclose(met, round(met), abs_tol=1e-5), (reward, len(rubric))
    for row in rows:  # a group without a rubric is unscorable (None), never scored
        assert (row["rubric"] is None) == (row["rewards"] == [None] * 4)
    # TRL's "all rewards None" row dump is replaced by cat-trl's one line for those groups.
    assert "All reward functions returned None" not in proc.stderr
    if any(r["rubric"] is None for r in rows):
        assert "had no usable reference this step; their rollouts get no reward (cat/rubric_failure)" in proc.stderr
