"""CaT-RL entry point (open-r1 style: thin script, everything in the YAML recipe).

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m cat_trl.cli.train --config yaml/X.yaml
    cat-trl train yaml/X.yaml [--key value ...]

Order matters: arguments are parsed and checked, and the dataset is built and checked, *before* any model loads, so
a bad recipe fails in seconds with one clear message instead of after minutes of weight loading.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from transformers import TrainerCallback  # noqa: E402
from trl import ModelConfig, TrlParser, get_peft_config  # noqa: E402

from ..config import CaTGRPOConfig, check_removed_settings  # noqa: E402
from ..engines.anchor_weights import resolve_anchor_weights  # noqa: E402
from ..labels import GOLD_COLUMN, GOLD_RUBRICS_COLUMN  # noqa: E402
from ..script_args import CaTScriptArguments  # noqa: E402

logger = logging.getLogger("cat_trl")


class ConfigError(ValueError):
    """A recipe problem found before training starts."""


class _Parser(TrlParser):
    """TrlParser whose argument errors are one line (argparse would print the whole 250-key usage first)."""

    def error(self, message):
        raise ConfigError(f"{message} (`cat-trl train --help` lists every setting)")


def make_parser() -> TrlParser:
    return _Parser((CaTScriptArguments, CaTGRPOConfig, ModelConfig), prog="cat-trl train CONFIG.yaml")


def _cli_value(argv: list[str], key: str):
    """The last `--key value` / `--key=value` in argv, or None."""
    found = None
    for i, tok in enumerate(argv):
        if tok == f"--{key}" and i + 1 < len(argv):
            found = argv[i + 1]
        elif tok.startswith(f"--{key}="):
            found = tok.split("=", 1)[1]
    return found


def read_recipe(argv: list[str]) -> dict:
    """The `--config` recipe as a mapping ({} without one); unreadable recipes are one-line `ConfigError`s."""
    from .recipe import RecipeError, load_mapping

    config_path = _cli_value(argv, "config")
    if config_path is None:
        return {}
    try:
        return load_mapping(config_path)
    except RecipeError as err:
        raise ConfigError(str(err)) from None


def read_checked_recipe(argv: list[str]) -> dict:
    """`read_recipe`, refusing removed settings (in the recipe or on the command line) with their replacement."""
    recipe = read_recipe(argv)
    try:
        check_removed_settings([*recipe, *(a[2:].split("=", 1)[0] for a in argv if a.startswith("--"))])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return recipe


def apply_prompts_per_step(argv: list[str], recipe: dict | None = None) -> list[str]:
    """`prompts_per_step: P` (recipe or CLI) fixes the prompts per generation batch whatever G is: it derives
    `per_device_train_batch_size` from P, G, WORLD_SIZE and steps_per_generation *before* TRL validates the batch
    (a sweep over G would otherwise hit TRL's divisibility check for every G the base batch does not fit)."""
    from .sweep import SweepError, derive_batch

    recipe = read_recipe(argv) if recipe is None else recipe
    value = lambda key, default=None: _cli_value(argv, key) or recipe.get(key, default)  # noqa: E731
    prompts = value("prompts_per_step")
    if prompts in (None, "None", "null"):
        return argv
    if value("generation_batch_size") not in (None, "None", "null"):
        raise ConfigError("prompts_per_step and generation_batch_size both set: prompts_per_step derives the batch")
    spg = value("steps_per_generation") or value("gradient_accumulation_steps", 1)
    try:
        batch = derive_batch(int(value("num_generations", 8)), int(prompts), int(os.environ.get("WORLD_SIZE", 1)),
                             int(spg))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"prompts_per_step, num_generations and steps_per_generation must be integers ({err})") \
            from None
    except SweepError as err:
        raise ConfigError(str(err)) from err
    return [*argv, f"--per_device_train_batch_size={batch}"]


