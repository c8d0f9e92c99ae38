"""Model loading that fits the device (tuneforge/models/placement.py): straight onto the GPU (device_map to that
one device), spread over the GPUs (device_map auto + max_memory) only for a model larger than its GPU in a single
process, never for ddp / fsdp ranks; the CPU path passes nothing new. No GPU here: the arguments are checked at
from_pretrained's door (patched), with the GPUs' free memory given."""

import pytest
import torch
import transformers

from tuneforge.models import placement
from tuneforge.models.placement import to_load_kwargs, weight_bytes
from tuneforge.models.pretrained import load_pretrained

GB = 2**30
GPU0 = torch.device("cuda", 0)
TF4 = {"low_cpu_mem_usage": True} if int(transformers.__version__.split(".")[0]) < 5 else {}


def test_cpu_is_as_before_and_a_gpu_gets_the_weights_directly():
    assert to_load_kwargs(None, None, True) == to_load_kwargs(torch.device("cpu"), 10 * GB, True) == TF4
    assert to_load_kwargs(GPU0, 5 * GB, True, free={0: 80 * GB, 1: 80 * GB}) == TF4 | {"device_map": {"": GPU0}}
    assert to_load_kwargs(torch.device("mps"), None, True) == TF4 | {"device_map": {"": torch.device("mps")}}


def test_too_large_for_one_gpu_spreads_only_in_one_process_with_several_gpus():
    free = {0: 40 * GB, 1: 40 * GB, 2: 20 * GB}
    spread = to_load_kwargs(GPU0, 60 * GB, may_spread=True, free=free)
    assert spread == TF4 | {"device_map": "auto", "max_memory": {0: int(0.9 * 40 * GB), 1: int(0.9 * 40 * GB),
                                                                  2: int(0.9 * 20 * GB)}}
    assert "cpu" not in spread["max_memory"]  # never offloaded to the CPU
    rank = torch.device("cuda", 1)  # a ddp / fsdp rank keeps the whole model on its own GPU (FSDP shards it)
    assert to_load_kwargs(rank, 60 * GB, may_spread=False, free=free) == TF4 | {"device_map": {"": rank}}
    assert to_load_kwargs(GPU0, 60 * GB, may_spread=True, free={0: 40 * GB}) == TF4 | {"device_map": {"": GPU0}}


def test_weight_bytes_reads_only_the_headers(tiny_model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    stored = {n: t for n, t in model.state_dict().items() if "lm_head" not in n or not model.config.tie_word_embeddings}
    assert weight_bytes(tiny_model_dir, torch.float32) == sum(t.numel() * 4 for t in stored.values())
    assert weight_bytes(tiny_model_dir, torch.bfloat16) * 2 == weight_bytes(tiny_model_dir, torch.float32)
    assert weight_bytes("no/such/dir", torch.float32) is None


class Called(Exception):
    pass


@pytest.fixture
def door(monkeypatch):
    """from_pretrained replaced by a recorder that stops the load."""
    seen = {}

    def record(path, **kwargs):
        seen.update(kwargs)
        raise Called

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record)
    return seen


def test_load_pretrained_passes_the_placement(tiny_model_dir, door, monkeypatch):
    need = weight_bytes(tiny_model_dir, torch.float32)
    monkeypatch.setattr(placement, "gpu_free_bytes", lambda: {0: need, 1: 10 * need})  # 0.9 x need: does not fit
    with pytest.raises(Called):
        load_pretrained(tiny_model_dir, "tiny", device=GPU0, may_spread=True)
    assert door["device_map"] == "auto" and door["max_memory"] == {0: int(0.9 * need), 1: int(9 * need)}
    door.clear()
    monkeypatch.setattr(placement, "gpu_free_bytes", lambda: {0: 10 * need})
    with pytest.raises(Called):
        load_pretrained(tiny_model_dir, "tiny", device=GPU0)
    assert door["device_map"] == {"": GPU0} and door["dtype"] == torch.float32
    door.clear()
    with pytest.raises(Called):
        load_pretrained(tiny_model_dir, "tiny")  # the CPU: nothing about placement
    assert "device_map" not in door and "max_memory" not in door


def test_a_training_run_loads_its_model_through_the_placement(make_config, monkeypatch):
    """The stage skeleton hands its device and 'one process' to the loader (the CPU here)."""
    from tuneforge.stages import STAGES, skeleton

    calls = []
    real = skeleton.load_model

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(skeleton, "load_model", spy)
    cfg = make_config(training__max_steps=1, eval__before=False, eval__generate_samples=0)
    STAGES[cfg.stage].run(cfg)
    assert calls and calls[0]["device"] == torch.device("cpu") and calls[0]["may_spread"] is True
