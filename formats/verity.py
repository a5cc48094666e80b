"""dm-verity: the hash tree of a read-only image, its superblock, and the root-hash signature.

The hash device is laid out exactly as ``veritysetup format`` writes it (format version 1,
the "normal" hash type): a 512-byte superblock padded to one hash block, then the tree's
levels, the level nearest the root first. A level-0 hash block holds the digests of
``hash_block_size / digest_size`` data blocks, each digest ``H(salt || block)``; every level
above hashes the blocks of the one below the same way, and the root hash is the digest of
the single top block (of the data block itself, when there is only one).

The tree is computed here with :mod:`hashlib`, streaming: data is read one chunk at a time,
each hash block is written to its place in the hash file as soon as it is full, and each
level is read back from that file to build the next one, so memory holds a chunk and a
block whatever the image's size. Holes in the data image are not read: the digest of a zero
block is computed once. No device, no root, no kernel.

The signature partition of the Discoverable Partitions Specification is a JSON object
(``rootHash``, ``certificateFingerprint``, ``signature``: a detached PKCS#7 signature of the
hex root hash, made by ``openssl smime``) padded with NUL bytes to a whole block.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from imgkit import tools
from imgkit.errors import ImageError, InputError
from imgkit.formats.records import Record
from imgkit.holes import file_data_ranges, pwrite_all

if TYPE_CHECKING:
    from hashlib import _Hash

MAGIC = b"verity\0\0"
VERSION = 1
#: Hash type 1 is the normal one (salt first, digests padded to a power of two); 0 is Chrome OS.
HASH_TYPE = 1
SUPERBLOCK = Record("VeritySuperblock", 512, [
    ("signature", "8s"), ("version", "I"), ("hash_type", "I"), ("uuid", "16s"),
    ("algorithm", "32s"), ("data_block_size", "I"), ("hash_block_size", "I"),
    ("data_blocks", "Q"), ("salt_size", "H"), ("_", "6s"), ("salt", "256s"), ("_", "168s"),
])
MAX_SALT = 256
BLOCK_SIZE = 4096
ALGORITHM = "sha256"
#: What a signature partition's JSON is padded to.
SIGNATURE_ALIGN = 4096
_CHUNK = 1 << 20


@dataclass(frozen=True)
class VerityParams:
    """What a hash tree depends on besides the data: all of it goes into the superblock."""

    salt: bytes
    uuid: uuid.UUID
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE
    algorithm: str = ALGORITHM

    def check(self) -> None:
        if len(self.salt) > MAX_SALT:
            raise InputError(f"verity salt: at most {MAX_SALT} bytes, got {len(self.salt)}")
        for what, size in (("data", self.data_block_size), ("hash", self.hash_block_size)):
            if size < 512 or size > 1 << 19 or size & (size - 1):
                raise InputError(f"verity {what} block size: expected a power of two from 512 "
                                 f"to 524288, got {size}")
        if self.algorithm not in hashlib.algorithms_available:
            raise InputError(f"verity hash algorithm {self.algorithm!r} is not available")


@dataclass(frozen=True)
class VerityTree:
    """A written hash device: its root hash and geometry."""

    root_hash: bytes
    data_blocks: int
    hash_size: int
    params: VerityParams

    @property
    def root_hash_hex(self) -> str:
        return self.root_hash.hex()

    @property
    def data_uuid(self) -> uuid.UUID:
        """The data partition's UUID by the Discoverable Partitions convention (what
        systemd-repart sets): the first 128 bits of the root hash."""
        return uuid.UUID(bytes=self.root_hash[:16])

    @property
    def hash_uuid(self) -> uuid.UUID:
        """The hash partition's UUID: the last 128 bits of the root hash."""
        return uuid.UUID(bytes=self.root_hash[-16:])


