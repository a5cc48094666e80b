"""Any archive libarchive reads (tar in every compression, cpio, zip, ``docker export``).

Owners, modes, times, device numbers, xattrs and POSIX ACLs come from the archive's headers.
File data of an uncompressed tar is not copied: each member's blob is its window of the
archive file itself (found from where the next header starts, and checked against the
member's own header block), so reading a root filesystem's tar costs no scratch space and no
pass over its bytes. Other archives' data (compressed, cpio, zip, sparse members) is streamed
once into a spool file beside the other temporary data, so the tree's blobs can be re-read
lazily by writers without holding the archive in memory. Sparse members
(GNU tar ``-S``, pax sparse 0.0/0.1/1.0, bsdtar) keep their size from the header and their
holes as holes in the spool. Paths with ``..`` are refused: that is how archives escape their
destination.

libarchive-c exposes only part of libarchive's API; xattrs, ACLs, data blocks with their
offsets and file flags are read through its ffi layer (as :mod:`imgkit.formats.tar` writes
xattrs). What a Linux image cannot hold (NFSv4 ACLs, BSD file flags, Mac metadata, ACL
entries naming a user the tree does not know) is listed in :attr:`Tree.warnings`, never
dropped silently.
"""
from __future__ import annotations

import ctypes
import os
import stat
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import BinaryIO

import libarchive
from libarchive import ffi

from imgkit import progress, scratch
from imgkit.errors import ImageError, InputError
from imgkit.formats.tar import is_member_header as _is_member_header
from imgkit.sources import posix_acl
from imgkit.sources.posix_acl import AclEntry, Tag
from imgkit.tree import Entry, FileBlob, Kind, Tree, _Window, normalize_path

_c_int_p = ctypes.POINTER(ctypes.c_int)
ffi.ffi("entry_xattr_reset", [ffi.c_archive_entry_p], ctypes.c_int)
ffi.ffi("entry_xattr_next", [ffi.c_archive_entry_p, ctypes.POINTER(ctypes.c_char_p),
                             ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)],
        ctypes.c_int)
ffi.ffi("entry_acl_types", [ffi.c_archive_entry_p], ctypes.c_int)
ffi.ffi("entry_acl_reset", [ffi.c_archive_entry_p, ctypes.c_int], ctypes.c_int)
ffi.ffi("entry_acl_next", [ffi.c_archive_entry_p, ctypes.c_int, _c_int_p, _c_int_p, _c_int_p,
                           _c_int_p, ctypes.POINTER(ctypes.c_char_p)], ctypes.c_int)
ffi.ffi("entry_sparse_count", [ffi.c_archive_entry_p], ctypes.c_int)
ffi.ffi("entry_fflags", [ffi.c_archive_entry_p, ctypes.POINTER(ctypes.c_ulong),
                         ctypes.POINTER(ctypes.c_ulong)], None)
ffi.ffi("entry_fflags_text", [ffi.c_archive_entry_p], ctypes.c_char_p)
ffi.ffi("entry_mac_metadata", [ffi.c_archive_entry_p, ctypes.POINTER(ctypes.c_size_t)],
        ctypes.c_void_p)
ffi.ffi("read_header_position", [ffi.c_archive_p], ctypes.c_longlong)
ffi.ffi("filter_code", [ffi.c_archive_p, ctypes.c_int], ctypes.c_int)
ffi.ffi("format", [ffi.c_archive_p], ctypes.c_int)

# archive_entry.h
_ACL_TYPE_NFS4 = 0x400 | 0x800 | 0x1000 | 0x2000


