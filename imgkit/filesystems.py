"""The filesystem table: a type name -> the handler that measures, writes and reads it.

Every filesystem type imgkit can put in a ``[filesystems.NAME]`` table is one entry here,
with one contract (:class:`FilesystemType`): the config keys of its own (a dataclass of
:func:`imgkit.settings.setting` fields), the smallest size a tree needs, how to write a tree
(in place at an offset inside a disk file when the type can, else into a file of its own),
and how to describe and read back an existing one. The config takes its type names and
options from here and the build driver calls only this table, so a new type is one format
module, one entry and its tests.

Nothing heavy is imported here: each handler imports its format module inside the method
that needs it, so loading a config or printing ``--help`` costs no pycdlib or construct.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from imgkit.errors import InputError
from imgkit.settings import INT, SIZE, STR, setting

if TYPE_CHECKING:
    from imgkit.bootloaders.table import EltoritoEntry
    from imgkit.config import FilesystemConfig
    from imgkit.tree import Tree


@dataclass(frozen=True)
class BuildContext:
    """What a filesystem or boot path handler may ask of the build: references resolved to
    host files, seeds derived from the config's seed, the clamp time, a private work
    directory and a progress callback. Handlers get this, never the whole driver."""

    config_path: str
    work: str
    mtime: int | None
    resolve: Callable[[str, str], str]  # (reference or host path, where it is written) -> path
    seed: Callable[..., str]  # (*purpose) -> hex digest derived from the config's seed
    progress: Callable[[str], None]


@dataclass(frozen=True)
class NoOptions:
    """A type without keys of its own."""


class FilesystemType:
    """The contract of one filesystem type; subclasses are registered with :func:`register`."""

    name: ClassVar[str]
    #: The dataclass of the type's own keys in ``[filesystems.NAME]`` (declared with ``setting``).
    options: ClassVar[type] = NoOptions
    help: ClassVar[str] = ""
    #: Whether it can be the content of a disk partition.
    partition: ClassVar[bool] = True
    #: Whether :meth:`write` can write at an offset inside an existing disk file.
    in_place: ClassVar[bool] = False
    #: Whether :meth:`write_boot_media` can make it a bootable medium (El Torito entries).
    boot_media: ClassVar[bool] = False
    #: Debian packages and host tools it needs.
    packages: ClassVar[tuple[str, ...]] = ()
    tools: ClassVar[tuple[str, ...]] = ()

    def min_size(self, tree: Tree, fs: FilesystemConfig, ctx: BuildContext, *, free: int = 0) -> int:
        """The smallest size in bytes holding ``tree`` with ``free`` bytes left over."""
        raise InputError(f"filesystem type {self.name!r} cannot measure its size",
                         hint="give the filesystem an explicit size")

    def write(self, tree: Tree, path: str, offset: int, size: int | None, fs: FilesystemConfig,
              ctx: BuildContext, *, disk_offset: int | None = None) -> int:
        """Write ``tree`` as this filesystem and return its size in bytes.

        With ``in_place``, ``path`` may be an existing disk file and ``offset`` where the
        filesystem starts in it; otherwise ``offset`` is 0 and ``path`` a new file the driver
        copies into the disk. ``size`` is the size to fill (``None``: the type's own size);
        ``disk_offset`` is where on the disk the filesystem will start, for types that
        record it (a FAT's hidden sectors).
        """
        raise NotImplementedError

    def write_boot_media(self, tree: Tree, path: str, entries: list[EltoritoEntry], *,
                         label: str, hybrid: bool, ctx: BuildContext) -> int:
        """Write ``tree`` as a bootable medium with ``entries`` (only when ``boot_media``)."""
        raise InputError(f"filesystem type {self.name!r} cannot carry El Torito boot entries")

    def describe(self, f: BinaryIO, offset: int = 0, size: int | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def open_tree(self, path: str, offset: int = 0, size: int | None = None, *,
                  what: str | None = None, keep: list | None = None) -> Tree:
        """The files of the filesystem at ``offset``; ``what`` names it in errors, ``keep``
        holds objects (a temporary raw copy of a qcow2) the tree's blobs need."""
        raise NotImplementedError


_TABLE: dict[str, FilesystemType] = {}


def register(handler: FilesystemType) -> FilesystemType:
    """Add a filesystem type to the table (a name already taken is an error)."""
    if handler.name in _TABLE:
        raise InputError(f"filesystem type {handler.name!r} is already registered")
    _TABLE[handler.name] = handler
    return handler


def unregister(name: str) -> None:
    _TABLE.pop(name, None)


def names(*, partition: bool | None = None, boot_media: bool | None = None) -> tuple[str, ...]:
    """Registered type names, in registration order, optionally only those that fit."""
    return tuple(n for n, h in _TABLE.items()
                 if (partition is None or h.partition == partition)
                 and (boot_media is None or h.boot_media == boot_media))


def get(name: str) -> FilesystemType:
    try:
        return _TABLE[name]
    except KeyError:
        raise InputError(f"unknown filesystem type {name!r}",
                         hint=f"registered types: {', '.join(_TABLE)}") from None


def handlers() -> tuple[FilesystemType, ...]:
    return tuple(_TABLE.values())


def _size_or_none(text: str | None, what: str) -> int | None:
    from imgkit.sizes import parse_size
    return parse_size(text, what=what) if text is not None else None


# -- vfat -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VfatOptions:
    fat_type: int | None = setting(INT, None, choices=(12, 16, 32),
                                   help="FAT12, FAT16 or FAT32; default: chosen by size")
    cluster_size: str | None = setting(SIZE, None, help="bytes per cluster (e.g. \"4K\"); "
                                       "default: chosen by size")
    uuid: str | None = setting(STR, None, help="volume serial \"XXXX-XXXX\"; default: derived "
                               "from the seed")


def fat_serial(text: str | None, seed: str) -> int:
    """A FAT volume serial: ``"ABCD-1234"`` as given, else derived from the build seed."""
    if text is None:
        return int(seed[:8], 16)
    digits = text.replace("-", "")
    if len(digits) != 8 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise InputError(f"vfat uuid {text!r}: expected a serial like 'ABCD-1234' (8 hex digits)")
    return int(digits, 16)


class Vfat(FilesystemType):
    """FAT12/16/32 by imgkit's one-pass writer (:mod:`imgkit.formats.fat`)."""

    name = "vfat"
    options = VfatOptions
    help = "FAT12/16/32, e.g. an EFI system partition"
    packages = ("dosfstools", "mtools")

    def _planning(self, fs: FilesystemConfig) -> dict[str, Any]:
        o: VfatOptions = fs.options
        return dict(fat_type=o.fat_type, label=fs.label, skip_special=True,
                    cluster_size=_size_or_none(o.cluster_size,
                                               f"[filesystems.{fs.name}] cluster_size"))

    def min_size(self, tree, fs, ctx, *, free=0):
        from imgkit.formats.fat import plan_fat
        return plan_fat(tree, size=None, slack=free, **self._planning(fs)).size

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        from imgkit.formats.fat import write_fat
        if offset:
            raise InputError("vfat is written into a file of its own, not at an offset")
        plan = write_fat(tree, path, size=size, serial=fat_serial(fs.options.uuid, ctx.seed("fat", fs.name)),
                         hidden_sectors=(disk_offset or 0) // 512, **self._planning(fs))
        ctx.progress(f"filesystem {fs.name}: FAT{plan.fat_type}, {plan.size:,} bytes")
        return plan.size

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.fat.read import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.fat.read import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)


# -- ext4 -----------------------------------------------------------------------------------

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
        ctx.progress(f"filesystem {fs.name}: ext4, {info.size:,} bytes{where}")
        return info.size

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.ext4.read import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.ext4.read import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)


# -- iso9660 --------------------------------------------------------------------------------

class Iso9660(FilesystemType):
    """ISO 9660 with Rock Ridge and Joliet through pycdlib (:mod:`imgkit.formats.iso9660`)."""

    name = "iso9660"
    help = "ISO 9660 (Rock Ridge, Joliet); bootable images come from an [iso] table"
    partition = False
    boot_media = True
    packages = ("xorriso",)

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        from imgkit.formats.iso9660 import write_iso
        info = write_iso(tree, path, volume_id=fs.label or "IMGKIT", mtime_epoch=ctx.mtime,
                         seed=ctx.seed("iso", fs.name))
        return info.size

    def write_boot_media(self, tree, path, entries, *, label, hybrid, ctx):
        from imgkit.formats.iso9660 import IsoBoot, write_iso
        boot = None
        bios = [e for e in entries if e.platform == "bios"]
        efi = [e for e in entries if e.platform == "uefi"]
        if len(bios) > 1 or len(efi) > 1:
            raise InputError("an ISO takes at most one BIOS and one UEFI El Torito entry")
        if entries:
            boot = IsoBoot(bios_image=bios[0].image if bios else None,
                           bios_load_size=bios[0].load_size if bios else 4,
                           boot_info_table=bios[0].boot_info_table if bios else True,
                           efi_image=efi[0].image if efi else None,
                           isohybrid=hybrid and bool(bios), isohybrid_efi=hybrid and bool(efi))
        info = write_iso(tree, path, volume_id=label, mtime_epoch=ctx.mtime, boot=boot,
                         seed=ctx.seed("iso"))
        return info.size

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.iso9660.read import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.iso9660.read import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)


