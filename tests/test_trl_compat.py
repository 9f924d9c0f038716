"""Pins of the TRL internals that `cat_trl.trl_compat` relies on, checked against the installed TRL 1.16 (the
real-vLLM side is pinned by tests/test_vllm_real.py in the vLLM environment). A TRL upgrade that moves any of them
fails here, naming what moved."""

from __future__ import annotations

import inspect

import pytest
from trl import GRPOTrainer
from trl.generation import vllm_generation
from trl.generation.vllm_generation import VLLMGeneration

from cat_trl import trl_compat
from cat_trl.config import CaTGRPOConfig


def test_trl_colocate_sync_is_the_call_replaced_on_cpu():
    source = inspect.getsource(VLLMGeneration.sync_weights)
    # the colocated sync streams _iter_named_params into the driver worker's model, then resets the prefix cache
    assert "self._iter_named_params()" in source
    assert "llm_engine.model_executor.driver_worker.model_runner.model.load_weights" in source
    assert "reset_prefix_cache()" in source
    assert inspect.isgeneratorfunction(VLLMGeneration._iter_named_params)


def test_trl_builds_its_colocated_engine_through_the_module_level_llm_name():
    source = inspect.getsource(VLLMGeneration._init_vllm)
    assert "self.llm = LLM(" in source  # extra_vllm_llm_kwargs wraps `vllm_generation.LLM`
    for key in trl_compat.RESERVED_LLM_KWARGS:
        assert f"{key}=" in source, f"TRL no longer sets {key}: revisit RESERVED_LLM_KWARGS"
    assert "self._llm_weights_sleeping" in source


def test_trl_resyncs_the_policy_when_last_loaded_step_differs():
    source = inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "self.state.global_step != self._last_loaded_step" in source
    assert "self.vllm_generation.sync_weights()" in source


def test_weight_sync_subclass_overrides_only_sync_weights():
    cls = trl_compat._synced_subclass(VLLMGeneration)
    assert issubclass(cls, VLLMGeneration) and cls.__name__ == "CaTVLLMGeneration"
    assert cls.sync_weights is not VLLMGeneration.sync_weights
    assert cls.generate is VLLMGeneration.generate
    assert trl_compat._synced_subclass(VLLMGeneration) is cls  # one subclass, cached


def _colocated(llm_calls: list) -> VLLMGeneration:
    vg = VLLMGeneration.__new__(VLLMGeneration)  # attributes set by hand: no engine is built
    vg.mode, vg.enable_sleep_mode = "colocate", False
    vg.llm = type("LLM", (), {"reset_prefix_cache": lambda self: llm_calls.append("reset_prefix_cache")})()
    vg._iter_named_params = lambda: iter([("w", "tensor")])
    return vg


def test_install_weight_sync_counts_syncs_and_reloads_only_on_cpu(monkeypatch):
    class Server:
        mode = "server"

    server = Server()
    assert trl_compat.install_weight_sync(server) is False and type(server) is Server
    assert trl_compat.install_weight_sync(None) is False and trl_compat.policy_syncs(server) is None

    calls: list = []
    monkeypatch.setattr(trl_compat, "load_weights_into_vllm", lambda llm, w: calls.append(("reload", list(w))))
    monkeypatch.setattr(VLLMGeneration, "sync_weights", lambda self: calls.append("trl sync"))
    vg = _colocated(calls)
    assert trl_compat.install_weight_sync(vg) is True and type(vg).__name__ == "CaTVLLMGeneration"
    assert trl_compat.install_weight_sync(vg) is True and type(vg).__mro__[2] is VLLMGeneration  # idempotent
    monkeypatch.setattr(trl_compat, "vllm_runs_on_cpu", lambda: False)
    vg.sync_weights()
    assert calls == ["trl sync"] and trl_compat.policy_syncs(vg) == 1  # GPU: TRL's own load_weights sync
    calls.clear()
    monkeypatch.setattr(trl_compat, "vllm_runs_on_cpu", lambda: True)
    vg.sync_weights()
    assert calls == [("reload", [("w", "tensor")]), "reset_prefix_cache"] and trl_compat.policy_syncs(vg) == 2


def test_extra_llm_kwargs_are_added_for_the_trainers_construction_only(monkeypatch):
    seen = []
    monkeypatch.setattr(vllm_generation, "LLM", lambda *a, **k: seen.append(k) or "engine", raising=False)
    original = vllm_generation.LLM
    with trl_compat.extra_vllm_llm_kwargs({"enforce_eager": True, "dtype": "float32"}):
        assert vllm_generation.LLM(model="m", seed=0) == "engine"
    assert seen == [{"model": "m", "seed": 0, "enforce_eager": True, "dtype": "float32"}]
    assert vllm_generation.LLM is original  # restored


@pytest.mark.parametrize("kwargs,match", [({"seed": 1}, "seed"), ({"model": "x", "quantization": "fp8"},
                                                                   "model, quantization"), (["enforce_eager"], "mapping")])
def test_vllm_llm_kwargs_that_trl_must_own_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaTGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, use_vllm=True, vllm_mode="colocate",
                      cat_vllm_llm_kwargs=kwargs)


def test_vllm_llm_kwargs_need_the_colocated_engine(tmp_path):
    with pytest.raises(ValueError, match="use_vllm: true"):
        CaTGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, cat_vllm_llm_kwargs={"enforce_eager": 1})
    args = CaTGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, use_vllm=True, vllm_mode="colocate",
                         cat_vllm_llm_kwargs='{"enforce_eager": true}')  # command line: JSON
    assert args.cat_vllm_llm_kwargs == {"enforce_eager": True}


def test_grpo_trainer_internals_used_for_logging_and_rewards():
    """`log_completion_column`, `log_trainer_metric`, `reward_weights`, `trainer_of_reward_call` read these."""
    init = inspect.getsource(GRPOTrainer.__init__)
    assert 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}' in init
    assert "self.reward_weights = torch.tensor(args.reward_weights" in init
    assert list(inspect.signature(GRPOTrainer._log_completion_extra).parameters) == ["self", "column", "values"]
    assert 'reward_kwargs["log_metric"] = self._log_metric' in inspect.getsource(GRPOTrainer)


def test_trl_generation_helpers_keep_their_signatures():
    from trl.models.utils import unwrap_model_for_generation
    from trl.trainer.utils import use_adapter

    params = inspect.signature(unwrap_model_for_generation).parameters
    assert {"model", "accelerator", "gather_deepspeed3_params", "gradient_checkpointing_kwargs"} <= set(params)
    assert list(inspect.signature(use_adapter).parameters) == ["model", "adapter_name"]
    assert trl_compat.use_adapter.__doc__ and trl_compat.unwrap_for_generation.__doc__


def test_vllm_generation_internals_the_anchor_uses():
    """The vLLM anchor gathers ZeRO-3 params with TRL's `_dist.gather_params`, keeps `_llm_weights_sleeping` truthful
    and shares prompts over `tp_group` -- all set up by TRL's `VLLMGeneration`."""
    from trl.distributed import DistributedBackend

    init = inspect.getsource(VLLMGeneration.__init__)
    assert "self._dist = DistributedBackend(accelerator)" in init
    assert "gather_params" in DistributedBackend.__dict__
    vllm_init = inspect.getsource(VLLMGeneration._init_vllm)
    assert "self.tp_group" in vllm_init and "self._llm_weights_sleeping" in vllm_init
    vg = VLLMGeneration.__new__(VLLMGeneration)
    assert trl_compat.vllm_tp_group(vg) is None  # TP = 1: no group
    with trl_compat.vllm_param_gather(vg)(["p"]):  # no backend: a no-op context
        pass
    trl_compat.set_weights_sleeping(vg, True)
    assert vg._llm_weights_sleeping is True
