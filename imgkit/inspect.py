"""What is in an image file: detection by magic numbers, and a JSON-able description.

``imgkit inspect`` answers "what did I build?" without mounting anything: partition tables are
read with our own GPT/MBR readers, and the filesystem inside each partition is identified
from its superblock or boot sector, parsed here in a few lines of Python (FAT boot sector,
ext2/3/4 superblock, ISO 9660 volume descriptors, squashfs superblock). Archives are counted
through libarchive, PE files through :mod:`imgkit.formats.pe`, and qcow2 through
``qemu-img info`` (its content is converted to a temporary sparse raw image to be read).

Everything reads at most a few sectors per structure: a 100 GiB disk image describes as fast
as a small one.
"""
from __future__ import annotations

import bz2
import contextlib
import io
import json
import lzma
import os
import struct
import tempfile
import uuid
import weakref
import zlib
from typing import BinaryIO, Iterator

from imgkit import tools
from imgkit.errors import ImageError, InputError
from imgkit.formats import gpt as _gpt
from imgkit.formats import mbr as _mbr
from imgkit.disk.parttypes import describe_gpt, describe_mbr, lookup

#: What :func:`detect` can answer (besides ``"unknown"``).
FORMATS = ("gpt", "mbr", "fat12", "fat16", "fat32", "ext2", "ext3", "ext4", "iso9660",
           "squashfs", "cpio", "tar", "zip", "qcow2", "pe", "uki")
DISK_FORMATS = ("gpt", "mbr")
FS_FORMATS = ("fat12", "fat16", "fat32", "ext2", "ext3", "ext4", "iso9660", "squashfs")
ARCHIVE_FORMATS = ("cpio", "tar", "zip")

_HEAD = 34 * 1024          # enough for the ISO 9660 primary volume descriptor at 32 KiB
_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"), (b"\x02\x21\x4c\x18", "lz4-legacy"), (b"BZh", "bzip2"),
)
_CPIO_MAGIC = (b"070701", b"070702", b"070707", b"\xc7\x71", b"\x71\xc7")


# -- reading helpers --------------------------------------------------------------------------

@contextlib.contextmanager
def _opened(source: str | os.PathLike | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"image {path!r} does not exist")
        if os.path.isdir(path):
            raise InputError(f"{path!r} is a directory, expected an image file")
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise InputError(f"cannot open image {path!r}: {exc.strerror}") from exc
        with f:
            yield f
    else:
        yield source


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _cstr(raw: bytes, encoding: str = "ascii") -> str:
    return raw.split(b"\0", 1)[0].decode(encoding, "replace").strip()


# -- detection --------------------------------------------------------------------------------

def detect(source: str | os.PathLike | BinaryIO, offset: int | None = None) -> str:
    """The format of the image at ``source`` (a path, or a binary file object).

    ``offset`` is where the image starts in the file (a partition inside a disk); for a file
    object it defaults to the object's current position, for a path to 0. Returns one of
    :data:`FORMATS`, or ``"unknown"``. A compressed cpio or tar (gzip, xz, zstd, lz4, bzip2)
    answers ``"cpio"``/``"tar"``; an ISO 9660 image that also carries an MBR or GPT (a hybrid
    ISO) answers ``"iso9660"``.
    """
    with _opened(source) as f:
        base = offset if offset is not None else (0 if isinstance(source, (str, os.PathLike))
                                                  else f.tell())
        return _sniff(f, base)[0]


def _sniff(f: BinaryIO, base: int) -> tuple[str, str | None]:
    """``(format, compression)`` of the data at ``base``."""
    head = _read_at(f, base, _HEAD)
    if head[:4] == b"QFI\xfb":
        return "qcow2", None
    if head[32769:32774] == b"CD001":
        return "iso9660", None
    if head[:4] == b"hsqs":
        return "squashfs", None
    if head[512:520] == b"EFI PART" or (head[4096:4104] == b"EFI PART" and _has_protective(head)):
        return "gpt", None
    fat = _fat_kind(head)
    if fat:
        return fat, None
    if len(head) >= 1082 and head[1080:1082] == b"\x53\xef":
        return _ext_kind(head[1024:2048]), None
    if head[:2] == b"MZ":
        pe = _pe_kind(head)
        if pe:
            return pe, None
    inner = _archive_kind(head)
    if inner:
        return inner, None
    for magic, method in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            inner = _archive_kind(_peek_decompressed(head, method))
            return (inner or method), method
    if _mbr_plausible(head):
        return "mbr", None
    return "unknown", None


def _archive_kind(head: bytes) -> str | None:
    if head[:6] in _CPIO_MAGIC or head[:2] in _CPIO_MAGIC[3:]:
        return "cpio"
    if head[257:262] == b"ustar" or _tar_v7(head):
        return "tar"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return None


