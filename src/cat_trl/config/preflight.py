"""Checks a run makes before any weights load: the settings against the dataset, the output directory, the
checkpoint to resume from, and prompt / anchor-context lengths against the model's tokenizer and config.

Each raises `PreflightError` (a `ValueError`) with one line naming the setting, so a bad recipe fails in seconds
instead of after minutes of weight loading. The CLI runs them in order; a Python user can call them too.
"""

from __future__ import annotations

import os
from typing import Any

from ..data import SOURCE_ROW_COLUMN
from ..data.labels import GOLD_COLUMN, GOLD_RUBRICS_COLUMN
from ..engines.anchor_weights import resolve_anchor_weights
from .grpo import CaTGRPOConfig


class PreflightError(ValueError):
    """A setting that cannot work with this dataset, model or directory."""


def check_dataset(args: CaTGRPOConfig, model_args: Any, dataset) -> None:
    """Cross-setting checks that need the dataset but not the model."""
    if not model_args.model_name_or_path:
        raise PreflightError("model_name_or_path is required (a local path, a hub id, or the alias "
                             "smollm2-135m-instruct)")
    prompts_per_batch = args.generation_batch_size // args.num_generations
    if len(dataset) < prompts_per_batch:
        raise PreflightError(
            f"The dataset has {len(dataset)} prompts but one generation batch needs {prompts_per_batch} "
            f"(generation_batch_size={args.generation_batch_size} / num_generations={args.num_generations}); TRL "
            "would silently train 0 steps. Add prompts or lower per_device_train_batch_size / steps_per_generation."
        )
    try:
        source = resolve_anchor_weights(args.cat_anchor_weights, is_peft=bool(model_args.use_peft),
                                        has_ref_model=args.beta > 0 and not model_args.use_peft,
                                        sync_ref_model=args.sync_ref_model)
        if args.cat_anchor_engine == "vllm" and not args.cat_anchor_engine_auto:  # `auto` may fall back
            from ..engines.vllm_colocated import check_vllm_anchor_sharding, launch_fsdp_version

            check_vllm_anchor_sharding(source, launch_fsdp_version(args))
    except ValueError as err:
        raise PreflightError(str(err)) from None
    if GOLD_RUBRICS_COLUMN in dataset.column_names and not args.open_ended:
        raise PreflightError("This dataset is open-ended (HealthBench): final-answer rewards do not apply. Set "
                             "cat_reward: rubric (CaT), judge_equivalence or physician_rubric (oracle baseline).")
    if args.cat_reward == "physician_rubric" and GOLD_RUBRICS_COLUMN not in dataset.column_names:
        raise PreflightError("cat_reward=physician_rubric needs physician rubrics (a HealthBench dataset).")
    if args.cat_gold_column in dataset.column_names and args.cat_gold_column in ("prompt", "completion"):
        raise PreflightError(f"cat_gold_column={args.cat_gold_column!r} cannot be a TRL input column")
    if args.cat_gold_column != GOLD_COLUMN and args.cat_gold_column not in dataset.column_names:
        # the loaders always write gold answers to `gold_answer`; a renamed cat_gold_column would find nothing and
        # the diagnostics would silently disappear
        raise PreflightError(
            f"cat_gold_column={args.cat_gold_column!r} is not a column of the training data "
            f"({', '.join(c for c in dataset.column_names if c != SOURCE_ROW_COLUMN)}). The loaders write gold answers to `{GOLD_COLUMN}`: choose the "
            "source column with dataset_gold_column and leave cat_gold_column unset (it is for datasets passed to "
            "CaTGRPOTrainer directly)."
        )


def check_validation(args: CaTGRPOConfig, size: int) -> None:
    """Early stopping on a validation set (HealthBench, as the paper does) needs the validation set scored and the
    checkpoints it chooses from saved at the same steps."""
    if args.eval_strategy == "no" or args.save_strategy == "no":
        raise PreflightError(f"healthbench_validation={size} is scored during training: set eval_strategy: steps, "
                             "eval_steps, and save_strategy: steps with save_steps a multiple of eval_steps.")
    if not args.metric_for_best_model:
        raise PreflightError("healthbench_validation chooses a checkpoint by a validation metric: set "
                             "metric_for_best_model: eval_reward (the CaT self-rubric reward on the validation "
                             "questions; the physician-rubric score with cat_reward: physician_rubric) and "
                             "greater_is_better: true.")


