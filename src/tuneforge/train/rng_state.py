"""The random-number states a checkpoint holds (rng.safetensors): the CPU generator's always, and each CUDA
device's (`torch.cuda.get_rng_state_all`) when this process has CUDA, so dropout on a GPU repeats its draws
after a resume. A checkpoint written without CUDA simply has no CUDA states; one written on a GPU and resumed
where CUDA is missing restores the CPU state and says that the GPU draws cannot be repeated, instead of failing.

    save_file(capture(), path); restore(check(load_file(path)))

Known limit: rank 0 writes the checkpoint, so with several GPUs the states saved are rank 0's process's view of
every device; ranks other than 0 get their own device's state from that view (exact for rank 0 only).
"""

from __future__ import annotations

import re
import warnings

import torch

CPU_KEY = "torch_cpu"
CUDA_KEY = re.compile(r"torch_cuda_(\d+)")


def capture() -> dict[str, torch.Tensor]:
    """{'torch_cpu': ..., 'torch_cuda_0': ..., ...}: CUDA entries only where CUDA is present."""
    state = {CPU_KEY: torch.get_rng_state()}
    if torch.cuda.is_available():
        state |= {f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def cuda_states(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The saved CUDA states in device order (empty for a checkpoint written without CUDA)."""
    found = {int(m.group(1)): t for k, t in tensors.items() if (m := CUDA_KEY.fullmatch(k))}
    return [found[i] for i in sorted(found)]


def check(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` if it holds a usable CPU state (and well-typed CUDA states); else ValueError (unreadable)."""
    cpu = tensors.get(CPU_KEY)
    if cpu is None or cpu.dtype != torch.uint8 or cpu.shape != torch.get_rng_state().shape:
        raise ValueError("rng.safetensors: no valid torch_cpu RNG state")
    if any(t.dtype != torch.uint8 or t.dim() != 1 for t in cuda_states(tensors)):
        raise ValueError("rng.safetensors: a torch_cuda_N RNG state is not a byte vector")
    return tensors


def restore(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors[CPU_KEY])
    saved = cuda_states(tensors)
    if not saved:
        return  # written without CUDA: nothing more to restore (on a GPU, its draws start from the seed)
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if here == 0:
        warnings.warn(f"the checkpoint holds the CUDA RNG states of {len(saved)} GPU(s) and this machine has no "
                      "CUDA: the CPU RNG is restored, but random draws made on the GPU (dropout) cannot be "
                      "repeated, so the resumed curve will not match the GPU run's exactly", stacklevel=2)
        return
    for index, state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(state, index)
    if len(saved) != here:
        warnings.warn(f"the checkpoint holds the CUDA RNG states of {len(saved)} GPU(s) and this machine has "
                      f"{here}: the first {min(len(saved), here)} were restored", stacklevel=2)