def _tar_v7(head: bytes) -> bool:
    """An old (pre-POSIX) tar header: only its checksum identifies it."""
    if len(head) < 512 or head[0] == 0:
        return False
    try:
        stored = int(head[148:156].split(b"\0")[0].strip() or b"x", 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:512])


def _peek_decompressed(head: bytes, method: str, n: int = 1024) -> bytes:
    """The first ``n`` bytes of the compressed stream starting ``head`` (best effort)."""
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
        tool = {"zstd": "zstd", "lz4": "lz4", "lz4-legacy": "lz4"}.get(method)
        if tool and tools.have(tool):
            return tools.run([tool, "-dc"], input=head, check=False).stdout[:n]
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, RuntimeError):
        pass
    except Exception:   # optional modules raise their own error types on truncated input
        pass
    return b""


def _has_protective(head: bytes) -> bool:
    return head[510:512] == b"\x55\xaa" and any(head[446 + 16 * i + 4] == 0xEE for i in range(4))


def _mbr_plausible(head: bytes) -> bool:
    """A partition table sector: boot signature, sane status bytes, at least one entry."""
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return False
    used = 0
    for i in range(4):
        e = head[446 + 16 * i: 462 + 16 * i]
        if e[0] not in (0, 0x80):
            return False
        if e[4] and struct.unpack_from("<I", e, 12)[0]:
            used += 1
    return used > 0


def _pe_kind(head: bytes) -> str | None:
    if len(head) < 64:
        return None
    lfanew = struct.unpack_from("<I", head, 0x3C)[0]
    if lfanew + 24 > len(head) or head[lfanew:lfanew + 4] != b"PE\0\0":
        return None
    nsec, = struct.unpack_from("<H", head, lfanew + 6)
    optsize, = struct.unpack_from("<H", head, lfanew + 20)
    table = lfanew + 24 + optsize
    names = {head[table + 40 * i: table + 40 * i + 8].rstrip(b"\0") for i in range(nsec)
             if table + 40 * i + 8 <= len(head)}
    return "uki" if b".linux" in names else "pe"


# -- FAT --------------------------------------------------------------------------------------

