"""SIGINT / SIGTERM sent from outside while a step runs: the CLI writes a complete checkpoint within the
grace period (measured: signal -> process exit), exits 128 + signum, and resume=auto ends equal to the
uninterrupted run. A signal between micro-batches of an accumulated step abandons that step (resume replays
it with the same RNG); a signal during a save lets the save finish; a second signal is a hard stop."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fault_tools import one_thread, wait_child

import tuneforge.train.checkpoint as ckpt
import tuneforge.train.loop as loop
from tuneforge import cli
from tuneforge.stages import STAGES
from tuneforge.train.checkpoint import find_resume, list_checkpoints

GRACE = 10.0  # seconds: docker stop's default before SIGKILL (Kubernetes gives 30)
# Where a real process's exit seconds went (2 cores, load 17): signal -> checkpoint complete 0.8 s, atexit 0.7 s,
# then the interpreter's teardown 50 s; the program now ends without it (cli.exit_now, tests/cli/test_exit_now.py).


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _config(make_config, tmp_path, name, **extra):
    cfg = make_config(output_dir=str(tmp_path / name), method__dropout=0.1, training__max_steps=8,
                      training__save_steps=2, training__lr_scheduler="cosine", training__warmup_steps=2,
                      training__report_to=[], eval__before=False, eval__generate_samples=0, **extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return cfg, path


def _run_cli_child(path: Path, flag: Path, at_call: int, hold: float, signals: list[int], gap: float = 0.2,
                   during_save: bool = False) -> tuple[int, float]:
    """`tuneforge train` in a forked child; when the child reaches loss_sum call `at_call` (or its first
    checkpoint write) it holds for `hold` s while the parent sends `signals`. (wait status, seconds from the
    first signal to the child's exit)."""

    def child() -> int:
        real_loss, real_save, calls = loop.loss_sum, ckpt.save_file, [0]

        def hold_here():  # a long step: short sleeps, so Python runs a signal's handler between them as it would
            flag.write_text("here")  # between a step's ops (one 5 s native sleep held a signal that reached another
            end = time.monotonic() + hold  # thread until its end, so two SIGINTs arrived as one: CI at load ~10)
            while time.monotonic() < end:
                time.sleep(0.05)

        def loss_sum(model, batch, *rest):  # rest: the loop's chunked-loss flag
            calls[0] += 1
            if calls[0] == at_call and not during_save:
                hold_here()
            return real_loss(model, batch, *rest)

        def save_file(tensors, filename, metadata=None):
            if during_save and not flag.exists():
                hold_here()
            return real_save(tensors, filename, metadata)

        loop.loss_sum, ckpt.save_file = loss_sum, save_file
        return cli.main(["train", str(path)])

    pid = os.fork()  # not fault_tools.fork, which waits: the parent signals while the child runs
    if pid == 0:
        code = 99
        try:
            code = child()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = time.monotonic()
    for i, signum in enumerate(signals):
        if i:
            time.sleep(gap)
        os.kill(pid, signum)
    status = wait_child(pid)
    return status, time.monotonic() - sent


@pytest.mark.parametrize(("signum", "accum", "at_call", "expect_step"), [
    (signal.SIGTERM, 1, 5, 5),  # mid-step 5: the step finishes, step-5 is saved
    (signal.SIGINT, 2, 5, 2),  # first micro-batch of step 3: abandoned, step-2 is the checkpoint
])
def test_signal_mid_step_checkpoints_within_grace_and_resumes_exactly(make_config, tmp_path, capfd, signum, accum,
                                                                     at_call, expect_step, tally):
    with one_thread():
        cfg, path = _config(make_config, tmp_path, "run", training__grad_accum=accum)
        ref_cfg, _ = _config(make_config, tmp_path, "reference", training__grad_accum=accum)
        reference = _losses(STAGES["sft"](ref_cfg))
        assert all(x == x for x in reference) and reference[-1] < reference[0]  # finite, and it learns
        status, grace = _run_cli_child(path, tmp_path / "flag", at_call, 0.3, [signum])
        err = capfd.readouterr().err
        assert os.waitstatus_to_exitcode(status) == 128 + signum, err
        assert grace < GRACE, grace
        assert f"interrupted (signal {signum}); complete checkpoint at" in err and "Traceback" not in err
        latest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
        assert latest.name == f"step-{expect_step:07d}" and str(latest) in err
        find_resume(str(latest), latest.parent)  # complete and readable
        assert not (tmp_path / "run" / "metrics.json").exists()
        out = STAGES["sft"](cfg.model_copy(update={"resume": "auto"}))
        assert _losses(out) == reference
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["train"]["resumed_from"] == str(latest)
    print(f"signal {signum}: checkpoint {latest.name}, exit {128 + signum} {grace:.2f} s after the signal")
    tally("signals", faults=1, resumed=1)


def test_signal_during_a_save_lets_it_finish(make_config, tmp_path, capfd, tally):
    with one_thread():
        cfg, path = _config(make_config, tmp_path, "run")
        ref_cfg, _ = _config(make_config, tmp_path, "reference")
        reference = _losses(STAGES["sft"](ref_cfg))
        status, grace = _run_cli_child(path, tmp_path / "flag", 0, 0.5, [signal.SIGTERM], during_save=True)
        assert os.waitstatus_to_exitcode(status) == 143, capfd.readouterr().err
        assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
        assert grace < GRACE
        out = STAGES["sft"](cfg.model_copy(update={"resume": "auto"}))
        assert _losses(out) == reference
    tally("signals", faults=1, resumed=1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_is_a_hard_stop(make_config, tmp_path, capfd, signum, tally):
    with one_thread():
        cfg, path = _config(make_config, tmp_path, "run")
        status, _ = _run_cli_child(path, tmp_path / "flag", 5, 5.0, [signum, signum], gap=1.5)  # both in the hold
        err = capfd.readouterr().err
        if signum == signal.SIGTERM:  # the default action: the process is terminated by the signal
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, (status, err)
        else:  # KeyboardInterrupt out of the step: the CLI says so, exit 130, no checkpoint claimed
            assert os.waitstatus_to_exitcode(status) == 130 and "complete checkpoint" not in err, err
        ckpts = tmp_path / "run" / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002", "step-0000004"]  # periodic ones only
        ref_cfg, _ = _config(make_config, tmp_path, "reference")
        out = STAGES["sft"](cfg.model_copy(update={"resume": "auto"}))
        assert _losses(out) == _losses(STAGES["sft"](ref_cfg))
    tally("signals", faults=1, resumed=1)


@pytest.mark.slow  # two fresh `python -m tuneforge` processes
def test_sigint_to_the_real_cli_process_exits_130_then_resumes(make_config, tmp_path, tally):
    """End to end through `python -m tuneforge` (its own interpreter, not a fork). The signal is sent once the
    first periodic checkpoint (step 3) exists, not after a fixed sleep: on a loaded machine a sleep may end
    before the first step or after the last."""
    cfg = make_config(output_dir=str(tmp_path / "run"), training__max_steps=150, training__save_steps=3,
                      eval__before=False, eval__generate_samples=0)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    # one thread: on a shared 2-core box two OpenMP threads per process make each tiny step 10x slower
    path_ = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path_, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not list_checkpoints(ckpts):
        time.sleep(0.01)
    periodic = list_checkpoints(ckpts)
    assert periodic and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGINT)  # some steps into training, long before its end
    sent, saved = time.monotonic(), None
    while proc.poll() is None and time.monotonic() < sent + 120:  # (its output is far below a pipe's buffer)
        if saved is None and list_checkpoints(ckpts)[-1:] != periodic[-1:]:
            saved = time.monotonic() - sent
        time.sleep(0.01)
    grace = time.monotonic() - sent
    saved = grace if saved is None else saved  # it appeared between the last look and the exit
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "complete checkpoint" in err and "Traceback" not in err and grace < GRACE
    latest = list_checkpoints(ckpts)[-1]
    step = int(latest.name.split("-")[1])
    assert 3 <= step < 150 and str(latest) in err
    done = subprocess.run([sys.executable, "-m", "tuneforge", "train", str(path), "resume=auto"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 150 and len(_losses(tmp_path / "run")) == 150
    assert metrics["train"]["resumed_from"] == str(latest)
    assert metrics["train"]["final_loss"] < _losses(tmp_path / "run")[0]
    print(f"real process: SIGINT at step {step}, checkpoint complete {saved:.2f} s and exit 130 {grace:.2f} s "
          "after the signal")
    tally("signals", faults=1, resumed=1)


def test_second_sigint_is_a_hard_stop_whatever_handler_was_installed_before():
    """The loop's handler makes the second SIGINT a KeyboardInterrupt itself: restoring the handler found before the
    loop (here one that swallows SIGINT, as a library or an earlier run in the process may leave) made the second
    signal a graceful stop in CI. The found handler is back after the loop."""
    from tuneforge.train.steps import stop_on_signals

    def swallow(_signum, _frame):
        pass

    found = signal.signal(signal.SIGINT, swallow)
    try:
        with pytest.raises(KeyboardInterrupt):
            with stop_on_signals() as stop_signal:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here
                assert stop_signal() == signal.SIGINT
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)  # KeyboardInterrupt out of here
                pytest.fail("the second SIGINT did not stop")
        assert signal.getsignal(signal.SIGINT) is swallow
    finally:
        signal.signal(signal.SIGINT, found)
