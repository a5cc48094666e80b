"""VHDX (as ``qemu-img convert -O vhdx`` writes it): the header, log entry and metadata
fields qemu-img fills at random, declared once, read and re-stamped.

Two conversions of one disk differ in the two headers' sequence numbers and write GUIDs, in
the GUID of the (already flushed) log entry and in the virtual disk id of the metadata region.
:func:`stamp` writes values derived by the caller and recomputes the CRC-32C checksums the
format keeps over each header (4 KiB) and over the log entry, so the output is reproducible
and still opens in QEMU and every other reader.

Layout (little-endian, Microsoft's [MS-VHDX]): the file type identifier at 0, headers at 64 KiB
and 128 KiB (``head``, checksum, sequence number, file write GUID, data write GUID, log GUID,
log version, version, log length, log offset), the region table at 192 KiB naming the metadata
region, whose table (``metadata``) lists the items; the virtual disk id is the
``Page83Data`` item.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO

from construct import Bytes, Const, ConstructError, Int16ul, Int32ul, Int64ul, Struct

from imgkit.errors import ImageError
from imgkit.formats.crc32c import crc32c

HEADER_OFFSETS = (64 << 10, 128 << 10)
HEADER_SIZE = 4096
REGION_TABLE_OFFSET = 192 << 10
METADATA_REGION = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e")
PAGE83_ITEM = uuid.UUID("beca12ab-b2e6-4523-93ef-c309e000c746")
VIRTUAL_DISK_SIZE_ITEM = uuid.UUID("2fa54224-cd1b-4876-b211-5dbed83bf4b8")
SIGNATURE = b"vhdxfile"

HEADER = Struct(
    "signature" / Const(b"head"),
    "checksum" / Int32ul,
    "sequence" / Int64ul,
    "file_write_guid" / Bytes(16),
    "data_write_guid" / Bytes(16),
    "log_guid" / Bytes(16),
    "log_version" / Int16ul,
    "version" / Int16ul,
    "log_length" / Int32ul,
    "log_offset" / Int64ul,
)
LOG_ENTRY = Struct(
    "signature" / Const(b"loge"),
    "checksum" / Int32ul,
    "entry_length" / Int32ul,
    "tail" / Int32ul,
    "sequence" / Int64ul,
    "descriptor_count" / Int32ul,
    "reserved" / Int32ul,
    "log_guid" / Bytes(16),
)
REGION_TABLE = Struct("signature" / Const(b"regi"), "checksum" / Int32ul,
                      "entry_count" / Int32ul, "reserved" / Int32ul)
REGION_ENTRY = Struct("guid" / Bytes(16), "offset" / Int64ul, "length" / Int32ul,
                      "required" / Int32ul)
METADATA_TABLE = Struct("signature" / Const(b"metadata"), "reserved" / Int16ul,
                        "entry_count" / Int16ul, "reserved2" / Bytes(20))
METADATA_ENTRY = Struct("item" / Bytes(16), "offset" / Int32ul, "length" / Int32ul,
                        "flags" / Int32ul, "reserved" / Int32ul)


def _with_checksum(raw: bytes) -> bytes:
    """``raw`` (checksum field at offset 4) with its CRC-32C filled in."""
    zeroed = raw[:4] + b"\0\0\0\0" + raw[8:]
    return raw[:4] + crc32c(zeroed).to_bytes(4, "little") + raw[8:]


@dataclass(frozen=True)
class VhdxIds:
    """The values :func:`stamp` writes."""

    file_write: bytes
    data_write: bytes
    log: bytes
    disk_id: bytes


def _read(f: BinaryIO, offset: int, size: int, what: str) -> bytes:
    f.seek(offset)
    raw = f.read(size)
    if len(raw) != size:
        raise ImageError(f"{what} at offset {offset}: the file ends first")
    return raw


def _parse(struct: Any, raw: bytes, path: str, what: str) -> Any:
    """``raw`` parsed as ``struct``, or :class:`ImageError` saying which structure is missing."""
    try:
        return struct.parse(raw)
    except ConstructError:
        raise ImageError(f"{path}: no VHDX {what}") from None


def _metadata_item(f: BinaryIO, path: str, item: uuid.UUID, length: int) -> int | None:
    """The file offset of metadata ``item`` (``length`` bytes), or None."""
    table = _read(f, REGION_TABLE_OFFSET, 64 << 10, f"{path}: region table")
    count = _parse(REGION_TABLE, table,
                   path, f"region table at offset {REGION_TABLE_OFFSET}").entry_count
    for i in range(min(count, 2047)):
        e = REGION_ENTRY.parse(table[16 + 32 * i:48 + 32 * i])
        if uuid.UUID(bytes_le=bytes(e.guid)) != METADATA_REGION:
            continue
        meta = _read(f, e.offset, 64 << 10, f"{path}: metadata table")
        n = _parse(METADATA_TABLE, meta, path, f"metadata table at offset {e.offset}").entry_count
        for j in range(min(n, 2047)):
            m = METADATA_ENTRY.parse(meta[32 + 32 * j:64 + 32 * j])
            if uuid.UUID(bytes_le=bytes(m.item)) == item and m.length == length:
                return e.offset + m.offset
    return None


def read_virtual_size(path: str) -> int | None:
    """The disk size the metadata region declares (``VirtualDiskSize``), or None."""
    with open(path, "rb") as f:
        if _read(f, 0, len(SIGNATURE), path) != SIGNATURE:
            raise ImageError(f"{path}: no VHDX file identifier ({SIGNATURE!r}) at offset 0")
        where = _metadata_item(f, path, VIRTUAL_DISK_SIZE_ITEM, 8)
        return None if where is None else int.from_bytes(_read(f, where, 8, path), "little")


def stamp(path: str, ids: VhdxIds) -> None:
    """Write ``ids`` into ``path``: both headers (sequence numbers renumbered from 1, keeping
    which one is current), the log entry the headers' log offset points at, and the virtual
    disk id; every checksum recomputed."""
    with open(path, "r+b") as f:
        headers = []
        for offset in HEADER_OFFSETS:
            raw = _read(f, offset, HEADER_SIZE, f"{path}: VHDX header")
            headers.append((offset, _parse(HEADER, raw, path, f"header at offset {offset}"),
                            raw))
        base = min(h.sequence for _, h, _ in headers)
        for offset, h, raw in headers:
            h.sequence = h.sequence - base + 1
            h.file_write_guid, h.data_write_guid = ids.file_write, ids.data_write
            if any(h.log_guid):
                h.log_guid = ids.log
            fixed = HEADER.build(h)
            f.seek(offset)
            f.write(_with_checksum(fixed + raw[len(fixed):]))
        log_offset = headers[0][1].log_offset
        entry = _read(f, log_offset, 64, f"{path}: VHDX log")
        if entry[:4] == b"loge":
            e = LOG_ENTRY.parse(entry)
            if 64 <= e.entry_length <= headers[0][1].log_length:
                whole = bytearray(_read(f, log_offset, e.entry_length, f"{path}: VHDX log entry"))
                whole[32:48] = ids.log
                f.seek(log_offset)
                f.write(_with_checksum(bytes(whole)))
        page83 = _metadata_item(f, path, PAGE83_ITEM, 16)
        if page83 is not None:
            f.seek(page83)
            f.write(ids.disk_id)
