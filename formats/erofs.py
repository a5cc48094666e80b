"""erofs: the on-disk structures declared once, an uncompressed writer, a describer and a reader.

erofs-utils 1.5 (Debian 12) builds only from a host directory, so rootless it can neither set
owners nor make device nodes; this writer lays the image out from the :class:`Tree` itself.
Layout (4096-byte blocks): the superblock at byte 1024 of block 0, then the inodes from byte
1152 on (``meta_blkaddr`` 0, a nid is the inode's offset / 32), each 32-byte aligned and kept
inside one block, then the data blocks. A file, directory or symlink whose last partial block
fits after its inode stores it there (``EROFS_INODE_FLAT_INLINE``), the rest in whole blocks
(``EROFS_INODE_FLAT_PLAIN``). Directories are erofs dirent blocks sorted by name. Inodes are
compact (32 bytes, time = the superblock's build time) unless the entry's time, owner, size or
link count needs the extended one (64 bytes). xattrs sit in the inode's inline xattr area with
the erofs name prefixes; a name with no erofs prefix cannot be stored and is returned as a
warning. The same tree gives the same bytes.
"""
from __future__ import annotations

import collections
import io
import os
import posixpath
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from imgkit.errors import ImageError, InputError
from imgkit.formats.blobs import available, read_at
from imgkit.formats.crc32c import crc32c_raw
from imgkit.formats.records import Record
from imgkit.holes import copy_sparse, pwrite_all
from imgkit.tree import Entry, Kind, Tree

MAGIC = 0xE0F5E1E2
SUPERBLOCK_AT = 1024
BLOCK_BITS = 12
BLOCK = 1 << BLOCK_BITS
SLOT = 32                                   # a nid counts 32-byte slots from meta_blkaddr
NULL_ADDR = 0xFFFFFFFF
NAME_MAX = 255

SUPERBLOCK = Record("ErofsSuperBlock", 128, [
    ("magic", "I"), ("checksum", "I"), ("feature_compat", "I"), ("blkszbits", "B"),
    ("sb_extslots", "B"), ("root_nid", "H"), ("inos", "Q"), ("build_time", "Q"),
    ("build_time_nsec", "I"), ("blocks", "I"), ("meta_blkaddr", "I"), ("xattr_blkaddr", "I"),
    ("uuid", "16s"), ("volume_name", "16s"), ("feature_incompat", "I"),
    ("available_compr_algs", "H"), ("extra_devices", "H"), ("devt_slotoff", "H"),
    ("_", "38s"),
])
INODE_COMPACT = Record("ErofsInodeCompact", 32, [
    ("i_format", "H"), ("i_xattr_icount", "H"), ("i_mode", "H"), ("i_nlink", "H"),
    ("i_size", "I"), ("_", "I"), ("i_u", "I"), ("i_ino", "I"), ("i_uid", "H"), ("i_gid", "H"),
    ("_", "I"),
])
INODE_EXTENDED = Record("ErofsInodeExtended", 64, [
    ("i_format", "H"), ("i_xattr_icount", "H"), ("i_mode", "H"), ("_", "H"),
    ("i_size", "Q"), ("i_u", "I"), ("i_ino", "I"), ("i_uid", "I"), ("i_gid", "I"),
    ("i_mtime", "Q"), ("i_mtime_nsec", "I"), ("i_nlink", "I"), ("_", "16s"),
])
DIRENT = Record("ErofsDirent", 12, [
    ("nid", "Q"), ("nameoff", "H"), ("file_type", "B"), ("_", "B"),
])
XATTR_IBODY_HEADER = Record("ErofsXattrIbodyHeader", 12, [
    ("h_reserved", "I"), ("h_shared_count", "B"), ("_", "7s"),
])
XATTR_ENTRY = Record("ErofsXattrEntry", 4, [
    ("e_name_len", "B"), ("e_name_index", "B"), ("e_value_size", "H"),
])

FEATURE_COMPAT_SB_CHKSUM = 0x1
FEATURE_COMPAT_MTIME = 0x2
FEATURE_INCOMPAT_KNOWN_UNCOMPRESSED = 0             # what the reader handles: no incompat bit
#: ``i_format``: bit 0 the inode version, bits 1-3 the data layout.
VERSION_EXTENDED = 1
FLAT_PLAIN, FLAT_INLINE = 0, 2
LAYOUT_NAMES = {0: "flat-plain", 1: "compressed-full", 2: "flat-inline",
                3: "compressed-compact", 4: "chunk-based"}

