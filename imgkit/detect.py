"""The one magic sniffer: what an image file (or a byte range in it) is.

``imgkit inspect``, ``imgkit ls`` and ``imgkit run`` all ask :func:`sniff`. It reads one
34 KiB head (enough for the ISO 9660 descriptor at 32 KiB) and answers with a small
:class:`Detected`. Superblocks and boot sectors are parsed from the formats' own declarations
(``c_fat``, ``c_ext4``), which import nothing heavy; ``construct`` is only imported for the
rare cases left to the MBR parser, so a sniff costs no start-up time.
"""
from __future__ import annotations

import importlib
import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

#: What :func:`sniff` can answer (besides ``"unknown"``).
FORMATS = ("gpt", "mbr", "fat12", "fat16", "fat32", "ext2", "ext3", "ext4", "iso9660",
           "squashfs", "erofs", "cpio", "tar", "zip", "qcow2", "android-sparse", "vmdk", "vhdx",
           "vpc", "pe", "uki",
           "bzimage", "elf", "multiboot", "multiboot2", "grub-boot", "grub-core")
DISK_FORMATS = ("gpt", "mbr")
FS_FORMATS = ("fat12", "fat16", "fat32", "ext2", "ext3", "ext4", "iso9660", "squashfs", "erofs")
ARCHIVE_FORMATS = ("cpio", "tar", "zip")
#: Kernels a multiboot loader boots (GNU Mach, Xen); ``compression`` says if gzipped.
MULTIBOOT_FORMATS = ("multiboot", "multiboot2")
COMPRESSIONS = ("gzip", "xz", "zstd", "lz4", "lz4-legacy", "bzip2")

#: Filesystems imgkit reads but cannot write yet: describe-only modules. Every other
#: filesystem is read through its entry in the filesystem table (:mod:`imgkit.filesystems`).
READ_ONLY_FILESYSTEMS: dict[str, str] = {}
_FILESYSTEM_OF = {"fat12": "vfat", "fat16": "vfat", "fat32": "vfat", "ext2": "ext4",
                  "ext3": "ext4", "ext4": "ext4", "iso9660": "iso9660", "squashfs": "squashfs",
                  "erofs": "erofs"}

HEAD = 34 * 1024
_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"), (b"\x02\x21\x4c\x18", "lz4-legacy"), (b"BZh", "bzip2"),
)
_CPIO_MAGIC = (b"070701", b"070702", b"070707")
_CPIO_BINARY = (b"\xc7\x71", b"\x71\xc7")
_QCOW2 = b"QFI\xfb"
_ISO_AT, _ISO_ID = 32769, b"CD001"
_GPT_SIGNATURE = b"EFI PART"
_EROFS_AT, _EROFS_MAGIC = 1024, b"\xe2\xe1\xf5\xe0"       # 0xE0F5E1E2 little-endian
_BZIMAGE_AT, _BZIMAGE_MAGIC = 0x202, b"HdrS"               # the x86 boot protocol header
_BOOT_SIGNATURE = b"\x55\xaa"
#: The messages GRUB's i386-pc boot.img (MBR code) and diskboot.img (the core image's first
#: sector) print, which identify them (boot.S and diskboot.S ``notification_string`` on).
GRUB_BOOT_IMG_MARK = b"GRUB \x00Geom\x00Hard Disk\x00Read\x00 Error"
GRUB_DISKBOOT_MARK = b"loading\x00"
GRUB_DISKBOOT_MARK2 = b"Geom\x00Read\x00 Error"


@dataclass(frozen=True)
class Detected:
    """What :func:`sniff` found: ``format`` (one of :data:`FORMATS` or ``"unknown"``), the
    ``compression`` around an archive, and for a disk whether sector 0 ends in ``55 AA``
    (``boot_signature``) and holds code in its first 440 bytes (``boot_code``)."""

    format: str
    compression: str | None = None
    boot_signature: bool = False
    boot_code: bool = False

    @property
    def is_disk(self) -> bool:
        return self.format in DISK_FORMATS

    @property
    def is_filesystem(self) -> bool:
        return self.format in FS_FORMATS

    @property
    def is_archive(self) -> bool:
        return self.format in ARCHIVE_FORMATS or (self.compression is not None
                                                  and self.format not in MULTIBOOT_FORMATS)

    @property
    def is_multiboot(self) -> bool:
        return self.format in MULTIBOOT_FORMATS

    @property
    def filesystem(self) -> str | None:
        """The filesystem type name (``vfat``, ``ext4``...) whose reader handles it."""
        return _FILESYSTEM_OF.get(self.format)


