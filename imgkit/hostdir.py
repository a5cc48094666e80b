"""Is a tree exactly the host directory it was read from?

Tools such as ``mke2fs -d`` and ``mksquashfs`` walk a directory faster than they read the
same tree streamed to them as an archive, and with no staging copy. They may be handed the
source directory itself only when it holds exactly the tree: the same names, each of the same
type, symlinks with the same targets, device nodes with the same numbers, hard links grouped
as in the tree and regular files whose blobs are the whole host file at the same relative
path. Metadata the tool takes from the host (owners, modes, times) can differ; each writer
corrects it afterwards (a debugfs pass, pseudo definitions). Anything else (generated files,
overlays, renamed paths, extra or missing names) is not the directory, and the writer falls
back to its general path.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from imgkit.tree import Entry, FileBlob, Kind, Tree


class HostStat:
    """The fields of an ``lstat`` the writers compare, under their :class:`os.stat_result`
    names. A tree of 100k files is scanned whole, and a stat result takes 600 bytes."""

    __slots__ = ("st_mode", "st_size", "st_rdev", "st_dev", "st_ino", "st_uid", "st_gid",
                 "st_atime_ns", "st_mtime_ns")

    def __init__(self, st: os.stat_result) -> None:
        self.st_mode, self.st_size, self.st_rdev = st.st_mode, st.st_size, st.st_rdev
        self.st_dev, self.st_ino, self.st_uid, self.st_gid = st.st_dev, st.st_ino, st.st_uid, st.st_gid
        self.st_atime_ns, self.st_mtime_ns = st.st_atime_ns, st.st_mtime_ns

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9


@dataclass(frozen=True, slots=True)
class HostEntry:
    """What a tool walking the directory will see of one entry: its ``lstat`` and xattr
    names."""

    st: HostStat
    xattrs: tuple[str, ...]


def scan(root: str) -> dict[str, HostEntry]:
    """``lstat`` and xattr names of everything under ``root``, by tree path (root is "")."""
    out: dict[str, HostEntry] = {}

    def names(path: str) -> tuple[str, ...]:
        try:
            return tuple(os.listxattr(path, follow_symlinks=False))
        except OSError:
            return ()

    out[""] = HostEntry(HostStat(os.lstat(root)), names(root))
    stack = [(root, "")]
    while stack:
        host_dir, rel_dir = stack.pop()
        with os.scandir(host_dir) as it:
            for item in it:
                rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
                st = item.stat(follow_symlinks=False)
                out[rel] = HostEntry(HostStat(st), names(item.path))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((item.path, rel))
    return out


def _root_of(tree: Tree) -> str | None:
    """The host directory the tree's first whole-file blob says the tree came from."""
    for e in tree:
        if e.kind is Kind.FILE and isinstance(e.data, FileBlob) and e.data.offset == 0:
            suffix = "/" + e.path
            if e.data.path.endswith(suffix):
                return e.data.path[:-len(suffix)] or "/"
            return None
    return None


XattrCheck = Callable[[str, Entry, HostEntry], bool]


def match(tree: Tree, *, xattrs_ok: XattrCheck | None = None
          ) -> tuple[str, dict[str, HostEntry]] | None:
    """The host directory holding exactly ``tree`` and its scan, or None.

    ``xattrs_ok(host_path, entry, host)`` says whether the tool copying the host entry's
    xattrs gives what the tree wants (or what the writer can correct); without it, any.
    """
    root = _root_of(tree)
    if root is None:
        return None
    prefix = root.rstrip("/") + "/"
    for e in tree:
        if e.kind is Kind.FILE and not (isinstance(e.data, FileBlob) and e.data.offset == 0
                                        and e.data.path == prefix + e.path):
            return None
    try:
        host = scan(root)
    except OSError:
        return None   # the general path will say what it cannot read
    if len(host) != len(tree) or not stat.S_ISDIR(host[""].st.st_mode):
        return None
    seen: dict[tuple[int, int], str] = {}
    links: list[tuple[Entry, tuple[int, int]]] = []
    for e in tree:
        h = host.get(e.path)
        if h is None or stat.S_IFMT(h.st.st_mode) != e.kind.type_bits:
            return None
        if e.kind is Kind.FILE and h.st.st_size != e.size:
            return None
        if e.kind in (Kind.CHAR, Kind.BLOCK) and (os.major(h.st.st_rdev),
                                                  os.minor(h.st.st_rdev)) != tuple(e.rdev):
            return None
        if e.kind is Kind.SYMLINK:
            try:
                if os.readlink(prefix + e.path) != (e.target or ""):
                    return None
            except OSError:
                return None
        if e.kind is Kind.HARDLINK:
            links.append((e, (h.st.st_dev, h.st.st_ino)))
        elif e.kind not in (Kind.DIR, Kind.SYMLINK) and e.path:
            key = (h.st.st_dev, h.st.st_ino)
            if key in seen:
                return None   # two tree files, one host inode: the tool would merge them
            seen[key] = e.path
        if xattrs_ok is not None and not xattrs_ok(prefix + e.path if e.path else root, e, h):
            return None
    if any(seen.get(key) != e.target for e, key in links):
        return None   # a tree hard link that is not one on the host, or the other way round
    return root, host
