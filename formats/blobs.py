"""Lazy file data for readers: byte ranges of a host image, and a window onto part of one."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import BinaryIO

from imgkit.errors import ImageError


class _RunsReader(io.RawIOBase):
    """Reads a file whose data is a list of ``(offset, length)`` runs of a host file."""

    def __init__(self, path: str, runs: tuple[tuple[int, int], ...]) -> None:
        self._f = open(path, "rb")
        self._runs = list(runs)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while self._runs and self._runs[0][1] == 0:
            self._runs.pop(0)
        if not self._runs:
            return 0
        off, left = self._runs[0]
        n = min(len(b), left)
        self._f.seek(off)
        data = self._f.read(n)
        if not data:
            raise ImageError(f"{self._f.name}: the image ends inside a file's data at {off}")
        b[:len(data)] = data
        self._runs[0] = (off + len(data), left - len(data))
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass(frozen=True)
class RunsBlob:
    """File data lying in one or more byte ranges of a host image (FAT clusters, ISO extents).

    ``keep`` holds whatever must live as long as the blob (a temporary converted image).
    """

    path: str
    size: int
    runs: tuple[tuple[int, int], ...]
    keep: object = field(default=None, compare=False, repr=False)

    def open(self) -> BinaryIO:
        return io.BufferedReader(_RunsReader(self.path, self.runs))  # type: ignore[return-value]

    def host_range(self) -> tuple[str, int] | None:
        if len(self.runs) == 1:
            return (self.path, self.runs[0][0])
        return None


class OffsetFile(io.RawIOBase):
    """A read-only view of ``size`` bytes of a host file from ``offset`` (a partition)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self._f = open(path, "rb")
        self._base, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = {0: pos, 1: self._pos + pos, 2: self._size + pos}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[override]
        n = max(0, min(len(b), self._size - self._pos))
        self._f.seek(self._base + self._pos)
        data = self._f.read(n)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def image_size(f: BinaryIO) -> int:
    """Bytes in the file behind ``f`` (its end, for objects without a descriptor)."""
    here = f.tell()
    try:
        return f.seek(0, io.SEEK_END)
    finally:
        f.seek(here)


def available(f: BinaryIO, offset: int, size: int | None) -> int:
    """How many bytes of a volume at ``offset`` (``size`` long, or to the end) the file holds."""
    left = max(image_size(f) - offset, 0)
    return left if size is None else min(size, left)


def cstr(raw: bytes, encoding: str = "ascii") -> str:
    """A NUL-terminated, space-padded on-disk string."""
    return raw.split(b"\0", 1)[0].decode(encoding, "replace").strip()
