"""The standalone vLLM engine (`EngineSpec("vllm", model=...)`) against the transformers engine on the embedded model,
both float32, in one process (vLLM allows one `LLM` per process). Run by tests/test_vllm_engine.py, which asserts on
the JSON written here:

    python tests/scripts/vllm_standalone.py --math500 ../shared/data/math500.jsonl --out result.json

Measured: greedy texts of both engines on real MATH-500 prompts; for every pair that differs, the log-probs both engines
give the *same* continuation (transformers' text); continuation log-probs of given texts; next-token log-probs of a
yes/no judge question; seeded sampling (G identical prompts in one call, the same call twice), also over more prompt
tokens than one scheduler step takes.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

N_PROBLEMS = 6
MAX_NEW = 48


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--math500", required=True)
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()

    from cat_trl.engines import SamplingSettings
    from cat_trl.engines.factory import EngineSpec, build_engine

    with open(cli.math500) as f:
        rows = [json.loads(line) for line in f][:N_PROBLEMS]
    conversations = [[{"role": "user", "content": r["problem"] + "\nPut your final answer within \\boxed{}."}]
                     for r in rows]
    greedy = SamplingSettings(max_new_tokens=MAX_NEW, temperature=0.0)
    vllm = build_engine(EngineSpec("vllm", model="smollm2-135m-instruct", dtype="float32", max_context=2048))
    hf = build_engine(EngineSpec("transformers", model="smollm2-135m-instruct", dtype="float32", device="cpu"))
    out: dict = {"engine_type": type(vllm).__name__, "engine_name": vllm.name, "max_context": vllm.max_context_tokens}

    v_texts = [g.text for g in vllm.generate(conversations, greedy)]
    t_gens = hf.generate(conversations, greedy)
    t_texts = [g.text for g in t_gens]
    out["greedy"] = {"vllm": v_texts, "transformers": t_texts}
    # Where the texts differ: both engines score transformers' continuation (same tokens), position by position.
    differ = [i for i in range(len(rows)) if v_texts[i] != t_texts[i]]
    cont_conv = [conversations[i] for i in differ]
    cont = [t_texts[i] for i in differ]
    out["differing"] = differ
    out["differing_logprobs"] = {"vllm": vllm.logprobs(cont_conv, cont) if differ else [],
                                 "transformers": hf.logprobs(cont_conv, cont) if differ else []}

    texts = ["The answer is $\\boxed{4}$.", "I think it is 7, so \\boxed{7}.", "No idea."]
    conv = [conversations[0]] * len(texts)
    out["logprobs"] = {"vllm": vllm.logprobs(conv, texts), "transformers": hf.logprobs(conv, texts)}

    judge = [[{"role": "user", "content": f"Is {n} an even number? Answer yes or no."}] for n in (4, 7, 10, 13)]
    out["next_token"] = {"vllm": vllm.next_token_logprobs(judge, ("yes", "no")),
                         "transformers": hf.next_token_logprobs(judge, ("yes", "no")),
                         "exact_requests": vllm.stats.extra.get("next_token_exact_requests", 0)}

    seeded = SamplingSettings(max_new_tokens=24, temperature=1.0, seed=3)
    first = [g.text for g in vllm.generate([conversations[0]] * 4, seeded)]
    again = [g.text for g in vllm.generate([conversations[0]] * 4, seeded)]
    other = [g.text for g in vllm.generate([conversations[0]] * 4,
                                          SamplingSettings(max_new_tokens=24, temperature=1.0, seed=4))]
    out["seeded"] = {"first": first, "again": again, "other_seed": other}
    # a seeded call whose prompts together exceed one scheduler step's token budget: vLLM would chunk a prefill,
    # which kills its CPU engine for a seeded request; the engine cuts the call into waves instead
    long = [[{"role": "user", "content": "Summarize these problems:\n" + "\n".join(r["problem"] for r in rows * 2)}]]
    long_seeded = SamplingSettings(max_new_tokens=8, temperature=1.0, seed=5)
    waves_before = vllm.stats.extra.get("seeded_waves", 0)
    long_first = vllm.generate(long * 10, long_seeded)
    out["long_seeded"] = {"prompt_tokens": [g.prompt_tokens for g in long_first],
                          "completion_tokens": [g.completion_tokens for g in long_first],
                          "first": [g.text for g in long_first],
                          "again": [g.text for g in vllm.generate(long * 10, long_seeded)],
                          "waves": vllm.stats.extra.get("seeded_waves", 0) - waves_before,
                          "budget": vllm.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens}
    stop = SamplingSettings(max_new_tokens=MAX_NEW, temperature=0.0, stop=(".",))
    out["stop"] = {"vllm": [g.text for g in vllm.generate(conversations[:2], stop)],
                   "transformers": [g.text for g in hf.generate(conversations[:2], stop)]}
    hi = [[{"role": "user", "content": "Say hi."}]]
    out["min_tokens"] = {
        "free": vllm.generate(hi, SamplingSettings(max_new_tokens=40, temperature=0.0))[0].completion_tokens,
        "forced": vllm.generate(hi, SamplingSettings(max_new_tokens=40, min_new_tokens=30,
                                                     temperature=0.0))[0].completion_tokens}
    out["stats"] = vllm.stats.snapshot()
    with open(cli.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
