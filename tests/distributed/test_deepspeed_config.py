"""training.distributed: deepspeed (tuneforge/train/zero.py) and `tuneforge plan`'s launcher choice
(tuneforge/plan/launch.py). The combination is validated; training refuses what the loop's DeepSpeed engine has not
been proven to run (offload, methods other than full / lora: exit 2, naming the key); plan writes the accelerate +
DeepSpeed files, whose contents are checked here with accelerate's own launch validation. Nothing here runs DeepSpeed
(test_deepspeed_train.py does, under `make deepspeed-check`)."""

import json

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from tuneforge.config.checks import check_config
from tuneforge.config.schema import TrainingConfig
from tuneforge.errors import ConfigError
from tuneforge.plan.launch import choose
from tuneforge.train.zero import check_deepspeed, to_deepspeed_config


def _training(**ds):
    return TrainingConfig(distributed="deepspeed", deepspeed=ds or None, batch_size=2, grad_accum=4, precision="bf16")


@pytest.mark.parametrize("ds, stage, method, message", [
    ({"zero_stage": 2, "offload_params": "cpu"}, "sft", "full", "offload_params': only ZeRO-3"),
    ({"zero_stage": 3, "offload_optimizer": "nvme"}, "sft", "full", "nvme_path': offloading to nvme needs"),
    ({"zero_stage": 3, "nvme_path": "/nvme"}, "sft", "full", "nvme_path' is used only with"),
    ({"zero_stage": 3}, "sft", "qlora", "zero_stage': 3 partitions the weights, and method 'qlora'"),
    ({}, "dpo", "lora", "deepspeed is for the stages tuneforge's loop trains"),
])
def test_bad_combinations_name_the_key(ds, stage, method, message):
    with pytest.raises(ConfigError, match=message):
        check_deepspeed(_training(**ds), stage, method)


def test_good_combinations_pass_and_a_block_without_deepspeed_is_refused():
    check_deepspeed(_training(zero_stage=3, offload_optimizer="cpu", offload_params="cpu"), "sft", "full")
    check_deepspeed(_training(zero_stage=2), "pretrain", "qlora")
    with pytest.raises(ConfigError, match="key 'training.deepspeed' applies with training.distributed: deepspeed"):
        check_deepspeed(TrainingConfig(deepspeed={"zero_stage": 3}), "sft", "full")


