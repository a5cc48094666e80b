"""squashfs: the superblock declared once, and a describer (reading; no writer yet)."""
from __future__ import annotations

from typing import BinaryIO

from imgkit.errors import ImageError
from imgkit.formats.blobs import available, read_at
from imgkit.formats.records import Record

MAGIC = b"hsqs"
SUPERBLOCK = Record("SquashfsSuperblock", 96, [
    ("magic", "4s"), ("inodes", "I"), ("mkfs_time", "I"), ("block_size", "I"),
    ("fragments", "I"), ("compression", "H"), ("block_log", "H"), ("flags", "H"),
    ("ids", "H"), ("major", "H"), ("minor", "H"), ("root_inode", "Q"), ("bytes_used", "Q"),
    ("id_table", "Q"), ("xattr_table", "Q"), ("inode_table", "Q"), ("directory_table", "Q"),
    ("fragment_table", "Q"), ("export_table", "Q"),
])
COMPRESSION = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


def describe(f: BinaryIO, offset: int = 0, size: int | None = None) -> dict:
    """The squashfs image at ``offset``, from its superblock, as a JSON-able dict."""
    if available(f, offset, size) < SUPERBLOCK.size:
        raise ImageError(f"squashfs superblock at offset {offset}: the image ends first")
    sb = SUPERBLOCK.unpack(read_at(f, offset, SUPERBLOCK.size))
    if sb.magic != MAGIC:
        raise ImageError(f"squashfs superblock at offset {offset}: expected magic {MAGIC!r}, "
                         f"got {sb.magic!r}")
    return {"format": "squashfs", "label": "", "uuid": None, "size": sb.bytes_used,
            "version": f"{sb.major}.{sb.minor}", "inodes": sb.inodes,
            "block_size": sb.block_size,
            "compression": COMPRESSION.get(sb.compression, str(sb.compression)),
            "created": sb.mkfs_time}
