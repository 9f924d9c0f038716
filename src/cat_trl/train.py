"""CaT-RL entry point (open-r1 style: thin script, everything in the YAML recipe).

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m cat_trl.train --config yaml/X.yaml
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

from .config import CaTGRPOConfig  # noqa: E402
from .script_args import CaTScriptArguments  # noqa: E402

logger = logging.getLogger("cat_trl")


class ConfigError(ValueError):
    """A recipe problem found before training starts."""


def make_parser() -> TrlParser:
    return TrlParser((CaTScriptArguments, CaTGRPOConfig, ModelConfig))


def _cli_value(argv: list[str], key: str):
    """The last `--key value` / `--key=value` in argv, or None."""
    found = None
    for i, tok in enumerate(argv):
        if tok == f"--{key}" and i + 1 < len(argv):
            found = argv[i + 1]
        elif tok.startswith(f"--{key}="):
            found = tok.split("=", 1)[1]
    return found


def apply_prompts_per_step(argv: list[str]) -> list[str]:
    """`prompts_per_step: P` (recipe or CLI) fixes the prompts per generation batch whatever G is: it derives
    `per_device_train_batch_size` from P, G, WORLD_SIZE and steps_per_generation *before* TRL validates the batch
    (a sweep over G would otherwise hit TRL's divisibility check for every G the base batch does not fit)."""
    import yaml

    from .sweep import SweepError, derive_batch

    config_path = _cli_value(argv, "config")
    recipe = {}
    if config_path and os.path.exists(config_path):
        with open(config_path) as f:
            recipe = yaml.safe_load(f) or {}
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
    except SweepError as err:
        raise ConfigError(str(err)) from err
    return [*argv, f"--per_device_train_batch_size={batch}"]


def parse_args(argv: Sequence[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = apply_prompts_per_step(argv)
    try:
        return make_parser().parse_args_and_config(args=argv)
    except ValueError as err:  # TrlParser's unknown keys, GRPOConfig/CaTGRPOConfig __post_init__ checks
        raise ConfigError(str(err)) from err


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
    if args.cat_anchor_weights == "peft_base" and not model_args.use_peft:
        raise ConfigError("cat_anchor_weights=peft_base needs use_peft: true (the anchor is the adapter-disabled base).")
    if args.cat_anchor_weights == "ref_model" and model_args.use_peft:
        raise ConfigError(
            "cat_anchor_weights=ref_model with use_peft: TRL keeps no separate reference model under PEFT; use "
            "peft_base (the same weights, no extra memory)."
        )
    if "gold_rubrics" in dataset.column_names and not args.open_ended:
        raise ConfigError("This dataset is open-ended (HealthBench): final-answer rewards do not apply. Set "
                          "cat_reward: rubric (CaT), judge_equivalence or physician_rubric (oracle baseline).")
    if args.cat_reward == "physician_rubric" and "gold_rubrics" not in dataset.column_names:
        raise ConfigError("cat_reward=physician_rubric needs physician rubrics (a HealthBench dataset).")
    if args.cat_gold_column in dataset.column_names and args.cat_gold_column in ("prompt", "completion"):
        raise ConfigError(f"cat_gold_column={args.cat_gold_column!r} cannot be a TRL input column")


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
    from .data import load_train_dataset
    from .models import resolve_model_path
    from .trainer import CaTGRPOTrainer

    try:
        dataset = load_train_dataset(script_args)
    except ValueError as err:
        raise ConfigError(f"dataset: {err}") from err
    check_recipe(script_args, args, model_args, dataset)

    model_path = resolve_model_path(model_args.model_name_or_path)
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
    )
    trainer.add_callback(RunConfigCallback(run_config(script_args, args, model_args, trainer)))
    if trainer.accelerator.is_main_process:
        logger.info("CaT: estimator=%s anchor=%s budget=%s", args.cat_estimator, trainer.cat_anchor_source,
                    trainer.cat_budget)
    trainer.train(resume_from_checkpoint=resolve_checkpoint(args.resume_from_checkpoint, args.output_dir))
    trainer.save_model(args.output_dir)

    summary = summarize(trainer.state.log_history)
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
