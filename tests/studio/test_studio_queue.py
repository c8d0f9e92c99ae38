"""The studio's run manager with a stand-in for `tuneforge train` (a few lines of Python that log steps, answer
SIGTERM as training does and write metrics.json at the end): one run at a time, the rest queued in order; stop is
SIGTERM to the run's process group; resume queues it again with resume=auto; a cancelled queued run never starts;
state survives a new manager (a restarted studio)."""

from __future__ import annotations

import json
import sys
import time

import pytest
import yaml

from tuneforge.errors import UserError
from tuneforge.studio.manager import RunManager

FAKE_TRAIN = r'''
import json, signal, sys, time, pathlib, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
out = pathlib.Path(cfg["output_dir"]); out.mkdir(parents=True, exist_ok=True)
(out / "config.yaml").write_text(yaml.safe_dump(cfg))
over = dict(a.split("=", 1) for a in sys.argv[2:])
steps = int(over.get("training.max_steps", cfg["training"]["max_steps"]))
start = len((out / "train_log.jsonl").read_text().splitlines()) if over.get("resume") == "auto" else 0
def stop(signum, frame):
    (out / "checkpoints" / f"step-{step:07d}").mkdir(parents=True, exist_ok=True)
    print(f"interrupted (signal {signum}); complete checkpoint at ...", flush=True); sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
for step in range(start + 1, steps + 1):
    with open(out / "train_log.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "loss": 1.0 / step, "tokens": 10, "seconds": 0.05}) + "\n")
    time.sleep(0.05)
(out / "metrics.json").write_text(json.dumps({"train": {"wall_seconds": 1}}))
'''


def _config(runs, name: str, steps: int) -> str:
    return yaml.safe_dump({"model": "m", "stage": "sft", "output_dir": str(runs / name),
                           "training": {"max_steps": steps}})


def _until(check, what: str, timeout: float = 30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def manager(tmp_path, monkeypatch):
    monkeypatch.setattr(RunManager, "TRAIN", (sys.executable, "-c", FAKE_TRAIN))
    return RunManager(tmp_path / "runs", cwd=tmp_path)


def test_one_run_at_a_time_stop_resume_and_cancel(manager, tmp_path):
    runs = tmp_path / "runs"
    status = lambda name: manager.status(name)["status"]  # noqa: E731
    manager.submit("a", _config(runs, "a", 10_000))
    manager.submit("b", _config(runs, "b", 5))
    manager.submit("c", _config(runs, "c", 5))
    assert (status("a"), status("b"), status("c")) == ("running", "queued", "queued")
    with pytest.raises(UserError, match="exists already"):
        manager.submit("a", _config(runs, "a", 3))
    manager.stop("c")  # cancelled while queued: never starts
    _until(lambda: manager.status("a")["step"] >= 3, "a's first steps")
    manager.stop("a")  # SIGTERM: the stand-in saves a "checkpoint" and exits as training does
    _until(lambda: status("a") == "stopped", "a stopped")
    assert manager.status("a")["checkpoints"]
    manager.tick()
    _until(lambda: status("b") == "finished", "b to run once a stopped")
    manager.tick()
    assert status("c") == "cancelled" and not (runs / "c").exists()
    stopped_at = manager.status("a")["step"]
    manager.resume("a", max_steps=stopped_at + 3)
    assert json.loads((runs / ".studio" / "a" / "state.json").read_text())["overrides"] == [
        "resume=auto", f"training.max_steps={stopped_at + 3}"]
    _until(lambda: status("a") == "finished", "a resumed to its new end")
    fresh = RunManager(runs)  # a restarted studio reads the same files
    assert [(r["name"], r["status"], r["step"]) for r in fresh.list()] == [
        ("a", "finished", stopped_at + 3), ("b", "finished", 5), ("c", "cancelled", 0)]
    with pytest.raises(UserError, match="nothing to resume"):
        fresh.resume("a")
