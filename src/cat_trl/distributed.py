"""The one collective everything else builds on: gather a Python list from every rank.

Kept apart from `grouping` (which uses it to cut whole groups) so that engines, which must keep ranks in step for
sharded forward passes, do not depend on the trainer-level grouping logic.
"""

from __future__ import annotations

from accelerate import PartialState
from accelerate.utils import gather_object


def gather_all(values: list) -> list:
    """Collective: the concatenation of every rank's list, in rank order (a copy when single-process)."""
    return gather_object(values) if PartialState().num_processes > 1 else list(values)
