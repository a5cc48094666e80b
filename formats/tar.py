"""pax (POSIX.1-2001) tar archives written from a :class:`~imgkit.tree.Tree`, and the header
declaration that every tar reader of imgkit uses too.

One streaming pass: headers gather in one fixed buffer, and each file's data goes from the
source file to the archive in the kernel (``copy_file_range`` into a regular file,
``sendfile`` into a pipe), so the archive costs little more than copying the tree. Into a
compressor (:mod:`imgkit.compress`) or any other file object, file data is read into that same
buffer. Only a compressor's window is held in memory.

Each member is a ustar header, preceded by a pax extended header (typeflag ``x``) when the
ustar fields cannot hold the entry exactly: a path or link target past ustar's fields or not
ASCII, an owner, size or time out of the octal fields' range, xattrs
(``SCHILY.xattr.NAME``, binary values as they are), POSIX ACLs, sparse maps. Owners are
stored by number only: user and group names are left empty. Device numbers past the
octal fields are written in base-256 there, as GNU tar does (it reads no pax record for
them).

Sparse files become pax sparse members (GNU format 1.0, as GNU tar and libarchive write
them): ``GNU.sparse.name``/``realsize`` in the pax header, the map ahead of the data, and
only the data ranges stored; GNU tar, bsdtar and Python's tarfile extract them with their
holes. POSIX ACLs are written twice: as the kernel's ``SCHILY.xattr.system.posix_acl_*``
value, which GNU tar ``--xattrs`` restores, and as ``SCHILY.acl.access``/``default`` text
(numeric ids), which bsdtar and GNU tar ``--acls`` restore. As libarchive does, the owner,
group and other entries of an access ACL are carried by the header mode, so an entry with an
access ACL has the owning group's bits there (as bsdtar writes it); extraction applies the
ACL, whose mask then becomes the group bits, as ``stat`` shows them.

The output depends only on the tree: entries in canonical order, xattrs as the tree sorts
them, no host names and no time of writing, so the same tree (and ``SOURCE_DATE_EPOCH``)
gives the same bytes.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from imgkit.errors import InputError
from imgkit.formats.cpio import SMALL_FILE, _copy_fd
from imgkit.formats.cpio import _Sink as _CpioSink
from imgkit.formats.records import Record
from imgkit.holes import Ranges, file_data_ranges
from imgkit.tree import Blob, Entry, FileBlob, Kind, Tree

BLOCK = 512

#: The ustar header (POSIX.1-2001 ``pax`` interchange format); the numeric fields are octal
#: text (or, past their range, GNU base-256: the first byte's top bit set).
HEADER = Record("TarHeader", BLOCK, [
    ("name", "100s"), ("mode", "8s"), ("uid", "8s"), ("gid", "8s"), ("size", "12s"),
    ("mtime", "12s"), ("checksum", "8s"), ("typeflag", "1s"), ("linkname", "100s"),
    ("magic", "6s"), ("version", "2s"), ("uname", "32s"), ("gname", "32s"),
    ("devmajor", "8s"), ("devminor", "8s"), ("prefix", "155s"), ("_", "12s"),
])
MAGIC = b"ustar\0"
VERSION = b"00"
_CHECKSUM = slice(HEADER.offset_of("checksum"), HEADER.offset_of("typeflag"))
_MAGIC_AT = slice(HEADER.offset_of("magic"), HEADER.offset_of("magic") + 5)
_SIZE_AT = slice(HEADER.offset_of("size"), HEADER.offset_of("mtime"))
_TYPE_AT = slice(HEADER.offset_of("typeflag"), HEADER.offset_of("linkname"))

#: typeflags of the members we write (and ``x``: a pax extended header for the next one).
TYPEFLAGS = {Kind.FILE: b"0", Kind.HARDLINK: b"1", Kind.SYMLINK: b"2", Kind.CHAR: b"3",
             Kind.BLOCK: b"4", Kind.DIR: b"5", Kind.FIFO: b"6"}
PAX = b"x"
#: typeflags of a member holding data: a regular file (``\0`` in pre-POSIX archives) or a
#: contiguous file.
_REGULAR = (b"0", b"\0", b"7")

_NAME_MAX, _PREFIX_MAX = 100, 155
_MAX8 = 0o7777777              # 7 octal digits and a NUL
_MAX12 = 0o77777777777         # 11 octal digits and a NUL
#: libarchive's bound for the octal mtime: past it (2038), a pax ``mtime`` record as well,
#: for readers that take the field as a signed 32-bit time.
_MTIME_OCTAL_END = 0x7FFFFFFF
_U32 = 0xFFFFFFFF
_ZEROS = bytes(2 * BLOCK)
#: Sum of the header bytes that never change: magic, version and the checksum field itself
#: (counted as spaces), for the checksum computed from the fields that do.
_FIXED_SUM = sum(MAGIC) + sum(VERSION) + 8 * ord(" ")
#: mode, uid, gid, size and mtime as they stand in a header; the device numbers.
_NUMBERS = b"%07o\0%07o\0%07o\0%011o\0%011o\0"
_DEVICE = b"%07o\0%07o\0"


# -- the header, both ways ------------------------------------------------------------------

def parse_number(field: bytes) -> int | None:
    """A numeric field: octal text (NUL or space terminated) or base-256; ``None`` when it is
    neither."""
    if field[:1] and field[0] & 0x80:   # base-256: two's complement after the marker bit
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return None


def header_checksum(block: bytes) -> int:
    """The sum of the header's bytes with the checksum field counted as spaces."""
    return sum(block) - sum(block[_CHECKSUM]) + 8 * ord(" ")