@pytest.mark.parametrize("method, ds, message", [
    ("full", {"zero_stage": 3, "offload_optimizer": "cpu"}, "offloading is not wired"),
    ("ia3", {"zero_stage": 2}, "'ia3' is not proven with it yet"),
])
def test_training_refuses_unproven_deepspeed_settings_before_anything_runs(method, ds, message, make_config, tmp_path,
                                                                           run_cli, capsys):
    cfg = make_config(method={"name": method}, training__distributed="deepspeed", training__deepspeed=ds)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert run_cli(["train", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_proven_deepspeed_settings_pass_the_checks(make_config):
    for method in ("full", "lora"):  # trained on 2 ranks by test_deepspeed_train.py (make deepspeed-check)
        for stage in (2, 3):
            check_config(make_config(method={"name": method}, training__distributed="deepspeed",
                                     training__deepspeed={"zero_stage": stage}))


def test_engine_config_keeps_fp32_weights_and_the_loop_s_optimizer():
    from tuneforge.train.deepspeed_engine import to_engine_config

    config = to_engine_config(_training(zero_stage=3))
    assert "bf16" not in config and "fp16" not in config  # the loop's autocast picks the compute dtype
    assert config["zero_allow_untested_optimizer"] and "optimizer" not in config  # the client AdamW
    assert config["zero_optimization"]["stage"] == 3 and config["gradient_clipping"] == 1.0


def test_deepspeed_json_follows_the_training_block():
    z3 = to_deepspeed_config(_training(zero_stage=3, offload_optimizer="cpu", offload_params="nvme", nvme_path="/n"))
    assert z3["train_micro_batch_size_per_gpu"] == 2 and z3["gradient_accumulation_steps"] == 4
    assert z3["gradient_clipping"] == 1.0 and z3["bf16"] == {"enabled": True} and "fp16" not in z3
    assert z3["zero_optimization"] == {
        "stage": 3, "overlap_comm": True, "contiguous_gradients": True,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "nvme", "pin_memory": True, "nvme_path": "/n"},
        "stage3_gather_16bit_weights_on_model_save": True}
    fp16 = to_deepspeed_config(TrainingConfig(distributed="deepspeed", precision="fp16", max_grad_norm=None))
    assert fp16["fp16"] == {"enabled": True, "loss_scale": 0} and fp16["gradient_clipping"] == 0.0
    assert fp16["zero_optimization"]["stage"] == 2 and "offload_param" not in fp16["zero_optimization"]
    assert "bf16" not in to_deepspeed_config(TrainingConfig(distributed="deepspeed", precision="fp32"))


def test_plan_writes_launch_files_that_accelerate_accepts(make_config, tmp_path, run_cli, capsys):
    cfg = make_config(method={"name": "full"}, training__distributed="deepspeed",
                      training__deepspeed={"zero_stage": 3, "offload_optimizer": "cpu"})
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "launch"
    assert run_cli(["plan", str(path), "--gpus", "4", "--gpu-gb", "24", "--nodes", "2",
                    "--launch-files", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torchrun --nnodes 2" in printed and "training.distributed=deepspeed" in printed
    assert "accelerate launch --config_file LAUNCH_DIR/accelerate.yaml" in printed and "sharding zero3" in printed
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    acc = ClusterConfig.from_yaml_file(out / "accelerate.yaml")
    assert acc.num_processes == 8 and acc.num_machines == 2
    assert acc.deepspeed_config == {"deepspeed_config_file": str((out / "ds_config.json").resolve()),
                                    "zero3_init_flag": True}
    args = launch_command_parser().parse_args(["--config_file", str(out / "accelerate.yaml"), "train.py"])
    args, _, _ = _validate_launch_command(args)  # what `accelerate launch` does with the file
    assert args.use_deepspeed and args.deepspeed_config_file == str((out / "ds_config.json").resolve())
    assert run_cli(["plan", str(path).replace("ds.yaml", "ds.yaml"), "training.distributed=ddp",
                    "training.deepspeed=null", "--launch-files", str(tmp_path / "x")]) == 2
    assert "--launch-files writes DeepSpeed files" in capsys.readouterr().err


# docs/distributed.md's example: llama-3-8b, batch 1 x 2048, grad checkpointing, bf16-master (GiB)
FULL = {"weights": 14.96, "gradients": 14.96, "optimizer": 59.83, "master_weights": 29.92, "activations": 2.81}
LORA = {"weights": 14.97, "gradients": 0.01, "optimizer": 0.03, "master_weights": 0.0, "activations": 2.75}


def test_launcher_choice_follows_the_memory_arithmetic():
    full = choose({"gib": FULL}, "ddp", gpus=8, gpu_gib=80)
    assert full["sharding"] == "fsdp" and full["per_gpu_gib"] == pytest.approx(17.77, abs=0.01) and full["fits"]
    assert "--nproc 8" in full["command"] and "training.distributed=fsdp" in full["command"]
    assert "ZeRO-2 would need 30.8" in full["note"]
    lora = choose({"gib": LORA}, "fsdp", gpus=8, gpu_gib=80)
    assert lora["sharding"] == "ddp" and "enough here" in lora["note"] and "distributed" not in lora["command"]
    one = choose({"gib": FULL}, "ddp", gpus=1, gpu_gib=80)
    assert one["launcher"] == "one process" and not one["fits"] and "does not fit one GPU" in one["note"]
    nodes = choose({"gib": FULL}, "fsdp", gpus=8, gpu_gib=24, nodes=2)
    assert nodes["launcher"] == "torchrun, 2 nodes" and "--nnodes 2" in nodes["command"] and nodes["fits"]
    small = choose({"gib": FULL}, "fsdp", gpus=2, gpu_gib=24)
    assert not small["fits"] and "does not fit even fully sharded over 2 GPUs" in small["note"]
    cpu = choose({"gib": LORA}, "deepspeed", gpus=0, gpu_gib=0)
    assert cpu["launcher"] == "torchrun (--nproc)" and cpu["note"].startswith("deepspeed on the CPU: --nproc N")
    assert "--nproc 2" in cpu["command"] and "training.distributed=deepspeed" in cpu["command"]
    z2 = choose({"gib": FULL}, "deepspeed", gpus=8, gpu_gib=80, zero_stage=2)
    assert z2["launcher"] == "torchrun (--nproc)" and z2["per_gpu_gib"] == pytest.approx(30.85, abs=0.02)
    assert "--nproc 8" in z2["command"] and "training.distributed=deepspeed" in z2["command"]
