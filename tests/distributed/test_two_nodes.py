"""Two torchrun "nodes" on this machine (--nnodes 2, node ranks 0 and 1, one process each, c10d rendezvous on
127.0.0.1) train to the same loss curve as one process: the multi-node launch path (rendezvous, global ranks,
cross-node collectives), here with FSDP sharding the model over the two nodes. Two real machines run the same
commands with the first machine's address as the endpoint (docs/distributed.md).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneforge.stages import STAGES

RTOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_two_torchrun_nodes_reproduce_single_process_curve(make_config, tmp_path):
    kwargs = dict(method={"name": "full"}, training__learning_rate=1e-3, training__max_steps=4,
                  training__batch_size=3, training__grad_accum=2, eval__before=False, eval__generate_samples=0)
    single = STAGES["sft"](make_config(output_dir=str(tmp_path / "single"), **kwargs))
    cfg = make_config(output_dir=str(tmp_path / "nodes"), training__distributed="fsdp", **kwargs)
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "tuneforge-test",
         "-m", "tuneforge", "train", str(path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = []
    for node in nodes:
        try:
            logs.append(node.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for n in nodes:
                n.kill()
            raise
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert sum(log.count("done:") for log in logs) == 1  # global rank 0 alone reports

    out = tmp_path / "nodes"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["sharding"]["strategy"] == "fsdp"
    assert _losses(out) == pytest.approx(_losses(single), rel=RTOL)
    ref = json.loads((single / "metrics.json").read_text())
    assert metrics["eval_after"]["loss"] == pytest.approx(ref["eval_after"]["loss"], rel=RTOL)
