"""The CLI contract: exit 0 on success, 2 on user errors with a message naming file/line/key and no
traceback (unless --debug), and nothing written to output_dir when the input is bad."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

import tiny


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


def test_unknown_key_exit_2_without_traceback(tmp_path, make_config):
    path = _config(tmp_path, make_config)
    path.write_text(path.read_text() + "lerning_rate: 3\n")
    result = _run("train", str(path))
    assert result.returncode == 2
    assert "unknown key 'lerning_rate'" in result.stderr and "Traceback" not in result.stderr
    debug = _run("train", str(path), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_malformed_data_exit_2_and_output_dir_untouched(tmp_path, make_config):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "yes"}\n{"prompt": "hi"\n')
    path = _config(tmp_path, make_config, data__train=str(bad))
    result = _run("train", str(path))
    assert result.returncode == 2, result.stderr
    assert f"{bad}:2: malformed JSON" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_model_dir(tmp_path, make_config):
    path = _config(tmp_path, make_config, model=str(tmp_path / "nope"))
    result = _run("train", str(path))
    assert result.returncode == 2 and "no such run or model directory" in result.stderr


def test_non_empty_output_dir_is_refused(tmp_path, make_config):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    result = _run("train", str(_config(tmp_path, make_config)))
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["precious.txt"]


def test_validate_and_train_with_overrides(tmp_path, make_config):
    path = _config(tmp_path, make_config)
    result = _run("validate", str(path))
    assert result.returncode == 0 and "valid" in result.stdout and "train: 42 examples" in result.stdout
    result = _run("train", str(path), "training.max_steps=3", f"output_dir={tmp_path / 'o'}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert saved["training"]["max_steps"] == 3  # the resolved config, overrides applied


def test_empty_data_file(tmp_path, make_config):
    empty = tiny.write_jsonl(tmp_path / "empty.jsonl", [])
    result = _run("validate", str(_config(tmp_path, make_config, data__train=str(empty))))
    assert result.returncode == 2 and "empty" in result.stderr


def test_plan_through_the_cli():
    result = _run("plan", "model=llama-2-7b", "method.name=lora", "--json")
    assert result.returncode == 0, result.stderr
    assert "4,194,304" in result.stdout or "4194304" in result.stdout
    bad = _run("plan", "model=gpt-17")
    assert bad.returncode == 2 and "unknown model 'gpt-17'" in bad.stderr and "Traceback" not in bad.stderr


def test_train_reports_every_unusable_record_at_once(tmp_path, tiny_model_dir, capsys):
    """The stages run `tuneforge data check`'s validation first: all defects in one message, nothing written."""
    from tuneforge.cli import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n'
                    '{"instruction": "hi"\n'
                    '{"messages": [{"role": "robot", "content": "x"}]}\n'
                    '{"prompt": "a", "completion": ""}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\nstage: sft\ndata: {{train: {data}}}\noutput_dir: {tmp_path / 'out'}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "3 unusable records" in err and "bad.jsonl:2" in err and "bad.jsonl:3" in err and "bad.jsonl:4" in err
    assert not (tmp_path / "out").exists()
