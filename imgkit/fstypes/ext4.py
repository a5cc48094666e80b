"""The ``ext4`` entry of the filesystem table: ``mke2fs -d`` plus one ``debugfs`` pass."""
from __future__ import annotations

from dataclasses import dataclass

from imgkit.filesystems import FilesystemType
from imgkit.settings import STR, setting


@dataclass(frozen=True)
class Ext4Options:
    uuid: str | None = setting(STR, None, help="filesystem UUID; default: derived from the seed")


class Ext4(FilesystemType):
    """ext4 by ``mke2fs -d`` and one ``debugfs`` pass (:mod:`imgkit.formats.ext4`)."""

    name = "ext4"
    options = Ext4Options
    help = "ext4, e.g. a root filesystem; made in place in its partition"
    in_place = True
    packages = ("e2fsprogs",)
    tools = ("mke2fs", "debugfs")

    def min_size(self, tree, fs, ctx, *, free=0):
        from imgkit.formats.ext4 import estimate_size
        return estimate_size(tree) + free

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        from imgkit.formats.ext4 import write_ext4
        info = write_ext4(tree, path, size=None if size is None else size - size % 4096,
                          offset=offset or None, label=fs.label, seed=ctx.seed("ext4", fs.name),
                          uuid=fs.options.uuid, mtime_epoch=ctx.mtime)
        where = f", at offset {offset}" if offset else ""
        ctx.progress(f"filesystem {fs.name}: ext4 ({info.tools}), {info.size:,} bytes{where}")
        return info.size

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.ext4.read import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.ext4.read import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)
