"""Crash matrix: the training process is SIGKILLed at every file-system operation of every checkpoint save
(and, where the operation writes or deletes a file, once more with that file torn in half or half deleted).
Auto-resume never errors or warns, picks the newest checkpoint that was complete at the kill, and the
finished run equals the uninterrupted one exactly: per-step losses and final trainable weights (fp32)."""

import os
import re
import shutil
import signal
import warnings

import pytest
import torch
from fault_tools import Runs, frozen, losses, one_thread, trainable

from tuneforge.train.checkpoint import find_resume, list_checkpoints

STEPS, SAVE_EVERY = 7, 3  # saves at steps 3 and 6 (the second deletes the first: keep 1); epoch 2 starts at step 7


def _expected_resume(ops: list[dict], kill_at: int) -> str | None:
    """The newest checkpoint renamed into place before the kill."""
    done = [op["dst"] for op in ops[:kill_at] if op["kind"] == "replace" and re.fullmatch(r"step-\d+", op["dst"] or "")]
    return done[-1] if done else None


@pytest.fixture
def runs(make_config, tmp_path):
    with one_thread():
        yield Runs(make_config, tmp_path, training__max_steps=STEPS, training__save_steps=SAVE_EVERY,
                   training__save_total_limit=1, training__grad_accum=2)


def test_reference_run_learns_and_its_checkpoint_reloads(runs, tally):
    result, model = runs.train("reference")
    assert all(torch.isfinite(torch.tensor(losses(result))))
    assert losses(result)[-1] < losses(result)[0]
    before, after = trainable(runs.base), trainable(model)
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every LoRA tensor trained
    assert all(torch.equal(v, frozen(model)[n]) for n, v in frozen(runs.base).items())  # the base did not
    path, _ = find_resume("auto", runs.base_dir / "reference" / "checkpoints")
    assert path.name == "step-0000006"
    # the saved step-6 checkpoint, restored into a fresh model, continues to the same model
    again, reloaded = runs.train("reference", resume="auto")
    assert again.resumed_from == str(path) and losses(again) == losses(result)
    probe = torch.tensor([[3, 5, 7, 9, 11, 13]])
    model.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=probe).logits, reloaded(input_ids=probe).logits)
    tally("crash kills and tears", resumed=1)


@pytest.mark.slow  # a forked child killed at every checkpoint write
def test_sigkill_at_every_checkpoint_write_then_resume_equals_uninterrupted(runs, record_property, tally):
    reference, ref_model = runs.train("reference")
    ops = runs.in_child("recording", record=True)
    kinds = {op["kind"] for op in ops}
    assert {"mkdir", "save_file", "write_text", "fsync", "replace", "rmtree"} <= kinds, kinds
    assert sum(op["kind"] == "replace" and op["dst"] == "step-0000006" for op in ops) == 1
    faults = [(i, False) for i in range(len(ops) + 1)] + [(i, True) for i, op in enumerate(ops) if op["torn"]]
    problems, resumed = [], 0
    for kill_at, torn in faults:
        name = f"kill-{kill_at}{'-torn' if torn else ''}"
        status = runs.in_child(name, kill_at=kill_at, torn=torn)
        if kill_at == len(ops):  # after the last operation: the child trained to the end
            assert status == 0, (name, status)
        else:
            assert os_killed(status), (name, ops[kill_at], status)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result, model = runs.train(name, resume="auto")
        resumed += 1
        expected = _expected_resume(ops, kill_at)
        got = result.resumed_from and result.resumed_from.rsplit("/", 1)[-1]
        ours = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
        same_weights = all(torch.equal(v, trainable(model)[n]) for n, v in trainable(ref_model).items())
        if losses(result) != losses(reference) or not same_weights or got != expected or ours:
            problems.append((name, ops[min(kill_at, len(ops) - 1)], got, expected, ours))
        for path in list_checkpoints(runs.base_dir / name / "checkpoints"):
            find_resume(str(path), runs.base_dir / name / "checkpoints")  # every listed checkpoint is readable
    record_property("faults_injected", len(faults))
    print(f"crash matrix: {len(ops)} checkpoint operations, {len(faults)} faults injected, {resumed} runs resumed, "
          f"{len(problems)} problems")
    assert not problems, "\n".join(map(str, problems))
    assert len(faults) >= 40 and resumed == len(faults)
    tally("crash kills and tears", faults=len(faults), resumed=resumed)


def os_killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_killed_again_while_resuming_resumes_exactly(runs, tally):
    """A second crash while the resumed run saves, which first removes the leftover of the first crash
    (a torn temp dir of the step-6 save)."""
    reference, ref_model = runs.train("reference")
    ops = runs.in_child("recording", record=True)
    first = next(i for i, op in enumerate(ops) if op["kind"] == "fsync" and op["path"].endswith("state.json")
                 and "0000006" in op["path"])
    assert os_killed(runs.in_child("crashed", kill_at=first, torn=True))
    crashed = runs.base_dir / "crashed"
    assert [p.name for p in (crashed / "checkpoints").iterdir() if p.name.startswith(".step-0000006.tmp.")]
    shutil.copytree(crashed, runs.base_dir / "second-rec")
    second_ops = runs.in_child("second-rec", record=True, resume="auto")
    assert second_ops[0]["kind"] == "rmtree" and ".tmp." in second_ops[0]["path"]  # the leftover goes first
    # one kill at the first operation of each kind (the full matrix above covers every one), and mid-delete
    firsts = sorted({op["kind"]: j for j, op in reversed(list(enumerate(second_ops)))}.values())
    faults = [(j, False) for j in firsts] + [(0, True)]
    for j, torn in faults:
        name = f"second-{j}{'-torn' if torn else ''}"
        shutil.copytree(crashed, runs.base_dir / name)
        assert os_killed(runs.in_child(name, kill_at=j, torn=torn, resume="auto")), (name, second_ops[j])
        result, model = runs.train(name, resume="auto")
        assert losses(result) == losses(reference), (name, second_ops[j])
        assert all(torch.equal(v, trainable(model)[n]) for n, v in trainable(ref_model).items()), name
    print(f"second crash: {len(faults)} faults injected into resumed runs, {len(faults)} runs resumed")
    tally("crash kills and tears", faults=1 + len(faults), resumed=len(faults))  # the first crash, then each second
