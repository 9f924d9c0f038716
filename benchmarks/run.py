"""CaT's overhead over plain GRPO, measured as ratios within one run (interleaved repetitions: machines are noisy).

    python benchmarks/run.py                 # full form: embedded SmolLM2-135M, G in {4, 8}, 4 prompts per step
    python benchmarks/run.py --quick         # reduced form for CI: tiny model, fewer repetitions
    python benchmarks/run.py --only reward,judge --output bench.json

Sections (each prints a table; all numbers land in one JSON):

* `step`   : CaT-RL step time / plain GRPO step time (oracle-label reward), same model, G, lengths, prompts per
             step. Rollouts are forced to full length (`min_new_tokens`) so both sides decode the same tokens; the
             floor is about 1 + 1/G of decoding plus the anchor's prefill. Also: anchor engine calls per step.
* `anchor` : synthesis throughput (groups/s) vs groups per engine call (1, 4, 16) -- why all of a step's
             syntheses go to the engine in one call.
* `reward` : verifiable reward throughput (completions/s, one process) on MATH-500-like outputs: string-equal,
             equivalent-but-differently-written and wrong answers; `string` vs `equivalent` (math-verify) matching.
* `judge`  : judge cost per step, `generate` vs `logprob` mode (and `logprob` without the shared-prefix KV cache),
             n = 5 criteria x G = 8 x prompts per step
             (calls, tokens, seconds), and its ratio to the rollout time of the same step.
* `memory` : extra *weight* bytes each anchor mode adds over plain GRPO (PEFT base, reference model, copy).

Runs unchanged on a GPU machine (pass --device cuda; everything else is the same code path).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

SECTIONS = ("step", "anchor", "reward", "judge", "memory")
#: reward variants: (match mode, numeric fast path, early rejection); the last two are the optimisations, each
#: switched off alone and both together
REWARD_VARIANTS = {"string": ("string", True, True), "equivalent": ("equivalent", True, True),
                   "equivalent_no_numeric_fast_path": ("equivalent", False, True),
                   "equivalent_no_probe_rejection": ("equivalent", True, False),
                   "equivalent_neither": ("equivalent", False, False)}
#: judge modes; logprob_no_prefix_sharing is the log-prob judge with the shared-prefix KV cache off (the
#: optimisation's before/after, interleaved in the same run)
JUDGE_MODES = ("generate", "logprob", "logprob_no_prefix_sharing")
REPO = Path(__file__).resolve().parents[1]


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


class _StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def oracle_reward(completions, gold_answer, **kwargs):
    """Plain GRPO's reward in the comparison: 1 if the boxed answer equals the gold label (what CaT replaces)."""
    from cat_trl.answers import extract_boxed

    return [1.0 if extract_boxed(c[0]["content"] if isinstance(c, list) else c) == str(g) else 0.0
            for c, g in zip(completions, gold_answer)]


def _dataset(n: int):
    from cat_trl.data import load_synthetic_math

    return load_synthetic_math(n, seed=0, max_steps=1, instruction="Put your final answer within \\boxed{}.")


def _grpo_args(out: str, g: int, prompts: int, length: int, steps: int, device: str, **cat):
    from cat_trl.config import CaTGRPOConfig

    return CaTGRPOConfig(
        output_dir=out, use_cpu=device == "cpu", bf16=False, num_generations=g,
        per_device_train_batch_size=g * prompts, max_completion_length=length, max_steps=steps,
        generation_kwargs={"min_new_tokens": length}, activation_checkpointing=False, logging_steps=1,
        save_strategy="no", report_to=[], learning_rate=1e-6, seed=0, cat_log_groups=False, disable_tqdm=True,
        model_init_kwargs={"dtype": "float32"},
        cat_anchor_max_new_tokens=length, **cat,
    )


