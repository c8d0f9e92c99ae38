"""Resume guards: a checkpoint records the model and data fingerprints, the seed, the learning rate and its
schedule. Resuming with any of them changed is a ConfigError naming the change (old -> new) and the override
key; listed in resume_allow_changes, the change is allowed, logged and kept in output_dir/resume_log.jsonl (a
changed learning rate takes over the schedule, a changed schedule takes over the rate). A moved copy of the
same model or data is no change; a checkpoint saved before fingerprints resumes with a warning."""

import json
import shutil

import pytest
import torch
import yaml
from fault_tools import Runs, losses, one_thread, trainable

from tiny import build_model, toy_sft_rows, write_jsonl
from tuneforge import cli
from tuneforge.errors import ConfigError
from tuneforge.train.checkpoint import MARKER, list_checkpoints


@pytest.fixture
def runs(make_config, tmp_path):
    with one_thread():
        r = Runs(make_config, tmp_path, training__max_steps=6, training__save_steps=3)
        r.reference = r.train("reference")
        yield r


def _interrupted(runs, name: str):
    """A copy of the reference run whose newest checkpoint is step 3 (as if stopped there)."""
    out = runs.base_dir / name
    shutil.copytree(runs.base_dir / "reference", out)
    shutil.rmtree(list_checkpoints(out / "checkpoints")[-1])
    return out


def _changed(runs, key: str) -> dict:
    """Config overrides that change `key` and the old -> new text the refusal must show."""
    if key == "learning_rate":
        return {"training__learning_rate": 0.01}
    if key == "seed":
        return {"seed": 7}
    if key == "lr_scheduler":
        return {"training__lr_scheduler": "linear"}
    if key == "data":
        rows = toy_sft_rows(42) + [{"prompt": "what color is the sky ?", "completion": "the sky is blue ."}]
        return {"data__train": str(write_jsonl(runs.base_dir / "other.jsonl", rows))}
    model_dir = runs.base_dir / "other-model"  # same shapes and tokenizer, other weights
    shutil.copytree(runs.config("x").model, model_dir)
    build_model(model_dir, vocab_size=runs.base.get_input_embeddings().weight.shape[0], seed=1)
    return {"model": str(model_dir)}


@pytest.mark.parametrize("key", ["model", "data", "seed", "learning_rate", "lr_scheduler"])
def test_a_changed_run_is_refused_unless_allowed(runs, key, tally):
    out = _interrupted(runs, f"changed-{key}")
    change = _changed(runs, key)
    with pytest.raises(ConfigError) as info:
        runs.train(out.name, resume="auto", **change)
    message = str(info.value)
    assert f"{key} changed: " in message and f"resume_allow_changes=[{key}]" in message, message
    assert "step-0000003" in message and not (out / "resume_log.jsonl").exists()
    logged = []
    result, model = runs.train(out.name, resume="auto", resume_allow_changes=[key], log=logged.append, **change)
    assert result.resumed_from.endswith("step-0000003") and result.steps == 6
    assert [c["key"] for c in result.resume_changes] == [key]
    assert any(line.startswith(f"resume: {key} changed since step-0000003: ") and "allowed by resume_allow_changes"
               in line for line in logged), logged
    [record] = [json.loads(x) for x in (out / "resume_log.jsonl").read_text().splitlines()]
    assert record["changes"] == result.resume_changes and record["guards_checked"] and record["step"] == 3
    assert all(torch.isfinite(torch.tensor(losses(result))))
    if key == "learning_rate":  # the new rate takes over the same schedule from step 4 on
        ref = runs.reference[0].history
        assert [h["lr"] for h in result.history[3:]] == pytest.approx([h["lr"] * 0.01 / 3e-2 for h in ref[3:]])
    if key == "lr_scheduler":  # the linear decay takes over from step 4 on: a fresh linear run's rates there
        linear, _ = runs.train("linear", **change)
        assert [h["lr"] for h in result.history[3:]] == pytest.approx([h["lr"] for h in linear.history[3:]])
        assert result.history[-1]["lr"] < result.history[3]["lr"] < 3e-2
    tally("resume guards", resumed=1)


def test_an_unchanged_run_and_a_moved_copy_resume_exactly(runs, tally):
    out = _interrupted(runs, "same")
    model_copy, data_copy = runs.base_dir / "model-copy", runs.base_dir / "data-copy.jsonl"
    shutil.copytree(runs.config("x").model, model_copy)
    shutil.copy(runs.config("x").data.train, data_copy)
    result, model = runs.train(out.name, resume="auto", model=str(model_copy), data__train=str(data_copy))
    assert result.resume_changes == [] and losses(result) == losses(runs.reference[0])
    assert all(torch.equal(v, trainable(model)[n]) for n, v in trainable(runs.reference[1]).items())
    [record] = [json.loads(x) for x in (out / "resume_log.jsonl").read_text().splitlines()]
    assert record["changes"] == [] and record["guards_checked"]
    tally("resume guards", resumed=1)