def looks_like_tar(head: bytes) -> bool:
    """Whether ``head`` starts with a tar header: ustar's magic, or (an old, pre-POSIX
    archive) only a checksum that matches."""
    if head[_MAGIC_AT] == MAGIC[:5]:
        return True
    if len(head) < BLOCK or head[0] == 0:
        return False
    stored = head[_CHECKSUM].split(b"\0")[0].strip()
    try:
        return bool(stored) and int(stored, 8) == header_checksum(head[:BLOCK])
    except ValueError:
        return False


def is_member_header(block: bytes, size: int) -> bool:
    """Whether ``block`` is a ustar/GNU header of a regular file of ``size`` bytes."""
    if len(block) != BLOCK or block[_MAGIC_AT] != MAGIC[:5] or block[_TYPE_AT] not in _REGULAR:
        return False
    return parse_number(block[_SIZE_AT]) == size


def _octal(value: int, width: int) -> bytes:
    """``value`` in a field of ``width`` bytes: octal with a NUL, or base-256 past that (for
    a size, the caller stores the exact value in a pax record too)."""
    if value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    return b"\x80" + value.to_bytes(width - 1, "big")


def _clamped(value: int, largest: int) -> int:
    return 0 if value < 0 else min(value, largest)


def pax_record(key: bytes, value: bytes) -> bytes:
    """``"LEN KEY=VALUE\\n"``, ``LEN`` counting the whole record, its own digits included."""
    rest = len(key) + len(value) + 3          # " ", "=", "\n"
    n = rest + len(str(rest))
    n = rest + len(str(n))
    return b"%d %s=%s\n" % (n, key, value)


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """``(prefix, name)`` holding ``name`` in ustar's two fields, or ``None``."""
    if len(name) <= _NAME_MAX:
        return b"", name
    at = name.find(b"/", max(len(name) - _NAME_MAX - 1, 0), _PREFIX_MAX + 1)
    while at > 0:
        if len(name) - at - 1 <= _NAME_MAX and name[at + 1:]:
            return name[:at], name[at + 1:]
        at = name.find(b"/", at + 1, _PREFIX_MAX + 1)
    return None


def _ustar(name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int,
           mtime: int, link: bytes = b"", dev: tuple[int, int] = (0, 0)) -> bytes:
    """One header block; ``name`` and ``link`` are cut to their fields when they do not fit
    (a pax record then holds them whole)."""
    split = _split_name(name)
    prefix, name = split if split is not None else (b"", name[:_NAME_MAX])
    link = link[:_NAME_MAX]
    if size <= _MAX12 and uid <= _MAX8 and gid <= _MAX8 and dev[0] <= _MAX8 >= dev[1]:
        numbers = _NUMBERS % (mode, uid, gid, size, mtime) + typeflag + _DEVICE % dev
    else:
        numbers = (b"%07o\0" % mode + _octal(uid, 8) + _octal(gid, 8) + _octal(size, 12)
                   + b"%011o\0" % mtime + typeflag + _octal(dev[0], 8) + _octal(dev[1], 8))
    check = _FIXED_SUM + sum(name) + sum(prefix) + sum(link) + sum(numbers)
    return HEADER.struct.pack(name, numbers[:8], numbers[8:16], numbers[16:24], numbers[24:36],
                              numbers[36:48], b"%06o\0 " % check, typeflag, link, MAGIC,
                              VERSION, b"", b"", numbers[49:57], numbers[57:65], prefix, b"")