def bench_step(model: str, gs, prompts: int, length: int, steps: int, reps: int, device: str, tmp: str) -> dict:
    from trl import GRPOTrainer

    from cat_trl.trainer import CaTGRPOTrainer

    out = {}
    for g in gs:
        times = {"plain": [], "cat": []}
        anchor_calls, anchor_seconds = [], []
        for rep in range(reps):  # interleaved: plain, cat, plain, cat, ...
            for kind in ("plain", "cat"):
                args = _grpo_args(f"{tmp}/step-{kind}-{g}-{rep}", g, prompts, length, steps, device)
                timer = _StepTimer()
                data = _dataset(prompts * steps)
                if kind == "plain":
                    trainer = GRPOTrainer(model=model, reward_funcs=[oracle_reward], args=args, train_dataset=data,
                                          callbacks=[timer])
                else:
                    trainer = CaTGRPOTrainer(model=model, args=args, train_dataset=data, callbacks=[timer])
                _quiet(trainer).train()
                times[kind] += timer.times[1:]  # the first step warms caches and kernels
                if kind == "cat":
                    hist = [h for h in trainer.state.log_history if "cat/anchor_seconds" in h][1:]
                    anchor_seconds += [h["cat/anchor_seconds"] for h in hist]
                    anchor_calls.append(trainer.cat_engine.stats.calls / max(trainer.state.global_step, 1))
                del trainer
                gc.collect()
        ratio = _median(times["cat"]) / _median(times["plain"])
        out[str(g)] = {
            "plain_step_s": _median(times["plain"]),
            "cat_step_s": _median(times["cat"]),
            "ratio": ratio,
            # spread: a rerun's ratio should land inside it (the medians of 3 x 3 steps moved 1.22 -> 1.34 between
            # two machines once; report the range, not only the median)
            "plain_step_range_s": [min(times["plain"]), max(times["plain"])],
            "cat_step_range_s": [min(times["cat"]), max(times["cat"])],
            "ratio_range": [min(times["cat"]) / max(times["plain"]), max(times["cat"]) / min(times["plain"])],
            "floor_decoding": 1 + 1 / g,
            "anchor_s": _median(anchor_seconds),
            "anchor_calls_per_step": _median(anchor_calls),
            "target_ratio": 1.25,
            "met": ratio <= 1.25,
            "samples": {k: len(v) for k, v in times.items()},
        }
    return out


