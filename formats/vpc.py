"""VHD (Virtual PC, qemu-img's ``vpc``): the footer declared once, read and re-stamped.

``qemu-img convert -O vpc`` writes the creation time and a random unique id into the
512-byte footer, which a dynamic disk keeps twice (a copy at offset 0 and the footer at the
end), so two conversions of the same disk differ. :func:`stamp` writes a given time and id
into both copies and recomputes the checksum (the ones' complement of the byte sum of the
footer without its checksum field), which is all that differs.

Layout (big-endian, Microsoft's "Virtual Hard Disk Image Format Specification"): cookie
``conectix``, features, version, data offset, timestamp (seconds since 2000-01-01 UTC),
creator application, version and host, original and current size, geometry, disk type,
checksum, unique id, saved state, 427 reserved bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from construct import Bytes, Const, ConstructError, Int8ub, Int32ub, Int64ub, Struct

from imgkit.errors import ImageError

COOKIE = b"conectix"
FOOTER_SIZE = 512
VHD_EPOCH = 946684800          # 2000-01-01T00:00:00Z in Unix time
DISK_TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}
_CHECKSUM_OFFSET = 64

FOOTER = Struct(
    "cookie" / Const(COOKIE),
    "features" / Int32ub,
    "version" / Int32ub,
    "data_offset" / Int64ub,
    "timestamp" / Int32ub,
    "creator_app" / Bytes(4),
    "creator_version" / Int32ub,
    "creator_host" / Bytes(4),
    "original_size" / Int64ub,
    "current_size" / Int64ub,
    "geometry" / Int32ub,
    "disk_type" / Int32ub,
    "checksum" / Int32ub,
    "unique_id" / Bytes(16),
    "saved_state" / Int8ub,
    "reserved" / Bytes(427),
)
assert FOOTER.sizeof() == FOOTER_SIZE


@dataclass(frozen=True)
class VhdInfo:
    """What ``imgkit inspect`` says of a VHD."""

    virtual_size: int
    disk_type: str
    created: int           # Unix time
    unique_id: bytes
    creator: str


def checksum(footer: bytes) -> int:
    """The footer's checksum: ones' complement of the sum of every byte but the checksum's."""
    total = sum(footer[:_CHECKSUM_OFFSET]) + sum(footer[_CHECKSUM_OFFSET + 4:])
    return ~total & 0xFFFFFFFF


def _parse(raw: bytes, where: str) -> Any:
    try:
        return FOOTER.parse(raw)
    except ConstructError:
        raise ImageError(f"{where}: no VHD footer (expected {COOKIE!r})") from None


def read_info(path: str) -> VhdInfo:
    """The footer at the end of ``path`` (every VHD has one there)."""
    size = os.path.getsize(path)
    if size < FOOTER_SIZE:
        raise ImageError(f"{path}: {size} bytes, too small for a VHD footer ({FOOTER_SIZE})")
    with open(path, "rb") as f:
        f.seek(size - FOOTER_SIZE)
        raw = f.read(FOOTER_SIZE)
    c = _parse(raw, f"{path} at offset {size - FOOTER_SIZE}")
    if c.checksum != checksum(raw):
        raise ImageError(f"{path}: VHD footer checksum {c.checksum:#x}, expected "
                         f"{checksum(raw):#x} at offset {size - FOOTER_SIZE}")
    return VhdInfo(c.current_size, DISK_TYPES.get(c.disk_type, str(c.disk_type)),
                   c.timestamp + VHD_EPOCH, bytes(c.unique_id),
                   bytes(c.creator_app).decode("latin-1").strip())


def stamp(path: str, *, unique_id: bytes, unix_time: int) -> None:
    """Write ``unique_id`` and ``unix_time`` into every footer copy of ``path``."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size - FOOTER_SIZE)
        footer = _parse(f.read(FOOTER_SIZE), f"{path} at offset {size - FOOTER_SIZE}")
        footer.unique_id = unique_id
        footer.timestamp = max(0, min(unix_time - VHD_EPOCH, 0xFFFFFFFF))
        footer.checksum = 0
        raw = bytearray(FOOTER.build(footer))
        raw[_CHECKSUM_OFFSET:_CHECKSUM_OFFSET + 4] = checksum(bytes(raw)).to_bytes(4, "big")
        offsets = [size - FOOTER_SIZE]
        f.seek(0)
        if f.read(len(COOKIE)) == COOKIE and size >= 2 * FOOTER_SIZE:
            offsets.append(0)          # a dynamic disk's copy
        for offset in offsets:
            f.seek(offset)
            f.write(raw)
