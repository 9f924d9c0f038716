"""`CaTGRPOConfig._check_ranges` holds only checks TRL lacks: each bad value below is accepted silently by TRL 1.16's
plain `GRPOConfig` (or crashes it with an unrelated error), and refused by `CaTGRPOConfig` in one line naming the
setting. When TRL starts refusing one itself, the first test fails and the duplicate check can be removed."""

from __future__ import annotations

import warnings

import pytest
from trl import GRPOConfig

from cat_trl.config import CaTGRPOConfig

BASE = dict(output_dir="/tmp/cat-trl-ranges", use_cpu=True, bf16=False, per_device_train_batch_size=8,
            num_generations=4)

#: (setting, a value TRL does not refuse by name)
UNCHECKED_BY_TRL = [
    ("num_generations", 0), ("num_generations", 1), ("num_generations_eval", 1), ("per_device_train_batch_size", 0),
    ("per_device_eval_batch_size", 0), ("gradient_accumulation_steps", 0), ("max_completion_length", 0),
    ("steps_per_generation", 0), ("generation_batch_size", 0), ("num_iterations", 0), ("temperature", 0.0),
    ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("min_p", 2.0), ("learning_rate", -1.0), ("beta", -1.0),
]


def _plain(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOConfig(**{**BASE, **kwargs})


@pytest.mark.parametrize("name, value", UNCHECKED_BY_TRL)
def test_trl_does_not_refuse_it_by_name(name, value):
    try:
        _plain(**{name: value})
    except ValueError as err:
        assert name not in str(err), f"TRL now checks {name} itself: drop it from CaTGRPOConfig._check_ranges"
    except ArithmeticError:
        pass  # e.g. num_generations=0: a ZeroDivisionError deep in TRL's __post_init__, not a message


@pytest.mark.parametrize("name, value", UNCHECKED_BY_TRL)
def test_cat_config_refuses_it_in_one_line(name, value):
    with pytest.raises(ValueError, match=rf"^{name}={value!r}: must be"):
        CaTGRPOConfig(**{**BASE, name: value})
