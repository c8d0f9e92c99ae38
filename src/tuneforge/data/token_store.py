"""Tokenized sequences on disk, read memory-mapped: numpy `.npy` files (the library's own format, read back with
`np.load(mmap_mode="r")`), one flat token array, an optional supervised-token mask and an offsets index.
Sequence i is tokens[offsets[i]:offsets[i+1]]. Written in one streaming pass: memory holds 8 bytes of offset
(and 4 of record number) per sequence, never the tokens.

An example may carry more token fields than one (dpo: prompt, chosen and rejected ids), each a flat array with
its own offsets (`<name>.npy`, `<name>.offsets.npy`), byte fields (uint8, e.g. a row's JSON columns) stored the
same way, and small per-example integers (`<name>.npy`, e.g. a label id), so one store serves every example kind.

    with TokenWriter(tmp_dir, vocab_size=49152, with_mask=True) as w:
        w.add(ids, mask, record=7)                     # one sequence (mask: 1 = supervised)
    reader = TokenReader(tmp_dir)                     # memory-mapped; len(reader), reader.tokens(i)

    with TokenWriter(tmp_dir, 49152, fields=("chosen", "rejected"), scalars=("label",)) as w:
        w.add(prompt_ids, record=7, chosen=c_ids, rejected=r_ids, label=1)
    reader.field("chosen", i), reader.scalar("label")[i], reader.lengths("chosen")

Why not Arrow (`datasets`): measured by bench/bench_token_store.py (docs/benchmarks.md, "Token store"): the
arrays built 10M tokens in 0.58x the time at 0.18x the peak RSS (39 vs 214 MB) and read random sequences 1.9x
faster than `Dataset.__getitem__` (whose per-row Python conversion the loop pays at every micro-batch), in
a quarter of the disk (uint16 here vs Arrow's int32 list column written twice by from_generator + save).
"""

from __future__ import annotations

import io
from array import array
from pathlib import Path

import numpy as np

HEADER = 128  # bytes reserved for the .npy header of a streamed array (numpy pads it to a multiple of 64)
_CODES = {np.dtype(np.uint16): "H", np.dtype(np.uint32): "I", np.dtype(np.uint8): "B"}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (SmolLM2's 49,152: half the disk and page cache), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class _NpyStream:
    """A 1-D .npy file written in chunks: the data goes after a reserved header, which is written with
    numpy's own header writer once the length is known."""

    def __init__(self, path: Path, dtype: np.dtype, flush_every: int = 1 << 20):
        self.path, self.dtype, self.flush_every = path, np.dtype(dtype), flush_every
        self.f = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.f.write(b"\0" * HEADER)
        self.buf = array(_CODES[self.dtype])
        self.count = 0

    def extend(self, values) -> None:
        self.buf.extend(values)
        if len(self.buf) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        self.count += len(self.buf)
        self.buf.tofile(self.f)
        del self.buf[:]

    def close(self) -> None:
        self.flush()
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (self.count,)})
        assert len(header.getvalue()) == HEADER, "npy header longer than reserved"
        self.f.seek(0)
        self.f.write(header.getvalue())
        self.f.close()


class _Field:
    """One more variable-length field: its values streamed, its offsets kept (8 bytes per example)."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype):
        self.name, self.values, self.offsets = name, _NpyStream(directory / f"{name}.npy", dtype), array("q", [0])

    def add(self, values) -> None:
        self.values.extend(values)
        self.offsets.append(self.offsets[-1] + len(values))

    def close(self, directory: Path) -> None:
        self.values.close()
        np.save(directory / f"{self.name}.offsets.npy", np.frombuffer(self.offsets, dtype=np.int64))


class TokenWriter:
    """Streams sequences into `directory` (tokens.npy, mask.npy when with_mask, offsets.npy, records.npy; per
    extra field <name>.npy + <name>.offsets.npy; per scalar <name>.npy)."""

    def __init__(self, directory: str | Path, vocab_size: int = 1 << 16, with_mask: bool = False,
                 fields: tuple[str, ...] = (), byte_fields: tuple[str, ...] = (), scalars: tuple[str, ...] = ()):
        self.dir = Path(directory)
        self.tokens = _NpyStream(self.dir / "tokens.npy", token_dtype(vocab_size))
        self.mask = _NpyStream(self.dir / "mask.npy", np.uint8) if with_mask else None
        self.offsets = array("q", [0])
        self.records = array("I")
        self.fields = [_Field(self.dir, name, token_dtype(vocab_size)) for name in fields]
        self.fields += [_Field(self.dir, name, np.dtype(np.uint8)) for name in byte_fields]
        self.scalars = {name: array("q") for name in scalars}

    def add(self, ids, mask=None, record: int = 0, **extra) -> None:
        """One example: its main token ids (and mask), then every declared field and scalar by name."""
        self.tokens.extend(ids)
        if self.mask is not None:
            self.mask.extend(mask if mask is not None else [1] * len(ids))
        self.offsets.append(self.offsets[-1] + len(ids))
        self.records.append(record)
        for f in self.fields:
            f.add(extra[f.name])
        for name, values in self.scalars.items():
            values.append(int(extra[name]))

    def __len__(self) -> int:
        return len(self.records)

    def close(self) -> None:
        self.tokens.close()
        if self.mask is not None:
            self.mask.close()
        np.save(self.dir / "offsets.npy", np.frombuffer(self.offsets, dtype=np.int64))
        np.save(self.dir / "records.npy", np.frombuffer(self.records, dtype=np.uint32))
        for f in self.fields:
            f.close(self.dir)
        for name, values in self.scalars.items():
            np.save(self.dir / f"{name}.npy", np.frombuffer(values, dtype=np.int64))

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.close()
        else:  # the caller removes the directory
            self.tokens.f.close()
            for stream in [self.mask, *(f.values for f in self.fields)]:
                if stream is not None:
                    stream.f.close()


class TokenReader:
    """The sequences of a TokenWriter directory, memory-mapped (pages are read when a sequence is)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.token_array = np.load(self.dir / "tokens.npy", mmap_mode="r")
        self.mask_array = np.load(self.dir / "mask.npy", mmap_mode="r") if (self.dir / "mask.npy").is_file() else None
        self.offsets = np.load(self.dir / "offsets.npy", mmap_mode="r")
        self.records = np.load(self.dir / "records.npy", mmap_mode="r")
        self._fields: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _field(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._fields:
            self._fields[name] = (np.load(self.dir / f"{name}.npy", mmap_mode="r"),
                                  np.load(self.dir / f"{name}.offsets.npy", mmap_mode="r"))
        return self._fields[name]

    def field(self, name: str, i: int) -> np.ndarray:
        """Example i's values of an extra field (token ids, or bytes of a byte field)."""
        values, offsets = self._field(name)
        return values[offsets[i] : offsets[i + 1]]

    def scalar(self, name: str) -> np.ndarray:
        """A per-example integer array (memory-mapped)."""
        return np.load(self.dir / f"{name}.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def tokens(self, i: int) -> np.ndarray:
        return self.token_array[self.offsets[i] : self.offsets[i + 1]]

    def mask(self, i: int) -> np.ndarray | None:
        return None if self.mask_array is None else self.mask_array[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self, name: str | None = None) -> np.ndarray:
        """Every example's length of the main tokens, or of field `name`."""
        return np.diff(self.offsets if name is None else self._field(name)[1])
