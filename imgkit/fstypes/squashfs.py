"""The ``squashfs`` entry of the filesystem table: ``mksquashfs`` fed a tar stream, the source
directory itself or pseudo definitions (:mod:`imgkit.formats.squashfs`)."""
from __future__ import annotations

from dataclasses import dataclass

from imgkit.errors import InputError
from imgkit.filesystems import FilesystemType, report_image, size_or_none
from imgkit.settings import SIZE, STR, setting


@dataclass(frozen=True)
class SquashfsOptions:
    compression: str = setting(STR, "gzip", choices=("gzip", "xz", "lz4", "zstd"),
                               help="data and metadata compression")
    block_size: str = setting(SIZE, "128K", help="data block size, a power of two from 4K to 1M")


class Squashfs(FilesystemType):
    """A compressed read-only squashfs by ``mksquashfs`` (:mod:`imgkit.formats.squashfs`):
    owners, modes and devices come from the tree, never from the host."""

    name = "squashfs"
    options = SquashfsOptions
    help = "squashfs, a compressed read-only root (owners, modes, devices from the tree)"
    packages = ("squashfs-tools",)
    tools = ("mksquashfs", "unsquashfs")

    def min_size(self, tree, fs, ctx, *, free=0):
        from imgkit.formats.squashfs import estimate_size
        return estimate_size(tree) + free

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        from imgkit.formats.squashfs import write_squashfs
        if offset:
            raise InputError("squashfs is written into a file of its own, not at an offset")
        o: SquashfsOptions = fs.options
        block = size_or_none(o.block_size, f"[filesystems.{fs.name}] block_size") or 0
        from imgkit import progress
        with progress.watching(path, f"filesystem {fs.name} ({o.compression})"):
            info = write_squashfs(tree, path, compression=o.compression, block_size=block,
                                  mtime=ctx.mtime, work=ctx.work)
        return report_image(fs, f"squashfs ({o.compression}, {info.tools})", info.size,
                            info.warnings, size, ctx)

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.squashfs import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.squashfs import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)

