"""`cat-trl healthbench-eval`: score a policy on the HealthBench hold-out with the physician rubrics.

    cat-trl healthbench-eval --data openai/healthbench --policy outputs/healthbench-qwen3-4b-cat/checkpoint-100 \\
        --grader-base-url https://api.openai.com/v1 --grader-model gpt-4o-2024-08-06 --output hb.json

The hold-out is the same seeded split the trainer excludes (`--holdout`, `--seed`). Responses come from a local
checkpoint (`--policy`), a served model (`--policy-base-url` + `--policy`) or a JSONL of `{prompt_id, response}`
(`--responses`). The grader is any OpenAI-compatible server (`--grader-base-url`) or a local model
(`--grader-local`). The grader's name is printed beside every score. Flags take either spelling (`--grader-base-url`,
`--grader_base_url`); `--config FILE.yaml` reads the same settings as `key: value` lines (flags override them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.healthbench import (
    HEALTHBENCH_FILES,
    HEALTHBENCH_HUB_ID,
    read_healthbench,
    split_healthbench,
)
from ..engines.base import SamplingSettings
from ..messages import strip_thinking
from .common import (
    CliParser,
    GraderArguments,
    check_at_least_one,
    check_fields,
    resolve_engine_kind,
    resolve_device,
)


@dataclass
class HealthBenchEvalArguments(GraderArguments):
    """Everything `cat-trl healthbench-eval` needs (`--flag-name value`, or `flag_name: value` in a --config YAML)."""

    # The data keys mean what `CaTScriptArguments`' do in a training recipe (data ~ dataset_name, subset ~
    # healthbench_subset, holdout ~ healthbench_holdout, seed ~ healthbench_seed, system_prompt), but keep this
    # command's flags: `--data`, `--holdout`, ... are its documented (and tested) command line, and a TrlParser can only
    # take CaTScriptArguments whole -- ~20 more keys (synthetic_*, prompt_instruction, prompts_per_step, dataset_*) that
    # mean nothing here, since this command reads the official JSONL itself rather than building a training dataset.
    data: str = field(default=HEALTHBENCH_HUB_ID, metadata={"help": "Local HealthBench JSONL or openai/healthbench."})
    subset: str = field(default="all", metadata={"help": "Hub file (openai/healthbench only).",
                                                 "choices": list(HEALTHBENCH_FILES)})
    holdout: int = field(default=500, metadata={"help": "Examples held out (seeded), as training's "
                                                        "healthbench_holdout."})
    seed: int = field(default=0, metadata={"help": "Seed of the hold-out split, as training's healthbench_seed."})
    split: str = field(default="eval", metadata={"help": "`eval` = the hold-out.", "choices": ["eval", "train"]})
    holdout_from: str | None = field(default=None, metadata={
        "help": "The file training used (e.g. the `all` JSONL): the hold-out is drawn from it and intersected with "
        "--data (for hard/consensus evaluation)."})
    max_examples: int | None = None
    # responses: from a model, or given
    policy: str | None = field(default=None, metadata={
        "help": "Checkpoint path / alias, or the served name with --policy-base-url."})
    responses: str | None = field(default=None, metadata={"help": "JSONL with prompt_id and response (instead of "
                                                                  "--policy)."})
    policy_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server serving --policy."})
    policy_max_new_tokens: int = 1024
    policy_temperature: float = 0.0
    policy_batch_size: int = field(default=8, metadata={"help": "Local policy: sequences per generate call "
                                                                 "(transformers)."})
    engine: str = field(default="auto", metadata={
        "help": "What decodes a local policy: `vllm` (a standalone vllm.LLM), `transformers`, `auto`: vllm where vLLM "
                "is installed. With a local grader on the same GPU, give vLLM a share: vllm_llm_kwargs "
                "{gpu_memory_utilization: 0.5}.", "choices": ["auto", "vllm", "transformers"]})
    vllm_llm_kwargs: dict[str, Any] | None = field(default=None, metadata={
        "help": "Further vllm.LLM arguments of the vllm engine."})
    chat_template_kwargs: dict[str, Any] | None = field(default=None, metadata={
        "help": 'As in training, JSON or YAML, e.g. \'{"enable_thinking": false}\'.'})
    system_prompt: str | None = field(default=None, metadata={"help": "System message used in training, if any."})
    device: str = field(default="auto", metadata={"help": "Local models; `auto`: cuda when available, else cpu."})
    # the grader: grader_base_url, grader_model, grader_local, ... are GraderArguments' (shared with `cat-trl eval`)
    grader_template: str | None = field(default=None, metadata={
        "help": "File with a grader prompt (<<conversation>>, <<rubric_item>>), e.g. simple-evals' GRADER_TEMPLATE "
        "for leaderboard-identical grading."})
    grader_max_attempts: int = 5
    grader_max_new_tokens: int = 2048
    grader_batch_size: int = field(default=8, metadata={"help": "Local grader: sequences per generate call."})
    bootstrap_samples: int = 1000
    output: str = "healthbench_eval.json"

    def __post_init__(self):
        if bool(self.policy) == bool(self.responses):
            raise ValueError("set one of --policy (a model to generate the responses) or --responses (a JSONL of them)")
        if not (self.grader_base_url or self.grader_local):
            raise ValueError("set --grader-base-url (+ --grader-model) or --grader-local")
        super().__post_init__()
        if self.policy_base_url and not self.policy:
            raise ValueError("--policy-base-url needs --policy (the served model name)")
        check_fields(self)
        kind = resolve_engine_kind(self.engine)  # an explicit vllm without vLLM installed is refused here
        if self.vllm_llm_kwargs and (kind != "vllm" or self.policy_base_url or self.responses):
            raise ValueError("vllm_llm_kwargs is set but no local policy decodes with vLLM (engine: vllm, a --policy "
                             "checkpoint, no --policy-base-url)")
        check_at_least_one(self, "max_examples", "policy_max_new_tokens", "policy_batch_size", "grader_max_attempts",
                           "grader_max_new_tokens", "grader_batch_size", "bootstrap_samples")


def make_parser() -> CliParser:
    return CliParser([HealthBenchEvalArguments], "healthbench-eval")


def parse_args(argv: Sequence[str]) -> HealthBenchEvalArguments:
    """The arguments from `[--config FILE.yaml] [--flag value ...]`; problems are one-line `CliError`s."""
    (args,) = make_parser().parse(argv)
    return args


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


def resolve_policy(policy: str) -> tuple[str, dict | None]:
    """(checkpoint to score, best-checkpoint record): a training output directory with `best_checkpoint.json`
    (`healthbench_validation`) resolves to the checkpoint with the best validation score."""
    from ..callbacks import BEST_CHECKPOINT_FILE

    record_path = os.path.join(policy, BEST_CHECKPOINT_FILE)
    if not os.path.isfile(record_path):
        return policy, None
    with open(record_path) as f:
        record = json.load(f)
    checkpoint = record.get("checkpoint")
    if not checkpoint or not os.path.isdir(checkpoint):
        raise ValueError(f"{record_path} names checkpoint {checkpoint!r}, which does not exist (moved, or deleted by "
                         "save_total_limit): pass the checkpoint directory as --policy")
    return checkpoint, record


def _responses(args, examples: list[dict]) -> tuple[list[str], dict | None]:
    """The policy's response to every example, and the engine that decoded them (`{"kind", "name"}`; None: read from
    --responses): the result file says which engine produced what it scores."""
    if args.responses:
        with open(args.responses) as f:
            given = {str(r["prompt_id"]): r["response"] for r in map(json.loads, filter(str.strip, f))}
        missing = [e["prompt_id"] for e in examples if str(e["prompt_id"]) not in given]
        if missing:
            raise ValueError(f"{args.responses} has no response for {len(missing)} prompt_id(s), e.g. {missing[:3]}")
        return [given[str(e["prompt_id"])] for e in examples], None
    from ..engines.factory import EngineSpec, build_engine

    sampling = SamplingSettings(max_new_tokens=args.policy_max_new_tokens, temperature=args.policy_temperature)
    if args.policy_base_url:  # the policy server gets the grader's request concurrency (there is no separate key)
        spec = EngineSpec("openai", weights="server", model=args.policy, base_url=args.policy_base_url,
                          max_concurrency=args.grader_concurrency)
    elif resolve_engine_kind(args.engine) == "vllm":
        spec = EngineSpec("vllm", model=resolve_policy(args.policy)[0], llm_kwargs=args.vllm_llm_kwargs)
    else:
        spec = EngineSpec("transformers", model=resolve_policy(args.policy)[0], device=resolve_device(args.device),
                          batch_size=args.policy_batch_size)
    engine = build_engine(spec)
    conversations = []
    for e in examples:
        conv = [dict(m) for m in e["prompt"]]
        if args.system_prompt and conv[0]["role"] != "system":
            conv.insert(0, {"role": "system", "content": args.system_prompt})
        conversations.append(conv)
    generations = engine.generate(conversations, sampling, args.chat_template_kwargs)
    return [strip_thinking(g.text) for g in generations], {"kind": spec.kind,
                                                           "name": getattr(engine, "name", type(engine).__name__)}


def _grader(args):
    from ..rubrics.healthbench_grader import (
        GRADER_PROMPT,
        GRADER_SAMPLING,
        HealthBenchGrader,
    )

    engine = args.grader_engine(args.device, args.grader_batch_size)  # a server is checked now, before generation
    template = GRADER_PROMPT
    if args.grader_template:
        with open(args.grader_template) as f:
            template = f.read()
    from dataclasses import replace

    return HealthBenchGrader(engine, template=template, max_attempts=args.grader_max_attempts,
                             sampling=replace(GRADER_SAMPLING, max_new_tokens=args.grader_max_new_tokens),
                             bootstrap_samples=args.bootstrap_samples)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        make_parser().print_settings(__doc__)
        return 0
    from ..engines.openai_engine import EngineError

    try:
        args = parse_args(argv)
        examples = _examples(args)  # data problems fail before any model loads
        grader = _grader(args)
        responses, policy_engine = _responses(args, examples)
    except (ValueError, FileNotFoundError, EngineError) as err:  # ValueError includes the CliError of parse_args
        print(f"cat-trl healthbench-eval: {err}", file=sys.stderr)
        return 2
    from ..rubrics.healthbench_grader import format_score

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
    result["policy_engine"] = policy_engine
    if args.policy and not args.policy_base_url:
        checkpoint, best = resolve_policy(args.policy)
        if best is not None:  # which checkpoint early stopping chose, and by which validation metric
            result["policy_checkpoint"], result["early_stopping"] = checkpoint, best
    for example, response in zip(result["examples"], responses):
        example["response"] = response
    from ..evaluation.provenance import provenance

    result["config"], result["provenance"] = dataclasses.asdict(args), provenance()
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
