"""Read a FAT12/16/32 volume: describe its boot sector, list its files as a :class:`Tree`.

Written here rather than taken from pyfatfs, which (1.1.0) reads FAT12 cluster chains as
16-bit entries and drops the lower-case bits of short names: both common on ESPs made by
mkfs.vfat and mtools. Everything comes from the declarations in :mod:`.c_fat` that the
writer uses. The bytes are untrusted: every count, offset and size is checked against what
the image holds before it is used, and cluster chains that loop or leave the volume are
refused with the cluster named.

FAT has no owners or modes: entries are 0:0 with 0755 for directories and 0644 for files, as
Linux shows them by default. Names are the long names, or the short names with the lower-case
bits Windows NT and mtools set.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from imgkit.errors import ImageError
from imgkit.formats.blobs import RunsBlob, available, cstr, read_at
from imgkit.formats.fat import c_fat
from imgkit.formats.fat.c_fat import (
    ATTR_DIRECTORY,
    ATTR_LFN,
    ATTR_LFN_MASK,
    ATTR_VOLUME_ID,
    BPB,
    DIRENT,
    DIRENT_SIZE,
    EBPB16,
    EBPB32,
    LFN,
)
from imgkit.tree import Entry, Kind, Tree

__all__ = ["Geometry", "Volume", "sniff", "describe", "open_tree"]


@dataclass(frozen=True)
class Geometry:
    """The numbers of a FAT boot sector that locate everything else (sizes in bytes)."""

    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    fats: int
    root_entries: int
    total_sectors: int
    fat_sectors: int
    media: int
    hidden_sectors: int
    is_fat32: bool
    root_cluster: int
    serial: int | None
    boot_label: bytes
    oem: bytes

    @classmethod
    def parse(cls, sector: bytes) -> Geometry:
        """From the first 512 bytes of a volume (which must be that long)."""
        if len(sector) < c_fat.SECTOR:
            raise ImageError(f"FAT boot sector: expected {c_fat.SECTOR} bytes, got {len(sector)}")
        bpb = BPB.unpack(sector)
        is_fat32 = bpb.fat_sectors16 == 0
        ext = (EBPB32 if is_fat32 else EBPB16).unpack(sector, c_fat.EBPB_OFFSET)
        sig = ext.boot_signature
        return cls(
            bytes_per_sector=bpb.bytes_per_sector, sectors_per_cluster=bpb.sectors_per_cluster,
            reserved_sectors=bpb.reserved_sectors, fats=bpb.num_fats,
            root_entries=bpb.root_entries,
            total_sectors=bpb.total_sectors16 or bpb.total_sectors32,
            fat_sectors=bpb.fat_sectors16 or (ext.fat_sectors32 if is_fat32 else 0),
            media=bpb.media, hidden_sectors=bpb.hidden_sectors, is_fat32=is_fat32,
            root_cluster=ext.root_cluster if is_fat32 else 0,
            serial=ext.serial if sig in c_fat.EXT_BOOT_SIGNATURES else None,
            boot_label=ext.label if sig == 0x29 else b"", oem=bpb.oem)

    @property
    def root_sectors(self) -> int:
        return -(-self.root_entries * DIRENT_SIZE // (self.bytes_per_sector or 512))

    @property
    def fat_offset(self) -> int:
        return self.reserved_sectors * self.bytes_per_sector

    @property
    def root_offset(self) -> int:
        """Where the fixed root directory of FAT12/16 starts."""
        return (self.reserved_sectors + self.fats * self.fat_sectors) * self.bytes_per_sector

    @property
    def first_data_sector(self) -> int:
        return self.reserved_sectors + self.fats * self.fat_sectors + self.root_sectors

    @property
    def clusters(self) -> int:
        spc = self.sectors_per_cluster or 1
        return max(self.total_sectors - self.first_data_sector, 0) // spc

    @property
    def cluster_size(self) -> int:
        return (self.bytes_per_sector or 512) * (self.sectors_per_cluster or 1)

    @property
    def size(self) -> int:
        return self.total_sectors * self.bytes_per_sector

    @property
    def fat_bits(self) -> int:
        return 32 if self.is_fat32 else c_fat.fat_type_for_clusters(self.clusters)

    @property
    def kind(self) -> str:
        return f"fat{self.fat_bits}"

    def cluster_offset(self, cluster: int) -> int:
        """Byte offset (from the volume's start) of data cluster ``cluster`` (2 is the first)."""
        return ((self.first_data_sector + (cluster - c_fat.FIRST_CLUSTER) * self.sectors_per_cluster)
                * self.bytes_per_sector)

    def valid(self) -> bool:
        spc = self.sectors_per_cluster
        return bool(self.bytes_per_sector in (512, 1024, 2048, 4096) and spc and not spc & (spc - 1)
                    and self.reserved_sectors >= 1 and 1 <= self.fats <= 4 and self.fat_sectors > 0
                    and self.total_sectors > self.first_data_sector
                    and (self.media >= 0xF8 or self.media == 0xF0)
                    and (not self.is_fat32 or self.root_entries == 0))


def sniff(head: bytes) -> str | None:
    """``"fat12"``/``"fat16"``/``"fat32"`` when ``head`` starts with a valid FAT boot sector."""
    if (len(head) < c_fat.SECTOR or head[0] not in (0xEB, 0xE9)
            or head[510:512] != c_fat.BOOT_SIGNATURE):
        return None
    geo = Geometry.parse(head[:c_fat.SECTOR])
    return geo.kind if geo.valid() else None


class Volume:
    """A read-only FAT volume at ``offset`` in ``f``, ``size`` bytes long (or to the end).

    FAT entries are read one at a time (describing a huge volume reads a few sectors) until
    :meth:`load_fat` reads the whole table once, as listing every file wants.
    """

    def __init__(self, f: BinaryIO, offset: int = 0, size: int | None = None,
                 what: str = "FAT volume") -> None:
        self.f, self.base, self.what = f, offset, what
        self.limit = available(f, offset, size)       # bytes of the volume the image holds
        self.geo = Geometry.parse(read_at(f, offset, c_fat.SECTOR))
        if not self.geo.valid():
            raise ImageError(f"{what}: not a valid FAT boot sector at offset {offset}")
        g = self.geo
        self.bits = g.fat_bits
        self.end = c_fat.EOC_MIN[self.bits]
        fat_bytes = g.fat_sectors * g.bytes_per_sector
        need = (g.clusters + 2) * self.bits // 8
        if fat_bytes < need:
            raise ImageError(f"{what}: the FAT is {fat_bytes} bytes, expected at least {need} "
                             f"for {g.clusters} clusters")
        self._fat: list[int] | None = None

    def _check(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or offset + length > self.limit:
            raise ImageError(f"{self.what}: {what} (bytes {offset}..{offset + length} of the "
                             f"volume) lies past the end of the image, which holds "
                             f"{self.limit} bytes of it")

    def load_fat(self) -> None:
        g = self.geo
        need = -(-(g.clusters + 2) * self.bits // 8)
        self._check(g.fat_offset, need, "the FAT")
        raw = read_at(self.f, self.base + g.fat_offset, need + 1)
        self._fat = [self._decode(raw, c) for c in range(g.clusters + 2)]

    def _decode(self, raw: bytes, cluster: int) -> int:
        if self.bits == 32:
            return int.from_bytes(raw[cluster * 4:cluster * 4 + 4], "little") & c_fat.FAT32_MASK
        if self.bits == 16:
            return int.from_bytes(raw[cluster * 2:cluster * 2 + 2], "little")
        pair = int.from_bytes(raw[cluster * 3 // 2:cluster * 3 // 2 + 2], "little")
        return pair >> 4 if cluster & 1 else pair & 0xFFF

    def next_cluster(self, cluster: int) -> int:
        if self._fat is not None:
            return self._fat[cluster]
        self._check(self.geo.fat_offset + cluster * self.bits // 8, 2, "the FAT")
        raw = read_at(self.f, self.base + self.geo.fat_offset + cluster * self.bits // 8, 4)
        value = int.from_bytes(raw[:self.bits // 8 if self.bits != 12 else 2], "little")
        if self.bits == 32:
            return value & c_fat.FAT32_MASK
        if self.bits == 12:
            return value >> 4 if cluster & 1 else value & 0xFFF
        return value

    def chain(self, first: int) -> Iterator[int]:
        """The clusters of the chain from ``first``, refusing loops and links out of the volume."""
        last = self.geo.clusters + 1
        cluster, count = first, 0
        while c_fat.FIRST_CLUSTER <= cluster < self.end:
            if cluster > last:
                raise ImageError(f"{self.what}: FAT cluster chain from {first} links to cluster "
                                 f"{cluster}, past the last cluster {last}")
            if count > self.geo.clusters:
                raise ImageError(f"{self.what}: FAT cluster chain from {first} loops "
                                 f"(cluster {cluster} again after {count} clusters)")
            yield cluster
            count += 1
            cluster = self.next_cluster(cluster)
            if cluster in (0, 1):
                raise ImageError(f"{self.what}: FAT cluster chain from {first} runs into a "
                                 f"free cluster")

    def runs(self, first: int, size: int) -> tuple[tuple[int, int], ...]:
        """``(host offset, length)`` runs holding ``size`` bytes from cluster ``first``."""
        out: list[list[int]] = []
        left = size
        cs = self.geo.cluster_size
        for cluster in self.chain(first) if size else ():
            if left <= 0:
                break
            off = self.geo.cluster_offset(cluster)
            n = min(cs, left)
            self._check(off, n, f"cluster {cluster}")
            if out and out[-1][0] + out[-1][1] == self.base + off:
                out[-1][1] += n
            else:
                out.append([self.base + off, n])
            left -= n
        if left > 0:
            raise ImageError(f"{self.what}: a file of {size} bytes has a cluster chain "
                             f"{size - left} bytes long")
        return tuple((o, n) for o, n in out)

    def directory(self, cluster: int) -> bytes:
        """The raw entries of a directory (cluster 0: the root)."""
        g = self.geo
        if cluster == 0 and not g.is_fat32:
            length = g.root_sectors * g.bytes_per_sector
            self._check(g.root_offset, length, "the root directory")
            return read_at(self.f, self.base + g.root_offset, length)
        if cluster == 0:
            cluster = g.root_cluster
        parts = []
        for i, c in enumerate(self.chain(cluster)):
            if i * g.cluster_size >= c_fat.MAX_DIR_ENTRIES * DIRENT_SIZE:
                raise ImageError(f"{self.what}: directory at cluster {cluster} is longer than "
                                 f"the {c_fat.MAX_DIR_ENTRIES} entries FAT allows")
            self._check(g.cluster_offset(c), g.cluster_size, f"directory cluster {c}")
            parts.append(read_at(self.f, self.base + g.cluster_offset(c), g.cluster_size))
        return b"".join(parts)

    def label(self) -> str | None:
        """The volume label entry of the root directory (what mlabel, blkid and Windows show)."""
        raw = self.directory(0)
        for i in range(0, len(raw) - DIRENT_SIZE + 1, DIRENT_SIZE):
            d = DIRENT.unpack(raw, i)
            if d.name[0] == c_fat.DIRENT_END:
                return None
            if d.name[0] == c_fat.DIRENT_FREE or d.attr & ATTR_LFN_MASK == ATTR_LFN:
                continue
            if d.attr & ATTR_VOLUME_ID:
                return d.name.decode("cp437", "replace").rstrip()
        return None

    def entries(self, cluster: int) -> Iterator[tuple[str, bool, int, int, int]]:
        """``(name, is_dir, first cluster, size, mtime)`` of a directory's entries."""
        raw = self.directory(cluster)
        lfn: dict[int, bytes] = {}
        lfn_sum = -1
        for i in range(0, len(raw) - DIRENT_SIZE + 1, DIRENT_SIZE):
            d = DIRENT.unpack(raw, i)
            first_byte = d.name[0]
            if first_byte == c_fat.DIRENT_END:
                return
            if first_byte == c_fat.DIRENT_FREE:
                lfn = {}
                continue
            if d.attr & ATTR_LFN_MASK == ATTR_LFN:
                e = LFN.unpack(raw, i)
                if e.order & c_fat.LFN_LAST:
                    lfn, lfn_sum = {}, e.checksum
                lfn[e.order & c_fat.LFN_ORDER_MASK] = e.name1 + e.name2 + e.name3
                continue
            parts, lfn = lfn, {}
            if d.attr & ATTR_VOLUME_ID or d.name in (c_fat.DOT, c_fat.DOTDOT):
                continue
            yield (self._name(d, parts, lfn_sum), bool(d.attr & ATTR_DIRECTORY),
                   (d.cluster_hi << 16 if self.geo.is_fat32 else 0) | d.cluster_lo, d.size,
                   c_fat.unpack_time(d.mdate, d.mtime))

    @staticmethod
    def _name(d, parts: dict[int, bytes], lfn_sum: int) -> str:
        short = d.name
        if parts and lfn_sum == c_fat.lfn_checksum(short) and sorted(parts) == list(
                range(1, len(parts) + 1)):
            units = b"".join(parts[k] for k in sorted(parts))
            name = units.decode("utf-16-le", "replace").split("\0", 1)[0]
            if name:
                return name
        base = (bytes([c_fat.DIRENT_FREE]) + short[1:8] if short[0] == c_fat.DIRENT_KANJI_E5
                else short[:8])
        base_s = base.decode("cp437").rstrip()
        ext_s = short[8:].decode("cp437").rstrip()
        if d.nt_case & c_fat.CASE_LOWER_BASE:
            base_s = base_s.lower()
        if d.nt_case & c_fat.CASE_LOWER_EXT:
            ext_s = ext_s.lower()
        return base_s + ("." + ext_s if ext_s else "")


def describe(f: BinaryIO, offset: int = 0, size: int | None = None) -> dict:
    """The FAT volume at ``offset``: type, label, serial and geometry, as a JSON-able dict."""
    vol = Volume(f, offset, size)
    geo = vol.geo
    label = vol.label()
    if label is None and geo.boot_label and geo.boot_label.rstrip() != c_fat.NO_NAME.rstrip():
        label = geo.boot_label.decode("cp437", "replace").rstrip()
    serial = f"{geo.serial >> 16:04X}-{geo.serial & 0xFFFF:04X}" if geo.serial is not None else None
    return {"format": geo.kind, "label": label or "", "uuid": serial,
            "size": geo.size, "oem": cstr(geo.oem),
            "bytes_per_sector": geo.bytes_per_sector,
            "sectors_per_cluster": geo.sectors_per_cluster, "cluster_size": geo.cluster_size,
            "clusters": geo.clusters, "reserved_sectors": geo.reserved_sectors,
            "fats": geo.fats, "fat_sectors": geo.fat_sectors, "root_entries": geo.root_entries,
            "total_sectors": geo.total_sectors, "hidden_sectors": geo.hidden_sectors}


def open_tree(path: str, offset: int = 0, size: int | None = None, *, what: str | None = None,
              keep: object = None) -> Tree:
    """The files of the FAT volume at ``offset`` of ``path``; file data stays in the image."""
    what = what or (path if not offset else f"{path}@{offset}")
    tree = Tree()
    with open(path, "rb") as f:
        vol = Volume(f, offset, size, what)
        vol.load_fat()
        stack, seen = [(0, "")], {0}
        while stack:
            cluster, prefix = stack.pop()
            for name, is_dir, first, fsize, mtime in vol.entries(cluster):
                rel = f"{prefix}/{name}" if prefix else name
                origin = f"{what}: /{rel}"
                if "/" in name or name in ("", ".", ".."):
                    raise ImageError(f"{origin}: invalid FAT file name {name!r}")
                if is_dir:
                    tree.add(Entry(rel, Kind.DIR, mode=0o755, mtime=mtime, origin=origin))
                    if first in seen:
                        raise ImageError(f"{origin}: directory loop (cluster {first})")
                    seen.add(first)
                    stack.append((first, rel))
                else:
                    tree.add(Entry(rel, Kind.FILE, mode=0o644, mtime=mtime, origin=origin,
                                   data=RunsBlob(os.fspath(path), fsize, vol.runs(first, fsize),
                                                 keep)))
    return tree
