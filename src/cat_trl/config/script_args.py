"""Dataset and prompt arguments of the `cat-trl train` entry point.

These live in a `trl.ScriptArguments` subclass (not in the trainer config) because they only matter while the
dataset is built; everything that changes how rewards are computed is a `cat_*` field of `CaTGRPOConfig` so that it
lands in the W&B run config.
"""

from dataclasses import dataclass, field

from trl import ScriptArguments

from ..data.prompts import DEFAULT_INSTRUCTION


@dataclass
class CaTScriptArguments(ScriptArguments):
    """Where the prompts come from and how they are turned into chat messages.

    `dataset_name` accepts a built-in name (`synthetic_math`, `math500`), a Hugging Face dataset id, or a local
    file/directory (`.jsonl`, `.json`, `.parquet`, `.csv`).
    """

    dataset_name: str | None = field(
        default="synthetic_math",
        metadata={
            "help": "`synthetic_math` (built-in, seeded), `math500` (HuggingFaceH4/MATH-500), a hub id or a local "
            "file/directory."
        },
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "`auto`, `synthetic_math`, `math500` (columns problem/answer/unique_id), `healthbench` "
            "(official JSONL: prompt messages, rubrics, example_tags, prompt_id) or `generic` (prompt from "
            "`dataset_prompt_column`, gold from `dataset_gold_column`)."
        },
    )
    dataset_prompt_column: str = field(
        default="prompt",
        metadata={"help": "Generic format: column holding the question text or a list of chat messages."},
    )
    dataset_gold_column: str | None = field(
        default=None,
        metadata={
            "help": "Generic format: column holding a gold answer. Used only for diagnostic metrics; it never "
            "reaches a training reward."
        },
    )
    dataset_max_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many prompts (after a seeded shuffle)."}
    )
    dataset_shuffle_seed: int = field(default=0, metadata={"help": "Seed of the subsampling shuffle."})
    synthetic_num_problems: int = field(default=256, metadata={"help": "Built-in data: number of problems."})
    synthetic_seed: int = field(default=0, metadata={"help": "Built-in data: generator seed."})
    synthetic_max_steps: int = field(
        default=2, metadata={"help": "Built-in data: at most this many arithmetic steps per word problem (1-3)."}
    )
    synthetic_min_steps: int = field(
        default=1, metadata={"help": "Built-in data: at least this many arithmetic steps per word problem."}
    )
    healthbench_holdout: int = field(
        default=500, metadata={"help": "HealthBench: examples held out (seeded) for evaluation; training uses the rest."}
    )
    healthbench_seed: int = field(default=0, metadata={"help": "HealthBench: seed of the hold-out split."})
    healthbench_validation: int = field(
        default=0,
        metadata={"help": "HealthBench: questions carved (seeded) from the training split as a validation set, scored "
        "during training (eval_strategy) for early stopping; the best checkpoint is recorded in "
        "<output_dir>/best_checkpoint.json and used by healthbench-eval. 0 = no validation set."},
    )
    healthbench_validation_seed: int = field(default=0, metadata={"help": "HealthBench: seed of the validation split."})
    healthbench_subset: str = field(
        default="all", metadata={"help": "HealthBench hub file: `all` (5,000), `hard` or `consensus`."}
    )
    prompt_instruction: str = field(
        default=DEFAULT_INSTRUCTION,
        metadata={"help": "Appended to every question (after a blank line). Empty string to disable."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    prompt_fewshot: int = field(
        default=0,
        metadata={"help": "Prepend this many built-in worked examples (0-3) that end in \\boxed{}: small models "
        "rarely box their answers otherwise."},
    )