def test_every_refused_change_is_named_and_one_allowance_is_not_enough(runs):
    out = _interrupted(runs, "several")
    change = {**_changed(runs, "seed"), **_changed(runs, "learning_rate")}
    with pytest.raises(ConfigError, match=r"seed changed: 0 -> 7; learning_rate changed: 0.03 -> 0.01.*"
                                          r"resume_allow_changes=\[seed,learning_rate\]"):
        runs.train(out.name, resume="auto", **change)
    with pytest.raises(ConfigError, match=r"learning_rate changed.*resume_allow_changes=\[learning_rate\]") as info:
        runs.train(out.name, resume="auto", resume_allow_changes=["seed"], **change)
    assert "seed changed" not in str(info.value)


def test_a_checkpoint_without_fingerprints_resumes_with_a_warning(runs, tally):
    out = _interrupted(runs, "old")
    ckpt = list_checkpoints(out / "checkpoints")[-1]
    state = json.loads((ckpt / "state.json").read_text())
    del state["guards"]
    (ckpt / "state.json").write_text(json.dumps(state))
    (ckpt / MARKER).write_text("ok\n")  # the marker such a checkpoint has
    with pytest.warns(UserWarning, match="records no model/data fingerprints"):
        result, _ = runs.train(out.name, resume="auto", seed=7)  # a change nobody can see
    assert result.resumed_from == str(ckpt)
    assert json.loads((out / "resume_log.jsonl").read_text())["guards_checked"] is False
    tally("resume guards", resumed=1)


def test_cli_refuses_with_exit_2_and_allows_with_the_override(runs, capfd, tally):
    cfg = runs.config("cli", eval__before=False, eval__generate_samples=0)
    path = runs.base_dir / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert cli.main(["train", str(path), "training.max_steps=3"]) == 0
    capfd.readouterr()
    assert cli.main(["train", str(path), "resume=auto", "training.learning_rate=0.01"]) == 2
    err = capfd.readouterr().err
    assert "learning_rate changed: 0.03 -> 0.01" in err and "resume_allow_changes=[learning_rate]" in err
    assert "Traceback" not in err
    code = cli.main(["train", str(path), "resume=auto", "training.learning_rate=0.01",
                     "resume_allow_changes=[learning_rate]"])
    out = capfd.readouterr().out
    assert code == 0 and "resume: learning_rate changed since step-0000003: 0.03 -> 0.01" in out
    metrics = json.loads((runs.base_dir / "cli" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6 and metrics["train"]["resumed_from"].endswith("step-0000003")
    tally("resume guards", resumed=1)


def test_a_refused_resume_leaves_the_runs_config_as_it_was(make_config):
    """Through the stage: the guarded keys are compared before output_dir/config.yaml is rewritten."""
    from tuneforge.stages import STAGES

    cfg = make_config(training__max_steps=2, training__save_steps=2, eval__before=False, eval__generate_samples=0)
    with one_thread():
        out = STAGES["sft"](cfg)
    before = (out / "config.yaml").read_bytes()
    again = cfg.model_copy(update={"resume": "auto", "seed": 7})
    with pytest.raises(ConfigError,
                       match=r"checkpoint .*step-0000002 was saved by a different run \(seed changed: 0 -> 7\)"):
        STAGES["sft"](again)
    assert (out / "config.yaml").read_bytes() == before


def test_a_run_saved_before_a_default_schedule_changed_is_not_switched_on_resume(make_config):
    """A run whose config.yaml holds the schedule it trained with (cosine after warmup, the schema's) resumed with
    a config that names no schedule, which now resolves to the method's default (LoRA on sft: constant, no
    warmup), is refused naming both, rather than switched mid-run; naming the old schedule resumes it."""
    from tuneforge.stages import STAGES

    cfg = make_config(training__max_steps=4, training__save_steps=2, training__lr_scheduler="cosine",
                      training__warmup_ratio=0.25, eval__before=False, eval__generate_samples=0)
    with one_thread():
        out = STAGES["sft"](cfg)
    shutil.rmtree(list_checkpoints(out / "checkpoints")[-1])
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    for key in ("lr_scheduler", "warmup_ratio"):
        del raw["training"][key]  # the original YAML of a run that relied on the old default
    open_ended = type(cfg).model_validate({**raw, "resume": "auto"})
    with pytest.raises(ConfigError, match=r"lr_scheduler changed: 'cosine, warmup_ratio 0.25' -> 'constant, "
                                          r"warmup_ratio 0'.*resume_allow_changes=\[lr_scheduler\]"):
        STAGES["sft"](open_ended)
    named = type(cfg).model_validate({**raw, "resume": "auto",
                                      "training": {**raw["training"], "lr_scheduler": "cosine", "warmup_ratio": 0.25}})
    with one_thread():
        STAGES["sft"](named)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"].endswith("step-0000002") and metrics["train"]["steps"] == 4


def test_the_data_guard_is_the_files_sha256_and_is_not_read_again_while_unchanged(make_config, tmp_path,
                                                                                    monkeypatch):
    """One training file's guard is its bytes' sha256, the value checkpoints saved before the memo hold (so they
    still resume), served from the data cache's stat memo on later starts: a 4 GB corpus is not read again."""
    import hashlib

    from tuneforge.data import cache_keys
    from tuneforge.train.guards import run_guards

    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_keys, "RACY_S", 0.0)
    cfg = make_config(output_dir=str(tmp_path / "out"))
    data = cfg.data.train
    first = run_guards(cfg)
    assert first["data"]["sha256"] == hashlib.sha256(open(data, "rb").read()).hexdigest()
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    assert run_guards(cfg) == first and str(data) not in opened