FILE_TYPE = {Kind.FILE: 1, Kind.HARDLINK: 1, Kind.DIR: 2, Kind.CHAR: 3, Kind.BLOCK: 4,
             Kind.FIFO: 5, Kind.SOCKET: 6, Kind.SYMLINK: 7}
#: The xattr name index -> prefix (index 2/3: the whole name is the prefix).
XATTR_PREFIXES = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default",
                  4: "trusted.", 5: "lustre.", 6: "security."}


# -- the superblock checksum ------------------------------------------------------------------

def superblock_checksum(block0: bytes) -> int:
    """The ``sb_csum`` value: crc32c of block 0 from the superblock on, checksum field zero."""
    data = bytearray(block0[SUPERBLOCK_AT:BLOCK])
    data[4:8] = b"\0\0\0\0"
    return crc32c_raw(bytes(data))


# -- shared helpers --------------------------------------------------------------------------

def encode_rdev(major: int, minor: int) -> int:
    """Linux ``new_encode_dev``, the form ``i_u.rdev`` holds."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def decode_rdev(dev: int) -> tuple[int, int]:
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def xattr_isize(icount: int) -> int:
    """Bytes of the inline xattr area ``i_xattr_icount`` announces."""
    return 0 if icount == 0 else XATTR_IBODY_HEADER.size + (icount - 1) * 4


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def split_xattr_name(name: str) -> tuple[int, bytes] | None:
    """``(name index, suffix)`` of an xattr name, or ``None`` when erofs has no prefix for it."""
    for index in (2, 3):
        if name == XATTR_PREFIXES[index]:
            return index, b""
    for index, prefix in XATTR_PREFIXES.items():
        if index not in (2, 3) and name.startswith(prefix) and len(name) > len(prefix):
            return index, os.fsencode(name[len(prefix):])
    return None


def encode_xattrs(xattrs: tuple[tuple[str, bytes], ...], path: str,
                  warnings: list[str]) -> bytes:
    """The inline xattr area (header and entries) for ``xattrs``; b"" when there are none."""
    body = bytearray()
    for name, value in xattrs:
        split = split_xattr_name(name)
        if split is None:
            warnings.append(f"erofs: xattr {name!r} of {path!r} not stored: erofs has no name "
                            f"prefix for it (user., trusted., security., system.posix_acl_*)")
            continue
        index, suffix = split
        if len(suffix) > 255 or len(value) > 0xFFFF:
            raise InputError(f"erofs: xattr {name!r} of {path!r}: name suffix {len(suffix)} "
                             f"bytes, value {len(value)} bytes; erofs holds at most 255 and "
                             f"65535")
        entry = XATTR_ENTRY.pack(e_name_len=len(suffix), e_name_index=index,
                                 e_value_size=len(value)) + suffix + value
        body += entry + b"\0" * (_align(len(entry), 4) - len(entry))
    if not body:
        return b""
    return XATTR_IBODY_HEADER.pack() + bytes(body)


def _xattr_entries(raw: bytes, limit: int | None = None) -> list[tuple[str, bytes]]:
    """The xattr entries packed in ``raw`` (at most ``limit`` of them)."""
    out: list[tuple[str, bytes]] = []
    at = 0
    while at + XATTR_ENTRY.size <= len(raw) and (limit is None or len(out) < limit):
        e = XATTR_ENTRY.unpack(raw, at)
        start = at + XATTR_ENTRY.size
        suffix = raw[start:start + e.e_name_len]
        value = raw[start + e.e_name_len:start + e.e_name_len + e.e_value_size]
        prefix = XATTR_PREFIXES.get(e.e_name_index, f"(prefix {e.e_name_index})")
        out.append((prefix + os.fsdecode(suffix), bytes(value)))
        at = _align(start + e.e_name_len + e.e_value_size, 4)
    return out


def decode_xattrs(area: bytes, shared: list[bytes]) -> tuple[tuple[str, bytes], ...]:
    """The xattrs of an inline xattr area; ``shared`` holds the bytes at each shared xattr
    it points at (one entry each)."""
    head = XATTR_IBODY_HEADER.unpack(area)
    pos = XATTR_IBODY_HEADER.size + head.h_shared_count * 4
    out = [x for raw in shared for x in _xattr_entries(raw, 1)]
    return tuple(out + _xattr_entries(area[pos:]))


def dir_blocks(names: list[tuple[bytes, int, int]]) -> list[bytes]:
    """The dirent blocks of a directory: ``names`` is ``[(name, nid, file type)]``, sorted
    here by bytes (the kernel looks names up by binary search). Each block is an array of
    dirents followed by their names; the last block is not padded."""
    names = sorted(names)
    blocks: list[bytes] = []
    i = 0
    while i < len(names):
        used, j = 0, i
        while j < len(names) and used + DIRENT.size + len(names[j][0]) <= BLOCK:
            used += DIRENT.size + len(names[j][0])
            j += 1
        if j == i:
            raise InputError(f"erofs: file name {names[i][0]!r} is too long")
        chunk = names[i:j]
        nameoff = DIRENT.size * len(chunk)
        heads, tails = bytearray(), bytearray()
        for name, nid, ftype in chunk:
            heads += DIRENT.pack(nid=nid, nameoff=nameoff + len(tails), file_type=ftype)
            tails += name
        blocks.append(bytes(heads + tails))
        i = j
    return blocks


def dir_size(names: list[bytes]) -> int:
    """The byte size :func:`dir_blocks` gives a directory with these names (nids unknown)."""
    blocks = dir_blocks([(n, 0, 0) for n in names])
    return (len(blocks) - 1) * BLOCK + len(blocks[-1])


# -- writer ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ErofsInfo:
    size: int
    warnings: tuple[str, ...] = ()


@dataclass
class _Inode:
    """One inode being laid out: its entry (the primary name), link count and placement."""

    entry: Entry
    ino: int
    nlink: int = 1
    size: int = 0
    extended: bool = False
    xattrs: bytes = b""
    inline: int = 0           # bytes of the tail stored after the inode
    pos: int = 0              # byte offset of the inode
    blkaddr: int = NULL_ADDR  # first data block
    names: list[bytes] = field(default_factory=list)   # a directory's child names

    @property
    def nid(self) -> int:
        return self.pos // SLOT

    @property
    def isize(self) -> int:
        return (INODE_EXTENDED if self.extended else INODE_COMPACT).size + len(self.xattrs)

    @property
    def full_blocks(self) -> int:
        """Blocks of data not stored inline: a tail too big to follow the inode takes a block
        of its own (the rest of it reads as zeros)."""
        return -(-(self.size - self.inline) // BLOCK)


def build_time_of(tree: Tree) -> int:
    """The time compact inodes take: the most common entry time (the newest among equals)."""
    counts = collections.Counter(e.mtime for e in tree)
    return max(counts, key=lambda t: (counts[t], t)) if counts else 0


def _plan(tree: Tree, build_time: int, warnings: list[str]) -> tuple[dict[str, _Inode], list[_Inode]]:
    """Every inode (hard links share their primary's) with its sizes; nothing placed yet."""
    by_path: dict[str, _Inode] = {}
    inodes: list[_Inode] = []
    for e in tree:
        if e.kind is Kind.HARDLINK:
            continue
        node = _Inode(e, len(inodes) + 1)
        by_path[e.path] = node
        inodes.append(node)
    for e in tree:
        if e.kind is Kind.HARDLINK:
            node = by_path[e.target or ""]
            node.nlink += 1
            by_path[e.path] = node
    for node in inodes:
        e = node.entry
        if e.kind is Kind.DIR:
            children = tree.children(e.path)
            node.names = [b".", b".."] + [os.fsencode(c.name) for c in children]
            for c, name in zip(children, node.names[2:], strict=True):
                if len(name) > NAME_MAX:
                    raise InputError(f"erofs: the name of {c.path!r} is {len(name)} bytes; "
                                     f"erofs names are at most {NAME_MAX}",
                                     hint=f"entry from {c.origin}" if c.origin else None)
            node.nlink = 2 + sum(1 for c in children if c.kind is Kind.DIR)
            node.size = dir_size(node.names)
        else:
            node.size = e.size
        node.xattrs = encode_xattrs(e.xattrs, e.path or "/", warnings)
        node.extended = (e.mtime != build_time or e.uid > 0xFFFF or e.gid > 0xFFFF
                         or node.nlink > 0xFFFF or node.size > 0xFFFFFFFF)
        if e.mtime < 0:
            raise InputError(f"erofs: {e.path!r} has time {e.mtime}; erofs holds times from 1970")
        tail = node.size % BLOCK
        if tail and node.isize + tail <= BLOCK:
            node.inline = tail
    return by_path, inodes


def _place(inodes: list[_Inode]) -> int:
    """Give each inode its byte offset (32-byte aligned, inode and tail inside one block) and
    each data its blocks; the image's block count."""
    pos = SUPERBLOCK_AT + SUPERBLOCK.size
    for node in inodes:
        total = node.isize + node.inline
        pos = _align(pos, SLOT)
        if pos % BLOCK + total > BLOCK and total <= BLOCK:
            pos = _align(pos, BLOCK)
        node.pos = pos
        pos += total
    block = _align(pos, BLOCK) // BLOCK
    for node in inodes:
        if node.full_blocks:
            node.blkaddr = block
            block += node.full_blocks
    return block


def _content(node: _Inode, tree: Tree, by_path: dict[str, _Inode]) -> BinaryIO:
    """The data bytes of ``node`` (a file's blob, a symlink's target, a directory's dirents)."""
    e = node.entry
    if e.kind is Kind.DIR:
        parent = by_path[e.parent] if e.path else node
        names = [(b".", node.nid, 2), (b"..", parent.nid, 2)]
        for c in tree.children(e.path):
            names.append((os.fsencode(c.name), by_path[c.path].nid, FILE_TYPE[c.kind]))
        blocks = dir_blocks(names)
        return io.BytesIO(b"".join(b.ljust(BLOCK, b"\0") for b in blocks[:-1]) + blocks[-1])
    if e.kind is Kind.SYMLINK:
        return io.BytesIO(os.fsencode(e.target or ""))
    if e.kind is Kind.FILE and e.data is not None:
        return e.data.open()
    return io.BytesIO(b"")


def _inode_bytes(node: _Inode) -> bytes:
    e = node.entry
    layout = FLAT_INLINE if node.inline else FLAT_PLAIN
    if e.kind in (Kind.CHAR, Kind.BLOCK):
        i_u = encode_rdev(*e.rdev)
    elif e.kind in (Kind.FIFO, Kind.SOCKET) or node.inline and not node.full_blocks:
        i_u = 0
    else:
        i_u = node.blkaddr          # NULL_ADDR for an empty file, as mkfs.erofs writes
    icount = 0 if not node.xattrs else (len(node.xattrs) - XATTR_IBODY_HEADER.size) // 4 + 1
    common = dict(i_xattr_icount=icount, i_mode=e.st_mode, i_size=node.size, i_u=i_u,
                  i_ino=node.ino, i_uid=e.uid, i_gid=e.gid, i_nlink=node.nlink)
    if node.extended:
        head = INODE_EXTENDED.pack(i_format=VERSION_EXTENDED | layout << 1, i_mtime=e.mtime,
                                   **common)
    else:
        head = INODE_COMPACT.pack(i_format=layout << 1, **common)
    return head + node.xattrs


def _copy(src: BinaryIO, out: BinaryIO, n: int, what: str) -> None:
    """Copy ``n`` bytes of ``src`` to ``out``; an error when ``src`` ends first."""
    left = n
    while left:
        chunk = src.read(min(left, 1 << 20))
        if not chunk:
            raise ImageError(f"erofs: the data of {what!r} ends {left} bytes before its size")
        out.write(chunk)
        left -= len(chunk)


def _copy_host_file(node: _Inode, out: BinaryIO) -> bool:
    """Copy a regular file that is a whole host file in the kernel (``copy_file_range``,
    holes skipped, a reflink where the filesystem offers it), its tail read with one
    ``pread``; ``False`` for any other data, which is streamed."""
    e = node.entry
    where = e.data.host_range() if e.kind is Kind.FILE and e.data is not None else None
    if where is None or where[1] != 0 or not node.size:
        return False
    host = where[0]
    out.flush()
    fd = out.fileno()
    if node.full_blocks:
        copy_sparse(host, fd, node.blkaddr * BLOCK, node.full_blocks * BLOCK)
    if node.inline:
        with open(host, "rb") as f:
            tail = os.pread(f.fileno(), node.inline, node.full_blocks * BLOCK)
        if len(tail) != node.inline:
            raise ImageError(f"erofs: the data of {e.path!r} ends before its size {node.size}")
        pwrite_all(fd, tail, node.pos + node.isize)
    return True


def _volume_uuid(text: str | None, seed: str) -> bytes:
    if text is None:
        return uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"imgkit-erofs:{seed}").bytes
    try:
        return uuidlib.UUID(text).bytes
    except ValueError:
        raise InputError(f"erofs uuid {text!r}: expected a UUID such as "
                         f"'0f8a6ec5-0cf8-4a4b-b2b2-4a1c7c3e9b1d'") from None