class FatGeometry:
    """The numbers of a FAT boot sector (BPB) that locate everything else."""

    def __init__(self, sec: bytes) -> None:
        (self.bytes_per_sector, self.sectors_per_cluster, self.reserved_sectors, self.fats,
         self.root_entries, tot16, self.media, fatsz16) = struct.unpack_from("<HBHBHHBH", sec, 11)
        self.hidden_sectors, tot32, fatsz32 = struct.unpack_from("<III", sec, 28)
        self.total_sectors = tot16 or tot32
        self.fat_sectors = fatsz16 or fatsz32
        self.is_fat32 = fatsz16 == 0
        bps = self.bytes_per_sector or 512
        self.root_sectors = -(-self.root_entries * 32 // bps)
        self.first_data_sector = (self.reserved_sectors + self.fats * self.fat_sectors
                                  + self.root_sectors)
        spc = self.sectors_per_cluster or 1
        self.clusters = max(self.total_sectors - self.first_data_sector, 0) // spc
        self.cluster_size = bps * spc
        self.root_cluster = struct.unpack_from("<I", sec, 44)[0] if self.is_fat32 else 0
        ebpb = 64 if self.is_fat32 else 36      # BS_DrvNum ... of the extended BPB
        self.boot_sig = sec[ebpb + 2]
        self.serial = struct.unpack_from("<I", sec, ebpb + 3)[0] if self.boot_sig in (0x28, 0x29) else None
        self.boot_label = sec[ebpb + 7: ebpb + 18] if self.boot_sig == 0x29 else b""
        self.oem = sec[3:11]

    @property
    def kind(self) -> str:
        if self.is_fat32:
            return "fat32"
        return "fat12" if self.clusters <= 4084 else "fat16"

    def cluster_offset(self, cluster: int) -> int:
        """Byte offset (from the volume's start) of data cluster ``cluster`` (2 is the first)."""
        return (self.first_data_sector + (cluster - 2) * self.sectors_per_cluster) * self.bytes_per_sector

    def valid(self) -> bool:
        spc = self.sectors_per_cluster
        return (self.bytes_per_sector in (512, 1024, 2048, 4096) and spc and not spc & (spc - 1)
                and self.reserved_sectors >= 1 and 1 <= self.fats <= 4 and self.fat_sectors > 0
                and self.total_sectors > self.first_data_sector
                and (self.media >= 0xF8 or self.media == 0xF0)
                and (not self.is_fat32 or self.root_entries == 0))


def _fat_kind(head: bytes) -> str | None:
    if len(head) < 512 or head[0] not in (0xEB, 0xE9) or head[510:512] != b"\x55\xaa":
        return None
    geo = FatGeometry(head[:512])
    return geo.kind if geo.valid() else None


def fat_next_cluster(f: BinaryIO, base: int, geo: FatGeometry, cluster: int) -> int:
    """The FAT entry of ``cluster`` (the next cluster of its chain, or an end marker)."""
    fat = base + geo.reserved_sectors * geo.bytes_per_sector
    if geo.kind == "fat32":
        return struct.unpack("<I", _read_at(f, fat + cluster * 4, 4))[0] & 0x0FFFFFFF
    if geo.kind == "fat16":
        return struct.unpack("<H", _read_at(f, fat + cluster * 2, 2))[0]
    pair, = struct.unpack("<H", _read_at(f, fat + cluster * 3 // 2, 2))
    return pair >> 4 if cluster & 1 else pair & 0xFFF


def _fat_root_label(f: BinaryIO, base: int, geo: FatGeometry) -> str | None:
    """The volume label entry of the root directory (what ``mlabel``, blkid and Windows show)."""
    bps = geo.bytes_per_sector
    chunks: list[bytes] = []
    if geo.is_fat32:
        cluster, seen = geo.root_cluster, 0
        end = 0x0FFFFFF8
        while 2 <= cluster < end and seen < 16:
            chunks.append(_read_at(f, base + geo.cluster_offset(cluster), geo.cluster_size))
            cluster, seen = fat_next_cluster(f, base, geo, cluster), seen + 1
    else:
        start = (geo.reserved_sectors + geo.fats * geo.fat_sectors) * bps
        chunks.append(_read_at(f, base + start, min(geo.root_sectors * bps, 1 << 20)))
    for chunk in chunks:
        for i in range(0, len(chunk) - 31, 32):
            d = chunk[i:i + 32]
            if d[0] == 0:
                return None
            if d[0] == 0xE5 or d[11] == 0x0F:
                continue
            if d[11] & 0x08:
                return d[:11].decode("cp437", "replace").rstrip()
    return None


def fat_info(f: BinaryIO, base: int = 0) -> dict:
    """Describe the FAT volume at ``base``: type, label, serial, geometry."""
    geo = FatGeometry(_read_at(f, base, 512))
    label = _fat_root_label(f, base, geo)
    if label is None and geo.boot_label and geo.boot_label.rstrip() != b"NO NAME":
        label = geo.boot_label.decode("cp437", "replace").rstrip()
    serial = f"{geo.serial >> 16:04X}-{geo.serial & 0xFFFF:04X}" if geo.serial is not None else None
    return {"format": geo.kind, "label": label or "", "uuid": serial,
            "size": geo.total_sectors * geo.bytes_per_sector, "oem": _cstr(geo.oem),
            "bytes_per_sector": geo.bytes_per_sector,
            "sectors_per_cluster": geo.sectors_per_cluster, "cluster_size": geo.cluster_size,
            "clusters": geo.clusters, "reserved_sectors": geo.reserved_sectors,
            "fats": geo.fats, "fat_sectors": geo.fat_sectors, "root_entries": geo.root_entries,
            "total_sectors": geo.total_sectors, "hidden_sectors": geo.hidden_sectors}


# -- ext2/3/4 ---------------------------------------------------------------------------------

_EXT_COMPAT = {0x1: "dir_prealloc", 0x2: "imagic_inodes", 0x4: "has_journal", 0x8: "ext_attr",
               0x10: "resize_inode", 0x20: "dir_index", 0x40: "lazy_bg", 0x200: "sparse_super2",
               0x400: "fast_commit", 0x800: "stable_inodes", 0x1000: "orphan_file"}
_EXT_INCOMPAT = {0x1: "compression", 0x2: "filetype", 0x4: "needs_recovery",
                 0x8: "journal_dev", 0x10: "meta_bg", 0x40: "extent", 0x80: "64bit",
                 0x100: "mmp", 0x200: "flex_bg", 0x400: "ea_inode", 0x1000: "dirdata",
                 0x2000: "metadata_csum_seed", 0x4000: "large_dir", 0x8000: "inline_data",
                 0x10000: "encrypt", 0x20000: "casefold"}
_EXT_RO_COMPAT = {0x1: "sparse_super", 0x2: "large_file", 0x4: "btree_dir", 0x8: "huge_file",
                  0x10: "uninit_bg", 0x20: "dir_nlink", 0x40: "extra_isize", 0x100: "quota",
                  0x200: "bigalloc", 0x400: "metadata_csum", 0x800: "replica",
                  0x1000: "read-only", 0x2000: "project", 0x4000: "shared_blocks",
                  0x8000: "verity", 0x10000: "orphan_present"}
# What ext3 does not know: any of these makes it ext4 (the rule blkid follows).
_EXT4_INCOMPAT = 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x4000 | 0x8000 | 0x10000 | 0x20000
_EXT4_RO = 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x8000


def _ext_kind(sb: bytes) -> str:
    compat, incompat, ro = struct.unpack_from("<III", sb, 92)
    if incompat & _EXT4_INCOMPAT or ro & _EXT4_RO:
        return "ext4"
    return "ext3" if compat & 0x4 else "ext2"


def ext_info(f: BinaryIO, base: int = 0) -> dict:
    """Describe the ext2/3/4 filesystem at ``base`` from its superblock."""
    sb = _read_at(f, base + 1024, 1024)
    inodes, blocks_lo, _r, free_lo, free_inodes, first_data, log_bs = struct.unpack_from("<7I", sb, 0)
    compat, incompat, ro = struct.unpack_from("<III", sb, 92)
    block_size = 1024 << log_bs
    hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & 0x80 else 0
    free_hi = struct.unpack_from("<I", sb, 0x158)[0] if incompat & 0x80 else 0
    blocks = blocks_lo | hi << 32
    features = ([n for b, n in _EXT_COMPAT.items() if compat & b]
                + [n for b, n in _EXT_INCOMPAT.items() if incompat & b]
                + [n for b, n in _EXT_RO_COMPAT.items() if ro & b])
    return {"format": _ext_kind(sb), "label": _cstr(sb[120:136], "utf-8"),
            "uuid": str(uuid.UUID(bytes=sb[104:120])), "size": blocks * block_size,
            "block_size": block_size, "blocks": blocks, "free_blocks": free_lo | free_hi << 32,
            "inodes": inodes, "free_inodes": free_inodes,
            "inode_size": struct.unpack_from("<H", sb, 88)[0] if struct.unpack_from("<I", sb, 76)[0] else 128,
            "features": features,
            "last_mounted": _cstr(sb[136:200], "utf-8"),
            "created": struct.unpack_from("<I", sb, 0x108)[0] or None}


# -- ISO 9660 ---------------------------------------------------------------------------------

def _iso_date(raw: bytes) -> str | None:
    """A volume descriptor date (``YYYYMMDDHHMMSScc`` + zone) as ISO 8601, or None if unset."""
    text = raw[:16].decode("ascii", "replace")
    if not text.strip("0 \0"):
        return None
    zone = struct.unpack("b", raw[16:17])[0] * 15
    sign = "+" if zone >= 0 else "-"
    return (f"{text[0:4]}-{text[4:6]}-{text[6:8]}T{text[8:10]}:{text[10:12]}:{text[12:14]}"
            f"{sign}{abs(zone) // 60:02d}:{abs(zone) % 60:02d}")


def iso_info(f: BinaryIO, base: int = 0) -> dict:
    """Describe the ISO 9660 image at ``base``: volume ids, extensions, El Torito entries."""
    out: dict = {"format": "iso9660"}
    joliet = False
    catalog = None
    for n in range(16, 64):
        vd = _read_at(f, base + n * 2048, 2048)
        if len(vd) < 2048 or vd[1:6] != b"CD001":
            break
        t = vd[0]
        if t == 255:
            break
        if t == 1:
            block = struct.unpack_from("<H", vd, 128)[0]
            out.update(label=_cstr(vd[40:72]), uuid=None,
                       size=struct.unpack_from("<I", vd, 80)[0] * block,
                       system_id=_cstr(vd[8:40]), volume_set=_cstr(vd[190:318]),
                       publisher=_cstr(vd[318:446]), preparer=_cstr(vd[446:574]),
                       application=_cstr(vd[574:702]), block_size=block,
                       created=_iso_date(vd[813:830]), modified=_iso_date(vd[830:847]))
            # UUID as blkid shows it: the creation date digits.
            created = vd[813:829].decode("ascii", "replace")
            if created.strip("0 \0"):
                out["uuid"] = "-".join((created[0:4], created[4:6], created[6:8], created[8:10],
                                        created[10:12], created[12:14], created[14:16]))
            root = vd[156:190]
            out["rock_ridge"] = _iso_rock_ridge(f, base, root, block)
        elif t == 2 and vd[88:90] == b"%/" and vd[90:91] in (b"@", b"C", b"E"):
            joliet = True
        elif t == 0 and vd[7:30] == b"EL TORITO SPECIFICATION":
            catalog = struct.unpack_from("<I", vd, 71)[0]
    out["joliet"] = joliet
    out["el_torito"] = _el_torito(f, base, catalog) if catalog is not None else []
    return out


def _iso_rock_ridge(f: BinaryIO, base: int, root: bytes, block: int) -> bool:
    """Whether the root's "." record carries SUSP/Rock Ridge entries."""
    extent = struct.unpack_from("<I", root, 2)[0]
    rec = _read_at(f, base + extent * block, 256)
    if not rec:
        return False
    length, name_len = rec[0], rec[32]
    su = rec[33 + name_len + (1 - name_len % 2): length]
    return su[:2] == b"SP" or b"PX" in su or b"RR" in su


def _el_torito(f: BinaryIO, base: int, catalog: int) -> list[dict]:
    data = _read_at(f, base + catalog * 2048, 2048)
    platforms = {0: "bios", 1: "ppc", 2: "mac", 0xEF: "efi"}
    media = {0: "no-emulation", 1: "floppy-1.2M", 2: "floppy-1.44M", 3: "floppy-2.88M",
             4: "hard-disk"}
    entries: list[dict] = []
    if len(data) < 64 or data[0] != 1:
        return entries
    platform = data[1]

    def entry(e: bytes) -> dict:
        return {"platform": platforms.get(platform, f"0x{platform:02x}"),
                "bootable": e[0] == 0x88, "media": media.get(e[1] & 0x0F, f"0x{e[1]:02x}"),
                "load_rba": struct.unpack_from("<I", e, 8)[0],
                "sectors": struct.unpack_from("<H", e, 6)[0]}

    entries.append(entry(data[32:64]))
    pos = 64
    while pos + 32 <= len(data) and data[pos] in (0x90, 0x91):
        platform = data[pos + 1]
        count = struct.unpack_from("<H", data, pos + 2)[0]
        last = data[pos] == 0x91
        pos += 32
        for _ in range(count):
            if pos + 32 > len(data):
                break
            if data[pos] in (0x88, 0x00):
                entries.append(entry(data[pos:pos + 32]))
            pos += 32
        if last:
            break
    return entries


# -- squashfs ---------------------------------------------------------------------------------

def squashfs_info(f: BinaryIO, base: int = 0) -> dict:
    sb = _read_at(f, base, 96)
    inodes, mkfs_time, block_size, _frags, comp = struct.unpack_from("<IIIIH", sb, 4)
    major, minor = struct.unpack_from("<HH", sb, 28)
    used = struct.unpack_from("<Q", sb, 40)[0]
    methods = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
    return {"format": "squashfs", "label": "", "uuid": None, "size": used,
            "version": f"{major}.{minor}", "inodes": inodes, "block_size": block_size,
            "compression": methods.get(comp, str(comp)), "created": mkfs_time}


def filesystem_info(f: BinaryIO, base: int = 0, size: int | None = None) -> dict:
    """Detect and describe the filesystem (or whatever else) starting at ``base``."""
    kind, compression = _sniff(f, base)
    if kind.startswith("fat"):
        return fat_info(f, base)
    if kind.startswith("ext"):
        return ext_info(f, base)
    if kind == "iso9660":
        return iso_info(f, base)
    if kind == "squashfs":
        return squashfs_info(f, base)
    if kind == "unknown":
        head = _read_at(f, base, 4096)
        if not head.strip(b"\0"):
            return {"format": "empty"}
        return {"format": "unknown", "magic": head[:16].hex(" ")}
    out = {"format": kind}
    if compression:
        out["compression"] = compression
    return out


# -- partition tables -------------------------------------------------------------------------

_MBR_NAMES = {0x00: "Empty", 0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16",
              0x07: "HPFS/NTFS/exFAT", 0x0B: "W95 FAT32", 0x0C: "W95 FAT32 (LBA)",
              0x0E: "W95 FAT16 (LBA)", 0x0F: "W95 Ext'd (LBA)", 0x82: "Linux swap / Solaris",
              0x83: "Linux", 0x85: "Linux extended", 0x8E: "Linux LVM", 0xA5: "FreeBSD",
              0xA6: "OpenBSD", 0xEA: "Linux extended boot", 0xEE: "GPT",
              0xEF: "EFI (FAT-12/16/32)", 0xFD: "Linux raid autodetect"}

_GPT_ATTRS = {0: "required", 1: "no-block-io", 2: "legacy-bios-bootable", 59: "growfs",
              60: "read-only", 62: "hidden", 63: "no-auto"}


def _gpt_type_description(guid: uuid.UUID) -> str:
    name = describe_gpt(guid)
    t = lookup(name)
    return t.description if t is not None else "unknown"


def attribute_names(mask: int) -> list[str]:
    """GPT attribute bits as names (bits without a name as ``bitN``)."""
    return [_GPT_ATTRS.get(b, f"bit{b}") for b in range(64) if mask >> b & 1]


def _gpt_dict(table: _gpt.GptTable, f: BinaryIO, disk_size: int) -> dict:
    ss = table.sector_size
    parts = []
    for p in table.partitions:
        parts.append({
            "number": p.number, "name": p.name, "start": p.first_lba * ss,
            "size": p.num_sectors * ss, "start_lba": p.first_lba, "end_lba": p.last_lba,
            "sectors": p.num_sectors, "type": str(p.type_guid),
            "type_name": describe_gpt(p.type_guid),
            "type_description": _gpt_type_description(p.type_guid), "guid": str(p.guid),
            "attributes": f"0x{p.attributes:016x}", "attribute_names": attribute_names(p.attributes),
            "bootable": bool(p.attributes & _gpt.ATTR_LEGACY_BIOS_BOOTABLE),
            "filesystem": _safe_fs(f, p.first_lba * ss, p.num_sectors * ss, disk_size),
        })
    out = {"table": "gpt", "sector_size": ss, "disk_guid": str(table.disk_guid),
           "sectors": disk_size // ss, "first_usable_lba": table.first_usable_lba,
           "last_usable_lba": table.last_usable_lba, "max_partitions": table.num_entries,
           "backup_ok": table.backup_ok, "partitions": parts}
    pmbr = table.protective_mbr
    if pmbr is not None:
        hybrid = [p for p in pmbr.partitions if p.type != _mbr.PROTECTIVE_TYPE]
        if hybrid:
            out["hybrid_mbr"] = [{"number": p.number, "type": f"0x{p.type:02x}",
                                  "start_lba": p.start_lba, "sectors": p.num_sectors,
                                  "bootable": p.bootable} for p in hybrid]
    return out


def _mbr_dict(table: _mbr.MbrTable, f: BinaryIO, disk_size: int) -> dict:
    ss = _mbr.SECTOR
    parts = []
    for p in table.partitions:
        parts.append({
            "number": p.number, "name": "", "start": p.start_lba * ss,
            "size": p.num_sectors * ss, "start_lba": p.start_lba, "end_lba": p.end_lba,
            "sectors": p.num_sectors, "type": f"0x{p.type:02x}", "type_name": describe_mbr(p.type),
            "type_description": _MBR_NAMES.get(p.type, "unknown"), "bootable": p.bootable,
            "logical": p.is_logical, "extended": p.is_extended,
            "filesystem": None if p.is_extended else _safe_fs(f, p.start_lba * ss,
                                                              p.num_sectors * ss, disk_size),
        })
    return {"table": "mbr", "sector_size": ss, "disk_signature": f"0x{table.disk_signature:08x}",
            "sectors": disk_size // ss, "partitions": parts}


def _safe_fs(f: BinaryIO, start: int, size: int, disk_size: int) -> dict | None:
    if start >= disk_size:
        return {"format": "missing", "error": "the partition starts past the end of the image"}
    try:
        info = filesystem_info(f, start, size)
    except (struct.error, ValueError, IndexError) as exc:
        return {"format": "unknown", "error": f"unreadable: {exc}"}
    if start + size > disk_size:
        info["truncated"] = True
    if (info.get("size") or 0) > size:
        info["larger_than_partition"] = True
    return info


def read_table(f: BinaryIO, disk_size: int, kind: str | None = None) -> dict | None:
    """The partition table of the disk ``f`` as a dict (``None`` when there is none)."""
    if kind in (None, "gpt", "iso9660"):
        try:
            return _gpt_dict(_gpt.read_gpt(f), f, disk_size)
        except ImageError:
            if kind == "gpt":
                raise
    if kind in (None, "mbr", "iso9660"):
        head = _read_at(f, 0, 512)
        if _mbr_plausible(head):
            return _mbr_dict(_mbr.read_mbr(f), f, disk_size)
    return None


# -- other kinds ------------------------------------------------------------------------------

def _archive_info(path: str) -> dict:
    import libarchive
    entries = data = 0
    fmt = filters = None
    try:
        with libarchive.file_reader(path) as archive:
            for entry in archive:
                entries += 1
                data += (entry.size or 0) if entry.isreg else 0
            fmt, filters = archive.format_name, archive.filter_names
    except libarchive.ArchiveError as exc:
        raise ImageError(f"cannot read archive {path!r}: {exc}") from exc
    dec = [x.decode() if isinstance(x, bytes) else str(x) for x in (filters or [])]
    return {"archive_format": fmt.decode() if isinstance(fmt, bytes) else fmt,
            "filters": [x for x in dec if x != "none"], "entries": entries, "data_bytes": data}


def _pe_info(path: str) -> dict:
    from imgkit.formats.pe import PEImage
    img = PEImage.read(path)
    sections = [{"name": s.name, "virtual_size": s.virtual_size,
                 "virtual_address": f"0x{s.virtual_address:x}", "raw_size": s.raw_size,
                 "raw_offset": f"0x{s.raw_offset:x}"} for s in img.sections]
    out: dict = {"machine": f"0x{img.coff['Machine']:04x}", "pe32plus": img.is_pe32plus,
                 "subsystem": img.optional.get("Subsystem"), "signed": img.is_signed,
                 "sections": sections, "uki": img.section(".linux") is not None}
    with open(path, "rb") as f:
        for name in (".osrel", ".cmdline", ".uname"):
            s = img.section(name)
            if s is None or not s.raw_size:
                continue
            raw = _read_at(f, s.raw_offset, min(s.virtual_size or s.raw_size, s.raw_size, 65536))
            text = raw.rstrip(b"\0").decode("utf-8", "replace").strip()
            if name == ".osrel":
                for line in text.splitlines():
                    if line.startswith("PRETTY_NAME="):
                        out["os"] = line.split("=", 1)[1].strip().strip('"')
            else:
                out[name[1:]] = text
    return out


class _TempRaw:
    """A temporary raw image converted from qcow2, removed when nothing refers to it."""

    def __init__(self, src: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix="imgkit-raw-", suffix=".img")
        os.close(fd)
        weakref.finalize(self, _unlink, self.path)
        tools.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, self.path])


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def qcow2_raw(path: str) -> _TempRaw:
    """``path`` (qcow2) converted to a sparse temporary raw image (``.path``)."""
    return _TempRaw(path)


def _qcow2_info(path: str) -> dict:
    info = json.loads(tools.run(["qemu-img", "info", "--output=json", "-f", "qcow2", path]).stdout)
    spec = (info.get("format-specific") or {}).get("data") or {}
    out = {"virtual_size": info.get("virtual-size"), "cluster_size": info.get("cluster-size"),
           "compat": spec.get("compat"), "backing_file": info.get("backing-filename"),
           "allocated": info.get("actual-size")}
    if out["backing_file"] is None:
        raw = _TempRaw(path)
        out["contents"] = describe(raw.path)
        out["contents"]["path"] = f"{path} (virtual disk)"
    return out


# -- the public description -------------------------------------------------------------------

def describe(path: str | os.PathLike) -> dict:
    """Everything worth knowing about the image at ``path``, as a JSON-able dict.

    Always: ``path``, ``size`` (file bytes), ``format`` (as :func:`detect`). Disks add
    ``table`` with the partition list, each partition with the ``filesystem`` found in it;
    filesystem images add ``filesystem``; a hybrid ISO has both. Archives add ``archive``,
    PE files ``pe``, qcow2 ``qcow2`` (with the described virtual disk as ``contents``).
    Raises :class:`InputError` for a missing file, :class:`ImageError` for an unknown format.
    """
    path = os.fspath(path)
    with _opened(path) as f:
        size = os.fstat(f.fileno()).st_size
        kind, compression = _sniff(f, 0)
        out: dict = {"path": path, "size": size, "format": kind}
        if kind in DISK_FORMATS:
            out["table"] = read_table(f, size, kind)
        elif kind == "iso9660":
            out["filesystem"] = iso_info(f, 0)
            table = read_table(f, size, kind)
            if table is not None:
                out["table"] = table
                out["hybrid"] = table["table"]
        elif kind in FS_FORMATS:
            out["filesystem"] = filesystem_info(f, 0, size)
        elif kind == "unknown":
            raise unknown_format(path, _read_at(f, 0, 16))
    if kind in ARCHIVE_FORMATS or compression:
        out["archive"] = _archive_info(path) if kind in ARCHIVE_FORMATS else {}
        out["archive"]["compression"] = compression or "none"
    elif kind in ("pe", "uki"):
        out["pe"] = _pe_info(path)
    elif kind == "qcow2":
        out["qcow2"] = _qcow2_info(path)
    return out


def unknown_format(path: str, head: bytes) -> ImageError:
    """The error for an image none of :data:`FORMATS` matches, showing its first bytes."""
    what = "an empty file" if not head else (
        "zeros" if not head.strip(b"\0") else f"first bytes {head.hex(' ')} ({head!r:.40})")
    return ImageError(f"{path}: unknown image format: found {what}",
                      hint="recognised: GPT and MBR disks, FAT12/16/32, ext2/3/4, ISO 9660, "
                           "squashfs, qcow2, cpio and tar (plain or gzip/xz/zstd/lz4/bzip2), "
                           "zip, PE/UKI")


# -- for humans -------------------------------------------------------------------------------

def _size(n: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def _fs_summary(fs: dict | None) -> str:
    if not fs:
        return ""
    parts = [fs["format"]]
    if fs.get("label"):
        parts.append(f"label={fs['label']!r}")
    if fs.get("uuid"):
        parts.append(f"uuid={fs['uuid']}")
    if fs.get("size"):
        parts.append(_size(fs["size"]))
    if fs.get("cluster_size"):
        parts.append(f"cluster {fs['cluster_size']}")
    if fs.get("block_size") and fs["format"].startswith("ext"):
        parts.append(f"block {fs['block_size']}")
    if fs.get("truncated"):
        parts.append("TRUNCATED (the image ends inside the partition)")
    if fs.get("larger_than_partition"):
        parts.append("LARGER THAN ITS PARTITION")
    if fs.get("magic"):
        parts.append(f"magic {fs['magic']}")
    return " ".join(parts)


def _table_lines(table: dict) -> list[str]:
    ss = table["sector_size"]
    lines = []
    if table["table"] == "gpt":
        lines.append(f"Partition table: GPT, disk GUID {table['disk_guid'].upper()}, "
                     f"{ss}-byte sectors, {table['max_partitions']} entries")
        lines.append(f"Usable sectors {table['first_usable_lba']}-{table['last_usable_lba']}; "
                     f"backup table {'OK' if table['backup_ok'] else 'MISSING OR DIFFERENT'}")
    else:
        lines.append(f"Partition table: MBR, disk signature {table['disk_signature']}, "
                     f"{ss}-byte sectors")
    parts = table["partitions"]
    if not parts:
        lines.append("No partitions.")
        return lines
    rows = [("#", "Start", "End", "Sectors", "Size", "Type", "Name" if table["table"] == "gpt"
             else "Boot", "Filesystem")]
    for p in parts:
        t = p["type_name"] if p["type_name"] != p["type"] else p["type"]
        if table["table"] == "mbr":
            t = f"{p['type'][2:]} {p['type_description']}"
            name = "*" if p["bootable"] else ""
        else:
            name = p["name"]
        rows.append((str(p["number"]), str(p["start_lba"]), str(p["end_lba"]), str(p["sectors"]),
                     _size(p["size"]), t, name, _fs_summary(p["filesystem"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {0, 1, 2, 3, 4}
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    if table["table"] == "gpt":
        lines.append("")
        for p in parts:
            attrs = ", ".join(p["attribute_names"]) or "none"
            lines.append(f"  {p['number']}: type {p['type']} ({p['type_description']}), "
                         f"guid {p['guid']}, attributes {p['attributes']} ({attrs})")
    for h in table.get("hybrid_mbr", ()):
        lines.append(f"  hybrid MBR entry {h['number']}: type {h['type']}, sectors "
                     f"{h['start_lba']}+{h['sectors']}{', bootable' if h['bootable'] else ''}")
    return lines


def _fs_lines(fs: dict) -> list[str]:
    lines = [f"Filesystem: {_fs_summary(fs)}"]
    skip = {"format", "label", "uuid", "size", "el_torito"}
    for key, value in fs.items():
        if key in skip or value in (None, "", []):
            continue
        if isinstance(value, list):
            value = " ".join(map(str, value))
        lines.append(f"  {key.replace('_', ' ')}: {value}")
    for e in fs.get("el_torito", ()):
        lines.append(f"  El Torito: {e['platform']} {e['media']}, image at block {e['load_rba']}"
                     f" ({e['sectors']} sectors){'' if e['bootable'] else ', not bootable'}")
    return lines


def format_description(d: dict) -> str:
    """The output of :func:`describe` as aligned text for people (like ``sgdisk -p``)."""
    lines = [f"{d['path']}: {d['format']}, {d['size']:,} bytes ({_size(d['size'])})"]
    if "filesystem" in d:
        lines += _fs_lines(d["filesystem"])
    if d.get("table"):
        if "filesystem" in d:
            lines.append(f"Hybrid: the image is also a partitioned disk ({d['table']['table']})")
        lines += _table_lines(d["table"])
    if "archive" in d:
        a = d["archive"]
        lines.append(f"Archive: {a.get('archive_format') or d['format']}, compression "
                     f"{a['compression']}"
                     + (f", {a['entries']} entries, {a['data_bytes']:,} bytes of file data"
                        if "entries" in a else ""))
    if "pe" in d:
        pe = d["pe"]
        kind = "UKI (unified kernel image)" if pe["uki"] else "PE executable"
        lines.append(f"{kind}: machine {pe['machine']}, "
                     f"{'PE32+' if pe['pe32plus'] else 'PE32'}, subsystem {pe['subsystem']}"
                     f"{', signed' if pe['signed'] else ''}")
        for key in ("os", "uname", "cmdline"):
            if pe.get(key):
                lines.append(f"  {key}: {pe[key]}")
        lines.append(f"  {'Name':<10}{'VirtSize':>12}{'VMA':>12}{'RawSize':>12}{'FileOff':>12}")
        for s in pe["sections"]:
            lines.append(f"  {s['name']:<10}{s['virtual_size']:>12}{s['virtual_address']:>12}"
                         f"{s['raw_size']:>12}{s['raw_offset']:>12}")
    if "qcow2" in d:
        q = d["qcow2"]
        lines.append(f"qcow2 (compat {q['compat']}): virtual size {q['virtual_size']:,} bytes "
                     f"({_size(q['virtual_size'])}), cluster size {q['cluster_size']}"
                     + (f", backing file {q['backing_file']}" if q["backing_file"] else ""))
        if q.get("contents"):
            lines.append("Virtual disk:")
            lines += [("  " + line).rstrip() for line in
                      format_description(q["contents"]).splitlines()[1:]]
    return "\n".join(lines)


__all__ = ["detect", "describe", "format_description", "filesystem_info", "read_table",
           "fat_info", "ext_info", "iso_info", "squashfs_info", "FatGeometry", "FORMATS",
           "unknown_format", "qcow2_raw"]
