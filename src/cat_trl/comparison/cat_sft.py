"""CaT-SFT's training data (the paper's SFT baseline): pi_0 samples G rollouts per training question, pi_0
synthesizes one reference from them -- question-blind, exactly as in CaT-RL -- and the policy is then fine-tuned on
(question, synthesized reference) pairs with TRL's `SFTTrainer`.

No label is read: the rows' gold answers are not passed to the engine or the estimator. Questions whose synthesis
yields no reference text are left out (counted).
"""

from __future__ import annotations

from typing import Any

from ..engines.base import Engine, SamplingSettings
from ..estimators.base import Group
from ..estimators.synthesis import SynthesisEstimator
from ..messages import question_text


def build_cat_sft_rows(engine: Engine, rows: list[dict[str, Any]], num_generations: int, sampling: SamplingSettings,
                       estimator: SynthesisEstimator, chat_template_kwargs: dict | None = None,
                       questions_per_call: int = 16) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(SFT rows in TRL's conversational prompt-completion format, stats). One reference per question.

    Args:
        engine: pi_0 (the initial policy), used for the rollouts and, through `estimator`, for the synthesis.
        rows: training rows with a `prompt` (chat messages); any label column is ignored.
        num_generations: G rollouts per question.
        sampling: the policy's sampling settings for the rollouts.
        estimator: a question-blind `SynthesisEstimator` on pi_0.
    """
    if estimator.include_question:
        raise ValueError("CaT-SFT synthesizes question-blind references (the paper's anchor); include_question is on")
    out, dropped = [], 0
    for start in range(0, len(rows), questions_per_call):
        chunk = rows[start : start + questions_per_call]
        conversations = [list(r["prompt"]) for r in chunk]
        rollouts = engine.generate([c for c in conversations for _ in range(num_generations)], sampling,
                                   chat_template_kwargs)
        groups = [
            Group(prompt=conv, question=question_text(conv),
                  completions=[g.text for g in rollouts[i * num_generations : (i + 1) * num_generations]])
            for i, conv in enumerate(conversations)
        ]
        for conv, ref in zip(conversations, estimator.estimate(groups)):
            if not ref.text or not ref.text.strip():
                dropped += 1
                continue
            out.append({"prompt": conv, "completion": [{"role": "assistant", "content": ref.text}],
                        "reference_answer": ref.answer})
    total = len(rows)
    stats = {"questions": total, "references": len(out), "dropped": dropped,
             "reference_parse_failure": sum(r["reference_answer"] is None for r in out) / max(len(out), 1)}
    return out, stats
