"""A safetensors file read in one go: the header parsed in Python, the data in one buffer.

An adapter load runs on a loader thread while the engine's core thread is busy in Python. Every
torch call releases the GIL and has to win it back, which can take the whole switch interval
(5 ms) each; ``safe_open`` plus per-tensor checks and conversions made about a thousand such
calls for a 224-tensor adapter. Here the header (names, dtypes, shapes, offsets) is plain JSON,
so shapes are validated before any tensor exists, and the data is one ``readinto``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

# safetensors dtype names the loader accepts (LoRA weights are floating point).
DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
MAX_HEADER_BYTES = 100 << 20  # the format's own limit


class SafetensorsFormatError(ValueError):
    """The file is not a well-formed safetensors file (the message says why)."""


@dataclass(slots=True, frozen=True)
class TensorEntry:
    """One tensor of the file: its dtype name as written (``F16``...), shape and byte range in
    the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(slots=True, frozen=True)
class FileStat:
    """What identifies the file's contents without reading them (taken from the open file)."""

    path: str  # resolved through symlinks
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path, st: os.stat_result) -> FileStat:
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(slots=True)
class SafetensorsFile:
    """A parsed header and, once :meth:`read_data` ran, the data section as one uint8 tensor."""

    path: Path
    stat: FileStat
    entries: dict[str, TensorEntry]
    data_offset: int  # where the data section starts in the file
    data: torch.Tensor | None = None  # [data section bytes] uint8

    @classmethod
    def open(cls, path: Path) -> SafetensorsFile:
        """Read and check the header only. Raises :class:`SafetensorsFormatError` or ``OSError``."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            prefix = f.read(8)
            if len(prefix) != 8:
                raise SafetensorsFormatError("shorter than its header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_HEADER_BYTES, st.st_size - 8):
                raise SafetensorsFormatError("header length beyond the file")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise SafetensorsFormatError("header is not JSON") from None
        if not isinstance(header, dict):
            raise SafetensorsFormatError("header is not a JSON object")
        data_offset = 8 + header_len
        entries = _entries(header, st.st_size - data_offset)
        return cls(path, FileStat.of(path, st), entries, data_offset)

    def read_data(self) -> torch.Tensor:
        """The data section, read with one ``readinto`` (the GIL is released once, for the whole
        read). Raises :class:`SafetensorsFormatError` if the file changed since :meth:`open`."""
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns, st.st_ino) != (
                self.stat.size,
                self.stat.mtime_ns,
                self.stat.inode,
            ):
                raise SafetensorsFormatError("the file changed while it was being read")
            data = torch.empty(self.stat.size - self.data_offset, dtype=torch.uint8)
            f.seek(self.data_offset)
            if f.readinto(data.numpy().data) != data.numel():
                raise SafetensorsFormatError("the data section is truncated")
        self.data = data
        return data


def _entries(header: dict[str, object], data_bytes: int) -> dict[str, TensorEntry]:
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise SafetensorsFormatError(f"entry {name} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (
            not isinstance(dtype, str)
            or not isinstance(shape, list)
            or not isinstance(offsets, list)
        ):
            raise SafetensorsFormatError(f"entry {name} lacks dtype, shape or data_offsets")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or len(offsets) != 2:
            raise SafetensorsFormatError(f"entry {name} has a bad shape or data_offsets")
        start, end = offsets
        if not (
            isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_bytes
        ):
            raise SafetensorsFormatError(f"entry {name} lies outside the data section")
        if dtype in DTYPES:
            numel = 1
            for d in shape:
                numel *= d
            itemsize = DTYPES[dtype].itemsize
            if end - start != numel * itemsize or start % itemsize:
                raise SafetensorsFormatError(f"entry {name}: its byte range does not fit its shape")
        entries[name] = TensorEntry(dtype, tuple(shape), start, end)
    return entries
