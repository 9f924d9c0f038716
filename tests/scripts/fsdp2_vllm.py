"""FSDP2 + the anchor in TRL's colocated vLLM engine, for real on CPU: one vLLM engine (vLLM's CPU build) per process,
the policy sharded by FSDP2 over 2 gloo processes. Run by tests/test_vllm_real.py through accelerate's FSDP2 plugin:

    accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        scripts/fsdp2_cpu.py tests/scripts/fsdp2_vllm.py --mode full --model DIR --out DIR

Each rank writes `<out>/rank<r>.json`, in order:
1. the engine's start-up greedy syntheses of 8 fixed groups (pi_0 as vLLM loaded it from disk);
2. real `CaTGRPOTrainer` steps (`cat_anchor_engine: vllm`, pi_0 streamed from the sharded `ref_model` (full) or
   `peft_base` (peft) every step) and how the policy was sharded;
3. TRL's FSDP2 sync of the trained policy into vLLM, then vLLM prompt log-probs of fixed texts beside the sharded
   trained policy's own (a collective forward on every rank) and pi_0's;
4. for every weight source (full: ref_model, copy; peft: peft_base), from an engine holding the trained policy: the
   anchor's greedy syntheses -- with rank 1 given no group at all, which must still take part in every gather.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import resource

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run through runpy too: moving_policy beside it

from moving_policy import GROUPS, TEXTS, build_trainer  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["full", "peft"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=2)
    cli = parser.parse_args()

    import torch
    from torch.distributed.tensor import DTensor
    from vllm import SamplingParams

    from cat_trl.config import CaTGRPOConfig
    from cat_trl.distributed import reshard_fsdp2
    from cat_trl.engines import SamplingSettings
    from cat_trl.engines.vllm_colocated import build_vllm_anchor
    from cat_trl.estimators.prompts import MATH_SYNTHESIS_PROMPT, build_synthesis_prompt

    peft = cli.mode == "peft"
    gpu = torch.cuda.is_available()  # scripts/gpu_smoke_fsdp2.py runs this same file on 2 GPUs
    args = CaTGRPOConfig(
        output_dir=os.path.join(cli.out, "trainer"), use_cpu=not gpu, bf16=False, gradient_checkpointing=False,
        **({"vllm_gpu_memory_utilization": 0.3} if gpu else {}),
        model_init_kwargs={"dtype": "float32"}, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=2048,
        vllm_enable_sleep_mode=False, cat_vllm_llm_kwargs={"enforce_eager": True, "dtype": "float32"},
        num_generations=4, per_device_train_batch_size=6, max_completion_length=16, max_steps=cli.steps,
        learning_rate=5e-2 if peft else 1e-2, beta=0.0 if peft else 0.01, logging_steps=1, save_strategy="no",
        report_to=[], seed=0, cat_anchor_engine="vllm", cat_anchor_weights="peft_base" if peft else "ref_model",
        cat_anchor_temperature=0.0, cat_anchor_max_new_tokens=16, cat_answer_extraction="boxed_or_final",
    )
    trainer = build_trainer(cli.model, args, peft=peft)
    rank = trainer.accelerator.process_index
    vg, engine = trainer.vllm_generation, trainer.cat_engine
    llm = vg.llm
    out: dict = {"rank": rank, "distributed_type": str(trainer.accelerator.distributed_type),
                 "fsdp_version": getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", None),
                 "vllm_generation_class": type(vg).__name__, "anchor_engine": engine.name}

    # 1. start-up greedy syntheses: the engine holds pi_0 as vLLM loaded it from disk.
    conversations = [[{"role": "user", "content": build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, g)}] for g in GROUPS]
    prompt_ids = [engine._prompt_ids(c, None) for c in conversations]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    out["startup"] = [o.outputs[0].text for o in llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params,
                                                               use_tqdm=False)]

    # 2. training with the anchor streamed from the sharded model every step.
    trainer.train()
    params_ = list(trainer.model_wrapped.parameters())
    out["policy_dtensors"] = [sum(isinstance(p, DTensor) for p in params_), len(params_)]
    if trainer.ref_model is not None:
        ref = list(trainer.ref_model.parameters())
        out["ref_dtensors"] = [sum(isinstance(p, DTensor) for p in ref), len(ref)]
    out["steps"] = trainer.state.global_step
    out["anchor_weight_loads"] = engine.weight_loads
    out["syncs"] = vg.policy_syncs
    rows = [h for h in trainer.state.log_history if "cat/anchor_completion_tokens" in h]
    out["anchor_completion_tokens"] = [h["cat/anchor_completion_tokens"] for h in rows]

    # 3. TRL's FSDP2 sync of the trained policy (every rank gathers), then log-probs in vLLM vs the sharded policy.
    vg.sync_weights()
    tok = engine.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    res = llm.generate([{"prompt_token_ids": i} for i in ids], SamplingParams(max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)
    out["policy_vllm"] = [[float(e[t].logprob) for e, t in zip(r.prompt_logprobs[1:], i[1:])]
                          for r, i in zip(res, ids)]

    @torch.no_grad()
    def hf_logprobs(model):
        rows = []
        device = next(model.parameters()).device
        for i in ids:
            x = torch.tensor([i], device=device)
            logp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
            rows.append([float(logp[k - 1, i[k]]) for k in range(1, len(i))])
        return rows

    policy = trainer.model_wrapped
    policy.eval()
    out["policy_hf"] = hf_logprobs(policy)  # FSDP2 forward: a collective on every rank
    # FSDP2 leaves some units unsharded after this forward with no backward (as after an evaluation step). Not
    # resharded here on purpose: the syncs below must do it themselves (else TRL's `full_tensor()` fails).
    from torch.distributed.fsdp import FSDPModule

    out["unsharded_after_forward"] = sum(not isinstance(p, DTensor) for p in policy.parameters())
    assert isinstance(policy, FSDPModule)
    if trainer.ref_model is not None:  # TRL's sharded reference model must be pi_0 on every rank (KL, anchor)
        out["ref_hf"] = hf_logprobs(trainer.ref_model)
        reshard_fsdp2(trainer.ref_model)
    from transformers import AutoModelForCausalLM

    from cat_trl.distributed import full_weights_on_every_rank

    with full_weights_on_every_rank():  # else transformers < 5.18 loads zeros on rank 1 inside this FSDP launch
        pi0 = AutoModelForCausalLM.from_pretrained(cli.model, dtype=torch.float32).to(trainer.accelerator.device)
        out["pi0_hf"] = hf_logprobs(pi0.eval())

    # 4. every weight source, from an engine holding the trained policy; rank 1 synthesizes nothing.
    greedy = SamplingSettings(max_new_tokens=16, temperature=0.0)
    mine = conversations if rank == 0 else []
    out["anchor"] = {}
    for source in (["peft_base"] if peft else ["ref_model", "copy"]):
        vg.sync_weights()
        held = [o.outputs[0].text for o in llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params,
                                                         use_tqdm=False)]
        anchor = build_vllm_anchor(trainer, source, cli.model if source == "copy" else None, "disk")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        texts = [g.text for g in anchor.generate(mine, greedy)]
        out["anchor"][source] = {"policy_held": held, "anchor": texts, "weight_loads": anchor.weight_loads,
                                 "maxrss_kib": [rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]}
    with open(os.path.join(cli.out, f"rank{rank}.json"), "w") as f:
        json.dump(out, f, indent=1)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
