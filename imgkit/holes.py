"""Where a file's data is, so that archive writers keep holes as holes.

A sparse member read from an archive knows its data ranges (``SpoolBlob.data_ranges()``); a
host file is asked with ``SEEK_DATA``/``SEEK_HOLE``, but only when ``st_blocks`` says it has
fewer blocks than its size needs, so dense files (nearly all of them) cost one ``fstat``.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from imgkit.errors import ImageError
from imgkit.tree import Blob

_CHUNK = 1 << 20

#: ``(offset, length)`` pairs of data, in the file's own offsets, ascending, not touching.
Ranges = tuple[tuple[int, int], ...]


def blob_data_ranges(blob: Blob) -> Ranges | None:
    """The data ranges of ``blob`` when it has holes; ``None`` when it is dense (or when
    its bytes are not in a host file that could be read range by range)."""
    if blob.size == 0:
        return None
    where = blob.host_range()
    if where is None:
        return None
    known = getattr(blob, "data_ranges", None)
    if known is not None:
        ranges = tuple(known())
        return ranges if sum(length for _, length in ranges) < blob.size else None
    path, offset = where
    st = os.stat(path)
    if st.st_blocks * 512 >= st.st_size:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ranges = file_data_ranges(fd, offset, offset + blob.size)
    finally:
        os.close(fd)
    if ranges is None or sum(length for _, length in ranges) >= blob.size:
        return None
    return tuple((start - offset, length) for start, length in ranges)


def file_data_ranges(fd: int, start: int, end: int) -> Ranges | None:
    """The data ranges of the open file ``fd`` between ``start`` and ``end`` (file offsets);
    ``None`` when its filesystem cannot tell holes from data."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:        # nothing but a hole up to the end of file
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return None
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        out.append((data, hole - data))
        pos = hole
    return tuple(out)


def gaps(ranges: Ranges, size: int) -> list[tuple[int, int, int]]:
    """``(hole_length, data_offset, data_length)`` for each data range, then the trailing
    hole as ``(hole_length, size, 0)``: the order a stream writer meets them in."""
    out = []
    pos = 0
    for offset, length in ranges:
        out.append((offset - pos, offset, length))
        pos = offset + length
    out.append((size - pos, size, 0))
    return out


def read_range(fd: int, offset: int, length: int, path: str) -> Iterator[bytes]:
    """``length`` bytes of ``fd`` from ``offset``, a block at a time (``path`` names the
    tree entry in the error when the file turns out shorter)."""
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(_CHUNK, end - offset), offset)
        if not chunk:
            raise ImageError(f"/{path}: source shrank while it was being archived")
        yield chunk
        offset += len(chunk)
