"""Learning comparisons (`cat-trl compare`): arms trained side by side from one initial model and scored on one
held-out split -- CaT-RL against majority voting, selection estimators, GRPO on gold labels and CaT-SFT."""

from .heldout import HeldOutEvalCallback, HeldOutEvaluator, HeldOutSettings, split_heldout
from .runner import ARMS, CompareArguments, Comparison

__all__ = ["ARMS", "CompareArguments", "Comparison", "HeldOutEvalCallback", "HeldOutEvaluator", "HeldOutSettings",
           "split_heldout"]