class Spool:
    """One temporary file holding the data of every file of an archive, back to back.

    A sparse member starts on a block boundary of the spool's filesystem and its holes are
    skipped (seek, not zeros), so they stay holes that ``SEEK_DATA``/``SEEK_HOLE`` see.
    """

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="imgkit-spool-", dir=scratch.current())
        self._f = os.fdopen(fd, "wb")
        self._block = max(os.fstat(fd).st_blksize, 512)
        self.size = 0
        self._pos = 0   # where the file object writes next
        self.data_bytes = 0
        self.limit = scratch.spool_limit(os.path.dirname(self.path))
        weakref.finalize(self, _unlink, self.path)

    def append_member(self, archive_p, size: int | None,
                      sparse: bool) -> tuple[int, int, tuple[tuple[int, int], ...]]:
        """Copy the current member's data blocks in; returns ``(offset, size, data ranges)``.

        ``size`` is the header's (``None`` if the format has none): a trailing hole yields
        no block, so only the header tells the real size.
        """
        if sparse:
            self.size = -(-self.size // self._block) * self._block
        start = self.size
        ranges: list[list[int]] = []
        buf, n, off = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_longlong()
        while ffi.read_data_block(archive_p, ctypes.byref(buf), ctypes.byref(n),
                                  ctypes.byref(off)) != ffi.ARCHIVE_EOF:
            if not n.value:
                continue
            self.data_bytes += n.value
            if self.data_bytes > self.limit:
                raise SpoolFull(self.limit)
            if start + off.value != self._pos:
                self._f.seek(start + off.value)
            self._f.write(ctypes.string_at(buf, n.value))
            self._pos = start + off.value + n.value
            if ranges and ranges[-1][0] + ranges[-1][1] == off.value:
                ranges[-1][1] += n.value
            else:
                ranges.append([off.value, n.value])
        data_end = max((o + length for o, length in ranges), default=0)
        length = max(size or 0, data_end)
        self.size = start + length
        return start, length, tuple((o, length) for o, length in ranges)

    def seal(self) -> None:
        """Close the spool; a trailing hole of the last member still counts in its size."""
        self._f.truncate(self.size)
        self._f.close()


class SpoolFull(Exception):
    """The archive's data would pass the spool's limit (see :func:`imgkit.scratch.spool_limit`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class SpoolBlob:
    """A member's bytes in the spool. ``ranges`` are its data ``(offset, length)`` pairs in
    the file's own offsets; the rest reads as zeros and is a hole in the spool."""

    spool: Spool
    offset: int
    size: int
    ranges: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    def open(self) -> BinaryIO:
        f = open(self.spool.path, "rb")
        f.seek(self.offset)
        return _Window(f, self.size)  # type: ignore[return-value]

    def host_range(self) -> tuple[str, int] | None:
        return (self.spool.path, self.offset)

    def data_ranges(self) -> tuple[tuple[int, int], ...]:
        """Where the data is, for writers that keep holes (everything else is a hole)."""
        return self.ranges

    @property
    def sparse(self) -> bool:
        return sum(length for _, length in self.ranges) < self.size


_TYPES = {
    stat.S_IFREG: Kind.FILE, stat.S_IFDIR: Kind.DIR, stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFCHR: Kind.CHAR, stat.S_IFBLK: Kind.BLOCK, stat.S_IFIFO: Kind.FIFO,
    stat.S_IFSOCK: Kind.SOCKET,
}


@dataclass
class _Losses:
    """What the archive holds and the tree cannot: reason -> paths, reported once each."""

    archive: str
    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: str) -> None:
        self.found.setdefault(reason, []).append(path)

    def messages(self) -> list[str]:
        out = []
        for reason, paths in self.found.items():
            shown = ", ".join("/" + p for p in paths[:5])
            more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
            out.append(f"{self.archive}: {reason}: {shown}{more}")
        return out


@dataclass
class _NamedAcl:
    """An ACL whose entries name users or groups without ids (GNU tar writes names only):
    resolved against the tree's own ``etc/passwd`` and ``etc/group`` once all is read."""

    path: str
    origin: str
    xattr: str
    entries: list[tuple[Tag, int, int, str]]   # tag, perm, id or -1, name


_ARCHIVE_FILTER_NONE = 0
_ARCHIVE_FORMAT_TAR = 0x30000
_ARCHIVE_FORMAT_BASE_MASK = 0xFF0000
_TAR_BLOCK = 512


class _NoWindow(Exception):
    """A member's data was not where its header block says: read the archive again, spooled."""