def write_erofs(tree: Tree, path: str, *, label: str = "", uuid: str | None = None,
                seed: str = "", checksum: bool = True) -> ErofsInfo:
    """Write ``tree`` as an uncompressed erofs image at ``path`` (replaced).

    ``label`` is the volume name (at most 16 bytes); ``uuid`` the volume UUID, by default
    derived from ``seed`` so the same config gives the same image. ``checksum`` sets the
    superblock crc32c feature (``sb_csum``).
    """
    tree.validate()
    volume = os.fsencode(label or "")
    if len(volume) > 16:
        raise InputError(f"erofs volume name {label!r} is {len(volume)} bytes; erofs holds 16")
    warnings: list[str] = []
    build_time = build_time_of(tree)
    by_path, inodes = _plan(tree, build_time, warnings)
    root = by_path[""]
    if root.nid > 0xFFFF:
        raise AssertionError("the root inode is placed first")
    blocks = _place(inodes)
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as out:
        out.truncate(blocks * BLOCK)
        for node in inodes:
            out.seek(node.pos)
            out.write(_inode_bytes(node))
            if _copy_host_file(node, out):
                continue
            with _content(node, tree, by_path) as src:
                if node.full_blocks:
                    out.seek(node.blkaddr * BLOCK)
                    _copy(src, out, node.size - node.inline, node.entry.path)
                if node.inline:
                    out.seek(node.pos + node.isize)
                    _copy(src, out, node.inline, node.entry.path)
        out.seek(SUPERBLOCK_AT)
        out.write(SUPERBLOCK.pack(
            magic=MAGIC, feature_compat=FEATURE_COMPAT_MTIME | (
                FEATURE_COMPAT_SB_CHKSUM if checksum else 0),
            blkszbits=BLOCK_BITS, root_nid=root.nid, inos=len(inodes), build_time=build_time,
            blocks=blocks, uuid=_volume_uuid(uuid, seed), volume_name=volume))
    if checksum:
        with open(path, "r+b") as f:
            crc = superblock_checksum(read_at(f, 0, BLOCK))
            f.seek(SUPERBLOCK_AT + SUPERBLOCK.offset_of("checksum"))
            f.write(crc.to_bytes(4, "little"))
    return ErofsInfo(blocks * BLOCK, tuple(warnings))


