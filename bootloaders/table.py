"""The boot path table: a boot path's name -> what it contributes to an image.

A boot path (syslinux, isolinux, systemd-boot, a UKI as the removable-media binary...)
contributes through one contract (:class:`BootPath`): its config keys (a dataclass of
:func:`imgkit.settings.setting` fields), files into the filesystem whose table holds those
keys (``[filesystems.NAME] syslinux = {...}``), raw regions on a disk (MBR boot code, the
content of a BIOS-boot partition), an El Torito entry for an ISO, and an install step run
after the disk is written. It says which firmware it serves and which filesystem types it
can live in. ``[disk] bios`` and ``[iso] bios``/``efi`` accept any registered path that can
do what they need, and the build driver calls only these methods, so a new boot path is one
module, one entry here and its tests.

Each built-in path lives in its own module and is listed here by name (:data:`BUILTIN`) with
what choosing among paths needs to know (firmware, where it can go), so listing and checking
names imports nothing: a path's module, its option classes and its tools are imported the first
time a config names it (:func:`get`). Loading a config that names no boot path imports no
bootloader code.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from imgkit.errors import InputError
from imgkit.lazy import LazyEntry, LazyTable

if TYPE_CHECKING:
    from imgkit.disk.layout import PartitionSpec, Plan, PlannedPartition
    from imgkit.filesystems import BuildContext
    from imgkit.tree import Tree

FIRMWARES = ("bios", "uefi")


@dataclass(frozen=True)
class DiskBoot:
    """What a boot path writes on a disk outside filesystems: the MBR boot code (at most
    440 bytes at offset 0), other raw ``(offset, bytes)`` regions, and host files that are
    whole partitions' content (a BIOS-boot partition), by partition name."""

    boot_code: bytes | None = None
    regions: tuple[tuple[int, bytes], ...] = ()
    contents: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EltoritoEntry:
    """An El Torito boot entry: ``image`` is a path in ``files``, which go into the ISO."""

    platform: str  # "bios" | "uefi"
    image: str
    files: Tree
    load_size: int | None = None  # 512-byte sectors the BIOS loads; None: the whole image
    boot_info_table: bool = False
    #: Makes the written medium (a path) boot as a disk too, in place of the medium's own
    #: isohybrid (which only ISOLINUX's image can use); None: the medium's own.
    hybrid: Callable[[str], None] | None = None


@dataclass(frozen=True)
class BootChoice:
    """A boot path picked in the config (``[iso] bios``/``efi``) with its parsed options."""

    path: str
    options: Any


@dataclass(frozen=True)
class NoOptions:
    """A boot path without keys of its own."""


class BootPath:
    """The contract of one boot path; instances are registered with :func:`register`."""

    name: ClassVar[str]
    firmware: ClassVar[str]  # one of FIRMWARES
    #: The dataclass of its config keys.
    options: ClassVar[type] = NoOptions
    help: ClassVar[str] = ""
    #: Filesystem types whose ``[filesystems.NAME]`` may hold its keys (as ``NAME = {...}``);
    #: empty: it does not live in a filesystem.
    fs_types: ClassVar[tuple[str, ...]] = ()
    #: It can be ``[disk] bios``/``efi`` (writes regions or runs an install step on a disk).
    on_disk: ClassVar[bool] = False
    #: It can make an El Torito entry (``[iso] bios``/``efi``).
    eltorito_capable: ClassVar[bool] = False
    #: On a disk, the partition holding its filesystem is marked bootable (MBR active flag,
    #: GPT legacy-BIOS-bootable attribute).
    bootable_holder: ClassVar[bool] = False
    #: The option a bare string sets (``[iso] efi = "uki:main"`` is ``{ binary = ... }``).
    shorthand: ClassVar[str | None] = None
    packages: ClassVar[tuple[str, ...]] = ()

    def fs_files(self, options: Any, ctx: BuildContext, where: str) -> Tree | None:
        """Files into the filesystem whose table holds ``options``."""
        return None

    def fs_room(self, options: Any) -> int:
        """Free bytes :meth:`install` needs in that filesystem."""
        return 0

    def disk_regions(self, options: Any, table: str, plan: Plan, holder: str | None,
                     ctx: BuildContext) -> DiskBoot:
        """Raw bytes on the disk; ``holder`` is the partition holding its filesystem."""
        return DiskBoot()

    def extra_partitions(self, options: Any, table: str,
                         partitions: tuple[PartitionSpec, ...]) -> tuple[PartitionSpec, ...]:
        """Partitions it needs that ``partitions`` (the declared ones) lack; added after them."""
        return ()

    def install(self, options: Any, disk: str, holder: PlannedPartition | None,
                ctx: BuildContext) -> None:
        """A step run on the written (raw) disk image."""

    def eltorito(self, options: Any, ctx: BuildContext, where: str) -> EltoritoEntry:
        raise InputError(f"boot path {self.name!r} cannot make an El Torito entry")


