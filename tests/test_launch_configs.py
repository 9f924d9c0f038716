"""The accelerate configs parsed into accelerate's own objects. On CPU accelerate silently runs FSDP as DDP and
DeepSpeed is not installed, so these cells are validated here by parsing, and only a GPU can run them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"


def _launch_args(name: str):
    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / name), "-m", "cat_trl.cli.train", "--config", "yaml/quickstart.yaml"]
    )
    return _validate_launch_command(args)[0]


def test_fsdp2_config_builds_the_plugin_we_document(monkeypatch):
    args = _launch_args("fsdp2.yaml")
    assert args.use_fsdp and args.num_processes == 8
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


def test_zero3_config_builds_a_stage3_plugin():
    args = _launch_args("zero3.yaml")
    assert args.use_deepspeed and args.zero_stage == 3
    plugin = DeepSpeedPlugin(
        zero_stage=args.zero_stage,
        zero3_init_flag=args.zero3_init_flag,
        offload_param_device=args.offload_param_device,
        offload_optimizer_device=args.offload_optimizer_device,
        zero3_save_16bit_model=args.zero3_save_16bit_model,
    )
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name,multi", [("multi_gpu.yaml", True), ("single_gpu.yaml", False)])
def test_ddp_and_single_configs(name, multi):
    args = _launch_args(name)
    assert bool(args.multi_gpu) is multi and not args.use_fsdp and not args.use_deepspeed
    assert args.num_processes == (8 if multi else 1)
    assert os.path.basename(args.training_script) == "cat_trl.cli.train" or args.module