def estimate_size(tree: Tree) -> int:
    """An upper bound of the image size: every inode extended with its xattrs and its tail,
    twice (an inode moved to the next block wastes less than itself), plus the whole blocks."""
    total = BLOCK
    for e in tree:
        if e.kind is Kind.DIR:
            size = dir_size([b".", b".."] + [os.fsencode(c.name) for c in tree.children(e.path)])
        else:
            size = e.size
        xattrs = sum(XATTR_ENTRY.size + 3 + len(k) + len(v) for k, v in e.xattrs)
        meta = INODE_EXTENDED.size + XATTR_IBODY_HEADER.size + xattrs
        tail = size % BLOCK
        total += 2 * (meta + tail) + SLOT + size - tail
    return _align(total, BLOCK)


# -- reader ----------------------------------------------------------------------------------

def _superblock(f: BinaryIO, offset: int, size: int | None) -> Any:
    if available(f, offset, size) < SUPERBLOCK_AT + SUPERBLOCK.size:
        raise ImageError(f"erofs superblock at offset {offset + SUPERBLOCK_AT}: the image ends "
                         f"first")
    sb = SUPERBLOCK.unpack(read_at(f, offset + SUPERBLOCK_AT, SUPERBLOCK.size))
    if sb.magic != MAGIC:
        raise ImageError(f"erofs superblock at offset {offset + SUPERBLOCK_AT}: expected magic "
                         f"{MAGIC:#x}, got {sb.magic:#x}")
    return sb


