"""The settings of a run and their checks: `CaTGRPOConfig` (TRL's `GRPOConfig` + `cat_*`), `CaTScriptArguments`
(dataset and prompt), and the pre-flight checks that need the dataset or the model's files but no weights."""

from .grpo import REMOVED_SETTINGS, CaTGRPOConfig, derive_batch
from .script_args import CaTScriptArguments

__all__ = ["REMOVED_SETTINGS", "CaTGRPOConfig", "CaTScriptArguments", "derive_batch"]
