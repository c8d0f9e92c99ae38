"""A run or model directory that does not exist is one clear line and exit 2 in every command that takes one
(issue 21, item 6): "no such run or model directory", not a hub error. A bare name that is neither an alias,
a directory nor in the offline hub cache says what was tried."""

from __future__ import annotations

import pytest

from tuneforge import cli
from tuneforge.errors import ModelError
from tuneforge.models import resolve_model

COMMANDS = {
    "serve": ["serve", "{}"],
    "chat": ["chat", "{}"],
    "merge": ["merge", "{}"],
    "export": ["export", "{}"],
    "predict": ["predict", "{}", "--input", "{data}"],
    "eval": ["eval", "{}", "--data", "{data}"],
}


@pytest.fixture(autouse=True)
def _in_process(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)  # leave global warning state alone
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("where", ["no/such/dir", "absolute"])
def test_a_missing_run_or_model_directory_is_exit_2_in_one_line(command, where, tmp_path, capsys):
    target = str(tmp_path / "no" / "such" / "dir") if where == "absolute" else where
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "hello", "label": "pos"}\n')
    argv = [a.format(target, data=data) for a in COMMANDS[command]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"'{target}': no such run or model directory" in err, err
    assert "huggingface" not in err.lower() and "Traceback" not in err and len(err.strip().splitlines()) <= 2


@pytest.mark.parametrize("name", ["nosuchmodel", "no-owner/no-such-model"])
def test_a_bare_name_offline_says_what_was_tried(name, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not an embedded alias .*minilm-l6.*no directory of that name here.*"
                                         "not in the Hugging Face cache"):
        resolve_model(name)
    assert cli.main(["serve", name]) == 2
    assert "not in the Hugging Face cache" in capsys.readouterr().err
