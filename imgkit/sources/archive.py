"""Any archive libarchive reads (tar in every compression, cpio, zip, ``docker export``).

Owners, modes, times and device numbers come from the archive's headers. File data is
streamed once into a spool file beside the other temporary data, so the tree's blobs can be
re-read lazily by writers without holding the archive in memory. Paths with ``..`` are
refused: that is how archives escape their destination.
"""
from __future__ import annotations

import os
import stat
import tempfile
import weakref
from dataclasses import dataclass
from typing import BinaryIO

import libarchive

from imgkit.errors import ImageError, InputError
from imgkit.tree import Entry, Kind, Tree, _Window, normalize_path


class Spool:
    """One temporary file holding the data of every file of an archive, back to back."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="imgkit-spool-")
        self._f = os.fdopen(fd, "wb")
        self.size = 0
        weakref.finalize(self, _unlink, self.path)

    def append(self, chunks) -> tuple[int, int]:
        start = self.size
        for chunk in chunks:
            self._f.write(chunk)
            self.size += len(chunk)
        return start, self.size - start

    def seal(self) -> None:
        self._f.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class SpoolBlob:
    spool: Spool
    offset: int
    size: int

    def open(self) -> BinaryIO:
        f = open(self.spool.path, "rb")
        f.seek(self.offset)
        return _Window(f, self.size)  # type: ignore[return-value]

    def host_range(self) -> tuple[str, int] | None:
        return (self.spool.path, self.offset)


_TYPES = {
    stat.S_IFREG: Kind.FILE, stat.S_IFDIR: Kind.DIR, stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFCHR: Kind.CHAR, stat.S_IFBLK: Kind.BLOCK, stat.S_IFIFO: Kind.FIFO,
    stat.S_IFSOCK: Kind.SOCKET,
}


def read_archive(path: str, *, prefix: str = "") -> Tree:
    """Read every entry of the archive at ``path`` into a new :class:`Tree`."""
    if not os.path.isfile(path):
        raise InputError(f"source archive {path!r} does not exist")
    tree = Tree()
    spool = Spool()
    try:
        with libarchive.file_reader(path) as archive:
            for n, ae in enumerate(archive, 1):
                name = ae.pathname
                origin = f"{path}: entry {n} {name!r}"
                rel = normalize_path(f"{prefix}/{name}", origin=origin)
                mode = ae.mode
                fields = dict(path=rel, mode=stat.S_IMODE(mode), uid=ae.uid, gid=ae.gid,
                              mtime=int(ae.mtime or 0), origin=origin)
                if ae.islnk:
                    target = normalize_path(f"{prefix}/{ae.linkpath}", origin=origin)
                    tree.add(Entry(kind=Kind.HARDLINK, target=target, **fields))
                    continue
                kind = _TYPES.get(stat.S_IFMT(mode)) or (Kind.FILE if ae.isreg else None)
                if kind is None:
                    raise ImageError(f"{origin}: unsupported file type (mode {mode:o})")
                if kind is Kind.FILE:
                    offset, size = spool.append(ae.get_blocks())
                    fields["data"] = SpoolBlob(spool, offset, size)
                elif kind is Kind.SYMLINK:
                    fields["target"] = ae.linkpath
                elif kind in (Kind.CHAR, Kind.BLOCK):
                    fields["rdev"] = (ae.rdevmajor, ae.rdevminor)
                if rel == "":
                    if kind is Kind.DIR:
                        tree.with_root(mode=fields["mode"], uid=ae.uid, gid=ae.gid,
                                       mtime=fields["mtime"])
                    continue
                tree.add(Entry(kind=kind, **fields))
    except libarchive.ArchiveError as exc:
        raise ImageError(f"cannot read archive {path!r}: {exc}",
                         hint="is it a tar, cpio, zip or another format libarchive reads?") from exc
    finally:
        spool.seal()
    tree.validate()
    return tree
