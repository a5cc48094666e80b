"""From a list of sources and extra entries to one finished tree.

The CLI and the config-file build both describe a tree the same way; this module turns that
description into a :class:`Tree`: overlay the sources in order, add single entries, map ids,
clamp times. Every writer then takes the result as it is.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from .errors import InputError
from .idmap import IdMap, KEEP
from .sources import load_source
from .sources.initramfs_list import read_initramfs_list
from .tree import Entry, FileBlob, Kind, Tree


@dataclass(frozen=True)
class TreeSpec:
    """What a tree is made of.

    ``sources``: paths (directory, archive or list), each optionally ``PATH:/prefix`` to place
    it below a directory; ``entries``: extra lines in gen_init_cpio syntax; ``files``:
    ``(host_path, tree_path, mode or None)``.
    """

    sources: tuple[str, ...] = ()
    entries: tuple[str, ...] = ()
    files: tuple[tuple[str, str, int | None], ...] = ()
    idmap: IdMap = KEEP
    host_owners: bool = False
    mtime: int | None = None
    origin: str = "command line"


def split_prefix(source: str) -> tuple[str, str]:
    """``"rootfs.tar:/opt/x"`` -> (``"rootfs.tar"``, ``"opt/x"``); a plain path has no prefix."""
    if ":/" in source and not os.path.exists(source):
        path, prefix = source.split(":/", 1)
        return path, prefix
    return source, ""


def assemble(spec: TreeSpec) -> Tree:
    """Build the tree ``spec`` describes."""
    default_mtime = spec.mtime or 0
    tree = Tree(default_mtime=default_mtime)
    for source in spec.sources:
        path, prefix = split_prefix(source)
        sub = load_source(path, host_owners=spec.host_owners, default_mtime=default_mtime)
        if prefix:
            moved = Tree(default_mtime=default_mtime)
            root = sub.root
            moved.add(root.replace(path=prefix))
            for e in sub:
                if e.path:
                    target = e.target
                    if e.kind is Kind.HARDLINK and target is not None:
                        target = f"{prefix}/{target}"
                    moved.add(e.replace(path=f"{prefix}/{e.path}", target=target))
            sub = moved
        tree.overlay(sub)
    if spec.entries:
        with tempfile.NamedTemporaryFile("w", suffix=".list") as f:
            f.write("\n".join(spec.entries) + "\n")
            f.flush()
            try:
                extra = read_initramfs_list(f.name, default_mtime=default_mtime)
            except InputError as exc:
                raise InputError(str(exc).replace(f.name, f"{spec.origin} entry"),
                                 hint=exc.hint) from None
        for e in extra:
            if e.path:
                tree.add(e)
    for host, dest, mode in spec.files:
        try:
            st = os.stat(host)
        except OSError as exc:
            raise InputError(f"{spec.origin}: file {host!r} cannot be read: {exc.strerror}") from None
        tree.add(Entry(dest, Kind.FILE, mode=mode if mode is not None else (st.st_mode & 0o7777),
                       mtime=int(st.st_mtime), data=FileBlob(host, st.st_size), origin=host))
    tree.validate()
    return finish(tree, idmap=spec.idmap, mtime=spec.mtime)


def finish(tree: Tree, *, idmap: IdMap = KEEP, mtime: int | None = None) -> Tree:
    """Apply the id map and clamp times (the last step before any writer)."""
    tree = idmap.apply(tree)
    if mtime is not None:
        tree = tree.clamp_mtimes(mtime)
    return tree
