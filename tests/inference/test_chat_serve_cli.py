"""`tuneforge chat` with piped stdin (history, /reset, /exit, EOF) and `tuneforge serve` as a process: a
non-loopback bind without a key is refused (exit 2), and a keyed server answers without logging its key."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time

import openai

from tuneforge.inference.chat import run_chat
from tuneforge.inference.engine import Params
from tuneforge.inference.server import check_bind, is_loopback

Q1, Q2 = "what color is the sky ?", "what is the capital of france ?"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNEFORGE_API_KEY"}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _answer(engine, messages: list[dict], n: int = 8) -> str:
    return engine.generate(engine.chat_prompt_ids(messages), Params(n)).text


def test_chat_cli_keeps_history_resets_and_exits(served_run, engine):
    a1 = _answer(engine, [{"role": "user", "content": Q1}])
    a2 = _answer(engine, [{"role": "user", "content": Q1}, {"role": "assistant", "content": a1},
                          {"role": "user", "content": Q2}])
    a3 = _answer(engine, [{"role": "user", "content": Q2}])
    stdin = f"{Q1}\n{Q2}\n/reset\n\n{Q2}\n/exit\n{Q1}\n"
    r = subprocess.run([sys.executable, "-m", "tuneforge", "chat", str(served_run), "--max-tokens", "8"],
                       input=stdin, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{a1}\n{a2}\n{a3}\n"  # nothing after /exit
    assert a2 != a3  # the same question with and without history differs, so the history was sent
    assert "(conversation cleared)" in r.stderr


def test_chat_ends_at_eof_and_survives_a_too_long_turn(engine):
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO(f"/frobnicate\n{'the ' * 80}\n{Q1}")  # no final newline, then EOF (Ctrl-D)
    assert run_chat(engine, Params(6), stdin, out, err) == 0
    assert out.getvalue() == _answer(engine, [{"role": "user", "content": Q1}], 6) + "\n"  # the long turn is dropped
    assert "unknown command /frobnicate" in err.getvalue() and "at most 64" in err.getvalue()


def test_bind_rules(capsys, monkeypatch):
    from tuneforge.cli import main

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.com"]))
    check_bind("0.0.0.0", "key")  # a key makes any address acceptable
    monkeypatch.delenv("TUNEFORGE_API_KEY", raising=False)
    for host in ("0.0.0.0", "10.1.2.3", "example.com"):  # refused before any model loads (there is none here)
        assert main(["serve", "no/such/run", "--host", host]) == 2
        assert "needs an API key" in capsys.readouterr().err
    monkeypatch.setenv("TUNEFORGE_API_KEY", "k")  # with a key, the next problem is the missing run
    assert main(["serve", "no/such/run", "--host", "0.0.0.0"]) == 2
    assert "needs an API key" not in capsys.readouterr().err


def test_serve_cli_answers_with_a_key_it_never_prints(served_run, engine):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    key = "tf-test-key-3141592653"
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", str(served_run), "--port", str(port),
                             "--model-name", "tuned", "--max-tokens", "16"], env=_env(TUNEFORGE_API_KEY=key),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)
        deadline = time.monotonic() + 240
        while True:
            try:
                assert [m.id for m in client.models.list().data] == ["tuned"]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.5)
        r = client.chat.completions.create(model="tuned", messages=[{"role": "user", "content": Q1}], max_tokens=8)
        assert r.choices[0].message.content == _answer(engine, [{"role": "user", "content": Q1}])
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status still says SIGTERM
    assert proc.returncode == -signal.SIGTERM and "Application shutdown complete" in err
    assert "API key required" in out
    assert key not in out + err and "POST /v1/chat/completions" in out  # uvicorn's access log (stdout)
