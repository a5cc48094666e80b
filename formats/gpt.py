"""The GUID Partition Table (UEFI spec, chapter 5), written and read in pure Python.

On disk: a protective MBR at LBA 0 (or a hybrid one), the primary header at LBA 1, the entry
array from LBA 2 (128 entries x 128 bytes = 32 sectors of 512 bytes), and at the end of the
disk the backup entry array followed by the backup header in the last sector. The array may
move (the header's ``entries_lba`` says where; the reader follows it), hold fewer or more
entries, and the backup may be left out: :class:`GptGeometry` is that shape.

Both CRC32s are derived, never passed in: the header CRC is a construct ``Checksum`` over the
header with its own CRC field zeroed, and the entry-array CRC is a ``Rebuild`` over the entry
array bytes handed to the build as context. GUIDs are stored mixed-endian (the first three
fields little-endian), which is what ``uuid.UUID(bytes_le=...)`` means.
"""
from __future__ import annotations

import hashlib
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from construct import (
    Adapter,
    Array,
    Bytes,
    Checksum,
    ChecksumError,
    Const,
    ConstructError,
    Int32ul,
    Int64ul,
    PaddedString,
    Padding,
    Pointer,
    RawCopy,
    Rebuild,
    Struct,
    Tell,
    this,
)

from imgkit.errors import ImageError, InputError
from imgkit.formats import mbr as _mbr

HEADER_SIZE = 92
ENTRY_SIZE = 128
DEFAULT_ENTRIES = 128
NAME_UNITS = 36           # UTF-16 code units in an entry's name
REVISION = 0x00010000     # 1.0

# Attribute bits (UEFI: 0-2; Microsoft basic data / Discoverable Partitions: 59-63).
ATTR_REQUIRED = 1 << 0
ATTR_NO_BLOCK_IO = 1 << 1
ATTR_LEGACY_BIOS_BOOTABLE = 1 << 2
ATTR_GROWFS = 1 << 59
ATTR_READ_ONLY = 1 << 60
ATTR_HIDDEN = 1 << 62
ATTR_NO_AUTO = 1 << 63

#: Names accepted by :func:`parse_attributes`.
ATTRIBUTE_NAMES: dict[str, int] = {
    "required": ATTR_REQUIRED, "no-block-io": ATTR_NO_BLOCK_IO,
    "legacy-bios-bootable": ATTR_LEGACY_BIOS_BOOTABLE, "growfs": ATTR_GROWFS,
    "read-only": ATTR_READ_ONLY, "hidden": ATTR_HIDDEN, "no-auto": ATTR_NO_AUTO,
}

_NAME_OF_BIT = {mask.bit_length() - 1: name for name, mask in ATTRIBUTE_NAMES.items()}


def attribute_names(mask: int) -> list[str]:
    """The attribute bits of ``mask`` as the names :func:`parse_attributes` takes (bits
    without a name as ``bitN``), lowest bit first."""
    return [_NAME_OF_BIT.get(b, f"bit{b}") for b in range(64) if mask >> b & 1]


class _GuidAdapter(Adapter):
    def _decode(self, obj, context, path):
        return uuid.UUID(bytes_le=bytes(obj))

    def _encode(self, obj, context, path):
        return (obj if isinstance(obj, uuid.UUID) else uuid.UUID(str(obj))).bytes_le


Guid = _GuidAdapter(Bytes(16))

GptEntry = Struct(
    "type_guid" / Guid,
    "unique_guid" / Guid,
    "first_lba" / Int64ul,
    "last_lba" / Int64ul,       # inclusive
    "attributes" / Int64ul,
    "name" / PaddedString(NAME_UNITS * 2, "utf_16_le"),
)

_HeaderFields = Struct(
    "signature" / Const(b"EFI PART"),
    "revision" / Const(REVISION, Int32ul),
    "header_size" / Const(HEADER_SIZE, Int32ul),
    Padding(4),                 # header_crc32, zero while the CRC is computed (written below)
    "reserved" / Const(0, Int32ul),
    "my_lba" / Int64ul,
    "alternate_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Guid,
    "entries_lba" / Int64ul,
    "num_entries" / Int32ul,
    "entry_size" / Const(ENTRY_SIZE, Int32ul),
    # Build with ``GptHeader.build(..., entries_raw=<the entry array bytes>)``.
    "entries_crc32" / Rebuild(Int32ul, lambda ctx: zlib.crc32(ctx._params.entries_raw)),
)

def _zero_crc(raw: bytes) -> bytes:
    """The header bytes as the CRC is defined over them: with the CRC field itself zeroed."""
    return raw[:16] + b"\0\0\0\0" + raw[20:]


