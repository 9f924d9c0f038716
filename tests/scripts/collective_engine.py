"""Run under torchrun (2 processes, gloo). Rank 0 has 5 conversations, rank 1 none, micro-batches of 2: a collective
engine must run 3 generate / forward micro-batches on BOTH ranks (rank 1 pads with no-ops) and return correct results
on rank 0. Prints one JSON line per rank."""

import json
import sys

import torch
from accelerate import PartialState

from cat_trl.engines import SamplingSettings, TransformersEngine

state = PartialState(cpu=True)
rank = state.process_index
path = sys.argv[1]
engine = TransformersEngine.from_pretrained(path, dtype=torch.float32, batch_size=2, collective=True)
model_calls = {"generate": 0, "forward": 0}
with engine._model() as model:
    original_generate, original_forward = model.generate, model.forward

    def counting_generate(*a, **k):
        assert k.get("synced_gpus") is True
        model_calls["generate"] += 1
        return original_generate(*a, **k)

    model.generate = counting_generate

convs = [[{"role": "user", "content": f"Count to {i}."}] for i in range(5)] if rank == 0 else []
outs = engine.generate(convs, SamplingSettings(max_new_tokens=6 if rank == 0 else 3, temperature=0))
scores = engine.next_token_logprobs(convs, ("yes", "no"))
lps = engine.logprobs(convs, ["one two"] * len(convs))
single = TransformersEngine.from_pretrained(path, dtype=torch.float32)  # non-collective reference on rank 0
if rank == 0:
    ref = single.generate(convs, SamplingSettings(max_new_tokens=6, temperature=0))
    same = [a.text for a in outs] == [b.text for b in ref]
else:
    same = outs == []
print(json.dumps({"rank": rank, "generate_calls": model_calls["generate"], "noop": engine.stats.extra.get("noop_batches"),
                  "results": len(outs), "scores": len(scores), "logprobs": len(lps), "same": same}), flush=True)
