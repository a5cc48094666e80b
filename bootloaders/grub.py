"""GRUB for BIOS (``i386-pc``) and UEFI (``x86_64-efi``), made without grub-install or root.

GRUB starts differently on each firmware, and every piece is made here from GRUB's own
images with ``grub-mkimage`` (which only writes a file) and a few patched bytes:

- **UEFI**: one PE image with every module it needs built in, stored as the removable-media
  path ``EFI/BOOT/BOOTX64.EFI`` of a FAT filesystem. Its prefix ``/boot/grub`` has no device,
  so GRUB takes the device it was loaded from: the ESP holding ``/boot/grub/grub.cfg``.
- **BIOS**: ``boot.img`` (GRUB's MBR code) goes in the disk's first 440 bytes with the LBA of
  the core image's first sector patched in at :data:`KERNEL_SECTOR`; the core image
  (``diskboot.img`` + the compressed kernel and modules) goes in a GPT BIOS-boot partition or
  in the gap between an MBR and its first partition, with the block list at the end of its
  first sector patched to where the rest of it lies. Its prefix ``(,gptN)/boot/grub`` names
  the partition holding ``grub.cfg`` on whichever disk the BIOS booted.

- **ISO**: GRUB's ``i386-pc-eltorito`` image (cdboot.img + diskboot.img + core) as the BIOS
  El Torito entry and a FAT holding the UEFI image as the UEFI one, both reading the ISO's
  ``boot/grub/grub.cfg``; :func:`make_hybrid` then gives the written ISO GRUB's
  ``boot_hybrid.img`` MBR and a partition table, as ``xorrisofs --grub2-mbr`` does.

``grub.cfg`` is made from entries (Linux: kernel, initrds, command line; multiboot and
multiboot2: a kernel and modules with their command lines), or is a user's file taken as is.
Kernels and modules go under ``/boot`` of the same filesystem. With fixed inputs every piece is
bit-identical between builds: grub-mkimage writes no timestamp.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgkit import tools
from imgkit.bootloaders.table import BootPath, DiskBoot
from imgkit.errors import ImageError, InputError, LayoutError, ToolError
from imgkit.settings import BOOL, INT, STR, STRINGS, setting, tables_of
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree

if TYPE_CHECKING:
    from imgkit.disk.layout import Plan
    from imgkit.filesystems import BuildContext

GRUB_LIB = "/usr/lib/grub"
#: grub-mkimage targets -> the module directory; ``i386-pc-eltorito`` is the i386-pc kernel
#: behind cdboot.img (an El Torito no-emulation image).
PLATFORM_DIRS = {"i386-pc": f"{GRUB_LIB}/i386-pc", "i386-pc-eltorito": f"{GRUB_LIB}/i386-pc",
                 "x86_64-efi": f"{GRUB_LIB}/x86_64-efi"}
PLATFORM_PACKAGES = {"i386-pc": "grub-pc-bin", "i386-pc-eltorito": "grub-pc-bin",
                     "x86_64-efi": "grub-efi-amd64-bin"}
REMOVABLE_PATH = "EFI/BOOT/BOOTX64.EFI"
CONFIG_DIR = "boot/grub"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
SECTOR = 512
#: The BIOS-boot partition added on a GPT disk that declares none (GRUB's core is ~100 KiB).
BIOS_BOOT_SIZE = "1M"

#: Modules both images carry: partition tables, filesystems, the loaders, the commands a
#: generated grub.cfg uses, gzip for ``.gz`` kernels (GNU Mach) and the serial terminal.
COMMON_MODULES = ("part_gpt", "part_msdos", "fat", "ext2", "iso9660", "normal", "configfile",
                  "linux", "multiboot", "multiboot2", "boot", "search", "search_fs_uuid",
                  "search_fs_file", "search_label", "test", "echo", "serial", "terminal",
                  "gzio", "halt", "reboot")
PLATFORM_MODULES = {"i386-pc": ("biosdisk",), "i386-pc-eltorito": ("biosdisk",),
                    "x86_64-efi": ()}

# -- boot.img (GRUB's MBR code): offsets from include/grub/i386/pc/boot.h ---------------------
BOOT_IMG_SIZE = 512
BPB_START, BPB_END = 0x03, 0x5A
#: The LBA (little-endian u64) of the core image's first sector.
KERNEL_SECTOR = 0x5C
#: The boot drive (0xff: the one the BIOS passes in DL).
BOOT_DRIVE = 0x64
#: A 2-byte ``jmp`` that skips forcing DL to a hard disk; grub-setup nops it for hard disks
#: (some BIOSes pass 0x00 when they booted 0x80).
DRIVE_CHECK = 0x66
JMP_SHORT = 0xEB
NOP2 = b"\x90\x90"

# -- diskboot.img (the core image's first sector): its first block list ---------------------
#: ``struct grub_pc_bios_boot_blocklist { u64 start; u16 len; u16 segment; }``, the last
#: entry of the sector (lists grow downwards); grub-mkimage fills ``len``, setup ``start``.
BLOCKLIST = struct.Struct("<QHH")
assert BLOCKLIST.size == 12
FIRST_BLOCKLIST = SECTOR - BLOCKLIST.size
#: Where diskboot loads the rest of the core: GRUB_BOOT_MACHINE_KERNEL_SEG + 0x20.
CORE_SEGMENT = 0x820


def _need(path: str, platform: str) -> str:
    if not os.path.exists(path):
        raise ToolError(f"GRUB {platform} file {path} not found",
                        hint=f"install it: apt-get install {PLATFORM_PACKAGES[platform]}")
    return path


# -- grub.cfg ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GrubModule:
    """A multiboot module: a path on the boot filesystem and its command line."""

    path: str
    args: str = ""


@dataclass(frozen=True)
class GrubEntry:
    """A menu entry; paths are on the boot filesystem (``/boot/vmlinuz``).

    ``kind`` ``linux`` boots ``kernel`` with ``initrds``; ``multiboot``/``multiboot2`` boot
    ``kernel`` with ``modules``. ``cmdline`` is the kernel's command line either way."""

    title: str
    kernel: str
    kind: str = "linux"
    cmdline: str = ""
    initrds: Sequence[str] = ()
    modules: Sequence[GrubModule] = ()


