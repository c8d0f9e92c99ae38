"""training.device / --device: auto picks CUDA, else MPS, else the CPU; a device this machine lacks is exit 2
naming the key and what the machine has; precision auto per device (bf16 on a GPU with it, fp16 + gradient scaler
on one without, the CPU as before). The CUDA cases are checked against a mocked torch.cuda (no GPU here)."""

import json

import pytest
import torch
import yaml

from tuneforge.device import available, move, resolve_device
from tuneforge.errors import ConfigError
from tuneforge.train import precision as prec


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")


def test_auto_is_the_cpu_here_and_the_cpu_path_is_unchanged():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    assert prec.resolve_precision("auto", torch.device("cpu")) == ("bf16" if prec.cpu_has_bf16() else "fp32")
    assert prec.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert prec.grad_scaler("bf16") is None and prec.grad_scaler("fp32") is None
    batch = {"input_ids": torch.ones(2, 3)}
    assert move(batch, torch.device("cpu")) is batch  # no copy on the CPU


def test_missing_device_names_the_key_and_what_the_machine_has():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"key 'training.device': 'cuda' is not available on this machine, "
                                          r"which has .*cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="key '--device'"):
        resolve_device("cuda:0", key="--device")
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        prec.resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu")


def test_cuda_choices_with_a_mocked_gpu(two_gpus, monkeypatch):
    assert available()[:2] == ["cuda:0", "cuda:1"]
    assert resolve_device("auto") == torch.device("cuda", 1)  # torchrun's LOCAL_RANK picks this rank's GPU
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"'cuda:2' is not available on this machine, which has cuda:0, cuda:1"):
        resolve_device("cuda:2")
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert prec.resolve_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a T4 or V100
    assert prec.resolve_precision("auto", gpu) == "fp16"
    assert prec.resolve_precision("fp16", gpu) == "fp16"


def test_train_with_device_cuda_without_cuda_exits_2_before_writing(make_config, tmp_path, run_cli, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = make_config(training__device="cuda")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert run_cli(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training.device" in err and "cpu" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written
    assert run_cli(["train", str(path), "training.device=tpu"]) == 2  # not a device at all: the schema says so
    assert "device" in capsys.readouterr().err


def test_fp16_trains_with_a_gradient_scaler_and_resumes_exactly(make_config, tmp_path, monkeypatch):
    """The fp16 branch of the loop (GradScaler: scaled backward, unscale before clipping, scaler.step), run on the
    CPU's fp16 autocast because there is no GPU here: the curve stays near fp32's, the scaler was used, its state
    is in the checkpoint, and a run resumed from step 2 repeats the uninterrupted fp16 curve."""
    from tuneforge.stages import STAGES
    from tuneforge.train import loop

    scalers = []
    real = prec.grad_scaler

    def spy(precision):
        scalers.append(real(precision))
        return scalers[-1]

    monkeypatch.setattr(loop, "grad_scaler", spy)
    kw = dict(training__max_steps=4, training__save_steps=2, eval__before=False, eval__generate_samples=0)
    monkeypatch.setattr("tuneforge.stages.skeleton.resolve_precision", lambda p, d=None: "fp16")
    out16 = STAGES["sft"](make_config(**kw))
    saved = json.loads((out16 / "checkpoints" / "step-0000002" / "state.json").read_text())["scaler"]
    assert saved["scale"] > 0 and "_growth_tracker" in saved
    losses16 = [json.loads(line)["loss"] for line in (out16 / "train_log.jsonl").read_text().splitlines()]
    (out16 / "metrics.json").unlink()
    STAGES["sft"](make_config(resume=str(out16 / "checkpoints" / "step-0000002"), **kw))
    resumed = [json.loads(line)["loss"] for line in (out16 / "train_log.jsonl").read_text().splitlines()]
    assert resumed == pytest.approx(losses16, rel=1e-6)
    monkeypatch.setattr("tuneforge.stages.skeleton.resolve_precision", lambda p, d=None: "fp32")
    out32 = STAGES["sft"](make_config(output_dir=str(tmp_path / "fp32"), **kw))
    assert isinstance(scalers[0], torch.amp.GradScaler) and scalers[-1] is None
    losses32 = [json.loads(line)["loss"] for line in (out32 / "train_log.jsonl").read_text().splitlines()]
    assert len(losses16) == 4 and losses16 == pytest.approx(losses32, rel=2e-2)
