"""CaT-RL entry point (open-r1 style: thin script, everything in the YAML recipe).

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m cat_trl.cli.train --config yaml/X.yaml
    cat-trl train yaml/X.yaml [--key value ...]

Order matters: arguments are parsed and checked, and the dataset is built and checked, *before* any model loads, so
a bad recipe fails in seconds with one clear message instead of after minutes of weight loading.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import ModelConfig, get_peft_config  # noqa: E402

from ..config import REMOVED_SETTINGS, CaTGRPOConfig  # noqa: E402
from ..config import CaTScriptArguments  # noqa: E402
from .common import CliError, CliParser, split_config  # noqa: E402

logger = logging.getLogger("cat_trl")


class ConfigError(CliError):
    """A recipe problem found before training starts."""


def make_parser() -> CliParser:
    """The parser every command uses (`CliParser`: one-line errors, recipe values checked against their types, list
    settings as `--key a b` or `--key "[a, b]"`), over the training dataclasses; removed settings name their
    replacement."""
    return CliParser((CaTScriptArguments, CaTGRPOConfig, ModelConfig), "train", removed=REMOVED_SETTINGS, what="recipe")


def read_recipe(argv: list[str], parser: CliParser | None = None) -> dict:
    """The `--config` recipe as a checked mapping ({} without one): `CliParser.read_config` (a key given twice, an empty
    file, unknown or removed keys, a value of the wrong type: one-line `ConfigError`s naming the file)."""
    try:
        config_path = split_config(argv)[0]
        return {} if config_path is None else (parser or make_parser()).read_config(config_path)
    except CliError as err:
        raise ConfigError(str(err)) from None


def parse_args(argv: Sequence[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        make_parser().print_help()  # every setting with its default and help, like `trl grpo --help`
        raise SystemExit(0)
    parser = make_parser()
    recipe = read_recipe(argv, parser)
    try:
        return parser.parse(split_config(argv)[1], config=recipe)
    except CliError as err:  # unknown keys, argument types, GRPOConfig/CaTGRPOConfig __post_init__ checks
        raise ConfigError(str(err)) from err


def run(script_args: CaTScriptArguments, args: CaTGRPOConfig, model_args: ModelConfig):
    """Build the data, check everything that can be checked without weights, build the trainer, train."""
    from ..callbacks import RunConfigCallback, RunSummaryCallback, format_summary
    from ..config import preflight
    from ..data import SOURCE_ROW_COLUMN, load_train_dataset, load_validation_dataset
    from ..embedded_model import resolve_model_path
    from ..trainer import CaTGRPOTrainer
    from .recipe import RecipeError, check_model_source

    try:
        dataset = load_train_dataset(script_args, source_rows=True)  # messages name a row's place in its source
        validation = load_validation_dataset(script_args)
    except ValueError as err:
        raise ConfigError(f"dataset: {err}") from err
    try:
        preflight.check_dataset(args, model_args, dataset)
        if validation is not None:
            preflight.check_validation(args, len(validation))
        preflight.check_output_dir(args.output_dir)
        resume = preflight.resume_target(args.resume_from_checkpoint, args.output_dir)
        check_model_source(model_args.model_name_or_path)
        if args.cat_anchor_model_name_or_path and args.cat_anchor_engine != "openai":
            check_model_source(args.cat_anchor_model_name_or_path, "cat_anchor_model_name_or_path")
        model_path = resolve_model_path(model_args.model_name_or_path)
        preflight.check_lengths(args, model_path, dataset)
    except (ValueError, RecipeError) as err:
        raise ConfigError(str(err)) from None
    dataset = dataset.remove_columns(SOURCE_ROW_COLUMN)
    init_kwargs = dict(args.model_init_kwargs or {})
    init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    init_kwargs.setdefault("revision", model_args.model_revision)
    args.model_init_kwargs = init_kwargs

    summary = RunSummaryCallback(len(validation) if validation is not None else None)
    trainer = CaTGRPOTrainer(model=model_path, args=args, train_dataset=dataset, eval_dataset=validation,
                             peft_config=get_peft_config(model_args), anchor_model_name_or_path=model_path,
                             callbacks=[summary])
    trainer.add_callback(RunConfigCallback(run_config(script_args, args, model_args, trainer)))
    if trainer.accelerator.is_main_process:
        logger.info("CaT: estimator=%s anchor=%s budget=%s", args.cat_estimator, trainer.cat_anchor_source,
                    trainer.cat_budget)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    trainer.save_state()  # trainer_state.json: the whole log history
    if trainer.accelerator.is_main_process:
        print(format_summary(trainer.state.global_step, summary.summary))
    return trainer, summary.summary


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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        script_args, args, model_args = parse_args(argv)
        run(script_args, args, model_args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"cat-trl train: configuration error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
