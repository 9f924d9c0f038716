"""`CaTGRPOTrainer`: GRPO whose reward functions see a reference synthesized by the frozen anchor from whole groups.

`_calculate_rewards` is overridden (the per-group table goes to W&B from `CaTLoggingCallback.on_log`), and `_generate`
is extended for a server anchor's overlap only (its requests leave right after decoding). Per generation batch:

    local slice --gather--> global batch --cut--> groups of G --deal--> ranks --one engine call--> references
    --gather--> every rank --> `cat_reference` on each local input --> super()._calculate_rewards (TRL's rewards,
    advantages, logging unchanged)

The gold column (if any) is removed from the inputs handed to `super()`, so no reward function can read it; it is
used only for the diagnostic metrics computed here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

import torch
from trl import GRPOTrainer

from .answers import AnswerMatcher, get_extractor
from .callbacks import CaTLoggingCallback, GroupLog
from .config import CaTGRPOConfig
from .data.labels import GOLD_COLUMN, GOLD_RUBRICS_COLUMN
from .engines.anchor_weights import freeze_initial_adapter
from .engines.base import Engine
from .estimators.base import NoReference, ReferenceEstimator
from .components import (
    build_anchor_engine,
    build_judge,
    build_judge_engine,
    build_reference_estimator,
    open_ended_rewards,
)
from .estimators.across_ranks import estimate_all, gather_all, gather_groups, local_references
from .estimators.diagnostics import aggregate, analyse_group
from .rewards.verifiable import CaTMathReward
from .engines.overlap import OverlappedEngine
from .trl_compat import (
    extra_vllm_llm_kwargs,
    generated_completions,
    holding_all_rewards_none_warning,
    install_weight_sync,
    log_completion_column,
    log_trainer_metric,
    release_warnings,
    restore_fsdp2_reference_model,
    reward_weights,
)

logger = logging.getLogger(__name__)


class CaTGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` for Compute as Teacher: every reward call sees a reference that the frozen anchor pi_0
    synthesized from the whole group of G rollouts (never from labels).

    `_calculate_rewards` is overridden: it gathers the global batch, cuts it into groups of G, has the
    estimator produce one reference per group, strips label columns and adds `cat_reference` (and `cat_rubric`)
    to every input before TRL's own reward computation, advantages and logging run unchanged.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`): the policy, as for `GRPOTrainer`.
        reward_funcs (`list`, *optional*): TRL reward functions. Defaults to `[CaTMathReward(...)]` for
            `cat_reward: math`, or the rubric / judge rewards built from `args` for open-ended rewards.
        args (`CaTGRPOConfig`, *optional*): GRPO settings plus the `cat_*` settings.
        *pos, **kwargs: the rest of `GRPOTrainer`'s arguments (`train_dataset`, `processing_class`, `peft_config`, ...).
        anchor_engine (`Engine`, *optional*): the engine running pi_0; built from `args.cat_anchor_*` when None
            (on the PEFT base, TRL's reference model, a frozen copy, the colocated vLLM engine or a server).
        estimator (`ReferenceEstimator`, *optional*): built from `args.cat_estimator` when None.
        anchor_model_name_or_path (`str`, *optional*): the initial checkpoint for a `copy` anchor (never a resumed
            checkpoint).

    Attributes set here: `cat_engine`, `cat_estimator`, `cat_anchor_source` (`peft_base` / `ref_model` / `copy` /
    `server`), `cat_anchor_kind` (engine really used), `cat_budget`, `cat_group_log`.

    Example:

    ```python
    from cat_trl import CaTGRPOConfig, CaTGRPOTrainer
    from cat_trl.data import load_synthetic_math
    from cat_trl.embedded_model import resolve_model_path

    model = resolve_model_path("smollm2-135m-instruct")  # the embedded model, converted once, offline
    args = CaTGRPOConfig(output_dir="cat-out", num_generations=4, per_device_train_batch_size=4, max_steps=1,
                         max_completion_length=32, cat_anchor_max_new_tokens=48, use_cpu=True, bf16=False,
                         model_init_kwargs={"dtype": "float32"},  # float32: bf16 matmuls are slow on most CPUs
                         report_to=[])
    trainer = CaTGRPOTrainer(model, args=args, train_dataset=load_synthetic_math(8))
    trainer.train()
    ```
    """

    _tag_names = ["trl", "grpo", "cat"]

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: CaTGRPOConfig | None = None,
        *pos,
        anchor_engine: Engine | None = None,
        estimator: ReferenceEstimator | None = None,
        anchor_model_name_or_path: str | None = None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config.name_or_path
            args = CaTGRPOConfig(f"{name.split('/')[-1]}-CaT")
        elif not isinstance(args, CaTGRPOConfig):
            raise TypeError(f"CaTGRPOTrainer needs a CaTGRPOConfig, got {type(args).__name__}")
        self.cat_judge = None
        if reward_funcs is None:
            if args.open_ended:
                self.cat_judge = build_judge(args, build_judge_engine(args))
                reward_funcs = open_ended_rewards(args, self.cat_judge)
            else:
                reward_funcs = [CaTMathReward(args.cat_match, args.cat_match_timeout, args.cat_answer_extraction)]
        if (
            args.beta == 0.0
            and args.cat_estimator != "majority"
            and anchor_engine is None
            and estimator is None
            and args.cat_anchor_weights in ("auto", "peft_base")
        ):
            freeze_initial_adapter(model)  # a pre-trained adapter is part of pi_0 (TRL copies it only if beta > 0)
        with extra_vllm_llm_kwargs(args.cat_vllm_llm_kwargs if args.use_vllm else None):
            super().__init__(model, reward_funcs, args, *pos, **kwargs)
        # Counted policy syncs (the vLLM anchor's residency check) and, on vLLM's CPU build, a reload-based sync: TRL's
        # `load_weights` sync cannot update CPU-packed weights (see trl_compat).
        install_weight_sync(getattr(self, "vllm_generation", None))
        # TRL shards its reference model as loaded; under FSDP2 with CPU-RAM-efficient loading that is zeros on every
        # rank but 0 (transformers < 5.18): restore pi_0 there before it serves as KL reference or anchor.
        if restore_fsdp2_reference_model(self):
            logger.info("CaT: TRL's FSDP2 reference model restored from rank 0's initial weights")
        self.cat_matcher = AnswerMatcher(args.cat_match, args.cat_match_timeout)
        self.cat_extract = get_extractor(args.cat_answer_extraction)
        self.cat_anchor_source = "n/a"
        #: the anchor engine really used (`cat_anchor_engine: auto` may fall back from vllm to transformers)
        self.cat_anchor_kind = args.cat_anchor_engine if anchor_engine is None else type(anchor_engine).__name__
        if estimator is None and args.cat_reward == "physician_rubric":
            estimator = NoReference()  # the oracle scores against physician rubrics: no anchor work at all
        if estimator is None and args.cat_estimator != "majority" and anchor_engine is None:
            anchor_engine, self.cat_anchor_source, self.cat_anchor_kind = build_anchor_engine(
                self, anchor_model_name_or_path)
        if anchor_engine is not None and self.cat_anchor_kind == "openai" and args.cat_anchor_overlap:
            # the server works on a rank's syntheses while TRL computes log-probs (see engines/overlap.py)
            anchor_engine = OverlappedEngine(anchor_engine)
        self.cat_engine = anchor_engine
        self.cat_anchor_failed_groups_total = 0
        self._cat_stats_before: dict | None = None
        if self.cat_judge is not None and args.cat_judge_engine == "anchor":
            if anchor_engine is None:  # e.g. physician_rubric, which builds no anchor
                raise ValueError("cat_judge_engine=anchor needs the synthesis anchor engine")
            logger.warning("cat_judge_engine=anchor: the judge is pi_0 itself, not an independent model.")
            self.cat_judge.engine = anchor_engine
        if args.cat_reward == "physician_rubric":
            logger.warning("cat_reward=physician_rubric is the ORACLE baseline: physician rubrics (labels) reach the "
                           "reward. This is not CaT.")
        self.cat_estimator = estimator or build_reference_estimator(args, anchor_engine)
        self.cat_budget = None
        if hasattr(self.cat_estimator, "check_budget"):
            widest = max(self.num_generations, self.num_generations_eval or 0)  # eval groups may be larger
            self.cat_budget = self.cat_estimator.check_budget(widest, args.max_completion_length)
        self._cat_last_cycle: float | None = None
        self._cat_told_unrewarded = False  # the no-reference line is a warning once, then info
        self.cat_group_log = GroupLog(args.output_dir)
        self.add_callback(CaTLoggingCallback(self))

    # ------------------------------------------------------------------------------------------ rewards

    def cat_start_cycle_clock(self) -> None:
        """Starts the clock `cat/anchor_share` divides by (the wall time of one generation cycle); called when
        training starts, then restarted by every training reward call."""
        self._cat_last_cycle = time.perf_counter()

    def _cat_seed_anchor(self) -> None:
        if self.args.cat_anchor_seed is not None and hasattr(self.cat_estimator, "sampling"):
            # Reproducible yet step- and rank-dependent: the same run re-synthesizes the same references.
            seed = self.args.cat_anchor_seed + 100_003 * self.state.global_step + self.accelerator.process_index
            self.cat_estimator.sampling = replace(self.cat_estimator.sampling, seed=seed)

    def _generate(self, prompts):
        """TRL's generation; then, with an overlapped server anchor, this rank's synthesis requests are sent right away
        (collected in `_calculate_rewards`, after TRL's log-prob passes)."""
        output = super()._generate(prompts)
        if isinstance(self.cat_engine, OverlappedEngine):
            self._cat_send_anchor(prompts, generated_completions(output))
        return output

    def _cat_send_anchor(self, prompts, completions) -> None:
        """The first anchor call of this rank's groups, exactly as `estimate_all` will make it (same groups dealt to
        this rank, same seed), started in the background."""
        from accelerate import PartialState

        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        batch = gather_groups(prompts, completions, num_generations)  # collective: every rank is in _generate
        self._cat_seed_anchor()
        state = PartialState()
        mine = [batch.groups[g] for g in range(state.process_index, len(batch.groups), state.num_processes)]
        request = self.cat_estimator.anchor_request(mine)
        self._cat_stats_before = self.cat_engine.stats.snapshot()
        if request is not None:
            self.cat_engine.prefetch(request.conversations, request.sampling, request.chat_template_kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        gold_column = self.args.cat_gold_column
        # Labels are hidden whatever cat_gold_column says; physician rubrics only reach the explicit oracle baseline.
        hidden = {gold_column, GOLD_COLUMN, GOLD_RUBRICS_COLUMN}
        if self.args.cat_reward == "physician_rubric":
            hidden.discard(GOLD_RUBRICS_COLUMN)
        start = time.perf_counter()

        batch = gather_groups(prompts, completions, num_generations)
        self._cat_seed_anchor()
        stats_before = self.cat_engine.stats.snapshot() if self.cat_engine is not None else None
        if self._cat_stats_before is not None:  # counted from when the overlapped requests left
            stats_before, self._cat_stats_before = self._cat_stats_before, None
        references = estimate_all(self.cat_estimator, batch.groups)
        anchor_seconds = time.perf_counter() - start
        local = local_references(batch, references)

        # Strip the gold column and attach the reference: this is all that reward functions get to see.
        reward_inputs = [
            {**{k: v for k, v in inp.items() if k not in hidden}, "cat_reference": ref.text, "cat_rubric": ref.rubric}
            for inp, ref in zip(inputs, local)
        ]
        log_completion_column(self, "cat_reference_answer", [ref.answer for ref in local])
        with holding_all_rewards_none_warning() as held:
            rewards_per_func = super()._calculate_rewards(reward_inputs, prompts, completions, completion_ids_list)
        self._cat_report_unrewarded(batch, references, local, rewards_per_func, held)

        self._cat_diagnostics(mode, batch, references, inputs, gold_column, rewards_per_func, anchor_seconds,
                              stats_before)
        return rewards_per_func

    def _cat_usable(self, ref) -> bool:
        """Whether a group's reference is one its CaT reward can score against (else the group gets None)."""
        if self.args.cat_reward == "rubric":
            return bool(ref.rubric)
        if self.args.cat_reward == "judge_equivalence":
            return bool(ref.text)
        if self.args.cat_reward == "physician_rubric":
            return True  # the oracle needs no reference
        return ref.answer is not None

    def _cat_report_unrewarded(self, batch, references, local, rewards_per_func, held):
        """A group without a usable reference gets no reward by design (counted in `cat/reference_parse_failure` /
        `cat/rubric_failure`): said here in one line per generation batch, a warning the first time. TRL's own
        warning (the whole row, whenever every reward is None for a row), held back during the reward call, is
        released only when the row it names HAD a usable reference: then a reward function returned None itself."""
        unscored = torch.isnan(rewards_per_func).all(dim=1).tolist()  # global rows, gathered in rank order
        if held:  # TRL warns on the main process about the first unscored row of its local slice
            mine = unscored[batch.offset : batch.offset + batch.local_size]
            with_reference = [i for i, (u, ref) in enumerate(zip(mine, local)) if u and self._cat_usable(ref)]
            if True in mine and self._cat_usable(local[mine.index(True)]):
                release_warnings(held)
            elif with_reference:  # TRL named a row without reference: say which rows are the reward functions' doing
                logger.warning(
                    "cat-trl: every reward function returned None for %d rollout(s) whose group had a usable "
                    "reference (first: local row %d); check the reward functions", len(with_reference),
                    with_reference[0])
        G = batch.num_generations
        missing = sum(1 for g, ref in enumerate(references)
                      if not self._cat_usable(ref) and all(unscored[g * G : (g + 1) * G]))
        if missing and self.accelerator.is_main_process:
            metric = {"rubric": " (cat/rubric_failure)", "math": " (cat/reference_parse_failure)"}.get(
                self.args.cat_reward, "")
            logger.log(logging.INFO if self._cat_told_unrewarded else logging.WARNING,
                       "cat-trl: %d of %d group(s) had no usable reference this step; their rollouts get no reward%s",
                       missing, len(references), metric)
            self._cat_told_unrewarded = True

    def _cat_diagnostics(self, mode, batch, references, inputs, gold_column, rewards_per_func, anchor_seconds,
                         stats_before):
        """Metrics from the gathered batch. Every rank computes the same values (TRL's convention for `_metrics`);
        only the gold gather is a collective."""
        has_gold = gold_column in inputs[0]
        golds = None
        if has_gold:
            local_gold = [inp.get(gold_column) for inp in inputs]
            golds_all = gather_all(local_gold)
            golds = [golds_all[g * batch.num_generations] for g in range(len(batch.groups))]
        diags = [
            analyse_group(group, ref, self.cat_matcher, None if golds is None else golds[g], self.cat_extract)
            for g, (group, ref) in enumerate(zip(batch.groups, references))
        ]
        verifiable = not self.args.open_ended and getattr(self.cat_estimator, "extract_answer", True) is not None
        metrics = aggregate(diags, batch.num_generations, verifiable=verifiable)
        metrics["anchor_seconds"] = anchor_seconds
        timing = self.cat_engine.take_timing() if isinstance(self.cat_engine, OverlappedEngine) else None
        if timing is not None:
            # how long the overlapped requests ran before the reward step asked, and how long it then waited
            metrics["anchor_hidden_seconds"], metrics["anchor_wait_seconds"] = timing
        failed = sum(bool(r.diagnostics.get("anchor_failed")) for r in references)
        if failed or self.cat_anchor_failed_groups_total:
            self.cat_anchor_failed_groups_total += failed
            metrics["anchor_failed_groups"] = failed
            metrics["anchor_failed_groups_total"] = self.cat_anchor_failed_groups_total
        if failed and self.accelerator.is_main_process:
            logger.warning("cat-trl: the anchor server could not answer for %d of %d group(s) this step (%d in the "
                           "run); they get no reward: %s", failed, len(references),
                           self.cat_anchor_failed_groups_total,
                           getattr(self.cat_engine, "last_failure", None) or "no detail")
        formats = [r.diagnostics["format_failure"] for r in references if "format_failure" in r.diagnostics]
        if formats:  # syntheses without the `# UNIFIED RESPONSE` heading: their whole output is the reference
            metrics["reference_format_failure"] = sum(formats) / len(formats)
        if self.args.cat_reward == "rubric":
            failed = [bool(r.diagnostics.get("rubric_failed")) for r in references]
            metrics["rubric_failure"] = sum(failed) / max(len(failed), 1)
            sizes = [len(r.rubric) for r in references if r.rubric]
            if sizes:
                metrics["rubric_size"] = sum(sizes) / len(sizes)
        now = time.perf_counter()
        if mode == "train" and self._cat_last_cycle is not None:
            metrics["anchor_share"] = anchor_seconds / max(now - self._cat_last_cycle, 1e-9)
        if mode == "train":
            self._cat_last_cycle = now
        if stats_before is not None:
            after = self.cat_engine.stats.snapshot()
            metrics["anchor_completion_tokens"] = (after["completion_tokens"] - stats_before["completion_tokens"])
        for key, value in metrics.items():
            log_trainer_metric(self, mode, f"cat/{key}", value)

        if self.args.cat_log_groups and self.accelerator.is_main_process:
            total = rewards_per_func.nan_to_num(nan=0.0) * reward_weights(self).to(rewards_per_func.device)
            unscorable = torch.isnan(rewards_per_func).all(dim=1)
            total = total.sum(dim=1).masked_fill(unscorable, float("nan")).tolist()
            G, new_rows = batch.num_generations, []
            for g, (group, ref, d) in enumerate(zip(batch.groups, references, diags)):
                row = {
                    "step": self.state.global_step,
                    "mode": mode,
                    "group": g,
                    "prompt": group.question,
                    "completions": group.completions,
                    "answers": d.answers,
                    "majority": d.majority,
                    "reference": ref.text,
                    "anchor_output": ref.diagnostics.get("anchor_output"),  # raw: the reference is its unified part
                    "reference_answer": ref.answer,
                    "rubric": ref.rubric,
                    "rubric_error": ref.diagnostics.get("rubric_error"),
                    "rewards": [None if math.isnan(r) else r for r in total[g * G : (g + 1) * G]],
                    "truncated": d.truncated,
                    "estimated_on_rank": ref.diagnostics.get("rank"),
                }
                if ref.diagnostics.get("anchor_template") is not None:  # stored once by GroupLog, not per row
                    row["_anchor"] = (ref.diagnostics["anchor_template"], ref.diagnostics["anchor_rollouts"],
                                      ref.diagnostics["include_question"], ref.diagnostics["anchor_prompt_sha256"])
                if d.gold is not None:
                    row["gold_answer (diagnostics only)"] = d.gold
                new_rows.append(row)
            self.cat_group_log.append(new_rows)
