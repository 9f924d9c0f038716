"""Run under torchrun (2 processes, gloo): rank 1's estimator raises; both ranks must raise, none may hang."""

import sys

import torch.distributed as dist
from accelerate import PartialState

from cat_trl.estimators.base import Group, Reference, ReferenceEstimator
from cat_trl.estimators.across_ranks import estimate_all


class FailsOnRankOne(ReferenceEstimator):
    def estimate(self, groups):
        if PartialState().process_index == 1:
            raise ValueError("anchor exploded")
        return [Reference(text="x", answer="x") for _ in groups]


state = PartialState(cpu=True)  # what TrainingArguments(use_cpu=True) sets up under torchrun
assert state.num_processes == 2, state
groups = [Group(prompt=f"p{i}", completions=["a", "b"], question=f"p{i}") for i in range(4)]
try:
    estimate_all(FailsOnRankOne(), groups)
except RuntimeError as err:
    print(f"rank {state.process_index} raised: {err}", flush=True)
    ok = "anchor exploded" in str(err) and "rank 1" in str(err)
    dist.destroy_process_group()
    sys.exit(0 if ok else 3)
print(f"rank {state.process_index} did not raise", flush=True)
sys.exit(4)
