"""pax tar archives through libarchive, written from a :class:`~imgkit.tree.Tree`.

libarchive-c's high-level API cannot express symlinks, hard links or xattrs of entries that
do not exist on disk, so entries are built with its ffi layer directly. Data is streamed in
1 MiB blocks; only a compressor's window is held in memory.
"""
from __future__ import annotations

import ctypes
from typing import BinaryIO

import libarchive
from libarchive import ffi

from imgkit.errors import ImageError
from imgkit.tree import Entry, Kind, Tree

_CHUNK = 1 << 20

ffi.ffi("entry_set_symlink_utf8", [ffi.c_archive_entry_p, ctypes.c_char_p], None)
ffi.ffi("entry_set_hardlink_utf8", [ffi.c_archive_entry_p, ctypes.c_char_p], None)
ffi.ffi("entry_xattr_add_entry",
        [ffi.c_archive_entry_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t], None)

#: Our compression names -> libarchive filter names.
FILTERS = {"none": None, "gzip": "gzip", "xz": "xz", "zstd": "zstd", "lz4": "lz4"}


def _header(e: Entry, primary: Entry | None) -> "ffi.c_archive_entry_p":
    p = ffi.entry_new()
    meta = primary if (e.kind is Kind.HARDLINK and primary is not None) else e
    name = (e.path + "/" if e.kind is Kind.DIR else e.path) if e.path else "./"
    ffi.entry_update_pathname_utf8(p, name.encode())
    ffi.entry_set_mode(p, meta.st_mode)
    ffi.entry_set_uid(p, meta.uid)
    ffi.entry_set_gid(p, meta.gid)
    ffi.entry_set_mtime(p, meta.mtime, 0)
    if e.kind is Kind.FILE:
        ffi.entry_set_size(p, e.size)
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
    return p


def write_tar(tree: Tree, out: BinaryIO, *, compress: str = "none", fmt: str = "pax_restricted",
              include_root: bool = True) -> list[str]:
    """Write ``tree`` as a tar archive into ``out`` (left open).

    Returns the paths left out: tar has no way to store a socket (GNU tar skips them too).
    """
    skipped: list[str] = []
    tree.validate()
    tree = tree.with_canonical_hardlinks()
    filt = FILTERS[compress]
    options = ""
    if compress == "gzip":
        options = "gzip:!timestamp"  # no time in the gzip header: reproducible
    elif compress == "xz":
        options = "xz:threads=0"

    def write_cb(data) -> int:
        out.write(data)
        return len(data)

    try:
        with libarchive.custom_writer(write_cb, fmt, filt, options=options,
                                      block_size=_CHUNK) as archive:
            a = archive._pointer
            for e in tree:
                if not e.path and not include_root:
                    continue
                if e.kind is Kind.SOCKET:
                    skipped.append(e.path)
                    continue
                primary = tree.get(e.target) if e.kind is Kind.HARDLINK and e.target else None
                p = _header(e, primary)
                try:
                    ffi.write_header(a, p)
                    if e.kind is Kind.FILE and e.size:
                        with e.data.open() as src:  # type: ignore[union-attr]
                            while chunk := src.read(_CHUNK):
                                ffi.write_data(a, chunk, len(chunk))
                    ffi.write_finish_entry(a)
                finally:
                    ffi.entry_free(p)
    except libarchive.ArchiveError as exc:
        raise ImageError(f"tar writer failed: {exc}") from exc
    out.flush()
    return skipped
