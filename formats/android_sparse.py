"""Android sparse images (what ``fastboot flash`` sends), written and read in pure Python.

The format (AOSP ``libsparse/sparse_format.h``): a 28-byte file header, then chunks, each a
12-byte chunk header followed by its data. A chunk covers ``chunk_sz`` blocks of ``blk_sz``
bytes of the expanded image: RAW carries the blocks, FILL one 32-bit value repeated over them,
DONT_CARE nothing (the blocks are whatever the device holds; ``simg2img`` writes zeros), CRC32
a checksum of the data so far. All fields are little-endian.

The writer turns a raw disk image into one: holes become DONT_CARE chunks, blocks that repeat
one 32-bit value FILL chunks, the rest RAW chunks copied with ``copy_file_range``. The image
checksum is left 0 (optional in the format) and nothing depends on time or chance, so the same
disk gives the same bytes.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from construct import Const, ConstructError, Int16ul, Int32ul, Struct

from imgkit.errors import ImageError, InputError

MAGIC = 0xED26FF3A
MAGIC_BYTES = MAGIC.to_bytes(4, "little")
MAJOR_VERSION = 1
CHUNK_RAW = 0xCAC1
CHUNK_FILL = 0xCAC2
CHUNK_DONT_CARE = 0xCAC3
CHUNK_CRC32 = 0xCAC4
CHUNK_NAMES = {CHUNK_RAW: "raw", CHUNK_FILL: "fill", CHUNK_DONT_CARE: "dont-care",
               CHUNK_CRC32: "crc32"}
FILE_HEADER_SIZE = 28
CHUNK_HEADER_SIZE = 12
#: The largest RAW chunk written (a chunk's byte size must fit 32 bits; fastboot splits).
_MAX_RAW_BYTES = 64 << 20

SparseHeader = Struct(
    "magic" / Const(MAGIC, Int32ul),
    "major_version" / Const(MAJOR_VERSION, Int16ul),
    "minor_version" / Int16ul,
    "file_hdr_sz" / Const(FILE_HEADER_SIZE, Int16ul),
    "chunk_hdr_sz" / Const(CHUNK_HEADER_SIZE, Int16ul),
    "blk_sz" / Int32ul,
    "total_blks" / Int32ul,
    "total_chunks" / Int32ul,
    "image_checksum" / Int32ul,
)

ChunkHeader = Struct(
    "chunk_type" / Int16ul,
    "reserved1" / Const(0, Int16ul),
    "chunk_sz" / Int32ul,       # blocks of the expanded image
    "total_sz" / Int32ul,       # bytes of this chunk in the sparse file, header included
)

assert SparseHeader.sizeof() == FILE_HEADER_SIZE
assert ChunkHeader.sizeof() == CHUNK_HEADER_SIZE


@dataclass(frozen=True)
class Chunk:
    """One chunk: its type, first block and block count in the expanded image, and where its
    data starts in the sparse file (``fill``: the value of a FILL chunk)."""

    type: int
    block: int
    blocks: int
    data_offset: int
    fill: int = 0


def block_size_for(size: int) -> int:
    """The block size for an image of ``size`` bytes: 4096 when it divides the size (what
    fastboot and ``img2simg`` use), else the 512-byte sector, so the expanded image has
    exactly the disk's size."""
    for bs in (4096, 2048, 1024, 512):
        if size % bs == 0:
            return bs
    raise InputError(f"an Android sparse image holds whole 512-byte blocks; the disk is "
                     f"{size} bytes")