# -- what an entry's headers hold -----------------------------------------------------------

@dataclass
class TarWritten:
    """What :func:`write_tar` could not store as it was."""

    skipped: list[str] = field(default_factory=list)
    """Paths left out: tar has no way to store a socket (GNU tar skips them too)."""
    warnings: list[str] = field(default_factory=list)


def _check_values(e: Entry, meta: Entry) -> None:
    """Owners and device numbers must fit Linux's 32-bit ``uid_t``/``gid_t`` and device
    numbers, as the cpio writer requires: pax would store any number, and the kernel or
    ``tar -x`` would then truncate it to another owner or device."""
    values = [("uid", meta.uid), ("gid", meta.gid)]
    if e.kind in (Kind.CHAR, Kind.BLOCK):
        values += [("device major", e.rdev[0]), ("device minor", e.rdev[1])]
    for what, value in values:
        if not 0 <= value <= _U32:
            raise InputError(f"{e.origin or '/' + e.path}: {what} {value} does not fit in "
                             f"32 bits (expected 0..{_U32})")


def _encode(text: str) -> tuple[bytes, bool]:
    """The bytes of a tree name (a name that is no UTF-8 on the host keeps its bytes) and
    whether they are UTF-8, as pax wants its records."""
    try:
        return text.encode(), True
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape"), False


_ACL_TAG_TEXT = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask",
                 0x20: "other"}


def _acl_records(meta: Entry, mode: int, path: str,
                 warnings: list[str]) -> tuple[list[bytes], int]:
    """The ``SCHILY.acl.*`` records of ``meta``'s ACL xattrs and the header mode: libarchive's
    text (numeric ids, comma-separated), whose access ACL takes its owner, group and other
    entries from the mode (they are written first, the other entries after them)."""
    from imgkit.sources import posix_acl

    records = []
    for key, value in meta.xattrs:
        if key not in (posix_acl.ACCESS_XATTR, posix_acl.DEFAULT_XATTR):
            continue
        try:
            entries = posix_acl.decode(value)
        except ValueError as exc:
            warnings.append(f"/{path}: malformed POSIX ACL xattr ({exc}): kept as an xattr "
                            "only, bsdtar will not restore it")
            continue
        access = key == posix_acl.ACCESS_XATTR
        if access:
            shifts = {posix_acl.Tag.USER_OBJ: 6, posix_acl.Tag.GROUP_OBJ: 3,
                      posix_acl.Tag.OTHER: 0}
            for acl in entries:
                if acl.tag in shifts:
                    mode = mode & ~(0o7 << shifts[acl.tag]) | (acl.perm & 0o7) << shifts[acl.tag]
            entries = [a for a in entries if a.tag not in shifts]
            if not entries:
                continue      # the mode says it all
            text = [f"user::{_rwx(mode >> 6)}", f"group::{_rwx(mode >> 3)}",
                    f"other::{_rwx(mode)}"]
        else:
            text = []
        for acl in entries:
            qualifier = str(acl.qualifier) if acl.tag in posix_acl.QUALIFIED else ""
            text.append(f"{_ACL_TAG_TEXT[acl.tag]}:{qualifier}:{_rwx(acl.perm)}")
        name = b"SCHILY.acl.access" if access else b"SCHILY.acl.default"
        records.append(pax_record(name, ",".join(text).encode()))
    return records, mode


def _rwx(bits: int) -> str:
    return ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")


