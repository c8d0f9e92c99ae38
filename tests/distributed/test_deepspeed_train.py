"""DeepSpeed ZeRO-2 / ZeRO-3 driven by tuneforge's loop (`training.distributed=deepspeed`, train/deepspeed_engine.py)
on 2 gloo processes on CPU against the same run in one process: the loss curve within 1e-4 relative (fp32), the
step-2 checkpoint holds the one-process checkpoint's tensors (gathered from the partitions), the saved model is the
usual run format (plain transformers / peft give the one-process logits), trainable weights moved, and each rank's
bytes (ZeRO-3: parameters about half; both: AdamW states about half). One case resumes from its step-2 checkpoint
on 2 ranks and must reproduce the rest of the curve.

Not in the default suite: it needs the `deepspeed` package, whose CPU comm op is JIT-compiled (minutes) at the first
start on a machine. `make deepspeed-check` installs it and runs this file (TUNEFORGE_DEEPSPEED_CHECK=1).

    TUNEFORGE_DEEPSPEED_CHECK=1 .venv/bin/python -m pytest -q -s tests/distributed/test_deepspeed_train.py
"""

import importlib.util
import json
import os
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_fsdp import _launch, _log, _logits  # the same launch and read-back helpers as the FSDP test

from tuneforge.stages import STAGES
from tuneforge.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.skipif(
    os.environ.get("TUNEFORGE_DEEPSPEED_CHECK") != "1" or importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed check: `make deepspeed-check` (needs deepspeed; its comm op JIT-builds for minutes)")

RTOL = 1e-4  # fp32; only the order of additions differs (partitions, reduce-scatter, clipping norm)


@pytest.mark.parametrize("method, stage", [("lora", 2), ("full", 3), ("lora", 3), ("full", 2)])
def test_zero_two_ranks_match_one_process(method, stage, make_config, tmp_path, run_cli, capfd, tiny_model_dir):
    # lora: batch 1 x accum 3 leaves rank 1 no example in a micro-batch (weight-0 fillers); full: 3 x 2 splits 2 / 1
    shape = dict(training__batch_size=1, training__grad_accum=3) if method == "lora" else dict(
        training__batch_size=3, training__grad_accum=2)
    kwargs = dict(training__max_steps=4, training__save_steps=2, training__eval_steps=2, eval__before=False,
                  eval__generate_samples=0, training__learning_rate=3e-3 if method == "lora" else 1e-3, **shape)
    if method == "full":
        kwargs["method"] = {"name": "full"}
    single = STAGES["sft"](make_config(output_dir=str(tmp_path / "single"), **kwargs))
    out = tmp_path / "zero"
    cfg = make_config(output_dir=str(out), training__distributed="deepspeed",
                      training__deepspeed={"zero_stage": stage}, **kwargs)
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    _launch(run_cli, capfd, path)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-0000002", "step-0000004"]
    resume = (method, stage) == ("lora", 3)
    if resume:  # drop the last checkpoint and the model; 2 ranks resume from step 2 and redo steps 3-4
        first = _log(out)
        shutil.rmtree(out / "checkpoints" / "step-0000004")
        _launch(run_cli, capfd, path, "resume=auto")
        assert json.loads((out / "metrics.json").read_text())["train"]["resumed_from"].endswith("step-0000002")
        assert [h["loss"] for h in _log(out)] == pytest.approx([h["loss"] for h in first], rel=RTOL)

    (ref, ref_metrics), (got, metrics) = ((_log(run), json.loads((run / "metrics.json").read_text()))
                                          for run in (single, out))
    assert [h["supervised_tokens"] for h in got] == [h["supervised_tokens"] for h in ref]
    for name, series in {"train": lambda log, m: [h["loss"] for h in log],  # per step; evals every 2 and after
                         "eval": lambda log, m: [e["loss"] for e in m["evals"]] + [m["eval_after"]["loss"]]}.items():
        assert series(got, metrics) == pytest.approx(series(ref, ref_metrics), rel=RTOL), name
    worst = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(got, ref, strict=True))

    whole = ref_metrics["train"]["sharding"]["per_rank"][0]
    ranks = metrics["train"]["sharding"]["per_rank"]
    assert metrics["train"]["sharding"]["strategy"] == "deepspeed" and len(ranks) == 2
    halved = ("param_bytes", "trainable_param_bytes", "optimizer_bytes") if stage == 3 else ("optimizer_bytes",)
    for key in halved:  # ZeRO pads its flat partitions to an alignment: about half, not exactly
        for r in ranks:
            assert 0.45 * whole[key] <= r[key] <= 0.6 * whole[key], (key, r[key], whole[key])
    if stage == 2:  # ZeRO-2 keeps the whole model on every rank
        assert all(r["param_bytes"] == whole["param_bytes"] for r in ranks)
    print(f"\n{method} ZeRO-{stage}: one process {whole}; per rank {ranks}; max loss rel diff {worst:.2e}")

    # the checkpoint is a one-process checkpoint (gathered from the partitions: same tensors). Weights: atol 1e-4
    # (3% of one AdamW step at lr 3e-3): where a gradient element is near AdamW's eps (LoRA A's second step; its first
    # gradient is 0 since B starts at 0) the update m/(sqrt(v)+eps) amplifies last-bit differences of the summation
    # order; measured 3.7e-5 on one of 512 elements with ZeRO-3, while the losses agree to 1e-7
    for name, atol in (("trainable.safetensors", 1e-4), ("optimizer.safetensors", 1e-6)):
        mine, theirs = (load_file(run / "checkpoints" / "step-0000002" / name) for run in (out, single))
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-4, atol=atol)

    # the saved model is the ordinary run format, consolidated: plain transformers / peft give the same logits
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in single.glob("*.safetensors"))
    ids = torch.tensor([[3, 10, 11, 12, 13, 14]])
    adapter = method == "lora"
    mine = _logits(out, tiny_model_dir, ids, adapter)
    assert torch.allclose(mine, _logits(single, tiny_model_dir, ids, adapter), atol=1e-4, rtol=1e-4)
    base = _logits(tiny_model_dir, tiny_model_dir, ids, False)  # trained weights moved (lora: B is 0 at first)
    assert (mine - base).abs().max() > 1e-3