def parse_args(argv: Sequence[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        make_parser().print_help()  # every setting with its default and help, like `trl grpo --help`
        raise SystemExit(0)
    recipe = read_checked_recipe(argv)
    argv = apply_prompts_per_step(argv, recipe)
    try:
        return make_parser().parse_args_and_config(args=argv)
    except (ValueError, TypeError) as err:  # TrlParser's unknown keys, GRPOConfig/CaTGRPOConfig __post_init__ checks
        raise ConfigError(str(err).splitlines()[0] if str(err) else type(err).__name__) from err


def check_recipe(script_args: CaTScriptArguments, args: CaTGRPOConfig, model_args: ModelConfig, dataset) -> None:
    """Cross-argument checks that need the dataset but not the model."""
    if not model_args.model_name_or_path:
        raise ConfigError("model_name_or_path is required (a local path, a hub id, or the alias smollm2-135m-instruct)")
    prompts_per_batch = args.generation_batch_size // args.num_generations
    if len(dataset) < prompts_per_batch:
        raise ConfigError(
            f"The dataset has {len(dataset)} prompts but one generation batch needs {prompts_per_batch} "
            f"(generation_batch_size={args.generation_batch_size} / num_generations={args.num_generations}); TRL "
            "would silently train 0 steps. Add prompts or lower per_device_train_batch_size / steps_per_generation."
        )
    try:
        source = resolve_anchor_weights(args.cat_anchor_weights, is_peft=bool(model_args.use_peft),
                                        has_ref_model=args.beta > 0 and not model_args.use_peft,
                                        sync_ref_model=args.sync_ref_model)
        if args.cat_anchor_engine == "vllm" and not args.cat_anchor_engine_auto:  # `auto` falls back to transformers
            from ..engines.vllm_engine import check_vllm_anchor_sharding, launch_fsdp_version

            check_vllm_anchor_sharding(source, launch_fsdp_version(args))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if GOLD_RUBRICS_COLUMN in dataset.column_names and not args.open_ended:
        raise ConfigError("This dataset is open-ended (HealthBench): final-answer rewards do not apply. Set "
                          "cat_reward: rubric (CaT), judge_equivalence or physician_rubric (oracle baseline).")
    if args.cat_reward == "physician_rubric" and GOLD_RUBRICS_COLUMN not in dataset.column_names:
        raise ConfigError("cat_reward=physician_rubric needs physician rubrics (a HealthBench dataset).")
    if args.cat_gold_column in dataset.column_names and args.cat_gold_column in ("prompt", "completion"):
        raise ConfigError(f"cat_gold_column={args.cat_gold_column!r} cannot be a TRL input column")
    if args.cat_gold_column != GOLD_COLUMN and args.cat_gold_column not in dataset.column_names:
        # the loaders always write gold answers to `gold_answer`; a renamed cat_gold_column would find nothing and
        # the diagnostics would silently disappear
        raise ConfigError(
            f"cat_gold_column={args.cat_gold_column!r} is not a column of the training data "
            f"({', '.join(dataset.column_names)}). The loaders write gold answers to `{GOLD_COLUMN}`: choose the "
            "source column with dataset_gold_column and leave cat_gold_column unset (it is for datasets passed to "
            "CaTGRPOTrainer directly)."
        )


BEST_CHECKPOINT_FILE = "best_checkpoint.json"


def check_validation(args: CaTGRPOConfig, size: int) -> None:
    """Early stopping on a validation set (HealthBench, as the paper does) needs the validation set scored and the
    checkpoints it chooses from saved at the same steps."""
    if args.eval_strategy == "no" or args.save_strategy == "no":
        raise ConfigError(f"healthbench_validation={size} is scored during training: set eval_strategy: steps, "
                          "eval_steps, and save_strategy: steps with save_steps a multiple of eval_steps.")
    if not args.metric_for_best_model:
        raise ConfigError("healthbench_validation chooses a checkpoint by a validation metric: set "
                          "metric_for_best_model: eval_reward (the CaT self-rubric reward on the validation questions; "
                          "the physician-rubric score with cat_reward: physician_rubric) and greater_is_better: true.")


def record_best_checkpoint(trainer, size: int) -> dict:
    """Writes `<output_dir>/best_checkpoint.json`: the checkpoint with the best validation score, which
    `cat-trl healthbench-eval --policy <output_dir>` then scores."""
    state, args = trainer.state, trainer.args
    best = {"checkpoint": state.best_model_checkpoint, "metric": args.metric_for_best_model,
            "value": state.best_metric, "greater_is_better": args.greater_is_better, "validation_questions": size,
            "scores": [{"step": h["step"], args.metric_for_best_model: h.get(args.metric_for_best_model)}
                       for h in state.log_history if args.metric_for_best_model in h]}
    with open(os.path.join(args.output_dir, BEST_CHECKPOINT_FILE), "w") as f:
        json.dump(best, f, indent=2)
    logger.info("best validation checkpoint: %s (%s = %s)", best["checkpoint"], best["metric"], best["value"])
    return best


def check_output_dir(output_dir: str) -> None:
    """An `output_dir` that is a file, or under a file, or not writable, fails now rather than after the model loads."""
    path = os.path.abspath(output_dir)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"output_dir={output_dir!r}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"output_dir={output_dir!r}: {probe} is not writable")


def check_lengths(args: CaTGRPOConfig, model_path: str, dataset) -> None:
    """Prompts that cannot fit the model's context with `max_completion_length` new tokens, and an anchor context too
    small for G rollouts, are refused before any weights load (tokenizer and config only). A 1 MB prompt would
    otherwise reach the first generation and try to allocate hundreds of GB."""
    from transformers import AutoConfig, AutoTokenizer

    from ..engines.base import Engine, TokenizerBudget
    from ..estimators import SynthesisEstimator
    from ..from_config import anchor_sampling

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = AutoConfig.from_pretrained(model_path)
    model_context = getattr(config, "max_position_embeddings", None)
    context = args.vllm_max_model_length if args.use_vllm and args.vllm_max_model_length else model_context
    if context:
        room = context - args.max_completion_length
        if room < 1:
            raise ConfigError(f"max_completion_length={args.max_completion_length} leaves no room for a prompt in the "
                              f"model's context of {context} tokens")
        for i, row in enumerate(dataset):
            prompt = row["prompt"]
            chars = sum(len(str(m.get("content", ""))) for m in prompt) if isinstance(prompt, list) else len(prompt)
            if chars < room // 2:  # a token is at least one character on average far beyond this: no need to count
                continue
            if isinstance(prompt, list):
                text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False,
                                                     **(args.chat_template_kwargs or {}))
                n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                n = len(tokenizer(prompt)["input_ids"])
            if n > room:
                raise ConfigError(
                    f"dataset row {i} (problem_id {row.get('problem_id')!r}): the prompt is {n} tokens, but the "
                    f"model's context of {context} tokens leaves {room} after max_completion_length="
                    f"{args.max_completion_length}. Drop or shorten such rows (or raise the context).")
    if args.cat_estimator != "synthesis" or args.cat_reward == "physician_rubric":
        return
    anchor_context = args.cat_anchor_max_context or (
        args.vllm_max_model_length if args.cat_anchor_engine == "vllm" else None) or (
        model_context if args.cat_anchor_engine != "openai" else None)
    if anchor_context is None:
        return

    class _Budget(TokenizerBudget, Engine):  # counts tokens exactly like the anchor engines; generates nothing
        def __init__(self):
            super().__init__()
            self.tokenizer = tokenizer

        @property
        def max_context_tokens(self):
            return anchor_context

        def generate(self, conversations, sampling, chat_template_kwargs=None):
            raise RuntimeError("budget check only")

    estimator = SynthesisEstimator(_Budget(), anchor_sampling(args), template=args.synthesis_template,
                                   include_question=args.cat_include_question, max_context_tokens=anchor_context,
                                   chat_template_kwargs=args.chat_template_kwargs)
    widest = max(args.num_generations, args.num_generations_eval or 0)
    try:
        estimator.check_budget(widest, args.max_completion_length)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def summarize(log_history: list[dict], window: int = 3) -> dict[str, dict[str, float]]:
    """First vs. last logged values of the headline metrics (means over `window` logging steps)."""
    keys = ["reward", "cat/label_accuracy", "cat/ground_truth_ratio", "cat/majority_accuracy",
            "cat/reference_parse_failure", "cat/reference_ne_majority", "cat/anchor_share"]
    rows = [h for h in log_history if "reward" in h]
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [h[key] for h in rows if isinstance(h.get(key), (int, float)) and not math.isnan(h[key])]
        if values:
            w = max(1, min(window, len(values) // 2 or 1))
            out[key] = {"first": sum(values[:w]) / w, "last": sum(values[-w:]) / w, "steps_logged": len(values)}
    return out


def run(script_args: CaTScriptArguments, args: CaTGRPOConfig, model_args: ModelConfig):
    from ..data import load_train_dataset, load_validation_dataset
    from ..models import resolve_model_path
    from ..trainer import CaTGRPOTrainer
    from .recipe import RecipeError, check_model_source

    try:
        dataset = load_train_dataset(script_args)
        validation = load_validation_dataset(script_args)
    except ValueError as err:
        raise ConfigError(f"dataset: {err}") from err
    check_recipe(script_args, args, model_args, dataset)
    if validation is not None:
        check_validation(args, len(validation))
    check_output_dir(args.output_dir)
    try:
        check_model_source(model_args.model_name_or_path)
        if args.cat_anchor_model_name_or_path and args.cat_anchor_engine != "openai":
            check_model_source(args.cat_anchor_model_name_or_path, "cat_anchor_model_name_or_path")
    except RecipeError as err:
        raise ConfigError(str(err)) from None

    model_path = resolve_model_path(model_args.model_name_or_path)
    check_lengths(args, model_path, dataset)
    init_kwargs = dict(args.model_init_kwargs or {})
    init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    init_kwargs.setdefault("revision", model_args.model_revision)
    args.model_init_kwargs = init_kwargs

    trainer = CaTGRPOTrainer(
        model=model_path,
        args=args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
        anchor_model_name_or_path=model_path,
        eval_dataset=validation,
    )
    trainer.add_callback(RunConfigCallback(run_config(script_args, args, model_args, trainer)))
    if trainer.accelerator.is_main_process:
        logger.info("CaT: estimator=%s anchor=%s budget=%s", args.cat_estimator, trainer.cat_anchor_source,
                    trainer.cat_budget)
    trainer.train(resume_from_checkpoint=resolve_checkpoint(args.resume_from_checkpoint, args.output_dir))
    trainer.save_model(args.output_dir)

    summary = summarize(trainer.state.log_history)
    if trainer.accelerator.is_main_process and validation is not None:
        record_best_checkpoint(trainer, len(validation))
    if trainer.accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "cat_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f, default=str)
        with open(os.path.join(args.output_dir, "cat_summary.json"), "w") as f:
            json.dump({"steps": trainer.state.global_step, "metrics": summary}, f, indent=2)
        print(format_summary(trainer.state.global_step, summary))
    return trainer, summary


def run_config(script_args, args, model_args, trainer) -> dict:
    """What the W&B run config needs beyond `args.to_dict()` (which TRL already logs, every `cat_*` field included):
    the dataset and model arguments, G, and how the anchor and judge were actually resolved."""
    import dataclasses

    judge = getattr(trainer, "cat_judge", None)
    return {
        "model_name_or_path": model_args.model_name_or_path,
        "dataset_name": script_args.dataset_name,
        "data": dataclasses.asdict(script_args),
        "model": dataclasses.asdict(model_args),
        "G": args.num_generations,
        "cat": {
            "anchor_source": trainer.cat_anchor_source,
            "anchor_engine_kind": trainer.cat_anchor_kind,
            "anchor_engine": getattr(trainer.cat_engine, "name", None),
            "judge_model": judge.model_name if judge is not None else None,
            "anchor_budget": trainer.cat_budget,
        },
    }


class RunConfigCallback(TrainerCallback):
    """Adds `run_config(...)` to the W&B run once TRL's W&B callback has started it (callbacks run in order)."""

    def __init__(self, extra: dict):
        self.extra = extra

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is not None:
            wandb.config.update(self.extra, allow_val_change=True)


def resolve_checkpoint(value: str | bool | None, output_dir: str) -> str | None:
    """`resume_from_checkpoint`: a checkpoint directory, or `true`/`last` for the newest one in output_dir. The anchor
    is never loaded from it: pi_0 always comes from the initial model (see `anchor.py`)."""
    if value in (None, "", False, "false", "False"):
        return None
    if value in (True, "true", "True", "last", "latest"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise ConfigError(f"resume_from_checkpoint={value!r} but {output_dir} holds no checkpoint-* directory")
        return last
    if not os.path.isdir(str(value)):
        raise ConfigError(f"resume_from_checkpoint: {value} is not a directory")
    return str(value)


def format_summary(steps: int, summary: dict[str, dict[str, float]]) -> str:
    lines = [f"CaT-RL finished {steps} steps. What changed (mean of first vs last logging steps):"]
    for key, v in summary.items():
        lines.append(f"  {key:32s} {v['first']:.3f} -> {v['last']:.3f}   ({v['steps_logged']} logged)")
    if "cat/label_accuracy" in summary:
        lines.append("  (label_accuracy: anchor reference == gold; ground_truth_ratio: policy rollouts == gold. Gold "
                     "is read only for these diagnostics.)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        script_args, args, model_args = parse_args(argv)
        run(script_args, args, model_args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"cat-trl: configuration error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
