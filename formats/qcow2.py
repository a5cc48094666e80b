"""The qcow2 header (QEMU's docs/interop/qcow2.txt), read so that untrusted images stay closed.

A qcow2 file can name other files that QEMU opens along with it: a backing file (any path on
the host, or a protocol URL such as ``nbd://host:port`` or ``http://``), and since version 3
an external data file (incompatible feature bit 2, named by a header extension). Reading such
an image through ``qemu-img`` or QEMU would read those host files or open those connections
on behalf of whoever made the image. imgkit therefore reads the header itself and refuses an
image that names anything outside itself (:func:`check_self_contained`), and hands QEMU tools
a ``json:`` filename (:func:`qemu_filename`) that pins the protocol to a plain local file and
disables the backing chain, so that nothing else is opened even if a check were missed.

Layout (big-endian): the fixed 72-byte version 2 header, then for version 3 the feature
masks, refcount order and header length; header extensions follow the header (at 72 for
version 2, at ``header_length`` for version 3), each ``type, length, data`` padded to 8 bytes,
ended by type 0.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import BinaryIO

from construct import Const, ConstructError, Int32ub, Int64ub, Struct

from imgkit.errors import ImageError

MAGIC = b"QFI\xfb"
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
_V2_SIZE = 72
_MAX_EXTENSIONS = 1024
_MAX_EXTENSION_BYTES = 1 << 20

HEADER_V2 = Struct(
    "magic" / Const(MAGIC),
    "version" / Int32ub,
    "backing_file_offset" / Int64ub,
    "backing_file_size" / Int32ub,
    "cluster_bits" / Int32ub,
    "size" / Int64ub,
    "crypt_method" / Int32ub,
    "l1_size" / Int32ub,
    "l1_table_offset" / Int64ub,
    "refcount_table_offset" / Int64ub,
    "refcount_table_clusters" / Int32ub,
    "nb_snapshots" / Int32ub,
    "snapshots_offset" / Int64ub,
)
HEADER_V3 = Struct(
    "incompatible_features" / Int64ub,
    "compatible_features" / Int64ub,
    "autoclear_features" / Int64ub,
    "refcount_order" / Int32ub,
    "header_length" / Int32ub,
)
EXTENSION = Struct("type" / Int32ub, "length" / Int32ub)
assert HEADER_V2.sizeof() == _V2_SIZE


@dataclass(frozen=True)
class Qcow2Header:
    """What a qcow2 header says about the image and about the files it names."""

    version: int
    virtual_size: int
    cluster_bits: int
    incompatible_features: int
    backing_file: str | None
    data_file: str | None

    @property
    def external_data(self) -> bool:
        """Guest data lives in another file (incompatible feature bit 2)."""
        return bool(self.incompatible_features & INCOMPAT_DATA_FILE)

    def references(self) -> list[str]:
        """The files or URLs outside this image that QEMU would open with it."""
        out = []
        if self.backing_file is not None:
            out.append(f"backing file {_shown(self.backing_file)}")
        if self.external_data or self.data_file is not None:
            out.append(f"external data file {_shown(self.data_file or '(unnamed)')}")
        return out


def _shown(name: str, limit: int = 80) -> str:
    """A name read from the image, quoted and cut to one readable length for a message."""
    text = repr(name[:limit])
    return text + f" (first {limit} of {len(name)} characters)" if len(name) > limit else text


def _read(f: BinaryIO, offset: int, size: int, file_size: int, what: str) -> bytes:
    if offset < 0 or size < 0 or offset + size > file_size:
        raise ImageError(f"qcow2 {what}: expected {size} bytes at offset {offset}, "
                         f"the file has {file_size} bytes")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ImageError(f"qcow2 {what}: expected {size} bytes at offset {offset}, "
                         f"got {len(data)}")
    return data


def _text(raw: bytes, what: str, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1") + f" (not UTF-8, {what} at offset {offset})"


def read_header(f: BinaryIO) -> Qcow2Header:
    """The header of the qcow2 file ``f``, every offset checked against the file's size.

    Raises :class:`ImageError` for a file that is no qcow2 or whose header is damaged."""
    file_size = os.fstat(f.fileno()).st_size
    try:
        h = HEADER_V2.parse(_read(f, 0, _V2_SIZE, file_size, "header"))
    except ConstructError:
        raise ImageError(f"not a qcow2 image: expected magic {MAGIC!r} at offset 0") from None
    if h.version not in (2, 3):
        raise ImageError(f"qcow2 header: expected version 2 or 3, got {h.version} at offset 4")
    incompat, ext_start = 0, _V2_SIZE
    if h.version == 3:
        v3 = HEADER_V3.parse(_read(f, _V2_SIZE, HEADER_V3.sizeof(), file_size, "v3 header"))
        incompat = v3.incompatible_features
        if v3.header_length < _V2_SIZE + HEADER_V3.sizeof():
            raise ImageError(f"qcow2 header: expected a header length of at least "
                             f"{_V2_SIZE + HEADER_V3.sizeof()}, got {v3.header_length} "
                             f"at offset 100")
        ext_start = v3.header_length
    backing = None
    if h.backing_file_offset or h.backing_file_size:
        raw = _read(f, h.backing_file_offset, min(h.backing_file_size, 1023), file_size,
                    "backing file name")
        backing = _text(raw, "backing file name", h.backing_file_offset)
    data_file = None
    offset = ext_start
    for _ in range(_MAX_EXTENSIONS):
        if offset + EXTENSION.sizeof() > file_size or (
                h.backing_file_offset and offset >= h.backing_file_offset):
            break
        ext = EXTENSION.parse(_read(f, offset, EXTENSION.sizeof(), file_size, "extension"))
        if ext.type == EXT_END:
            break
        if ext.length > _MAX_EXTENSION_BYTES:
            raise ImageError(f"qcow2 header extension 0x{ext.type:08x}: expected at most "
                             f"{_MAX_EXTENSION_BYTES} bytes, got {ext.length} at offset {offset}")
        body = offset + EXTENSION.sizeof()
        if ext.type == EXT_DATA_FILE:
            data_file = _text(_read(f, body, ext.length, file_size, "data file name"),
                              "data file name", body)
        offset = body + (ext.length + 7) // 8 * 8
    return Qcow2Header(version=h.version, virtual_size=h.size, cluster_bits=h.cluster_bits,
                       incompatible_features=incompat, backing_file=backing,
                       data_file=data_file)


def check_self_contained(path: str) -> Qcow2Header:
    """The header of ``path``, or :class:`ImageError` when the image names a backing file,
    an external data file or a URL: imgkit never opens those on an image's say-so."""
    with open(path, "rb") as f:
        header = read_header(f)
    refs = header.references()
    if refs:
        raise ImageError(f"{path}: qcow2 image refers to {' and '.join(refs)}; imgkit does not "
                         f"open files or connections named inside an image",
                         hint="flatten it yourself if you trust it: qemu-img convert -O qcow2 "
                              f"{path} flat.qcow2")
    return header


def qemu_filename(path: str) -> str:
    """A ``json:`` filename for qemu-img and QEMU: the qcow2 driver on a plain local file
    (no protocol parsed from the name) with the backing chain disabled."""
    return "json:" + json.dumps({"driver": "qcow2",
                                 "file": {"driver": "file", "filename": os.path.abspath(path)},
                                 "backing": None}, separators=(",", ":"))
