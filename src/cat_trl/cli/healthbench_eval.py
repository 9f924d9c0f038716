"""`cat-trl healthbench-eval`: score a policy on the HealthBench hold-out with the physician rubrics.

    cat-trl healthbench-eval --data openai/healthbench --policy outputs/healthbench-qwen3-4b-cat/checkpoint-100 \\
        --grader-base-url https://api.openai.com/v1 --grader-model gpt-4o-2024-08-06 --output hb.json

The hold-out is the same seeded split the trainer excludes (`--holdout`, `--seed`). Responses come from a local
checkpoint (`--policy`), a served model (`--policy-base-url` + `--policy`) or a JSONL of `{prompt_id, response}`
(`--responses`). The grader is any OpenAI-compatible server (`--grader-base-url`) or a local model
(`--grader-local`). The grader's name is printed beside every score.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ..data.healthbench import HEALTHBENCH_HUB_ID, read_healthbench, split_healthbench
from ..engines.base import SamplingSettings
from ..messages import strip_thinking


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cat-trl healthbench-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=HEALTHBENCH_HUB_ID, help="local HealthBench JSONL or openai/healthbench")
    p.add_argument("--subset", default="all", help="hub file: all | hard | consensus")
    p.add_argument("--holdout", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["eval", "train"], default="eval")
    p.add_argument("--holdout-from", default=None, help="the file training used (e.g. the `all` JSONL): the "
                   "hold-out is drawn from it and intersected with --data (for hard/consensus evaluation)")
    p.add_argument("--max-examples", type=int, default=None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--policy", help="checkpoint path / alias, or the served name with --policy-base-url")
    src.add_argument("--responses", help="JSONL with prompt_id and response")
    p.add_argument("--policy-base-url", default=None)
    p.add_argument("--policy-max-new-tokens", type=int, default=1024)
    p.add_argument("--policy-temperature", type=float, default=0.0)
    p.add_argument("--policy-batch-size", type=int, default=8)
    p.add_argument("--chat-template-kwargs", type=json.loads, default=None,
                   help='JSON, as in training, e.g. \'{"enable_thinking": false}\'')
    p.add_argument("--system-prompt", default=None, help="system message used in training, if any")
    p.add_argument("--device", default=None, help="local models: default cuda when available, else cpu")
    grader = p.add_mutually_exclusive_group(required=True)
    grader.add_argument("--grader-base-url", help="OpenAI-compatible grader server")
    grader.add_argument("--grader-local", help="local grader checkpoint / alias")
    p.add_argument("--grader-model", default=None, help="served grader name (with --grader-base-url)")
    p.add_argument("--grader-api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--grader-template", default=None, help="file with a grader prompt (<<conversation>>, "
                   "<<rubric_item>>), e.g. simple-evals' GRADER_TEMPLATE for leaderboard-identical grading")
    p.add_argument("--grader-max-attempts", type=int, default=5)
    p.add_argument("--grader-max-new-tokens", type=int, default=2048)
    p.add_argument("--grader-concurrency", type=int, default=16)
    p.add_argument("--grader-batch-size", type=int, default=8, help="local grader: sequences per generate call")
    p.add_argument("--bootstrap-samples", type=int, default=1000)
    p.add_argument("--output", default="healthbench_eval.json")
    return p


def _examples(args) -> list[dict]:
    records = read_healthbench(args.data, args.subset)
    if args.holdout_from:
        # The split must be the one training excluded: draw it from the training file, then keep those ids here.
        train, held = split_healthbench(read_healthbench(args.holdout_from), args.holdout, args.seed)
        ids = {r["prompt_id"] for r in (held if args.split == "eval" else train)}
        examples = [r for r in records if r["prompt_id"] in ids]
        if not examples:
            raise ValueError(f"no example of {args.data} is in the {args.split} split of {args.holdout_from}")
    else:
        train, held = split_healthbench(records, args.holdout, args.seed)
        examples = held if args.split == "eval" else train
    return examples[: args.max_examples] if args.max_examples else examples


def _device(args) -> str:
    if args.device:
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _responses(args, examples: list[dict]) -> list[str]:
    if args.responses:
        with open(args.responses) as f:
            given = {str(r["prompt_id"]): r["response"] for r in map(json.loads, filter(str.strip, f))}
        missing = [e["prompt_id"] for e in examples if str(e["prompt_id"]) not in given]
        if missing:
            raise ValueError(f"{args.responses} has no response for {len(missing)} prompt_id(s), e.g. {missing[:3]}")
        return [given[str(e["prompt_id"])] for e in examples]
    sampling = SamplingSettings(max_new_tokens=args.policy_max_new_tokens, temperature=args.policy_temperature)
    if args.policy_base_url:
        from ..engines.openai_engine import OpenAIEngine

        engine = OpenAIEngine(args.policy_base_url, args.policy, max_concurrency=args.grader_concurrency)
    else:
        from ..engines.transformers_engine import TransformersEngine
        from ..models import resolve_model_path

        engine = TransformersEngine.from_pretrained(resolve_model_path(args.policy), device=_device(args),
                                                    batch_size=args.policy_batch_size)
    conversations = []
    for e in examples:
        conv = [dict(m) for m in e["prompt"]]
        if args.system_prompt and conv[0]["role"] != "system":
            conv.insert(0, {"role": "system", "content": args.system_prompt})
        conversations.append(conv)
    return [strip_thinking(g.text) for g in engine.generate(conversations, sampling, args.chat_template_kwargs)]


def _grader(args):
    from ..evaluation.healthbench_grader import (
        GRADER_PROMPT,
        GRADER_SAMPLING,
        HealthBenchGrader,
    )

    if args.grader_base_url:
        if not args.grader_model:
            raise ValueError("--grader-base-url needs --grader-model (the served grader name, e.g. gpt-4o-2024-08-06)")
        from ..engines.openai_engine import OpenAIEngine

        engine = OpenAIEngine(args.grader_base_url, args.grader_model, api_key_env=args.grader_api_key_env,
                              max_concurrency=args.grader_concurrency)
        engine.check()  # an unreachable grader fails now, not after every response was generated
    else:
        from ..engines.transformers_engine import TransformersEngine
        from ..models import resolve_model_path

        engine = TransformersEngine.from_pretrained(resolve_model_path(args.grader_local), device=_device(args),
                                                    batch_size=args.grader_batch_size)
    template = GRADER_PROMPT
    if args.grader_template:
        with open(args.grader_template) as f:
            template = f.read()
    from dataclasses import replace

    return HealthBenchGrader(engine, template=template, max_attempts=args.grader_max_attempts,
                             sampling=replace(GRADER_SAMPLING, max_new_tokens=args.grader_max_new_tokens),
                             bootstrap_samples=args.bootstrap_samples)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..engines.openai_engine import EngineError

    try:
        examples = _examples(args)  # data problems fail before any model loads
        grader = _grader(args)
        responses = _responses(args, examples)
    except (ValueError, FileNotFoundError, EngineError) as err:
        print(f"cat-trl healthbench-eval: {err}", file=sys.stderr)
        return 2
    from ..evaluation.healthbench_grader import format_score

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    responses_path = os.path.splitext(args.output)[0] + ".responses.jsonl"
    with open(responses_path, "w") as f:  # kept even if grading fails: re-grade with --responses
        f.writelines(json.dumps({"prompt_id": e["prompt_id"], "response": r}) + "\n" for e, r in zip(examples, responses))
    try:
        result = grader.grade(examples, responses)
    except EngineError as err:
        print(f"cat-trl healthbench-eval: grading failed ({err}); responses kept in {responses_path}", file=sys.stderr)
        return 1
    result["policy"] = args.policy or args.responses
    for example, response in zip(result["examples"], responses):
        example["response"] = response
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(format_score(result))
    for name, stats in result["metrics"].items():
        if name != "overall_score":
            print(f"  {name:48s} {stats['mean']:.4f} +- {stats['bootstrap_std']:.4f}  (n={stats['n']})")
    if result["grading_failures"]:
        print(f"  {result['grading_failures']} rubric item(s) got no parseable verdict after "
              f"{args.grader_max_attempts} attempts (scored as not met)")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
