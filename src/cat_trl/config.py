"""`CaTGRPOConfig`: TRL's `GRPOConfig` plus the CaT settings.

CaT settings are `cat_*` fields of the trainer config (not a separate dataclass) for two reasons: `TrlParser` puts all
dataclasses in one flat namespace, so a prefix avoids clashes with TRL's own fields (e.g. `temperature`), and
`args.to_dict()` is what the W&B callback writes into the run config -- so every CaT knob is recorded with the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .estimators.prompts import MATH_SYNTHESIS_PROMPT, validate_template
from .extraction import EXTRACTIONS

ESTIMATORS = ("synthesis", "majority")
ANCHOR_ENGINES = ("transformers",)
ANCHOR_WEIGHTS = ("auto", "peft_base", "ref_model", "copy")
MATCH_MODES = ("string", "equivalent")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


@dataclass
class CaTGRPOConfig(GRPOConfig):
    """GRPO settings plus CaT's reference estimation and reward settings (all prefixed `cat_`)."""

    cat_estimator: str = field(
        default="synthesis",
        metadata={"help": "Reference estimator: `synthesis` (CaT, frozen anchor) or `majority` (TTRL-style vote)."},
    )
    cat_include_question: bool = field(
        default=False,
        metadata={"help": "Show the question to the anchor (ablation). The paper's anchor is question-blind."},
    )
    cat_synthesis_prompt: str | None = field(
        default=None,
        metadata={"help": "Override the synthesis prompt. Must contain {responses}; {question} only with "
        "cat_include_question."},
    )
    cat_anchor_engine: str = field(
        default="transformers",
        metadata={"help": "What runs the anchor: `transformers` (in-process generate)."},
    )
    cat_anchor_weights: str = field(
        default="auto",
        metadata={
            "help": "Where pi_0's weights come from: `peft_base` (policy with adapters off), `ref_model` (TRL's "
            "reference model, beta > 0), `copy` (separately loaded frozen copy) or `auto` (peft_base with PEFT, "
            "else ref_model when beta > 0 and sync_ref_model is off, else copy)."
        },
    )
    cat_anchor_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Anchor checkpoint for `copy` (default: the policy's initial model_name_or_path)."},
    )
    cat_anchor_max_new_tokens: int = field(default=1024, metadata={"help": "Anchor's maximum output tokens."})
    cat_anchor_temperature: float | None = field(
        default=None, metadata={"help": "Anchor sampling temperature (default: the policy's `temperature`)."}
    )
    cat_anchor_top_p: float | None = field(default=None, metadata={"help": "Anchor top-p (default: policy's)."})
    cat_anchor_top_k: int | None = field(default=None, metadata={"help": "Anchor top-k (default: policy's)."})
    cat_anchor_min_p: float | None = field(default=None, metadata={"help": "Anchor min-p (default: policy's)."})
    cat_anchor_seed: int | None = field(
        default=None, metadata={"help": "Seed each anchor call (step-dependent) for reproducible references."}
    )
    cat_anchor_max_context: int | None = field(
        default=None,
        metadata={"help": "Anchor context window in tokens (default: the anchor's max_position_embeddings). "
        "Rollouts that do not fit are truncated evenly and counted."},
    )
    cat_anchor_batch_size: int | None = field(
        default=None, metadata={"help": "Sequences per anchor generate micro-batch (memory bound); None = all."}
    )
    cat_match: str = field(
        default="string",
        metadata={"help": "Answer matching: `string` (normalised equality, the paper's) or `equivalent` "
        "(symmetric math-verify)."},
    )
    cat_answer_extraction: str = field(
        default="boxed",
        metadata={"help": "Final-answer extraction for rollouts and references: `boxed` (last \\boxed{}, the "
        "paper's) or `boxed_or_final` (fall back to the text after 'final answer is')."},
    )
    cat_match_timeout: float = field(default=5.0, metadata={"help": "math-verify timeout (s) per comparison."})
    cat_gold_column: str = field(
        default="gold_answer",
        metadata={"help": "Dataset column with gold answers, used ONLY for diagnostic metrics; stripped before "
        "any reward function is called."},
    )
    cat_log_groups: bool = field(
        default=True,
        metadata={"help": "Write per-group records (prompt, G completions, reference, rewards) to "
        "<output_dir>/cat_groups.jsonl and, with W&B, a `cat/groups` table at each logging step."},
    )

    def __post_init__(self):
        _choice("cat_estimator", self.cat_estimator, ESTIMATORS)
        _choice("cat_anchor_engine", self.cat_anchor_engine, ANCHOR_ENGINES)
        _choice("cat_anchor_weights", self.cat_anchor_weights, ANCHOR_WEIGHTS)
        _choice("cat_match", self.cat_match, MATCH_MODES)
        _choice("cat_answer_extraction", self.cat_answer_extraction, EXTRACTIONS)
        validate_template(self.synthesis_template, self.cat_include_question)
        for name in ("cat_anchor_batch_size", "cat_anchor_max_context"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset), got {value}")
        if self.cat_match_timeout <= 0:
            raise ValueError(f"cat_match_timeout must be > 0 seconds, got {self.cat_match_timeout}")
        if self.cat_anchor_max_new_tokens < 1:
            raise ValueError(f"cat_anchor_max_new_tokens must be >= 1, got {self.cat_anchor_max_new_tokens}")
        if self.cat_anchor_weights == "ref_model":
            if self.beta == 0.0:
                raise ValueError(
                    "cat_anchor_weights=ref_model needs TRL's reference model, which only exists when beta > 0. "
                    "Set beta > 0, or use cat_anchor_weights: copy (or peft_base with PEFT)."
                )
            if self.sync_ref_model:
                raise ValueError(
                    "cat_anchor_weights=ref_model with sync_ref_model=true: TRL would move the reference model "
                    "towards the policy, so the anchor would stop being the initial policy pi_0. Set "
                    "sync_ref_model: false, or use cat_anchor_weights: copy."
                )
        super().__post_init__()

    @property
    def synthesis_template(self) -> str:
        return self.cat_synthesis_prompt or MATH_SYNTHESIS_PROMPT
