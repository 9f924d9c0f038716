"""`cat-trl eval CONFIG.yaml [--key value ...]`: test-time CaT against the selection baselines, on one pool.

    cat-trl eval yaml/eval/quickstart-cpu.yaml                      # embedded model, MATH-500 subset, CPU
    cat-trl eval yaml/eval/math500-qwen3-4b.yaml --num_generations "[1, 8]"

The YAML is flat, like a training recipe, and parsed the same way (`trl.TrlParser`): the dataset and prompt keys are
exactly `cat-trl train`'s (`CaTScriptArguments`: `dataset_name`, `dataset_max_samples`, `prompt_instruction`,
`system_prompt`, ...; here `dataset_train_split` defaults to `test`), the rest are the `EvalConfig` fields below, and
an `env:` block sets environment variables (over the shell's, as in training). `--key value` overrides a key; list
and dict values are YAML (`--num_generations "[1, 8]"`). Unknown keys are an error. Writes `eval_results.json`,
`eval_report.md` and `eval_accuracy.png` to `output_dir` (and, with `report_to: wandb`, the same numbers, table and
plot to W&B; the project is `WANDB_PROJECT`, default `cat-trl`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..answers import EXTRACTIONS, MATCH_MODES
from ..evaluation.testtime import METHODS
from ..config.script_args import CaTScriptArguments
from .common import (
    CliError,
    CliParser,
    GraderArguments,
    check_at_least_one,
    check_fields,
    resolve_device,
    resolve_engine_kind,
)

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig(GraderArguments):
    """Everything `cat-trl eval` needs besides the dataset keys (shared with `cat-trl train`)."""

    model_name_or_path: str = field(default="smollm2-135m-instruct",
                                    metadata={"help": "The policy: a local checkpoint, a hub id or an alias."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype.",
                                                 "choices": ["auto", "bfloat16", "float16", "float32"]})
    device: str = field(default="auto", metadata={"help": "`auto`: cuda when available, else cpu."})
    num_generations: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={
        "help": "The G values every method is evaluated at (one pool of max(G) rollouts per question)."})
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"choices": list(METHODS)})
    # policy sampling (the pool); the paper uses each model's recommended settings
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = field(default=0, metadata={"help": "0 = off."})
    min_p: float | None = None
    max_new_tokens: int = 1024
    seed: int = 0
    chat_template_kwargs: dict[str, Any] | None = field(
        default=None, metadata={"help": "e.g. {enable_thinking: false}"})
    # synthesis (anchor = the same model); unset values follow the policy's sampling
    anchor_max_new_tokens: int | None = field(default=None, metadata={"help": "Unset: max_new_tokens."})
    anchor_temperature: float | None = field(default=None, metadata={"help": "Unset: temperature."})
    synthesis_prompt: str | None = field(default=None, metadata={
        "help": "Override the synthesis prompt (one prompt for both synthesis methods): needs {responses}; "
        "{question} only without the question-blind `synthesis` method."})
    # Self-BoN's choice: greedy by default (a selection, not a sample)
    selector_max_new_tokens: int = 256
    selector_temperature: float = 0.0
    # scoring (verifiable tasks)
    answer_extraction: str = field(default="boxed", metadata={"choices": list(EXTRACTIONS)})
    match: str = field(default="equivalent", metadata={"help": "`string` or `equivalent` (math-verify).",
                                                       "choices": list(MATCH_MODES)})
    match_timeout: float = 5.0
    # open-ended tasks (HealthBench): the grader_* keys are GraderArguments' (a local grader uses device, batch_size)
    single_rollouts: int | None = field(default=None, metadata={
        "help": "Rollouts per question graded for Single (unset: all max(G))."})
    # execution
    engine: str = field(default="auto", metadata={
        "help": "What decodes the pool and runs every method: `vllm` (a standalone vllm.LLM; micro-batching is "
                "vLLM's), `transformers` (batched generate), `auto`: vllm where vLLM is installed, else transformers.",
        "choices": ["auto", "vllm", "transformers"]})
    vllm_llm_kwargs: dict[str, Any] | None = field(default=None, metadata={
        "help": "Further vllm.LLM arguments of the vllm engine, e.g. {gpu_memory_utilization: 0.8}."})
    batch_size: int | None = field(default=None, metadata={"help": "Sequences per engine micro-batch "
                                                                    "(transformers)."})
    questions_per_call: int = field(default=8, metadata={"help": "Questions per pool-sampling call (one progress "
                                                                 "step)."})
    max_context: int | None = None
    progress: bool = True
    # outputs
    output_dir: str = "outputs/eval"
    report_to: str = field(default="none", metadata={"choices": ["none", "wandb"]})
    run_name: str | None = None

    def __post_init__(self):
        check_fields(self)
        gs = self.num_generations
        if not gs or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in gs):
            raise ValueError(f"num_generations must be a non-empty list of positive integers, got {gs!r}")
        if not self.methods:
            raise ValueError("methods must be a non-empty list")
        check_at_least_one(self, "max_new_tokens", "selector_max_new_tokens", "questions_per_call",
                           "anchor_max_new_tokens", "batch_size", "max_context", "single_rollouts")
        super().__post_init__()
        listed = [m for m in ("synthesis", "synthesis_with_question") if m in self.methods]
        if self.synthesis_prompt is not None and listed:
            from ..estimators.prompts import QUESTION, validate_template

            # One prompt serves both variants: it needs {responses}, and question-blind synthesis must not get
            # {question} (synthesis_with_question prepends the question when the prompt has no slot for it).
            validate_template(self.synthesis_prompt, include_question=True)
            if "synthesis" in listed and QUESTION in self.synthesis_prompt:
                raise ValueError(
                    "synthesis_prompt contains {question}, but method `synthesis` is question-blind (the paper's "
                    "anchor). Remove {question} (`synthesis_with_question` prepends the question itself) or list "
                    "only synthesis_with_question."
                )

    def engine_spec(self, device: str):
        """The policy's engine (the pool and every method's anchor/selector calls)."""
        from ..engines.factory import EngineSpec

        kind = resolve_engine_kind(self.engine)
        if kind == "vllm" and device == "cpu" and self.device not in (None, "", "auto"):
            from ..trl_compat import vllm_runs_on_cpu

            if not vllm_runs_on_cpu():  # vLLM runs on its own platform (the GPU); `device: cpu` asks for the CPU
                if self.engine == "vllm":
                    raise ValueError("engine: vllm with device: cpu, but the installed vLLM is a GPU build; set "
                                     "engine: transformers (or device: auto)")
                kind = "transformers"
        if kind == "vllm":
            return EngineSpec("vllm", model=self.model_name_or_path, dtype=self.dtype, max_context=self.max_context,
                              seed=self.seed, llm_kwargs=self.vllm_llm_kwargs)
        if self.vllm_llm_kwargs:
            raise ValueError("vllm_llm_kwargs is set but the engine is transformers: set engine: vllm (or remove "
                             "vllm_llm_kwargs)")
        return EngineSpec("transformers", model=self.model_name_or_path, dtype=self.dtype, device=device,
                          batch_size=self.batch_size, max_context=self.max_context)

    def sampling(self):
        from ..engines.base import SamplingSettings

        return SamplingSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                top_k=self.top_k, min_p=self.min_p, seed=self.seed)


#: keys that are gone, and what replaces them
REMOVED = {
    # It duplicated WANDB_PROJECT (and, passed to wandb.init, overrode the recipes' `env: WANDB_PROJECT`).
    "wandb_project": "set WANDB_PROJECT in the config's `env:` block instead (as for `cat-trl train`)",
}


def make_parser() -> CliParser:
    parser = CliParser((EvalConfig, CaTScriptArguments), "eval", removed=REMOVED)
    parser.set_defaults(dataset_train_split="test")  # MATH-500's only split; HealthBench's hold-out
    return parser


def load_config(path: str, overrides: Sequence[str] = ()) -> tuple[EvalConfig, CaTScriptArguments]:
    """(EvalConfig, CaTScriptArguments) from a flat YAML plus `--key value` overrides (list and dict values in YAML
    syntax, e.g. `--num_generations "[1, 8]"`). Every problem is a one-line `CliError` (a ValueError)."""
    return make_parser().parse(["--config", path, *overrides])


def _rows(script_args, open_ended: bool) -> list[dict[str, Any]]:
    import json

    from ..data import GOLD_COLUMN, SOURCE_ROW_COLUMN, load_train_dataset

    dataset = load_train_dataset(script_args, source_rows=True)  # rows name their source line: the data is shuffled
    if not open_ended and GOLD_COLUMN not in dataset.column_names:
        raise ValueError(f"{script_args.dataset_name}: no gold answers; `cat-trl eval` scores methods against gold "
                         "answers (set dataset_gold_column to the column that holds them).")
    rows = []
    for row in dataset:
        out = {"prompt": row["prompt"], "question": row.get("question"), "problem_id": row.get("problem_id")}
        if open_ended:
            conversation = [m for m in row["prompt"] if not (script_args.system_prompt and m["role"] == "system")]
            out["example"] = {"prompt": conversation, "rubrics": json.loads(row["gold_rubrics"]),
                              "example_tags": row.get("example_tags") or [], "prompt_id": row.get("problem_id")}
        else:
            if row.get(GOLD_COLUMN) in (None, ""):
                raise ValueError(f"{row[SOURCE_ROW_COLUMN]} has no gold answer; `cat-trl eval` scores methods "
                                 "against gold answers (set dataset_gold_column, or drop the row).")
            out["gold_answer"] = str(row["gold_answer"])
        rows.append(out)
    if not rows:
        raise ValueError(f"{script_args.dataset_name}: no questions to evaluate")
    return rows


def _scorer(config: EvalConfig, open_ended: bool, matcher, extract, device: str):
    from ..evaluation.testtime import AnswerScorer, RubricGraderScorer

    if not open_ended:
        return AnswerScorer(matcher, extract)
    from ..rubrics.healthbench_grader import HealthBenchGrader

    # run() refused a HealthBench config without a grader; a server is checked here, before any rollout is sampled
    return RubricGraderScorer(HealthBenchGrader(config.grader_engine(device, config.batch_size)))


class EvalConfigError(ValueError):
    """A config or data problem found before any model loads (printed as one line by `main`)."""


def run(config: EvalConfig, script_args) -> dict[str, Any]:
    """Everything but the CLI: validate, load data, sample the pool, evaluate, write reports. Returns the result."""
    from dataclasses import replace

    from ..answers import AnswerMatcher, get_extractor
    from ..data import resolve_format
    from ..engines.factory import build_engine
    from ..estimators.prompts import MATH_SYNTHESIS_PROMPT
    from ..evaluation.report import write_reports
    from ..evaluation.testtime import build_methods, evaluate_pool, sample_pool
    from ..messages import strip_thinking
    from ..rubrics.prompts import FREEFORM_SYNTHESIS_PROMPT
    from .recipe import check_model_source

    try:  # everything that can be wrong with the config or the data surfaces here, before any model loads
        open_ended = resolve_format(script_args.dataset_name, script_args.dataset_format) == "healthbench"
        if open_ended and (bad := [m for m in config.methods if m == "majority"]):
            raise ValueError(f"method(s) {bad} need final answers; remove them for HealthBench")
        matcher = AnswerMatcher(config.match, config.match_timeout)
        extract = get_extractor(config.answer_extraction)
        if open_ended and not (config.grader_base_url or config.grader_local):
            raise ValueError("HealthBench is scored by the physician-rubric grader: set grader_base_url + grader_model "
                             "(e.g. GPT-4o, as in the paper) or grader_local (a local model, for smoke tests).")
        rows = _rows(script_args, open_ended)
        check_model_source(config.model_name_or_path)
        if open_ended and config.grader_local:
            check_model_source(config.grader_local, "grader_local")
        device = resolve_device(config.device)
        spec = config.engine_spec(device)
        scorer = _scorer(config, open_ended, matcher, extract, device)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise EvalConfigError(str(err)) from err
    engine = build_engine(spec)
    sampling = config.sampling()
    gs = sorted(set(config.num_generations))
    start = time.perf_counter()
    items = sample_pool(engine, rows, max(gs), sampling, chat_template_kwargs=config.chat_template_kwargs,
                        questions_per_call=config.questions_per_call, progress=config.progress,
                        postprocess=strip_thinking)
    pool_seconds = time.perf_counter() - start
    anchor = replace(sampling, max_new_tokens=config.anchor_max_new_tokens or config.max_new_tokens,
                     temperature=config.temperature if config.anchor_temperature is None else config.anchor_temperature)
    selector = replace(sampling, max_new_tokens=config.selector_max_new_tokens, temperature=config.selector_temperature)
    template = config.synthesis_prompt or (FREEFORM_SYNTHESIS_PROMPT if open_ended else MATH_SYNTHESIS_PROMPT)
    methods = build_methods(config.methods, engine, answer_extraction=None if open_ended else config.answer_extraction,
                            matcher=matcher,
                            anchor_sampling=anchor, selector_sampling=selector, synthesis_template=template,
                            max_context_tokens=config.max_context, chat_template_kwargs=config.chat_template_kwargs,
                            seed=config.seed)
    result = evaluate_pool(items, methods, gs, scorer, matcher, extract if not open_ended else None,
                           single_rollouts=config.single_rollouts, progress=config.progress)
    result["meta"] = {
        "model": config.model_name_or_path,
        "dataset": script_args.dataset_name,
        "n_questions": len(items),
        "num_generations": gs,
        "methods": config.methods,
        "verifiable": not open_ended,
        "scorer": scorer.name,
        "sampling": sampling.to_dict(),
        "anchor_sampling": anchor.to_dict(),
        "selector_sampling": selector.to_dict(),
        "seed": config.seed,
        "device": device,
        "engine": engine.name,
        "engine_kind": spec.kind,
        "pool_seconds": pool_seconds,
        "pool_generated_tokens": sum(sum(i.rollout_tokens) for i in items),
        "config": asdict(config),
        "data": {k: v for k, v in asdict(script_args).items() if v is not None},
    }
    paths = write_reports(result, config.output_dir)
    result["meta"]["outputs"] = {k: str(v) for k, v in paths.items()}
    if config.report_to == "wandb":
        _log_wandb(result, config, paths)
    return result


def _log_wandb(result: dict[str, Any], config: EvalConfig, paths) -> None:
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "cat-trl", name=config.run_name, job_type="eval",
                     dir=config.output_dir, config={**result["meta"]["config"], "data": result["meta"]["data"]})
    table = wandb.Table(columns=["method", "G", "accuracy", "se", "generations", "generated_tokens"])
    for method, by_g in result["accuracy"].items():
        for g, acc in by_g.items():
            cost = result["cost"][method][g]
            table.add_data(method, int(g), acc["accuracy"], acc["se"], cost["generations"], cost["generated_tokens"])
            run.summary[f"eval/{method}/G{g}/accuracy"] = acc["accuracy"]
    for g, entry in result.get("analyses", {}).items():
        for key, value in entry.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    run.summary[f"eval/analysis/G{g}/{key}/{k}"] = v
            else:
                run.summary[f"eval/analysis/G{g}/{key}"] = value
    run.log({"eval/accuracy": table, "eval/accuracy_vs_G": wandb.Image(str(paths["png"]))})
    run.save(str(paths["json"]), base_path=str(paths["json"].parent), policy="now")
    run.finish()


def summary_lines(result: dict[str, Any]) -> list[str]:
    g_max = str(max(result["meta"]["num_generations"]))
    lines = [f"accuracy at G={g_max} ({result['meta']['n_questions']} questions, {result['meta']['scorer']}):"]
    for method, by_g in result["accuracy"].items():
        acc = by_g[g_max]
        lines.append(f"  {method:<24} {acc['accuracy']:.3f} ± {acc['se']:.3f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or "-h" in argv or "--help" in argv:
        make_parser().print_settings(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, script_args = load_config(argv[0], argv[1:])
    except (CliError, OSError) as err:
        print(f"cat-trl eval: {err}", file=sys.stderr)
        return 2
    try:
        result = run(config, script_args)
    except EvalConfigError as err:
        print(f"cat-trl eval: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(result)))
    print("wrote " + ", ".join(result["meta"]["outputs"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
