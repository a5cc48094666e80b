"""ISO 9660 images (Rock Ridge, Joliet, El Torito, isohybrid) from a Tree, with pycdlib.

pycdlib writes the structures; this module decides names and metadata and keeps the result
reproducible. pycdlib stamps every date with ``time.time()`` in local time and draws isohybrid
MBR ids and GPT GUIDs at random, so while an image is built its modules see a clock that reads
the entry's own mtime (in UTC) and a UUID source seeded by the caller. Rock Ridge owners are
not part of pycdlib's API: they are written into each entry's PX record after it is added.
Device numbers (Rock Ridge PN) are not written by pycdlib at all; a PN entry is appended while
the node's directory record is created, before its length is fixed.

Names: ISO 9660 gets uppercase d-character names (``NAME.EXT;1``, at most 30 characters at
level 2/3, 8.3 at level 1) made unique per directory; Joliet gets the name as UCS-2, at most
64 characters, also unique; Rock Ridge keeps the real name. File data is read lazily, one file
open at a time, when pycdlib writes it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import re
import threading
import time as _time
import uuid as _uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pycdlib
from pycdlib import dates as _pdates
from pycdlib import headervd as _pheadervd
from pycdlib import isohybrid as _pisohybrid
from pycdlib import pycdlib as _pmain
from pycdlib import rockridge as _prr
from pycdlib import utils as _putils
from pycdlib.pycdlibexception import PyCdlibException

from imgkit.atomic import atomic_open
from imgkit.errors import InputError, LayoutError
from imgkit.losses import xattr_loss
from imgkit.tree import Blob, Entry, Kind, Tree

SECTOR = 2048


@dataclass(frozen=True)
class IsoBoot:
    """El Torito boot entries (and an isohybrid MBR) for :func:`write_iso`.

    Paths are tree paths of files that are also in the image. ``bios_image`` is a
    no-emulation boot image such as ``isolinux/isolinux.bin``, loaded as ``bios_load_size``
    512-byte sectors (4 is what isolinux expects; ``None`` loads the whole file) and patched
    with a boot info table if ``boot_info_table``. ``efi_image`` is a FAT image holding
    ``EFI/BOOT/BOOTX64.EFI``, the second (platform 0xEF) entry. ``catalog`` is where the boot
    catalog appears in the image. ``isohybrid`` adds an MBR (isolinux' isohdpfx code, which
    pycdlib carries) so the same image boots from a disk; the BIOS image must be isolinux 4+.
    With an ``efi_image``, pycdlib then also writes a GPT and an EFI partition entry for it
    (``isohybrid_efi``: ``None`` follows ``efi_image``; pycdlib cannot make an isohybrid image
    with an EFI entry but without them, so a value contradicting ``efi_image`` is refused).
    """

    bios_image: str | None = None
    bios_load_size: int | None = 4
    boot_info_table: bool = True
    efi_image: str | None = None
    catalog: str = "boot.cat"
    isohybrid: bool = False
    isohybrid_efi: bool | None = None


@dataclass(frozen=True)
class IsoInfo:
    """What :func:`write_iso` made: the image size in bytes, and what of the tree it could
    not hold (one line each)."""

    size: int
    warnings: tuple[str, ...] = ()


# -- public API ---------------------------------------------------------------------------

def write_iso(
    tree: Tree,
    out_path: str | os.PathLike,
    *,
    volume_id: str = "IMGKIT",
    rock_ridge: bool = True,
    joliet: bool = True,
    mtime_epoch: int | None = None,
    boot: IsoBoot | None = None,
    interchange_level: int = 3,
    seed: str | None = None,
) -> IsoInfo:
    """Write ``tree`` as an ISO 9660 image at ``out_path`` (atomically).

    ``volume_id`` is the volume label (at most 32 d-characters: ``A-Z 0-9 _``).
    With ``rock_ridge`` (version 1.09) the image keeps names, modes, owners, times, symlinks,
    hard links, fifos, sockets and device nodes; without it, only what ISO 9660 and Joliet
    hold (names and times), and symlinks, device nodes, fifos and sockets are left out.
    ``mtime_epoch`` clamps every mtime (``SOURCE_DATE_EPOCH``) and dates the volume; without
    it the newest mtime in the tree does. ``seed`` feeds the isohybrid MBR id and GUIDs
    (default: derived from the volume id). The same tree and arguments give the same bytes.
    """
    tree.validate()
    if not 1 <= interchange_level <= 3:
        raise InputError(f"ISO interchange level must be 1, 2 or 3, got {interchange_level}")
    if not re.fullmatch(r"[A-Z0-9_]{1,32}", volume_id):
        raise InputError(f"ISO volume id {volume_id!r} is not 1-32 characters of A-Z, 0-9, _",
                         hint="use e.g. volume_id=" + repr(_dchars(volume_id.upper())[:32]
                                                          or "IMGKIT"))
    if mtime_epoch is not None:
        tree = tree.clamp_mtimes(mtime_epoch)
        vol_time = mtime_epoch
    else:
        vol_time = max((e.mtime for e in tree), default=0)
    builder = _Builder(tree, rock_ridge=rock_ridge, joliet=joliet, level=interchange_level,
                       boot=boot)
    with _LOCK, _patched_pycdlib(seed if seed is not None else volume_id) as clock:
        clock.now = vol_time
        iso = pycdlib.PyCdlib()
        try:
            iso.new(interchange_level=interchange_level, vol_ident=volume_id,
                    sys_ident="LINUX", app_ident_str="IMGKIT",
                    rock_ridge="1.09" if rock_ridge else None,
                    joliet=3 if joliet else None)
            builder.populate(iso, clock)
            clock.now = vol_time
            if boot is not None:
                builder.add_boot(iso, boot)
            with atomic_open(out_path) as f:
                with _kernel_copies(f) as out:
                    # One read per file: each becomes a single copy_file_range (_Deferred).
                    iso.write_fp(out, blocksize=1 << 40)
                size = f.tell()
                if boot is not None and boot.isohybrid and _has_gpt(f):
                    from imgkit.formats import gpt  # construct: 8 MB, for hybrid images only
                    gpt.reseal(f)
        except PyCdlibException as exc:
            raise LayoutError(f"ISO image {os.fspath(out_path)!r}: {exc}") from exc
        finally:
            with contextlib.suppress(PyCdlibException):
                iso.close()
    return IsoInfo(size=size, warnings=tuple(xattr_loss(
        tree, "ISO 9660", "Rock Ridge as pycdlib writes it has no AAIP xattr records")))


def _has_gpt(f) -> bool:
    f.seek(512)
    return f.read(8) == b"EFI PART"


# -- names --------------------------------------------------------------------------------

_NOT_DCHAR = re.compile(r"[^A-Z0-9_]")
_NOT_JOLIET = re.compile(r"[*/:;?\\]")
#: What Joliet's UCS-2 cannot hold: characters past the BMP, and lone surrogates.
_NOT_UCS2 = re.compile("[\ud800-\udfff\U00010000-\U0010ffff]")


def _dchars(text: str) -> str:
    return _NOT_DCHAR.sub("_", text.upper())


class _Names:
    """Unique short names per directory, picked with set lookups (no quadratic scans)."""

    def __init__(self) -> None:
        self.used: dict[str, set[str]] = {}
        self.counters: dict[tuple[str, str], int] = {}

    def unique(self, directory: str, make) -> str:
        """``make(suffix)`` builds a candidate; suffixes ``""``, ``_1``, ``_2``... until free."""
        used = self.used.setdefault(directory, set())
        name = make("")
        key = (directory, name)
        n = self.counters.get(key, 0)
        while name.upper() in used:
            n += 1
            name = make(f"_{n}")
        if n:  # a name taken at the first try needs no counter: the next try starts at 0
            self.counters[key] = n
        used.add(name.upper())
        return name


def _iso_file_name(name: str, level: int, suffix: str) -> str:
    base, dot, ext = name.rpartition(".")
    if not dot or not base:
        base, ext = name, ""
    base, ext = _dchars(base), _dchars(ext)
    if level == 1:
        ext = ext[:3]
        base = base[: 8 - len(suffix)] + suffix
    else:
        ext = ext[:10]
        base = base[: 30 - len(ext) - len(suffix)] + suffix
    return f"{base}.{ext}"


def _iso_dir_name(name: str, level: int, suffix: str) -> str:
    limit = 8 if level == 1 else 31
    return _dchars(name)[: limit - len(suffix)] + suffix


def _joliet_name(name: str, suffix: str) -> str:
    clean = _NOT_JOLIET.sub("_", name)
    if not clean.isascii():
        clean = _NOT_UCS2.sub("_", clean)
    if len(clean) + len(suffix) <= 64:
        return clean + suffix
    stem, dot, ext = clean.rpartition(".")
    if dot and 0 < len(ext) <= 8:
        return stem[: 63 - len(ext) - len(suffix)] + suffix + "." + ext
    return clean[: 64 - len(suffix)] + suffix


# -- building -----------------------------------------------------------------------------

class _Builder:
    def __init__(self, tree: Tree, *, rock_ridge: bool, joliet: bool, level: int,
                 boot: IsoBoot | None) -> None:
        self.tree = tree
        self.rr = rock_ridge
        self.joliet = joliet
        self.level = level
        self.iso_names = _Names()
        self.joliet_names = _Names()
        self.iso_path: dict[str, str] = {"": "/"}
        self.joliet_path: dict[str, str] = {"": "/"}
        self.catalog: tuple[str, str, str] | None = None
        if boot is not None and (boot.bios_image or boot.efi_image):
            self._reserve_catalog(boot.catalog)

    def _reserve_catalog(self, path: str) -> None:
        """Pick the boot catalog's names first so no tree entry can take them."""
        from imgkit.tree import normalize_path
        path = normalize_path(path)
        if not path or path in self.tree:
            raise InputError(f"El Torito catalog path {path!r} is empty or already in the tree",
                             hint="choose another IsoBoot.catalog")
        parent, name = posixpath.split(path)
        pe = self.tree.get(parent)
        if pe is None or pe.kind is not Kind.DIR:
            raise InputError(f"El Torito catalog {path!r} needs directory {parent!r} in the tree")
        iso = self.iso_names.unique(parent, lambda s: _iso_file_name(name, self.level, s))
        jol = self.joliet_names.unique(parent, lambda s: _joliet_name(name, s))
        self.catalog = (path, iso, jol)

    def _names_for(self, e: Entry) -> tuple[str, str]:
        parent_iso = self.iso_path[e.parent]
        parent_jol = self.joliet_path[e.parent]
        if e.kind is Kind.DIR:
            iso = self.iso_names.unique(e.parent, lambda s: _iso_dir_name(e.name, self.level, s))
            iso_full = posixpath.join(parent_iso, iso)
        else:
            iso = self.iso_names.unique(e.parent,
                                        lambda s: _iso_file_name(e.name, self.level, s))
            iso_full = posixpath.join(parent_iso, iso + ";1")
        jol = self.joliet_names.unique(e.parent, lambda s: _joliet_name(e.name, s))
        jol_full = posixpath.join(parent_jol, jol)
        self.iso_path[e.path] = iso_full
        if e.kind is Kind.DIR:  # only directories' Joliet paths are looked up again
            self.joliet_path[e.path] = jol_full
        return iso_full, jol_full

    def populate(self, iso: pycdlib.PyCdlib, clock: _Clock) -> None:
        hardlinks: list[Entry] = []
        fixups: list[Entry] = []
        for e in self.tree:
            if e.path == "":
                continue
            if e.kind is Kind.HARDLINK:
                hardlinks.append(e)
                continue
            if not self.rr and e.kind not in (Kind.DIR, Kind.FILE):
                continue   # nothing in plain ISO 9660 / Joliet can hold it
            iso_full, jol_full = self._names_for(e)
            jol = jol_full if self.joliet else None
            rr_name = e.name if self.rr else None
            mode = e.st_mode if self.rr else None
            clock.now = e.mtime
            if e.kind is Kind.DIR:
                iso.add_directory(iso_full, rr_name=rr_name, joliet_path=jol, file_mode=mode)
            elif e.kind is Kind.SYMLINK:
                iso.add_symlink(symlink_path=iso_full, rr_symlink_name=e.name,
                                rr_path=e.target or "", joliet_path=jol)
            elif e.kind is Kind.FILE:
                size = e.data.size if e.data is not None else 0
                fp = _LazyReader(e.data) if e.data is not None else io.BytesIO(b"")
                iso.add_fp(fp, size, iso_full, rr_name=rr_name, joliet_path=jol,
                           file_mode=mode)
            else:   # char, block, fifo, socket: an empty file whose PX says what it is
                _PENDING_PN.value = e.rdev if e.kind in (Kind.CHAR, Kind.BLOCK) else None
                try:
                    iso.add_fp(io.BytesIO(b""), 0, iso_full, rr_name=rr_name,
                               joliet_path=jol, file_mode=mode)
                finally:
                    _PENDING_PN.value = None
            fixups.append(e)
        for e in hardlinks:
            primary = self.tree[e.target or ""]
            iso_full, jol_full = self._names_for(e)
            clock.now = primary.mtime
            iso.add_hard_link(iso_old_path=self.iso_path[primary.path], iso_new_path=iso_full,
                              rr_name=e.name if self.rr else None)
            if self.joliet:
                iso.add_hard_link(iso_old_path=self.iso_path[primary.path],
                                  joliet_new_path=jol_full)
            fixups.append(e.replace(kind=Kind.FILE, mode=primary.mode, uid=primary.uid,
                                    gid=primary.gid))
        # Owners and the times of '.' and '..' go in after everything is added: a record
        # lookup makes pycdlib lay out the whole image again, once per call while entries are
        # still being added, which would be quadratic.
        # Every name is chosen: the per-directory name sets go before the records are walked
        # (the build's peak of memory).
        self.iso_names = self.joliet_names = _Names()
        root = self._fix_root(iso, self.tree.root)
        if self.rr:
            # Each entry by its ISO path (the strings already held), met on one walk of the
            # records; what the walk does not reach is in or below a Rock Ridge relocated
            # directory, found through pycdlib, which follows the links.
            pending = {self.iso_path[e.path]: e for e in fixups}
            for path, rec in _walk_records(root):
                e = pending.pop(path, None)
                if e is not None:
                    self._fix_rr(rec, e)
            for path, e in pending.items():
                self._fix_rr(iso.get_record(iso_path=path), e)

    def _fix_root(self, iso: pycdlib.PyCdlib, root: Entry):
        """The root's metadata lives in its ``.`` record (and the PVD's root record);
        returns the root's record."""
        rec = iso.get_record(iso_path="/")
        for r in (rec, *rec.children[:2]):
            _retime(r, root.mtime)
            if self.rr and r.rock_ridge is not None:
                _set_px(r.rock_ridge, root.st_mode, root.uid, root.gid)
        return rec

    def _fix_rr(self, rec, e: Entry) -> None:
        _set_px(rec.rock_ridge, e.st_mode, e.uid, e.gid)
        if e.kind is Kind.DIR:
            dot, dotdot = rec.children[0], rec.children[1]
            _set_px(dot.rock_ridge, e.st_mode, e.uid, e.gid)
            parent = self.tree[e.parent]
            _set_px(dotdot.rock_ridge, parent.st_mode, parent.uid, parent.gid)
            _retime(dotdot, parent.mtime)

    def add_boot(self, iso: pycdlib.PyCdlib, boot: IsoBoot) -> None:
        if self.catalog is None:
            raise InputError("IsoBoot needs bios_image or efi_image")
        cat_path, cat_iso, cat_jol = self.catalog
        parent = posixpath.dirname(cat_path)
        bootcat = posixpath.join(self.iso_path[parent], cat_iso + ";1")
        kwargs = dict(bootcatfile=bootcat,
                      rr_bootcatname=posixpath.basename(cat_path) if self.rr else None,
                      joliet_bootcatfile=(posixpath.join(self.joliet_path[parent], cat_jol)
                                          if self.joliet else None))
        first = True
        for image, efi in ((boot.bios_image, False), (boot.efi_image, True)):
            if image is None:
                continue
            e = self.tree.get(image)
            if e is None or e.kind is not Kind.FILE:
                raise InputError(f"El Torito {'EFI' if efi else 'BIOS'} image {image!r} is not "
                                 f"a regular file in the tree")
            if efi:
                # The catalog has 16 bits for the sector count; firmware (EDK2) reads a count
                # below 2 as "the image runs to the end of the medium".
                sectors = max(1, -(-e.size // 512))
                iso.add_eltorito(self.iso_path[e.path],
                                 boot_load_size=sectors if sectors <= 0xFFFF else 1,
                                 platform_id=0xEF, efi=True, media_name="noemul",
                                 **(kwargs if first else {}))
            else:
                iso.add_eltorito(self.iso_path[e.path], boot_load_size=boot.bios_load_size,
                                 boot_info_table=boot.boot_info_table, platform_id=0,
                                 media_name="noemul", **kwargs)
            first = False
        if boot.isohybrid:
            if boot.bios_image is None:
                raise InputError("isohybrid needs IsoBoot.bios_image (isolinux.bin)")
            efi = boot.efi_image is not None
            if boot.isohybrid_efi is not None and boot.isohybrid_efi != efi:
                raise InputError(f"IsoBoot.isohybrid_efi={boot.isohybrid_efi} but efi_image is "
                                 f"{boot.efi_image!r}: an isohybrid image has EFI partition "
                                 f"entries exactly when it has an EFI boot image",
                                 hint="leave isohybrid_efi unset")
            iso.add_isohybrid(mbr_id=_PATCH.mbr_id, efi=efi)


def _walk_records(root) -> Iterator[tuple[str, object]]:
    """``(ISO 9660 path, directory record)`` of every record below ``root``, in one walk (a
    ``get_record`` per entry looks each path up from the root again). Rock Ridge relocated
    directories (deeper than eight levels) are not entered: their placeholder is not the
    record to change."""
    stack = [("/", root)]
    while stack:
        path, rec = stack.pop()
        for child in rec.children[2:]:
            rr = child.rock_ridge
            if rr is not None and rr.child_link_record_exists():
                continue
            full = posixpath.join(path, child.file_identifier().decode("ascii"))
            yield full, child
            if child.is_dir():
                stack.append((full, child))


def _px(rr) -> _prr.RRPXRecord | None:
    if rr is None:
        return None
    if rr.dr_entries.px_record is not None:
        return rr.dr_entries.px_record
    if rr.ce_entries is not None:
        return rr.ce_entries.px_record
    return None


def _set_px(rr, mode: int, uid: int, gid: int) -> None:
    px = _px(rr)
    if px is not None:
        px.posix_file_mode = mode
        px.posix_user_id = uid
        px.posix_group_id = gid


def _retime(rec, t: int) -> None:
    """Re-date one directory record and its Rock Ridge TF entry to ``t``."""
    d = _pdates.DirectoryRecordDate()
    d.new(t)
    rec.date = d
    rr = rec.rock_ridge
    if rr is None:
        return
    for entries in (rr.dr_entries, rr.ce_entries):
        tf = entries.tf_record if entries is not None else None
        if tf is None:
            continue
        for field in ("creation_time", "access_time", "modification_time",
                      "attribute_change_time", "backup_time", "expiration_time",
                      "effective_time"):
            old = getattr(tf, field)
            if old is not None:
                new = type(old)()
                new.new(t)
                setattr(tf, field, new)


class _Deferred:
    """``length`` bytes of ``host`` from ``offset``, standing in for the bytes themselves.

    While an image is written, a file's reader hands pycdlib one of these instead of the
    data; pycdlib only measures it and passes it to the output, where :class:`_DataOut`
    copies it in the kernel. File data never passes through Python.
    """

    __slots__ = ("host", "offset", "length")

    def __init__(self, host: str, offset: int, length: int) -> None:
        self.host, self.offset, self.length = host, offset, length

    def __len__(self) -> int:
        return self.length


class _Deferring(threading.local):
    active = False


_DEFERRING = _Deferring()


class _DataOut:
    """The output pycdlib writes to: bytes go to the file object, :class:`_Deferred` spans
    are copied file to file with ``copy_file_range`` (``sendfile`` where that fails) at the
    current position."""

    mode = "wb"

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._fd = f.fileno()

    def write(self, data) -> int:
        if type(data) is not _Deferred:
            return self._f.write(data)
        self._f.flush()
        pos = self._f.tell()
        src = os.open(data.host, os.O_RDONLY | os.O_CLOEXEC)
        try:
            done = 0
            with contextlib.suppress(OSError):
                while done < data.length:
                    n = os.copy_file_range(src, self._fd, data.length - done,
                                           data.offset + done, pos + done)
                    if n == 0:
                        break
                    done += n
            if done < data.length:
                os.lseek(self._fd, pos + done, os.SEEK_SET)
                while done < data.length:
                    n = os.sendfile(self._fd, src, data.offset + done, data.length - done)
                    if n == 0:
                        raise InputError(f"{data.host}: the file shrank while the ISO image "
                                         "was written")
                    done += n
        finally:
            os.close(src)
        self._f.seek(pos + data.length)
        return data.length

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()


@contextlib.contextmanager
def _kernel_copies(f: BinaryIO) -> Iterator[BinaryIO]:
    """Let readers of host files hand out :class:`_Deferred` spans while ``f`` is written
    (a plain file); anything else is written as pycdlib gives it."""
    try:
        f.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        yield f
        return
    _DEFERRING.active = True
    try:
        yield _DataOut(f)  # type: ignore[misc]
    finally:
        _DEFERRING.active = False


class _LazyReader:
    """A file object over a Blob that opens it only while pycdlib copies it.

    pycdlib keeps every added file object until the image is written; holding thousands of
    host files open would exhaust file descriptors, so each is opened on first read and
    closed once its last byte has been read. A small slotted object, not an ``io`` one:
    there is one per file for the whole build.
    """

    __slots__ = ("_blob", "_f", "_pos")
    mode = "rb"

    def __init__(self, blob: Blob) -> None:
        self._blob = blob
        self._f: BinaryIO | None = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        target = {0: pos, 1: self._pos + pos, 2: self._blob.size + pos}[whence]
        if target != self._pos:
            self._drop()
            self._pos = target
        return self._pos

    def read(self, size: int | None = -1):
        """While the image is written (:func:`_kernel_copies`), a span of the host file
        instead of its bytes; otherwise bytes, as any reader."""
        left = max(self._blob.size - self._pos, 0)
        n = left if size is None or size < 0 else min(size, left)
        where = self._blob.host_range() if _DEFERRING.active else None
        if where is not None:
            span = _Deferred(where[0], where[1] + self._pos, n)
            self._pos += n
            return span
        out = bytearray(n)
        view = memoryview(out)
        done = 0
        while done < n:
            got = self.readinto(view[done:])
            if not got:
                break
            done += got
        return bytes(out[:done])

    def readinto(self, b) -> int:
        if self._pos >= self._blob.size:
            self._drop()
            return 0
        if self._f is None:
            self._f = self._blob.open()
            skip = self._pos
            while skip:
                chunk = self._f.read(min(skip, 1 << 20))
                if not chunk:
                    break
                skip -= len(chunk)
        want = min(len(b), self._blob.size - self._pos)
        n = self._f.readinto(memoryview(b)[:want]) or 0  # type: ignore[attr-defined]
        self._pos += n
        if n == 0 or self._pos >= self._blob.size:
            self._drop()
        return n

    def _drop(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def close(self) -> None:
        self._drop()


# -- making pycdlib deterministic ---------------------------------------------------------

class _Clock:
    """Stands in for the ``time`` module inside pycdlib: a settable ``now``, local = UTC."""

    def __init__(self) -> None:
        self.now = 0

    def time(self) -> float:
        return float(self.now)

    def localtime(self, secs: float | None = None):
        return _time.gmtime(self.now if secs is None else secs)

    def __getattr__(self, name: str):
        return getattr(_time, name)


class _SeededUUID:
    """Stands in for the ``uuid`` module inside pycdlib's isohybrid: uuid4 from a seed."""

    def __init__(self, seed: str) -> None:
        self._seed = seed
        self._n = 0

    def uuid4(self) -> _uuid.UUID:
        self._n += 1
        digest = hashlib.sha256(f"imgkit iso guid {self._n}\0{self._seed}".encode()).digest()
        return _uuid.UUID(bytes=digest[:16], version=4)

    def __getattr__(self, name: str):
        return getattr(_uuid, name)


class _PendingPN(threading.local):
    value: tuple[int, int] | None = None


_PENDING_PN = _PendingPN()
_LOCK = threading.RLock()   # the patches below are process-wide


class _Patch:
    mbr_id = 0


_PATCH = _Patch()


def _rr_new_with_pn(orig):
    """Wrap ``RockRidge.new`` to add a PN entry (device number) to a device node's record."""

    def new(self, *args, **kwargs):
        length = orig(self, *args, **kwargs)
        rdev = _PENDING_PN.value
        if rdev is None:
            return length
        pn = _PNEntry(*rdev)
        if length + pn.LENGTH <= _prr.ALLOWED_DR_SIZE:
            self.dr_entries.es_records.append(pn)
            length += pn.LENGTH
        elif self.dr_entries.ce_record is not None:
            self.dr_entries.ce_record.add_record(pn.LENGTH)
            self._ensure_ce_entries().es_records.append(pn)
        else:
            raise LayoutError("no room for a device number in a Rock Ridge record",
                              hint="shorten the device node's name")
        rr_rec = self.dr_entries.rr_record or (self.ce_entries.rr_record
                                               if self.ce_entries is not None else None)
        if rr_rec is not None:
            rr_rec.append_field("PN")
        return length

    return new


class _PNEntry:
    """A Rock Ridge PN entry (RRIP 4.1.2): device number, high and low words, both-endian.

    Linux reads ``high:low`` as ``major:minor``, except that with ``high`` 0 and ``low`` above
    255 it reads ``low`` as an old 16-bit ``major << 8 | minor``. That old form is also what
    libisofs writes and reads, so it is used wherever it fits (minor < 256).
    """

    LENGTH = 20

    def __init__(self, major: int, minor: int) -> None:
        if minor <= 0xFF:
            self.high, self.low = 0, (major << 8) | minor
        else:
            self.high, self.low = major, minor

    def record(self) -> bytes:
        return b"PN" + bytes((self.LENGTH, 1)) + _both32(self.high) + _both32(self.low)


def _both32(value: int) -> bytes:
    """ISO 9660 "both-byte order" 32-bit number (7.3.3): little-endian, then big-endian."""
    return value.to_bytes(4, "little") + value.to_bytes(4, "big")


def _utc_offset(tm: float, local) -> int:
    return 0


@contextlib.contextmanager
def _patched_pycdlib(seed: str) -> Iterator[_Clock]:
    clock = _Clock()
    saved = [(m, "time", m.time) for m in (_pmain, _pheadervd, _pdates, _putils)]
    saved.append((_pisohybrid, "uuid", _pisohybrid.uuid))
    saved.append((_prr.RockRidge, "new", _prr.RockRidge.new))
    saved.append((_putils, "gmtoffset_from_tm", _putils.gmtoffset_from_tm))
    _PATCH.mbr_id = int.from_bytes(hashlib.sha256(f"imgkit iso mbr\0{seed}".encode())
                                   .digest()[:4], "little")
    try:
        for m in (_pmain, _pheadervd, _pdates, _putils):
            m.time = clock
        _pisohybrid.uuid = _SeededUUID(seed)
        _prr.RockRidge.new = _rr_new_with_pn(_prr.RockRidge.new)
        # Local time is UTC on the clock above, so every date's offset from GMT is 0:
        # skip working it out from two struct_times per date (a hundred thousand dates).
        _putils.gmtoffset_from_tm = _utc_offset
        yield clock
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
