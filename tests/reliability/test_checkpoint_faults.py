"""Damaged checkpoints and a full disk. A damaged latest checkpoint (no marker, a torn or missing file, a
flipped byte, garbage JSON, a bad RNG state, non-finite weights) is skipped with a warning naming the file,
auto-resume continues from the previous one and ends equal to the uninterrupted run; naming the damaged one
explicitly is an error. A write that fails (ENOSPC at each write of a save) leaves the previous checkpoint
intact and no partial one, and the error says what happened, where, and what to do (exit code 74)."""

import errno
import json
import random
import shutil
import warnings

import pytest
import torch
import yaml
from fault_tools import Injector, Runs, losses, one_thread, trainable
from safetensors.torch import load_file, save_file

from tuneforge import cli
from tuneforge.errors import ConfigError
from tuneforge.train.checkpoint import MARKER, CheckpointWriteError, _digest, find_resume, list_checkpoints

FILES = ["trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]


@pytest.fixture
def runs(make_config, tmp_path):
    with one_thread():
        yield Runs(make_config, tmp_path, training__max_steps=6, training__save_steps=3)


def _truncate(name):
    return lambda d: (d / name).write_bytes((d / name).read_bytes()[: (d / name).stat().st_size // 2])


def _flip_last_byte(name):
    def flip(d):
        data = bytearray((d / name).read_bytes())
        data[-1] ^= 0x01
        (d / name).write_bytes(bytes(data))
    return flip


def _rewrite_manifest(d):  # as if another tool rewrote files and the marker consistently
    (d / MARKER).write_text(json.dumps({"files": {n: _digest(d / n) for n in FILES}}))


def _nan_weights(d):
    weights = load_file(str(d / "trainable.safetensors"))
    weights[next(iter(weights))][0] = float("nan")
    save_file(weights, str(d / "trainable.safetensors"))
    _rewrite_manifest(d)


def _old_format(break_rng):  # a checkpoint from before manifests: marker "ok", no guards
    def corrupt(d):
        if break_rng:
            save_file({"other": torch.zeros(3)}, str(d / "rng.safetensors"))
        (d / MARKER).write_text("ok\n")
    return corrupt


CORRUPTIONS = {
    "no marker": (lambda d: (d / MARKER).unlink(), "no COMPLETE marker"),
    "marker garbage": (lambda d: (d / MARKER).write_text("{half"), "not a checkpoint manifest"),
    **{f"{n} torn": (_truncate(n), f"{n}: size or sha256 differs") for n in FILES},
    **{f"{n} missing": (lambda d, n=n: (d / n).unlink(), f"{n}: missing") for n in FILES},
    "trainable byte flipped": (_flip_last_byte("trainable.safetensors"), "trainable.safetensors: size or sha256"),
    "state.json garbage, manifest rewritten": (lambda d: ((d / "state.json").write_text("{nope"), _rewrite_manifest(d)),
                                               "state.json:"),
    "non-finite weights, manifest rewritten": (_nan_weights, "non-finite weights"),
    "old format, rng without torch_cpu": (_old_format(True), "rng.safetensors: no valid torch_cpu"),
    "old format, rng torn": (lambda d: (_old_format(False)(d), _truncate("rng.safetensors")(d)), "rng.safetensors"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_damaged_latest_checkpoint_falls_back_and_resumes_exactly(runs, case, tally):
    reference, ref_model = runs.train("reference")
    out = runs.base_dir / case.replace(" ", "_").replace(",", "")
    shutil.copytree(runs.base_dir / "reference", out)
    older, latest = list_checkpoints(out / "checkpoints")
    corrupt, reason = CORRUPTIONS[case]
    corrupt(latest)
    if case == "no marker":  # an interrupted save is not a checkpoint (retention does not count it)
        assert list_checkpoints(out / "checkpoints") == [older]
    with pytest.raises(ConfigError, match="not a usable checkpoint") as info:  # named explicitly: an error
        find_resume(str(latest), out / "checkpoints")
    assert reason in str(info.value)
    with pytest.warns(UserWarning, match=f"skipping unreadable checkpoint {latest}.*{reason}"):
        result, model = runs.train(out.name, resume="auto")
    assert result.resumed_from == str(older)
    assert losses(result) == losses(reference)
    assert all(torch.equal(v, trainable(model)[n]) for n, v in trainable(ref_model).items())
    assert find_resume(str(latest), out / "checkpoints")  # saved again, whole
    tally("damaged checkpoints", faults=1, resumed=1)


def test_random_damage_is_always_detected(runs, record_property, tally):
    """Seeded fuzz: truncate to a random length, flip a random byte, or empty one random file of the newest
    checkpoint; auto-resume must skip it (warning) and take the previous one, every time."""
    runs.train("reference")
    root = runs.base_dir / "reference" / "checkpoints"
    pristine = runs.base_dir / "pristine"
    shutil.copytree(root, pristine)
    rng, tried = random.Random(0), 0
    for trial in range(60):
        shutil.rmtree(root)
        shutil.copytree(pristine, root)
        latest = list_checkpoints(root)[-1]
        target = latest / rng.choice([*FILES, MARKER])
        data = bytearray(target.read_bytes())
        how = rng.choice(["truncate", "flip", "empty"])
        if how == "truncate":
            data = data[: rng.randrange(len(data))]
        elif how == "flip":
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            data = bytearray()
        target.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
            path, _ = find_resume("auto", root)
        assert path.name == "step-0000003", (trial, target.name, how)
        tried += 1
    record_property("damaged_checkpoints_tried", tried)
    print(f"random damage: {tried} damaged checkpoints, all detected")
    tally("damaged checkpoints", faults=tried)


def _ops_of_second_save(runs):
    with Injector(runs.base_dir / "recording" / "checkpoints").installed() as inj:
        runs.train("recording")
    first_of_second = next(i for i, op in enumerate(inj.ops) if op["kind"] == "mkdir" and i > 0)
    return inj.ops, first_of_second


def test_disk_full_at_every_write_keeps_the_previous_checkpoint(runs, tally):
    reference, ref_model = runs.train("reference")
    ops, start = _ops_of_second_save(runs)
    writes = [i for i in range(start, len(ops)) if ops[i]["kind"] in ("mkdir", "save_file", "write_text", "fsync")
              and not (ops[i]["kind"] == "fsync" and ops[i]["path"] == ".")]  # the directory: see below
    assert len(writes) == 11
    for i in writes:
        out = runs.base_dir / f"full-{i}"
        error = OSError(errno.ENOSPC, "No space left on device", str(out / "checkpoints" / ops[i]["path"]))
        with Injector(out / "checkpoints", kill_at=i, error=error).installed():
            with pytest.raises(CheckpointWriteError) as info:
                runs.train(out.name)
        message = str(info.value)
        assert "disk full (no space left on device)" in message and "step-0000006" in message, message
        assert f"the previous checkpoint {out / 'checkpoints' / 'step-0000003'} is intact" in message
        assert "resume=auto" in message and info.value.exit_code == 74
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003"]  # nothing partial
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the previous checkpoint reads cleanly
            result, model = runs.train(out.name, resume="auto")
        assert losses(result) == losses(reference), ops[i]
        assert all(torch.equal(v, trainable(model)[n]) for n, v in trainable(ref_model).items())
    print(f"disk full: {len(writes)} failing writes injected, {len(writes)} runs resumed")
    # syncing checkpoints/ after the rename fails: the checkpoint is complete, so a warning, and training goes on
    [last] = [i for i, op in enumerate(ops) if op["kind"] == "fsync" and op["path"] == "." and i > start]
    out = runs.base_dir / "dir-sync"
    with Injector(out / "checkpoints", kill_at=last, error=OSError(errno.EIO, "Input/output error")).installed():
        with pytest.warns(UserWarning, match="step-0000006 is complete but .* could not be synced"):
            result, _ = runs.train(out.name)
    assert losses(result) == losses(reference) and find_resume("auto", out / "checkpoints")[0].name == "step-0000006"
    tally("failing writes", faults=len(writes) + 1, resumed=len(writes))  # + the failed directory sync


@pytest.mark.parametrize(("err", "text"), [(errno.EDQUOT, "disk full"), (errno.EROFS, "Read-only file system")])
def test_other_write_errors_name_the_cause_and_the_first_save_says_no_earlier(runs, err, text, tally):
    out = runs.base_dir / "run"
    error = OSError(err, text if err == errno.EROFS else "Disk quota exceeded", str(out / "x"))
    with Injector(out / "checkpoints", kill_at=2, error=error).installed():
        with pytest.raises(CheckpointWriteError, match=f"{text}.*there is no earlier checkpoint"):
            runs.train("run")
    assert not list((out / "checkpoints").iterdir())
    tally("failing writes", faults=1)


def test_cli_reports_disk_full_with_exit_code_74(runs, capsys, tally):
    cfg = runs.config("cli", eval__before=False, eval__generate_samples=0)
    path = runs.base_dir / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    ckpts = runs.base_dir / "cli" / "checkpoints"
    error = OSError(errno.ENOSPC, "No space left on device", str(ckpts / "x"))
    with Injector(ckpts, kill_at=15, error=error).installed():  # inside the second save
        code = cli.main(["train", str(path)])
    err = capsys.readouterr().err
    assert code == 74 and "error: could not save checkpoint" in err and "disk full" in err, err
    assert "Traceback" not in err and [p.name for p in ckpts.iterdir()] == ["step-0000003"]
    assert not (runs.base_dir / "cli" / "metrics.json").exists()
    tally("failing writes", faults=1)
