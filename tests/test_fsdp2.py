"""Real FSDP2 CaT-RL on 2 CPU processes (gloo), launched from the real `accelerate_configs/fsdp2.yaml`.

accelerate runs an FSDP launch as DDP on a machine without GPUs; `scripts/fsdp2_cpu.py` switches its state to FSDP
with the plugin built from the launch's own `FSDP_*` settings (see that file). Everything below is then TRL's and
transformers' real FSDP2 path: `fully_shard`-ed policy and reference model, the collective transformers anchor
(padded micro-batches, `synced_gpus`), FULL_STATE_DICT checkpoints and resume.

One launch per weight source (module-scoped fixtures); the anchor's logged greedy syntheses are compared in this
process with a fresh pi_0's on exactly the same prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cat_trl.callbacks import read_group_rows
from conftest import launch_fsdp2

pytestmark = pytest.mark.multiproc

REPO = Path(__file__).resolve().parents[1]


def _run(source: str, out: Path, model: str, *extra: str) -> list[dict]:
    proc = launch_fsdp2([str(REPO / "tests" / "scripts" / "fsdp2_cat.py"), "--source", source, "--model", model,
                         "--out", str(out), *extra])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    suffix = "-resume" if "--resume" in extra else ""
    return [json.loads((out / f"rank{r}{suffix}.json").read_text()) for r in (0, 1)]


# per-device batch 6 with G = 4: 3 groups per step dealt 2 + 1 (the middle group split across ranks);
# batch 2: one group, rank 1 has nothing to synthesize; batch 8: 2 + 2.
BATCH = {"ref_model": "6", "peft_base": "2", "copy": "8"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, varied_tiny_model_path) -> dict:
    cache: dict = {}

    def get(source: str) -> tuple[Path, list[dict]]:
        if source not in cache:
            out = tmp_path_factory.mktemp(f"fsdp2-{source}")
            cache[source] = out, _run(source, out, varied_tiny_model_path, "--batch", BATCH[source])
        return cache[source]

    return get


@pytest.fixture(scope="module")
def pi0(varied_tiny_model_path):
    """A fresh pi_0, unsharded, one sequence per forward (as the anchor ran: cat_anchor_batch_size 1)."""
    import torch

    from cat_trl.engines import TransformersEngine

    return TransformersEngine.from_pretrained(varied_tiny_model_path, dtype=torch.float32, batch_size=1)


def _greedy(engine, prompts: list[str]) -> list[str]:
    from cat_trl.engines import SamplingSettings

    return [g.text for g in engine.generate([[{"role": "user", "content": p}] for p in prompts],
                                            SamplingSettings(max_new_tokens=16, temperature=0.0))]


def _trained(model_dir: Path, base: str, peft: bool):
    import torch
    from transformers import AutoModelForCausalLM

    from cat_trl.engines import TransformersEngine

    if peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                          str(model_dir)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    from transformers import AutoTokenizer

    return TransformersEngine(model, AutoTokenizer.from_pretrained(base), batch_size=1)


@pytest.mark.parametrize("source", ["ref_model", "peft_base", "copy"])
def test_policy_is_really_sharded_by_fsdp2(runs, source):
    _, ranks = runs(source)
    for r in ranks:
        assert r["distributed_type"] == "DistributedType.FSDP" and r["is_fsdp_enabled"] and r["fsdp_version"] == 2
        assert r["anchor_source"] == source
        policy = r["policy"]
        assert r["policy_class"].startswith("FSDP")  # fully_shard swaps the class in place
        assert policy["dtensors"] == policy["params"] > 0  # every parameter is a DTensor...
        assert policy["local_numel"] < 0.6 * policy["full_numel"]  # ...holding about half of it on each rank
        ex = policy["example"]
        assert ex["local"][0] * 2 == ex["full"][0] and ex["local"][1:] == ex["full"][1:]
        if source == "ref_model":  # TRL shards its reference model (= pi_0, the anchor) the same way
            assert r["ref_model"]["dtensors"] == r["ref_model"]["params"]
            assert r["ref_model"]["local_numel"] < 0.6 * r["ref_model"]["full_numel"]
        assert r["global_step"] == 2 and len(r["losses"]) == 2


@pytest.mark.parametrize("source", ["ref_model", "peft_base", "copy"])
def test_anchor_syntheses_equal_a_fresh_pi0_while_the_policy_moved(runs, source, pi0, varied_tiny_model_path):
    out, _ = runs(source)
    rows = read_group_rows(str(out / "trainer"))
    assert len(rows) == 2 * int(BATCH[source]) * 2 // 4  # 2 steps x (2 ranks x batch / G) groups
    prompts = [row["anchor_prompt"] for row in rows]
    fresh = _greedy(pi0, prompts)
    assert [row["anchor_output"] for row in rows] == fresh
    # The check means something only if the policy the anchor ran beside (after step 1: checkpoint-1) writes
    # something else on the same prompts -- an anchor on the current policy would then fail it.
    late = [i for i, row in enumerate(rows) if row["step"] == 1]
    policy = _greedy(_trained(out / "trainer" / "checkpoint-1", varied_tiny_model_path, source == "peft_base"),
                     [prompts[i] for i in late])
    assert sum(a != fresh[i] for a, i in zip(policy, late)) >= 1, "the policy did not move; the check proves nothing"


@pytest.mark.parametrize("source", ["ref_model", "peft_base"])
def test_uneven_groups_per_rank_pad_the_collective_anchor(runs, source):
    """A sharded anchor's forward passes are collectives: the rank with fewer (or no) groups runs no-op micro-batches
    to keep step with the other, instead of hanging it."""
    out, ranks = runs(source)
    rows = read_group_rows(str(out / "trainer"))
    per_rank = {r: sum(row["estimated_on_rank"] == r for row in rows) for r in (0, 1)}
    assert per_rank[0] > per_rank[1]  # dealt unevenly: 2 + 1 per step (ref_model), 1 + 0 (peft_base)
    assert all(r["anchor_collective"] for r in ranks)
    assert ranks[0]["noop_batches"] == 0 and ranks[1]["noop_batches"] >= 2
    assert ranks[0]["anchor_calls"] == ranks[1]["anchor_calls"] == 2  # rank 1 called it even with nothing to do


def test_copy_anchor_is_a_local_unsharded_model(runs):
    _, ranks = runs("copy")
    assert not any(r["anchor_collective"] for r in ranks)  # a frozen copy per rank: no collective needed


def test_full_state_dict_checkpoint_resumes_with_the_anchor_still_pi0(runs, varied_tiny_model_path, pi0):
    out, _ = runs("ref_model")
    ckpt = out / "trainer" / "checkpoint-2"
    assert (ckpt / "model.safetensors").is_file()  # FULL_STATE_DICT: one plain checkpoint, not per-rank shards
    ranks = _run("ref_model", out, varied_tiny_model_path, "--batch", BATCH["ref_model"], "--resume")
    assert all(r["global_step"] == 3 and r["anchor_calls"] == 1 for r in ranks)  # resumed at step 2, one more step
    rows = [row for row in read_group_rows(str(out / "trainer")) if row["step"] == 2]
    assert len(rows) == 3
    prompts = [row["anchor_prompt"] for row in rows]
    assert [row["anchor_output"] for row in rows] == _greedy(pi0, prompts)
    # The resumed policy is the checkpoint's, not pi_0: its greedy output differs on these prompts.
    resumed = _greedy(_trained(ckpt, varied_tiny_model_path, False), prompts)
    assert resumed != _greedy(pi0, prompts)


def test_compare_scores_held_out_points_as_a_collective_under_fsdp2(tmp_path, varied_tiny_model_path):
    """`cat-trl compare` under FSDP2: the sharded policy scores held-out points with every rank generating together
    (5 problems over 2 ranks: 3 + 2, the short rank padded). Its in-training step-0 point equals, problem by problem,
    the initial model's point scored from an unsharded copy."""
    out = tmp_path / "compare"
    proc = launch_fsdp2([str(REPO / "tests" / "scripts" / "fsdp2_compare.py"), "--config",
                         str(REPO / "tests" / "recipes" / "compare-tiny.yaml"), "--model_name_or_path",
                         varied_tiny_model_path, "--output_dir", str(out), "--heldout_size", "5"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads((out / "fsdp2_compare.json").read_text())
    assert result["distributed_type"] == "DistributedType.FSDP"
    curve = result["cat"]["curve"]
    assert [r["step"] for r in curve] == [0, 1, 2] and result["cat"]["steps"] == 2
    initial, sharded = result["initial"]["curve"][0], curve[0]
    assert [p["index"] for p in sharded["problems"]] == list(range(5))
    assert [p["greedy"] for p in sharded["problems"]] == [p["greedy"] for p in initial["problems"]]
    assert len({p["greedy"] for p in initial["problems"]}) > 1  # prompt-dependent outputs: the equality means something