class LazyPath(LazyEntry):
    """A built-in boot path not imported yet: where its class is (``"module:Class"``) and the
    facts :func:`names` filters on, which the class must repeat."""

    __slots__ = ("firmware", "fs_types", "on_disk", "eltorito_capable")
    kind = "boot path"
    facts = __slots__

    def __init__(self, name: str, target: str, *, firmware: str, fs_types: tuple[str, ...] = (),
                 on_disk: bool = False, eltorito_capable: bool = False) -> None:
        super().__init__(name, target)
        self.firmware, self.fs_types = firmware, fs_types
        self.on_disk, self.eltorito_capable = on_disk, eltorito_capable


#: The built-in boot paths, in the order names are listed.
BUILTIN = (
    LazyPath("syslinux", "imgkit.bootloaders.syslinux:Syslinux", firmware="bios",
             fs_types=("vfat",), on_disk=True),
    LazyPath("isolinux", "imgkit.bootloaders.syslinux:Isolinux", firmware="bios",
             eltorito_capable=True),
    LazyPath("systemd_boot", "imgkit.bootloaders.systemd_boot:SystemdBoot", firmware="uefi",
             fs_types=("vfat",)),
    LazyPath("uki", "imgkit.bootloaders.systemd_boot:Uki", firmware="uefi", fs_types=("vfat",),
             eltorito_capable=True),
    LazyPath("grub", "imgkit.bootloaders.grub:Grub", firmware="bios", fs_types=("vfat", "ext4"),
             on_disk=True, eltorito_capable=True),
    LazyPath("grub_efi", "imgkit.bootloaders.grub:GrubEfi", firmware="uefi",
             eltorito_capable=True),
)

_TABLE = LazyTable("boot path", "boot paths", BUILTIN)


def register(path: BootPath) -> BootPath:
    """Add a boot path to the table (a name already taken is an error)."""
    if path.name not in _TABLE.entries and path.firmware not in FIRMWARES:
        raise InputError(f"boot path {path.name!r}: firmware {path.firmware!r} is not one of "
                         f"{', '.join(FIRMWARES)}")
    return _TABLE.register(path)


def unregister(name: str) -> None:
    _TABLE.unregister(name)


def get(name: str) -> BootPath:
    """The boot path ``name``, its module imported on first use."""
    return _TABLE.get(name)


def names(*, firmware: str | None = None, on_disk: bool | None = None,
          eltorito: bool | None = None, in_filesystems: bool | None = None) -> tuple[str, ...]:
    """Registered boot path names, in registration order, optionally only those that fit
    (imports no boot path's module)."""
    return tuple(n for n, p in _TABLE.entries.items()
                 if (firmware is None or p.firmware == firmware)
                 and (on_disk is None or p.on_disk == on_disk)
                 and (eltorito is None or p.eltorito_capable == eltorito)
                 and (in_filesystems is None or bool(p.fs_types) == in_filesystems))


def paths() -> tuple[BootPath, ...]:
    """Every registered boot path, each module imported (for the reference)."""
    return _TABLE.loaded()
