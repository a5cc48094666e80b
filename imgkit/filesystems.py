"""The filesystem table: a type name -> the handler that measures, writes and reads it.

Every filesystem type imgkit can put in a ``[filesystems.NAME]`` table is one entry here,
with one contract (:class:`FilesystemType`): the config keys of its own (a dataclass of
:func:`imgkit.settings.setting` fields), the smallest size a tree needs, how to write a tree
(in place at an offset inside a disk file when the type can, else into a file of its own),
and how to describe and read back an existing one. The config takes its type names and
options from here and the build driver calls only this table, so a new type is one format
module, one entry and its tests.

Each built-in type is a module of :mod:`imgkit.fstypes`, listed here by name (:data:`BUILTIN`)
with the facts :func:`names` filters on, so checking a type name imports nothing: a type's
module and its option class are imported the first time a config names it (:func:`get`), and
its format module (pycdlib, construct...) only inside the method that needs it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from imgkit.errors import InputError
from imgkit.lazy import LazyEntry, LazyTable

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
    #: (command line, where it is written) -> it with ``${cmdline}``/``${verity:NAME}``
    #: replaced; boot paths pass every kernel command line they write through it.
    substitute: Callable[..., str] = lambda text, where="cmdline": text


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


class LazyType(LazyEntry):
    """A built-in filesystem type not imported yet: where its class is (``"module:Class"``) and
    the facts :func:`names` filters on, which the class must repeat."""

    __slots__ = ("partition", "boot_media")
    kind = "filesystem type"
    facts = __slots__

    def __init__(self, name: str, target: str, *, partition: bool = True,
                 boot_media: bool = False) -> None:
        super().__init__(name, target)
        self.partition, self.boot_media = partition, boot_media


#: The built-in types, in the order names are listed.
BUILTIN = (
    LazyType("vfat", "imgkit.fstypes.vfat:Vfat"),
    LazyType("ext4", "imgkit.fstypes.ext4:Ext4"),
    LazyType("iso9660", "imgkit.fstypes.iso9660:Iso9660", partition=False, boot_media=True),
    LazyType("squashfs", "imgkit.fstypes.squashfs:Squashfs"),
    LazyType("erofs", "imgkit.fstypes.erofs:Erofs"),
)

_TABLE = LazyTable("filesystem type", "types", BUILTIN)


def register(handler: FilesystemType) -> FilesystemType:
    """Add a filesystem type to the table (a name already taken is an error)."""
    return _TABLE.register(handler)


def unregister(name: str) -> None:
    _TABLE.unregister(name)


def names(*, partition: bool | None = None, boot_media: bool | None = None) -> tuple[str, ...]:
    """Registered type names, in registration order, optionally only those that fit (imports
    no type's module)."""
    return tuple(n for n, h in _TABLE.entries.items()
                 if (partition is None or h.partition == partition)
                 and (boot_media is None or h.boot_media == boot_media))


def get(name: str) -> FilesystemType:
    """The handler of type ``name``, its module imported on first use."""
    return _TABLE.get(name)


def handlers() -> tuple[FilesystemType, ...]:
    """Every registered handler, each module imported (for the reference)."""
    return _TABLE.loaded()


def report_image(fs: Any, kind: str, image_size: int, warnings: Sequence[str],
                 room: int | None, ctx: BuildContext) -> int:
    """For types written into a file of their own (squashfs, erofs): refuse an image bigger
    than the ``room`` it is given, report its warnings and size; returns the size."""
    if room is not None and image_size > room:
        raise InputError(f"filesystem {fs.name}: the {kind.split()[0]} image is {image_size:,} "
                         f"bytes, more than the {room:,} bytes it is given",
                         hint="give the partition more room or leave its size out")
    report_warnings(warnings, ctx)
    ctx.progress(f"filesystem {fs.name}: {kind}, {image_size:,} bytes")
    return image_size


def report_warnings(warnings: Sequence[str], ctx: BuildContext) -> None:
    """What a writer could not hold of its tree, for the user (a line each)."""
    for warning in warnings:
        ctx.progress(f"warning: {warning}")


def size_or_none(text: str | None, what: str) -> int | None:
    """A size key's bytes, or ``None`` when the key is not set."""
    from imgkit.sizes import parse_size
    return parse_size(text, what=what) if text is not None else None
