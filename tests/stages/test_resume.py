"""Resume reproduces the uninterrupted run exactly (fp32 on CPU); SIGINT/SIGTERM leave a complete
checkpoint and a defined exit code; a corrupt latest checkpoint falls back to the previous one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import tuneforge.train.loop as loop
from tuneforge.errors import TrainingInterrupted, UserError
from tuneforge.stages import STAGES
from tuneforge.train.checkpoint import find_resume, list_checkpoints


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _kwargs(tmp_path, name, **extra):
    return dict(output_dir=str(tmp_path / name), training__max_steps=12, training__save_steps=4,
                training__lr_scheduler="cosine", training__warmup_steps=2, method__dropout=0.1,
                eval__before=False, eval__generate_samples=0, **extra)


def test_resume_after_signal_equals_uninterrupted(make_config, tmp_path, monkeypatch):
    straight = STAGES["sft"](make_config(**_kwargs(tmp_path, "straight")))

    real_loss_sum, calls = loop.loss_sum, []

    def loss_sum_then_signal(model, batch):
        calls.append(1)
        if len(calls) == 6:  # mid-run, between checkpoints (batch 4, accum 1: one call per step)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss_sum(model, batch)

    monkeypatch.setattr(loop, "loss_sum", loss_sum_then_signal)
    cfg = make_config(**_kwargs(tmp_path, "resumed"))
    with pytest.raises(TrainingInterrupted) as info:
        STAGES["sft"](cfg)
    assert info.value.signum == signal.SIGTERM and info.value.checkpoint.endswith("step-0000006")
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(loop, "loss_sum", real_loss_sum)
    resumed = STAGES["sft"](make_config(**_kwargs(tmp_path, "resumed"), resume="auto"))
    assert _losses(resumed) == _losses(straight)  # exact, step by step
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"].endswith("step-0000006")


def test_corrupt_latest_checkpoint_falls_back(make_config, tmp_path):
    out = STAGES["sft"](make_config(**_kwargs(tmp_path, "run")))
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["step-0000008", "step-0000012"]
    data = (ckpts[-1] / "optimizer.safetensors").read_bytes()
    (ckpts[-1] / "optimizer.safetensors").write_bytes(data[: len(data) // 2])  # torn file
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        path, _ = find_resume("auto", out / "checkpoints")
    assert path == ckpts[0]
    with pytest.raises(UserError, match="not a usable checkpoint"):
        find_resume(str(ckpts[-1]), out / "checkpoints")
    (ckpts[0] / "COMPLETE").unlink()  # an interrupted save: no marker, so it is not a checkpoint
    assert list_checkpoints(out / "checkpoints") == [ckpts[-1]]


def test_sigint_in_subprocess_exits_130_with_checkpoint_then_resumes(make_config, tmp_path):
    cfg = make_config(**{**_kwargs(tmp_path, "run"), "training__max_steps": 400, "training__save_steps": 1000})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "tensorboard"
    deadline = time.time() + 120
    while time.time() < deadline and not list(log.glob("events.*")):
        time.sleep(0.2)
    time.sleep(1.0)  # some steps into training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "complete checkpoint" in err and "Traceback" not in err
    [ckpt] = list_checkpoints(tmp_path / "run" / "checkpoints")
    step = int(ckpt.name.split("-")[1])
    assert 0 < step < 400
    done = subprocess.run([sys.executable, "-m", "tuneforge", "train", str(path), "resume=auto"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 400 and len(_losses(tmp_path / "run")) == 400