def _sparse_map(ranges: Ranges, size: int) -> bytes:
    """The GNU 1.0 map stored ahead of the data: the count, then offset and length of each
    range, one number a line, padded to a block. A trailing hole ends it with an empty range
    at the end of the file, as GNU tar writes it (a file that is all hole is that range
    alone)."""
    pairs = list(ranges)
    end = pairs[-1][0] + pairs[-1][1] if pairs else 0
    if end < size or not pairs:
        pairs.append((size, 0))
    text = b"%d\n" % len(pairs) + b"".join(b"%d\n%d\n" % pair for pair in pairs)
    return text + bytes(-len(text) % BLOCK)


def _plain_header(e: Entry, meta: Entry) -> bytes | None:
    """The one header block of an entry that ustar holds as it is (nearly every entry of a
    root filesystem: an ASCII name and link target that fit, small owners, a time before
    2038, no xattrs), or ``None`` for :func:`_headers` to say more. Checks as it goes, so
    the common entry costs one pass."""
    kind = e.kind
    uid, gid, mtime = meta.uid, meta.gid, meta.mtime
    if meta.xattrs or uid > _MAX8 or gid > _MAX8 or not 0 <= mtime < _MTIME_OCTAL_END:
        return None
    path = e.path
    if not path.isascii() or len(path) >= _NAME_MAX or not path:
        return None
    link = b""
    size = 0
    dev = (0, 0)
    if kind is Kind.FILE:
        typeflag = b"0"
        if e.data is not None:
            size = e.data.size
            if size > _MAX12:
                return None
    elif kind is Kind.DIR:
        typeflag = b"5"
        path += "/"
    elif kind is Kind.SYMLINK or kind is Kind.HARDLINK:
        typeflag = b"2" if kind is Kind.SYMLINK else b"1"
        target = e.target or ""
        if not target.isascii() or len(target) > _NAME_MAX:
            return None
        link = target.encode()
    elif kind is Kind.CHAR or kind is Kind.BLOCK:
        typeflag = b"3" if kind is Kind.CHAR else b"4"
        dev = e.rdev
        if dev[0] > _MAX8 or dev[1] > _MAX8:
            return None
    else:
        typeflag = b"6"
    name = path.encode()
    numbers = _NUMBERS % (meta.mode & 0o7777, uid, gid, size, mtime) + typeflag + _DEVICE % dev
    check = _FIXED_SUM + sum(name) + sum(link) + sum(numbers)
    return HEADER.struct.pack(name, numbers[:8], numbers[8:16], numbers[16:24], numbers[24:36],
                              numbers[36:48], b"%06o\0 " % check, typeflag, link, MAGIC,
                              VERSION, b"", b"", numbers[49:57], numbers[57:65], b"", b"")


