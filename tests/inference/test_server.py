"""The OpenAI-compatible server, driven by the real `openai` client against uvicorn on a free port: what it
answers is what the engine answers, streamed or not; keys, bad requests, bounds and a full queue get
OpenAI-shaped 4xx errors; concurrent requests are queued and all answered."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import serve
from tuneforge.inference.engine import Params

QUESTIONS = ["what color is the sky ?", "what is the capital of france ?", "hi", "what color is the snow ?",
             "say yes", "what is the capital of italy ?"]


def _chat(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def _expected_chat(engine, q: str, n: int = 10):
    return engine.generate(engine.chat_prompt_ids(_chat(q)), Params(n))


def test_models_list(client, engine):
    assert [m.id for m in client.models.list().data] == [engine.name]


def test_chat_completion_is_the_engine_answer_with_usage(client, engine):
    want = _expected_chat(engine, QUESTIONS[0])
    got = client.chat.completions.create(model=engine.name, messages=_chat(QUESTIONS[0]), max_tokens=10)
    assert got.choices[0].message.content == want.text and got.choices[0].message.role == "assistant"
    assert got.choices[0].finish_reason == want.finish_reason
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert got.usage.total_tokens == want.prompt_tokens + want.completion_tokens
    # the run's saved system prompt is part of the prompt the client did not send
    assert got.usage.prompt_tokens == len(engine.chat_prompt_ids([{"role": "system", "content": engine.system_prompt},
                                                                  *_chat(QUESTIONS[0])]))
    # and a client's own system prompt replaces it
    own = [{"role": "system", "content": "say yes ."}, *_chat(QUESTIONS[0])]
    got = client.chat.completions.create(model=engine.name, messages=own, max_tokens=10)
    assert got.choices[0].message.content == engine.generate(engine.chat_prompt_ids(own), Params(10)).text


def test_completion(client, engine):
    want = engine.generate(engine.text_prompt_ids("the capital of spain is"), Params(8))
    got = client.completions.create(model=engine.name, prompt="the capital of spain is", max_tokens=8)
    assert got.choices[0].text == want.text and got.choices[0].finish_reason == want.finish_reason
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)


def test_streaming_chunks_join_to_the_non_streamed_text(client, engine):
    plain = client.chat.completions.create(model=engine.name, messages=_chat(QUESTIONS[1]), max_tokens=16)
    chunks = list(client.chat.completions.create(model=engine.name, messages=_chat(QUESTIONS[1]), max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1 and "".join(deltas) == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1

    plain = client.completions.create(model=engine.name, prompt="the sky is", max_tokens=12)
    chunks = list(client.completions.create(model=engine.name, prompt="the sky is", max_tokens=12, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_sse_stream_ends_with_done(server, engine):
    body = {"model": engine.name, "messages": _chat("hi"), "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server[0]}/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"model": "gpt-4"}, openai.NotFoundError, "does not exist"),
    ({"max_tokens": 25}, openai.BadRequestError, "max_tokens must be between 1 and 24"),
    ({"messages": _chat("the " * 80)}, openai.BadRequestError, "at most 64"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, "role"),
    ({"messages": []}, openai.BadRequestError, "messages"),
    ({"temperature": 5}, openai.BadRequestError, "temperature"),
    ({"n": 2}, openai.BadRequestError, "n"),
    ({"stop": ["."]}, openai.BadRequestError, "'stop' is not supported"),
])
def test_bad_requests_get_openai_errors(client, engine, kwargs, error, match):
    args = {"model": engine.name, "messages": _chat("hi"), "max_tokens": 4, **kwargs}
    with pytest.raises(error, match=match) as exc:
        client.chat.completions.create(**args)
    assert 400 <= exc.value.status_code < 500
    assert set(exc.value.body) >= {"message", "type", "param", "code"}  # openai unwraps {"error": {...}}


def test_malformed_bodies_and_paths(server):
    url = server[0]
    for r, status in ((httpx.post(f"{url}/chat/completions", content=b"{nope",
                                  headers={"content-type": "application/json"}), 400),
                      (httpx.post(f"{url}/completions", content=b'{"prompt": "x"}'), 400),  # no content type
                      (httpx.post(f"{url}/completions", json={"model": "m"}), 400),
                      (httpx.post(f"{url}/completions", json={"model": "m", "prompt": "x" * (5 << 20)}), 413),
                      (httpx.post(f"{url}/completions", content=iter([b"{}"]),  # chunked, no length
                                  headers={"content-type": "application/json"}), 411),
                      (httpx.get(f"{url}/nothing"), 404)):
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_api_key(engine):
    with serve(engine, api_key="s3cret-key") as (url, _):
        good = openai.OpenAI(base_url=url, api_key="s3cret-key", max_retries=0)
        assert [m.id for m in good.models.list().data] == [engine.name]
        for key in ("wrong", "s3cret-key-and-more", "s3cret-ke"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key=key, max_retries=0).chat.completions.create(
                    model=engine.name, messages=_chat("hi"), max_tokens=2)
        r = httpx.post(f"{url}/chat/completions", json={})  # no key: refused before the body is validated
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "s3cret" not in r.text


def test_concurrent_requests_are_queued_and_all_answered(client, engine):
    want = {q: _expected_chat(engine, q).text for q in QUESTIONS}

    def ask(q: str) -> tuple[str, str]:
        r = client.chat.completions.create(model=engine.name, messages=_chat(q), max_tokens=10)
        return q, r.choices[0].message.content

    with ThreadPoolExecutor(len(QUESTIONS) * 2) as pool:
        got = list(pool.map(ask, QUESTIONS * 2))
    assert got == [(q, want[q]) for q in QUESTIONS * 2]


def test_full_queue_answers_429_and_recovers(engine):
    with serve(engine, max_queue=1) as (url, app):
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        worker = app.state.worker
        results: dict[str, str] = {}

        def ask(q: str) -> None:
            r = client.chat.completions.create(model=engine.name, messages=_chat(q), max_tokens=10)
            results[q] = r.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS[:2]]
        with engine.lock:  # hold the model: the first request runs (blocked), the second waits in the queue
            threads[0].start()
            _wait(lambda: worker.running is not None)
            threads[1].start()
            _wait(lambda: worker.jobs.qsize() == 1)
            with pytest.raises(openai.RateLimitError) as exc:
                client.chat.completions.create(model=engine.name, messages=_chat("hi"), max_tokens=2)
            assert exc.value.body["code"] == "queue_full" and exc.value.response.headers["retry-after"] == "1"
        for t in threads:
            t.join(60)
        assert results == {q: _expected_chat(engine, q).text for q in QUESTIONS[:2]}
        assert client.chat.completions.create(model=engine.name, messages=_chat("hi"), max_tokens=2).choices


def _wait(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_client_that_leaves_cancels_its_generation(engine, monkeypatch):
    """When a client disconnects, Starlette closes the response's generator; its `finally` cancels the job, and
    the worker never starts (or stops) a cancelled generation. Closing the generator ourselves makes this
    deterministic (an end-to-end disconnect through uvicorn timed out once in a loaded full-suite run)."""
    import asyncio

    from tuneforge.inference.server import Job, Worker, _stream

    calls = []
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(a))

    async def leave_after_first_chunk() -> tuple[Job, str]:
        job = Job([1, 2, 3], Params(8, 0.0, 1.0, None), asyncio.get_running_loop())
        stream = _stream(job, "id", engine.name, True, False)
        first = await stream.__anext__()  # the role chunk, sent before any token
        await stream.aclose()  # what Starlette does when the client goes
        return job, first

    job, first = asyncio.run(leave_after_first_chunk())
    assert first.startswith("data: ") and job.cancel.is_set()
    worker = Worker(engine, 4)
    worker.thread.start()
    worker.submit(job)
    _wait(lambda: worker.jobs.empty() and worker.running is None)
    worker.stop()
    assert calls == []  # the cancelled job was skipped, not generated
