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

The entries import their modules inside the methods: loading a config imports no bootloader
code (the UKI builder needs construct).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from imgkit.errors import InputError
from imgkit.settings import INT, STR, STRINGS, setting, tables_of

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


_TABLE: dict[str, BootPath] = {}


def register(path: BootPath) -> BootPath:
    """Add a boot path to the table (a name already taken is an error)."""
    if path.name in _TABLE:
        raise InputError(f"boot path {path.name!r} is already registered")
    if path.firmware not in FIRMWARES:
        raise InputError(f"boot path {path.name!r}: firmware {path.firmware!r} is not one of "
                         f"{', '.join(FIRMWARES)}")
    _TABLE[path.name] = path
    return path


def unregister(name: str) -> None:
    _TABLE.pop(name, None)


def get(name: str) -> BootPath:
    try:
        return _TABLE[name]
    except KeyError:
        raise InputError(f"unknown boot path {name!r}",
                         hint=f"registered boot paths: {', '.join(_TABLE)}") from None


def names(*, firmware: str | None = None, on_disk: bool | None = None,
          eltorito: bool | None = None, in_filesystems: bool | None = None) -> tuple[str, ...]:
    """Registered boot path names, in registration order, optionally only those that fit."""
    return tuple(n for n, p in _TABLE.items()
                 if (firmware is None or p.firmware == firmware)
                 and (on_disk is None or p.on_disk == on_disk)
                 and (eltorito is None or p.eltorito_capable == eltorito)
                 and (in_filesystems is None or bool(p.fs_types) == in_filesystems))


def paths() -> tuple[BootPath, ...]:
    return tuple(_TABLE.values())


# -- syslinux and isolinux ------------------------------------------------------------------

@dataclass(frozen=True)
class SyslinuxConfig:
    kernel: str = setting(STR, "kernel", path=True, help="the kernel: a reference or host path")
    initrd: str | None = setting(STR, None, path=True, help="the initrd: a reference or host path")
    append: str = setting(STR, "console=ttyS0", help="the kernel command line")


class Syslinux(BootPath):
    """SYSLINUX from a FAT partition: syslinux.cfg + kernel + initrd in the FAT, MBR boot
    code, ``syslinux --install`` into the partition after the disk is written."""

    name = "syslinux"
    firmware = "bios"
    options = SyslinuxConfig
    help = "BIOS boot of a FAT partition: boot code in the MBR, syslinux installed in it"
    fs_types = ("vfat",)
    on_disk = True
    bootable_holder = True
    packages = ("syslinux", "syslinux-common", "mtools")

    def fs_files(self, options, ctx, where):
        from imgkit.bootloaders.syslinux import syslinux_tree
        return syslinux_tree(ctx.resolve(options.kernel, where),
                             ctx.resolve(options.initrd, where) if options.initrd else None,
                             options.append, mtime=ctx.mtime or 0)

    def fs_room(self, options):
        from imgkit.bootloaders.syslinux import INSTALL_ROOM
        return INSTALL_ROOM

    def disk_regions(self, options, table, plan, holder, ctx):
        from imgkit.bootloaders.syslinux import mbr_boot_code
        return DiskBoot(boot_code=mbr_boot_code(table))  # type: ignore[arg-type]

    def install(self, options, disk, holder, ctx):
        from imgkit.bootloaders.syslinux import install_syslinux
        assert holder is not None
        install_syslinux(disk, holder.start, mtime=ctx.mtime or 0)


class Isolinux(BootPath):
    """ISOLINUX as the BIOS El Torito entry of an ISO (no emulation, boot info table)."""

    name = "isolinux"
    firmware = "bios"
    options = SyslinuxConfig
    help = "BIOS boot of an ISO: isolinux.bin as the El Torito no-emulation image"
    eltorito_capable = True
    packages = ("isolinux", "syslinux-common")

    def eltorito(self, options, ctx, where):
        from imgkit.assemble import host_file_entry
        from imgkit.bootloaders.syslinux import isolinux_files, syslinux_cfg
        from imgkit.tree import BytesBlob, Entry, Kind, Tree

        def put(dest: str, host: str) -> None:
            tree.add(host_file_entry(dest, host, mode=0o644, mtime=ctx.mtime, mask=0o755))

        tree = Tree(default_mtime=ctx.mtime or 0)
        files = isolinux_files()
        put("isolinux/isolinux.bin", files["isolinux.bin"])
        put("isolinux/ldlinux.c32", files["ldlinux.c32"])
        put("boot/vmlinuz", ctx.resolve(options.kernel, where))
        initrd = None
        if options.initrd:
            put("boot/initrd", ctx.resolve(options.initrd, where))
            initrd = "/boot/initrd"
        text = syslinux_cfg("linux", "/boot/vmlinuz", initrd, options.append)
        tree.add(Entry("isolinux/isolinux.cfg", Kind.FILE, mode=0o644, mtime=ctx.mtime or 0,
                       data=BytesBlob(text.encode())))
        return EltoritoEntry("bios", "isolinux/isolinux.bin", tree, load_size=4,
                             boot_info_table=True)


