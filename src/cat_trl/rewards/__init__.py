"""CaT reward functions for TRL, usable with `CaTGRPOTrainer`, vanilla `GRPOTrainer` and `trl grpo --reward_funcs`.

* `CaTMathReward` / `cat_math_reward`: scores completions against a `cat_reference` column.
* `CaTSynthesisMathReward` / `cat_synthesis_math_reward`: self-contained (forms groups, calls the anchor).
* `CaTRubricReward`: fraction of the anchor's rubric (`cat_rubric`) that a judge finds satisfied.
* `JudgeEquivalenceReward`, `PhysicianRubricReward`: the paper's open-ended baselines.

Names resolve on first access (PEP 562), so `import cat_trl.rewards` imports neither torch nor the engines; TRL's
`--reward_funcs cat_trl.rewards.cat_math_reward` (import the module, then `getattr`) builds only what it names.
"""

from __future__ import annotations

import importlib

_CLASSES = {
    "CaTMathReward": ".verifiable",
    "CaTSynthesisMathReward": ".synthesis_math",
    "AsyncCaTRubricReward": ".judged",
    "CaTRubricReward": ".judged",
    "JudgeEquivalenceReward": ".judged",
    "PhysicianRubricReward": ".judged",
}
#: ready-made instances for `reward_funcs=["cat_trl.rewards.cat_math_reward"]` and, configured from the environment,
#: `trl grpo --reward_funcs cat_trl.rewards.cat_synthesis_math_reward`
_INSTANCES = {
    "cat_math_reward": lambda: _get("CaTMathReward")(),
    "cat_synthesis_math_reward": lambda: _get("CaTSynthesisMathReward")(from_env=True),
}


def _get(name: str):
    return getattr(importlib.import_module(_CLASSES[name], __name__), name)


def __getattr__(name: str):
    if name in _CLASSES:
        value = _get(name)
    elif name in _INSTANCES:
        value = _INSTANCES[name]()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # built once
    return value


__all__ = [*_CLASSES, *_INSTANCES]