# -- squashfs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SquashfsOptions:
    compression: str = setting(STR, "gzip", choices=("gzip", "xz", "lz4", "zstd"),
                               help="data and metadata compression")
    block_size: str = setting(SIZE, "128K", help="data block size, a power of two from 4K to 1M")


class Squashfs(FilesystemType):
    """A compressed read-only squashfs by ``mksquashfs`` fed only pseudo definitions
    (:mod:`imgkit.formats.squashfs`), so owners, modes and devices come from the tree."""

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
        block = _size_or_none(o.block_size, f"[filesystems.{fs.name}] block_size") or 0
        info = write_squashfs(tree, path, compression=o.compression, block_size=block,
                              mtime=ctx.mtime, work=ctx.work)
        if size is not None and info.size > size:
            raise InputError(f"filesystem {fs.name}: the squashfs image is {info.size:,} bytes, "
                             f"more than the {size:,} bytes it is given",
                             hint="give the partition more room or leave its size out")
        for warning in info.warnings:
            ctx.progress(f"warning: {warning}")
        ctx.progress(f"filesystem {fs.name}: squashfs ({o.compression}), {info.size:,} bytes")
        return info.size

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.squashfs import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.squashfs import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)


for _handler in (Vfat(), Ext4(), Iso9660(), Squashfs()):
    register(_handler)
