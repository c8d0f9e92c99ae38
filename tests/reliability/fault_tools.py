"""Fault injection for the reliability tests: a tiny LoRA run that can be repeated bit for bit, a forked
child that is killed hard (SIGKILL, so no Python cleanup runs) at the n-th file-system operation of a
checkpoint save, optionally leaving the file it was writing torn in half, and a recorder of those operations.

    run = Runs(make_config, tmp_path, training__max_steps=7)
    reference = run.train("reference")                       # (TrainResult, model)
    ops = run.in_child("rec", record=True)                    # every checkpoint write, in order
    status = run.in_child("crash", kill_at=5, torn=True)      # os.waitpid status of the killed child
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

import tuneforge.train.checkpoint as ckpt
from tuneforge.data.dataset import load_examples
from tuneforge.methods import METHODS, MethodContext
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train.loop import train

KILLED = "killed"  # exit status of a child that SIGKILLed itself


@contextmanager
def one_thread():
    """torch's OpenMP pool is not fork-safe (a child hangs in its first parallel region): parent and
    children run single-threaded while forking; results are then also bit-identical across them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def wait_child(pid: int, timeout: float = 120.0) -> int:
    """The child's wait status; a child still running after `timeout` is killed and the test fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} still running after {timeout} s")


def fork(fn: Callable[[], int | None], timeout: float = 120.0) -> int:
    """Run fn in a forked child (its return value is the exit code; an exception exits 99) and wait."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 99
        try:
            code = fn() or 0
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code and stderr
            os.write(2, f"child failed: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    return wait_child(pid, timeout)


class Injector:
    """Patches the checkpoint module's file-system calls to count and record them and, at the `kill_at`-th,
    kill the process (torn: after half-writing its file) or, given `error`, raise it instead (in process)."""

    def __init__(self, root: Path, kill_at: int | None = None, torn: bool = False, error: OSError | None = None):
        self.root, self.kill_at, self.torn, self.error, self.ops, self.n = root, kill_at, torn, error, [], 0

    def hit(self, kind: str, path: Path, tear: Callable[[], None] | None = None, dst: Path | None = None) -> None:
        path = Path(path)
        if path != self.root and self.root not in path.parents:
            return  # not a checkpoint write (e.g. a log beside it)
        self.ops.append({"kind": kind, "path": str(path.relative_to(self.root)), "torn": tear is not None,
                         "dst": str(Path(dst).relative_to(self.root)) if dst else None})
        self.n += 1
        if self.n - 1 == self.kill_at:
            if self.error is not None:
                raise self.error
            if self.torn and tear:
                tear()
            os.kill(os.getpid(), signal.SIGKILL)

    @contextmanager
    def installed(self):
        real_save, real_mkdir, real_fsync = ckpt.save_file, ckpt.make_temp_dir, ckpt._fsync
        real_replace, real_rmtree, real_write_text = os.replace, shutil.rmtree, Path.write_text

        def half(path: Path, data: bytes) -> None:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])

        def save_file(tensors, filename, metadata=None):
            self.hit("save_file", filename, lambda: half(Path(filename), safetensors_bytes(tensors, metadata)))
            return real_save(tensors, filename, metadata)

        def write_text(path, data, *a, **k):
            self.hit("write_text", path, lambda: half(Path(path), data.encode()))
            return real_write_text(path, data, *a, **k)

        def fsync(path):  # torn: the data never reached the disk
            tear = (lambda: half(Path(path), Path(path).read_bytes())) if Path(path).is_file() else None
            self.hit("fsync", path, tear)
            return real_fsync(path)

        def rmtree(path, *a, **k):  # torn: killed mid-delete, one file gone
            files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else []
            self.hit("rmtree", path, (lambda: files[0].unlink()) if files else None)
            return real_rmtree(path, *a, **k)

        def replace(src, dst, *a, **k):
            self.hit("replace", src, dst=dst)
            return real_replace(src, dst, *a, **k)

        def make_temp_dir(parent, prefix):
            self.hit("mkdir", parent)
            return real_mkdir(parent, prefix)

        ckpt.save_file, ckpt.make_temp_dir, ckpt._fsync = save_file, make_temp_dir, fsync
        os.replace, shutil.rmtree, Path.write_text = replace, rmtree, write_text
        try:
            yield self
        finally:
            ckpt.save_file, ckpt.make_temp_dir, ckpt._fsync = real_save, real_mkdir, real_fsync
            os.replace, shutil.rmtree, Path.write_text = real_replace, real_rmtree, real_write_text


class Runs:
    """Repeatable tiny LoRA runs through tuneforge.train.loop.train (dropout on, so RNG restore matters)."""

    def __init__(self, make_config, base_dir: Path, **overrides) -> None:
        self.make_config, self.base_dir = make_config, base_dir
        self.overrides = {"method__dropout": 0.1, "training__report_to": [], "training__lr_scheduler": "cosine",
                          "training__warmup_steps": 2, **overrides}
        cfg = self.config("unused")
        self.examples, _ = load_examples(cfg, load_tokenizer(cfg.model), cfg.data.train)
        torch.manual_seed(cfg.seed)
        self.base = METHODS["lora"].apply(load_model(cfg.model), cfg.method, MethodContext(cfg.model))

    def config(self, name: str, **extra):
        return self.make_config(**{**self.overrides, "output_dir": str(self.base_dir / name), **extra})

    def train(self, name: str, init=None, log: Callable[[str], None] | None = None, **extra):
        """(TrainResult, model) of a run from the same initial weights (or the model `init`) and RNG every time."""
        cfg = self.config(name, **extra)
        model = init if init is not None else copy.deepcopy(self.base)
        torch.manual_seed(1234)
        return train(model, self.examples, [], cfg, Path(cfg.output_dir), "fp32", log=log or (lambda _m: None)), model

    def in_child(self, name: str, kill_at: int | None = None, torn: bool = False, record: bool = False, **extra):
        """Train in a forked child with an Injector; returns the op list (record) or the wait status."""
        out = self.base_dir / name
        ops_file = self.base_dir / f"{name}.ops.json"

        def child() -> int:
            with Injector(out / "checkpoints", kill_at, torn).installed() as inj:
                self.train(name, **extra)
            if record:
                with open(ops_file, "w") as f:
                    json.dump(inj.ops, f)
            return 0

        status = fork(child)
        if record:
            assert os.waitstatus_to_exitcode(status) == 0, f"recording run failed ({status})"
            return json.loads(ops_file.read_text())
        return status


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def losses(result) -> list[float]:
    return [h["loss"] for h in result.history]
