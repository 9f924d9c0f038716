"""Per-group logging of a CaT run, outside the trainer: `<output_dir>/cat_groups.jsonl` and the W&B `cat/groups` table.

Each generation batch adds one row per group (prompt, the G completions, their answers, the reference, rewards, ...).
The anchor's prompt is *not* stored per row: it is the synthesis template filled with the G rollouts, which the row
already holds, so a row keeps only the template's hash (the template itself is written once, to
`cat_anchor_templates.json`), the rollouts as the anchor saw them when they had to be truncated, and the prompt's
sha256. At recipe scale (256 groups per step) that is the difference between tens of MB and a few hundred kB of
JSONL per step. `read_group_rows` restores `anchor_prompt` on every row and checks it against the stored hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .estimators.prompts import build_synthesis_prompt

if TYPE_CHECKING:
    from .trainer import CaTGRPOTrainer

logger = logging.getLogger(__name__)

GROUPS_FILE = "cat_groups.jsonl"
TEMPLATES_FILE = "cat_anchor_templates.json"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class GroupLog:
    """Appends per-group rows to `<output_dir>/cat_groups.jsonl` (main process only) and keeps them until the next
    `log` for the W&B table.

    A row may carry the anchor prompt's parts as `_anchor` = (template, rollouts the anchor saw, include_question); it
    is replaced by `anchor_template` (template sha256), `anchor_rollouts` (only when they differ from
    `completions`, i.e. were truncated) and `anchor_prompt_sha256`."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.pending: list[dict[str, Any]] = []
        self._templates: dict[str, dict[str, Any]] | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.output_dir, GROUPS_FILE)

    def _template_id(self, template: str, include_question: bool) -> str:
        key = _sha256(f"{int(include_question)}:{template}")[:16]
        if self._templates is None:
            path = os.path.join(self.output_dir, TEMPLATES_FILE)
            self._templates = json.load(open(path)) if os.path.exists(path) else {}
        if key not in self._templates:
            self._templates[key] = {"template": template, "include_question": include_question}
            with open(os.path.join(self.output_dir, TEMPLATES_FILE), "w") as f:
                json.dump(self._templates, f, indent=1)
        return key

    def append(self, rows: list[dict[str, Any]]) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        for row in rows:
            anchor = row.pop("_anchor", None)
            if anchor is not None:
                template, rollouts, include_question, prompt_sha = anchor
                row["anchor_template"] = self._template_id(template, include_question)
                if list(rollouts) != list(row["completions"]):
                    row["anchor_rollouts"] = list(rollouts)
                row["anchor_prompt_sha256"] = prompt_sha
        with open(self.path, "a") as f:
            f.writelines(json.dumps(row, default=str) + "\n" for row in rows)
        self.pending.extend(rows)

    def take_pending(self) -> list[dict[str, Any]]:
        rows, self.pending = self.pending, []
        return rows

    def drop_after(self, step: int) -> None:
        """On resume, forget the rows written at or after the checkpoint's step: those steps are about to be redone."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) < step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill that forced the resume
        with open(self.path, "w") as f:
            f.writelines(kept)


def read_group_rows(output_dir: str) -> list[dict[str, Any]]:
    """The rows of `<output_dir>/cat_groups.jsonl`, each with `anchor_prompt` restored (exactly the text the anchor
    read; None for estimators that write no synthesis prompt).

    Raises:
        ValueError: a restored prompt does not match the sha256 recorded when it was sent (files from different
            runs mixed, or edited).
    """
    templates_path = os.path.join(output_dir, TEMPLATES_FILE)
    templates = json.load(open(templates_path)) if os.path.exists(templates_path) else {}
    rows = []
    with open(os.path.join(output_dir, GROUPS_FILE)) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            key = row.get("anchor_template")
            if key is not None:
                entry = templates[key]
                prompt = build_synthesis_prompt(entry["template"], row.get("anchor_rollouts", row["completions"]),
                                                row["prompt"], entry["include_question"])
                if _sha256(prompt) != row["anchor_prompt_sha256"]:
                    raise ValueError(f"{output_dir}: the anchor prompt of step {row.get('step')} group "
                                     f"{row.get('group')} does not match its recorded sha256")
                row["anchor_prompt"] = prompt
            else:
                row.setdefault("anchor_prompt", None)
            rows.append(row)
    return rows


class CaTLoggingCallback(TrainerCallback):
    """Starts the generation-cycle clock (anchor share of wall time), trims per-group rows on resume and sends the
    rows gathered since the last `log` to W&B as a `cat/groups` table."""

    def __init__(self, trainer: CaTGRPOTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.cat_start_cycle_clock()
        if state.global_step > 0 and self.trainer.accelerator.is_main_process:
            self.trainer.cat_group_log.drop_after(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        rows = self.trainer.cat_group_log.take_pending()
        if not rows or not self.trainer.accelerator.is_main_process or "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is None:
            return
        import pandas as pd

        frame = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows])
        wandb.log({"cat/groups": wandb.Table(dataframe=frame)})


# ---------------------------------------------------------------------------------------------- run bookkeeping

#: headline metrics of the end-of-run summary (first vs last logging steps)
SUMMARY_KEYS = ("reward", "cat/label_accuracy", "cat/ground_truth_ratio", "cat/majority_accuracy",
                "cat/reference_parse_failure", "cat/reference_ne_majority", "cat/anchor_share")
#: running totals the trainer logs (the last logged value is the run's total)
TOTAL_KEYS = ("cat/anchor_failed_groups_total",)
BEST_CHECKPOINT_FILE = "best_checkpoint.json"


def summarize(log_history: list[dict], window: int = 3) -> dict[str, dict[str, float]]:
    """First vs. last logged values of the headline metrics (means over `window` logging steps)."""
    import math

    rows = [h for h in log_history if "reward" in h]
    out: dict[str, dict[str, float]] = {}
    for key in SUMMARY_KEYS:
        values = [h[key] for h in rows if isinstance(h.get(key), (int, float)) and not math.isnan(h[key])]
        if values:
            w = max(1, min(window, len(values) // 2 or 1))
            out[key] = {"first": sum(values[:w]) / w, "last": sum(values[-w:]) / w, "steps_logged": len(values)}
    for key in TOTAL_KEYS:
        values = [h[key] for h in rows if isinstance(h.get(key), (int, float)) and not math.isnan(h[key])]
        if values:
            out[key] = {"total": max(values), "steps_logged": len(values)}
    return out


def format_summary(steps: int, summary: dict[str, dict[str, float]]) -> str:
    lines = [f"CaT-RL finished {steps} steps. What changed (mean of first vs last logging steps):"]
    for key, v in summary.items():
        if "total" in v:
            lines.append(f"  {key:32s} {v['total']:.0f} in the run")
            continue
        lines.append(f"  {key:32s} {v['first']:.3f} -> {v['last']:.3f}   ({v['steps_logged']} logged)")
    if "cat/label_accuracy" in summary:
        lines.append("  (label_accuracy: anchor reference == gold; ground_truth_ratio: policy rollouts == gold. Gold "
                     "is read only for these diagnostics.)")
    return "\n".join(lines)


class RunSummaryCallback(TrainerCallback):
    """At the end of training (main process): `cat_summary.json` (first vs last headline metrics; the full history
    is TRL's own `trainer_state.json`) and, with a validation set, `best_checkpoint.json` -- the checkpoint with the
    best validation score, which `cat-trl healthbench-eval --policy <output_dir>` then scores."""

    def __init__(self, validation_size: int | None = None):
        self.validation_size = validation_size
        self.summary: dict[str, dict[str, float]] = {}

    def on_train_end(self, args, state, control, **kwargs):
        self.summary = summarize(state.log_history)
        if not state.is_world_process_zero:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "cat_summary.json"), "w") as f:
            json.dump({"steps": state.global_step, "metrics": self.summary}, f, indent=2)
        if self.validation_size is not None:
            metric = args.metric_for_best_model
            best = {"checkpoint": state.best_model_checkpoint, "metric": metric, "value": state.best_metric,
                    "greater_is_better": args.greater_is_better, "validation_questions": self.validation_size,
                    "scores": [{"step": h["step"], metric: h.get(metric)} for h in state.log_history if metric in h]}
            with open(os.path.join(args.output_dir, BEST_CHECKPOINT_FILE), "w") as f:
                json.dump(best, f, indent=2)
            logger.info("best validation checkpoint: %s (%s = %s)", best["checkpoint"], metric, best["value"])


class RunConfigCallback(TrainerCallback):
    """Adds what the W&B run config needs beyond `args.to_dict()` (which TRL already logs, every `cat_*` field
    included) -- dataset and model arguments, how the anchor and judge were resolved -- once TRL's W&B callback has
    started the run (callbacks run in order)."""

    def __init__(self, extra: dict):
        self.extra = extra

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is not None:
            wandb.config.update(self.extra, allow_val_change=True)
