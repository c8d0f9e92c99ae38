"""Data files without typing paths: a listing of one folder under the studio's allowed roots (the file picker;
a folder outside them is refused as any path the form names is), and an upload into RUNS_DIR/data (the body is
the file; its size is capped and counted as it arrives, its name reduced to a plain file name with a data
suffix, and a partial upload leaves nothing behind).

    list_folder(guard, "/data/sets")     # {"dir", "parent", "entries": [{"name", "path", "kind", "size", "data"}]}
    await save_upload(request.stream(), "my set.jsonl", runs_dir / "data", cap)   # {"path", "name", "bytes"}
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tuneforge.data.load import SUFFIXES
from tuneforge.errors import UserError

MAX_ENTRIES = 1000
UPLOAD_MAX_BYTES = 200 * 1024 * 1024  # tuneforge studio --upload-max-mb


class TooLarge(UserError):
    """An upload over the cap (HTTP 413)."""


def list_folder(guard, folder: str | None) -> dict[str, Any]:
    """The allowed roots (no `folder`), or `folder`'s sub-folders and files (hidden ones left out), folders first;
    `data` marks the files training can read (by suffix). `parent` is None at a root."""
    if not folder:
        entries = [{"name": str(r), "path": str(r), "kind": "dir", "size": None, "data": False} for r in guard.roots]
        return {"dir": None, "parent": None, "entries": entries, "truncated": False}
    guard.check("data", folder)
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise UserError(f"{folder}: not a folder")
    entries = []
    try:
        children = sorted(path.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower()))
    except OSError as exc:
        raise UserError(f"{folder}: cannot be listed ({exc.strerror})") from None
    for child in children:
        if child.name.startswith("."):
            continue
        is_dir = child.is_dir()
        try:
            size = None if is_dir else child.stat().st_size
        except OSError:
            continue  # a dangling link
        entries.append({"name": child.name, "path": str(child), "kind": "dir" if is_dir else "file", "size": size,
                        "data": not is_dir and child.suffix.lower() in SUFFIXES})
    parent = None if path in guard.roots else str(path.parent)
    return {"dir": str(path), "parent": parent, "entries": entries[:MAX_ENTRIES],
            "truncated": len(entries) > MAX_ENTRIES}


def clean_name(name: str) -> str:
    """A browser's file name as a plain name in the upload folder: the last path part, characters other than
    letters, digits, '.', '_' and '-' replaced, no leading dot, at most 100 characters, a data file's suffix."""
    base = re.split(r"[\\/]", name or "")[-1]
    stem, dot, suffix = base.rpartition(".")
    if not dot or f".{suffix.lower()}" not in SUFFIXES:
        raise UserError(f"upload {base[:80]!r}: expected a data file ({', '.join(SUFFIXES)})")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")[:90] or "upload"
    return f"{stem}.{suffix.lower()}"


def _free_name(folder: Path, name: str) -> Path:
    stem, suffix = name.rsplit(".", 1)
    path, n = folder / name, 1
    while path.exists():
        path, n = folder / f"{stem}-{n}.{suffix}", n + 1
    return path


async def save_upload(chunks: AsyncIterator[bytes], name: str, folder: Path, cap: int,
                      declared: int | None = None) -> dict[str, Any]:
    """Write the uploaded bytes to a new file in `folder` (an existing name gets -1, -2, ...). Over `cap` bytes
    (as declared by Content-Length, or as counted) it is refused with TooLarge and nothing is kept."""
    clean = clean_name(name)
    if declared is not None and declared > cap:
        raise TooLarge(f"upload {clean}: {declared} bytes is over the studio's limit of {cap} bytes "
                       "(tuneforge studio --upload-max-mb)")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".upload-{os.getpid()}-{id(chunks)}.part"
    size = 0
    try:
        with tmp.open("wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    raise TooLarge(f"upload {clean}: over the studio's limit of {cap} bytes "
                                   "(tuneforge studio --upload-max-mb)")
                f.write(chunk)
        if size == 0:
            raise UserError(f"upload {clean}: the file is empty")
        dest = _free_name(folder, clean)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(dest), "name": dest.name, "bytes": size}
