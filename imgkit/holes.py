"""Where a file's data is, so that archive writers keep holes as holes.

A sparse member read from an archive knows its data ranges (``SpoolBlob.data_ranges()``); a
host file is asked with ``SEEK_DATA``/``SEEK_HOLE``, but only when ``st_blocks`` says it has
fewer blocks than its size needs, so dense files (nearly all of them) cost one ``fstat``.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from imgkit.errors import ImageError

if TYPE_CHECKING:
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


_CHUNK = 1 << 20


def all_holes(fd: int, size: int) -> None:
    """Make the open file ``size`` bytes of holes. One with data is emptied first; a new,
    empty one is not: ext4 takes a truncation to zero for a rewrite in place and writes the
    whole file back when it is closed (``auto_da_alloc``), a cost of 0.1 s per 100 MB."""
    if os.fstat(fd).st_size:
        os.ftruncate(fd, 0)
    os.ftruncate(fd, size)


def copy_sparse(src: str, dst_fd: int, dst_offset: int, size: int | None = None) -> None:
    """Copy the data extents of file ``src`` to ``dst_fd`` at ``dst_offset``; holes are skipped.

    The destination must already read as zeros there (a fresh sparse file).
    """
    with open(src, "rb") as f:
        sfd = f.fileno()
        end = os.fstat(sfd).st_size if size is None else size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(sfd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:        # only a hole is left
                    return
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                data = pos                          # no hole support: copy everything
            if data >= end:
                return
            try:
                hole = os.lseek(sfd, data, os.SEEK_HOLE)
            except OSError:
                hole = end
            hole = min(hole, end)
            _copy_range(sfd, dst_fd, data, dst_offset + data, hole - data, src)
            pos = hole


def _copy_range(sfd: int, dfd: int, src_off: int, dst_off: int, count: int, name: str) -> None:
    while count > 0:
        try:
            n = os.copy_file_range(sfd, dfd, count, src_off, dst_off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            _copy_range_slow(sfd, dfd, src_off, dst_off, count, name)
            return
        if n == 0:
            raise ImageError(f"{name} ended early while being copied (it changed meanwhile?)")
        src_off, dst_off, count = src_off + n, dst_off + n, count - n


def _copy_range_slow(sfd: int, dfd: int, src_off: int, dst_off: int, count: int,
                     name: str) -> None:
    """pread/pwrite fallback that still skips all-zero chunks, keeping the output sparse."""
    zero = bytes(_CHUNK)
    while count > 0:
        buf = os.pread(sfd, min(count, _CHUNK), src_off)
        if not buf:
            raise ImageError(f"{name} ended early while being copied (it changed meanwhile?)")
        if buf != zero[:len(buf)]:
            pwrite_all(dfd, buf, dst_off)
        src_off, dst_off, count = src_off + len(buf), dst_off + len(buf), count - len(buf)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``os.pwrite`` until every byte of ``data`` is written."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
