"""Write a finished tree as an archive file (cpio initramfs or tar), atomically.

The result says what the archive could not hold as the tree had it (``warnings``: what the
sources already lost, then what the format cannot store), one line each for the user to see.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from imgkit import progress
from imgkit.atomic import atomic_open
from imgkit.compress import check_method, compressed_writer
from imgkit.formats.cpio import unstorable, write_cpio
from imgkit.tree import Tree


@dataclass(frozen=True)
class ArchiveResult:
    path: str
    entries: int
    data_bytes: int
    archive_bytes: int
    compress: str
    skipped: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)


def write_initramfs(tree: Tree, out_path: str, *, compress: str = "zstd",
                    level: int | None = None, crc: bool = False) -> ArchiveResult:
    """Write ``tree`` as a (compressed) cpio newc initramfs at ``out_path``."""
    check_method(compress)
    with atomic_open(out_path) as f, progress.watching(
            f.name, f"initramfs {os.path.basename(out_path)}",
            tree.data_size() if compress == "none" else None):
        with compressed_writer(f, compress, level) as w:
            write_cpio(tree, w, crc=crc)
    return ArchiveResult(out_path, len(tree) - 1, tree.data_size(),
                         os.path.getsize(out_path), compress,
                         warnings=[*tree.warnings, *unstorable(tree)])


def write_tarball(tree: Tree, out_path: str, *, compress: str = "none") -> ArchiveResult:
    """Write ``tree`` as a pax tar at ``out_path``, compressed as the cpio is
    (:mod:`imgkit.compress`)."""
    from imgkit.formats.tar import write_tar  # not loaded for an initramfs
    check_method(compress)
    with atomic_open(out_path) as f, progress.watching(
            f.name, f"tar {os.path.basename(out_path)}",
            tree.data_size() if compress == "none" else None):
        written = write_tar(tree, f, compress=compress)
    return ArchiveResult(out_path, len(tree) - len(written.skipped), tree.data_size(),
                         os.path.getsize(out_path), compress, tuple(written.skipped),
                         warnings=[*tree.warnings, *written.warnings])
