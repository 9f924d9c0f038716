"""CaT reward functions for TRL, usable with `CaTGRPOTrainer`, vanilla `GRPOTrainer` and `trl grpo --reward_funcs`.

* `CaTMathReward` / `cat_math_reward`: scores completions against a `cat_reference` column.
* `CaTSynthesisMathReward` / `cat_synthesis_math_reward`: self-contained (forms groups, calls the anchor).
* `CaTRubricReward`: fraction of the anchor's rubric (`cat_rubric`) that a judge finds satisfied.
* `JudgeEquivalenceReward`, `PhysicianRubricReward`: the paper's open-ended baselines.
"""

from .group import CaTSynthesisMathReward
from .rubric import (
    AsyncCaTRubricReward,
    CaTRubricReward,
    JudgeEquivalenceReward,
    PhysicianRubricReward,
)
from .verifiable import CaTMathReward

#: ready-made instance for `reward_funcs=["cat_trl.rewards.cat_math_reward"]`
cat_math_reward = CaTMathReward()
#: ready-made, environment-configured instance for `trl grpo --reward_funcs cat_trl.rewards.cat_synthesis_math_reward`
cat_synthesis_math_reward = CaTSynthesisMathReward(from_env=True)

__all__ = [
    "AsyncCaTRubricReward",
    "CaTMathReward",
    "CaTRubricReward",
    "CaTSynthesisMathReward",
    "JudgeEquivalenceReward",
    "PhysicianRubricReward",
    "cat_math_reward",
    "cat_synthesis_math_reward",
]
