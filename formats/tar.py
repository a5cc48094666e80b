"""pax tar archives through libarchive, written from a :class:`~imgkit.tree.Tree`.

libarchive-c's high-level API cannot express symlinks, hard links or xattrs of entries that
do not exist on disk, so entries are built with its ffi layer directly. Data is streamed in
1 MiB blocks; only a compressor's window is held in memory.

Sparse files become pax sparse members (GNU format 1.0): only their data ranges are stored,
and GNU tar and bsdtar extract them with their holes. POSIX ACLs are written twice: as the
kernel's ``SCHILY.xattr.system.posix_acl_*`` value, which GNU tar ``--xattrs`` restores, and
handed to libarchive as ACL entries, which it writes as ``SCHILY.acl.*`` text, the record
bsdtar and GNU tar ``--acls`` restore. libarchive derives the ``user::``, ``group::`` and
``other::`` entries of that text from the mode, so an entry with an access ACL carries the
owning group's bits in its header mode (as bsdtar writes it); extraction applies the ACL,
whose mask then becomes the group bits, as ``stat`` shows them.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import libarchive
from libarchive import ffi
from libarchive.write import new_archive_write

from imgkit.errors import ImageError, InputError
from imgkit.holes import Ranges, blob_data_ranges, gaps, read_range
from imgkit.sources import posix_acl
from imgkit.tree import Blob, Entry, Kind, Tree

_CHUNK = 1 << 20
#: How much of a hole one write call covers (libarchive skips hole bytes without reading them).
_ZERO_SPAN = 64 << 20

ffi.ffi("entry_set_symlink_utf8", [ffi.c_archive_entry_p, ctypes.c_char_p], None)
ffi.ffi("entry_set_hardlink_utf8", [ffi.c_archive_entry_p, ctypes.c_char_p], None)
ffi.ffi("entry_xattr_add_entry",
        [ffi.c_archive_entry_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t], None)
ffi.ffi("entry_sparse_add_entry", [ffi.c_archive_entry_p, ctypes.c_int64, ctypes.c_int64], None)
ffi.ffi("entry_acl_add_entry", [ffi.c_archive_entry_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, ctypes.c_char_p], ctypes.c_int)

#: Our ACL tags and xattr names -> libarchive's ACL tags and types (archive_entry.h).
_LIBARCHIVE_TAG = {tag: number for number, tag in posix_acl.LIBARCHIVE_TAGS.items()}
_LIBARCHIVE_TYPE = {xattr: number for number, xattr in posix_acl.LIBARCHIVE_TYPES.items()}

#: Our compression names -> libarchive filter names.
FILTERS = {"none": None, "gzip": "gzip", "xz": "xz", "zstd": "zstd", "lz4": "lz4"}


@dataclass
class TarWritten:
    """What :func:`write_tar` could not store as it was."""

    skipped: list[str] = field(default_factory=list)
    """Paths left out: tar has no way to store a socket (GNU tar skips them too)."""
    warnings: list[str] = field(default_factory=list)


_U32 = 0xFFFFFFFF


def _check_values(e: Entry, meta: Entry) -> None:
    """Owners and device numbers must fit Linux's 32-bit ``uid_t``/``gid_t`` and device
    numbers, as the cpio writer requires: pax would store any number, and the kernel or
    ``tar -x`` would then truncate it to another owner or device."""
    values = [("uid", meta.uid), ("gid", meta.gid)]
    if e.kind in (Kind.CHAR, Kind.BLOCK):
        values += [("device major", e.rdev[0]), ("device minor", e.rdev[1])]
    for what, value in values:
        if not 0 <= value <= _U32:
            raise InputError(f"{e.origin or '/' + e.path}: {what} {value} does not fit in "
                             f"32 bits (expected 0..{_U32})")


def _header(e: Entry, primary: Entry | None, ranges: Ranges | None, acl_text: bool,
            warnings: list[str]) -> ffi.c_archive_entry_p:
    meta = primary if (e.kind is Kind.HARDLINK and primary is not None) else e
    _check_values(e, meta)
    p = ffi.entry_new()
    name = (e.path + "/" if e.kind is Kind.DIR else e.path) if e.path else "./"
    ffi.entry_update_pathname_utf8(p, name.encode())
    ffi.entry_set_mode(p, meta.st_mode)
    ffi.entry_set_uid(p, meta.uid)
    ffi.entry_set_gid(p, meta.gid)
    ffi.entry_set_mtime(p, meta.mtime, 0)
    if e.kind is Kind.FILE:
        ffi.entry_set_size(p, e.size)
        if ranges is not None:
            _add_sparse_map(p, ranges, e.size)
    else:
        ffi.entry_set_size(p, 0)
    if e.kind is Kind.SYMLINK:
        ffi.entry_set_symlink_utf8(p, (e.target or "").encode())
    elif e.kind is Kind.HARDLINK:
        ffi.entry_set_hardlink_utf8(p, (e.target or "").encode())
    elif e.kind in (Kind.CHAR, Kind.BLOCK):
        ffi.entry_set_rdevmajor(p, e.rdev[0])
        ffi.entry_set_rdevminor(p, e.rdev[1])
    for key, value in meta.xattrs:
        buf = ctypes.create_string_buffer(value, len(value))
        ffi.entry_xattr_add_entry(p, key.encode(), buf, len(value))
        if acl_text and key in _LIBARCHIVE_TYPE:
            _add_acl(p, _LIBARCHIVE_TYPE[key], value, e.path, warnings)
    return p


def _add_sparse_map(p, ranges: Ranges, size: int) -> None:
    """Declare the data ranges (the size must be set first). A trailing hole ends the map
    with an empty range at the end of the file, as GNU tar writes it; that also keeps a
    file that is all hole sparse instead of a map libarchive would drop as empty."""
    for offset, length in ranges:
        ffi.entry_sparse_add_entry(p, offset, length)
    end = ranges[-1][0] + ranges[-1][1] if ranges else 0
    if end < size:
        ffi.entry_sparse_add_entry(p, size, 0)


def _add_acl(p, acl_type: int, value: bytes, path: str, warnings: list[str]) -> None:
    """Hand libarchive the ACL of a ``system.posix_acl_*`` value, by numeric id (the ids
    are the image's; a name would be looked up on whichever host extracts it)."""
    try:
        entries = posix_acl.decode(value)
    except ValueError as exc:
        warnings.append(f"/{path}: malformed POSIX ACL xattr ({exc}): kept as an xattr only, "
                        "bsdtar will not restore it")
        return
    for acl in entries:
        qualifier = acl.qualifier if acl.tag in posix_acl.QUALIFIED else -1
        ffi.entry_acl_add_entry(p, acl_type, acl.perm, _LIBARCHIVE_TAG[acl.tag], qualifier, None)


@functools.cache
def _zero_span() -> ctypes.Array[ctypes.c_char]:
    """A span of zeros for holes: anonymous memory nobody writes, so it never becomes
    resident (the array keeps the mapping alive)."""
    return (ctypes.c_char * _ZERO_SPAN).from_buffer(mmap.mmap(-1, _ZERO_SPAN))


class _Buffer:
    """One reusable buffer that host files are read into and libarchive copies from: no
    ``bytes`` object made per read."""

    def __init__(self) -> None:
        self.raw = ctypes.create_string_buffer(_CHUNK)
        self.address = ctypes.addressof(self.raw)
        self.view = memoryview(self.raw).cast("B")


def _write_body(a, blob: Blob, ranges: Ranges | None, path: str, buf: _Buffer) -> None:
    """Stream the member's bytes. libarchive wants a sparse member's holes too (it skips
    them, not storing a byte); its data ranges are read from the host file alone."""
    if ranges is None:
        where = blob.host_range()
        if where is None:
            with blob.open() as src:
                while chunk := src.read(_CHUNK):
                    ffi.write_data(a, chunk, len(chunk))
            return
        fd = os.open(where[0], os.O_RDONLY | os.O_CLOEXEC)
        try:
            offset, left = where[1], blob.size
            while left:
                n = os.preadv(fd, [buf.view[:min(left, _CHUNK)]], offset)
                if not n:
                    raise ImageError(f"{path}: the file shrank while it was being archived")
                ffi.write_data(a, buf.address, n)
                offset += n
                left -= n
        finally:
            os.close(fd)
        return
    host, base = blob.host_range()  # type: ignore[misc]  # ranges imply a host file
    fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for hole, offset, length in gaps(ranges, blob.size):
            while hole:
                n = min(hole, _ZERO_SPAN)
                ffi.write_data(a, ctypes.addressof(_zero_span()), n)
                hole -= n
            for chunk in read_range(fd, base + offset, length, path):
                ffi.write_data(a, chunk, len(chunk))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _open_archive(out: BinaryIO, fmt: str, filt: str | None, options: str) -> Iterator[Any]:
    """A libarchive writer into ``out``, 1 MiB blocks, the last one not padded. A plain
    file is written by libarchive itself, through its descriptor; anything else gets the
    blocks through a Python callback."""
    fd = None
    if isinstance(out, (io.FileIO, io.BufferedWriter, io.BufferedRandom)):
        with contextlib.suppress(OSError, ValueError):
            out.flush()
            fd = out.fileno()
    if fd is None:
        def write_cb(data) -> int:
            out.write(data)
            return len(data)

        with libarchive.custom_writer(write_cb, fmt, filt, options=options,
                                      block_size=_CHUNK) as archive:
            yield archive._pointer
        return
    with new_archive_write(fmt, filt, options) as a:
        ffi.write_set_bytes_in_last_block(a, 1)
        ffi.write_set_bytes_per_block(a, _CHUNK)
        ffi.write_open_fd(a, fd)
        yield a
    if out.seekable():
        out.seek(0, os.SEEK_END)  # where libarchive left the descriptor


def write_tar(tree: Tree, out: BinaryIO, *, compress: str = "none", fmt: str = "pax_restricted",
              include_root: bool = True, acl_text: bool = True) -> TarWritten:
    """Write ``tree`` as a tar archive into ``out`` (left open); returns what was left out
    or stored differently.

    ``acl_text=False`` leaves out the ``SCHILY.acl`` records (the ACL stays in its xattr)
    and so keeps the mask in the header mode's group bits: for a reader that takes the
    mode from the header and the ACL from the xattr, as a filesystem builder does.
    """
    written = TarWritten()
    tree.validate()
    tree = tree.with_canonical_hardlinks()
    filt = FILTERS[compress]
    options = ""
    if compress == "gzip":
        options = "gzip:!timestamp"  # no time in the gzip header: reproducible
    elif compress == "xz":
        options = "xz:threads=0"

    buf = _Buffer()
    try:
        with _open_archive(out, fmt, filt, options) as a:
            for e in tree:
                if not e.path and not include_root:
                    continue
                if e.kind is Kind.SOCKET:
                    written.skipped.append(e.path)
                    continue
                primary = tree.get(e.target) if e.kind is Kind.HARDLINK and e.target else None
                has_data = e.kind is Kind.FILE and e.size > 0
                ranges = blob_data_ranges(e.data) if has_data else None  # type: ignore[arg-type]
                p = _header(e, primary, ranges, acl_text, written.warnings)
                try:
                    ffi.write_header(a, p)
                    if has_data:
                        _write_body(a, e.data, ranges, e.path, buf)  # type: ignore[arg-type]
                    ffi.write_finish_entry(a)
                finally:
                    ffi.entry_free(p)
    except libarchive.ArchiveError as exc:
        raise ImageError(f"tar writer failed: {exc}") from exc
    out.flush()
    return written


_F_SETPIPE_SZ = 1031   # Linux fcntl


def run_reading_tar(argv: list[str], tree: Tree, log: str, *, tool: str,
                    env: dict[str, str | None] | None = None,
                    sink: Callable[[BinaryIO], BinaryIO] | None = None,
                    defer: tuple[type[BaseException], ...] = ()) -> tuple[int, str]:
    """Run ``argv`` (mke2fs ``-d -``, ``mksquashfs - IMG -tar``) reading ``tree`` as a pax
    archive from its standard input, written as the archive goes; its exit status and what it
    printed (into ``log``). ``sink`` wraps the pipe (e.g. to count progress); an exception of
    ``defer`` while writing (the tool stopped reading) is raised only after a zero exit status,
    the tool's own message coming first. The tool is killed on any other exception; a source
    file that cannot be read is an :class:`InputError` naming ``tool``."""
    import fcntl
    import subprocess

    from imgkit import tools

    with open(log, "w+b") as out:
        proc = tools.spawn(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                           env=env)
        assert proc.stdin is not None
        with contextlib.suppress(OSError):   # fewer wake-ups for both sides of the pipe
            fcntl.fcntl(proc.stdin.fileno(), _F_SETPIPE_SZ, 1 << 20)
        failed: BaseException | None = None
        try:
            try:
                write_tar(tree, sink(proc.stdin) if sink else proc.stdin, acl_text=False)
            except defer as exc:
                failed = exc
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            code = proc.wait()
        except BaseException as exc:
            proc.kill()
            proc.wait()
            if isinstance(exc, OSError) and exc.filename:
                raise InputError(f"{tool}: cannot read {exc.filename!r}: {exc.strerror}",
                                 hint="make the source readable by the user building the "
                                      "image") from exc
            raise
        out.seek(0)
        text = out.read().decode(errors="replace")
    if code == 0 and failed is not None:
        raise failed
    return code, text