def _quiet(trainer):
    """No per-step log printing: the benchmark prints its own tables."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _engine(model: str, device: str):
    from cat_trl.engines import TransformersEngine

    return TransformersEngine.from_pretrained(model, dtype="float32", device=device)


def _rollouts(g: int, n: int, length_words: int) -> list[list[str]]:
    import random

    rng = random.Random(0)
    groups = []
    for k in range(n):
        groups.append([
            " ".join(rng.choice(["we", "add", "the", "two", "numbers", "so", "total", "is", "then"])
                     for _ in range(length_words)) + f" The final answer is \\boxed{{{k + rng.randint(0, 2)}}}."
            for _ in range(g)
        ])
    return groups


def bench_anchor(model: str, g: int, length: int, reps: int, device: str, sizes=(1, 4, 16)) -> dict:
    from cat_trl.engines import SamplingSettings
    from cat_trl.estimators import EstimatorSpec, Group, build_estimator

    engine = _engine(model, device)
    est = build_estimator(EstimatorSpec("synthesis", SamplingSettings(max_new_tokens=length, temperature=1.0, seed=0)),
                          engine)
    groups = [Group(prompt="q", completions=c) for c in _rollouts(g, max(sizes), length // 2)]
    secs = {k: [] for k in sizes}
    for _ in range(reps):
        for k in sizes:  # interleaved
            start = time.perf_counter()
            for i in range(0, len(groups), k):
                est.estimate(groups[i : i + k])
            secs[k].append(time.perf_counter() - start)
    base = _median(secs[1])
    return {str(k): {"groups_per_s": len(groups) / _median(secs[k]), "speedup_vs_1": base / _median(secs[k])}
            for k in sizes}


def _math_outputs(n: int, g: int, integers: bool = False):
    """MATH-500 answers (or, with `integers`, the built-in word problems' integer answers) rendered as completions:
    the reference, equal strings, an equivalent but differently written answer, and wrong ones (a different number,
    a symbolic expression, the negation) -- the mix a CaT step sees."""
    path = REPO.parent / "shared" / "data" / "math500.jsonl"
    answers = []
    if path.exists() and not integers:
        answers = [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]
    answers = (answers or [str(3 * i + 1) for i in range(n)])[:n]
    completions, references = [], []
    for i, a in enumerate(answers):
        equivalent = f"{a}.0" if a.lstrip("-").isdigit() else ("\\frac{1}{2}" if a == "0.5" else f"{{{a}}}")
        variants = [a, a, f"{a} ", equivalent, f"{i + 7}", "x+1", a, f"-{a}"][:g]
        ref = f"Therefore, the final answer is: $\\boxed{{{a}}}$. I hope it is correct."
        for v in variants:
            completions.append([{"role": "assistant", "content": f"Some reasoning.\nThe answer is $\\boxed{{{v}}}$."}])
            references.append(ref)
    return completions, references


def bench_reward(n: int, g: int, reps: int) -> dict:
    from cat_trl.rewards import CaTMathReward

    from cat_trl.answers import match as answers
    from cat_trl.answers import normalise

    out = {}
    CaTMathReward(match="equivalent")(*_math_outputs(2, g))  # imports math-verify/sympy outside the timing
    variants = REWARD_VARIANTS
    for mix in ("math500", "integers"):
        completions, references = _math_outputs(n, g, integers=mix == "integers")
        secs = {v: [] for v in variants}
        stats = {}
        for _ in range(reps):
            for variant, (mode, numeric, probe) in variants.items():  # interleaved; cold caches (new answers)
                answers._parse.cache_clear()
                normalise._normalize.cache_clear()
                answers._PROBE_REJECTION = probe
                reward = CaTMathReward(match=mode)
                reward.matcher.numeric_fast_path = numeric
                start = time.perf_counter()
                reward(completions, references)
                secs[variant].append(time.perf_counter() - start)
                stats[variant] = dict(reward.matcher.stats)
        out[mix] = {v: {"completions_per_s": len(completions) / _median(secs[v]), "matcher_outcomes": stats[v]}
                    for v in variants}
        answers._PROBE_REJECTION = True
        for name, variant in (("numeric_fast_path", "equivalent_no_numeric_fast_path"),
                              ("probe_rejection", "equivalent_no_probe_rejection"), ("both", "equivalent_neither")):
            out[mix][f"{name}_speedup"] = _median(secs[variant]) / _median(secs["equivalent"])
        out[mix]["completions"] = len(completions)
    out["target_completions_per_s"] = 2000
    out["met"] = all(out[mix]["equivalent"]["completions_per_s"] >= 2000 for mix in ("math500", "integers"))
    return out


def bench_judge(model: str, g: int, prompts: int, length: int, reps: int, device: str, n_criteria: int = 5) -> dict:
    from cat_trl.engines import SamplingSettings
    from cat_trl.rubrics import Judge
    from cat_trl.rubrics.judge import JudgeItem

    engine = _engine(model, device)
    groups = _rollouts(g, prompts, length // 2)
    criteria = [f"The response mentions step {k} of the calculation." for k in range(n_criteria)]
    items = [JudgeItem([{"role": "user", "content": f"Question {p}"}], r, c)
             for p, grp in enumerate(groups) for r in grp for c in criteria]
    conversations = [[{"role": "user", "content": f"Question {p}"}] for p in range(prompts) for _ in range(g)]
    res = {"pairs": len(items)}
    modes = JUDGE_MODES
    rollout_s, mode_s, mode_stats = [], {m: [] for m in modes}, {}
    for _ in range(reps):
        start = time.perf_counter()  # the same step's rollouts: G x prompts, full length
        engine.generate(conversations, SamplingSettings(max_new_tokens=length, temperature=1.0, seed=0))
        rollout_s.append(time.perf_counter() - start)
        for mode in modes:
            judge = Judge(engine, mode=mode.split("_")[0])
            engine.share_prefixes = mode != "logprob_no_prefix_sharing"
            before = engine.stats.snapshot()
            start = time.perf_counter()
            judge.judge(items)
            mode_s[mode].append(time.perf_counter() - start)
            after = engine.stats.snapshot()
            mode_stats[mode] = {k: after[k] - before[k] for k in ("calls", "sequences", "prompt_tokens",
                                                                 "completion_tokens")}
    engine.share_prefixes = True
    res["rollout_s"] = _median(rollout_s)
    for mode in modes:
        res[mode] = {**mode_stats[mode], "seconds": _median(mode_s[mode]),
                     "vs_rollout_time": _median(mode_s[mode]) / res["rollout_s"]}
    res["target_logprob_vs_rollout"] = 0.5
    res["met"] = res["logprob"]["vs_rollout_time"] <= 0.5
    res["prefix_sharing_speedup"] = res["logprob_no_prefix_sharing"]["seconds"] / res["logprob"]["seconds"]
    return res


def _weight_bytes(*modules) -> int:
    seen, total = set(), 0
    for module in modules:
        if module is None:
            continue
        for t in list(module.parameters()) + list(module.buffers()):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
    return total


def bench_memory(model: str, device: str, tmp: str) -> dict:
    from peft import LoraConfig
    from trl import GRPOTrainer

    from cat_trl.trainer import CaTGRPOTrainer

    data = _dataset(8)
    out = {}
    cases = {
        "peft_base": ({"cat_anchor_weights": "peft_base"}, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])),
        "ref_model": ({"cat_anchor_weights": "ref_model", "beta": 0.01}, None),
        "copy": ({"cat_anchor_weights": "copy"}, None),
    }
    for mode, (cat, peft) in cases.items():
        beta = cat.pop("beta", 0.0)
        sizes = {}
        for kind in ("plain", "cat"):
            args = _grpo_args(f"{tmp}/mem-{mode}-{kind}", 4, 2, 8, 1, device, beta=beta,
                              **(cat if kind == "cat" else {}))
            if kind == "plain":
                trainer = GRPOTrainer(model=model, reward_funcs=[oracle_reward], args=args, train_dataset=data,
                                      peft_config=peft)
                sizes[kind] = _weight_bytes(trainer.model, getattr(trainer, "ref_model", None))
            else:
                trainer = CaTGRPOTrainer(model=model, args=args, train_dataset=data, peft_config=peft)
                with trainer.cat_engine._provider() as anchor:
                    sizes[kind] = _weight_bytes(trainer.model, getattr(trainer, "ref_model", None), anchor)
            del trainer
            gc.collect()
        out[mode] = {"plain_weight_mb": sizes["plain"] / 2**20, "cat_weight_mb": sizes["cat"] / 2**20,
                     "extra_mb": (sizes["cat"] - sizes["plain"]) / 2**20}
    out["met"] = out["peft_base"]["extra_mb"] == 0 and out["ref_model"]["extra_mb"] == 0
    return out


def _table(title: str, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [f"\n== {title}"]
    for k, r in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _f(x, d=2):
    return f"{x:.{d}f}" if isinstance(x, float) else str(x)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced form (tiny model, fewer repetitions) for CI")
    parser.add_argument("--model", default=None, help="model path or alias (default: embedded; tiny with --quick)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="benchmarks/results.json")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    if bad := [s for s in sections if s not in SECTIONS]:
        parser.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    import logging
    import tempfile
    import warnings

    from transformers.utils import logging as hf_logging

    from cat_trl.embedded_model import resolve_model_path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny test model is a test helper
    from tiny_model import build_tiny_model

    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)  # e.g. "all rewards None" from a random-weight tiny anchor
    warnings.filterwarnings("ignore")

    torch.manual_seed(0)
    model = args.model or ("tiny" if args.quick else "smollm2-135m-instruct")
    model = str(build_tiny_model()) if model == "tiny" else resolve_model_path(model)
    q = args.quick
    gs = (4,) if q else (4, 8)
    length = 16 if q else 48
    reps = 2 if q else 3
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device,
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "model": model, "quick": q, "prompts_per_step": args.prompts, "completion_tokens": length}
    with tempfile.TemporaryDirectory() as tmp:
        if "step" in sections:
            result["step"] = bench_step(model, gs, args.prompts, length, 3 if q else 4, reps, args.device, tmp)
            rows = [("G", "plain s/step", "CaT s/step", "ratio", "ratio range", "target", "1+1/G", "anchor s",
                     "anchor calls/step")]
            rows += [(g, _f(v["plain_step_s"]), _f(v["cat_step_s"]), _f(v["ratio"]),
                      f"{_f(v['ratio_range'][0])}-{_f(v['ratio_range'][1])}", "<= 1.25",
                      _f(v["floor_decoding"]), _f(v["anchor_s"]), _f(v["anchor_calls_per_step"], 1))
                     for g, v in result["step"].items()]
            print(_table("step time: CaT-RL / plain GRPO (oracle reward)", rows))
        if "anchor" in sections:
            result["anchor"] = bench_anchor(model, 8, length, reps, args.device, (1, 4) if q else (1, 4, 16))
            rows = [("groups/call", "groups/s", "speed-up vs 1")]
            rows += [(k, _f(v["groups_per_s"]), _f(v["speedup_vs_1"])) for k, v in result["anchor"].items()]
            print(_table("anchor synthesis throughput vs groups per engine call (G=8)", rows))
        if "reward" in sections:
            result["reward"] = bench_reward(100 if q else 500, 8, reps)
            r = result["reward"]
            rows = [("answers", "match", "completions/s", "parsed+checked", "target")]
            for mix in ("math500", "integers"):
                for v in REWARD_VARIANTS:
                    o = r[mix][v]["matcher_outcomes"]
                    calls = 0 if v == "string" else sum(o.get(k, 0) for k in ("verified", "rejected", "timeout",
                                                                                   "error", "unparseable"))
                    rows.append((mix, v, _f(r[mix][v]["completions_per_s"], 0), calls, ">= 2000"))
            print(_table("verifiable reward throughput (one process; speed-up of both fast paths: "
                         + ", ".join(f"{m} {r[m]['both_speedup']:.2f}x" for m in ("math500", "integers"))
                         + ")", rows))
        if "judge" in sections:
            result["judge"] = bench_judge(model, 8, args.prompts if not q else 2, length, reps, args.device)
            j = result["judge"]
            rows = [("mode", "calls", "sequences", "prompt tok", "gen tok", "seconds", "x rollout time")]
            rows += [(m, j[m]["calls"], j[m]["sequences"], j[m]["prompt_tokens"], j[m]["completion_tokens"],
                      _f(j[m]["seconds"]), _f(j[m]["vs_rollout_time"]))
                     for m in JUDGE_MODES]
            print(_table(f"judge cost per step ({j['pairs']} pairs = 5 criteria x G=8 x prompts; rollouts "
                         f"{_f(j['rollout_s'])} s; target logprob <= 0.5x; shared-prefix cache "
                         f"{_f(j['prefix_sharing_speedup'])}x)", rows))
        if "memory" in sections:
            result["memory"] = bench_memory(model, args.device, tmp)
            rows = [("anchor", "plain MB", "CaT MB", "extra MB")]
            rows += [(m, _f(v["plain_weight_mb"], 1), _f(v["cat_weight_mb"], 1), _f(v["extra_mb"], 1))
                     for m, v in result["memory"].items() if isinstance(v, dict)]
            print(_table("weight memory by anchor mode (target: 0 extra for peft_base and ref_model)", rows))
    from cat_trl.evaluation.provenance import provenance

    result["config"], result["provenance"] = vars(args), provenance()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
