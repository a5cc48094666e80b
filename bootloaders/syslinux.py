"""SYSLINUX/ISOLINUX: BIOS boot from a FAT partition or an ISO image.

A BIOS boot with syslinux has three parts: boot code in the disk's first 440 bytes
(``mbr.bin`` for MBR disks, ``gptmbr.bin`` for GPT disks, which boots the partition with
the "legacy BIOS bootable" attribute), a volume boot record plus ``ldlinux.sys`` and
``ldlinux.c32`` in the FAT filesystem (written by the mtools-based ``syslinux`` installer,
which edits an image file without root or mounting), and ``syslinux.cfg``.

The installer finds the filesystem through ``--offset`` and leaves the FAT's "hidden
sectors" field as it is. Chained from ``mbr.bin``, the installed boot sector takes the
partition's start from the partition entry the MBR code hands over, so a FAT with hidden
sectors 0 booted as well as one with hidden sectors = partition start LBA (both tried under
SeaBIOS); a FAT made for a partition should still record its start LBA there, which other
boot code relies on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from imgkit import tools
from imgkit.bootloaders.table import BootPath, DiskBoot, EltoritoEntry
from imgkit.errors import InputError, ToolError
from imgkit.formats.fat.c_fat import FAT_EPOCH, FAT_LAST
from imgkit.settings import STR, setting
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree

MBR_DIR = "/usr/lib/syslinux/mbr"
BIOS_MODULES = "/usr/lib/syslinux/modules/bios"
ISOLINUX_DIR = "/usr/lib/ISOLINUX"

PathLike = str | os.PathLike


def syslinux_cfg(label: str, kernel: str, initrd: str | None, append: str, *,
                 serial: bool = True) -> str:
    """A ``syslinux.cfg`` that boots one kernel at once, with no menu.

    ``kernel`` and ``initrd`` are paths on the boot filesystem (``/vmlinuz``). With
    ``serial``, syslinux's own console is also the first serial port at 115200 baud, which
    is how a headless VM shows it.
    """
    for name, value in (("label", label), ("kernel", kernel), ("append", append),
                        ("initrd", initrd or "")):
        if "\n" in value:
            raise InputError(f"syslinux {name} must be one line, got {value!r}")
    if not label or " " in label:
        raise InputError(f"syslinux label {label!r} must be one word")
    lines = []
    if serial:
        lines.append("SERIAL 0 115200")
    lines += [f"DEFAULT {label}", "PROMPT 0", "TIMEOUT 0", "", f"LABEL {label}",
              f"    LINUX {kernel}"]
    if initrd:
        lines.append(f"    INITRD {initrd}")
    if append:
        lines.append(f"    APPEND {append}")
    return "\n".join(lines) + "\n"


def syslinux_tree(kernel_path: PathLike, initrd_path: PathLike | None, append: str, *,
                  label: str = "linux", directory: str = "", kernel_name: str = "vmlinuz",
                  initrd_name: str = "initrd", serial: bool = True, mtime: int = 0) -> Tree:
    """FAT contents for a syslinux boot: ``syslinux.cfg`` plus the kernel and initrd.

    ``directory`` is where ``syslinux.cfg`` goes: ``""`` (the FAT root) or ``"syslinux"``
    or ``"boot/syslinux"``, three of the places syslinux searches. Kernel and initrd go to
    the root as ``/vmlinuz`` and ``/initrd`` (names adjustable). ``ldlinux.sys`` and
    ``ldlinux.c32`` are not part of the tree: :func:`install_syslinux` writes them.
    """
    directory = directory.strip("/")
    if directory not in ("", "syslinux", "boot/syslinux"):
        raise InputError(f"syslinux.cfg directory {directory!r} is not one syslinux searches",
                         hint="use '', 'syslinux' or 'boot/syslinux'")
    tree = Tree(default_mtime=mtime)
    tree.add(_host_file(kernel_name, kernel_path, mtime, "kernel"))
    initrd = None
    if initrd_path is not None:
        tree.add(_host_file(initrd_name, initrd_path, mtime, "initrd"))
        initrd = f"/{initrd_name}"
    cfg = syslinux_cfg(label, f"/{kernel_name}", initrd, append, serial=serial)
    cfg_path = f"{directory}/syslinux.cfg" if directory else "syslinux.cfg"
    tree.add(Entry(cfg_path, Kind.FILE, mode=0o644, mtime=mtime,
                   data=BytesBlob(cfg.encode()), origin="syslinux"))
    return tree


def _host_file(path: str, host: PathLike, mtime: int, what: str) -> Entry:
    host = os.fspath(host)
    try:
        size = os.stat(host).st_size
    except OSError as exc:
        raise InputError(f"cannot read the {what} {host!r}: {exc.strerror}") from exc
    return Entry(path, Kind.FILE, mode=0o644, mtime=mtime, data=FileBlob(host, size),
                 origin=host)


#: Free space ``syslinux --install`` needs on the FAT (ldlinux.sys + ldlinux.c32, rounded up).
INSTALL_ROOM = 256 * 1024


def install_syslinux(disk_image_path: PathLike, partition_offset_bytes: int, *,
                     directory: str | None = None, mtime: int | None = None) -> None:
    """Install syslinux's boot sector, ``ldlinux.sys`` and ``ldlinux.c32`` into the FAT
    filesystem that starts ``partition_offset_bytes`` into ``disk_image_path``.

    Runs ``syslinux --install --offset BYTES IMAGE`` (mtools based: no root, no mount). The
    disk's MBR boot code is separate: see :func:`mbr_boot_code`. ``directory`` installs
    ``ldlinux.sys`` into a subdirectory (which must already exist in the FAT).

    ``mtime`` (seconds since the epoch) becomes the time of ``ldlinux.sys`` and
    ``ldlinux.c32``, so that two installs into the same filesystem give the same bytes;
    without it the installer stamps them with the current time. mtools takes the time from
    ``SOURCE_DATE_EPOCH`` and writes it in local time, so ``TZ`` is pinned to UTC, which is
    how the FAT writer stores every other time; the time is clamped to the FAT range
    (1980-2107) as the FAT writer clamps it.
    """
    if partition_offset_bytes < 0 or partition_offset_bytes % 512:
        raise InputError(f"partition offset {partition_offset_bytes} is not a multiple of 512")
    image = os.fspath(disk_image_path)
    if not os.path.isfile(image):
        raise InputError(f"disk image {image!r} does not exist")
    argv = ["syslinux", "--install", "--offset", str(partition_offset_bytes)]
    if directory:
        argv += ["--directory", "/" + directory.strip("/")]
    argv.append(image)
    # mtools refuses some valid filesystems unless told not to second-guess the geometry.
    env = {"MTOOLS_SKIP_CHECK": "1"}
    if mtime is not None:
        env["SOURCE_DATE_EPOCH"] = str(min(max(int(mtime), FAT_EPOCH), FAT_LAST))
        env["TZ"] = "UTC0"
    proc = tools.run(argv, env=env)
    # syslinux exits 0 even when mtools could not write ldlinux.sys: read what it said.
    complaint = (proc.stderr or b"").decode(errors="replace").strip()
    if complaint:
        hint = None
        if "space" in complaint or "free cluster" in complaint:
            hint = (f"the FAT filesystem needs about {INSTALL_ROOM // 1024} KiB free for "
                    "ldlinux.sys and ldlinux.c32: make it bigger")
        raise ToolError(f"syslinux --install into {image} at offset {partition_offset_bytes} "
                        f"failed: {complaint.splitlines()[0]}", hint=hint)


def mbr_boot_code(table: Literal["mbr", "gpt"] = "mbr") -> bytes:
    """The 440 bytes of syslinux boot code for the start of an MBR or GPT disk.

    Only the code area is returned: the disk signature and partition table that follow it
    belong to the partition table writer.
    """
    names = {"mbr": "mbr.bin", "gpt": "gptmbr.bin"}
    if table not in names:
        raise InputError(f"partition table {table!r} unknown, expected 'mbr' or 'gpt'")
    path = os.path.join(MBR_DIR, names[table])
    try:
        with open(path, "rb") as f:
            code = f.read(440)
    except FileNotFoundError as exc:
        raise ToolError(f"syslinux boot code {path} not found",
                        hint="install it: apt-get install syslinux-common") from exc
    if len(code) < 440:
        code += bytes(440 - len(code))
    return code


def isolinux_files() -> dict[str, str]:
    """Host paths of the ISOLINUX pieces an El Torito BIOS boot needs.

    ``isolinux.bin`` (the El Torito boot image, patched with a boot-info table by the ISO
    writer), ``ldlinux.c32`` (its core module, beside it in the ISO) and ``isohdpfx.bin``
    (the isohybrid MBR that makes the ISO bootable as a disk).
    """
    files = {
        "isolinux.bin": os.path.join(ISOLINUX_DIR, "isolinux.bin"),
        "ldlinux.c32": os.path.join(BIOS_MODULES, "ldlinux.c32"),
        "isohdpfx.bin": os.path.join(ISOLINUX_DIR, "isohdpfx.bin"),
    }
    for name, path in files.items():
        if not os.path.isfile(path):
            pkg = "isolinux" if path.startswith(ISOLINUX_DIR) else "syslinux-common"
            raise ToolError(f"ISOLINUX file {name} not found at {path}",
                            hint=f"install it: apt-get install {pkg}")
    return files


# -- the boot paths (entries "syslinux" and "isolinux" of the boot path table) -----------------

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
        return syslinux_tree(ctx.resolve(options.kernel, where),
                             ctx.resolve(options.initrd, where) if options.initrd else None,
                             ctx.substitute(options.append, where), mtime=ctx.mtime or 0)

    def fs_room(self, options):
        return INSTALL_ROOM

    def disk_regions(self, options, table, plan, holder, ctx):
        return DiskBoot(boot_code=mbr_boot_code(table))

    def install(self, options, disk, holder, ctx):
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
        text = syslinux_cfg("linux", "/boot/vmlinuz", initrd, ctx.substitute(options.append, where))
        tree.add(Entry("isolinux/isolinux.cfg", Kind.FILE, mode=0o644, mtime=ctx.mtime or 0,
                       data=BytesBlob(text.encode())))
        return EltoritoEntry("bios", "isolinux/isolinux.bin", tree, load_size=4,
                             boot_info_table=True)
