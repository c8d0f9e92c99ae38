"""Housekeeping for the token caches (data.token_cache) in the data cache folder: list them (size, source file,
age, last use), clear them (all, or those unused for some days), and keep their total size under a cap by
evicting the least recently used after a build.

    tuneforge data cache                          # one line per cache (datatools.cache_cli)
    tuneforge data cache --clear --older-than 30  # remove those not used for 30 days (no --older-than: all)
    TUNEFORGE_DATA_CACHE_MAX_GB=20 tuneforge train run.yaml   # after building, evict LRU caches above 20 GB

A cache is a folder `<root>/<key>` with meta.json; `<root>/.<key>.lock` is held (exclusively) by the process
building or opening it, and `<root>/.<key>.use` is held (shared) by every process reading it, from the moment it
is opened until the process lets its reader go. Clearing and eviction take both without waiting and pass over a
cache whose lock is held, so a cache being built or in use is never removed. Last use is the modification time
of `<key>/last_used`, touched on every reuse (the build's time until then).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ConfigError

MAX_GB_ENV = "TUNEFORGE_DATA_CACHE_MAX_GB"
STAMP = "last_used"


@dataclass
class CacheEntry:
    key: str
    path: Path
    size: int  # bytes on disk
    source: str  # the data file it was built from
    created: float
    last_used: float
    tokens: int | None
    in_use: bool  # its lock is held: being built, opened or read


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _try_locks(root: Path, key: str, stack: ExitStack) -> bool:
    """Take `.key.lock` and `.key.use` exclusively without waiting (held until `stack` closes); False if either
    is held by another process."""
    for suffix in ("lock", "use"):
        f = stack.enter_context(open(root / f".{key}.{suffix}", "a"))
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


class Held:
    """A shared lock on a cache's `.use` file, released by close() or when the holder is collected (no
    ResourceWarning: it is a plain descriptor). os.close is kept on the class: a holder collected at interpreter
    exit may outlive the os module's globals."""

    _close = staticmethod(os.close)

    def __init__(self, path: Path):
        self.fd: int | None = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def close(self) -> None:
        if self.fd is not None:
            self._close(self.fd)
            self.fd = None

    __del__ = close


def hold(dest: Path) -> Held:
    """Mark the cache `dest` in use by this process (a shared lock) and stamp its last use; keep the returned
    Held beside the reader: the mark lasts until it is closed or collected."""
    held = Held(dest.parent / f".{dest.name}.use")
    (dest / STAMP).touch()
    return held


def list_caches(root: Path) -> list[CacheEntry]:
    """Every complete cache under `root`, least recently used first."""
    entries = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        meta_file = path / "meta.json"
        if path.name.startswith(".") or not meta_file.is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        stats = meta.get("stats", {})
        created = float(meta.get("created") or meta_file.stat().st_mtime)
        stamp = path / STAMP
        with ExitStack() as stack:
            in_use = not _try_locks(root, path.name, stack)
        entries.append(CacheEntry(path.name, path, _size(path), str(stats.get("path", "?")), created,
                                  stamp.stat().st_mtime if stamp.is_file() else created,
                                  meta.get("tokens", stats.get("corpus_tokens")), in_use))
    return sorted(entries, key=lambda e: e.last_used)


def _remove(root: Path, entry: CacheEntry) -> bool:
    """Remove one cache unless another process holds its lock; True if removed."""
    with ExitStack() as stack:
        if not _try_locks(root, entry.key, stack):
            return False
        shutil.rmtree(entry.path)
    return True


def _stale_builds(root: Path) -> list[Path]:
    """Temporary folders of builds that died (`.<key>.<random>`, their key's lock free)."""
    out = []
    for path in root.iterdir() if root.is_dir() else []:
        if path.is_dir() and path.name.startswith("."):
            with ExitStack() as stack:
                if _try_locks(root, path.name[1:].split(".")[0], stack):
                    out.append(path)
    return out


def prune_digests(root: Path, everything: bool) -> int:
    """Remove remembered file digests (`<root>/file-sha256/`, data.cache_keys.file_sha256): all of them, or only
    those whose file is gone or has changed since (they would never be used again). Returns how many."""
    from tuneforge.data.cache_keys import MEMO_DIR, stat_key

    removed = 0
    for memo in sorted((root / MEMO_DIR).glob("*.json")):
        if not everything:
            try:
                seen = json.loads(memo.read_text())
                if seen["stat"] == stat_key(os.stat(seen["path"])):
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable, or its file is gone: stale
        memo.unlink(missing_ok=True)
        removed += 1
    return removed


def clear(root: Path, older_than_days: float | None = None, now: float | None = None) -> tuple[list, list]:
    """Remove the caches not used for `older_than_days` (None: all), dead builds' leftovers, the remembered
    file digests (None: all; else the stale ones) and the base models' remembered scores (evaluation/base_cache.py;
    as old as the caches removed); returns (removed entries, entries skipped because in use)."""
    from tuneforge.evaluation import base_cache

    now = time.time() if now is None else now
    removed, skipped = [], []
    for entry in list_caches(root):
        if older_than_days is not None and now - entry.last_used < older_than_days * 86400:
            continue
        (removed if _remove(root, entry) else skipped).append(entry)
    for path in _stale_builds(root):
        shutil.rmtree(path, ignore_errors=True)
    prune_digests(root, everything=older_than_days is None)
    base_cache.clear(root, older_than_days, now)
    return removed, skipped


def max_bytes_from_env() -> int | None:
    """The cap from $TUNEFORGE_DATA_CACHE_MAX_GB (GB = 2**30 bytes), or None when unset or empty."""
    value = os.environ.get(MAX_GB_ENV, "").strip()
    if not value:
        return None
    try:
        gb = float(value)
    except ValueError:
        gb = -1.0
    if gb < 0:
        raise ConfigError(f"{MAX_GB_ENV}={value!r}: expected a size in GB, a number >= 0 (e.g. 20 or 0.5)")
    return int(gb * 2**30)


def evict(root: Path, max_bytes: int | None, keep: Path | None = None,
          log: Callable[[str], None] = print) -> list[CacheEntry]:
    """Remove least recently used caches until the total is at most `max_bytes`, never `keep` (the one just
    built) nor one in use; returns what was removed. The total can stay above the cap when only those remain."""
    if max_bytes is None:
        return []
    entries = list_caches(root)
    total = sum(e.size for e in entries)
    removed = []
    for entry in entries:
        if total <= max_bytes:
            break
        if (keep is not None and entry.path == keep) or not _remove(root, entry):
            continue
        total -= entry.size
        removed.append(entry)
        log(f"data cache: evicted {entry.path} ({entry.size / 2**20:,.0f} MB, {entry.source}, last used "
            f"{_ago(time.time() - entry.last_used)} ago) to stay under {MAX_GB_ENV}={max_bytes / 2**30:g}")
    if total > max_bytes:
        log(f"data cache: {total / 2**30:.2f} GB in {root}, above {MAX_GB_ENV}={max_bytes / 2**30:g}: the rest is "
            "in use or was just built")
    return removed


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def table(entries: list[CacheEntry], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [("key", "size MB", "tokens", "age", "last used", "in use", "source")]
    rows += [(e.key[:12], f"{e.size / 2**20:,.1f}", f"{e.tokens:,}" if e.tokens is not None else "?",
              _ago(now - e.created), _ago(now - e.last_used) + " ago", "yes" if e.in_use else "", e.source)
             for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)