KINDS = {"linux": ("linux", "initrd"), "multiboot": ("multiboot", "module"),
         "multiboot2": ("multiboot2", "module2")}
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:=,+@%^-]+")
SEARCH_KINDS = ("label", "fs-uuid", "file")


def _words(text: str, what: str) -> str:
    """``text`` as GRUB script words: split at blanks, each word quoted unless plain, so the
    kernel gets exactly these words (GRUB would expand ``$`` and eat quotes)."""
    if "\n" in text or "'" in text:
        raise InputError(f"GRUB {what} {text!r} must be one line without single quotes")
    return " ".join(w if _PLAIN_WORD.fullmatch(w) else f"'{w}'" for w in text.split())


def search_line(kind: str, value: str) -> str:
    """``search`` that sets ``root`` to the filesystem with this label, UUID or file."""
    if kind not in SEARCH_KINDS:
        raise InputError(f"GRUB root search {kind!r} unknown, expected one of "
                         f"{', '.join(SEARCH_KINDS)}")
    return f"search --no-floppy --set=root --{kind} {_words(value, 'search value')}"


def grub_cfg(entries: Sequence[GrubEntry], *, default: int = 0, timeout: int = 0,
             root: tuple[str, str] | None = None, serial: bool = True) -> str:
    """A ``grub.cfg`` that boots ``entries[default]`` after ``timeout`` seconds (0: at once),
    on the first serial port at 115200 baud (how a headless VM shows it) when ``serial``,
    with ``root`` found by ``search`` (``("label", "ESP")``, ``("fs-uuid", ...)``,
    ``("file", "/boot/grub/x")``) when given."""
    if not entries:
        raise InputError("GRUB needs at least one menu entry")
    if not 0 <= default < len(entries):
        raise InputError(f"GRUB default entry {default} does not exist: there are "
                         f"{len(entries)} entries (counted from 0)")
    lines = []
    if serial:
        lines += ["serial --unit=0 --speed=115200", "terminal_input serial",
                  "terminal_output serial"]
    lines += [f"set default={default}", f"set timeout={int(timeout)}"]
    if root:
        lines.append(search_line(*root))
    for e in entries:
        if e.kind not in KINDS:
            raise InputError(f"GRUB entry {e.title!r}: kind {e.kind!r} is not one of "
                             f"{', '.join(KINDS)}")
        loader, extra = KINDS[e.kind]
        if e.kind == "linux" and e.modules or e.kind != "linux" and e.initrds:
            raise InputError(f"GRUB entry {e.title!r}: a {e.kind} entry takes "
                             f"{'initrds' if e.kind == 'linux' else 'modules'}, not "
                             f"{'modules' if e.kind == 'linux' else 'initrds'}")
        lines.append(f"menuentry {_title(e.title)} {{")
        lines.append(f"    {loader} {_words(' '.join([e.kernel, e.cmdline]), 'kernel line')}")
        if e.initrds:
            lines.append(f"    {extra} {_words(' '.join(e.initrds), 'initrd line')}")
        for m in e.modules:
            lines.append(f"    {extra} {_words(' '.join([m.path, m.args]), 'module line')}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _title(title: str) -> str:
    if "\n" in title or "'" in title:
        raise InputError(f"GRUB entry title {title!r} must be one line without single quotes")
    return f"'{title}'"


# -- the boot filesystem's files --------------------------------------------------------------
def _add_host(tree: Tree, path: str, host: str, mtime: int, origin: str) -> None:
    try:
        size = os.stat(host).st_size
    except OSError as exc:
        raise InputError(f"{origin}: cannot read {host!r}: {exc.strerror}") from exc
    if path in tree and getattr(tree[path].data, "path", None) != host:
        raise InputError(f"{origin}: two different files want /{path}",
                         hint="give them different base names")
    tree.add(Entry(path, Kind.FILE, mode=0o644, mtime=mtime, data=FileBlob(host, size),
                   origin=origin))


def _add_text(tree: Tree, path: str, text: str | bytes, mtime: int, origin: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    tree.add(Entry(path, Kind.FILE, mode=0o644, mtime=mtime, data=BytesBlob(data), origin=origin))


@dataclass(frozen=True)
class HostEntry:
    """A menu entry whose files are host paths; :func:`grub_tree` places them in ``/boot``."""

    title: str
    kernel: str
    kind: str = "linux"
    cmdline: str = ""
    initrds: Sequence[str] = ()
    modules: Sequence[tuple[str, str]] = ()  # (host path, args)


def grub_tree(entries: Sequence[HostEntry] = (), *, config: str | None = None, default: int = 0,
              timeout: int = 0, root: tuple[str, str] | None = None, marker: str | None = None,
              serial: bool = True, efi_image: str | None = None, mtime: int = 0) -> Tree:
    """The boot filesystem's GRUB files: ``boot/grub/grub.cfg`` (from ``entries``, or the host
    file ``config`` as it is), the entries' kernels, initrds and modules as
    ``/boot/BASENAME``, and ``efi_image`` as ``EFI/BOOT/BOOTX64.EFI``.

    Without ``root``, a ``marker`` file name (unique to the build) is written under
    ``boot/grub`` and the generated grub.cfg finds its filesystem by it."""
    tree = Tree(default_mtime=mtime)
    if config is not None:
        if entries:
            raise InputError("GRUB takes either a grub.cfg or entries, not both")
        _add_host(tree, f"{CONFIG_DIR}/grub.cfg", config, mtime, "GRUB config")
    else:
        if root is None and marker:
            _add_text(tree, f"{CONFIG_DIR}/{marker}", b"", mtime, "GRUB")
            root = ("file", f"/{CONFIG_DIR}/{marker}")
        placed = []
        for e in entries:
            origin = f"GRUB entry {e.title!r}"

            def place(host: str, origin: str = origin) -> str:
                path = posixpath.join("boot", os.path.basename(host))
                _add_host(tree, path, host, mtime, origin)
                return "/" + path

            placed.append(GrubEntry(e.title, place(e.kernel), e.kind, e.cmdline,
                                    [place(i) for i in e.initrds],
                                    [GrubModule(place(h), a) for h, a in e.modules]))
        _add_text(tree, f"{CONFIG_DIR}/grub.cfg",
                  grub_cfg(placed, default=default, timeout=timeout, root=root, serial=serial),
                  mtime, "GRUB")
    if efi_image is not None:
        _add_host(tree, REMOVABLE_PATH, efi_image, mtime, "GRUB for UEFI")
    return tree


# -- grub-mkimage -----------------------------------------------------------------------------
#: Run first by both images, by GRUB's rescue parser (plain commands: no ``if``): the
#: filesystem holding grub.cfg becomes root and prefix, the planned one (the device of the
#: prefix, or the boot medium) tried first, others when the disk's layout is not the planned.
EARLY_CONFIG = f"""\
search --no-floppy --set=root --hint=$root --file /{CONFIG_DIR}/grub.cfg
set prefix=($root)/{CONFIG_DIR}
"""


def mkimage(platform: str, output: str, prefix: str, *, modules: Sequence[str] = (),
            early_config: str = EARLY_CONFIG) -> str:
    """``grub-mkimage -O PLATFORM`` with the common modules, ``modules`` and an embedded
    early config, into ``output`` (a plain file: no device, no root)."""
    if platform not in PLATFORM_DIRS:
        raise InputError(f"GRUB platform {platform!r} unknown, expected "
                         f"{' or '.join(PLATFORM_DIRS)}")
    directory = _need(PLATFORM_DIRS[platform], platform)
    all_modules = list(dict.fromkeys([*COMMON_MODULES, *PLATFORM_MODULES[platform], *modules]))
    missing = [m for m in all_modules if not os.path.exists(f"{directory}/{m}.mod")]
    if missing:
        raise InputError(f"GRUB {platform} has no module {missing[0]!r} in {directory}")
    early = output + ".early.cfg"
    with open(early, "w") as f:
        f.write(early_config)
    tools.run(["grub-mkimage", "-O", platform, "-d", directory, "-p", prefix, "-c", early,
               "-o", output, *all_modules])
    return output


def efi_image(work: str, *, modules: Sequence[str] = ()) -> str:
    """GRUB for UEFI with its modules built in, in ``work`` (named by its inputs)."""
    key = hashlib.sha256("\0".join(["x86_64-efi", *modules]).encode()).hexdigest()[:12]
    return mkimage("x86_64-efi", os.path.join(work, f"grub-{key}.efi"), f"/{CONFIG_DIR}",
                   modules=modules)


# -- BIOS: boot.img and the core image --------------------------------------------------------
def boot_img(core_lba: int) -> bytes:
    """GRUB's MBR code (the 440 bytes before the disk signature) that loads the core image
    whose first sector is at ``core_lba``, as grub-setup writes it for a hard disk: BPB area
    cleared, kernel sector set, boot drive left to the BIOS (0xff), the drive check nopped."""
    path = _need(f"{PLATFORM_DIRS['i386-pc']}/boot.img", "i386-pc")
    with open(path, "rb") as f:
        img = bytearray(f.read())
    if len(img) != BOOT_IMG_SIZE or img[510:512] != b"\x55\xaa" or img[DRIVE_CHECK] != JMP_SHORT:
        raise ImageError(f"{path} is not GRUB 2's boot.img: expected 512 bytes with a "
                         f"jmp at {DRIVE_CHECK:#x} and the 55 aa signature")
    img[BPB_START:BPB_END] = bytes(BPB_END - BPB_START)
    struct.pack_into("<Q", img, KERNEL_SECTOR, core_lba)
    img[DRIVE_CHECK:DRIVE_CHECK + 2] = NOP2
    return bytes(img[:440])


def place_core(core: bytes, core_lba: int) -> bytes:
    """The core image with its first block list pointing at the sectors after ``core_lba``
    (the core is stored contiguously there)."""
    sectors = -(-len(core) // SECTOR)
    start, length, segment = BLOCKLIST.unpack_from(core, FIRST_BLOCKLIST)
    if segment != CORE_SEGMENT or length != sectors - 1:
        raise ImageError(f"the core image's first block list at {FIRST_BLOCKLIST:#x} reads "
                         f"start {start}, len {length}, segment {segment:#x}; expected len "
                         f"{sectors - 1} and segment {CORE_SEGMENT:#x} (is it diskboot-based?)")
    out = bytearray(core) + bytes(sectors * SECTOR - len(core))
    BLOCKLIST.pack_into(out, FIRST_BLOCKLIST, core_lba + 1, sectors - 1, CORE_SEGMENT)
    return bytes(out)


def bios_disk_boot(table: str, plan: Plan, holder_number: int, work: str, *,
                   modules: Sequence[str] = ()) -> DiskBoot:
    """boot.img and the placed core image for a disk whose partition ``holder_number`` holds
    ``/boot/grub``: in the GPT BIOS-boot partition, or the MBR gap before the first partition."""
    if table not in ("gpt", "mbr"):
        raise InputError(f"partition table {table!r} unknown, expected 'gpt' or 'mbr'")
    scheme = "gpt" if table == "gpt" else "msdos"
    core_path = os.path.join(work, f"grub-core-{scheme}{holder_number}.img")
    mkimage("i386-pc", core_path, f"(,{scheme}{holder_number})/{CONFIG_DIR}", modules=modules)
    with open(core_path, "rb") as f:
        core = f.read()
    sectors = -(-len(core) // SECTOR)
    if table == "gpt":
        parts = [p for p in plan.partitions if p.type_guid and str(p.type_guid) == BIOS_BOOT_GUID]
        if len(parts) != 1:
            raise LayoutError(f"GRUB on a GPT disk needs one BIOS boot partition for its core "
                              f"image ({sectors * SECTOR:,} bytes), found {len(parts)}",
                              hint='add { name = "bios", type = "bios-boot", size = "1M" } '
                                   "to [disk] partitions")
        part = parts[0]
        if part.size < sectors * SECTOR:
            raise LayoutError(f"BIOS boot partition {part.name!r} holds {part.size:,} bytes; "
                              f"GRUB's core image needs {sectors * SECTOR:,}",
                              hint="make it 1M")
        placed = os.path.join(work, f"grub-core-{part.name}.placed")
        with open(placed, "wb") as f:
            f.write(place_core(core, part.start_lba))
        return DiskBoot(boot_code=boot_img(part.start_lba), contents={part.name: placed})
    first = min((p.start_lba for p in plan.partitions), default=plan.disk_sectors)
    gap = first - 1
    if sectors > gap:
        raise LayoutError(f"GRUB's core image needs {sectors} sectors ({sectors * SECTOR:,} "
                          f"bytes) between the MBR and the first partition; the gap has {gap} "
                          f"(first partition at sector {first})",
                          hint=f"start the first partition at sector {sectors + 1} or later "
                               '(alignment = "1M" leaves 2047 sectors)')
    return DiskBoot(boot_code=boot_img(1), regions=((SECTOR, place_core(core, 1)),))


# -- ISO: El Torito images and the hybrid MBR ----------------------------------------------
ELTORITO_IMAGE = "boot/grub/i386-pc/eltorito.img"
EFI_FAT_IMAGE = "boot/grub/efi.img"
#: cdboot.img, the first 2048 bytes of an i386-pc-eltorito image; diskboot.img follows it,
#: so the core a disk boot loads starts 4 sectors into the boot image.
CDBOOT_SIZE = 2048
ISO_BLOCK = 2048
#: boot_hybrid.img (GRUB's MBR code for a hybrid ISO) reads the core's first sector (u64 LBA)
#: here, where ``xorriso --grub2-mbr`` writes it; its BPB area holds code and stays.
HYBRID_CORE_LBA = 0x1B0
#: The El Torito boot info table at offset 8 of the boot image: the PVD's, the image's block,
#: its length and the sum of its 32-bit words from offset 64 (mkisofs -boot-info-table).
BOOT_INFO = struct.Struct("<IIII")
BOOT_INFO_OFFSET, BOOT_INFO_SUMMED = 8, 64
#: MBR partition types of a hybrid ISO, as isohybrid writes them.
ISO_TYPE, ISO_TYPE_WITH_EFI, EFI_TYPE = 0x17, 0x00, 0xEF
ISO_PAD, ISO_ALIGN = 300 * 1024, 1024 * 1024


def eltorito_image(work: str, *, modules: Sequence[str] = ()) -> str:
    """GRUB for BIOS as an El Torito no-emulation image (cdboot.img + diskboot.img + core)
    whose prefix ``/boot/grub`` is on the medium it was booted from (CD or, hybrid, disk)."""
    key = hashlib.sha256("\0".join(["i386-pc-eltorito", *modules]).encode()).hexdigest()[:12]
    return mkimage("i386-pc-eltorito", os.path.join(work, f"grub-{key}-eltorito.img"),
                   f"/{CONFIG_DIR}", modules=modules)


def _sum32(data: bytes) -> int:
    data += bytes(-len(data) % 4)
    return sum(struct.unpack(f"<{len(data) // 4}I", data)) & 0xFFFFFFFF


def make_hybrid(iso_path: str, image_size: int, *, disk_signature: int) -> None:
    """Make a written ISO whose BIOS El Torito image is GRUB's boot as a disk too, as
    ``xorriso --grub2-mbr boot_hybrid.img --grub2-boot-info`` does: boot_hybrid.img in the
    MBR pointing at the core after cdboot.img, the core's block list pointing at the sectors
    after it (the boot info table's checksum redone), and an MBR partition table: the
    whole ISO, and the EFI El Torito image as an EFI system partition (for UEFI from a disk).
    ``image_size`` is the BIOS image's size in bytes."""
    from imgkit.formats import mbr
    from imgkit.formats.iso9660.read import describe

    with open(iso_path, "r+b") as f:
        # Zeros after the last file, as mkisofs -pad and isohybrid leave: GRUB for BIOS read
        # nothing of a grub.cfg in the CD's last block (SeaBIOS), and a disk ends on a MiB.
        size = -(-(os.fstat(f.fileno()).st_size + ISO_PAD) // ISO_ALIGN) * ISO_ALIGN
        f.truncate(size)
        entries = describe(f)["el_torito"]
        bios = [e for e in entries if e["platform"] == "bios"]
        if not bios:
            raise ImageError(f"{iso_path}: no BIOS El Torito entry to boot as a disk")
        start = bios[0]["load_rba"] * ISO_BLOCK
        f.seek(start)
        image = bytearray(f.read(image_size))
        cdboot = _read_grub_file("cdboot.img")
        if len(image) != image_size or image[:BOOT_INFO_OFFSET] != cdboot[:BOOT_INFO_OFFSET] \
                or image[BOOT_INFO_SUMMED:CDBOOT_SIZE] != cdboot[BOOT_INFO_SUMMED:CDBOOT_SIZE]:
            raise ImageError(f"{iso_path}: the BIOS El Torito image at block "
                             f"{bios[0]['load_rba']} is not GRUB's i386-pc-eltorito image "
                             f"of {image_size:,} bytes (cdboot.img first)")
        core_lba = start // SECTOR + CDBOOT_SIZE // SECTOR
        image[CDBOOT_SIZE:CDBOOT_SIZE + SECTOR] = place_core(bytes(image[CDBOOT_SIZE:]),
                                                             core_lba)[:SECTOR]
        pvd, block, length, _ = BOOT_INFO.unpack_from(image, BOOT_INFO_OFFSET)
        if block != bios[0]["load_rba"] or length != image_size:
            raise ImageError(f"{iso_path}: the boot info table reads block {block}, length "
                             f"{length}; expected {bios[0]['load_rba']}, {image_size}")
        BOOT_INFO.pack_into(image, BOOT_INFO_OFFSET, pvd, block, length,
                            _sum32(bytes(image[BOOT_INFO_SUMMED:])))
        f.seek(start)
        f.write(image)
        code = bytearray(_read_grub_file("boot_hybrid.img")[:mbr.BOOT_CODE_SIZE])
        struct.pack_into("<Q", code, HYBRID_CORE_LBA, core_lba)
        efi = [e for e in entries if e["platform"] == "efi"]
        parts = [mbr.MbrPartition(1, ISO_TYPE_WITH_EFI if efi else ISO_TYPE, 0, size // SECTOR,
                                  bootable=True)]
        if efi:
            efi_lba = efi[0]["load_rba"] * (ISO_BLOCK // SECTOR)
            # A count below 2 means "to the end of the medium" (as EDK2 reads it).
            sectors = efi[0]["sectors"] if efi[0]["sectors"] > 1 else size // SECTOR - efi_lba
            parts.append(mbr.MbrPartition(2, EFI_TYPE, efi_lba, sectors))
        f.seek(0)
        f.write(mbr.build_sector(parts, disk_signature=disk_signature, boot_code=bytes(code)))


def _read_grub_file(name: str) -> bytes:
    with open(_need(f"{PLATFORM_DIRS['i386-pc']}/{name}", "i386-pc"), "rb") as f:
        return f.read()


def efi_fat(binary: str, ctx: BuildContext, name: str) -> str:
    """A FAT image holding ``binary`` as ``EFI/BOOT/BOOTX64.EFI`` (an ISO's UEFI El Torito
    image), in the build's work directory."""
    from imgkit import filesystems
    from imgkit.config import FilesystemConfig

    esp = Tree(default_mtime=ctx.mtime or 0)
    _add_host(esp, REMOVABLE_PATH, binary, ctx.mtime or 0, "GRUB for UEFI")
    serial = ctx.seed("grub", "efi.img")[:8]
    vfat = filesystems.get("vfat")
    fs = FilesystemConfig(name=name, type="vfat", label="GRUBEFI",
                          options=vfat.options(uuid=f"{serial[:4]}-{serial[4:]}"))
    image = os.path.join(ctx.work, f"{name}.img")
    vfat.write(esp, image, 0, None, fs, ctx)
    return image


# -- the boot path ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GrubModuleConfig:
    file: str = setting(STR, path=True, help="the module: a reference or host path")
    args: str = setting(STR, "", help="its command line")


@dataclass(frozen=True)
class GrubEntryConfig:
    title: str = setting(STR, "Linux", help="the title in the menu")
    type: str = setting(STR, "linux", choices=tuple(KINDS), help="how GRUB loads the kernel")
    kernel: str = setting(STR, "kernel", path=True, help="the kernel: a reference or host path")
    initrd: tuple[str, ...] = setting(STRINGS, (), path=True,
                                      help="initrds of a linux entry: references or host paths")
    cmdline: str = setting(STR, "", help="the kernel command line")
    modules: tuple[GrubModuleConfig, ...] = setting(tables_of(GrubModuleConfig), (),
                                                    help="modules of a multiboot entry")


@dataclass(frozen=True)
class GrubConfig:
    entries: tuple[GrubEntryConfig, ...] = setting(tables_of(GrubEntryConfig), (),
                                                   help="menu entries (linux, multiboot, multiboot2)")
    default: int = setting(INT, 0, help="the entry booted, counted from 0")
    timeout: int = setting(INT, 0, help="menu timeout in seconds (0 boots at once)")
    config: str | None = setting(STR, None, path=True,
                                 help="a grub.cfg taken as it is instead of one made from entries")
    root: str | None = setting(STR, None, help="how grub.cfg finds its filesystem: \"label:NAME\", "
                                               "\"fs-uuid:UUID\" or \"file:/PATH\"; default: a "
                                               "marker file of this build")
    serial: bool = setting(BOOL, True, help="GRUB's terminal on the first serial port, 115200 baud")
    efi: bool = setting(BOOL, False, help="also GRUB for UEFI as EFI/BOOT/BOOTX64.EFI (vfat only)")
    modules: tuple[str, ...] = setting(STRINGS, (), help="more GRUB modules built into the images")


def _root(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    kind, sep, value = text.partition(":")
    if not sep or kind not in SEARCH_KINDS or not value:
        raise InputError(f"GRUB root {text!r}: expected KIND:VALUE with KIND one of "
                         f"{', '.join(SEARCH_KINDS)}", hint='for example root = "label:ESP"')
    return kind, value


def _menu_tree(options: GrubConfig, ctx: BuildContext, where: str, marker_of: str,
               efi_image: str | None = None) -> Tree:
    """grub.cfg and the entries' files; ``marker_of`` names the marker file's seed (the
    same for the two El Torito entries of an ISO, which share one grub.cfg)."""
    entries = [HostEntry(e.title, ctx.resolve(e.kernel, where), e.type,
                         ctx.substitute(e.cmdline, where),
                         [ctx.resolve(r, where) for r in e.initrd],
                         [(ctx.resolve(m.file, where), m.args) for m in e.modules])
               for e in options.entries]
    if options.config is None and not entries:
        raise InputError(f"{ctx.config_path}: {where}: GRUB needs entries or a config",
                         hint='entries = [{ kernel = "kernel", cmdline = "console=ttyS0" }]')
    return grub_tree(entries, config=options.config, default=options.default,
                     timeout=options.timeout, root=_root(options.root),
                     marker=f"imgkit-{ctx.seed('grub', marker_of)[:16]}.id",
                     serial=options.serial, efi_image=efi_image, mtime=ctx.mtime or 0)


def _has_menu(options: GrubConfig) -> bool:
    return bool(options.entries) or options.config is not None


#: The marker seed of an ISO's grub.cfg (both El Torito entries write the same one).
ISO_MENU = "[iso]"


class Grub(BootPath):
    """GRUB in a filesystem (``[filesystems.NAME] grub = {...}``): grub.cfg, kernels and, with
    ``efi = true``, the UEFI image there; with ``[disk] bios = "grub"`` also boot.img and the
    core image on the disk (BIOS-boot partition, added on GPT when none is declared, or MBR
    gap). As ``[iso] bios = { loader = "grub", ... }``: the El Torito BIOS image, grub.cfg on
    the ISO and GRUB's hybrid MBR."""

    name = "grub"
    firmware = "bios"
    options = GrubConfig
    help = "GRUB: BIOS (boot.img + core image) and, with efi = true, UEFI (BOOTX64.EFI)"
    #: GRUB 2.06 reads both (including mke2fs 1.47's metadata_csum ext4); UEFI needs the vfat.
    fs_types = ("vfat", "ext4")
    on_disk = True
    eltorito_capable = True
    packages = ("grub-common", "grub-pc-bin", "grub-efi-amd64-bin")

    def fs_files(self, options, ctx, where):
        image = efi_image(ctx.work, modules=options.modules) if options.efi else None
        return _menu_tree(options, ctx, where, where, image)

    def extra_partitions(self, options, table, partitions):
        from imgkit.disk import parttypes
        from imgkit.disk.layout import PartitionSpec
        if table != "gpt" or any(parttypes.gpt_type(p.type) == parttypes.gpt_type("bios-boot")
                                 for p in partitions):
            return ()
        names = {p.name for p in partitions}
        name = next(n for n in ("bios-boot", "grub-bios-boot", "grub-core") if n not in names)
        return (PartitionSpec(name=name, type="bios-boot", size=BIOS_BOOT_SIZE),)

    def disk_regions(self, options, table, plan, holder, ctx):
        assert holder is not None
        return bios_disk_boot(table, plan, plan.partition(holder).number, ctx.work,
                              modules=options.modules)

    def eltorito(self, options, ctx, where):
        from functools import partial

        from imgkit.bootloaders.table import EltoritoEntry
        from imgkit.formats.mbr import signature_from_seed
        if options.efi:
            raise InputError(f"{ctx.config_path}: {where}: efi = true puts GRUB for UEFI in a "
                             "filesystem; an ISO's UEFI entry is [iso] efi",
                             hint='drop efi = true and add [iso] efi = "grub_efi"')
        tree = _menu_tree(options, ctx, where, ISO_MENU)
        image = eltorito_image(ctx.work, modules=options.modules)
        _add_host(tree, ELTORITO_IMAGE, image, ctx.mtime or 0, "GRUB for BIOS")
        hybrid = partial(make_hybrid, image_size=os.path.getsize(image),
                         disk_signature=signature_from_seed(ctx.seed("grub", "iso-mbr")))
        return EltoritoEntry("bios", ELTORITO_IMAGE, tree, load_size=CDBOOT_SIZE // SECTOR,
                             boot_info_table=True, hybrid=hybrid)


class GrubEfi(BootPath):
    """GRUB for UEFI as an ISO's El Torito UEFI image (a FAT holding BOOTX64.EFI); it reads
    the ISO's ``boot/grub/grub.cfg``: its own entries', or the BIOS GRUB entry's."""

    name = "grub_efi"
    firmware = "uefi"
    options = GrubConfig
    help = "UEFI boot of an ISO with GRUB (grub.cfg from its entries or the BIOS GRUB entry's)"
    eltorito_capable = True
    packages = ("grub-common", "grub-efi-amd64-bin")

    def eltorito(self, options, ctx, where):
        from imgkit.bootloaders.table import EltoritoEntry
        tree = _menu_tree(options, ctx, where, ISO_MENU) if _has_menu(options) \
            else Tree(default_mtime=ctx.mtime or 0)
        fat = efi_fat(efi_image(ctx.work, modules=options.modules), ctx, "grub-efi")
        _add_host(tree, EFI_FAT_IMAGE, fat, ctx.mtime or 0, "GRUB for UEFI")
        return EltoritoEntry("uefi", EFI_FAT_IMAGE, tree)

