"""Runs outlive the code that wrote them: config.yaml and metrics.json carry `tuneforge_version` and a run
format number; a run written by a newer format is refused in one line; an old run whose config still has a
removed key loads with one warning line naming the key and what replaced it; a chained run's local `model:`
path is saved absolute (and an older run's relative one is found from the run directory), so the run loads
from any working directory."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import yaml

from tuneforge import __version__
from tuneforge.cli import main
from tuneforge.config.load import RETIRED_KEYS, RUN_FORMAT, dump_config, load_config, run_header
from tuneforge.errors import ConfigError
from tuneforge.report.write import write_report
from tuneforge.runs import run_config


def test_config_and_metrics_carry_the_run_header(make_config, tmp_path):
    assert run_header() == {"tuneforge_version": __version__, "run_format": RUN_FORMAT}
    cfg = make_config()
    text = dump_config(cfg)
    saved = yaml.safe_load(text)
    assert list(saved)[:2] == ["tuneforge_version", "run_format"] and saved["run_format"] == RUN_FORMAT
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(path) == cfg  # the header is read, not a config key
    out = tmp_path / "run"
    out.mkdir()
    given = {"model": cfg.model, "stage": "sft", "method": "lora", "eval_after": {"loss": 1.0}, "train": {}}
    write_report(out, given, [], [], [], text)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tuneforge_version"] == __version__ and metrics["run_format"] == RUN_FORMAT
    assert metrics["eval_after"] == {"loss": 1.0}


def test_a_run_of_a_newer_format_is_refused_in_one_line(make_config, tmp_path, capsys):
    saved = yaml.safe_load(dump_config(make_config()))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**saved, "tuneforge_version": "9.0.0", "run_format": RUN_FORMAT + 1}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "9.0.0" in message
    assert f"run format {RUN_FORMAT + 1}" in message and "upgrade tuneforge" in message
    path.write_text(yaml.safe_dump({**saved, "run_format": "one"}))
    with pytest.raises(ConfigError, match="key 'run_format': expected a positive integer"):
        load_config(path)


def test_an_old_run_with_a_removed_key_loads_with_one_warning_line(make_config, tmp_path, capsys):
    raw = make_config().model_dump(mode="json")  # written before run formats: no header
    raw["training"]["packing"] = True
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    line = (run / "config.yaml").read_text().splitlines().index("  packing: true") + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = run_config(run)
    assert cfg.training.pack_length == 512
    (warning,) = [str(w.message) for w in caught if "packing" in str(w.message)]
    assert warning.startswith(f"{run / 'config.yaml'}:{line}: key 'training.packing' was removed")
    assert "training.pack_length" in warning and "\n" not in warning
    assert "training.packing" in RETIRED_KEYS
    # through the command line: the warning, then the config is valid (no validation dump, exit 0)
    with pytest.warns(UserWarning, match="key 'training.packing' was removed"):
        code = main(["validate", str(run / "config.yaml"), "data.eval=null"])
    assert code == 0 and "valid" in capsys.readouterr().out


def test_a_chained_model_path_loads_from_any_working_directory(make_config, tiny_model_dir, tmp_path, monkeypatch):
    """`model: ./base` given relative to where the user trained; the run's config loads from elsewhere."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, project / "base")
    elsewhere.mkdir()
    monkeypatch.chdir(project)
    user = project / "chain.yaml"
    user.write_text(yaml.safe_dump({**make_config().model_dump(mode="json"), "model": "./base",
                                    "output_dir": "runs/chained"}))
    cfg = load_config(user)
    assert cfg.model == str(project / "base")  # absolute from the moment it is loaded
    run = project / "runs" / "chained"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == str(project / "base")

    monkeypatch.chdir(elsewhere)
    loaded = run_config(run)
    assert loaded.model == str(project / "base") and (os.path.isdir(loaded.model))
    from tuneforge.models import resolve_model

    assert resolve_model(loaded.model) == str(project / "base")


def test_an_older_runs_relative_model_path_is_found_from_the_run_directory(make_config, tiny_model_dir, tmp_path,
                                                                           monkeypatch):
    """Runs saved before this release kept `model:` as typed (relative to where training started)."""
    project = tmp_path / "project"
    shutil.copytree(tiny_model_dir, project / "models" / "base")
    run = project / "runs" / "old"
    run.mkdir(parents=True)
    raw = {**make_config().model_dump(mode="json"), "model": "models/base"}  # no run header: an older run
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert run_config(run).model == str(project / "models" / "base")
    alias = {**raw, "model": "smollm2-135m-instruct"}  # an alias or hub id is never turned into a path
    (run / "config.yaml").write_text(yaml.safe_dump(alias))
    assert run_config(run).model == "smollm2-135m-instruct"
