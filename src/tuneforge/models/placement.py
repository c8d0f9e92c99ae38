"""Where from_pretrained puts the weights, decided before it reads them: straight onto the run's device
(`device_map={"": device}`: no full CPU copy first, no second copy from `.to(device)`), and, for a model larger
than one GPU in a single process, spread over this machine's GPUs (`device_map="auto"` with `max_memory`) instead
of landing on the CPU. Under torchrun (ddp / fsdp) every rank keeps its model on its own GPU: sharding there is
FSDP's job. transformers 5.x always loads on the meta device first (it drops `low_cpu_mem_usage`); 4.x needs
`low_cpu_mem_usage=True` for that.

    kwargs = to_load_kwargs(torch.device("cuda", 0), weight_bytes(path, torch.bfloat16), may_spread=True)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

# Of each GPU's free memory, what the weights may take when deciding one GPU is enough / spreading: the rest is
# for activations, the CUDA context and allocator slack.
GPU_SHARE = 0.9


def weight_bytes(path: str | Path, dtype: torch.dtype) -> int | None:
    """Bytes of the checkpoint's tensors once loaded in `dtype`, from the safetensors headers (nothing is read
    but the headers); None where the directory has none (a hub id not downloaded yet)."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if not files:
        return None
    elements = 0
    for file in files:
        with open(file, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                elements += n
    return elements * torch.empty((), dtype=dtype).element_size()


def gpu_free_bytes() -> dict[int, int]:
    """Free memory per visible GPU (torch.cuda.mem_get_info); empty without CUDA."""
    if not torch.cuda.is_available():
        return {}
    return {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}


def to_load_kwargs(device: torch.device | None, need: int | None, may_spread: bool,
                   free: dict[int, int] | None = None) -> dict:
    """from_pretrained's placement arguments for `device` (None: the CPU, as before). `need`: weight_bytes;
    `may_spread`: a single process (no ddp / fsdp), so a model too large for its GPU may span the others."""
    extra = {"low_cpu_mem_usage": True} if int(transformers.__version__.split(".")[0]) < 5 else {}
    if device is None or device.type == "cpu":
        return extra
    if device.type != "cuda":
        return extra | {"device_map": {"": device}}  # mps: straight there
    free = gpu_free_bytes() if free is None else free
    index = device.index or 0
    fits = need is None or need <= GPU_SHARE * free.get(index, 0)
    if fits or not may_spread or len(free) < 2:
        return extra | {"device_map": {"": device}}  # too large without other GPUs: CUDA's out-of-memory says so
    # no "cpu" entry: a model that fits no set of GPUs fails instead of crawling through CPU offload
    return extra | {"device_map": "auto", "max_memory": {i: int(GPU_SHARE * free[i]) for i in sorted(free)}}
