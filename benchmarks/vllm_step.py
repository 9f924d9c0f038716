"""CaT-RL with vLLM, measured as ratios within one run (run it in the vLLM environment: `make bench-vllm`).

    python benchmarks/vllm_step.py                       # G=8, 4 prompts per step, 48 tokens, 2 x 2 processes
    python benchmarks/vllm_step.py --reps 3 --steps 6 --output benchmarks/results-vllm-cpu.json
    python benchmarks/vllm_step.py --length 256 --synthesis-length 256     # a realistic rollout / synthesis ratio
    .venv/bin/python benchmarks/vllm_step.py --rollouts transformers       # the same without vLLM (HF generate)

Both arms use TRL's colocated vLLM engine for rollouts (`use_vllm: true, vllm_mode: colocate`), the same model,
prompts, G, lengths and seeds. Rollouts are forced to full length with vLLM's `min_tokens`, and so is the anchor's
synthesis (`--synthesis-length`, default the rollout length: an anchor allowed to stop early would understate its
share and vary from run to run):

* `plain`: `GRPOTrainer` with a label reward (what CaT replaces);
* `cat`  : `CaTGRPOTrainer`, synthesis estimator, anchor pi_0 time-shared in the same engine (`cat_anchor_engine: vllm`).

With `--rollouts transformers` both arms decode with transformers `generate` (`use_vllm: false`, what `make bench`'s
step section measures, there in one process) and the anchor is pi_0 in-process (the default `cat_anchor_engine`);
there is no weight sync, and no vLLM needed.

vLLM supports one engine per process, so each arm runs in its own process; arms alternate (plain, cat, plain, ...) so
that machine noise hits both; `--reps` processes per arm (default 2). The first step of every process is dropped
(warm-up). Printed: median step time of each arm with its interquartile range, their ratio (target <= 1.25), the
step split for both arms into rollouts (TRL's `_generate`, less the weight sync inside it), the log-prob passes
(decoding end to the reward call), the reward (CaT: the anchor), backward/optimizer (the rest) and the weight sync;
the anchor's own split into loading pi_0's weights and generation; and vLLM vs transformers rollout throughput on the
same prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

REPO = Path(__file__).resolve().parents[1]


def run_arm(arm: str, g: int, prompts: int, length: int, steps: int, out: str, synthesis: int | None = None,
            rollouts: str = "vllm") -> None:
    """One process, one engine: `steps` training steps of one arm; writes timings to `out` (JSON)."""
    import torch
    from trl import GRPOTrainer

    sys.path.insert(0, str(Path(__file__).parent))
    from run import _StepTimer as StepTimer  # benchmarks/run.py: the same per-step wall clock

    from cat_trl.config import CaTGRPOConfig
    from cat_trl.data import load_synthetic_math
    from cat_trl.embedded_model import resolve_model_path
    from cat_trl.trainer import CaTGRPOTrainer
    from cat_trl.trl_compat import extra_vllm_llm_kwargs, install_weight_sync

    model = resolve_model_path("smollm2-135m-instruct")
    in_vllm = rollouts == "vllm"
    engine_args = (dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=4096, vllm_enable_sleep_mode=False,
                        cat_vllm_llm_kwargs={"enforce_eager": True, "dtype": "float32"}, cat_anchor_engine="vllm",
                        cat_anchor_weights="copy", generation_kwargs={"min_tokens": length})
                   if in_vllm else dict(use_vllm=False, generation_kwargs={"min_new_tokens": length}))
    args = CaTGRPOConfig(
        output_dir=os.path.join(os.path.dirname(out), f"trainer-{arm}"), use_cpu=True, bf16=False,
        gradient_checkpointing=False, model_init_kwargs={"dtype": "float32"}, num_generations=g,
        per_device_train_batch_size=g * prompts, max_completion_length=length, max_steps=steps,
        logging_steps=1, save_strategy="no", report_to=[],
        learning_rate=1e-6, seed=0, disable_tqdm=True, cat_log_groups=False,
        cat_anchor_max_new_tokens=synthesis or length, **engine_args,
    )
    data = load_synthetic_math(prompts * steps, seed=0, max_steps=1,
                               instruction="Put your final answer within \\boxed{}.")
    timer = StepTimer()
    if arm == "plain":
        from run import oracle_reward  # plain GRPO's label reward, as in benchmarks/run.py

        # The same engine settings as the CaT arm (float32, eager: TRL builds the engine, cat-trl passes the kwargs)
        # and the same CPU weight sync -- what a plain TRL user on vLLM-CPU would use.
        with extra_vllm_llm_kwargs(args.cat_vllm_llm_kwargs if in_vllm else None):
            trainer = GRPOTrainer(model=model, reward_funcs=[oracle_reward], args=args, train_dataset=data,
                                  callbacks=[timer])
        if in_vllm:
            install_weight_sync(trainer.vllm_generation)  # TRL's colocate sync on vLLM-CPU (see trl_compat)
    else:
        from dataclasses import replace

        trainer = CaTGRPOTrainer(model=model, args=args, train_dataset=data, callbacks=[timer])
        forced = synthesis or length  # the synthesis may not stop before this length either
        trainer.cat_estimator.sampling = replace(trainer.cat_estimator.sampling, max_new_tokens=forced,
                                                 min_new_tokens=forced)
    vg = getattr(trainer, "vllm_generation", None) if in_vllm else None
    split = {"policy_sync_s": [], "pi0_load_s": [], "generate_s": [], "reward_s": [], "logprob_s": []}
    marks: dict[str, float] = {}

    def timed(fn, key):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                split[key].append(time.perf_counter() - start)
        return wrapper

    if vg is not None:
        vg.sync_weights = timed(vg.sync_weights, "policy_sync_s")
    if arm == "cat" and in_vllm:
        trainer.cat_engine._load = timed(trainer.cat_engine._load, "pi0_load_s")
    generate, rewards = trainer._generate, trainer._calculate_rewards

    def timed_generate(*a, **k):
        out = timed(generate, "generate_s")(*a, **k)
        marks["decoded"] = time.perf_counter()
        return out

    def timed_rewards(*a, **k):
        split["logprob_s"].append(time.perf_counter() - marks.pop("decoded"))
        return timed(rewards, "reward_s")(*a, **k)

    trainer._generate, trainer._calculate_rewards = timed_generate, timed_rewards
    trainer.train()
    result_lengths = [h["completions/mean_length"] for h in trainer.state.log_history
                      if "completions/mean_length" in h]
    if vg is None:  # transformers rollouts decode with the policy itself: nothing to sync
        split["policy_sync_s"] = [0.0] * len(timer.times)
    result = {"arm": arm, "step_s": timer.times[1:], **{k: v[1:] for k, v in split.items()},
              "rollout_mean_length": statistics.median(result_lengths) if result_lengths else None}
    # TRL syncs the policy inside `_generate`, once per step in both arms (the CaT arm's anchor marks the policy stale,
    # plain GRPO's optimizer step does); the rest of the step is backward + optimizer
    result["rollout_s"] = [g_ - s_ for g_, s_ in zip(result["generate_s"], result["policy_sync_s"])]
    result["backward_s"] = [st - g_ - lp - rw for st, g_, lp, rw in zip(result["step_s"], result["generate_s"],
                                                                          result["logprob_s"], result["reward_s"])]
    if arm == "cat":
        hist = [h for h in trainer.state.log_history if "cat/anchor_seconds" in h][1:]
        result["anchor_s"] = [h["cat/anchor_seconds"] for h in hist]
        result["anchor_calls_per_step"] = trainer.cat_engine.stats.calls / max(trainer.state.global_step, 1)
        stats = trainer.cat_engine.stats  # the synthesis really was forced to its length (what the ratio assumes)
        result["anchor_tokens_per_synthesis"] = stats.completion_tokens / max(stats.sequences, 1)
    elif in_vllm:  # rollout throughput, vLLM vs transformers, same prompts and token counts
        from vllm import SamplingParams

        tok = trainer.processing_class
        texts = [tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
                 for row in data.select(range(prompts))]
        prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        batch = [p for p in prompt_ids for _ in range(g)]
        params = SamplingParams(temperature=1.0, max_tokens=length, min_tokens=length, seed=0)
        start = time.perf_counter()
        vg.llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        vllm_s = time.perf_counter() - start
        policy = trainer.accelerator.unwrap_model(trainer.model).eval()
        width = max(len(p) for p in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in batch])[:, None]).long()
        start = time.perf_counter()
        with torch.no_grad():
            policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                            max_new_tokens=length, min_new_tokens=length, pad_token_id=tok.pad_token_id)
        hf_s = time.perf_counter() - start
        tokens = len(batch) * length
        result["rollouts"] = {"sequences": len(batch), "tokens": tokens, "vllm_tok_per_s": tokens / vllm_s,
                              "transformers_tok_per_s": tokens / hf_s, "vllm_speedup": hf_s / vllm_s}
    with open(out, "w") as f:
        json.dump(result, f)


def _summary(xs: list[float]) -> dict:
    if not xs:
        return {}
    q1, _, q3 = statistics.quantiles(xs, n=4) if len(xs) > 1 else (xs[0], xs[0], xs[0])
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": min(xs), "max": max(xs), "n": len(xs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--g", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--synthesis-length", type=int, default=None, help="forced synthesis length (default: "
                                                                            "--length)")
    parser.add_argument("--steps", type=int, default=5, help="steps per process (the first is dropped)")
    parser.add_argument("--reps", type=int, default=2, help="processes per arm, interleaved")
    parser.add_argument("--rollouts", choices=["vllm", "transformers"], default="vllm",
                        help="who decodes the rollouts (and hosts the anchor): TRL's colocated vLLM or transformers")
    parser.add_argument("--output", default=None)
    parser.add_argument("--arm", choices=["plain", "cat"], help=argparse.SUPPRESS)
    parser.add_argument("--arm-out", help=argparse.SUPPRESS)
    cli = parser.parse_args(argv)
    if cli.arm:
        run_arm(cli.arm, cli.g, cli.prompts, cli.length, cli.steps, cli.arm_out, cli.synthesis_length, cli.rollouts)
        return 0

    runs: dict[str, list[dict]] = {"plain": [], "cat": []}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(cli.reps):
            for arm in ("plain", "cat"):
                out = os.path.join(tmp, f"{arm}-{rep}.json")
                cmd = [sys.executable, __file__, "--arm", arm, "--arm-out", out, "--g", str(cli.g), "--prompts",
                       str(cli.prompts), "--length", str(cli.length), "--steps", str(cli.steps), "--rollouts", cli.rollouts,
                       *(["--synthesis-length", str(cli.synthesis_length)] if cli.synthesis_length else [])]
                print(f"[{time.time() - started:6.0f}s] {arm} #{rep + 1}", flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
                    return proc.returncode
                with open(out) as f:
                    runs[arm].append(json.load(f))

    def pool(arm, key):
        return [x for r in runs[arm] for x in r.get(key, [])]

    plain, cat = _summary(pool("plain", "step_s")), _summary(pool("cat", "step_s"))
    ratio = cat["median"] / plain["median"]
    rollouts = [r["rollouts"] for r in runs["plain"] if "rollouts" in r]
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "setting": {"G": cli.g, "prompts_per_step": cli.prompts, "completion_tokens": cli.length,
                    "synthesis_tokens": cli.synthesis_length or cli.length,
                    "steps_per_process": cli.steps, "processes_per_arm": cli.reps, "rollouts": cli.rollouts,
                    "dtype": "float32", **({"enforce_eager": True} if cli.rollouts == "vllm" else {})},
        "plain_step_s": plain, "cat_step_s": cat,
        "ratio": ratio, "ratio_range": [cat["min"] / plain["max"], cat["max"] / plain["min"]],
        "target_ratio": 1.25, "met": ratio <= 1.25,
        "anchor_calls_per_step": statistics.median(r["anchor_calls_per_step"] for r in runs["cat"]),
        "anchor_tokens_per_synthesis": statistics.median(r["anchor_tokens_per_synthesis"] for r in runs["cat"]),
        "rollout_mean_length": {arm: statistics.median(r["rollout_mean_length"] for r in runs[arm])
                                for arm in ("plain", "cat") if all(r["rollout_mean_length"] for r in runs[arm])},
        "anchor_split_s": {"pi0_load": _summary(pool("cat", "pi0_load_s")),
                           # the anchor's engine call less loading pi_0's weights into the engine (vLLM only)
                           "generation": _summary([a - b for a, b in zip(
                               pool("cat", "anchor_s"), pool("cat", "pi0_load_s") or [0.0] * len(pool("cat", "anchor_s")))]),
                           "policy_sync_cat": _summary(pool("cat", "policy_sync_s")),
                           "policy_sync_plain": _summary(pool("plain", "policy_sync_s"))},
        "step_split_s": {arm: {part: _summary(pool(arm, f"{part}_s"))
                               for part in ("rollout", "logprob", "reward", "backward", "policy_sync")}
                         for arm in ("plain", "cat")},
        "rollouts": ({k: statistics.median(r[k] for r in rollouts)
                      for k in ("vllm_tok_per_s", "transformers_tok_per_s", "vllm_speedup")}
                     if all("rollouts" in r for r in runs["plain"]) else None),
        "wall_s": time.time() - started,
    }
    s = result["anchor_split_s"]
    where = "vLLM colocate" if cli.rollouts == "vllm" else "transformers generate"
    print(f"\nCaT-RL vs plain GRPO, both {where} (G={cli.g}, {cli.prompts} prompts/step, {cli.length} tokens, "
          f"synthesis {cli.synthesis_length or cli.length})")
    print(f"  plain step  {plain['median']:.2f} s  (IQR {plain['q1']:.2f}-{plain['q3']:.2f}, n={plain['n']})")
    print(f"  CaT step    {cat['median']:.2f} s  (IQR {cat['q1']:.2f}-{cat['q3']:.2f}, n={cat['n']})")
    for arm in ("plain", "cat"):
        parts = result["step_split_s"][arm]
        print(f"  {arm:5s} split: " + ", ".join(f"{k} {v['median']:.2f} s" for k, v in parts.items() if v))
    print(f"  ratio       {ratio:.3f}  (range {result['ratio_range'][0]:.2f}-{result['ratio_range'][1]:.2f}; "
          f"target <= 1.25: {'met' if result['met'] else 'MISSED'})")
    load = f"pi_0 load {s['pi0_load']['median']:.2f} s, " if s["pi0_load"] else ""
    print(f"  anchor per step: {load}generation {s['generation']['median']:.2f} s; policy sync "
          f"{s['policy_sync_cat']['median']:.2f} s (CaT) vs {s['policy_sync_plain']['median']:.2f} s (plain); "
          f"anchor calls/step {result['anchor_calls_per_step']:.0f}")
    r = result["rollouts"]
    if r:
        print(f"  rollouts: vLLM {r['vllm_tok_per_s']:.0f} tok/s vs transformers {r['transformers_tok_per_s']:.0f} "
              f"tok/s ({r['vllm_speedup']:.2f}x)")
    print(f"  wall {result['wall_s']:.0f} s")
    from cat_trl.evaluation.provenance import provenance

    result["config"], result["provenance"] = vars(cli), provenance()
    if cli.output:
        Path(cli.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
