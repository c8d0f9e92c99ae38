"""The CLI contract: exit 0 on success, 2 on user errors with a message naming file/line/key and no
traceback (unless --debug), and nothing written to output_dir when the input is bad.

Most commands run in this process through `cli.main` (the `run_cli` fixture): the exit code is what the
console script exits with. `python -m tuneforge` itself runs as a real process for --help and for one
`train` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tiny
from tuneforge.errors import ConfigError, ModelError


def _run(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tuneforge", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def _config(tmp_path, make_config, **overrides) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_config(**overrides).model_dump(mode="json")))
    return path


def test_help():
    result = _run("--help")
    assert result.returncode == 0 and "train" in result.stdout and "validate" in result.stdout


def test_unknown_key_exit_2_without_traceback(tmp_path, make_config, run_cli, capsys):
    path = _config(tmp_path, make_config)
    path.write_text(path.read_text() + "lerning_rate: 3\n")
    assert run_cli(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'lerning_rate'" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="unknown key 'lerning_rate'"):  # --debug: it propagates (a traceback)
        run_cli(["train", str(path), "--debug"])


def test_malformed_data_exit_2_and_output_dir_untouched(tmp_path, make_config, run_cli, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "yes"}\n{"prompt": "hi"\n')
    path = _config(tmp_path, make_config, data__train=str(bad))
    assert run_cli(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: malformed JSON" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_model_dir(tmp_path, make_config, run_cli, capsys):
    path = _config(tmp_path, make_config, model=str(tmp_path / "nope"))
    assert run_cli(["train", str(path)]) == 2
    assert "no such run or model directory" in capsys.readouterr().err
    with pytest.raises(ModelError, match="no such run or model directory"):
        run_cli(["train", str(path), "--debug"])


def test_non_empty_output_dir_is_refused(tmp_path, make_config, run_cli, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    assert run_cli(["train", str(_config(tmp_path, make_config))]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["precious.txt"]


def test_validate_and_train_with_overrides(tmp_path, make_config, run_cli, capsys):
    path = _config(tmp_path, make_config)
    assert run_cli(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "train: 42 examples" in out
    # `tuneforge train` end to end as a real process: the entry point, a fresh interpreter's imports, exit 0
    result = _run("train", str(path), "training.max_steps=3", f"output_dir={tmp_path / 'o'}")
    assert result.returncode == 0, result.stderr
    assert f"done: {tmp_path / 'o'}" in result.stdout
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert saved["training"]["max_steps"] == 3  # the resolved config, overrides applied


def test_empty_data_file(tmp_path, make_config, run_cli, capsys):
    empty = tiny.write_jsonl(tmp_path / "empty.jsonl", [])
    assert run_cli(["validate", str(_config(tmp_path, make_config, data__train=str(empty)))]) == 2
    assert "empty" in capsys.readouterr().err


def test_plan_through_the_cli(run_cli, capsys):
    assert run_cli(["plan", "model=llama-2-7b", "method.name=lora", "--json"]) == 0
    out = capsys.readouterr().out
    assert "4,194,304" in out or "4194304" in out
    assert run_cli(["plan", "model=gpt-17"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'gpt-17'" in err and "Traceback" not in err


def test_train_reports_every_unusable_record_at_once(tmp_path, tiny_model_dir, run_cli, capsys):
    """The stages run `tuneforge data check`'s validation first: all defects in one message, nothing written."""
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n'
                    '{"instruction": "hi"\n'
                    '{"messages": [{"role": "robot", "content": "x"}]}\n'
                    '{"prompt": "a", "completion": ""}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\nstage: sft\ndata: {{train: {data}}}\noutput_dir: {tmp_path / 'out'}\n")
    assert run_cli(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "3 unusable records" in err and "bad.jsonl:2" in err and "bad.jsonl:3" in err and "bad.jsonl:4" in err
    assert not (tmp_path / "out").exists()