class _TarWindows:
    """Blobs that are windows of an uncompressed tar file (see the module docstring).

    libarchive tells where each entry's first header block starts; a regular member's data
    ends, padded to 512 bytes, where the next entry (or the end-of-archive blocks) starts. So
    a member's blob is made when the next header has been read: :meth:`hold` keeps it,
    :meth:`place` finishes it, after checking that the 512 bytes before the data are a tar
    header of a regular file of that size.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._held: tuple[dict, int, str] | None = None

    def hold(self, fields: dict, size: int, origin: str) -> None:
        self._held = (fields, size, origin)

    def place(self, next_header: int, tree: Tree) -> None:
        """Give the held member its blob (its data ends before ``next_header``) and add it."""
        if self._held is None:
            return
        fields, size, origin = self._held
        self._held = None
        start = next_header - -(-size // _TAR_BLOCK) * _TAR_BLOCK
        header = os.pread(self._fd, _TAR_BLOCK, start - _TAR_BLOCK) if start >= _TAR_BLOCK else b""
        if not _is_member_header(header, size):
            raise _NoWindow(origin)
        fields["data"] = FileBlob(self.path, size, start)
        tree.add(Entry(kind=Kind.FILE, **fields))

    def close(self) -> None:
        os.close(self._fd)


def read_archive(path: str, *, prefix: str = "", layer: bool = False) -> Tree:
    """Read every entry of the archive at ``path`` into a new :class:`Tree`.

    ``layer=True`` reads a container image layer: hard links may name files of the layers
    below it, and a whiteout below a path this layer made a non-directory (umoci writes
    those) is left out, as extracting it would do nothing."""
    if not os.path.isfile(path):
        raise InputError(f"source archive {path!r} does not exist")
    if layer:   # a layer may be a temporary file of the image reader: spooled, always
        return _read_archive(path, prefix, layer, windows=False)
    try:
        return _read_archive(path, prefix, layer, windows=True)
    except _NoWindow:
        return _read_archive(path, prefix, layer, windows=False)


def _read_archive(path: str, prefix: str, layer: bool, *, windows: bool) -> Tree:
    """:func:`read_archive`; ``windows``: an uncompressed tar's members may be windows of
    the file (:class:`_TarWindows`), else every member is spooled."""
    tree = Tree()
    spool = Spool()
    losses = _Losses(path)
    named: list[_NamedAcl] = []
    held: _TarWindows | None = None
    step = progress.step(f"reading {os.path.basename(path)}", os.path.getsize(path))
    try:
        with libarchive.file_reader(path) as archive:
            for n, ae in enumerate(archive, 1):
                step.set(ffi.filter_bytes(archive._pointer, -1), n)
                if n == 1 and windows and _plain_tar(archive._pointer):
                    held = _TarWindows(path)
                if held is not None:
                    held.place(ffi.read_header_position(archive._pointer), tree)
                name = ae.pathname
                origin = f"{path}: entry {n} {name!r}"
                rel = normalize_path(f"{prefix}/{name}", origin=origin)
                if layer and _whiteout_below_a_file(tree, rel):
                    continue
                p = ae._entry_p
                mode = ae.mode
                if not 0 <= mode <= 0xFFFFFFFF:
                    raise ImageError(f"{origin}: expected a 32-bit file mode, got {mode}")
                xattrs, group_bits = _xattrs_and_acls(p, rel, origin, losses, named)
                _check_unrepresentable(p, rel, losses)
                perm = stat.S_IMODE(mode)
                if group_bits is not None:
                    perm = (perm & ~0o070) | (group_bits << 3)
                fields = dict(path=rel, mode=perm, uid=ae.uid, gid=ae.gid,
                              mtime=int(ae.mtime or 0), xattrs=xattrs, origin=origin)
                if ae.islnk:
                    target = normalize_path(f"{prefix}/{ae.linkpath}", origin=origin)
                    tree.add(Entry(kind=Kind.HARDLINK, target=target, **fields))
                    continue
                kind = _TYPES.get(stat.S_IFMT(mode)) or (Kind.FILE if ae.isreg else None)
                if kind is None:
                    raise ImageError(f"{origin}: unsupported file type (mode {mode:o})")
                if kind is Kind.FILE:
                    size = ffi.entry_size(p) if ffi.entry_size_is_set(p) else None
                    if (held is not None and size is not None and rel != ""
                            and ffi.entry_sparse_count(p) == 0):
                        held.hold(fields, size, origin)
                        continue
                    try:
                        offset, length, ranges = spool.append_member(
                            archive._pointer, size, sparse=ffi.entry_sparse_count(p) > 0)
                    except SpoolFull as full:
                        raise ImageError(
                            f"{origin}: the archive's data passes {full.limit:,} bytes, the "
                            f"limit of its spool in {os.path.dirname(spool.path)}",
                            hint="IMGKIT_SPOOL_LIMIT=SIZE raises it (default: 90% of the free "
                                 "space there); a small archive expanding this far is a "
                                 "compression bomb") from None
                    fields["data"] = SpoolBlob(spool, offset, length, ranges)
                elif kind is Kind.SYMLINK:
                    fields["target"] = ae.linkpath
                elif kind in (Kind.CHAR, Kind.BLOCK):
                    fields["rdev"] = (ae.rdevmajor, ae.rdevminor)
                if rel == "":
                    if kind is Kind.DIR:
                        tree.with_root(mode=fields["mode"], uid=ae.uid, gid=ae.gid,
                                       mtime=fields["mtime"], xattrs=xattrs)
                    continue
                tree.add(Entry(kind=kind, **fields))
            if held is not None:   # the last member ends where the end-of-archive blocks start
                held.place(ffi.read_header_position(archive._pointer), tree)
    except libarchive.ArchiveError as exc:
        raise ImageError(f"cannot read archive {path!r}: {exc}",
                         hint="is it a tar, cpio, zip or another format libarchive reads?") from exc
    finally:
        spool.seal()
        step.close()
        if held is not None:
            held.close()
    if named:
        _resolve_named_acls(tree, named, losses)
    if not layer:
        tree.validate()
    tree.warnings.extend(losses.messages())
    return tree


def _plain_tar(archive_p) -> bool:
    """Whether the archive being read is a tar without compression (after its first header,
    when libarchive knows the format)."""
    return (ffi.filter_count(archive_p) == 1
            and ffi.filter_code(archive_p, 0) == _ARCHIVE_FILTER_NONE
            and ffi.format(archive_p) & _ARCHIVE_FORMAT_BASE_MASK == _ARCHIVE_FORMAT_TAR)


def _whiteout_below_a_file(tree: Tree, path: str) -> bool:
    parent, _, name = path.rpartition("/")
    above = tree.get(parent) if name.startswith(".wh.") else None
    return above is not None and above.kind is not Kind.DIR


def _xattrs_and_acls(p, path: str, origin: str, losses: _Losses,
                     named: list[_NamedAcl]) -> tuple[tuple[tuple[str, bytes], ...], int | None]:
    """The entry's xattrs with its POSIX ACLs among them, and the group bits of its mode
    when an access ACL has a mask (libarchive puts the owning group's bits there instead;
    with an ACL, ``stat`` shows the mask)."""
    xattrs: dict[str, bytes] = {}
    if ffi.entry_xattr_reset(p):
        name, value, size = ctypes.c_char_p(), ctypes.c_void_p(), ctypes.c_size_t()
        while ffi.entry_xattr_next(p, ctypes.byref(name), ctypes.byref(value),
                                   ctypes.byref(size)) == ffi.ARCHIVE_OK:
            key = os.fsdecode(name.value or b"")
            xattrs[key] = ctypes.string_at(value, size.value) if size.value else b""
    types = ffi.entry_acl_types(p)
    if types & _ACL_TYPE_NFS4:
        losses.add("NFSv4 ACLs cannot be kept in a Linux image, left out", path)
    mask: int | None = None
    for want, xattr in posix_acl.LIBARCHIVE_TYPES.items():
        if not types & want:
            continue
        entries = _acl_entries(p, want)
        if want == posix_acl.LIBARCHIVE_ACL_ACCESS:
            mask = next((perm for tag, perm, _, _ in entries if tag is Tag.MASK), None)
            if not any(tag in posix_acl.QUALIFIED or tag is Tag.MASK for tag, *_ in entries):
                continue   # user::, group::, other:: only: the mode says it all
        if xattr in xattrs:
            continue       # GNU tar --xattrs stored the kernel's value too: it is exact
        if any(qual < 0 for tag, _, qual, _ in entries if tag in posix_acl.QUALIFIED):
            named.append(_NamedAcl(path, origin, xattr, entries))
            continue
        try:
            xattrs[xattr] = posix_acl.encode([AclEntry(t, perm, q) for t, perm, q, _ in entries])
        except ValueError as exc:
            losses.add(f"malformed POSIX ACL ({exc}), left out", path)
    if mask is None and posix_acl.ACCESS_XATTR in xattrs:
        try:
            acl = posix_acl.decode(xattrs[posix_acl.ACCESS_XATTR])
            mask = next((e.perm for e in acl if e.tag is Tag.MASK), None)
        except ValueError:
            pass
    return tuple(sorted(xattrs.items())), mask


def _acl_entries(p, want: int) -> list[tuple[Tag, int, int, str]]:
    """``(tag, perm, id or -1, name)`` of the entry's ACL of type ``want``."""
    out = []
    if ffi.entry_acl_reset(p, want):
        kind, perm, tag, qual = (ctypes.c_int() for _ in range(4))
        name = ctypes.c_char_p()
        while ffi.entry_acl_next(p, want, ctypes.byref(kind), ctypes.byref(perm),
                                 ctypes.byref(tag), ctypes.byref(qual),
                                 ctypes.byref(name)) == ffi.ARCHIVE_OK:
            t = posix_acl.LIBARCHIVE_TAGS.get(tag.value)
            if t is not None:
                out.append((t, perm.value & 0o7, qual.value, os.fsdecode(name.value or b"")))
    return out


