"""CUDA RNG states in checkpoints (tuneforge/train/rng_state.py through train/checkpoint.py): saved when CUDA is
present, restored on resume, absent without CUDA, and a GPU checkpoint resumed on a machine without CUDA warns
instead of crashing. No GPU here: torch.cuda's state functions are monkeypatched with fake generators."""

import warnings

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.train import checkpoint as ckpt
from tuneforge.train.checkpoint import TrainState, find_resume, restore, save_checkpoint


class FakeCuda:
    """Two GPUs whose generators are byte vectors; what set_rng_state received is recorded."""

    def __init__(self, monkeypatch, count: int = 2):
        self.states = [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(count)]
        self.restored: dict[int, torch.Tensor] = {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=0: self.restored.update({device: state}))


def _save(root, step=1):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _s: 1.0)
    save_checkpoint(root, model, optimizer, scheduler, TrainState(step, 0, [], 0, 0.0), keep=3)
    return model, optimizer, scheduler


def test_cuda_states_are_saved_and_restored(tmp_path, monkeypatch):
    gpus = FakeCuda(monkeypatch)
    model, optimizer, scheduler = _save(tmp_path / "c")
    saved = load_file(str(next((tmp_path / "c").glob("step-*")) / "rng.safetensors"))
    assert sorted(saved) == ["torch_cpu", "torch_cuda_0", "torch_cuda_1"]
    cpu_at_save = saved["torch_cpu"].clone()
    torch.rand(5)  # the CPU generator moves on; restore must bring it back
    _, loaded = find_resume("auto", tmp_path / "c")
    restore(loaded, model, optimizer, scheduler)
    assert torch.equal(torch.get_rng_state(), cpu_at_save)
    assert sorted(gpus.restored) == [0, 1]
    assert all(torch.equal(gpus.restored[i], gpus.states[i]) for i in (0, 1))


def test_without_cuda_the_checkpoint_has_none_and_resumes_silently(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model, optimizer, scheduler = _save(tmp_path / "c")
    assert list(load_file(str(next((tmp_path / "c").glob("step-*")) / "rng.safetensors"))) == ["torch_cpu"]
    _, loaded = find_resume("auto", tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore(loaded, model, optimizer, scheduler)


def test_a_gpu_checkpoint_resumed_without_cuda_warns_and_restores_the_cpu_state(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        FakeCuda(m)
        model, optimizer, scheduler = _save(tmp_path / "c")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, loaded = find_resume("auto", tmp_path / "c")
    cpu_at_save = loaded["rng"]["torch_cpu"].clone()
    torch.rand(5)
    with pytest.warns(UserWarning, match=r"CUDA RNG states of 2 GPU\(s\) and this machine has no CUDA"):
        restore(loaded, model, optimizer, scheduler)
    assert torch.equal(torch.get_rng_state(), cpu_at_save)


def test_fewer_gpus_on_resume_restores_those_there_are_and_says_so(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        FakeCuda(m, count=2)
        model, optimizer, scheduler = _save(tmp_path / "c")
    one = FakeCuda(monkeypatch, count=1)
    _, loaded = find_resume("auto", tmp_path / "c")
    with pytest.warns(UserWarning, match="of 2 GPU.* this machine has 1: the first 1 were restored"):
        restore(loaded, model, optimizer, scheduler)
    assert list(one.restored) == [0]


def test_a_malformed_cuda_state_makes_the_checkpoint_unreadable(tmp_path):
    with pytest.raises(ValueError, match="torch_cuda_N RNG state is not a byte vector"):
        ckpt.rng_state.check({"torch_cpu": torch.get_rng_state(), "torch_cuda_0": torch.zeros(3)})
