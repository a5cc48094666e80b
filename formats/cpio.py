"""cpio "newc" (070701) and "crc" (070702) archives, as the Linux kernel unpacks them.

Written in one streaming pass from a :class:`~imgkit.tree.Tree`. Inode numbers are assigned
in canonical tree order, so they never depend on the host. Hard links are stored the newc
way: every name of the group shares one inode number and ``nlink``; all names but the last
carry no data, the last carries it (what GNU cpio and the kernel's ``gen_init_cpio`` do, and
what the kernel's unpacker expects).

A sparse file (a sparse archive member, or a host file with holes) keeps its holes in an
uncompressed archive written to a plain file: the writer seeks over them, so the output is
sparse on disk too. Into a compressor or a pipe the holes go as zeros, a block at a time.
newc has no field for xattrs: :func:`unstorable` says what a tree loses, for the caller to
report.
"""
from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from imgkit.errors import ImageError
from imgkit.holes import Ranges, blob_data_ranges, gaps, read_range
from imgkit.losses import xattr_loss
from imgkit.tree import Blob, Entry, Kind, Tree, sort_key

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
_CHUNK = 1 << 20
_FIRST_INO = 1
_ZEROS = bytes(_CHUNK)


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def header(*, magic: bytes, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int,
           filesize: int, rdev: tuple[int, int], name: bytes, check: int = 0) -> bytes:
    """One header with its NUL-terminated, 4-byte-padded name."""
    fields = (ino, mode, uid, gid, nlink, mtime, filesize, 0, 0, rdev[0], rdev[1],
              len(name) + 1, check)
    if max(fields) > 0xFFFFFFFF or min(fields) < 0:
        value = next(v for v in fields if not 0 <= v <= 0xFFFFFFFF)
        raise ImageError(f"cpio field value {value} of {name.decode(errors='replace')!r} "
                         "does not fit in 32 bits")
    head = magic + _FIELDS % fields + name + b"\0"
    return head + b"\0" * _pad4(len(head))


_FIELDS = b"%08X" * 13


class _Sink:
    """Buffers headers; copies file data with copy_file_range/sendfile when both ends allow."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buf = bytearray()
        self.written = 0
        # Only a plain file may be written to behind the object's back: a compressor's
        # fileno() is that of the file it compresses into.
        self._fd: int | None = None
        if isinstance(out, (io.FileIO, io.BufferedWriter, io.BufferedRandom)) or getattr(
                out, "passthrough", False):
            try:
                self._fd = out.fileno()
                out.flush()  # from here on, bytes go straight to the descriptor
            except (OSError, ValueError):
                self._fd = None

    def write(self, data: bytes) -> None:
        self._buf += data
        self.written += len(data)
        if len(self._buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf = bytearray()

    def _emit(self, data) -> None:
        if self._fd is None:
            self._out.write(data)
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        """Flush, and tell the file object where the descriptor now stands."""
        self.flush()
        if self._fd is not None and self._out.seekable():
            self._out.seek(0, os.SEEK_END)
        else:
            self._out.flush()

    def copy(self, blob: Blob, path: str) -> None:
        size = blob.size
        where = blob.host_range()
        ranges = blob_data_ranges(blob)
        if ranges is not None and where is not None:
            self._copy_sparse(where, ranges, size, path)
        elif where is not None and self._fd is not None:
            self.flush()
            host, offset = where
            src = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _copy_fd(src, self._fd, offset, size, path)
            finally:
                os.close(src)
            self.written += size
        else:
            with blob.open() as src:
                left = size
                while left:
                    chunk = src.read(min(_CHUNK, left))
                    if not chunk:
                        raise ImageError(f"{path}: source shrank while it was being archived")
                    self.flush()
                    self._emit(chunk)
                    left -= len(chunk)
                self.written += size
        self.write(b"\0" * _pad4(size))

    def _copy_sparse(self, where: tuple[str, int], ranges: Ranges, size: int,
                     path: str) -> None:
        """Copy only the data ranges of ``host`` from ``base``; holes are skipped over
        where the output is a plain file being appended to, written as zeros elsewhere."""
        self.flush()
        host, base = where
        seek = self._appending_to_a_file()
        src = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for hole, offset, length in gaps(ranges, size):
                if seek:
                    os.lseek(self._fd, hole, os.SEEK_CUR)  # type: ignore[arg-type]
                else:
                    while hole:
                        n = min(hole, _CHUNK)
                        self._emit(memoryview(_ZEROS)[:n])
                        hole -= n
                if not length:
                    continue
                if self._fd is not None:
                    _copy_fd(src, self._fd, base + offset, length, path)
                else:
                    for chunk in read_range(src, base + offset, length, path):
                        self._emit(chunk)
        finally:
            os.close(src)
        self.written += size

    def _appending_to_a_file(self) -> bool:
        """Whether seeking forward leaves a hole that reads as zeros: the output is a
        regular file and nothing lies past the write position (it could be an old file
        opened for update, whose bytes a seek would let through)."""
        if self._fd is None:
            return False
        st = os.fstat(self._fd)
        return stat.S_ISREG(st.st_mode) and st.st_size <= os.lseek(self._fd, 0, os.SEEK_CUR)


def _copy_fd(src: int, dst: int, offset: int, size: int, path: str) -> None:
    """Append ``size`` bytes of ``src`` from ``offset`` to ``dst`` in the kernel."""
    left = size
    try:
        while left:
            n = os.copy_file_range(src, dst, left, offset)
            if n == 0:
                break
            offset += n
            left -= n
    except OSError:
        pass  # cross-device or unsupported: sendfile below
    while left:
        n = os.sendfile(dst, src, offset, left)
        if n == 0:
            raise ImageError(f"{path}: source shrank while it was being archived")
        offset += n
        left -= n


def _blob_checksum(blob: Blob, path: str) -> int:
    """The crc format's "checksum": the sum of the bytes (holes add nothing)."""
    total = 0
    ranges = blob_data_ranges(blob)
    where = blob.host_range()
    if ranges is not None and where is not None:
        fd = os.open(where[0], os.O_RDONLY | os.O_CLOEXEC)
        try:
            for offset, length in ranges:
                for chunk in read_range(fd, where[1] + offset, length, path):
                    total += sum(chunk)
        finally:
            os.close(fd)
    else:
        with blob.open() as f:
            while chunk := f.read(_CHUNK):
                total += sum(chunk)
    return total & 0xFFFFFFFF


