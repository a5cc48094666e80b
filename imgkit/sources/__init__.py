"""Sources: where trees come from. A directory, an archive, a gen_init_cpio list, or a
container image (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:TAG]``).

:func:`load_source` tells them apart by the image prefix, what the path is and what the file
starts with, so a user can mix them on one command line; later sources override earlier ones.
"""
from __future__ import annotations

import os

from imgkit.errors import InputError
from imgkit.sources.directory import read_directory
from imgkit.sources.initramfs_list import looks_like_list, read_initramfs_list
from imgkit.tree import Tree

__all__ = ["load_source", "load_sources", "source_kind", "read_archive", "read_directory",
           "read_image", "read_initramfs_list"]


def source_kind(path: str) -> str:
    """``directory``, ``list``, ``archive`` or ``image``."""
    from imgkit.sources.oci import parse_image_source  # hashlib, json, urllib: on use only
    if parse_image_source(path) is not None:
        return "image"
    if os.path.isdir(path):
        return "directory"
    if not os.path.exists(path):
        raise InputError(f"source {path!r} does not exist",
                         hint="a source is a directory, an archive, a gen_init_cpio list file "
                         "or an image (oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE)")
    if looks_like_list(path):
        return "list"
    return "archive"


def load_source(path: str, *, host_owners: bool = False, default_mtime: int = 0) -> Tree:
    """Read one source into a new tree. ``SRC:/prefix`` is not parsed here (see CLI)."""
    kind = source_kind(path)
    if kind == "directory":
        tree = read_directory(path, host_owners=host_owners)
        if all(os.path.isfile(os.path.join(path, name)) for name in ("oci-layout", "index.json")):
            tree.warnings.append(f"{path} looks like an OCI image layout and is read as a plain "
                                 f"directory: write oci:{path} to read the image in it")
        return tree
    if kind == "list":
        return read_initramfs_list(path, default_mtime=default_mtime)
    if kind == "image":
        return read_image(path)
    return read_archive(path)


def read_archive(path: str, **kwargs) -> Tree:
    """See :func:`imgkit.sources.archive.read_archive` (imported on use: libarchive loads slowly)."""
    from imgkit.sources.archive import read_archive as _read_archive
    return _read_archive(path, **kwargs)


def read_image(spec: str, **kwargs: str) -> Tree:
    """See :func:`imgkit.sources.oci.read_image` (imported on use, as archives are)."""
    from imgkit.sources.oci import read_image as _read_image
    return _read_image(spec, **kwargs)


def load_sources(paths: list[str], *, host_owners: bool = False, default_mtime: int = 0) -> Tree:
    """Overlay every source in order, later ones winning."""
    tree = Tree(default_mtime=default_mtime)
    for p in paths:
        tree.overlay(load_source(p, host_owners=host_owners, default_mtime=default_mtime))
    return tree
