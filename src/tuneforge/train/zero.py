"""`training.distributed: deepspeed` (ZeRO-2 / ZeRO-3 through accelerate): the checks of the combination and the
files a user launches with. The loop drives the engine (tuneforge.train.deepspeed_engine) for ZeRO-2/3 without
offload and the methods in PROVEN_METHODS; other settings are refused (exit 2, not_wired). What was run is in
docs/distributed.md; `tuneforge plan CONFIG --launch-files DIR` writes the files.

    check_deepspeed(cfg.training, cfg.stage, cfg.method.name)     # ConfigError naming the key
    write_launch_files(cfg.training, Path("launch"), processes=8)  # ds_config.json + accelerate.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tuneforge.config.schema import DeepSpeedConfig, TrainingConfig
from tuneforge.errors import ConfigError
from tuneforge.methods import METHODS
from tuneforge.stage_info import STAGE_INFO, stage_info

KEY = "training.deepspeed"


def check_deepspeed(training: TrainingConfig, stage: str, method: str) -> None:
    """The deepspeed block's keys against each other, the stage and the method."""
    ds = training.deepspeed
    if training.distributed != "deepspeed":
        if ds is not None:
            raise ConfigError(f"key '{KEY}' applies with training.distributed: deepspeed (it is "
                              f"{training.distributed!r}); remove the block or set training.distributed: deepspeed")
        return
    ds = ds or DeepSpeedConfig()
    if not stage_info(stage).distributed:
        loops = ", ".join(n for n, i in STAGE_INFO.items() if i.distributed)
        raise ConfigError(f"key 'training.distributed': deepspeed is for the stages tuneforge's loop trains "
                          f"({loops}), not {stage!r}")
    if ds.offload_params != "none" and ds.zero_stage != 3:
        raise ConfigError(f"key '{KEY}.offload_params': only ZeRO-3 partitions (and so offloads) the weights; "
                          f"set {KEY}.zero_stage: 3 or offload_params: none")
    nvme = "nvme" in (ds.offload_params, ds.offload_optimizer)
    if nvme and not ds.nvme_path:
        raise ConfigError(f"key '{KEY}.nvme_path': offloading to nvme needs a directory on an NVMe drive")
    if ds.nvme_path and not nvme:
        raise ConfigError(f"key '{KEY}.nvme_path' is used only with offload_optimizer or offload_params: nvme")
    if METHODS[method].quantized_base and ds.zero_stage == 3:
        raise ConfigError(f"key '{KEY}.zero_stage': 3 partitions the weights, and method {method!r} keeps a 4-bit "
                          "bitsandbytes base that ZeRO-3 cannot partition here; use zero_stage: 2 (the 4-bit base is "
                          "small), or training.distributed: fsdp")


PROVEN_METHODS = ("full", "lora")  # what tests/distributed/test_deepspeed_train.py trains (make deepspeed-check)


def not_wired(training: TrainingConfig, method: str) -> ConfigError | None:
    """The refusal for what the loop's DeepSpeed engine (train/deepspeed_engine.py) has not been proven to run."""
    ds = training.deepspeed or DeepSpeedConfig()
    if ds.offload_optimizer != "none" or ds.offload_params != "none":
        return ConfigError(f"key '{KEY}.offload_optimizer' / 'offload_params': offloading is not wired in tuneforge's "
                           "DeepSpeed loop yet (docs/distributed.md); use none (ZeRO-2/3 without offload train)")
    if method not in PROVEN_METHODS:
        return ConfigError(f"key 'training.distributed': deepspeed trains methods {', '.join(PROVEN_METHODS)} here; "
                           f"{method!r} is not proven with it yet (docs/distributed.md); use fsdp or ddp")
    return None


def _offload(device: str, nvme_path: str | None) -> dict:
    return {"device": device, "pin_memory": True} | ({"nvme_path": nvme_path} if device == "nvme" else {})


def to_deepspeed_config(training: TrainingConfig) -> dict:
    """DeepSpeed's JSON config from the training block: batch, accumulation, clipping, precision, ZeRO."""
    ds = training.deepspeed or DeepSpeedConfig()
    zero: dict = {"stage": ds.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(ds.offload_optimizer, ds.nvme_path)
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # a whole model is saved, as in one process
        if ds.offload_params != "none":
            zero["offload_param"] = _offload(ds.offload_params, ds.nvme_path)
    config = {"train_micro_batch_size_per_gpu": training.batch_size,
              "gradient_accumulation_steps": training.grad_accum,
              "gradient_clipping": training.max_grad_norm or 0.0,  # 0: no clipping
              "zero_optimization": zero, "steps_per_print": 10**9, "wall_clock_breakdown": False}
    # precision auto: bf16, what auto picks on a GPU that has it (fp16 on one that has not: set precision: fp16)
    if training.precision in ("auto", "bf16"):
        config["bf16"] = {"enabled": True}
    elif training.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0}  # 0: dynamic loss scaling
    return config


def to_accelerate_config(training: TrainingConfig, processes: int, machines: int = 1,
                         ds_file: str = "ds_config.json") -> dict:
    """accelerate's config (as `accelerate config` writes it) pointing at the DeepSpeed file; `processes` in all."""
    ds = training.deepspeed or DeepSpeedConfig()
    return {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "num_machines": machines,
            "machine_rank": 0, "num_processes": processes, "main_training_function": "main", "use_cpu": False,
            "debug": False, "deepspeed_config": {"deepspeed_config_file": ds_file,
                                                  "zero3_init_flag": ds.zero_stage == 3}}


def write_launch_files(training: TrainingConfig, out: Path, processes: int, machines: int = 1) -> list[Path]:
    """ds_config.json and accelerate.yaml in `out` (created); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    ds_path, acc_path = out / "ds_config.json", out / "accelerate.yaml"
    ds_path.write_text(json.dumps(to_deepspeed_config(training), indent=2) + "\n")
    header = (f"# What: DeepSpeed ZeRO-{(training.deepspeed or DeepSpeedConfig()).zero_stage} for {processes} "
              f"processes on {machines} machine(s), written by `tuneforge plan --launch-files`.\n"
              f"# Run: accelerate launch --config_file {acc_path} -m tuneforge train CONFIG.yaml (other machines: "
              "--machine_rank N --main_process_ip HOST)\n"
              "# Not run by tuneforge's tests on a GPU; the training loop does not drive DeepSpeed yet "
              "(docs/distributed.md).\n")
    body = yaml.safe_dump(to_accelerate_config(training, processes, machines, str(ds_path.resolve())),
                          sort_keys=False)
    acc_path.write_text(header + body)
    return [ds_path, acc_path]