def level_sizes(data_blocks: int, hashes_per_block: int) -> list[int]:
    """Blocks in each level of the tree, level 0 (hashing the data) first; empty for one
    data block (its digest is the root hash)."""
    sizes = []
    n = data_blocks
    while n > 1:
        n = -(-n // hashes_per_block)
        sizes.append(n)
    return sizes


def _hashes_per_block(params: VerityParams) -> tuple[int, int]:
    """(digest size, digest slot size): version 1 pads each digest to a power of two."""
    digest = hashlib.new(params.algorithm).digest_size
    slot = 1 << (digest - 1).bit_length()
    if slot > params.hash_block_size:
        raise InputError(f"verity: a {params.algorithm} digest does not fit a "
                         f"{params.hash_block_size}-byte hash block")
    return digest, slot


def superblock(params: VerityParams, data_blocks: int) -> bytes:
    """The 512-byte superblock ``veritysetup`` writes at the start of the hash device."""
    return SUPERBLOCK.pack(signature=MAGIC, version=VERSION, hash_type=HASH_TYPE,
                           uuid=params.uuid.bytes, algorithm=params.algorithm.encode(),
                           data_block_size=params.data_block_size,
                           hash_block_size=params.hash_block_size, data_blocks=data_blocks,
                           salt_size=len(params.salt), salt=params.salt)


def read_superblock(f: BinaryIO, offset: int = 0) -> dict:
    """The superblock of the hash device in ``f`` at ``offset``, as a JSON-able dict."""
    f.seek(offset)
    data = f.read(SUPERBLOCK.size)
    if len(data) < SUPERBLOCK.size:
        raise ImageError(f"verity superblock at offset {offset}: the image ends after "
                         f"{len(data)} bytes, expected {SUPERBLOCK.size}")
    sb = SUPERBLOCK.unpack(data)
    if sb.signature != MAGIC:
        raise ImageError(f"verity superblock at offset {offset}: expected magic {MAGIC!r}, "
                         f"got {sb.signature!r}")
    if sb.version != VERSION or sb.salt_size > MAX_SALT:
        raise ImageError(f"verity superblock at offset {offset}: expected version {VERSION} "
                         f"with a salt of at most {MAX_SALT} bytes, got version {sb.version}, "
                         f"salt {sb.salt_size} bytes")
    return {"format": "verity", "uuid": str(uuid.UUID(bytes=sb.uuid)),
            "hash_type": sb.hash_type, "algorithm": sb.algorithm.rstrip(b"\0").decode(),
            "data_block_size": sb.data_block_size, "hash_block_size": sb.hash_block_size,
            "data_blocks": sb.data_blocks, "salt": sb.salt[:sb.salt_size].hex()}


class _LevelWriter:
    """Collects digests into hash blocks written one after another from ``block`` on."""

    def __init__(self, fd: int, block: int, params: VerityParams, slot: int) -> None:
        self.fd, self.pos, self.size, self.slot = fd, block * params.hash_block_size, \
            params.hash_block_size, slot
        self.buf = bytearray()

    def add(self, digest: bytes) -> None:
        self.buf += digest.ljust(self.slot, b"\0")
        if len(self.buf) == self.size:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            pwrite_all(self.fd, bytes(self.buf.ljust(self.size, b"\0")), self.pos)
            self.pos += self.size
            self.buf = bytearray()


def _digest(salted: _Hash, block: bytes | memoryview) -> bytes:
    h = salted.copy()
    h.update(block)
    return h.digest()


def _data_extents(fd: int, start: int, end: int, block_size: int,
                  sparse: bool) -> list[tuple[int, int]]:
    """Byte ranges ``[lo, hi)`` of ``[start, end)``, on block boundaries, that may hold data;
    everything else is a hole (reads as zeros)."""
    ranges = file_data_ranges(fd, start, end) if sparse else None
    if ranges is None:
        return [(start, end)]
    out: list[tuple[int, int]] = []
    for offset, length in ranges:
        lo = start + (offset - start) // block_size * block_size
        hi = min(start + -(-(offset + length - start) // block_size) * block_size, end)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _hash_blocks(fd: int, start: int, blocks: int, block_size: int, salted: _Hash,
                 add: Callable[[bytes], None], *, sparse: bool) -> None:
    """Feed ``add`` the digest of each of ``blocks`` blocks of ``fd`` from byte ``start``
    (past the end of the file, or in a hole when ``sparse``, a block reads as zeros)."""
    end = start + blocks * block_size
    zero: bytes | None = None
    pos = start
    for lo, hi in [*_data_extents(fd, start, end, block_size, sparse), (end, end)]:
        if lo > pos:
            zero = zero or _digest(salted, bytes(block_size))
            for _ in range((lo - pos) // block_size):
                add(zero)
            pos = lo
        while pos < hi:
            want = min(_CHUNK, hi - pos)
            view = memoryview(os.pread(fd, want, pos).ljust(want, b"\0"))
            for off in range(0, want, block_size):
                add(_digest(salted, view[off:off + block_size]))
            pos += want


def write_hash_tree(data_path: str, hash_path: str, params: VerityParams, *,
                    data_size: int | None = None) -> VerityTree:
    """Write the dm-verity hash device of ``data_path`` (its first ``data_size`` bytes, by
    default all of it: a whole number of data blocks; a last partial block reads as zeros)
    to ``hash_path``, replacing it; -> the root hash and geometry."""
    params.check()
    file_size = os.path.getsize(data_path)
    size = file_size if data_size is None else data_size
    if not 0 <= size <= file_size:
        raise InputError(f"verity: {data_size:,} bytes of {data_path} asked for, the file has "
                         f"{file_size:,}")
    data_blocks = -(-size // params.data_block_size)
    if data_blocks == 0:
        raise InputError(f"verity: {data_path} is empty; there is nothing to protect")
    digest_size, slot = _hashes_per_block(params)
    per_block = 1 << (params.hash_block_size // digest_size).bit_length() - 1
    levels = level_sizes(data_blocks, per_block)
    # Level i starts after the superblock and every level above it (the top level first).
    first = -(-SUPERBLOCK.size // params.hash_block_size)
    starts = [first + sum(levels[i + 1:]) for i in range(len(levels))]
    salted = hashlib.new(params.algorithm)
    salted.update(params.salt)
    hash_blocks = first + sum(levels)
    with open(data_path, "rb") as data, open(hash_path, "w+b") as out:
        fd = out.fileno()
        os.ftruncate(fd, hash_blocks * params.hash_block_size)
        pwrite_all(fd, superblock(params, data_blocks), 0)
        root: list[bytes] = []
        below_fd, below_start, below_blocks = data.fileno(), 0, data_blocks
        block_size, sparse = params.data_block_size, True
        for level, start in enumerate(starts):
            writer = _LevelWriter(fd, start, params, slot)
            _hash_blocks(below_fd, below_start, below_blocks, block_size, salted, writer.add,
                         sparse=sparse)
            writer.flush()
            below_fd, below_start, below_blocks = fd, start * params.hash_block_size, levels[level]
            block_size, sparse = params.hash_block_size, False
        # The root hash: of the top level's one block, or of the only data block.
        _hash_blocks(below_fd, below_start, 1, block_size, salted, root.append, sparse=sparse)
    return VerityTree(root[0], data_blocks, hash_blocks * params.hash_block_size, params)


# -- the signature partition -------------------------------------------------------------------

def sign_root_hash(root_hash: bytes, key: str, certificate: str) -> bytes:
    """The signature partition's content for ``root_hash``: the JSON object of the
    Discoverable Partitions Specification, NUL-padded to a whole block.

    The signature is a detached PKCS#7 (DER) signature of the hex root hash, without signed
    attributes, carrying the signer's certificate (as systemd-repart makes it), made by
    ``openssl smime``; a key that needs a passphrase is refused rather than prompted for.
    """
    hex_hash = root_hash.hex()
    for what, path in (("key", key), ("certificate", certificate)):
        if not os.path.isfile(path):
            raise InputError(f"verity signature: the {what} {path!r} does not exist",
                             hint="a PEM file")
    with tempfile.NamedTemporaryFile(prefix="imgkit-roothash-") as content:
        content.write(hex_hash.encode())
        content.flush()
        signature = tools.run(["openssl", "smime", "-sign", "-noattr", "-binary",
                               "-in", content.name, "-inkey", key, "-passin", "pass:",
                               "-signer", certificate, "-outform", "der"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE).stdout
    der = tools.run(["openssl", "x509", "-in", certificate, "-outform", "der"],
                    stdout=subprocess.PIPE).stdout
    doc = {"rootHash": hex_hash, "certificateFingerprint": hashlib.sha256(der).hexdigest(),
           "signature": base64.b64encode(signature).decode()}
    text = json.dumps(doc, separators=(",", ":")).encode()
    return text.ljust(-(-(len(text) + 1) // SIGNATURE_ALIGN) * SIGNATURE_ALIGN, b"\0")


def read_signature(data: bytes) -> dict:
    """The JSON object of a signature partition (NUL padding stripped)."""
    text = data.rstrip(b"\0")
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"verity signature: expected a JSON object, got {text[:40]!r}: "
                         f"{exc}") from None
    if not isinstance(doc, dict) or not {"rootHash", "signature"} <= set(doc):
        raise ImageError("verity signature: expected a JSON object with rootHash and "
                         f"signature, got {sorted(doc) if isinstance(doc, dict) else doc!r}")
    return doc