# -- systemd-boot ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BootEntryConfig:
    id: str = setting(STR, help="the entry's file name (loader/entries/ID.conf)")
    title: str = setting(STR, "Linux", help="the title in the menu")
    kernel: str = setting(STR, "kernel", path=True, help="the kernel: a reference or host path")
    initrd: tuple[str, ...] = setting(STRINGS, (), path=True, help="initrds: references or host paths")
    options: str = setting(STR, "", help="the kernel command line")


@dataclass(frozen=True)
class SystemdBootConfig:
    entries: tuple[BootEntryConfig, ...] = setting(tables_of(BootEntryConfig), (),
                                                   help="Type 1 entries (kernel + initrds + options)")
    ukis: tuple[str, ...] = setting(STRINGS, (), path=True,
                                    help="UKIs placed under EFI/Linux/ (Type 2 entries)")
    default: str | None = setting(STR, None, help="the default entry id or UKI name; default: the first")
    timeout: int = setting(INT, 0, help="menu timeout in seconds (0 boots at once)")


class SystemdBoot(BootPath):
    """systemd-boot on an ESP with Boot Loader Specification entries."""

    name = "systemd_boot"
    firmware = "uefi"
    options = SystemdBootConfig
    help = "UEFI boot manager with Type 1 entries and UKIs, on an ESP"
    fs_types = ("vfat",)
    packages = ("systemd-boot-efi",)

    def fs_files(self, options, ctx, where):
        import os

        from imgkit.bootloaders.systemd_boot import BootEntry, systemd_boot_tree
        entries = [BootEntry(id=e.id, title=e.title, linux=ctx.resolve(e.kernel, where),
                             initrds=[ctx.resolve(r, where) for r in e.initrd], options=e.options)
                   for e in options.entries]
        ukis = [(r.partition(":")[2] or os.path.basename(r), ctx.resolve(r, where))
                for r in options.ukis]
        return systemd_boot_tree(entries, ukis, default=options.default,
                                 timeout=options.timeout, mtime=ctx.mtime or 0)


# -- a UKI (or any EFI binary) as the removable-media boot program ---------------------------

@dataclass(frozen=True)
class EfiBinaryConfig:
    binary: str = setting(STR, path=True, help="the EFI binary: a reference (\"uki:main\") or host path")


class Uki(BootPath):
    """An EFI binary (usually a UKI) as ``EFI/BOOT/BOOTX64.EFI``: in an ESP, or in the FAT
    image of an ISO's UEFI El Torito entry."""

    name = "uki"
    firmware = "uefi"
    options = EfiBinaryConfig
    help = "UEFI boot of one EFI binary (a UKI) from the removable-media path"
    fs_types = ("vfat",)
    eltorito_capable = True
    shorthand = "binary"
    packages = ("systemd-boot-efi",)

    def fs_files(self, options, ctx, where):
        from imgkit.bootloaders.systemd_boot import uki_esp_tree
        return uki_esp_tree(ctx.resolve(options.binary, where), mtime=ctx.mtime or 0)

    def eltorito(self, options, ctx, where):
        import os

        from imgkit import filesystems
        from imgkit.assemble import host_file_entry
        from imgkit.bootloaders.systemd_boot import REMOVABLE_PATH
        from imgkit.config import FilesystemConfig
        from imgkit.tree import Tree

        esp = Tree(default_mtime=ctx.mtime or 0)
        esp.add(host_file_entry(REMOVABLE_PATH, ctx.resolve(options.binary, where), mode=0o644,
                                mtime=ctx.mtime, mask=0o755))
        serial = ctx.seed("isoefi")[:8]
        vfat = filesystems.get("vfat")
        fs = FilesystemConfig(name="iso-efi", type="vfat", label="EFIBOOT",
                              options=vfat.options(uuid=f"{serial[:4]}-{serial[4:]}"))
        image = os.path.join(ctx.work, "iso-efi.img")
        vfat.write(esp, image, 0, None, fs, ctx)
        files = Tree(default_mtime=ctx.mtime or 0)
        files.add(host_file_entry("boot/efi.img", image, mode=0o644, mtime=ctx.mtime, mask=0o755))
        return EltoritoEntry("uefi", "boot/efi.img", files)


for _path in (Syslinux(), Isolinux(), SystemdBoot(), Uki()):
    register(_path)

# -- GRUB: its module registers its boot path -------------------------------------------------
import imgkit.bootloaders.grub  # noqa: E402,F401