def _headers(e: Entry, meta: Entry, ranges: Ranges | None, acl_text: bool,
             warnings: list[str]) -> bytes:
    """The member's header blocks: a pax header when the ustar one cannot say everything,
    then the ustar header (and for a sparse file, its map)."""
    if ranges is None and (meta.uid | meta.gid | e.rdev[0] | e.rdev[1]) >= 0:
        plain = _plain_header(e, meta)
        if plain is not None:
            return plain
    if (meta.uid | meta.gid | e.rdev[0] | e.rdev[1]) >> 32:  # a negative value, or past 32 bits
        _check_values(e, meta)
    if not e.path:
        name, utf8 = b"./", True
    else:
        name, utf8 = _encode(e.path + "/" if e.kind is Kind.DIR else e.path)
    kind = e.kind
    mode = meta.mode & 0o7777
    uid, gid, mtime = meta.uid, meta.gid, meta.mtime
    size = e.size if kind is Kind.FILE else 0
    link = b""
    records: list[bytes] = []
    binary = not utf8

    if kind is Kind.SYMLINK or kind is Kind.HARDLINK:
        link, link_utf8 = _encode(e.target or "")
        binary = binary or not link_utf8
        if len(link) > _NAME_MAX or not link.isascii():
            records.append(pax_record(b"linkpath", link))
    body = b""
    if ranges is not None:
        body = _sparse_map(ranges, size)
        records += [pax_record(b"GNU.sparse.major", b"1"), pax_record(b"GNU.sparse.minor", b"0"),
                    pax_record(b"GNU.sparse.name", name),
                    pax_record(b"GNU.sparse.realsize", b"%d" % size)]
        size = len(body) + sum(length for _, length in ranges)
        head, _, base = name.rpartition(b"/")
        name = (head + b"/" if head else b"") + b"GNUSparseFile.0/" + base
    elif not name.isascii() or _split_name(name) is None:
        records.insert(0, pax_record(b"path", name))
    if size > _MAX12:
        records.append(pax_record(b"size", b"%d" % size))
    if uid > _MAX8:
        records.append(pax_record(b"uid", b"%d" % uid))
    if gid > _MAX8:
        records.append(pax_record(b"gid", b"%d" % gid))
    if not 0 <= mtime < _MTIME_OCTAL_END:
        records.append(pax_record(b"mtime", b"%d" % mtime))
    dev = (0, 0)
    if kind is Kind.CHAR or kind is Kind.BLOCK:
        dev = e.rdev   # past 7 octal digits: base-256 in the field, as GNU tar writes it
    if meta.xattrs:
        if acl_text:
            acls, mode = _acl_records(meta, mode, e.path, warnings)
            records += acls
        for key, value in meta.xattrs:
            records.append(pax_record(b"SCHILY.xattr." + _encode(key)[0], value))
    ustar = _ustar(name, TYPEFLAGS[kind], mode, _clamped(uid, _MAX8), _clamped(gid, _MAX8),
                   size, _clamped(mtime, _MAX12), link, dev)
    if not records:
        return ustar + body
    if binary:
        records.insert(0, pax_record(b"hdrcharset", b"BINARY"))
    data = b"".join(records)
    base = name.rstrip(b"/").rpartition(b"/")[2] or b"."
    pax = _ustar(b"PaxHeader/" + base[:_NAME_MAX - 10], PAX, mode & 0o777,
                 _clamped(uid, _MAX8), _clamped(gid, _MAX8), len(data),
                 _clamped(mtime, _MAX12))
    return pax + data + bytes(-len(data) % BLOCK) + ustar + body


# -- the output -----------------------------------------------------------------------------

class _Sink(_CpioSink):
    """The cpio writer's output buffer, with a tar member's ways in: headers and small files
    gather in one fixed buffer; a large file's data goes from file to archive in the kernel
    (``copy_file_range``, else ``sendfile``, which also feeds a pipe), the buffer flushed
    before it. Into any other file object (a compressor, a pipe wrapper counting progress),
    file data is read into the same buffer, so a run of small files and their headers
    reaches it as one large write."""

    def pad(self, size: int) -> None:
        """The zeros that fill the member's last block."""
        if size % BLOCK:
            self.write(_ZEROS[:BLOCK - size % BLOCK])

    def host_range(self, src: int, offset: int, length: int, path: str) -> None:
        """``length`` bytes of the open file ``src`` from ``offset``."""
        if self._fd is None or length < SMALL_FILE:
            self._read_into_buffer(src, offset, length, path)
            return
        self.flush()
        _copy_fd(src, self._fd, offset, length, path)


def _data_ranges(blob: Blob, fd: int, offset: int) -> Ranges | None:
    """The data ranges of the blob (whose bytes are ``fd``'s from ``offset``) when it has
    holes, relative to its start; ``None`` when it is dense. A host file is asked only when
    it has fewer blocks than bytes; a spooled archive member knows its own ranges."""
    size = blob.size
    known = getattr(blob, "data_ranges", None)
    if known is not None:
        ranges = tuple(known())
    else:
        st = os.fstat(fd)
        if st.st_blocks * 512 >= st.st_size:
            return None
        found = file_data_ranges(fd, offset, offset + size)
        if found is None:
            return None
        ranges = tuple((start - offset, length) for start, length in found)
    return ranges if sum(length for _, length in ranges) < size else None


def _write_file(sink: _Sink, e: Entry, meta: Entry, acl_text: bool,
                warnings: list[str]) -> None:
    """A regular file: its headers, then its bytes (only the data ranges of a sparse one)."""
    blob = e.data
    if blob is None or blob.size == 0:
        sink.write(_headers(e, meta, None, acl_text, warnings))
        return
    if type(blob) is FileBlob and not blob.offset:
        where: tuple[str, int] | None = (blob.path, 0)
    else:
        where = blob.host_range()
    if where is None:
        sink.write(_headers(e, meta, None, acl_text, warnings))
        sink._copy_stream(blob, blob.size, e.path)
        sink.pad(blob.size)
        return
    src = os.open(where[0], os.O_RDONLY | os.O_CLOEXEC)
    try:
        base = where[1]
        ranges = _data_ranges(blob, src, base)
        sink.write(_headers(e, meta, ranges, acl_text, warnings))
        if ranges is None:
            sink.host_range(src, base, blob.size, e.path)
            sink.pad(blob.size)
            return
        stored = 0
        for offset, length in ranges:
            sink.host_range(src, base + offset, length, e.path)
            stored += length
        sink.pad(stored)
    finally:
        os.close(src)


