"""Compute as Teacher (CaT, arXiv 2509.14234) on Hugging Face TRL.

The anchor (frozen initial policy) reads the G rollouts of a GRPO group and synthesizes a reference; rewards come
from that reference instead of labels. Every name here resolves on first access, so `import cat_trl` and
`import cat_trl.rewards` load neither torch nor TRL (`tests/test_layout.py` checks it).
"""

__version__ = "0.1.0"

_LAZY = {
    "CaTGRPOConfig": "cat_trl.config",
    "CaTGRPOTrainer": "cat_trl.trainer",
    "CaTScriptArguments": "cat_trl.config",
    "CaTMathReward": "cat_trl.rewards",
    "CaTSynthesisMathReward": "cat_trl.rewards",
    "SynthesisEstimator": "cat_trl.estimators",
    "MajorityEstimator": "cat_trl.estimators",
    "TransformersEngine": "cat_trl.engines",
    "SamplingSettings": "cat_trl.engines",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cat_trl' has no attribute {name!r}")


__all__ = list(_LAZY)
