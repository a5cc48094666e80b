"""The in-memory tree model: every file of an image with all of its metadata.

Owners, modes, device numbers, times and xattrs live here, never on the host's disk, which is
why no writer needs root: a writer reads metadata from the :class:`Tree` and bytes from a lazy
:class:`Blob`.

Paths are POSIX, relative to the image root, without a leading slash (``"bin/sh"``); the root
directory itself is the entry ``""`` and always exists.
"""
from __future__ import annotations

import dataclasses
import enum
import io
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from imgkit.errors import InputError


class Kind(enum.Enum):
    """What an entry is. ``HARDLINK`` is an extra name for the regular file at ``target``."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    SOCKET = "socket"

    @property
    def type_bits(self) -> int:
        """The ``S_IF*`` bits of ``st_mode`` (a hard link is a regular file)."""
        return _TYPE_BITS[self]

    @classmethod
    def from_mode(cls, mode: int) -> Kind:
        """The kind whose ``S_IF*`` bits ``mode`` carries."""
        fmt = stat.S_IFMT(mode)
        for kind, bits in _TYPE_BITS.items():
            if bits == fmt and kind is not Kind.HARDLINK:
                return kind
        raise InputError(f"unknown file type in mode {mode:o}")


_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.HARDLINK: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
    Kind.SOCKET: stat.S_IFSOCK,
}


class Blob(Protocol):
    """Lazily opened file content. ``size`` is known without reading."""

    @property
    def size(self) -> int:
        """The content's length in bytes (holes included)."""
        ...

    def open(self) -> BinaryIO:
        """A fresh binary reader positioned at the content's first byte."""
        ...

    def host_range(self) -> tuple[str, int] | None:
        """``(host_path, offset)`` when the bytes sit contiguously in a host file.

        Writers use it for ``copy_file_range``/``sendfile``; ``None`` means read through
        :meth:`open`.
        """
        ...


@dataclass(frozen=True, slots=True)
class FileBlob:
    """Content of a host file, read only when a writer needs it."""

    path: str
    size: int
    offset: int = 0

    def open(self) -> BinaryIO:
        f = open(self.path, "rb")
        if self.offset:
            f.seek(self.offset)
        if self.offset or self.size != os.fstat(f.fileno()).st_size:
            return _Window(f, self.size)  # type: ignore[return-value]
        return f

    def host_range(self) -> tuple[str, int] | None:
        return (self.path, self.offset)


@dataclass(frozen=True, slots=True)
class BytesBlob:
    """Small content held in memory (generated files: configs, init scripts)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def host_range(self) -> tuple[str, int] | None:
        return None


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes of an open file from its current position."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._left)
        if n <= 0:
            return 0
        data = self._f.read(n)
        b[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the image and all of its metadata.

    ``mode`` holds permission bits only (``0o7777``); the file type is ``kind``.
    ``target`` is the symlink target, or for ``HARDLINK`` the tree path of the regular file
    it is another name for. ``rdev`` is ``(major, minor)`` for device nodes.
    """

    path: str
    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    target: str | None = None
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    data: Blob | None = field(default=None, compare=False)
    origin: str = field(default="", compare=False)
    """Where the entry came from (``file:line`` or a host path), for error messages."""
    keep_zeros: bool = False
    """Every block of this file is allocated in the image, all-zero ones too (a swapfile:
    ``swapon`` refuses a file with holes); by default a filesystem writer may store all-zero
    blocks as holes."""

    @property
    def st_mode(self) -> int:
        return self.kind.type_bits | (self.mode & 0o7777)

    @property
    def size(self) -> int:
        """Content size: file data, or the symlink target's length; 0 otherwise."""
        if self.kind is Kind.FILE:
            return self.data.size if self.data is not None else 0
        if self.kind is Kind.SYMLINK:
            return len(os.fsencode(self.target or ""))
        return 0

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> str:
        return posixpath.dirname(self.path)

    def replace(self, **changes: Any) -> Entry:
        return dataclasses.replace(self, **changes)