def write_tar(tree: Tree, out: BinaryIO, *, compress: str = "none", include_root: bool = True,
              acl_text: bool = True) -> TarWritten:
    """Write ``tree`` as a pax tar archive into ``out`` (left open), compressed with
    ``compress`` (a :data:`imgkit.compress.METHODS` name); returns what was left out or
    stored differently.

    ``acl_text=False`` leaves out the ``SCHILY.acl`` records (the ACL stays in its xattr)
    and so keeps the mask in the header mode's group bits: for a reader that takes the
    mode from the header and the ACL from the xattr, as a filesystem builder does.
    """
    from imgkit.compress import check_method, compressed_writer

    check_method(compress)
    written = TarWritten()
    tree.validate()
    tree = tree.with_canonical_hardlinks()
    if compress == "none":
        _write_members(tree, out, include_root, acl_text, written)
    else:
        with compressed_writer(out, compress) as w:
            _write_members(tree, w, include_root, acl_text, written)
    out.flush()
    return written


def _write_members(tree: Tree, out: BinaryIO, include_root: bool, acl_text: bool,
                   written: TarWritten) -> None:
    sink = _Sink(out)
    warnings = written.warnings
    for e in tree:
        if not e.path and not include_root:
            continue
        kind = e.kind
        if kind is Kind.SOCKET:
            written.skipped.append(e.path)
            continue
        meta = e
        if kind is Kind.HARDLINK:
            meta = tree.get(e.target or "") or e
        if kind is Kind.FILE:
            _write_file(sink, e, meta, acl_text, warnings)
        else:
            sink.write(_headers(e, meta, None, acl_text, warnings))
    sink.write(_ZEROS[:2 * BLOCK])   # the end of the archive
    sink.close()


_F_SETPIPE_SZ = 1031   # Linux fcntl


def run_reading_tar(argv: list[str], tree: Tree, log: str, *, tool: str,
                    env: dict[str, str | None] | None = None,
                    sink: Callable[[BinaryIO], BinaryIO] | None = None,
                    defer: tuple[type[BaseException], ...] = ()) -> tuple[int, str]:
    """Run ``argv`` (mke2fs ``-d -``, ``mksquashfs - IMG -tar``) reading ``tree`` as a pax
    archive from its standard input, written as the archive goes; its exit status and what it
    printed (into ``log``). ``sink`` wraps the pipe (e.g. to count progress); an exception of
    ``defer`` while writing (the tool stopped reading) is raised only after a zero exit status,
    the tool's own message coming first. The tool is killed on any other exception; a source
    file that cannot be read is an :class:`InputError` naming ``tool``."""
    import fcntl
    import subprocess

    from imgkit import tools

    with open(log, "w+b") as out:
        proc = tools.spawn(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                           env=env)
        assert proc.stdin is not None
        with contextlib.suppress(OSError):   # fewer wake-ups for both sides of the pipe
            fcntl.fcntl(proc.stdin.fileno(), _F_SETPIPE_SZ, 1 << 20)
        failed: BaseException | None = None
        try:
            try:
                write_tar(tree, sink(proc.stdin) if sink else proc.stdin, acl_text=False)
            except defer as exc:
                failed = exc
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            code = proc.wait()
        except BaseException as exc:
            proc.kill()
            proc.wait()
            if isinstance(exc, OSError) and exc.filename:
                raise InputError(f"{tool}: cannot read {exc.filename!r}: {exc.strerror}",
                                 hint="make the source readable by the user building the "
                                      "image") from exc
            raise
        out.seek(0)
        text = out.read().decode(errors="replace")
    if code == 0 and failed is not None:
        raise failed
    return code, text