def describe(f: BinaryIO, offset: int = 0, size: int | None = None) -> dict:
    """The erofs image at ``offset``, from its superblock, as a JSON-able dict."""
    sb = _superblock(f, offset, size)
    features = [n for bit, n in ((FEATURE_COMPAT_SB_CHKSUM, "sb_csum"),
                                 (FEATURE_COMPAT_MTIME, "mtime")) if sb.feature_compat & bit]
    checksum_ok = None
    if sb.feature_compat & FEATURE_COMPAT_SB_CHKSUM and 1 << sb.blkszbits == BLOCK:
        checksum_ok = superblock_checksum(read_at(f, offset, BLOCK)) == sb.checksum
    return {"format": "erofs", "label": sb.volume_name.rstrip(b"\0").decode(errors="replace"),
            "uuid": str(uuidlib.UUID(bytes=sb.uuid)) if any(sb.uuid) else None,
            "size": sb.blocks << sb.blkszbits, "block_size": 1 << sb.blkszbits,
            "inodes": sb.inos, "root_nid": sb.root_nid, "created": sb.build_time,
            "features": features, "incompat_features": sb.feature_incompat,
            "checksum_ok": checksum_ok}


@dataclass(frozen=True)
class ErofsBlob:
    """A file of an erofs image: ``pieces`` are ``(offset in the image file, length)``."""

    image: str
    pieces: tuple[tuple[int, int], ...]
    keep: object = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.pieces)

    def open(self) -> BinaryIO:
        out = io.BytesIO()
        with open(self.image, "rb") as f:
            for at, n in self.pieces:
                data = read_at(f, at, n)
                if len(data) != n:
                    raise ImageError(f"{self.image}: erofs data at offset {at} ends after "
                                     f"{len(data)} of {n} bytes")
                out.write(data)
        out.seek(0)
        return out

    def host_range(self) -> tuple[str, int] | None:
        return (self.image, self.pieces[0][0]) if len(self.pieces) == 1 else None


