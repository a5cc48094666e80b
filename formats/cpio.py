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

import contextlib
import io
import os
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO

from imgkit.errors import ImageError
from imgkit.holes import Ranges, blob_data_ranges, file_data_ranges, gaps, read_range
from imgkit.losses import xattr_loss
from imgkit.tree import Blob, Entry, FileBlob, Kind, Tree, sort_key

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
_CHUNK = 1 << 20
#: A file this small is read into the header buffer (one ``preadv``, no flush), shared by
#: the cpio and tar writers; a larger one is copied by the kernel.
SMALL_FILE = 128 << 10
_FIRST_INO = 1
_ZEROS = memoryview(bytes(_CHUNK))


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def header(*, magic: bytes, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int,
           filesize: int, rdev: tuple[int, int], name: bytes, check: int = 0) -> bytes:
    """One header with its NUL-terminated, 4-byte-padded name."""
    fields = (ino, mode, uid, gid, nlink, mtime, filesize, 0, 0, rdev[0], rdev[1],
              len(name) + 1, check)
    # One test for every field: a negative value or one past 32 bits leaves bits above 31.
    if (ino | mode | uid | gid | nlink | mtime | filesize | rdev[0] | rdev[1] | check) >> 32:
        value = next(v for v in fields if not 0 <= v <= 0xFFFFFFFF)
        raise ImageError(f"cpio field value {value} of {name.decode(errors='replace')!r} "
                         "does not fit in 32 bits")
    head = magic + _FIELDS % fields + name
    return head + _NULS[(len(head) & 3) ^ 3]


_FIELDS = b"%08X" * 13
#: The name's NUL and the padding to 4 bytes, by the unterminated header's length mod 4
#: (indexed with ``len & 3 ^ 3``: lengths 3, 2, 1, 0 mod 4 take 1, 2, 3, 4 NULs).
_NULS = (b"\0", b"\0\0", b"\0\0\0", b"\0\0\0\0")


