"""The studio's routes for files and finished runs (app.py has the page, the form and the runs): the file picker
and the upload (files.py), and a run's merge, GGUF export and the combination of LoRA runs (jobs.py).

    add_file_routes(app, guard, runs_dir, upload_max_bytes); add_result_routes(app, manager)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tuneforge.errors import UserError
from tuneforge.studio import jobs
from tuneforge.studio.discover import RESERVED, UPLOADS
from tuneforge.studio.files import TooLarge, list_folder, save_upload


def add_file_routes(app: FastAPI, guard, runs_dir: Path, upload_max_bytes: int) -> None:
    @app.get("/api/files")
    def files(dir: str | None = None) -> dict[str, Any]:
        return list_folder(guard, dir)

    @app.post("/api/upload")  # the body is the file (application/octet-stream), ?name= its name
    async def upload(request: Request, name: str = "") -> JSONResponse:
        length = request.headers.get("content-length")
        try:
            saved = await save_upload(request.stream(), name, runs_dir / UPLOADS, upload_max_bytes,
                                      int(length) if length and length.isdigit() else None)
        except TooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        return JSONResponse(saved)


def add_result_routes(app: FastAPI, manager) -> None:
    from tuneforge.methods import METHODS
    from tuneforge.stage_info import STAGE_INFO

    def run_facts(name: str) -> tuple[Path, Path, Any, bool]:
        run_dir, info = manager.run_dir(name), manager.status(name)
        if info["method"] not in METHODS or info["stage"] not in STAGE_INFO:
            raise UserError(f"run {name!r}: its config names no known method / stage")
        return run_dir, manager.meta / name, METHODS[info["method"]], STAGE_INFO[info["stage"]].generates

    # GET routes ending in /merge or /export come before GET /api/runs/{name:path} (app.py): a name may hold '/'
    @app.get("/api/runs/{name:path}/merge")
    def merge_state(name: str) -> dict[str, Any]:
        return jobs.merge_status(manager.meta / name, manager.run_dir(name))

    @app.post("/api/runs/{name:path}/merge")
    def merge(name: str) -> dict[str, Any]:
        run_dir, meta, method, _ = run_facts(name)
        return jobs.start_merge(meta, run_dir, method)

    @app.get("/api/runs/{name:path}/export")
    def export_state(name: str) -> dict[str, Any]:
        return jobs.export_status(manager.meta / name, manager.run_dir(name))

    @app.post("/api/runs/{name:path}/export")
    def export(name: str, body: dict[str, Any]) -> dict[str, Any]:
        run_dir, meta, method, generates = run_facts(name)
        return jobs.start_export(meta, run_dir, str(body.get("quant") or "f16"), method, generates)

    @app.get("/api/combine")
    def combined() -> dict[str, Any]:
        from tuneforge.export.combine import HOWS

        return {"combined": jobs.combined(manager.meta / ".combine"), "hows": list(HOWS)}

    @app.post("/api/combine")
    def combine(body: dict[str, Any]) -> dict[str, Any]:
        from tuneforge.studio.form import NAME_RE

        name, runs = str(body.get("name") or "").strip(), body.get("runs") or []
        if not NAME_RE.match(name) or name in RESERVED or name in manager.names():
            raise UserError(f"name {name[:70]!r}: a new plain name for the combined model (letters, digits, '.', "
                            "'_', '-'), not a run's")
        if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
            raise UserError("runs: a list of run names")
        return jobs.start_combine(manager.meta / ".combine", manager.runs_dir / name,
                                  [manager.run_dir(r) for r in runs], str(body.get("how") or "linear"),
                                  str(body.get("weights") or "").strip() or None)
