"""Building the judge and the open-ended reward functions from `CaTGRPOConfig` (the wiring, not the logic: see
`rubrics.judge` and `rewards.rubric`)."""

from __future__ import annotations

from .engines.base import Engine
from .rubrics.judge import Judge
from .rubrics.prompts import EQUIVALENCE_PROMPT, JUDGE_PROMPT


def build_judge_engine(args) -> Engine | None:
    """The judge's engine, or None for `cat_judge_engine: anchor` (filled in once the anchor exists)."""
    if args.cat_judge_engine == "openai":
        from .engines.openai_engine import OpenAIEngine

        return OpenAIEngine(
            args.cat_judge_base_url,
            args.cat_judge_model,
            api_key_env=args.cat_judge_api_key_env,
            max_concurrency=args.cat_judge_max_concurrency,
            timeout=args.cat_judge_timeout,
            max_retries=args.cat_judge_max_retries,
            cache_path=args.cat_judge_cache_path,
        )
    if args.cat_judge_engine == "transformers":
        from .engines.transformers_engine import TransformersEngine
        from .models import resolve_model_path

        return TransformersEngine.from_pretrained(
            resolve_model_path(args.cat_judge_model), device=args.device, batch_size=args.cat_anchor_batch_size
        )
    return None


def build_judge(args, engine: Engine | None) -> Judge:
    template = args.cat_judge_prompt or (EQUIVALENCE_PROMPT if args.cat_reward == "judge_equivalence" else JUDGE_PROMPT)
    return Judge(engine if engine is not None else _Pending(), args.cat_judge_mode, template=template,
                 max_new_tokens=args.cat_judge_max_new_tokens, chat_template_kwargs=args.cat_judge_chat_template_kwargs)


class _Pending(Engine):
    """Placeholder until the anchor engine exists (cat_judge_engine: anchor)."""

    name = "anchor"

    def generate(self, conversations, sampling, chat_template_kwargs=None):
        raise RuntimeError("the judge's engine was never attached")


def open_ended_rewards(args, judge: Judge) -> list:
    from .rewards.rubric import (
        AsyncCaTRubricReward,
        CaTRubricReward,
        JudgeEquivalenceReward,
        PhysicianRubricReward,
    )

    penalty = dict(length_penalty_tokens=args.cat_length_penalty_tokens, length_penalty=args.cat_length_penalty)
    if args.cat_reward == "rubric":
        # An HTTP judge runs as an async reward (off the main thread, overlapping other async rewards); an in-process
        # judge stays synchronous on the main thread (collectives, device work).
        cls = AsyncCaTRubricReward if args.cat_judge_engine == "openai" else CaTRubricReward
        return [cls(judge, scale=args.cat_reward_scale, **penalty)]
    if args.cat_reward == "judge_equivalence":
        return [JudgeEquivalenceReward(judge, **penalty)]
    if args.cat_reward == "physician_rubric":
        return [PhysicianRubricReward(judge, **penalty)]
    raise ValueError(f"cat_reward={args.cat_reward!r} is not an open-ended reward")