class _Sink:
    """Everything the archive holds goes through one fixed buffer, or past it.

    Into a plain file, headers and small files (:data:`SMALL_FILE`) gather in the buffer and
    a larger file's data goes from file to file in the kernel (``copy_file_range``, else
    ``sendfile``), the buffer flushed before it. Into anything else (a compressor), file data is read
    straight into the same buffer with ``preadv``, so a run of small files and their headers
    reaches the compressor as one large write, with no per-file ``bytes`` made on the way.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buf = bytearray(_CHUNK)
        self._view = memoryview(self._buf)
        self._n = 0
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
        n = len(data)
        self.written += n
        if self._n + n > _CHUNK:
            self.flush()
            if n > _CHUNK:
                self._emit(data)
                return
        self._buf[self._n:self._n + n] = data
        self._n += n

    def flush(self) -> None:
        if self._n:
            self._emit(self._view[:self._n])
            self._n = 0

    def _emit(self, data) -> None:
        if self._fd is None:
            self._out.write(data)  # every writer here consumes (copies) what it is given
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
        """Append the blob's bytes and the padding after them."""
        size = blob.size
        if type(blob) is FileBlob and not blob.offset:
            self._copy_file(blob.path, size, path)  # nearly every file: the short way
            self.written += size
            if size & 3:
                self.write(_NULS[3 - (size & 3)])
            return
        where = blob.host_range()
        if where is None:
            self._copy_stream(blob, size, path)
        elif getattr(blob, "data_ranges", None) is not None:
            ranges = blob_data_ranges(blob)  # a spooled member: it knows its holes
            src = os.open(where[0], os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._copy_host(src, where[1], size, ranges, path)
            finally:
                os.close(src)
        else:
            host, offset = where
            src = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(src)
                ranges = None
                if st.st_blocks * 512 < st.st_size:  # fewer blocks than bytes: maybe holes
                    ranges = _holes_of(src, offset, size)
                self._copy_host(src, offset, size, ranges, path)
            finally:
                os.close(src)
        self.written += size
        pad = _pad4(size)
        if pad:
            self.write(_NULS[pad - 1])

    def _copy_file(self, host: str, size: int, path: str) -> None:
        """A whole host file: one ``copy_file_range`` when it is dense (nearly always)."""
        src = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if size < SMALL_FILE:
                # Read with the headers around it, which then go out in one write for many
                # files: fewer calls than a copy in the kernel for each (zeros of a hole
                # are read as such).
                self._read_into_buffer(src, 0, size, path)
                return
            st = os.fstat(src)
            ranges = _holes_of(src, 0, size) if st.st_blocks * 512 < st.st_size else None
            if ranges is not None or self._fd is None:
                self._copy_host(src, 0, size, ranges, path)
                return
            if self._n:
                self.flush()
            done = 0
            with contextlib.suppress(OSError):  # cross-device or unsupported: _copy_fd's way
                done = os.copy_file_range(src, self._fd, size, 0)
            if done != size:
                _copy_fd(src, self._fd, done, size - done, path)
        finally:
            os.close(src)

    def _copy_stream(self, blob: Blob, size: int, path: str) -> None:
        """A blob that is no host file (bytes in memory, a member being unpacked)."""
        with blob.open() as src:
            left = size
            while left:
                if self._n == _CHUNK:
                    self.flush()
                chunk = src.read(min(left, _CHUNK - self._n))
                if not chunk:
                    raise ImageError(f"{path}: source shrank while it was being archived")
                self._buf[self._n:self._n + len(chunk)] = chunk
                self._n += len(chunk)
                left -= len(chunk)

    def _copy_host(self, src: int, base: int, size: int, ranges: Ranges | None,
                   path: str) -> None:
        """``size`` bytes of the open host file ``src`` from ``base``; with ``ranges``, only
        those are read: the holes are seeked over when the output is a plain file being
        appended to, written as zeros elsewhere."""
        if ranges is None:
            ranges = ((0, size),) if size else ()
            seek = False
        else:
            self.flush()
            seek = self._appending_to_a_file()
        for hole, offset, length in gaps(ranges, size):
            if hole and seek:
                os.lseek(self._fd, hole, os.SEEK_CUR)  # type: ignore[arg-type]
                hole = 0
            while hole:
                if self._n == _CHUNK:
                    self.flush()
                n = min(hole, _CHUNK - self._n)
                self._view[self._n:self._n + n] = _ZEROS[:n]
                self._n += n
                hole -= n
            if not length:
                continue
            if self._fd is not None:
                self.flush()
                _copy_fd(src, self._fd, base + offset, length, path)
            else:
                self._read_into_buffer(src, base + offset, length, path)

    def _read_into_buffer(self, src: int, offset: int, length: int, path: str) -> None:
        left = length
        while left:
            if self._n == _CHUNK:
                self.flush()
            want = min(left, _CHUNK - self._n)
            got = os.preadv(src, [self._view[self._n:self._n + want]], offset)
            if not got:
                raise ImageError(f"{path}: source shrank while it was being archived")
            self._n += got
            offset += got
            left -= got

    def _appending_to_a_file(self) -> bool:
        """Whether seeking forward leaves a hole that reads as zeros: the output is a
        regular file and nothing lies past the write position (it could be an old file
        opened for update, whose bytes a seek would let through)."""
        if self._fd is None:
            return False
        st = os.fstat(self._fd)
        return stat.S_ISREG(st.st_mode) and st.st_size <= os.lseek(self._fd, 0, os.SEEK_CUR)


def _holes_of(fd: int, offset: int, size: int) -> Ranges | None:
    """The data ranges of ``size`` bytes of ``fd`` from ``offset``, relative to it, when they
    leave holes; ``None`` when the span is all data (or the filesystem cannot tell)."""
    ranges = file_data_ranges(fd, offset, offset + size)
    if ranges is None or sum(length for _, length in ranges) >= size:
        return None
    return tuple((start - offset, length) for start, length in ranges)


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
    fmt = magic + _FIELDS
    sink = _Sink(out)
    ino = _FIRST_INO
    subdirs: dict[str, int] = {}
    for e in tree:
        if e.kind is Kind.DIR and e.path:
            parent = e.parent
            subdirs[parent] = subdirs.get(parent, 0) + 1
    encoding = sys.getfilesystemencoding()  # what os.fsencode does, without a call per name
    type_bits = {k: k.type_bits for k in Kind}
    for group in _emission_order(tree):
        if len(group) == 1:
            primary = group[0]
            nlink = 2 + subdirs.get(primary.path, 0) if primary.kind is Kind.DIR else 1
        else:
            primary = next((e for e in group if e.kind is Kind.FILE), group[0])
            nlink = len(group)
        last = len(group) - 1
        for i, e in enumerate(group):
            meta = primary if e.kind is Kind.HARDLINK else e
            kind = meta.kind
            name = e.path.encode(encoding, "surrogateescape")
            body = None
            major = minor = check = 0
            links = nlink
            if kind is Kind.SYMLINK:
                body = (meta.target or "").encode(encoding, "surrogateescape")
                size, links = len(body), 1
                if crc:
                    check = sum(body)
            else:
                data = primary.data
                size = data.size if kind is Kind.FILE and i == last and data is not None else 0
                if crc and size:
                    check = _blob_checksum(data, e.path)  # type: ignore[arg-type]
                if kind is Kind.CHAR or kind is Kind.BLOCK:
                    major, minor = meta.rdev
            mode = type_bits[kind] | (meta.mode & 0o7777)
            uid, gid, mtime = meta.uid, meta.gid, meta.mtime
            if (ino | mode | uid | gid | mtime | size | major | minor | check) >> 32:
                header(magic=magic, ino=ino, mode=mode, uid=uid, gid=gid, nlink=links,
                       mtime=mtime, filesize=size, rdev=(major, minor), name=name,
                       check=check)  # raises, naming the field
            head = fmt % (ino, mode, uid, gid, links, mtime, size, 0, 0, major, minor,
                          len(name) + 1, check) + name
            sink.write(head + _NULS[(len(head) & 3) ^ 3])
            if body is not None:
                if size & 3:
                    body += _NULS[3 - (size & 3)]
                sink.write(body)
            elif size:
                sink.copy(primary.data, e.path)  # type: ignore[arg-type]
        ino += 1
    sink.write(header(magic=magic, ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0,
                      rdev=(0, 0), name=TRAILER.encode()))
    sink.close()
    return sink.written