def _check_unrepresentable(p, path: str, losses: _Losses) -> None:
    """Note header fields no Linux image format holds (BSD/ext2 file flags, Mac metadata)."""
    set_, clear = ctypes.c_ulong(), ctypes.c_ulong()
    ffi.entry_fflags(p, ctypes.byref(set_), ctypes.byref(clear))
    if set_.value:
        text = (ffi.entry_fflags_text(p) or b"").decode(errors="replace")
        losses.add(f"file flags ({text}) are not kept", path)
    size = ctypes.c_size_t()
    if ffi.entry_mac_metadata(p, ctypes.byref(size)) and size.value:
        losses.add("Mac metadata (resource forks, extended attributes as AppleDouble) "
                   "is not kept", path)


def _resolve_named_acls(tree: Tree, named: list[_NamedAcl], losses: _Losses) -> None:
    ids = {Tag.USER: _id_table(tree, "etc/passwd"), Tag.GROUP: _id_table(tree, "etc/group")}
    for acl in named:
        entries, unknown = [], []
        for tag, perm, qual, name in acl.entries:
            if tag in posix_acl.QUALIFIED and qual < 0:
                qual = ids[tag].get(name, -1)
                if qual < 0:
                    unknown.append(f"{tag.name.lower()} {name!r}")
            entries.append(AclEntry(tag, perm, qual))
        if unknown:
            losses.add(f"ACL {acl.xattr} left out: it names {', '.join(unknown)}, not in "
                       "the tree's etc/passwd or etc/group and without a numeric id", acl.path)
            continue
        e = tree.get(acl.path)
        if e is None or (acl.path and e.origin != acl.origin):
            continue   # a later member of the same name replaced it
        try:
            value = posix_acl.encode(entries)
        except ValueError as exc:
            losses.add(f"malformed POSIX ACL ({exc}), left out", acl.path)
            continue
        xattrs = dict(e.xattrs)
        xattrs[acl.xattr] = value
        changed = e.replace(xattrs=tuple(sorted(xattrs.items())))
        if acl.path:
            tree.add(changed)
        else:
            tree.with_root(xattrs=changed.xattrs)


def _id_table(tree: Tree, path: str) -> dict[str, int]:
    """``name -> id`` from a passwd or group file of the tree (empty if it has none)."""
    e = tree.get(path)
    if e is None or e.kind is not Kind.FILE or e.data is None:
        return {}
    with e.data.open() as f:
        text = f.read().decode(errors="replace")
    table: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            table.setdefault(fields[0], int(fields[2]))
    return table
