"""The examples in the docstrings users meet first run as written."""

from __future__ import annotations

import doctest
import os
import re
import textwrap


import cat_trl.rewards.verifiable as verifiable
from cat_trl.trainer import CaTGRPOTrainer


def test_reward_docstring_examples_run():
    result = doctest.testmod(verifiable, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.attempted >= 2 and result.failed == 0


def test_trainer_docstring_example_trains(tmp_path, embedded_model_path, monkeypatch):
    """The `CaTGRPOTrainer` example (embedded model, built-in problems, one CPU step) runs verbatim."""
    code = textwrap.dedent(re.search(r"```python\n(.*?)```", CaTGRPOTrainer.__doc__, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "CaTGRPOTrainer.__doc__", "exec"), namespace)  # noqa: S102 - our own docstring
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    assert os.path.exists(tmp_path / "cat-out" / "cat_groups.jsonl")
    assert any(k.startswith("cat/") for k in trainer.state.log_history[0])
