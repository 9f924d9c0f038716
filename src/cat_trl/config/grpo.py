"""`CaTGRPOConfig`: TRL's `GRPOConfig` plus the CaT settings.

CaT settings are `cat_*` fields of the trainer config (not a separate dataclass) for two reasons: `TrlParser` puts all
dataclasses in one flat namespace, so a prefix avoids clashes with TRL's own fields (e.g. `temperature`), and
`args.to_dict()` is what the W&B callback writes into the run config -- so every CaT knob is recorded with the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields

from trl import GRPOConfig

from ..answers import EXTRACTIONS, MATCH_MODES
from ..estimators import ESTIMATORS
from ..estimators.prompts import MATH_SYNTHESIS_PROMPT, validate_template
from ..rubrics.judge import JUDGE_MODES
from ..rubrics.prompts import FREEFORM_SYNTHESIS_PROMPT, validate_placeholders
from ..engines.anchor_weights import resolve_anchor_weights
from ..trl_compat import check_vllm_llm_kwargs

ANCHOR_ENGINES = ("auto", "vllm", "transformers", "openai")
REWARDS = ("math", "rubric", "judge_equivalence", "physician_rubric")
JUDGE_ENGINES = ("transformers", "openai", "anchor")
ANCHOR_WEIGHTS = ("auto", "peft_base", "ref_model", "copy")
VLLM_OFFLOADS = ("cpu", "disk")


#: settings that were removed, with what replaces them: a recipe that still sets one fails with this text
REMOVED_SETTINGS = {
    "cat_reward_scale": "cat_reward_scale was removed: TRL's reward_weights scales each reward function "
    "(e.g. reward_weights: [2.0] for the rubric reward; it also scales the length penalty).",
}


def derive_batch(num_generations: int, prompts_per_step: int, num_processes: int, steps_per_generation: int) -> int:
    """per_device_train_batch_size such that one generation batch holds `prompts_per_step` prompts x G completions.

    TRL: generation_batch_size = per_device_train_batch_size x num_processes x steps_per_generation."""
    if min(num_generations, prompts_per_step, num_processes, steps_per_generation) < 1:
        raise ValueError("G, prompts_per_step, num_processes and steps_per_generation must all be >= 1")
    completions = prompts_per_step * num_generations
    per_step = num_processes * steps_per_generation
    if completions % per_step:
        ok = [s for s in range(1, completions + 1) if completions % (num_processes * s) == 0]
        raise ValueError(
            f"G={num_generations} x prompts_per_step={prompts_per_step} = {completions} completions cannot be split "
            f"over {num_processes} process(es) x steps_per_generation={steps_per_generation}; steps_per_generation "
            f"values that work: {ok[:6]}"
        )
    return completions // per_step


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


@dataclass
class CaTGRPOConfig(GRPOConfig):
    """GRPO settings plus CaT's reference estimation and reward settings (all prefixed `cat_`)."""

    prompts_per_step: int | None = field(
        default=None,
        metadata={"help": "Prompts per generation batch, fixed whatever num_generations is: per_device_train_batch_"
        "size is derived from it, G, the launch's WORLD_SIZE and steps_per_generation (G sweeps). Leave unset to size "
        "the batch yourself."},
    )
    cat_reward: str = field(
        default="math",
        metadata={
            "choices": list(REWARDS),
            "help": "What the reference is turned into: `math` (final-answer match, verifiable tasks), `rubric` "
            "(the anchor's self-proposed rubric checked by a judge, open-ended tasks), or the paper's open-ended "
            "baselines `judge_equivalence` (judge: is the rollout equivalent to the reference?) and "
            "`physician_rubric` (ORACLE: HealthBench physician rubrics; reads labels)."
        },
    )
    cat_estimator: str = field(
        default="synthesis",
        metadata={
            "choices": list(ESTIMATORS),
            "help": "Reference estimator: `synthesis` (CaT, frozen anchor), `majority` (TTRL-style vote), or a "
        "selection baseline run by the anchor: `self_bon`, `min_ppl`, `mutual_predictability`."},
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
        default="auto",
        metadata={
            "choices": list(ANCHOR_ENGINES),
            "help": "What runs the anchor: `vllm` (TRL's colocated vLLM engine, time-shared: pi_0's weights "
        "are loaded into it for the reward step), `transformers` (in-process generate), `openai` (an "
        "OpenAI-compatible server serving pi_0, e.g. `vllm serve <initial model>`) or `auto` (vllm with "
        "use_vllm + vllm_mode colocate, else transformers)."},
    )
    cat_vllm_anchor_offload: str = field(
        default="cpu",
        metadata={
            "choices": list(VLLM_OFFLOADS),
            "help": "vLLM anchor with cat_anchor_weights=copy: keep the initial checkpoint's tensors in "
        "(pinned) CPU memory (`cpu`) or stream them from its safetensors files on every anchor call (`disk`)."},
    )
    cat_vllm_llm_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Extra keyword arguments for the colocated `vllm.LLM` that TRL builds (TRL 1.16 exposes no "
        "passthrough; mirrors trl#6816's `vllm_llm_kwargs`), e.g. {enforce_eager: true} to skip vLLM's torch.compile "
        "warm-up (minutes on CPU). Keys TRL must own (model, seed, tensor_parallel_size, ...) are refused."},
    )
    cat_anchor_base_url: str | None = field(
        default=None, metadata={"help": "Anchor server URL for cat_anchor_engine=openai (e.g. http://host:8000/v1)."}
    )
    cat_anchor_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the anchor server's API key."}
    )
    cat_anchor_timeout: float = field(default=120.0, metadata={"help": "Seconds per anchor request attempt (openai)."})
    cat_anchor_max_retries: int = field(default=4, metadata={
        "help": "Retries per anchor request after a transient failure (openai; the client's backoff schedule)."})
    cat_anchor_on_failure: str = field(default="skip", metadata={
        "choices": ["skip", "raise"],
        "help": "An anchor request the server could not answer after its retries (down, 5xx, timed out): `skip` -- "
                "that group gets no reward this step, counted in cat/anchor_failed_groups and the run summary; "
                "`raise` -- the step fails on every rank (openai)."})
    cat_anchor_overlap: bool = field(default=True, metadata={
        "help": "Send the server anchor's synthesis requests as soon as a rank's rollouts are decoded and collect them "
                "at the reward step, so that the server works while TRL computes log-probs (openai)."})
    cat_anchor_weights: str = field(
        default="auto",
        metadata={
            "choices": list(ANCHOR_WEIGHTS),
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
    # ---- open-ended regime: rubric proposal, judge, length penalty
    cat_rubric_prompt: str | None = field(
        default=None,
        metadata={"help": "Override the rubric-proposal prompt (must contain {reference}; may contain "
        "{conversation}, {min_criteria}, {max_criteria})."},
    )
    cat_rubric_min_criteria: int = field(default=5, metadata={"help": "Fewer distinct criteria = failed rubric."})
    cat_rubric_max_criteria: int = field(default=12, metadata={"help": "Criteria beyond this are dropped."})
    cat_rubric_include_conversation: bool = field(
        default=False, metadata={"help": "Let the rubric writer see the conversation (the paper's sees s only)."}
    )
    cat_rubric_allow_list: bool = field(
        default=False, metadata={"help": "Accept a bulleted/numbered list when the rubric has no XML criteria."}
    )
    cat_rubric_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Anchor's output tokens for the rubric (default: cat_anchor_max_new_tokens)."}
    )
    cat_judge_engine: str = field(
        default="openai",
        metadata={
            "choices": list(JUDGE_ENGINES),
            "help": "What runs the judge: `openai` (any OpenAI-compatible server: GPT-4o, vllm serve, ...), "
        "`transformers` (a separate local model, cat_judge_model = path) or `anchor` (the anchor itself; not an "
        "independent judge, for smoke tests)."},
    )
    cat_judge_model: str | None = field(
        default=None, metadata={"help": "Judge model: served name (openai) or path/alias (transformers)."}
    )
    cat_judge_base_url: str | None = field(default=None, metadata={"help": "Judge server URL (openai engine)."})
    cat_judge_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the judge server's API key."}
    )
    cat_judge_mode: str = field(
        default="generate",
        metadata={
            "choices": list(JUDGE_MODES),
            "help": "`generate` (short yes/no answer; unparseable = no, counted) or `logprob` (p(yes) vs "
        "p(no) of the next token, one forward pass)."},
    )
    cat_judge_prompt: str | None = field(
        default=None, metadata={"help": "Override the judge prompt ({response}, {criterion}, optional {conversation})."}
    )
    cat_judge_chat_template_kwargs: dict | None = field(
        default=None,
        metadata={"help": "Chat-template kwargs for the judge's requests (NOT inherited from the policy's: hosted "
        "APIs reject the field). E.g. {enable_thinking: false} for a Qwen3 judge served by vLLM."},
    )
    cat_judge_max_new_tokens: int = field(default=8, metadata={"help": "Judge answer length in generate mode."})
    cat_judge_max_concurrency: int = field(default=8, metadata={"help": "Judge requests in flight (openai)."})
    cat_judge_timeout: float = field(default=120.0, metadata={"help": "Seconds per judge request (openai)."})
    cat_judge_max_retries: int = field(default=4, metadata={"help": "Retries per judge request (openai)."})
    cat_judge_cache_path: str | None = field(
        default=None, metadata={"help": "Persist judge responses (JSONL, keyed by request hash) across runs."}
    )
    cat_length_penalty_tokens: int | None = field(
        default=None,
        metadata={"help": "Completions longer than this many tokens get cat_length_penalty instead of a judged "
        "reward (the paper's HealthBench setting: 750 with max_completion_length 1024)."},
    )
    cat_length_penalty: float = field(default=-1.0, metadata={"help": "Reward of over-long completions."})
    cat_match: str = field(
        default="string",
        metadata={
            "choices": list(MATCH_MODES),
            "help": "Answer matching: `string` (normalised equality, the paper's) or `equivalent` "
        "(symmetric math-verify)."},
    )
    cat_answer_extraction: str = field(
        default="boxed",
        metadata={
            "choices": list(EXTRACTIONS),
            "help": "Final-answer extraction for rollouts and references: `boxed` (last \\boxed{}, the "
        "paper's) or `boxed_or_final` (fall back to the text after 'final answer is'); `*_numeric` variants for "
        "numeric tasks: an answer with no digit or a dangling expression ('14 -') is no answer."},
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

    def _check_ranges(self) -> None:
        """Values TRL 1.16's `GRPOConfig` accepts silently and fails on later (or divides by), checked first, one
        clear line each naming the setting. Only those: `tests/test_config_ranges.py` fails when TRL starts refusing
        one of these by name, so the copy here can go. (`num_generations=1` TRL refuses, but without naming the
        setting; 0 crashes it with a ZeroDivisionError.)"""
        def need(name, ok, rule):
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ValueError(f"{name}={value!r}: must be {rule}")

        need("num_generations", lambda v: isinstance(v, int) and v >= 2, "an integer >= 2 (GRPO compares G rollouts)")
        need("num_generations_eval", lambda v: isinstance(v, int) and v >= 2, "an integer >= 2 (or unset)")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "max_completion_length", "steps_per_generation", "generation_batch_size", "num_iterations"):
            need(name, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        need("temperature", lambda v: v > 0, "> 0 (TRL divides the logits by it)")
        need("top_p", lambda v: 0 < v <= 1, "in (0, 1]")
        need("top_k", lambda v: v >= 0, ">= 0 (0 = off)")
        need("min_p", lambda v: 0 <= v <= 1, "in [0, 1]")
        need("learning_rate", lambda v: v >= 0, ">= 0")
        need("beta", lambda v: v >= 0, ">= 0")
        need("cat_anchor_temperature", lambda v: v >= 0, ">= 0 (0 = greedy)")
        need("cat_anchor_top_p", lambda v: 0 < v <= 1, "in (0, 1]")
        need("cat_anchor_top_k", lambda v: v >= 0, ">= 0 (0 = off)")
        need("cat_anchor_min_p", lambda v: 0 <= v <= 1, "in [0, 1]")

    def _check_choices(self) -> None:
        """Every field with `choices` metadata (also what `--help` and the command line's argparse use), checked
        once here: values from YAML or Python bypass argparse."""
        for f in fields(self):
            if f.name.startswith("cat_") and "choices" in f.metadata:
                _choice(f.name, getattr(self, f.name), f.metadata["choices"])

    def batch_for(self, world_size: int) -> int:
        """The `per_device_train_batch_size` that `prompts_per_step` gives on `world_size` processes."""
        spg = self.steps_per_generation or self.gradient_accumulation_steps
        return derive_batch(self.num_generations, self.prompts_per_step, world_size, spg)

    def _apply_prompts_per_step(self) -> None:
        """`prompts_per_step: P` sets `per_device_train_batch_size` before TRL checks the batch against G (a sweep
        over G would otherwise hit TRL's divisibility check for every G the base batch does not fit)."""
        if self.prompts_per_step is None:
            return
        if self.generation_batch_size is not None:
            raise ValueError("prompts_per_step and generation_batch_size both set: prompts_per_step derives the batch")
        # WORLD_SIZE: set by accelerate launch / torchrun on every rank, before TRL's own batch arithmetic
        self.per_device_train_batch_size = self.batch_for(int(os.environ.get("WORLD_SIZE", "1")))

    def __post_init__(self):
        self._check_ranges()
        if self.prompts_per_step is not None and not (isinstance(self.prompts_per_step, int)
                                                      and self.prompts_per_step >= 1):
            raise ValueError(f"prompts_per_step={self.prompts_per_step!r}: must be an integer >= 1")
        self._apply_prompts_per_step()
        self._check_choices()
        self._check_open_ended()
        colocated = bool(getattr(self, "use_vllm", False)) and getattr(self, "vllm_mode", None) == "colocate"
        lacking = self._vllm_anchor_lacks()
        #: `auto` may still fall back to transformers at start-up (a weight source the vLLM anchor cannot stream)
        self.cat_anchor_engine_auto = self.cat_anchor_engine == "auto"
        if self.cat_anchor_engine == "auto":  # resolved here so the W&B run config records the engine really used
            self.cat_anchor_engine = "vllm" if colocated and lacking is None else "transformers"
        if self.cat_anchor_engine == "vllm" and lacking is not None:
            raise ValueError(f"cat_anchor_engine=vllm: {lacking}")
        if self.cat_estimator in ("min_ppl", "mutual_predictability") and self.cat_anchor_engine == "openai":
            raise ValueError(
                f"cat_estimator={self.cat_estimator} scores every rollout's token log-probabilities under the anchor; "
                "an OpenAI-compatible server does not return them for given text. Use cat_anchor_engine: "
                "transformers (or vllm with use_vllm: true, vllm_mode: colocate)."
            )
        if self.cat_anchor_engine == "vllm" and not colocated:
            raise ValueError(
                "cat_anchor_engine=vllm time-shares TRL's colocated vLLM engine: set use_vllm: true and vllm_mode: "
                "colocate. With vllm_mode: server, serve pi_0 separately (`vllm serve <initial model>`) and use "
                "cat_anchor_engine: openai."
            )
        if isinstance(self.cat_vllm_llm_kwargs, str):  # from the command line, as JSON (like model_init_kwargs)
            try:
                self.cat_vllm_llm_kwargs = json.loads(self.cat_vllm_llm_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(f"cat_vllm_llm_kwargs={self.cat_vllm_llm_kwargs!r} is not JSON ({err.msg}); e.g. "
                                 "'{\"enforce_eager\": true}'") from None
        check_vllm_llm_kwargs(self.cat_vllm_llm_kwargs)
        if self.cat_vllm_llm_kwargs and not (getattr(self, "use_vllm", False) and self.vllm_mode == "colocate"):
            raise ValueError("cat_vllm_llm_kwargs configures TRL's colocated vLLM engine: it needs use_vllm: true "
                             "and vllm_mode: colocate.")
        validate_template(self.synthesis_template, self.cat_include_question)
        for name in ("cat_anchor_batch_size", "cat_anchor_max_context"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset), got {value}")
        if self.cat_anchor_timeout <= 0 or self.cat_anchor_max_retries < 0:
            raise ValueError(f"cat_anchor_timeout must be > 0 and cat_anchor_max_retries >= 0, got "
                             f"{self.cat_anchor_timeout} and {self.cat_anchor_max_retries}")
        if self.cat_anchor_on_failure not in ("skip", "raise"):
            raise ValueError(f"cat_anchor_on_failure must be skip or raise, got {self.cat_anchor_on_failure!r}")
        if self.cat_match_timeout <= 0:
            raise ValueError(f"cat_match_timeout must be > 0 seconds, got {self.cat_match_timeout}")
        if self.cat_anchor_max_new_tokens < 1:
            raise ValueError(f"cat_anchor_max_new_tokens must be >= 1, got {self.cat_anchor_max_new_tokens}")
        resolve_anchor_weights(self.cat_anchor_weights, is_peft=None, has_ref_model=self.beta > 0,
                               sync_ref_model=self.sync_ref_model)
        super().__post_init__()

    def _vllm_anchor_lacks(self) -> str | None:
        """Why the vLLM anchor cannot serve this configuration (None if it can): it generates and scores given text,
        but has no next-token log-probs, which the anchor-as-judge log-prob mode needs."""
        if self.open_ended and self.cat_judge_engine == "anchor" and self.cat_judge_mode == "logprob":
            return ("the anchor also judges (cat_judge_engine: anchor) in cat_judge_mode: logprob, which the vLLM "
                    "anchor does not provide. Use cat_judge_mode: generate, or cat_anchor_engine: transformers.")
        return None

    @property
    def open_ended(self) -> bool:
        return self.cat_reward != "math"

    @property
    def synthesis_template(self) -> str:
        if self.cat_synthesis_prompt:
            return self.cat_synthesis_prompt
        return FREEFORM_SYNTHESIS_PROMPT if self.open_ended else MATH_SYNTHESIS_PROMPT

    def _check_open_ended(self) -> None:
        if self.cat_anchor_engine == "openai" and not self.cat_anchor_base_url:
            raise ValueError("cat_anchor_engine=openai needs cat_anchor_base_url (the server serving pi_0).")
        if not self.open_ended:
            return
        if self.cat_estimator != "synthesis":
            raise ValueError(f"cat_reward={self.cat_reward} needs cat_estimator: synthesis (majority vote needs "
                             "final answers, which open-ended responses do not have).")
        if self.cat_judge_chat_template_kwargs is not None and not isinstance(self.cat_judge_chat_template_kwargs,
                                                                              dict):
            raise ValueError("cat_judge_chat_template_kwargs must be a mapping")
        if self.cat_judge_engine == "openai" and not (self.cat_judge_base_url and self.cat_judge_model):
            raise ValueError("cat_judge_engine=openai needs cat_judge_base_url and cat_judge_model (served name).")
        if self.cat_judge_engine == "transformers" and not self.cat_judge_model:
            raise ValueError("cat_judge_engine=transformers needs cat_judge_model (a local path or alias).")
        if not 1 <= self.cat_rubric_min_criteria <= self.cat_rubric_max_criteria:
            raise ValueError("need 1 <= cat_rubric_min_criteria <= cat_rubric_max_criteria, got "
                             f"{self.cat_rubric_min_criteria} and {self.cat_rubric_max_criteria}")
        if self.cat_rubric_prompt:
            validate_placeholders(self.cat_rubric_prompt, ("reference",), "cat_rubric_prompt")
        if self.cat_judge_prompt:
            validate_placeholders(self.cat_judge_prompt, ("response", "criterion"), "cat_judge_prompt")
        if self.cat_judge_max_new_tokens < 1 or self.cat_judge_max_concurrency < 1 or self.cat_judge_timeout <= 0:
            raise ValueError("cat_judge_max_new_tokens and cat_judge_max_concurrency must be >= 1, "
                             "cat_judge_timeout > 0")
        if self.cat_length_penalty_tokens is not None:
            if self.cat_length_penalty_tokens < 1:
                raise ValueError(f"cat_length_penalty_tokens must be >= 1, got {self.cat_length_penalty_tokens}")
            if self.max_completion_length is not None and self.cat_length_penalty_tokens >= self.max_completion_length:
                raise ValueError(
                    f"cat_length_penalty_tokens={self.cat_length_penalty_tokens} >= max_completion_length="
                    f"{self.max_completion_length}: the penalty could never fire."
                )