@dataclass(frozen=True)
class _ReadInode:
    nid: int
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    nlink: int
    i_u: int
    pieces: tuple[tuple[int, int], ...]
    xattrs: tuple[tuple[str, bytes], ...]


class _Reader:
    def __init__(self, f: BinaryIO, offset: int, what: str) -> None:
        self.f, self.offset, self.what = f, offset, what
        self.sb = _superblock(f, offset, None)
        if self.sb.feature_incompat:
            raise ImageError(f"{what}: erofs incompat features {self.sb.feature_incompat:#x}; "
                             f"imgkit reads only uncompressed images without them")
        self.block = 1 << self.sb.blkszbits

    def inode(self, nid: int) -> _ReadInode:
        at = self.offset + self.sb.meta_blkaddr * self.block + nid * SLOT
        raw = read_at(self.f, at, INODE_EXTENDED.size)
        fmt = int.from_bytes(raw[:2], "little")
        layout = (fmt >> 1) & 7
        if fmt & 1:
            i = INODE_EXTENDED.unpack(raw)
            base, mtime, nlink = INODE_EXTENDED.size, i.i_mtime, i.i_nlink
        else:
            i = INODE_COMPACT.unpack(raw)
            base, mtime, nlink = INODE_COMPACT.size, self.sb.build_time, i.i_nlink
        if layout not in (FLAT_PLAIN, FLAT_INLINE):
            raise ImageError(f"{self.what}: inode nid {nid} at offset {at} has data layout "
                             f"{LAYOUT_NAMES.get(layout, layout)}; imgkit reads flat-plain and "
                             f"flat-inline only")
        xsize = xattr_isize(i.i_xattr_icount)
        xattrs: tuple[tuple[str, bytes], ...] = ()
        if xsize:
            area = read_at(self.f, at + base, xsize)
            count = XATTR_IBODY_HEADER.unpack(area).h_shared_count
            shared = []
            for k in range(count):
                ref = int.from_bytes(area[12 + 4 * k:16 + 4 * k], "little")
                where = self.offset + self.sb.xattr_blkaddr * self.block + ref * 4
                shared.append(read_at(self.f, where, XATTR_ENTRY.size + 255 + 0xFFFF))
            xattrs = decode_xattrs(area, shared)
        size = i.i_size
        kind = Kind.from_mode(i.i_mode)
        pieces: list[tuple[int, int]] = []
        if kind in (Kind.FILE, Kind.DIR, Kind.SYMLINK) and size:
            tail = size % self.block if layout == FLAT_INLINE else 0
            if layout == FLAT_INLINE and not tail:
                tail = self.block
            full = size - tail
            if full:
                pieces.append((self.offset + i.i_u * self.block, full))
            if tail:
                pieces.append((at + base + xsize, tail))
        return _ReadInode(nid, i.i_mode, i.i_uid, i.i_gid, mtime, size, nlink, i.i_u,
                          tuple(pieces), xattrs)

    def data(self, node: _ReadInode) -> bytes:
        return b"".join(read_at(self.f, at, n) for at, n in node.pieces)

    def entries(self, node: _ReadInode) -> list[tuple[bytes, int, int]]:
        """``(name, nid, file type)`` of a directory, ``.`` and ``..`` left out."""
        data = self.data(node)
        out = []
        for start in range(0, len(data), self.block):
            blk = data[start:start + self.block]
            first = DIRENT.unpack(blk)
            count = first.nameoff // DIRENT.size
            dents = [DIRENT.unpack(blk, k * DIRENT.size) for k in range(count)]
            for k, d in enumerate(dents):
                end = dents[k + 1].nameoff if k + 1 < count else len(blk)
                name = blk[d.nameoff:end]
                if k + 1 == count:
                    name = name.split(b"\0", 1)[0]
                if name not in (b".", b".."):
                    out.append((bytes(name), d.nid, d.file_type))
        return out


