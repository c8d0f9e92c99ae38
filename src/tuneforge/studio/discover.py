"""Which folders under --runs-dir are runs, nested ones included (`tuneforge compare` writes OUTPUT/METHOD,
`tuneforge hpo` STUDY/trials/trial-0000 and STUDY/best, a user may keep runs/exp1/a): a folder with a
config.yaml is a run unless folders below it are (a compare's own config.yaml sits above its runs). A run's
name is its path below --runs-dir with '/' (e.g. "exp1/a").

    find_runs(Path("runs"), Path("runs/.studio"))   # ["exp1/a", "exp1/b", "first", ...]
"""

from __future__ import annotations

from pathlib import Path

MAX_DEPTH = 4  # runs/a/b/c/d at most: a study's trials are 3 deep
SKIP = frozenset({"checkpoints", "merged", "tensorboard", "mlruns", "__pycache__"})  # a run's own folders
UPLOADS = "data"  # RUNS_DIR/data holds the studio's uploads
RESERVED = frozenset({UPLOADS})


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP and not p.is_symlink())
    except OSError:
        return []


def _walk(root: Path, folder: Path, depth: int, is_run, found: set[str]) -> bool:
    """Add the runs at or below `folder`; True when any was found."""
    below = False
    if depth < MAX_DEPTH:
        for child in _children(folder):
            below |= _walk(root, child, depth + 1, is_run, found)
    if not below and folder != root and is_run(folder):
        found.add(folder.relative_to(root).as_posix())
        return True
    return below


def find_runs(runs_dir: Path, meta: Path) -> list[str]:
    """Run folders under `runs_dir` (config.yaml) and runs the studio knows of in `meta` (state.json: queued
    runs have no folder of their own yet), as sorted '/'-joined names."""
    found: set[str] = set()
    _walk(runs_dir, runs_dir, 0, lambda d: (d / "config.yaml").is_file(), found)
    if meta.is_dir():
        _walk(meta, meta, 0, lambda d: (d / "state.json").is_file(), found)
    return sorted(found)
