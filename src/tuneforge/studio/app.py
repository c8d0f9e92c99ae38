"""The studio's HTTP side (FastAPI): the page and its assets (all shipped in the package, no CDN), and a JSON API
over the form (form.py), data preview (data_view.py) and runs (manager.py).

    app = create_app(Path("runs"), roots=[Path.cwd()]); uvicorn.run(app, host="127.0.0.1", port=7860)

Safety: a non-loopback bind needs an API key (checked by cli.py before binding); with a key every request needs
`Authorization: Bearer KEY` or the cookie that `/?key=KEY` sets. The Host header must be the address the studio
serves (DNS rebinding), a POST must be JSON (a cross-site form cannot send it) from no other origin, and every
path a form names must lie under an allowed root.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from tuneforge.errors import UserError
from tuneforge.studio.chat import ChatPool
from tuneforge.studio.data_view import preview_data
from tuneforge.studio.files import UPLOAD_MAX_BYTES
from tuneforge.studio.form import form_schema, validate_form
from tuneforge.studio.manager import RunManager
from tuneforge.studio.plan_view import plan_methods
from tuneforge.studio.predict_view import predict_file
from tuneforge.studio.routes import add_file_routes, add_result_routes

STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "panels.js": "text/javascript", "chart.js": "text/javascript",
          "results.js": "text/javascript", "picker.js": "text/javascript", "style.css": "text/css"}
COOKIE = "tuneforge_studio_key"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class PathGuard:
    """Paths a form may name: under one of `roots` (resolved, symlinks followed). Names without a slash are
    left alone for `model:` (an alias or a hub id)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [r.resolve() for r in roots]

    def check(self, key: str, value: str | None) -> None:
        if value is None or (key == "model" and "/" not in value and not value.startswith(("~", "."))):
            return
        path = Path(value).expanduser().resolve()
        if not any(path == r or r in path.parents for r in self.roots):
            raise UserError(f"{value}: outside the studio's allowed folders ({', '.join(map(str, self.roots))}); "
                            "start the studio with --allow DIR to add one")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Gate:
    """ASGI middleware before routing: the Host check, the key (when set), JSON-only same-origin POSTs."""

    def __init__(self, app, api_key: str | None, hosts: tuple[str, ...]) -> None:
        self.app, self.want, self.hosts = app, _digest(api_key) if api_key else None, hosts

    def _key_ok(self, headers: dict[bytes, bytes], query: str) -> bool:
        if self.want is None:
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(_digest(token.strip()), self.want):
            return True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(_digest(value), self.want):
                return True
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        problem = None
        if self.hosts and name not in self.hosts:
            problem = (421, f"this studio does not serve host {name!r}")
        elif scope["path"] == "/" and b"key=" in scope.get("query_string", b""):
            pass  # the page's own route checks the key and sets the cookie
        elif not self._key_ok(headers, scope.get("query_string", b"").decode()):
            problem = (401, "missing or wrong API key: open /?key=KEY once, or send 'Authorization: Bearer KEY'")
        elif scope["method"] == "POST":
            origin = headers.get(b"origin", b"").decode("latin-1")
            kind = headers.get(b"content-type", b"")
            # the upload's body is the file: octet-stream, like JSON, needs a CORS preflight a foreign page lacks
            if not (kind.startswith(b"application/json")
                    or (scope["path"] == "/api/upload" and kind.startswith(b"application/octet-stream"))):
                problem = (415, "send JSON (Content-Type: application/json)")
            elif origin and origin.split("://", 1)[-1] != host:
                problem = (403, f"a request from another origin ({origin}) is refused")
        if problem:
            await JSONResponse({"error": problem[1]}, status_code=problem[0])(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(runs_dir: Path, roots: list[Path] | None = None, api_key: str | None = None,
               hosts: tuple[str, ...] = LOOPBACK_NAMES, parallel: int = 1, cwd: Path | None = None,
               upload_max_bytes: int = UPLOAD_MAX_BYTES) -> FastAPI:
    runs_dir.mkdir(parents=True, exist_ok=True)
    manager = RunManager(runs_dir, parallel=parallel, cwd=cwd)
    guard = PathGuard([*(roots or [Path.cwd()]), runs_dir])
    stopping = threading.Event()
    schema = form_schema()
    chats = ChatPool()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        thread = threading.Thread(target=manager.run_forever, args=(stopping,), name="studio-queue", daemon=True)
        thread.start()
        yield
        stopping.set()  # runs keep training: they are their own process groups

    app = FastAPI(title="tuneforge studio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager = manager
    app.add_middleware(Gate, api_key=api_key, hosts=hosts)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:  # one line, never a traceback
        return JSONResponse({"error": f"internal error ({type(exc).__name__}: {str(exc)[:300]})"}, status_code=500)

    @app.get("/")
    async def index(key: str | None = None) -> Response:
        if key is not None:
            if api_key is None or not hmac.compare_digest(_digest(key), _digest(api_key)):
                return JSONResponse({"error": "wrong API key"}, status_code=401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, key, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}")
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no asset {name!r}")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-store"})

    @app.get("/api/schema")
    async def get_schema() -> dict[str, Any]:
        return {**schema, "runs_dir": str(manager.runs_dir), "roots": [str(r) for r in guard.roots]}

    @app.post("/api/validate")
    def validate(form: dict[str, Any]) -> dict[str, Any]:
        return validate_form(form, manager.runs_dir, guard.check)

    @app.post("/api/data")
    def data(body: dict[str, Any]) -> dict[str, Any]:
        path, stage = str(body.get("path") or ""), str(body.get("stage") or "sft")
        if not path:
            raise UserError("give a data file path")
        guard.check("data", path)
        return preview_data(path, stage, _fields(body))

    @app.post("/api/runs")
    def launch(form: dict[str, Any]) -> JSONResponse:
        result = validate_form(form, manager.runs_dir, guard.check)
        if result["ok"]:  # records training would refuse: refused here, at the field, before a process starts
            cfg = result["config"]
            data = preview_data(cfg["data"]["train"], cfg["stage"], _fields(cfg["data"]))
            if not data["ok"]:
                where = "; ".join(e["text"] for f in data["findings"] if f["severity"] == "error"
                                  for e in f["examples"][:3])
                problem = f"{data['errors']} unusable records: {where}"
                result = {**result, "ok": False, "errors": {"data.train": problem}}
        if not result["ok"]:
            return JSONResponse(result, status_code=422)
        return JSONResponse({**result, "run": manager.submit(str(form["name"]).strip(), result["yaml"])})

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return {"runs": manager.list()}

    add_file_routes(app, guard, manager.runs_dir, upload_max_bytes)
    add_result_routes(app, manager)  # before GET /api/runs/{name:path}: its GET .../merge and .../export

    @app.get("/api/runs/{name:path}")
    def run(name: str) -> dict[str, Any]:
        return manager.detail(name)

    @app.post("/api/runs/{name:path}/stop")
    def stop(name: str) -> dict[str, Any]:
        return manager.stop(name)

    @app.post("/api/runs/{name:path}/resume")
    def resume(name: str, body: dict[str, Any]) -> dict[str, Any]:
        steps = body.get("max_steps")
        if steps not in (None, "") and (not str(steps).isdigit() or int(steps) < 1):
            raise UserError(f"key 'training.max_steps': expected a whole number >= 1 (got {str(steps)[:40]!r})")
        return manager.resume(name, int(steps) if steps not in (None, "") else None)

    @app.post("/api/plan")
    def plan(form: dict[str, Any]) -> dict[str, Any]:
        model = str(form.get("model") or "").strip()
        if not model:
            raise UserError("give a model to estimate its memory")
        guard.check("model", model)
        try:
            batch, length = int(form.get("training.batch_size") or 8), int(form.get("training.max_length") or 1024)
        except ValueError:
            raise UserError("training.batch_size and training.max_length must be whole numbers") from None

        def flag(key: str, default: bool) -> bool:  # a form's checkbox: "true" / "false" / true / false / unset
            value = form.get(key)
            return default if value in (None, "") else str(value).lower() == "true"

        return plan_methods(model, str(form.get("stage") or "sft"), batch_size=batch, max_length=length,
                            precision=str(form.get("training.precision") or "auto"),
                            gradient_checkpointing=flag("training.gradient_checkpointing", False),
                            frozen_bf16=flag("training.frozen_bf16", True),
                            bf16_stream=flag("training.bf16_stream", False),
                            chunked_loss=flag("training.chunked_loss", True))

    def chat_args(name: str, body: dict[str, Any]) -> tuple:
        conversations = {side: body.get(side) for side in ("base", "tuned") if isinstance(body.get(side), list)}
        try:
            max_new_tokens, temperature = int(body.get("max_new_tokens") or 64), float(body.get("temperature") or 0)
        except (TypeError, ValueError):
            raise UserError("max_new_tokens must be a whole number and temperature a number") from None
        return manager.run_dir(name), conversations, max_new_tokens, temperature

    @app.post("/api/runs/{name:path}/chat")
    def chat(name: str, body: dict[str, Any]) -> dict[str, Any]:
        return chats.reply(*chat_args(name, body))

    @app.post("/api/runs/{name:path}/chat/stream")
    def chat_stream(name: str, body: dict[str, Any]) -> StreamingResponse:
        jobs = chats.prepare(*chat_args(name, body))  # errors before the stream starts are plain 400s
        return StreamingResponse(chats.stream(jobs), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/api/runs/{name:path}/predict")
    def predict(name: str, body: dict[str, Any]) -> dict[str, Any]:
        path = str(body.get("input") or "").strip()
        guard.check("data", path or None)
        return predict_file(manager.run_dir(name), manager.meta / name, path, bool(body.get("base")))

    return app


def _fields(body: dict[str, Any]):
    """data check's column names from a data preview request or a config's data block."""
    from tuneforge.data.records import Fields

    body = {k.removeprefix("data."): v for k, v in body.items()}
    pair = body.get("text_pair_field") or None
    return Fields(text=body.get("text_field") or "text", label=body.get("label_field") or "label",
                  text_pair=pair or "text_pair", text_pair_required=bool(pair), sft_format=body.get("format") or "auto")