def _extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the data (non-hole) ranges of ``fd``."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return                      # ENXIO: only a hole is left
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def plan_chunks(fd: int, size: int, bs: int) -> list[tuple[int, int, int, int]]:
    """``(type, first block, blocks, fill value)`` covering the image ``fd`` in order."""
    out: list[tuple[int, int, int, int]] = []

    def add(kind: int, block: int, n: int, fill: int = 0) -> None:
        last = out[-1] if out else None
        if last and last[0] == kind and last[3] == fill and last[1] + last[2] == block and \
                (kind != CHUNK_RAW or (last[2] + n) * bs <= _MAX_RAW_BYTES):
            out[-1] = (kind, last[1], last[2] + n, fill)
        else:
            out.append((kind, block, n, fill))

    cursor = 0
    for start, end in _extents(fd, size):
        first, stop = start // bs, -(-end // bs)
        if first > cursor:
            add(CHUNK_DONT_CARE, cursor, first - cursor)
        first = max(first, cursor)
        block = first
        while block < stop:
            n = min(stop - block, 256)
            data = os.pread(fd, n * bs, block * bs)
            for i in range(n):
                blk = data[i * bs:(i + 1) * bs]
                word = blk[:4]
                if blk == word * (bs // 4):
                    add(CHUNK_FILL, block + i, 1, int.from_bytes(word, "little"))
                else:
                    add(CHUNK_RAW, block + i, 1)
            block += n
        cursor = stop
    total = size // bs
    if cursor < total:
        add(CHUNK_DONT_CARE, cursor, total - cursor)
    return out


def write_sparse(raw_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Write the Android sparse image ``out_path`` of the raw image ``raw_path``."""
    with open(raw_path, "rb") as src, open(out_path, "wb") as out:
        fd = src.fileno()
        size = os.fstat(fd).st_size
        bs = block_size_for(size)
        chunks = plan_chunks(fd, size, bs)
        out.write(SparseHeader.build(dict(minor_version=0, blk_sz=bs, total_blks=size // bs,
                                          total_chunks=len(chunks), image_checksum=0)))
        for kind, block, n, fill in chunks:
            payload = {CHUNK_RAW: n * bs, CHUNK_FILL: 4, CHUNK_DONT_CARE: 0}[kind]
            out.write(ChunkHeader.build(dict(chunk_type=kind, chunk_sz=n,
                                             total_sz=CHUNK_HEADER_SIZE + payload)))
            if kind == CHUNK_FILL:
                out.write(fill.to_bytes(4, "little"))
            elif kind == CHUNK_RAW:
                out.flush()
                _copy(fd, out.fileno(), block * bs, n * bs)
                out.seek(0, os.SEEK_END)


def _copy(src: int, dst: int, offset: int, length: int) -> None:
    out_offset = os.lseek(dst, 0, os.SEEK_END)
    while length:
        done = os.copy_file_range(src, dst, length, offset, out_offset)
        if done == 0:
            raise ImageError(f"raw image ends before byte {offset + length}")
        offset, out_offset, length = offset + done, out_offset + done, length - done


@dataclass(frozen=True)
class SparseImage:
    """A parsed sparse image: block size, expanded size and its chunks, checked."""

    block_size: int
    total_blocks: int
    chunks: tuple[Chunk, ...]

    @property
    def expanded_size(self) -> int:
        return self.block_size * self.total_blocks


def read_sparse(f: BinaryIO) -> SparseImage:
    """Parse the header and chunk list of the sparse image ``f``, checking every size against
    the file: a count or size that does not add up is an :class:`ImageError`."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    try:
        hdr = SparseHeader.parse(f.read(FILE_HEADER_SIZE))
    except ConstructError as exc:
        raise ImageError(f"Android sparse header: {exc}") from None
    bs = hdr.blk_sz
    if bs == 0 or bs % 4:
        raise ImageError(f"Android sparse header: expected a block size that is a multiple of "
                         f"4, got {bs}")
    chunks, pos, block = [], FILE_HEADER_SIZE, 0
    if hdr.total_chunks > (size - pos) // CHUNK_HEADER_SIZE:
        raise ImageError(f"Android sparse header: {hdr.total_chunks} chunks cannot fit in "
                         f"{size} bytes")
    for i in range(hdr.total_chunks):
        f.seek(pos)
        raw = f.read(CHUNK_HEADER_SIZE)
        try:
            ch = ChunkHeader.parse(raw)
        except ConstructError:
            raise ImageError(f"Android sparse chunk {i} at offset {pos}: damaged header") from None
        want = {CHUNK_RAW: ch.chunk_sz * bs, CHUNK_FILL: 4, CHUNK_DONT_CARE: 0, CHUNK_CRC32: 4}
        if ch.chunk_type not in want:
            raise ImageError(f"Android sparse chunk {i} at offset {pos}: unknown type "
                             f"0x{ch.chunk_type:04x}")
        if ch.total_sz != CHUNK_HEADER_SIZE + want[ch.chunk_type] or pos + ch.total_sz > size:
            raise ImageError(f"Android sparse chunk {i} at offset {pos}: expected "
                             f"{CHUNK_HEADER_SIZE + want[ch.chunk_type]} bytes within the "
                             f"file's {size}, got {ch.total_sz}")
        fill = int.from_bytes(f.read(4), "little") if ch.chunk_type == CHUNK_FILL else 0
        blocks = 0 if ch.chunk_type == CHUNK_CRC32 else ch.chunk_sz
        chunks.append(Chunk(ch.chunk_type, block, blocks, pos + CHUNK_HEADER_SIZE, fill))
        block += blocks
        pos += ch.total_sz
    if block != hdr.total_blks:
        raise ImageError(f"Android sparse image: the chunks cover {block} blocks, the header "
                         f"says {hdr.total_blks}")
    return SparseImage(bs, hdr.total_blks, tuple(chunks))


def summary(image: SparseImage) -> dict:
    """Counts for ``imgkit inspect``: chunks and blocks of each type."""
    out: dict = {"block_size": image.block_size, "total_blocks": image.total_blocks,
                 "expanded_size": image.expanded_size, "chunks": len(image.chunks)}
    for kind, name in CHUNK_NAMES.items():
        of = [c for c in image.chunks if c.type == kind]
        out[f"{name}_chunks"] = len(of)
        out[f"{name}_blocks"] = sum(c.blocks for c in of)
    return out