def check_output_dir(output_dir: str) -> None:
    """An `output_dir` that is a file, or under a file, or not writable, fails now rather than after the model loads."""
    path = os.path.abspath(output_dir)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise PreflightError(f"output_dir={output_dir!r}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK):
        raise PreflightError(f"output_dir={output_dir!r}: {probe} is not writable")


RESUME_LAST = ("true", "True", "last", "latest")


def resume_target(value: str | bool | None, output_dir: str) -> str | bool | None:
    """`resume_from_checkpoint` as `Trainer.train` takes it: None, True (transformers' `get_last_checkpoint` in
    output_dir; `true` / `last` / `latest` in a recipe) or a checkpoint directory. Checked now: transformers would
    report a missing checkpoint only after the model has loaded. pi_0 never comes from it (the anchor is always
    the initial model)."""
    if value in (None, "", False, "false", "False"):
        return None
    if value is True or value in RESUME_LAST:
        from transformers.trainer_utils import get_last_checkpoint

        if not (os.path.isdir(output_dir) and get_last_checkpoint(output_dir)):
            raise PreflightError(f"resume_from_checkpoint={value!r} but {output_dir} holds no checkpoint-* directory")
        return True
    if not os.path.isdir(str(value)):
        raise PreflightError(f"resume_from_checkpoint: {value} is not a directory")
    return str(value)


def check_lengths(args: CaTGRPOConfig, model_path: str, dataset) -> None:
    """Prompts that cannot fit the model's context with `max_completion_length` new tokens, and an anchor context too
    small for G rollouts, are refused before any weights load (tokenizer and config only). A 1 MB prompt would
    otherwise reach the first generation and try to allocate hundreds of GB."""
    from transformers import AutoConfig, AutoTokenizer

    from ..components import estimator_spec
    from ..estimators import check_context_budget

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = AutoConfig.from_pretrained(model_path)
    model_context = getattr(config, "max_position_embeddings", None)
    context = args.vllm_max_model_length if args.use_vllm and args.vllm_max_model_length else model_context
    if context:
        room = context - args.max_completion_length
        if room < 1:
            raise PreflightError(f"max_completion_length={args.max_completion_length} leaves no room for a prompt in "
                                 f"the model's context of {context} tokens")
        for row in dataset:
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
                where = row.get(SOURCE_ROW_COLUMN) or f"problem_id {row.get('problem_id')!r}"
                raise PreflightError(
                    f"the prompt of {where} is {n} tokens, but the model's context of {context} tokens leaves "
                    f"{room} after max_completion_length={args.max_completion_length}. Drop or shorten such rows "
                    "(or raise the context).")
    if args.cat_estimator != "synthesis" or args.cat_reward == "physician_rubric":
        return
    anchor_context = args.cat_anchor_max_context or (
        args.vllm_max_model_length if args.cat_anchor_engine == "vllm" else None) or (
        model_context if args.cat_anchor_engine != "openai" else None)
    if anchor_context is None:
        return
    widest = max(args.num_generations, args.num_generations_eval or 0)
    report = check_context_budget(estimator_spec(args, max_context_tokens=anchor_context), tokenizer, widest,
                                  args.max_completion_length)
    check_seeded_prefill_budget(args, anchor_context, report.get("budget"), widest)


def check_seeded_prefill_budget(args: CaTGRPOConfig, anchor_context: int, rollout_budget: int | None,
                                num_generations: int) -> None:
    """The colocated vLLM anchor on vLLM's CPU build: a seeded synthesis prompt must fit one scheduler step whole
    (`trl_compat.vllm_seeded_prefill_limits`), so the longest one these settings can build (the prompt frame plus G
    full rollouts, at most the anchor's context less its new tokens) is checked against the step's token budget here,
    before any weights load, instead of failing at the first long group."""
    if rollout_budget is None or not (args.use_vllm and args.vllm_mode == "colocate"
                                      and args.cat_anchor_engine == "vllm"):
        return
    from ..trl_compat import TRL_COLOCATE_STEP_TOKENS, vllm_runs_on_cpu

    if not vllm_runs_on_cpu():
        return
    kwargs = args.cat_vllm_llm_kwargs or {}
    if kwargs.get("enable_chunked_prefill") is False:
        return
    step = int(kwargs.get("max_num_batched_tokens") or TRL_COLOCATE_STEP_TOKENS)
    frame = anchor_context - args.cat_anchor_max_new_tokens - rollout_budget
    longest = frame + min(rollout_budget, num_generations * args.max_completion_length)
    if longest > step:
        raise PreflightError(
            f"the colocated vLLM anchor's synthesis prompt can reach {longest} tokens ({num_generations} rollouts of "
            f"up to {args.max_completion_length} tokens), over the engine's {step}-token scheduler step. vLLM's CPU "
            "build cannot prefill a seeded request in chunks (its generator cannot be rewound; the engine core dies). "
            f"Set cat_vllm_llm_kwargs: {{max_num_batched_tokens: {longest}}} or more, or lower max_completion_length "
            "or num_generations.")