def unstorable(tree: Tree) -> list[str]:
    """What of ``tree`` a newc archive cannot hold, one warning line per kind of loss.

    newc has no xattrs, so file capabilities, POSIX ACLs and SELinux labels are lost; the
    root directory is not stored at all (it exists wherever the archive is unpacked).
    """
    return xattr_loss(tree, "cpio newc")


def _emission_order(tree: Tree) -> Iterator[list[Entry]]:
    """Yield groups of entries to write together, in canonical order.

    A hard-link group is written where its last name falls, so every name's parent
    directory already exists when the kernel creates the links.
    """
    groups = tree.hardlink_groups()
    last_of: dict[str, str] = {}
    for primary, extra in groups.items():
        names = sorted([primary, *extra], key=sort_key)
        last_of[names[-1]] = primary
    members = {p for p in groups} | {n for extra in groups.values() for n in extra}
    for entry in tree:
        if not entry.path:
            continue  # the root exists already wherever the archive is unpacked
        if entry.path in last_of:
            primary = last_of[entry.path]
            names = [n for n in sorted([primary, *groups[primary]], key=sort_key)]
            yield [tree[n] for n in names]
        elif entry.path not in members:
            yield [entry]


def write_cpio(tree: Tree, out: BinaryIO, *, crc: bool = False) -> int:
    """Write ``tree`` as a newc (or crc) archive to ``out``; returns bytes written.

    The root directory is not stored (``/`` exists wherever the archive is unpacked).
    """
    tree.validate()
    magic = CRC_MAGIC if crc else NEWC_MAGIC
    sink = _Sink(out)
    ino = _FIRST_INO
    subdirs: dict[str, int] = {}
    for e in tree:
        if e.kind is Kind.DIR and e.path:
            subdirs[e.parent] = subdirs.get(e.parent, 0) + 1
    for group in _emission_order(tree):
        primary = next((e for e in group if e.kind is Kind.FILE), group[0])
        nlink = len(group) if len(group) > 1 else (
            2 + subdirs.get(primary.path, 0) if primary.kind is Kind.DIR else 1)
        for i, e in enumerate(group):
            carries_data = i == len(group) - 1
            meta = primary if e.kind is Kind.HARDLINK else e
            name = os.fsencode(e.path)
            if meta.kind is Kind.SYMLINK:
                body = os.fsencode(meta.target or "")
                sink.write(header(magic=magic, ino=ino, mode=meta.st_mode, uid=meta.uid,
                                  gid=meta.gid, nlink=1, mtime=meta.mtime, filesize=len(body),
                                  rdev=(0, 0), name=name, check=sum(body) if crc else 0))
                sink.write(body + b"\0" * _pad4(len(body)))
                continue
            size = primary.size if (meta.kind is Kind.FILE and carries_data) else 0
            check = (_blob_checksum(primary.data, e.path)  # type: ignore[arg-type]
                     if crc and size else 0)
            rdev = meta.rdev if meta.kind in (Kind.CHAR, Kind.BLOCK) else (0, 0)
            sink.write(header(magic=magic, ino=ino, mode=meta.st_mode, uid=meta.uid,
                              gid=meta.gid, nlink=nlink, mtime=meta.mtime, filesize=size,
                              rdev=rdev, name=name, check=check))
            if size:
                sink.copy(primary.data, e.path)  # type: ignore[arg-type]
        ino += 1
    sink.write(header(magic=magic, ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0,
                      rdev=(0, 0), name=TRAILER.encode()))
    sink.close()
    return sink.written