def normalize_path(path: str, *, origin: str = "") -> str:
    """Canonical tree path: no leading slash, no ``.`` parts; ``..`` is refused.

    A ``..`` that would climb out of the root is how archives escape their destination, so
    it is an error, not something to resolve.
    """
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            where = f" (from {origin})" if origin else ""
            raise InputError(
                f"path {path!r} contains '..'{where}",
                hint="archives and lists must not name paths outside the image root",
            )
        parts.append(part)
    return "/".join(parts)


def sort_key(path: str) -> tuple[str, ...]:
    """Canonical order: parents before children, siblings by byte order of their names."""
    return tuple(path.split("/")) if path else ()


class Tree:
    """A set of entries keyed by path, with overlay semantics and implied parents.

    Adding an entry whose path exists replaces it (later sources win). Replacing a directory
    by anything else drops what was below it, as an overlay whiteout would. Missing parent
    directories are created with ``dir_mode`` and owner 0:0.
    """

    def __init__(self, *, dir_mode: int = 0o755, default_mtime: int = 0) -> None:
        self._entries: dict[str, Entry] = {}
        self.dir_mode = dir_mode
        self.default_mtime = default_mtime
        self._entries[""] = Entry("", Kind.DIR, mode=dir_mode, mtime=default_mtime)
        self._children_index: dict[str, list[str]] | None = None
        self._order: list[str] | None = None  # canonical order, computed once per version
        #: What a source could not carry into the tree (one line each, for the user to see).
        self.warnings: list[str] = []
        #: How the container image this tree came from says to run it (an
        #: :class:`imgkit.sources.oci.ImageConfig`), or ``None``.
        self.image_config: Any = None

    # -- building -----------------------------------------------------------------------
    def add(self, entry: Entry) -> Entry:
        """Insert or replace ``entry`` (its path is normalized); returns the stored entry."""
        path = normalize_path(entry.path, origin=entry.origin)
        if path != entry.path:
            entry = entry.replace(path=path)
        if entry.kind is Kind.HARDLINK and entry.target is not None:
            entry = entry.replace(target=normalize_path(entry.target, origin=entry.origin))
        old = self._entries.get(path)
        if old is not None and old.kind is Kind.DIR and entry.kind is not Kind.DIR:
            self._remove_below(path)
        if path:
            self._ensure_parents(entry.parent, entry)
        self._entries[path] = entry
        self._invalidate()
        return entry

    def add_in_order(self, entry: Entry) -> None:
        """Insert an entry whose path is canonical and whose parent is already a directory.

        For sources that walk a hierarchy parent-first (a directory scan): it skips the path
        normalization and parent checks that :meth:`add` does for arbitrary input.
        """
        old = self._entries.get(entry.path)
        if old is not None and old.kind is Kind.DIR and entry.kind is not Kind.DIR:
            self._remove_below(entry.path)
        self._entries[entry.path] = entry
        self._invalidate()

    def update(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.add(entry)

    def overlay(self, other: Tree) -> None:
        """Lay ``other`` over this tree: its entries win, including its root's metadata."""
        self.warnings.extend(other.warnings)
        if other.image_config is not None:
            self.image_config = other.image_config
        if len(self._entries) == 1:  # only the root: nothing to merge, take the entries as they are
            self._entries = dict(other._entries)
            self._invalidate()
            return
        for entry in other:
            self.add(entry)

    def _invalidate(self) -> None:
        self._children_index = None
        self._order = None

    def remove(self, path: str) -> None:
        path = normalize_path(path)
        if path == "":
            raise InputError("cannot remove the root directory")
        self._remove_below(path)
        self._entries.pop(path, None)
        self._invalidate()

    def _remove_below(self, path: str) -> None:
        prefix = path + "/" if path else ""
        for p in [p for p in self._entries if p.startswith(prefix) and p != path]:
            del self._entries[p]

    def _ensure_parents(self, parent: str, child: Entry) -> None:
        missing: list[str] = []
        while parent and parent not in self._entries:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        existing = self._entries.get(parent)
        if existing is not None and existing.kind is not Kind.DIR:
            raise InputError(
                f"{child.path!r} needs {parent or '/'!r} to be a directory, "
                f"but it is a {existing.kind.value}",
                hint=f"entry from {child.origin}" if child.origin else None,
            )
        for p in reversed(missing):
            self._entries[p] = Entry(p, Kind.DIR, mode=self.dir_mode, mtime=self.default_mtime,
                                     origin=f"implied by {child.path}")

    # -- reading ------------------------------------------------------------------------
    def __contains__(self, path: str) -> bool:
        return normalize_path(path) in self._entries

    def __getitem__(self, path: str) -> Entry:
        return self._entries[normalize_path(path)]

    def get(self, path: str) -> Entry | None:
        return self._entries.get(normalize_path(path))

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        """Entries in canonical order (root first, parents before children)."""
        if self._order is None:
            self._order = sorted(self._entries, key=sort_key)
        for path in self._order:
            yield self._entries[path]

    def children(self, path: str) -> list[Entry]:
        """Direct children of the directory ``path``, in canonical order.

        Backed by an index built once per version of the tree, so walking every directory
        stays linear in the number of entries.
        """
        path = normalize_path(path)
        if self._children_index is None:
            index: dict[str, list[str]] = {}
            for p in self._entries:
                if p:
                    index.setdefault(posixpath.dirname(p), []).append(p)
            for names in index.values():
                names.sort(key=sort_key)
            self._children_index = index
        return [self._entries[p] for p in self._children_index.get(path, [])]

    def with_canonical_hardlinks(self) -> Tree:
        """A tree where each hard-link group's data sits on its first name in canonical order.

        Formats that extract in stream order (tar) need the file before its other names.
        """
        out = self.map(lambda e: e)
        for primary, extra in self.hardlink_groups().items():
            first = min([primary, *extra], key=sort_key)
            if first == primary:
                continue
            p = self._entries[primary]
            for name in [primary, *extra]:
                if name == first:
                    out._entries[name] = p.replace(path=name)
                else:
                    old = self._entries[name]
                    out._entries[name] = Entry(name, Kind.HARDLINK, mode=p.mode, uid=p.uid,
                                               gid=p.gid, mtime=p.mtime, target=first,
                                               origin=old.origin)
        return out

    @property
    def root(self) -> Entry:
        return self._entries[""]

    def data_size(self) -> int:
        """Total bytes of regular file content."""
        return sum(e.size for e in self._entries.values() if e.kind is Kind.FILE)

    def hardlink_groups(self) -> dict[str, list[str]]:
        """For every file with extra names: primary path -> the extra names (sorted)."""
        groups: dict[str, list[str]] = {}
        for e in self._entries.values():
            if e.kind is Kind.HARDLINK:
                groups.setdefault(e.target or "", []).append(e.path)
        for names in groups.values():
            names.sort(key=sort_key)
        return groups

    def validate(self) -> None:
        """Check cross-entry invariants writers rely on (hard links point at files)."""
        for e in self._entries.values():
            if e.kind is Kind.HARDLINK:
                primary = self._entries.get(e.target or "")
                if primary is None or primary.kind is not Kind.FILE:
                    raise InputError(
                        f"hard link {e.path!r} points at {e.target!r}, which is not a regular "
                        f"file in the tree" + (f" (from {e.origin})" if e.origin else ""))

    # -- whole-tree transforms ----------------------------------------------------------
    def map(self, fn: Callable[[Entry], Entry]) -> Tree:
        """A new tree with ``fn(entry)`` applied to every entry (root included)."""
        out = Tree(dir_mode=self.dir_mode, default_mtime=self.default_mtime)
        out._entries = {p: fn(e) for p, e in self._entries.items()}
        out._order = self._order  # same paths, same order
        out.warnings = list(self.warnings)
        out.image_config = self.image_config
        return out

    def clamp_mtimes(self, epoch: int) -> Tree:
        """Times newer than ``epoch`` become ``epoch`` (``SOURCE_DATE_EPOCH`` semantics)."""
        return self.map(lambda e: e.replace(mtime=epoch) if e.mtime > epoch else e)

    def with_root(self, **changes: Any) -> None:
        """Change the root directory's metadata (mode, owner, mtime)."""
        self._entries[""] = self._entries[""].replace(**changes)
        self._invalidate()

