"""The ``erofs`` entry of the filesystem table: an uncompressed erofs written by imgkit itself."""
from __future__ import annotations

from dataclasses import dataclass

from imgkit.errors import InputError
from imgkit.filesystems import FilesystemType, report_image
from imgkit.settings import BOOL, STR, setting


@dataclass(frozen=True)
class ErofsOptions:
    uuid: str | None = setting(STR, None, help="volume UUID; default: derived from the seed")
    checksum: bool = setting(BOOL, True, help="store the superblock crc32c (the sb_csum feature)")


class Erofs(FilesystemType):
    """A read-only erofs, uncompressed, laid out from the tree (:mod:`imgkit.formats.erofs`):
    owners, modes, devices, times and xattrs come from the tree, no tool runs."""

    name = "erofs"
    options = ErofsOptions
    help = "erofs, an uncompressed read-only root (owners, modes, devices, xattrs from the tree)"
    packages = ("erofs-utils",)     # fsck.erofs / dump.erofs check it; writing needs none

    def min_size(self, tree, fs, ctx, *, free=0):
        from imgkit.formats.erofs import estimate_size
        return estimate_size(tree) + free

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        from imgkit.formats.erofs import write_erofs
        if offset:
            raise InputError("erofs is written into a file of its own, not at an offset")
        o: ErofsOptions = fs.options
        from imgkit import progress
        with progress.watching(path, f"filesystem {fs.name}", tree.data_size()):
            info = write_erofs(tree, path, label=fs.label, uuid=o.uuid,
                               seed=ctx.seed("erofs", fs.name), checksum=o.checksum)
        return report_image(fs, "erofs", info.size, info.warnings, size, ctx)

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.erofs import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.erofs import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)