def open_tree(path: str, offset: int = 0, size: int | None = None, *, what: str | None = None,
              keep: object = None) -> Tree:
    """The files of the uncompressed erofs image at ``offset`` of ``path``."""
    what = what or (path if not offset else f"{path}@{offset}")
    image = os.path.abspath(path)
    tree = Tree()
    with open(path, "rb") as f:
        r = _Reader(f, offset, what)
        root = r.inode(r.sb.root_nid)
        tree.with_root(mode=root.mode & 0o7777, uid=root.uid, gid=root.gid, mtime=root.mtime)
        if root.xattrs:
            tree.add(tree.root.replace(xattrs=root.xattrs))
        seen: dict[int, str] = {}
        pending = [("", root)]
        visited = {root.nid}
        while pending:
            dpath, dnode = pending.pop()
            subdirs: list[tuple[str, _ReadInode]] = []
            for name, nid, _ in r.entries(dnode):
                child = posixpath.join(dpath, os.fsdecode(name)) if dpath else os.fsdecode(name)
                node = r.inode(nid)
                kind = Kind.from_mode(node.mode)
                attrs: dict[str, Any] = dict(mode=node.mode & 0o7777, uid=node.uid, gid=node.gid,
                             mtime=node.mtime, xattrs=node.xattrs, origin=f"{what}:/{child}")
                if kind is Kind.DIR:
                    if nid in visited:
                        raise ImageError(f"{what}: directory nid {nid} appears twice "
                                         f"(at /{child})")
                    visited.add(nid)
                    tree.add(Entry(child, kind, **attrs))
                    subdirs.append((child, node))
                elif kind is Kind.FILE and nid in seen:
                    tree.add(Entry(child, Kind.HARDLINK, target=seen[nid], **attrs))
                elif kind is Kind.FILE:
                    seen[nid] = child
                    tree.add(Entry(child, kind, data=ErofsBlob(image, node.pieces, keep),
                                   **attrs))
                elif kind is Kind.SYMLINK:
                    tree.add(Entry(child, kind, target=os.fsdecode(r.data(node)), **attrs))
                elif kind in (Kind.CHAR, Kind.BLOCK):
                    tree.add(Entry(child, kind, rdev=decode_rdev(node.i_u), **attrs))
                else:
                    tree.add(Entry(child, kind, **attrs))
            pending.extend(reversed(subdirs))   # depth first in name order: canonical order
    return tree