GptHeader = Struct(
    "_start" / Tell,
    "fields" / RawCopy(_HeaderFields),
    "header_crc32" / Pointer(this._start + 16,
                             Checksum(Int32ul, zlib.crc32, lambda ctx: _zero_crc(ctx.fields.data))),
)

assert GptEntry.sizeof() == ENTRY_SIZE
assert _HeaderFields.sizeof() == HEADER_SIZE
assert GptHeader.sizeof() == HEADER_SIZE


def guid_from_seed(seed: str, name: str) -> uuid.UUID:
    """A GUID derived from ``seed`` and ``name``: SHA-256, shaped as an RFC 4122 version 4 UUID.

    Reproducible images need stable GUIDs; deriving them keeps them unique per name and seed
    while looking like the random GUIDs every tool expects.
    """
    digest = hashlib.sha256(b"imgkit-guid\0" + seed.encode() + b"\0" + name.encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def parse_attributes(spec: int | str | Iterable[int | str] | None) -> int:
    """An attribute bit mask from an int, a name, a bit number, or a list of them."""
    if spec is None:
        return 0
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 0 <= spec < 1 << 64:
            raise InputError(f"GPT attributes: expected a 64-bit mask, got {spec}")
        return spec
    items = [spec] if isinstance(spec, str) else list(spec)
    mask = 0
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < 64:
                raise InputError(f"GPT attribute bit {item}: expected a bit number 0..63")
            mask |= 1 << item
        elif isinstance(item, str) and item.strip().lower() in ATTRIBUTE_NAMES:
            mask |= ATTRIBUTE_NAMES[item.strip().lower()]
        elif isinstance(item, str) and item.strip().isascii() and item.strip().isdigit() and int(item) < 64:
            mask |= 1 << int(item)
        else:
            raise InputError(f"unknown GPT attribute {item!r}",
                             hint="use a bit number 0..63 or one of: " + ", ".join(ATTRIBUTE_NAMES))
    return mask


def check_name(name: str, *, what: str = "GPT partition name") -> None:
    """Refuse names that do not fit the 36 UTF-16 code units of an entry."""
    units = len(name.encode("utf-16-le")) // 2
    if units > NAME_UNITS:
        raise InputError(f"{what} {name!r} is {units} UTF-16 units long; at most {NAME_UNITS} fit",
                         hint="shorten the label")
    if "\0" in name:
        raise InputError(f"{what} {name!r} contains a NUL character")


@dataclass(frozen=True)
class GptPartition:
    """One used entry; ``number`` is its 1-based slot in the entry array."""

    number: int
    type_guid: uuid.UUID
    guid: uuid.UUID
    first_lba: int
    last_lba: int               # inclusive
    attributes: int = 0
    name: str = ""

    @property
    def num_sectors(self) -> int:
        return self.last_lba - self.first_lba + 1


@dataclass(frozen=True)
class GptTable:
    """A parsed GPT (from the primary header; ``backup_ok`` says whether the backup agrees)."""

    disk_guid: uuid.UUID
    sector_size: int
    first_usable_lba: int
    last_usable_lba: int
    header_lba: int
    backup_lba: int
    entries_lba: int
    num_entries: int
    partitions: tuple[GptPartition, ...]
    backup_ok: bool
    protective_mbr: _mbr.MbrTable | None


@dataclass(frozen=True)
class GptGeometry:
    """Where the GPT structures sit on a disk of ``disk_sectors`` sectors.

    The primary header is always at LBA 1; its entry array at ``entries_lba`` (LBA 2 unless
    moved, e.g. to 1 MiB for a bootloader that boards load from LBA 2-33), ``num_entries``
    entries rounded up to whole sectors. ``first_usable`` overrides the first LBA partitions
    may use (default: right after the array). Without a ``backup`` no copy is written at the
    end (its room stays free).
    """

    disk_sectors: int
    sector_size: int
    num_entries: int
    entries_lba: int = 2
    first_usable: int | None = None
    backup: bool = True

    @property
    def entry_sectors(self) -> int:
        return -(-self.num_entries * ENTRY_SIZE // self.sector_size)

    @property
    def first_usable_lba(self) -> int:
        if self.first_usable is not None:
            return self.first_usable
        return self.entries_lba + self.entry_sectors

    @property
    def backup_header_lba(self) -> int:
        return self.disk_sectors - 1

    @property
    def backup_entries_lba(self) -> int:
        return self.backup_header_lba - self.entry_sectors

    @property
    def last_usable_lba(self) -> int:
        """The last LBA partitions may use: before the backup, which keeps its room even when
        it is not written, so a tool that repairs the disk (``sgdisk -e``) overwrites nothing."""
        return self.backup_entries_lba - 1

    @property
    def tail_sectors(self) -> int:
        """Sectors the backup takes (or keeps free) at the end of the disk."""
        return self.entry_sectors + 1

    def ranges(self) -> list[tuple[int, int, str]]:
        """``(start byte, end byte, what)`` of every GPT structure but the 440 bytes of boot
        code: the protective MBR and header, the entry array, the backup at the end."""
        ss = self.sector_size
        array = (self.entries_lba * ss, (self.entries_lba + self.entry_sectors) * ss)
        if self.entries_lba == 2:
            out = [(_mbr.BOOT_CODE_SIZE, array[1], "the protective MBR, GPT header and entry array")]
        else:
            out = [(_mbr.BOOT_CODE_SIZE, 2 * ss, "the protective MBR and GPT header"),
                   (array[0], array[1], f"the GPT entry array at LBA {self.entries_lba}")]
        if self.backup and self.disk_sectors:
            out.append((self.backup_entries_lba * ss, self.disk_sectors * ss,
                        "the backup GPT entry array and header"))
        return out


def geometry(disk_sectors: int, *, sector_size: int = 512,
             num_entries: int = DEFAULT_ENTRIES, entries_lba: int = 2,
             first_usable_lba: int | None = None, backup: bool = True) -> GptGeometry:
    """The :class:`GptGeometry` of a disk; the number of sectors the tables take at each end."""
    return GptGeometry(disk_sectors, sector_size, num_entries, entries_lba, first_usable_lba,
                       backup)


def check_geometry(geo: GptGeometry, partitions: int = 0) -> None:
    """Refuse a shape no GPT reader accepts: an array that overlaps the header or reaches
    into the usable range, too few entries for the partitions, a disk too small."""
    if not 1 <= geo.num_entries <= 0xFFFF:
        raise InputError(f"GPT entry count: expected 1..65535, got {geo.num_entries}")
    if geo.num_entries < partitions:
        raise InputError(f"GPT entry count {geo.num_entries} is too small for "
                         f"{partitions} partitions",
                         hint=f"use at least {partitions} entries (the default is "
                              f"{DEFAULT_ENTRIES})")
    if geo.entries_lba < 2:
        raise InputError(f"GPT entry array at LBA {geo.entries_lba}: expected LBA 2 or later "
                         "(LBA 0 is the MBR, LBA 1 the header)")
    array_end = geo.entries_lba + geo.entry_sectors
    if geo.first_usable_lba < array_end:
        raise InputError(f"GPT first usable LBA {geo.first_usable_lba} lies inside the entry "
                         f"array (LBA {geo.entries_lba}-{array_end - 1})",
                         hint=f"use a first usable LBA of {array_end} or more, or move the "
                              "entry array before it")
    if geo.disk_sectors and (geo.last_usable_lba < geo.first_usable_lba
                             or (geo.backup and geo.backup_entries_lba < array_end)):
        raise InputError(f"a disk of {geo.disk_sectors} sectors is too small for a GPT "
                         f"whose first usable LBA is {geo.first_usable_lba}")


def build_entries(partitions: Sequence[GptPartition], num_entries: int = DEFAULT_ENTRIES) -> bytes:
    """The entry array: each partition in slot ``number - 1``, empty slots all zero."""
    slots: list[dict | None] = [None] * num_entries
    for p in partitions:
        if not 1 <= p.number <= num_entries or slots[p.number - 1] is not None:
            raise InputError(f"GPT partition number {p.number} is out of range 1..{num_entries} "
                             "or used twice")
        check_name(p.name)
        slots[p.number - 1] = dict(type_guid=p.type_guid, unique_guid=p.guid,
                                   first_lba=p.first_lba, last_lba=p.last_lba,
                                   attributes=p.attributes, name=p.name)
    empty = dict(type_guid=uuid.UUID(int=0), unique_guid=uuid.UUID(int=0), first_lba=0,
                 last_lba=0, attributes=0, name="")
    return Array(num_entries, GptEntry).build([s or empty for s in slots])


def build_header(*, my_lba: int, alternate_lba: int, first_usable_lba: int, last_usable_lba: int,
                 disk_guid: uuid.UUID, entries_lba: int, entries_raw: bytes) -> bytes:
    """The 92-byte header; both CRCs are computed here."""
    value = dict(my_lba=my_lba, alternate_lba=alternate_lba, first_usable_lba=first_usable_lba,
                 last_usable_lba=last_usable_lba, disk_guid=disk_guid, entries_lba=entries_lba,
                 num_entries=len(entries_raw) // ENTRY_SIZE, entries_crc32=None)
    return GptHeader.build(dict(fields=dict(value=value), header_crc32=None),
                           entries_raw=entries_raw)


def build_gpt(disk_sectors: int, partitions: Sequence[GptPartition], *, disk_guid: uuid.UUID,
              sector_size: int = 512, num_entries: int = DEFAULT_ENTRIES, boot_code: bytes = b"",
              hybrid: Sequence[_mbr.MbrPartition] = (), mbr_signature: int = 0,
              entries_lba: int = 2, first_usable_lba: int | None = None, backup: bool = True,
              protective_first: bool = True) -> list[tuple[int, bytes]]:
    """Every GPT structure of a disk as ``(byte offset, bytes)`` regions.

    ``boot_code`` goes into the first 440 bytes of the protective MBR (e.g. ``gptmbr.bin``);
    ``hybrid`` lists up to three MBR entries mirroring GPT partitions for a hybrid MBR, with
    the 0xEE entry first or (``protective_first=False``) last. ``entries_lba``,
    ``first_usable_lba`` and ``backup`` shape the GPT (:class:`GptGeometry`); without a
    backup, the primary header's alternate LBA still names the last sector, where a tool that
    repairs the disk puts it.
    """
    geo = geometry(disk_sectors, sector_size=sector_size, num_entries=num_entries,
                   entries_lba=entries_lba, first_usable_lba=first_usable_lba, backup=backup)
    check_geometry(geo, len(partitions))
    for p in partitions:
        if not geo.first_usable_lba <= p.first_lba <= p.last_lba <= geo.last_usable_lba:
            raise InputError(f"GPT partition {p.number} ({p.name!r}): sectors {p.first_lba}-"
                             f"{p.last_lba} are outside the usable range "
                             f"{geo.first_usable_lba}-{geo.last_usable_lba}")
    entries = build_entries(partitions, num_entries)
    padded = entries.ljust(geo.entry_sectors * sector_size, b"\0")
    common = dict(first_usable_lba=geo.first_usable_lba, last_usable_lba=geo.last_usable_lba,
                  disk_guid=disk_guid, entries_raw=entries)
    primary = build_header(my_lba=1, alternate_lba=geo.backup_header_lba,
                           entries_lba=geo.entries_lba, **common)
    pmbr = _mbr.build_sector(
        _mbr.protective_partitions(disk_sectors, first_usable_lba=geo.first_usable_lba,
                                   hybrid=hybrid, protective_first=protective_first),
        disk_signature=mbr_signature, boot_code=boot_code)
    regions = [(0, pmbr), (sector_size, primary), (geo.entries_lba * sector_size, padded)]
    if backup:
        secondary = build_header(my_lba=geo.backup_header_lba, alternate_lba=1,
                                 entries_lba=geo.backup_entries_lba, **common)
        regions += [(geo.backup_entries_lba * sector_size, padded),
                    (geo.backup_header_lba * sector_size, secondary)]
    return regions


def _parse_header(f: BinaryIO, lba: int, sector_size: int, what: str):
    size = f.seek(0, 2)
    if lba * sector_size + HEADER_SIZE > size:
        raise ImageError(f"{what} GPT header at LBA {lba}: expected it within the image's "
                         f"{size} bytes, got offset {lba * sector_size}")
    f.seek(lba * sector_size)
    raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise ImageError(f"{what} GPT header at LBA {lba}: the image ends first")
    if raw[:8] != b"EFI PART":
        raise ImageError(f"{what} GPT header at LBA {lba}: expected signature 'EFI PART', "
                         f"got {raw[:8]!r}")
    try:
        parsed = GptHeader.parse(raw)
    except ChecksumError as exc:
        raise ImageError(f"{what} GPT header at LBA {lba}: header CRC32 does not match") from exc
    except ConstructError as exc:
        raise ImageError(f"{what} GPT header at LBA {lba}: {exc}") from exc
    hdr = parsed.fields.value
    if hdr.my_lba != lba:
        raise ImageError(f"{what} GPT header at LBA {lba} says it is at LBA {hdr.my_lba}")
    start, length = hdr.entries_lba * sector_size, hdr.num_entries * ENTRY_SIZE
    if start + length > size:
        raise ImageError(f"{what} GPT entry array: expected {hdr.num_entries} entries of "
                         f"{ENTRY_SIZE} bytes within the image's {size} bytes, got "
                         f"{length} bytes at offset {start} (LBA {hdr.entries_lba})")
    f.seek(start)
    entries_raw = f.read(length)
    if len(entries_raw) != hdr.num_entries * ENTRY_SIZE:
        raise ImageError(f"{what} GPT entry array at LBA {hdr.entries_lba}: the image ends first")
    if zlib.crc32(entries_raw) != hdr.entries_crc32:
        raise ImageError(f"{what} GPT entry array at LBA {hdr.entries_lba}: CRC32 "
                         f"{zlib.crc32(entries_raw):08x} does not match the header's "
                         f"{hdr.entries_crc32:08x}")
    return hdr, entries_raw


def _parse_entry(raw: bytes):
    """One entry; a name that is not valid UTF-16 (a lone surrogate) is shown with U+FFFD
    rather than refused: the name is only a label, the rest of the entry is still good."""
    try:
        return GptEntry.parse(raw)
    except ConstructError:
        e = GptEntry.parse(raw[:56] + bytes(ENTRY_SIZE - 56))
        e.name = raw[56:].decode("utf-16-le", "replace").split("\0", 1)[0]
        return e


def _detect_sector_size(f: BinaryIO) -> int:
    for size in (512, 4096):
        f.seek(size)
        if f.read(8) == b"EFI PART":
            return size
    raise ImageError("no GPT found: expected 'EFI PART' at byte 512 or 4096")


def read_gpt(f: BinaryIO, *, sector_size: int | None = None) -> GptTable:
    """Parse the GPT of the disk image ``f``, checking both CRCs and the backup copy.

    ``sector_size`` is found by looking for the header at 512 and 4096 bytes when not given.
    Raises :class:`ImageError` when the primary header or its entries are damaged.
    """
    if sector_size is None:
        sector_size = _detect_sector_size(f)
    hdr, entries_raw = _parse_header(f, 1, sector_size, "primary")
    parts = []
    for i in range(1, hdr.num_entries + 1):
        raw = entries_raw[(i - 1) * ENTRY_SIZE:i * ENTRY_SIZE]
        if not any(raw[:16]):
            continue
        e = _parse_entry(raw)
        parts.append(GptPartition(i, e.type_guid, e.unique_guid, e.first_lba, e.last_lba,
                                  e.attributes, e.name))
    try:
        bhdr, bentries = _parse_header(f, hdr.alternate_lba, sector_size, "backup")
        backup_ok = (bentries == entries_raw and bhdr.disk_guid == hdr.disk_guid
                     and bhdr.alternate_lba == 1)
    except ImageError:
        backup_ok = False
    try:
        pmbr = _mbr.read_mbr(f, sector_size=sector_size)
    except ImageError:
        pmbr = None
    return GptTable(hdr.disk_guid, sector_size, hdr.first_usable_lba, hdr.last_usable_lba, 1,
                    hdr.alternate_lba, hdr.entries_lba, hdr.num_entries, tuple(parts),
                    backup_ok, pmbr)


def reseal(f: BinaryIO, *, sector_size: int = 512) -> None:
    """Make a GPT written by another tool consistent: recompute both CRCs of the primary
    header, and rewrite the backup entries and header as copies of the primary.

    Used on isohybrid ISOs, whose GPT (from pycdlib) carries wrong entry-array CRCs and a
    backup that differs from the primary; firmware and ``sgdisk -v`` then distrust it.
    """
    f.seek(sector_size)
    primary = _HeaderFields.parse(f.read(HEADER_SIZE))
    array_bytes = primary.num_entries * ENTRY_SIZE
    f.seek(primary.entries_lba * sector_size)
    entries_raw = f.read(array_bytes)
    if len(entries_raw) != array_bytes:
        raise ImageError("GPT entry array runs past the end of the image")
    backup_lba = primary.alternate_lba
    backup_entries_lba = backup_lba - -(-array_bytes // sector_size)
    common = dict(first_usable_lba=primary.first_usable_lba,
                  last_usable_lba=primary.last_usable_lba, disk_guid=primary.disk_guid,
                  entries_raw=entries_raw)
    f.seek(sector_size)
    f.write(build_header(my_lba=primary.my_lba, alternate_lba=backup_lba,
                         entries_lba=primary.entries_lba, **common))
    f.seek(backup_entries_lba * sector_size)
    f.write(entries_raw)
    f.seek(backup_lba * sector_size)
    f.write(build_header(my_lba=backup_lba, alternate_lba=primary.my_lba,
                         entries_lba=backup_entries_lba, **common))
