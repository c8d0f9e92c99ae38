"""Exact and near-duplicate detection over a stream of records, in a few dozen bytes per record.

datasketch computes the MinHash signatures (word n-gram shingles) and picks the LSH band layout for
the threshold; the LSH index itself is kept here as flat arrays instead of datasketch's MinHashLSH,
whose dict-of-lists index costs ~1 KB per record (measured: 0.7-1.5 KB at num_perm 32-128), far too
much for a 1 GB file. Per record we keep an 8-byte content hash, one 8-byte key per LSH band and a
4-byte tag (num_perm 32, threshold 0.85: 3 bands of 10 rows, 36 bytes); the signatures go to a
temporary file and are read back only to verify candidate pairs. Duplicates are resolved after the
last record by sorting, so the earliest record of each group is the one kept.

    index = DupIndex(threshold=0.85)
    for view in views: index.add(view.key, view.text)
    exact = index.exact_duplicates()       # {dup: first}
    near = index.near_duplicates(exact)    # {dup: (earlier, similarity)}
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import zlib
from array import array

import numpy as np

from tuneforge.errors import ConfigError

_WORD = re.compile(r"\w+")


def shingles(text: str, ngram: int) -> list[bytes]:
    """Lower-cased word n-grams: case, punctuation and spacing changes do not make a record new."""
    words = _WORD.findall(text.lower())
    if len(words) <= ngram:
        return [" ".join(words).encode() or text.encode()]
    return [" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)]


def content_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(later, first) index pairs: every record whose key equals an earlier record's, with that earliest one."""
    if len(keys) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(keys, kind="stable")  # stable: within a run of equal keys, indices ascend
    ordered = keys[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    run_start = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
    return order[~starts], order[run_start[~starts]]


class DupIndex:
    def __init__(self, threshold: float | None = 0.85, num_perm: int = 32, ngram: int = 3, seed: int = 1) -> None:
        """`threshold` None: exact duplicates only (no MinHash work, no datasketch needed)."""
        if threshold is not None and not 0 < threshold <= 1:
            raise ConfigError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold, self.num_perm, self.ngram = threshold, num_perm, ngram
        self.bands, self.rows = 0, 1
        if threshold is not None:
            try:
                # _optimal_param is MinHashLSH's own (bands, rows) choice; its constructor refuses 1 band
                from datasketch import MinHash
                from datasketch.lsh import _optimal_param
            except ImportError:
                raise ConfigError("near-duplicate detection needs datasketch: pip install 'tuneforge[data]' "
                                  "(or turn it off: --no-near-dup)") from None
            self.bands, self.rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
            self._sig = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)  # crc32: fast and stable
        self._mix = np.random.default_rng(seed).integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._hashes = array("Q")
        self._tags = array("i")
        self._band_keys = [array("Q") for _ in range(self.bands)]
        self._sigs = tempfile.TemporaryFile(prefix="tuneforge-minhash-")
        self.n = 0

    def add(self, key: str, text: str, tag: int = 0) -> int:
        """Index one record; `tag` (e.g. a label id) tells duplicates that disagree apart. Returns its index."""
        if self.threshold is not None:
            self._sig.clear()  # one MinHash reused: copying one per record cost ~20% more
            self._sig.update_batch(shingles(text, self.ngram))
            values = np.asarray(self._sig.hashvalues, dtype=np.uint32)
            self._sigs.write(values.tobytes())
            bands = values[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
            for band, band_key in zip(self._band_keys, (bands * self._mix).sum(axis=1), strict=True):
                band.append(int(band_key))  # uint64 products wrap: a universal-style hash of the band
        self._hashes.append(content_hash(key))
        self._tags.append(tag)
        self.n += 1
        return self.n - 1

    def tag(self, i: int) -> int:
        return self._tags[i]

    def exact_duplicates(self) -> dict[int, int]:
        later, first = _runs(np.frombuffer(self._hashes, dtype=np.uint64) if self.n else np.empty(0, np.uint64))
        return dict(zip(later.tolist(), first.tolist(), strict=True))

    def _signature(self, i: int) -> np.ndarray:
        size = 4 * self.num_perm
        return np.frombuffer(os.pread(self._sigs.fileno(), size, i * size), dtype=np.uint32)

    def near_duplicates(self, exact: dict[int, int]) -> dict[int, tuple[int, float]]:
        """{later: (earlier, estimated Jaccard)} for pairs sharing an LSH band and verified >= threshold."""
        self._sigs.flush()
        skip = np.fromiter(exact, dtype=np.int64, count=len(exact))
        pairs = [np.empty(0, np.int64)]
        for band in self._band_keys:
            later, first = _runs(np.frombuffer(band, dtype=np.uint64) if self.n else np.empty(0, np.uint64))
            keep = ~np.isin(later, skip)
            pairs.append((first[keep] << 32) | later[keep])  # packed, so np.unique dedups pairs cheaply
        found: dict[int, tuple[int, float]] = {}
        for packed in np.unique(np.concatenate(pairs)).tolist():  # ascending (earlier, later)
            i, j = packed >> 32, packed & 0xFFFFFFFF
            if j in found:
                continue
            similarity = float(np.mean(self._signature(i) == self._signature(j)))
            if similarity >= (self.threshold or 1.0):
                found[j] = (i, similarity)
        return found

    def close(self) -> None:
        self._sigs.close()

    def __enter__(self) -> DupIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
