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


def test_colocated_engine_attributes_the_vllm_anchor_drives():
    """`colocated_llm`, `sleep_mode_enabled` and `vllm_tp_size` read TRL's `VLLMGeneration.llm`, `.enable_sleep_mode`
    and `.tensor_parallel_size`: the anchor borrows that engine, waking and sleeping it as TRL would."""
    init = inspect.getsource(VLLMGeneration.__init__)
    assert "self.enable_sleep_mode = enable_sleep_mode" in init
    assert "self.tensor_parallel_size = tensor_parallel_size" in init
    assert "self.llm = LLM(" in inspect.getsource(VLLMGeneration._init_vllm)
    vg = _colocated([])
    assert trl_compat.colocated_llm(vg) is vg.llm and trl_compat.sleep_mode_enabled(vg) is False
    vg.enable_sleep_mode, vg.tensor_parallel_size = True, 2
    assert trl_compat.sleep_mode_enabled(vg) is True and trl_compat.vllm_tp_size(vg) == 2
    unbuilt = VLLMGeneration.__new__(VLLMGeneration)  # server mode builds no engine
    assert trl_compat.colocated_llm(unbuilt) is None and trl_compat.vllm_tp_size(unbuilt) == 1


def test_accelerate_state_the_engine_factory_reads():
    """`deepspeed_zero_stage` and `fsdp_version` read accelerate's `state.deepspeed_plugin.zero_stage` (a property,
    None without DeepSpeed) and `state.fsdp_plugin.fsdp_version`."""
    from types import SimpleNamespace

    from accelerate.state import AcceleratorState
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    assert isinstance(inspect.getattr_static(AcceleratorState, "deepspeed_plugin"), property)
    assert "self.fsdp_plugin = fsdp_plugin" in inspect.getsource(AcceleratorState.__init__)
    state = SimpleNamespace(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3),
                            fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
    accelerator = SimpleNamespace(state=state)
    assert trl_compat.deepspeed_zero_stage(accelerator) == 3 and trl_compat.fsdp_version(accelerator) == 2
    accelerator.state = SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=None)  # plain DDP / single process
    assert trl_compat.deepspeed_zero_stage(accelerator) is None and trl_compat.fsdp_version(accelerator) == 1


def test_trl_all_rewards_none_warning_is_held_by_its_text_on_its_logger(caplog):
    """`holding_all_rewards_none_warning` recognises TRL's warning by the text and logger pinned here."""
    import logging

    from trl.trainer import grpo_trainer

    source = inspect.getsource(GRPOTrainer._calculate_rewards)
    assert f'f"{trl_compat.TRL_ALL_REWARDS_NONE_WARNING}:' in source, "TRL changed its all-None warning"
    assert "logger.warning(" in source
    assert grpo_trainer.logger.logger.name == trl_compat.TRL_REWARDS_LOGGER
    log = logging.getLogger(trl_compat.TRL_REWARDS_LOGGER)
    with caplog.at_level(logging.WARNING, logger=trl_compat.TRL_REWARDS_LOGGER):
        with trl_compat.holding_all_rewards_none_warning() as held:
            log.warning("[RANK 0] %s:\n{'prompt': 'p'}", trl_compat.TRL_ALL_REWARDS_NONE_WARNING)
            log.warning("something else")
        assert [r.getMessage() for r in caplog.records] == ["something else"] and len(held) == 1
        assert not log.filters  # the filter is gone after the block
        trl_compat.release_warnings(held)
        assert trl_compat.TRL_ALL_REWARDS_NONE_WARNING in caplog.records[-1].getMessage()


def test_argument_parser_field_hook_is_called_once_per_field():
    """`FieldHookParser` relies on HfArgumentParser adding every dataclass field through its private
    `_parse_dataclass_field`; if transformers renames or stops calling it, the CLI's list/dict settings break."""
    import dataclasses

    from transformers import HfArgumentParser

    from cat_trl.trl_compat import FieldHookParser

    assert callable(getattr(HfArgumentParser, "_parse_dataclass_field", None))

    @dataclasses.dataclass
    class Args:
        a: int = 1
        b: list[str] = dataclasses.field(default_factory=list)

    seen = []

    class Recording(FieldHookParser):
        def add_dataclass_field(self, parser, dc_field):
            seen.append(dc_field.name)
            super().add_dataclass_field(parser, dc_field)

    (args,) = Recording([Args]).parse_args_and_config(["--a", "3", "--b", "x", "y"])
    assert seen == ["a", "b"] and args.a == 3 and args.b == ["x", "y"]


def test_gguf_quantization_attributes_exist_where_they_are_stripped():
    """`strip_gguf_quantization` drops transformers' `hf_quantizer`, `config.quantization_config` and private
    `_weight_conversions` of a GGUF-loaded model; the embedded model (loaded from GGUF once) then saves and trains as
    a plain model. Pinned: transformers still sets `_weight_conversions` while loading."""
    import inspect

    import transformers.core_model_loading as loading

    from cat_trl.trl_compat import strip_gguf_quantization

    assert "_weight_conversions" in inspect.getsource(loading)

    from types import SimpleNamespace

    model = SimpleNamespace(hf_quantizer=object(), _weight_conversions=[object()],
                            config=SimpleNamespace(quantization_config={"quant_method": "gguf"}))
    strip_gguf_quantization(model)
    assert model.hf_quantizer is None and model._weight_conversions is None
    assert not hasattr(model.config, "quantization_config")


def test_generate_returns_the_completions_the_reward_call_gets(tmp_path, tiny_model_path):
    """The overlap seam (`generated_completions`): what TRL's `_generate` returns holds, at the index read, the very
    completions `_calculate_rewards` is then called with."""
    from cat_trl.data import load_synthetic_math

    seen = {}

    class Spy(GRPOTrainer):
        def _generate(self, prompts):
            out = super()._generate(prompts)
            seen["generated"] = list(trl_compat.generated_completions(out))
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            seen["rewarded"] = list(completions)
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    from trl import GRPOConfig

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, num_generations=2,
                      per_device_train_batch_size=4, max_completion_length=6, max_steps=1, report_to=[],
                      save_strategy="no")
    trainer = Spy(model=tiny_model_path, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                  args=args, train_dataset=load_synthetic_math(8))
    trainer.train()
    assert seen["generated"] == seen["rewarded"] and len(seen["rewarded"]) == 4


def test_trls_colocated_engine_step_budget_is_the_one_the_seeded_prefill_check_assumes():
    """`preflight.check_seeded_prefill_budget` and the standalone engine's budget read this constant: TRL 1.16 builds
    its colocated `vllm.LLM` with this `max_num_batched_tokens`."""
    source = inspect.getsource(VLLMGeneration)
    assert f"max_num_batched_tokens={trl_compat.TRL_COLOCATE_STEP_TOKENS}," in source
