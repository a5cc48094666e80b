"""The MBR ("DOS") partition table: boot sector, primary entries, extended partitions and EBRs.

Layout of sector 0: 440 bytes of boot code, a 4-byte disk signature, 2 reserved bytes, four
16-byte partition entries, and the ``55 AA`` signature. Logical partitions live in an extended
partition as a linked list of EBRs (extended boot records): each EBR holds one entry for its
logical partition (start relative to the EBR) and one link to the next EBR (start relative to
the extended partition).

CHS fields are filled from the LBA with the usual 255-head, 63-sector geometry, and with the
``FE FF FF`` "use LBA" marker past cylinder 1023, which is what fdisk and sgdisk write.

Writers return ``(byte offset, bytes)`` regions so the disk writer can place them with
``pwrite`` around sparse partition contents; readers take any seekable binary file.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from construct import Adapter, Array, Bytes, Const, ConstructError, Int8ul, Int16ul, Int32ul, Struct

from imgkit.errors import ImageError, InputError

SECTOR = 512
BOOT_CODE_SIZE = 440
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
PROTECTIVE_TYPE = 0xEE
_MAX_LBA32 = 0xFFFFFFFF
_HEADS, _SECTORS = 255, 63


class _ChsAdapter(Adapter):
    """Three packed bytes <-> ``(cylinder, head, sector)``; sector is 1-based, cylinder 10 bits."""

    def _decode(self, obj, context, path):
        head, sec, cyl = obj[0], obj[1] & 0x3F, obj[2] | ((obj[1] & 0xC0) << 2)
        return (cyl, head, sec)

    def _encode(self, obj, context, path):
        cyl, head, sec = obj
        return bytes((head, (sec & 0x3F) | ((cyl >> 2) & 0xC0), cyl & 0xFF))


Chs = _ChsAdapter(Bytes(3))

MbrEntry = Struct(
    "status" / Int8ul,          # 0x80 = bootable ("active"), 0x00 otherwise
    "chs_first" / Chs,
    "type" / Int8ul,
    "chs_last" / Chs,
    "lba_first" / Int32ul,
    "num_sectors" / Int32ul,
)

MbrSector = Struct(
    "boot_code" / Bytes(BOOT_CODE_SIZE),
    "disk_signature" / Int32ul,
    "reserved" / Int16ul,
    "entries" / Array(4, MbrEntry),
    "boot_signature" / Const(b"\x55\xaa"),
)

assert MbrEntry.sizeof() == 16
assert MbrSector.sizeof() == 512


def chs_from_lba(lba: int) -> tuple[int, int, int]:
    """CHS address of ``lba`` for 255 heads x 63 sectors, clamped to ``(1023, 254, 63)``."""
    cyl = lba // (_HEADS * _SECTORS)
    if cyl > 1023:
        return (1023, 254, 63)        # encodes as FE FF FF
    return (cyl, (lba // _SECTORS) % _HEADS, lba % _SECTORS + 1)


@dataclass(frozen=True)
class MbrPartition:
    """One partition as the OS numbers it: 1-4 primary (incl. extended), 5 and up logical.

    Sector numbers are absolute LBAs (the on-disk relative EBR values are resolved).
    """

    number: int
    type: int
    start_lba: int
    num_sectors: int
    bootable: bool = False

    @property
    def end_lba(self) -> int:
        """The last sector (inclusive)."""
        return self.start_lba + self.num_sectors - 1

    @property
    def is_extended(self) -> bool:
        return self.type in EXTENDED_TYPES

    @property
    def is_logical(self) -> bool:
        return self.number > 4


@dataclass(frozen=True)
class MbrTable:
    """A parsed MBR: signature, boot code, and primaries followed by logicals in chain order."""

    disk_signature: int
    boot_code: bytes = field(repr=False)
    partitions: tuple[MbrPartition, ...]

    @property
    def is_protective(self) -> bool:
        """Whether this MBR guards a GPT (has a 0xEE entry)."""
        return any(p.type == PROTECTIVE_TYPE for p in self.partitions)

    @property
    def primaries(self) -> tuple[MbrPartition, ...]:
        return tuple(p for p in self.partitions if not p.is_logical)

    @property
    def logicals(self) -> tuple[MbrPartition, ...]:
        return tuple(p for p in self.partitions if p.is_logical)


def signature_from_seed(seed: str) -> int:
    """A non-zero 32-bit disk signature derived from ``seed`` (the same seed, the same disk)."""
    value = int.from_bytes(hashlib.sha256(b"imgkit-mbr\0" + seed.encode()).digest()[:4], "little")
    return value or 1


def _entry(p: MbrPartition | None, *, base: int = 0) -> dict:
    """The construct dict for one entry; ``base`` is subtracted from the start (EBR-relative)."""
    if p is None:
        return dict(status=0, chs_first=(0, 0, 0), type=0, chs_last=(0, 0, 0),
                    lba_first=0, num_sectors=0)
    rel = p.start_lba - base
    if not (0 <= rel <= _MAX_LBA32 and 0 < p.num_sectors <= _MAX_LBA32):
        raise InputError(f"MBR partition {p.number}: start {p.start_lba} / {p.num_sectors} sectors "
                         "do not fit the 32-bit fields of an MBR entry",
                         hint="MBR reaches 2 TiB with 512-byte sectors; use a GPT table")
    return dict(status=0x80 if p.bootable else 0, chs_first=chs_from_lba(p.start_lba), type=p.type,
                chs_last=chs_from_lba(p.end_lba), lba_first=rel, num_sectors=p.num_sectors)


def build_sector(entries: Sequence[MbrPartition | None], *, disk_signature: int = 0,
                 boot_code: bytes = b"", base: int = 0) -> bytes:
    """One 512-byte MBR/EBR sector with up to four entries (``None`` = empty slot)."""
    if len(entries) > 4:
        raise InputError(f"an MBR holds 4 entries, got {len(entries)}")
    if len(boot_code) > BOOT_CODE_SIZE:
        raise InputError(f"MBR boot code is {len(boot_code)} bytes; at most {BOOT_CODE_SIZE} fit",
                         hint="pass only the first 440 bytes (the code area) of the MBR image")
    slots = list(entries) + [None] * (4 - len(entries))
    return MbrSector.build(dict(
        boot_code=boot_code.ljust(BOOT_CODE_SIZE, b"\0"), disk_signature=disk_signature,
        reserved=0, entries=[_entry(p, base=base) for p in slots]))


def build_mbr(partitions: Iterable[MbrPartition], *, disk_signature: int = 0,
              boot_code: bytes = b"", ebr_lbas: Sequence[int] = (), sector_size: int = SECTOR,
              link_type: int = 0x05) -> list[tuple[int, bytes]]:
    """The MBR and the EBR chain as ``(byte offset, sector bytes)`` regions.

    ``partitions`` holds primaries (number 1-4, at most one extended) and logicals (number 5+,
    in chain order); ``ebr_lbas[i]`` is where the EBR of the i-th logical goes. Each EBR must
    lie inside the extended partition, before its logical partition.
    """
    parts = list(partitions)
    primaries = sorted((p for p in parts if not p.is_logical), key=lambda p: p.number)
    logicals = [p for p in parts if p.is_logical]
    slots: list[MbrPartition | None] = [None] * 4
    for p in primaries:
        if not 1 <= p.number <= 4 or slots[p.number - 1] is not None:
            raise InputError(f"MBR primary partition number {p.number} is out of range or used twice")
        slots[p.number - 1] = p
    regions = [(0, build_sector(slots, disk_signature=disk_signature, boot_code=boot_code))]
    if not logicals:
        return regions
    extended = [p for p in primaries if p.is_extended]
    if len(extended) != 1:
        raise InputError("logical partitions need exactly one extended partition, "
                         f"found {len(extended)}")
    ext = extended[0]
    if len(ebr_lbas) != len(logicals):
        raise InputError(f"{len(logicals)} logical partitions need as many EBR positions, "
                         f"got {len(ebr_lbas)}")
    for i, (part, ebr) in enumerate(zip(logicals, ebr_lbas, strict=False)):
        if not (ext.start_lba <= ebr < part.start_lba and part.end_lba <= ext.end_lba):
            raise InputError(f"logical partition {part.number} (EBR at LBA {ebr}, sectors "
                             f"{part.start_lba}-{part.end_lba}) is not inside the extended "
                             f"partition (sectors {ext.start_lba}-{ext.end_lba}) after its EBR")
        link = None
        if i + 1 < len(logicals):
            nxt, nxt_ebr = logicals[i + 1], ebr_lbas[i + 1]
            # The link is relative to the extended partition, the entry relative to this EBR.
            link = MbrPartition(0, link_type, nxt_ebr - ext.start_lba, nxt.end_lba - nxt_ebr + 1)
        sector = MbrSector.build(dict(
            boot_code=b"\0" * BOOT_CODE_SIZE, disk_signature=0, reserved=0,
            entries=[_entry(part, base=ebr), _link_entry(link, ext.start_lba), _entry(None),
                     _entry(None)]))
        regions.append((ebr * sector_size, sector))
    return regions


def _link_entry(link: MbrPartition | None, ext_start: int) -> dict:
    if link is None:
        return _entry(None)
    absolute = link.start_lba + ext_start
    return dict(status=0, chs_first=chs_from_lba(absolute), type=link.type,
                chs_last=chs_from_lba(absolute + link.num_sectors - 1),
                lba_first=link.start_lba, num_sectors=link.num_sectors)


def protective_partitions(disk_sectors: int, *, first_usable_lba: int,
                          hybrid: Sequence[MbrPartition] = (),
                          protective_first: bool = True) -> list[MbrPartition]:
    """The entries of a protective MBR, or of a hybrid one when ``hybrid`` is not empty.

    Plain protective: one 0xEE entry over the whole disk (clamped to 32 bits), as the UEFI
    spec asks. Hybrid: the 0xEE entry covering LBA 1 up to the first mirrored partition (at
    least the GPT header and entry array), and up to three entries mirroring GPT partitions:
    the layout ``sgdisk -h`` makes. The 0xEE entry comes first, or last when
    ``protective_first`` is false (some firmware and boot code look only at the first slot).
    """
    if len(hybrid) > 3:
        raise InputError(f"a hybrid MBR mirrors at most 3 GPT partitions, got {len(hybrid)}")
    if not hybrid:
        return [MbrPartition(1, PROTECTIVE_TYPE, 1, min(disk_sectors - 1, _MAX_LBA32))]
    ee_end = min(p.start_lba for p in hybrid) - 1
    if ee_end < first_usable_lba - 1:
        raise InputError(f"hybrid MBR: partition at LBA {min(p.start_lba for p in hybrid)} starts "
                         f"inside the GPT structures (first usable LBA {first_usable_lba})")
    mirrored = [MbrPartition(0, p.type, p.start_lba, p.num_sectors, p.bootable) for p in hybrid]
    protective = MbrPartition(0, PROTECTIVE_TYPE, 1, ee_end)
    ordered = [protective, *mirrored] if protective_first else [*mirrored, protective]
    return [MbrPartition(i, p.type, p.start_lba, p.num_sectors, p.bootable)
            for i, p in enumerate(ordered, start=1)]


def looks_like_table(sector: bytes) -> bool:
    """Whether ``sector`` is plausibly a partition table: the ``55 AA`` signature, status
    bytes of 0x00 or 0x80, and at least one used entry (a boot sector alone is not one)."""
    if len(sector) < SECTOR:
        return False
    try:
        mbr = MbrSector.parse(sector[:SECTOR])
    except ConstructError:
        return False
    if any(e.status not in (0, 0x80) for e in mbr.entries):
        return False
    return any(e.type and e.num_sectors for e in mbr.entries)


def read_mbr(f: BinaryIO, *, sector_size: int = SECTOR) -> MbrTable:
    """Parse the MBR of the disk image ``f`` and follow its EBR chain.

    Raises :class:`ImageError` on a missing ``55 AA`` signature or a broken/looping chain.
    """
    sector0 = _read_sector(f, 0, sector_size, "MBR")
    mbr = MbrSector.parse(sector0)
    parts: list[MbrPartition] = []
    ext: MbrPartition | None = None
    for i, e in enumerate(mbr.entries, start=1):
        if e.type == 0 or e.num_sectors == 0:
            continue
        p = MbrPartition(i, e.type, e.lba_first, e.num_sectors, bool(e.status & 0x80))
        parts.append(p)
        if p.is_extended and ext is None:
            ext = p
    if ext is not None:
        parts.extend(_read_chain(f, ext, sector_size))
    return MbrTable(mbr.disk_signature, bytes(mbr.boot_code), tuple(parts))


def _read_sector(f: BinaryIO, lba: int, sector_size: int, what: str) -> bytes:
    f.seek(lba * sector_size)
    data = f.read(SECTOR)
    if len(data) < SECTOR:
        raise ImageError(f"{what} at LBA {lba}: expected {SECTOR} bytes, the image ends after "
                         f"{len(data)}")
    if data[510:512] != b"\x55\xaa":
        raise ImageError(f"{what} at LBA {lba}: expected boot signature 55 aa, got "
                         f"{data[510:512].hex(' ')}")
    return data


def _read_chain(f: BinaryIO, ext: MbrPartition, sector_size: int) -> list[MbrPartition]:
    out: list[MbrPartition] = []
    ebr, seen, number = ext.start_lba, set(), 5
    while True:
        if ebr in seen or len(seen) > 1024:
            raise ImageError(f"EBR chain loops back to LBA {ebr}")
        seen.add(ebr)
        sec = MbrSector.parse(_read_sector(f, ebr, sector_size, "EBR"))
        first, link = sec.entries[0], sec.entries[1]
        if first.type != 0 and first.num_sectors:
            out.append(MbrPartition(number, first.type, ebr + first.lba_first, first.num_sectors,
                                    bool(first.status & 0x80)))
            number += 1
        if link.type == 0 or link.num_sectors == 0:
            return out
        ebr = ext.start_lba + link.lba_first
