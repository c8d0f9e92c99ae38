"""What a token cache is keyed by (data.token_cache builds and opens the caches): the data file's sha256 (remembered
by stat beside the caches, as git's index does), the tokenizer's fingerprint, the data package's source and every
data key that changes tokenization; and where the caches live.

    key, parts = cache_key(cfg, tokenizer, path)   # the cache's directory name under data_cache_dir()
    digest = file_sha256(path)                     # a 4 GB corpus is read once, not at every start
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from tuneforge.config.schema import Config
from tuneforge.data.templates import control_tokens
from tuneforge.fsutil import write_json_atomic
from tuneforge.models.hub import tuneforge_home
from tuneforge.stage_info import stage_info

CACHE_VERSION = 1  # bump when what a cache holds or how examples are built changes
# data keys that never change one record's tokens (the files are keyed by content; the split comes after)
NOT_TOKENIZATION = ("train", "eval", "eval_split", "labels")


def data_cache_dir() -> Path:
    """$TUNEFORGE_DATA_CACHE if set (the tests point it at a temporary folder), else $TUNEFORGE_HOME/data."""
    override = os.environ.get("TUNEFORGE_DATA_CACHE")
    return Path(override) if override else tuneforge_home() / "data"


RACY_S = 2.0  # a file changed this close to (or after) its hashing is hashed again: timestamps are coarse


MEMO_DIR = "file-sha256"  # under data_cache_dir(): file_sha256's remembered digests, one JSON per file


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_sha256(path: str | Path) -> str:
    """sha256 of the file's bytes. Hashing a 4 GB corpus costs ~3 s a run, so the digest is remembered beside
    the caches with the file's stat (device, inode, size, mtime, ctime: any write, rename over it, chmod or
    `cp -p` changes ctime) and reused while the stat is unchanged, as git's index does; a file whose mtime or
    ctime lies within RACY_S of the moment its hashing began is always hashed again (a write in the same
    timestamp tick would not change the stat)."""
    path = Path(path)
    st = os.stat(path)
    memo = data_cache_dir() / MEMO_DIR / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
                                               + ".json")
    try:
        seen = json.loads(memo.read_text())
        if seen["stat"] == stat_key(st) and max(st.st_mtime_ns, st.st_ctime_ns) < seen["began_ns"] - RACY_S * 1e9:
            return str(seen["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    began_ns = time.time_ns()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    # remembered only if unchanged while it was read and old enough to be trusted by the next run
    if stat_key(os.stat(path)) == stat_key(st) and max(st.st_mtime_ns, st.st_ctime_ns) < began_ns - RACY_S * 1e9:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(memo, {"path": str(path.resolve()), "stat": stat_key(st), "began_ns": began_ns,
                                     "sha256": digest.hexdigest()})
        except OSError:
            pass  # a read-only cache only costs the next run a rehash
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the ids: the fast tokenizer's whole serialization (vocabulary, merges,
    normalizer, pre-tokenizer; a slow one's vocabulary), its special tokens, BOS/EOS and chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None
                  else json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([type(tokenizer).__name__, tokenizer.chat_template, tokenizer.bos_token_id,
                              tokenizer.eos_token_id, getattr(tokenizer, "add_bos_token", False),
                              control_tokens(tokenizer)], default=str).encode())
    return digest.hexdigest()


def code_fingerprint() -> str:
    """sha256 of the data package's source: a change to how examples are built (templates, formats, label
    masks) rebuilds the caches instead of serving old tokens."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def cache_key(cfg: Config, tokenizer, path: str | Path, extra: dict | None = None) -> tuple[str, dict]:
    """(directory name, the parts it hashes). Every data key except the file names and the split is a part,
    so a key added later can only cause a rebuild, never a stale cache; `extra`: what else a kind's build
    reads (the prompts' budget)."""
    info = stage_info(cfg.stage)
    parts = {"version": CACHE_VERSION, "code": code_fingerprint(), "data_sha256": file_sha256(path),
             "extra": extra or {},
             "tokenizer": tokenizer_fingerprint(tokenizer),
             "records": info.records, "examples": info.examples,
             "data": {k: v for k, v in cfg.data.model_dump().items() if k not in NOT_TOKENIZATION},
             "max_length": cfg.training.max_length, "overlength": cfg.training.overlength}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts
