"""Shared fixtures: the session's LoRA run on the tiny model (with a system prompt), its engine, and a uvicorn server
in a thread on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@pytest.fixture(scope="session")
def served_run(sft_run):
    """The session's shared LoRA run (tests/conftest.py: sft_run, trained with a system prompt); read-only."""
    return sft_run


@pytest.fixture(scope="session")
def engine(served_run):
    from tuneforge.inference.engine import load_engine

    return load_engine(served_run, max_new_tokens=24, max_input_tokens=64)


@contextmanager
def serve(engine, **kwargs) -> Iterator[tuple[str, object]]:
    """(base_url, app) of a uvicorn server in a thread, stopped (lifespan and worker included) on exit."""
    import uvicorn

    from tuneforge.inference.server import create_app

    app = create_app(engine, **kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def server(engine):
    with serve(engine) as (url, app):
        yield url, app


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0], api_key="unused", max_retries=0, timeout=60)
