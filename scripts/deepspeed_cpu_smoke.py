"""DeepSpeed ZeRO on the CPU, outside tuneforge: deepspeed.initialize on a 3-layer MLP over gloo, 3 steps, and (ZeRO-3)
how many parameters each rank holds: a check of the DeepSpeed install alone (tuneforge's own check, with its loop
driving the engine, is `make deepspeed-check`). Needs `deepspeed` (pip install 'tuneforge[deepspeed]' with
DS_BUILD_OPS=0; a CPU build JIT-compiles its shared-memory comm op with ninja at the first init_distributed: minutes).

    ZS=2 python scripts/deepspeed_cpu_smoke.py
    ZS=3 python -m torch.distributed.run --standalone --nproc_per_node 2 scripts/deepspeed_cpu_smoke.py
"""

import os

import deepspeed
import torch

for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29611", "RANK": "0", "WORLD_SIZE": "1",
                   "LOCAL_RANK": "0"}.items():
    os.environ.setdefault(key, value)  # one process without a launcher
deepspeed.init_distributed(dist_backend="gloo")
stage = int(os.environ.get("ZS", "2"))
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
          "zero_optimization": {"stage": stage}}
engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
for step in range(3):
    loss = engine(torch.randn(2, 8)).pow(2).mean()
    engine.backward(loss)
    engine.step()
    print("step", step, float(loss.detach()))
print("OK", type(optimizer).__name__)
if stage == 3:
    held = sum(p.ds_tensor.numel() for p in engine.module.parameters())
    print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: holds {held} of "
          f"{sum(p.ds_numel for p in engine.module.parameters())} parameters", flush=True)
