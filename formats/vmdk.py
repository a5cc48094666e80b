"""VMDK (monolithic sparse, as ``qemu-img convert -O vmdk`` writes it): the sparse extent
header declared once, the embedded descriptor read and re-stamped.

The descriptor is text inside the file (``descriptorOffset``/``descriptorSize`` sectors of the
header). qemu-img puts a random content id (``CID=``) there and names the extent by the file
name it wrote, which for an output written under a temporary name and renamed is the wrong
name. :func:`stamp` rewrites the descriptor with a given CID and the final file name, padded
with NULs to its region, so two conversions of one disk give the same bytes.

Layout (little-endian, VMware's "Virtual Disk Format 1.1"): magic ``KDMV``, version, flags,
capacity and grain size (sectors), descriptor offset and size (sectors), entries per grain
table, redundant and primary grain directory offsets, overhead, unclean-shutdown flag, the four
line-end check characters, compression algorithm, 433 bytes of padding.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

from construct import Bytes, Const, ConstructError, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from imgkit.errors import ImageError

MAGIC = b"KDMV"
SECTOR = 512

HEADER = Struct(
    "magic" / Const(MAGIC),
    "version" / Int32ul,
    "flags" / Int32ul,
    "capacity" / Int64ul,
    "grain_size" / Int64ul,
    "descriptor_offset" / Int64ul,
    "descriptor_size" / Int64ul,
    "num_gtes_per_gt" / Int32ul,
    "rgd_offset" / Int64ul,
    "gd_offset" / Int64ul,
    "overhead" / Int64ul,
    "unclean_shutdown" / Int8ul,
    "line_end_chars" / Bytes(4),
    "compress_algorithm" / Int16ul,
    "pad" / Bytes(433),
)
assert HEADER.sizeof() == SECTOR

_CID = re.compile(rb"^CID=[0-9a-fA-F]+$", re.M)
_EXTENT = re.compile(rb'^(RW \d+ SPARSE )"[^"\n]*"$', re.M)


@dataclass(frozen=True)
class VmdkInfo:
    """What ``imgkit inspect`` says of a VMDK."""

    virtual_size: int
    grain_size: int
    descriptor: str


def _header(f: BinaryIO, path: str) -> tuple[Any, int, int]:
    size = os.fstat(f.fileno()).st_size
    try:
        h = HEADER.parse(f.read(SECTOR))
    except ConstructError:
        raise ImageError(f"{path}: no VMDK sparse extent header (expected {MAGIC!r} at "
                         "offset 0)") from None
    start, length = h.descriptor_offset * SECTOR, h.descriptor_size * SECTOR
    if not h.descriptor_offset or not 0 < length <= 1 << 20 or start + length > size:
        raise ImageError(f"{path}: descriptor of {length} bytes at offset {start} does not lie "
                         f"inside the {size}-byte file")
    return h, start, length


def read_info(path: str) -> VmdkInfo:
    """The header and the descriptor text of ``path``."""
    with open(path, "rb") as f:
        h, start, length = _header(f, path)
        f.seek(start)
        text = f.read(length).split(b"\0", 1)[0].decode("utf-8", "replace")
    return VmdkInfo(h.capacity * SECTOR, h.grain_size * SECTOR, text)


def stamp(path: str, *, cid: int, extent_name: str) -> None:
    """Write ``cid`` (32 bits) and ``extent_name`` into the descriptor of ``path``."""
    with open(path, "r+b") as f:
        _, start, length = _header(f, path)
        f.seek(start)
        text = f.read(length).split(b"\0", 1)[0]
        if not _CID.search(text) or not _EXTENT.search(text):
            raise ImageError(f"{path}: the descriptor at offset {start} has no CID= line or no "
                             "sparse extent line")
        name = extent_name.replace('"', "_").encode()
        text = _CID.sub(b"CID=%08x" % (cid & 0xFFFFFFFF), text, count=1)
        text = _EXTENT.sub(lambda m: m.group(1) + b'"' + name + b'"', text, count=1)
        if len(text) > length:
            raise ImageError(f"{path}: the descriptor would not fit its {length} bytes")
        f.seek(start)
        f.write(text.ljust(length, b"\0"))