def reader(fs_type: str | None) -> Any:
    """What reads a filesystem type: its filesystem-table handler (``describe``,
    ``open_tree``), a describe-only module for the types imgkit cannot write, or ``None``."""
    if not fs_type:
        return None
    from imgkit import filesystems

    if fs_type in filesystems.names():
        return filesystems.get(fs_type)
    name = READ_ONLY_FILESYSTEMS.get(fs_type)
    return importlib.import_module(name) if name else None


def regular_file(path: str | os.PathLike, what: str = "image") -> str:
    """``path`` if it is a regular file (symlinks followed); else an :class:`InputError`
    naming it. A FIFO, a socket or a device (``/dev/zero``) would block a reader or never
    end, so none is read where a file is expected."""
    import stat

    from imgkit.errors import InputError
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {path!r} does not exist") from None
    except OSError as exc:
        raise InputError(f"{what} {path!r} cannot be read: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return path
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
            else "a character device" if stat.S_ISCHR(st.st_mode)
            else "a block device" if stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise InputError(f"{what} {path!r} is {kind}, expected a regular file",
                     hint="copy the data into a file first" if kind != "a directory" else None)


def kernel_kind(path: str | os.PathLike) -> tuple[str | None, str]:
    """What QEMU's ``-kernel`` would make of ``path``: ``("bzimage" | "elf" | "multiboot",
    description)`` for a kernel it boots, ``(None, what the file is)`` otherwise."""
    with open(path, "rb") as f:
        head = f.read(HEAD)
    found = sniff_bytes(head)
    if found.format == "bzimage":
        return "bzimage", "a Linux bzImage"
    if found.format == "multiboot" and not found.compression:
        return "multiboot", "a multiboot kernel"
    if found.format == "elf":
        return "elf", "an ELF executable"
    if found.is_multiboot:
        return None, (f"a {found.format} kernel (QEMU boots it only through GRUB: "
                      "imgkit run --kernel does that)")
    if found.compression:
        return None, (f"{found.compression}-compressed data" + (
            f" ({found.format})" if found.format != found.compression else "")
            + ": decompress it first")
    if not head:
        return None, "an empty file"
    if found.format == "unknown":
        return None, "not a recognised format" + (" (zeros)" if not head.strip(b"\0") else "")
    return None, f"{'an' if found.format[:1] in 'aeiou' else 'a'} {found.format} image"


def sniff(f: BinaryIO, offset: int = 0) -> Detected:
    """What the data at ``offset`` of the binary file ``f`` is."""
    f.seek(offset)
    return sniff_bytes(f.read(HEAD))


def sniff_path(path: str | os.PathLike, offset: int = 0) -> Detected:
    with open(path, "rb") as f:
        return sniff(f, offset)


def sniff_bytes(head: bytes) -> Detected:
    """What a file starting with ``head`` (:data:`HEAD` bytes, or all of a shorter file) is."""
    signed = head[510:512] == _BOOT_SIGNATURE
    disk = dict(boot_signature=signed, boot_code=signed and any(head[:440]))
    if head[:4] == _QCOW2:
        return Detected("qcow2")
    from imgkit.formats import android_sparse
    if head[:4] == android_sparse.MAGIC_BYTES:
        return Detected("android-sparse")
    if head[:4] == b"KDMV":
        return Detected("vmdk")
    if head[:8] == b"vhdxfile":
        return Detected("vhdx")
    if head[:8] == b"conectix":
        return Detected("vpc")
    if head[_ISO_AT:_ISO_AT + 5] == _ISO_ID:
        return Detected("iso9660", **disk)
    from imgkit.formats import squashfs
    if head[:4] == squashfs.MAGIC:
        return Detected("squashfs")
    if head[512:520] == _GPT_SIGNATURE or (head[4096:4104] == _GPT_SIGNATURE
                                           and _protective(head)):
        return Detected("gpt", **disk)
    if head[_BZIMAGE_AT:_BZIMAGE_AT + 4] == _BZIMAGE_MAGIC:
        return Detected("bzimage")
    from imgkit.formats.fat import read as fat_read
    fat = fat_read.sniff(head)
    if fat:
        return Detected(fat)
    from imgkit.formats.ext4 import c_ext4
    ext = c_ext4.sniff(head)
    if ext:
        return Detected(ext)
    if head[_EROFS_AT:_EROFS_AT + 4] == _EROFS_MAGIC:
        return Detected("erofs")
    if head[:4] == b"\x7fELF":
        return Detected(_multiboot_kind(head) or "elf")
    if head[:2] == b"MZ":
        pe = _pe_kind(head)
        if pe:
            return Detected(pe)
    inner = _archive_kind(head)
    if inner:
        return Detected(inner)
    for magic, method in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            inner = _peek_decompressed(head, method, _multiboot_head())
            return Detected(_archive_kind(inner) or _multiboot_kind(inner) or method, method)
    if signed:
        from imgkit.formats import mbr
        if mbr.looks_like_table(head[:512]):
            return Detected("mbr", **disk)
    if is_grub_core(head):
        return Detected("grub-core")
    if signed and boot_loader(head) is not None:
        return Detected("grub-boot", **disk)
    multiboot = _multiboot_kind(head)   # a kernel that is no ELF (a.out kludge, raw binary)
    if multiboot:
        return Detected(multiboot)
    return Detected("unknown", **disk)


def boot_loader(sector: bytes) -> str | None:
    """Which boot code is in the first 440 bytes of a disk's sector 0, if known."""
    if GRUB_BOOT_IMG_MARK in sector[:440]:
        return "GRUB i386-pc boot.img"
    return None


def is_grub_core(sector: bytes) -> bool:
    """Whether ``sector`` is GRUB's diskboot.img: the first sector of an i386-pc core image."""
    return GRUB_DISKBOOT_MARK in sector[:512] and GRUB_DISKBOOT_MARK2 in sector[:512]


def _multiboot_head() -> int:
    from imgkit.formats.multiboot import HEAD_BYTES
    return HEAD_BYTES


def _multiboot_kind(head: bytes) -> str | None:
    """``multiboot``/``multiboot2`` for a kernel (ELF or not) starting ``head``."""
    from imgkit.formats.multiboot import find_header
    found = find_header(head)
    return found.kind if found else None


def _protective(head: bytes) -> bool:
    """A protective MBR in front of a 4096-byte-sector GPT."""
    from imgkit.formats import mbr
    try:
        return mbr.read_mbr(io.BytesIO(head[:512])).is_protective
    except Exception:   # a damaged sector 0 is simply not a protective MBR
        return False


def _archive_kind(head: bytes) -> str | None:
    if head[:6] in _CPIO_MAGIC or head[:2] in _CPIO_BINARY:
        return "cpio"
    from imgkit.formats.tar import looks_like_tar
    if looks_like_tar(head):
        return "tar"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return None


def _pe_kind(head: bytes) -> str | None:
    """``"uki"`` for a PE with a ``.linux`` section, ``"pe"`` for another PE, else None."""
    from imgkit.formats.pe import section_names_in_head
    names = section_names_in_head(head)
    if names is None:
        return None
    return "uki" if ".linux" in names else "pe"


def _peek_decompressed(head: bytes, method: str, n: int = 1024) -> bytes:
    """The first ``n`` bytes of the compressed stream starting ``head`` (best effort)."""
    import bz2
    import lzma
    import zlib

    try:
        if method == "gzip":
            return zlib.decompressobj(31).decompress(head, n)
        if method == "xz":
            return lzma.LZMADecompressor().decompress(head, max_length=n)
        if method == "bzip2":
            return bz2.BZ2Decompressor().decompress(head, max_length=n)
        if method == "zstd":
            try:
                import zstandard
            except ImportError:
                pass
            else:
                return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(head)).read(n)
        if method == "lz4":
            try:
                import lz4.frame
            except ImportError:
                pass
            else:
                return lz4.frame.LZ4FrameDecompressor().decompress(head, max_length=n)
        from imgkit import tools
        tool = {"zstd": "zstd", "lz4": "lz4", "lz4-legacy": "lz4"}.get(method)
        if tool and tools.have(tool):
            return tools.run([tool, "-dc"], input=head, check=False).stdout[:n]
    except Exception:   # truncated input: each decompressor raises its own error types
        pass
    return b""
