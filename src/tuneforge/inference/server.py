"""An OpenAI-compatible HTTP API on FastAPI + uvicorn: GET /v1/models, POST /v1/chat/completions and
/v1/completions, streamed by server-sent events. One generation at a time: requests wait in a bounded
queue served by one worker thread (a full queue answers 429). Optional bearer key, compared in constant time.

    tuneforge serve runs/quickstart --port 8000        # then: OpenAI(base_url="http://127.0.0.1:8000/v1")
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tuneforge.errors import ConfigError
from tuneforge.inference import protocol as p
from tuneforge.inference.engine import Engine, Params, RequestError, Result

log = logging.getLogger("tuneforge.serve")
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass
class Job:
    prompt_ids: list[int]
    params: Params
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("text", str) | ("done", Result) | ("error", str)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self.cancel.set()


class Worker:
    """One thread runs the jobs in arrival order; `max_queue` jobs may wait behind the running one."""

    def __init__(self, engine: Engine, max_queue: int) -> None:
        self.engine = engine
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.stopping = threading.Event()
        self.running: Job | None = None
        self.thread = threading.Thread(target=self._loop, name="tuneforge-generate", daemon=True)

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise RequestError(f"the server is busy ({self.jobs.maxsize} requests already waiting); retry later",
                               status=429, code="queue_full") from None

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            if job.cancel.is_set():  # the client left while waiting
                continue
            self.running = job
            try:
                result = self.engine.generate(job.prompt_ids, job.params, lambda t, j=job: j.emit("text", t),
                                              job.cancel)
                job.emit("done", result)
            except Exception as exc:  # one failed request must not stop the worker
                log.exception("generation failed")
                job.emit("error", f"generation failed: {type(exc).__name__}")
            finally:
                self.running = None

    def stop(self) -> None:
        self.stopping.set()
        if self.running:
            self.running.cancel.set()
        self.thread.join(timeout=30)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise ConfigError(f"--host {host}: binding a non-loopback address needs an API key "
                          "(--api-key or the TUNEFORGE_API_KEY environment variable)")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()  # equal lengths, so compare_digest leaks nothing


class Gate:
    """ASGI middleware run before routing or parsing: the bearer key (when set), then the body size, which a
    POST must declare (Content-Length; every OpenAI client does), both answered in OpenAI's error shape."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.want = app, _digest(api_key) if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if self.want and not (scheme.lower() == "bearer"
                                  and hmac.compare_digest(_digest(token.strip()), self.want)):
                await _error(401, "invalid or missing API key (expected 'Authorization: Bearer KEY')",
                             code="invalid_api_key")(scope, receive, send)
                return
            length = headers.get(b"content-length")
            if scope["method"] == "POST" and (length is None or not length.isdigit()):
                await _error(411, "a request body needs a Content-Length header")(scope, receive, send)
                return
            if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
                await _error(413, f"the request body is over {MAX_BODY_BYTES} bytes")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    headers = {"Retry-After": "1"} if status == 429 else None
    return JSONResponse(p.error_body(message, kind, param, code), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', '')})")
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if not where:
            return _error(400, "the request body must be a JSON object sent with Content-Type: application/json")
        return _error(400, f"{where}: {first.get('msg', 'invalid')}", param=where)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        return _error(500, f"internal error ({type(exc).__name__})")


async def _result(job: Job) -> Result:
    try:
        while True:
            kind, value = await job.events.get()
            if kind == "done":
                return value
            if kind == "error":
                raise RequestError(value, status=500)
    finally:
        job.cancel.set()  # no-op when finished; stops the generation when the client disconnected


async def _stream(job: Job, rid: str, model: str, chat: bool, include_usage: bool,
                  tools: bool = False) -> AsyncIterator[str]:
    """Server-sent events; with tools the reply comes in one delta at the end (calls are parsed from the whole)."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    try:
        if chat:
            yield p.sse(p.chat_chunk(rid, model, {"role": "assistant", "content": ""}))
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                if not tools:
                    yield p.sse(p.chat_chunk(rid, model, {"content": value}) if chat
                                else p.completion_chunk(rid, model, value))
            elif kind == "done":
                for chunk in (p.tool_chunks(rid, model, value) if tools else
                              [p.chat_chunk(rid, model, {}, value.finish_reason) if chat
                               else p.completion_chunk(rid, model, "", value.finish_reason)]):
                    yield p.sse(chunk)
                if include_usage:
                    yield p.sse(p.usage_chunk(rid, obj, model, value))
                break
            else:  # headers are sent already: report the failure in-band, as OpenAI does
                yield p.sse(p.error_body(value, "server_error"))
                break
        yield p.sse("[DONE]")
    finally:
        job.cancel.set()


def create_app(engine: Engine, api_key: str | None = None, max_queue: int = 16) -> FastAPI:
    worker = Worker(engine, max_queue)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        worker.thread.start()
        yield
        worker.stop()

    app = FastAPI(title="tuneforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    app.add_middleware(Gate, api_key=api_key)
    _install_error_handlers(app)

    async def answer(req: p.ChatRequest | p.CompletionRequest, chat: bool):
        req.check_supported()
        if req.model != engine.name:
            raise RequestError(f"model {req.model!r} does not exist; this server serves {engine.name!r}",
                               status=404, param="model", code="model_not_found")
        tools = req.tool_list() if chat else None
        prompt_ids = engine.chat_prompt_ids(req.to_messages(), tools) if chat else engine.text_prompt_ids(req.text())
        limit = (req.max_completion_tokens if chat else None) or req.max_tokens or engine.max_new_tokens
        params = Params(limit, req.temperature or 0.0, req.top_p or 1.0, req.seed)
        engine.check(prompt_ids, params.max_new_tokens, "messages" if chat else "prompt")
        job = Job(prompt_ids, params, asyncio.get_running_loop())
        worker.submit(job)
        rid = p.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            return StreamingResponse(_stream(job, rid, engine.name, chat, req.include_usage, bool(tools)),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        result = await _result(job)
        if chat:
            return p.chat_response(rid, engine.name, result, bool(tools))
        return p.completion_response(rid, engine.name, result)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": created,
                                            "owned_by": "tuneforge"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: p.ChatRequest):
        return await answer(req, chat=True)

    @app.post("/v1/completions")
    async def completions(req: p.CompletionRequest):
        return await answer(req, chat=False)

    return app


def run_server(engine: Engine, host: str, port: int, api_key: str | None, max_queue: int) -> None:
    import uvicorn

    check_bind(host, api_key)
    auth = "API key required" if api_key else "no API key (loopback only)"
    print(f"serving {engine.name!r} on http://{host}:{port}/v1 ({auth}); Ctrl-C stops", flush=True)
    uvicorn.run(create_app(engine, api_key, max_queue), host=host, port=port, log_level="info")
