"""The shipped accelerate configs load with accelerate's own classes and map to the intended objects
(distributed type, FSDP plugin sharding, DeepSpeed ZeRO stage). Config-level only: no GPU here."""

import os
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

DIR = Path(__file__).parents[2] / "examples" / "accelerate"
EXPECTED = {  # file -> (distributed type, machines, FSDP version / ZeRO stage)
    "ddp.yaml": (DistributedType.MULTI_GPU, 1, None),
    "ddp_multinode.yaml": (DistributedType.MULTI_GPU, 2, None),
    "cpu_gloo.yaml": (DistributedType.MULTI_CPU, 1, None),
    "fsdp_lora.yaml": (DistributedType.FSDP, 1, 2),
    "fsdp_qlora.yaml": (DistributedType.FSDP, 1, 1),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 1, 2),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 1, 3),
}


def test_every_shipped_config_is_covered():
    assert sorted(p.name for p in DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name):
    kind, machines, level = EXPECTED[name]
    cfg = ClusterConfig.from_yaml_file(DIR / name)
    assert cfg.distributed_type == kind and cfg.num_machines == machines
    assert (DIR / name).read_text().startswith("# ")  # the 3-line header: what, how to run, how to override
    args = launch_command_parser().parse_args(["--config_file", str(DIR / name), "train.py"])
    args, _, _ = _validate_launch_command(args)  # what `accelerate launch` does with it
    assert args.num_processes == cfg.num_processes and args.use_fsdp == (kind == DistributedType.FSDP)
    if kind == DistributedType.DEEPSPEED:
        assert args.use_deepspeed and cfg.deepspeed_config["zero_stage"] == level
    if kind == DistributedType.FSDP:
        env = prepare_multi_gpu_env(args)  # the FSDP_* variables the launcher exports to each process
        assert env["FSDP_VERSION"] == str(level) and env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
        assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
        if level == 1:  # FSDP1's plugin wants an accelerator device at construction; checked as variables
            assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_SYNC_MODULE_STATES"] == "true"
        else:
            with mock.patch.dict(os.environ, env):
                plugin = FullyShardedDataParallelPlugin()
            assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
            assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"] and plugin.cpu_ram_efficient_loading
