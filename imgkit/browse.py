"""Open an archive, a filesystem image or a partition of a disk image as a read-only :class:`Tree`.

This is what ``imgkit ls`` lists. ``spec`` is ``IMAGE`` or ``IMAGE:PARTITION``, where
``PARTITION`` is a partition number (``disk.img:2``) or a GPT partition name
(``disk.img:root``); a path that exists as given is always taken whole, even if it contains a
colon. Nothing is mounted and nothing needs root:

- archives (cpio, tar, zip, compressed or not) are read by libarchive (:mod:`.sources.archive`);
- FAT is walked in Python (:class:`FatVolume`); names are the long names, or the short names
  with the lower-case bits Windows NT and mtools set. FAT has no owners or modes: entries are 0:0 with 0755
  for directories and 0644 for files, as Linux shows them by default;
- ISO 9660 through pycdlib: Rock Ridge names, modes, owners, symlinks, device nodes and hard
  links when present, else Joliet names, else plain ISO 9660 names (without ``;1``);
- ext2/3/4 through ``debugfs`` (which opens a filesystem at a byte offset inside a disk image
  with its ``IMAGE?offset=N`` syntax, so nothing is copied): one ``ls -p`` pass per directory
  level and one ``stat`` pass for every inode;
- qcow2 disks are first converted to a temporary sparse raw image with ``qemu-img convert``.

File contents are lazy blobs: FAT and ISO files point into the image itself (``host_range``
when their data is contiguous), ext4 files are extracted with ``debugfs dump`` when opened.
Listing only ever reads metadata.
"""
from __future__ import annotations

import calendar
import io
import os
import re
import stat
import struct
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from imgkit import inspect as _inspect
from imgkit import tools
from imgkit.errors import ImageError, InputError
from imgkit.sources.archive import read_archive
from imgkit.tree import Entry, Kind, Tree, sort_key

_TYPES = {stat.S_IFREG: Kind.FILE, stat.S_IFDIR: Kind.DIR, stat.S_IFLNK: Kind.SYMLINK,
          stat.S_IFCHR: Kind.CHAR, stat.S_IFBLK: Kind.BLOCK, stat.S_IFIFO: Kind.FIFO,
          stat.S_IFSOCK: Kind.SOCKET}


# -- spec parsing -----------------------------------------------------------------------------

def split_spec(spec: str) -> tuple[str, str | None]:
    """``IMAGE[:PARTITION]`` -> ``(image, partition or None)``; an existing path wins whole."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    image, part = spec.rsplit(":", 1)
    if os.path.exists(image) and part:
        return image, part
    return spec, None


@dataclass
class Location:
    """Where a filesystem sits: a host file, a byte range in it, and what was detected there.

    ``keep`` holds objects (a temporary converted image) that must live as long as the tree.
    """

    path: str
    offset: int
    size: int
    kind: str
    what: str
    keep: list = field(default_factory=list)


def locate(spec: str) -> Location:
    """Resolve ``IMAGE[:PARTITION]`` to the byte range of one filesystem or archive."""
    image, part = split_spec(spec)
    if not os.path.exists(image):
        raise InputError(f"image {image!r} does not exist")
    if os.path.isdir(image):
        raise InputError(f"{image!r} is a directory, expected an image or archive file")
    keep: list = []
    kind = _inspect.detect(image)
    path = image
    if kind == "qcow2":
        raw = _inspect.qcow2_raw(image)
        keep.append(raw)
        path = raw.path
        kind = _inspect.detect(path)
    size = os.path.getsize(path)
    if part is None:
        if kind in _inspect.DISK_FORMATS:
            table = _table(path, kind)
            raise InputError(f"{image} is a partitioned disk ({kind}): name a partition as "
                             f"{image}:NUMBER or {image}:NAME",
                             hint="partitions: " + _list_parts(table))
        return Location(path, 0, size, kind, image, keep)
    table = _table(path, kind)
    if table is None:
        raise InputError(f"{image} is {_article(kind)} image, not a partitioned disk, so it has "
                         f"no partition {part!r}",
                         hint=f"list it whole: imgkit ls {image}")
    found = _find(table, part)
    if found is None:
        raise InputError(f"{image} has no partition {part!r}",
                         hint="partitions: " + _list_parts(table))
    if found.get("extended"):
        raise InputError(f"{image}:{part} is the extended partition, which holds the logical "
                         "partitions (5 and up), not a filesystem")
    with open(path, "rb") as f:
        sub = _inspect._sniff(f, found["start"])[0]
    return Location(path, found["start"], found["size"], sub, f"{image}:{part}", keep)


def _article(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def _table(path: str, kind: str) -> dict | None:
    if kind not in ("gpt", "mbr", "iso9660"):
        return None
    with open(path, "rb") as f:
        return _inspect.read_table(f, os.path.getsize(path), kind)


def _find(table: dict, part: str) -> dict | None:
    parts = table["partitions"]
    if part.isdigit():
        for p in parts:
            if p["number"] == int(part):
                return p
    for p in parts:
        if p.get("name") and p["name"] == part:
            return p
    return None


def _list_parts(table: dict | None) -> str:
    if not table or not table["partitions"]:
        return "(none)"
    return ", ".join(f"{p['number']}" + (f" ({p['name']})" if p.get("name") else "")
                     + f" {(p.get('filesystem') or {}).get('format', '')}".rstrip()
                     for p in table["partitions"])


# -- the entry point --------------------------------------------------------------------------

def open_tree(spec: str) -> Tree:
    """``IMAGE`` or ``IMAGE:PARTITION`` -> its files (see the module docstring)."""
    loc = locate(spec)
    kind = loc.kind
    if kind.startswith("fat"):
        tree = _fat_tree(loc)
    elif kind.startswith("ext"):
        tree = _ext_tree(loc)
    elif kind == "iso9660":
        tree = _iso_tree(loc)
    elif loc.offset == 0 and kind in _inspect.ARCHIVE_FORMATS + ("unknown",) + tuple(
            m for _, m in _inspect._COMPRESSION_MAGIC):
        try:
            tree = read_archive(loc.path)
        except ImageError:
            if kind != "unknown":
                raise
            with open(loc.path, "rb") as f:
                raise _inspect.unknown_format(loc.what, f.read(16)) from None
    elif kind == "squashfs":
        raise ImageError(f"{loc.what}: listing squashfs is not supported",
                         hint="unsquashfs -lls lists it (package squashfs-tools)")
    else:
        raise ImageError(f"{loc.what} holds {_article(kind)} image, which has no files to list"
                         if kind != "unknown" else f"{loc.what}: no filesystem recognised",
                         hint="imgkit inspect shows what is in it")
    if loc.keep:
        _keep_alive[id(tree)] = loc.keep
        weakref.finalize(tree, _keep_alive.pop, id(tree), None)
    return tree


_keep_alive: dict[int, list] = {}


# -- blobs ------------------------------------------------------------------------------------

class _RunsReader(io.RawIOBase):
    """Reads a file whose data is a list of ``(offset, length)`` runs of a host file."""

    def __init__(self, path: str, runs: tuple[tuple[int, int], ...]) -> None:
        self._f = open(path, "rb")
        self._runs = list(runs)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while self._runs and self._runs[0][1] == 0:
            self._runs.pop(0)
        if not self._runs:
            return 0
        off, left = self._runs[0]
        n = min(len(b), left)
        self._f.seek(off)
        data = self._f.read(n)
        if not data:
            raise ImageError(f"{self._f.name}: the image ends inside a file's data at {off}")
        b[:len(data)] = data
        self._runs[0] = (off + len(data), left - len(data))
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass(frozen=True)
class RunsBlob:
    """File data lying in one or more byte ranges of a host image (FAT clusters, ISO extents)."""

    path: str
    size: int
    runs: tuple[tuple[int, int], ...]
    keep: object = field(default=None, compare=False, repr=False)

    def open(self) -> BinaryIO:
        return io.BufferedReader(_RunsReader(self.path, self.runs))  # type: ignore[return-value]

    def host_range(self) -> tuple[str, int] | None:
        if len(self.runs) == 1:
            return (self.path, self.runs[0][0])
        return None


@dataclass(frozen=True)
class DebugfsBlob:
    """An ext2/3/4 file's data, extracted with ``debugfs dump`` when it is opened."""

    device: str
    inode: int
    size: int
    keep: object = field(default=None, compare=False, repr=False)

    def open(self) -> BinaryIO:
        with tempfile.TemporaryDirectory(prefix="imgkit-dump-") as tmp:
            out = os.path.join(tmp, "data")
            _debugfs(self.device, [f"dump <{self.inode}> {_q(out)}"])
            f = open(out, "rb")
        return f   # the directory is gone; the open file stays readable

    def host_range(self) -> tuple[str, int] | None:
        return None


# -- FAT --------------------------------------------------------------------------------------

class FatVolume:
    """A read-only FAT12/16/32 directory walker over a byte range of a host file.

    Written here rather than taken from pyfatfs, which (1.1.0) reads FAT12 cluster chains as
    16-bit entries and drops the lower-case bits of short names: both common on ESPs made by
    mkfs.vfat and mtools. The whole FAT is read once (metadata only: 4 bytes per cluster).
    """

    def __init__(self, f: BinaryIO, base: int, what: str) -> None:
        self.f, self.base, self.what = f, base, what
        self.geo = _inspect.FatGeometry(_read(f, base, 512))
        if not self.geo.valid():
            raise ImageError(f"{what}: not a valid FAT boot sector")
        g = self.geo
        raw = _read(f, base + g.reserved_sectors * g.bytes_per_sector,
                    g.fat_sectors * g.bytes_per_sector)
        self.kind = g.kind
        if self.kind == "fat32":
            self.fat = [v & 0x0FFFFFFF for v in struct.unpack_from(f"<{len(raw) // 4}I", raw)]
            self.end = 0x0FFFFFF8
        elif self.kind == "fat16":
            self.fat = list(struct.unpack_from(f"<{len(raw) // 2}H", raw))
            self.end = 0xFFF8
        else:
            n = len(raw) * 2 // 3
            self.fat = [(int.from_bytes(raw[c * 3 // 2: c * 3 // 2 + 2], "little") >> 4) if c & 1
                        else int.from_bytes(raw[c * 3 // 2: c * 3 // 2 + 2], "little") & 0xFFF
                        for c in range(n)]
            self.end = 0xFF8

    def chain(self, first: int) -> Iterator[int]:
        """The clusters of the chain starting at ``first`` (refusing loops and bad links)."""
        cluster, count, limit = first, 0, self.geo.clusters + 2
        while 2 <= cluster < self.end:
            if cluster >= len(self.fat) or cluster >= limit or count > limit:
                raise ImageError(f"{self.what}: FAT cluster chain from {first} is broken at "
                                 f"cluster {cluster}")
            yield cluster
            count += 1
            cluster = self.fat[cluster]
            if cluster in (0, 1):
                raise ImageError(f"{self.what}: FAT cluster chain from {first} runs into a "
                                 "free cluster")

    def runs(self, first: int, size: int) -> tuple[tuple[int, int], ...]:
        """``(host offset, length)`` runs holding ``size`` bytes from cluster ``first``."""
        out: list[list[int]] = []
        left = size
        for cluster in self.chain(first) if size else ():
            if left <= 0:
                break
            off = self.base + self.geo.cluster_offset(cluster)
            n = min(self.geo.cluster_size, left)
            if out and out[-1][0] + out[-1][1] == off:
                out[-1][1] += n
            else:
                out.append([off, n])
            left -= n
        if left > 0:
            raise ImageError(f"{self.what}: a file of {size} bytes has a cluster chain "
                             f"{size - left} bytes long")
        return tuple((o, n) for o, n in out)

    def directory(self, cluster: int) -> bytes:
        """The raw entries of a directory (cluster 0: the root)."""
        g = self.geo
        if cluster == 0 and self.kind != "fat32":
            start = (g.reserved_sectors + g.fats * g.fat_sectors) * g.bytes_per_sector
            return _read(self.f, self.base + start, g.root_sectors * g.bytes_per_sector)
        if cluster == 0:
            cluster = g.root_cluster
        return b"".join(_read(self.f, self.base + g.cluster_offset(c), g.cluster_size)
                        for c in self.chain(cluster))

    def entries(self, cluster: int) -> Iterator[tuple[str, bool, int, int, int]]:
        """``(name, is_dir, first cluster, size, mtime)`` of a directory's entries."""
        raw = self.directory(cluster)
        lfn: dict[int, bytes] = {}
        lfn_sum = -1
        for i in range(0, len(raw) - 31, 32):
            d = raw[i:i + 32]
            if d[0] == 0:
                return
            if d[0] == 0xE5:
                lfn = {}
                continue
            attr = d[11]
            if attr & 0x3F == 0x0F:
                if d[0] & 0x40:
                    lfn, lfn_sum = {}, d[13]
                lfn[d[0] & 0x1F] = d[1:11] + d[14:26] + d[28:32]
                continue
            parts, lfn = lfn, {}
            if attr & 0x08:
                continue            # the volume label
            short = d[:11]
            if short in (b".          ", b"..         "):
                continue
            name = None
            if parts and lfn_sum == _lfn_checksum(short) and sorted(parts) == list(
                    range(1, len(parts) + 1)):
                units = b"".join(parts[k] for k in sorted(parts))
                text = units.decode("utf-16-le", "replace")
                name = text.split("\0", 1)[0]
            if not name:
                base = bytes([0xE5]) + short[1:8] if short[0] == 0x05 else short[:8]
                base_s = base.decode("cp437").rstrip()
                ext_s = short[8:].decode("cp437").rstrip()
                if d[12] & 0x08:
                    base_s = base_s.lower()
                if d[12] & 0x10:
                    ext_s = ext_s.lower()
                name = base_s + ("." + ext_s if ext_s else "")
            hi = struct.unpack_from("<H", d, 20)[0] if self.kind == "fat32" else 0
            first = hi << 16 | struct.unpack_from("<H", d, 26)[0]
            tod, date = struct.unpack_from("<HH", d, 22)
            yield name, bool(attr & 0x10), first, struct.unpack_from("<I", d, 28)[0], \
                _fat_time(date, tod)


def _lfn_checksum(short: bytes) -> int:
    s = 0
    for b in short:
        s = (((s & 1) << 7) + (s >> 1) + b) & 0xFF
    return s


def _fat_time(date: int, tod: int) -> int:
    """FAT times have no zone; like Linux (``tz=UTC``) and our writer, they are read as UTC."""
    month, day = (date >> 5) & 0xF, date & 0x1F
    if not 1 <= month <= 12 or not day:
        return 0
    try:
        return calendar.timegm((1980 + (date >> 9), month, day, tod >> 11, (tod >> 5) & 0x3F,
                                (tod & 0x1F) * 2, 0, 0, 0))
    except (ValueError, OverflowError):
        return 0


def _fat_tree(loc: Location) -> Tree:
    tree = Tree()
    with open(loc.path, "rb") as f:
        vol = FatVolume(f, loc.offset, loc.what)
        stack, seen = [(0, "")], {0}
        while stack:
            cluster, prefix = stack.pop()
            for name, is_dir, first, size, mtime in vol.entries(cluster):
                path = f"{prefix}/{name}" if prefix else name
                origin = f"{loc.what}: /{path}"
                if "/" in name or name in ("", ".", ".."):
                    raise ImageError(f"{origin}: invalid FAT file name {name!r}")
                if is_dir:
                    tree.add(Entry(path, Kind.DIR, mode=0o755, mtime=mtime, origin=origin))
                    if first in seen:
                        raise ImageError(f"{origin}: directory loop (cluster {first})")
                    seen.add(first)
                    stack.append((first, path))
                else:
                    tree.add(Entry(path, Kind.FILE, mode=0o644, mtime=mtime, origin=origin,
                                   data=RunsBlob(loc.path, size, vol.runs(first, size),
                                                 loc.keep or None)))
    return tree


def _read(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


# -- ISO 9660 ---------------------------------------------------------------------------------

class _OffsetFile(io.RawIOBase):
    """A read-only view of a host file starting at ``offset`` (an ISO inside a partition)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self._f = open(path, "rb")
        self._base, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = {0: pos, 1: self._pos + pos, 2: self._size + pos}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[override]
        n = max(0, min(len(b), self._size - self._pos))
        self._f.seek(self._base + self._pos)
        data = self._f.read(n)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def _iso_tree(loc: Location) -> Tree:
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    fp = (open(loc.path, "rb") if loc.offset == 0
          else io.BufferedReader(_OffsetFile(loc.path, loc.offset, loc.size)))
    tree = Tree()
    try:
        iso.open_fp(fp)
        if iso.has_rock_ridge():
            facet = "rr_path"
        elif iso.has_joliet():
            facet = "joliet_path"
        else:
            facet = "iso_path"
        root = iso.get_record(**{facet: "/"})
        meta = _iso_meta(root, facet)
        tree.with_root(mode=meta["mode"] if meta["kind"] is Kind.DIR else 0o755, uid=meta["uid"],
                       gid=meta["gid"], mtime=meta["mtime"])
        linked: dict[tuple[int, int], list[tuple[str, dict]]] = {}
        stack = ["/"]
        while stack:
            d = stack.pop()
            for rec in iso.list_children(**{facet: d}):
                if rec.is_dot() or rec.is_dotdot():
                    continue
                name = _iso_name(rec, facet)
                ipath = d.rstrip("/") + "/" + name
                path = ipath.lstrip("/")
                m = _iso_meta(rec, facet)
                kind = m["kind"]
                common = dict(mode=m["mode"], uid=m["uid"], gid=m["gid"], mtime=m["mtime"],
                              origin=f"{loc.what}: {ipath}")
                if kind is Kind.DIR:
                    tree.add(Entry(path, Kind.DIR, **common))
                    stack.append(ipath)
                elif kind is Kind.FILE:
                    size = rec.get_data_length()
                    start = loc.offset + rec.extent_location() * 2048
                    common["data"] = RunsBlob(loc.path, size, ((start, size),) if size else (),
                                              loc.keep or None)
                    if size and m["nlink"] > 1:
                        # Rock Ridge hard links: several names, one extent.
                        linked.setdefault((rec.extent_location(), size), []).append((path, common))
                    else:
                        tree.add(Entry(path, Kind.FILE, **common))
                elif kind is Kind.SYMLINK:
                    tree.add(Entry(path, kind, target=m["target"], **common))
                else:
                    tree.add(Entry(path, kind, rdev=m["rdev"], **common))
        for names in linked.values():
            names.sort(key=lambda pc: sort_key(pc[0]))
            first = names[0][0]
            tree.add(Entry(first, Kind.FILE, **names[0][1]))
            for path, common in names[1:]:
                common = {k: v for k, v in common.items() if k != "data"}
                tree.add(Entry(path, Kind.HARDLINK, target=first, **common))
    except PyCdlibException as exc:
        raise ImageError(f"{loc.what}: cannot read the ISO 9660 image: {exc}") from exc
    finally:
        try:
            iso.close()
        except Exception:  # pycdlib refuses to close what it did not open
            pass
        fp.close()
    return tree


def _rr_record(rr, name: str):
    got = getattr(rr.dr_entries, name, None)
    if got is None and getattr(rr, "ce_entries", None) is not None:
        got = getattr(rr.ce_entries, name, None)
    return got


def _iso_meta(rec, facet: str) -> dict:
    rr = getattr(rec, "rock_ridge", None) if facet == "rr_path" else None
    out = {"mtime": _iso_time(rec.date), "uid": 0, "gid": 0, "nlink": 1, "target": None,
           "rdev": (0, 0)}
    if rr is None:
        out["kind"] = Kind.DIR if rec.is_dir() else Kind.FILE
        out["mode"] = 0o755 if rec.is_dir() else 0o644
        return out
    px = _rr_record(rr, "px_record")
    if px is not None:
        mode = px.posix_file_mode
        out.update(uid=px.posix_user_id, gid=px.posix_group_id, nlink=px.posix_file_links)
    else:
        mode = (stat.S_IFDIR | 0o755) if rec.is_dir() else (stat.S_IFREG | 0o644)
    if rr.is_symlink():
        mode = stat.S_IFLNK | stat.S_IMODE(mode)
        out["target"] = rr.symlink_path().decode("utf-8", "surrogateescape")
    kind = _TYPES.get(stat.S_IFMT(mode)) or (Kind.DIR if rec.is_dir() else Kind.FILE)
    out["kind"], out["mode"] = kind, stat.S_IMODE(mode)
    pn = _rr_record(rr, "pn_record")
    if pn is not None and kind in (Kind.CHAR, Kind.BLOCK):
        high, low = pn.dev_t_high, pn.dev_t_low
        out["rdev"] = (low >> 8, low & 0xFF) if high == 0 and low & ~0xFF else (high, low)
    tf = _rr_record(rr, "tf_record")
    mod = getattr(tf, "modification_time", None) if tf is not None else None
    if mod is not None:
        out["mtime"] = _iso_time(mod)
    return out


def _iso_time(d) -> int:
    """A pycdlib directory-record or volume-descriptor date as epoch seconds (UTC)."""
    try:
        if hasattr(d, "years_since_1900"):
            year = 1900 + d.years_since_1900
            day = d.day_of_month
        else:
            year, day = d.year, d.dayofmonth
        if year < 1970 or not d.month:
            return 0
        t = calendar.timegm((year, d.month, day, d.hour, d.minute, d.second, 0, 0, 0))
        return t - d.gmtoffset * 15 * 60
    except (AttributeError, ValueError, OverflowError, TypeError):
        return 0


def _iso_name(rec, facet: str) -> str:
    if facet == "rr_path":
        return rec.rock_ridge.name().decode("utf-8", "surrogateescape")
    ident = rec.file_identifier()
    if facet == "joliet_path":
        return ident.decode("utf-16-be", "replace")
    name = ident.decode("ascii", "replace")
    if not rec.is_dir():
        name = name.split(";", 1)[0]
        if name.endswith("."):
            name = name[:-1]
    return name


# -- ext2/3/4 ---------------------------------------------------------------------------------

def _ext_device(loc: Location) -> tuple[str, object | None]:
    """The name debugfs opens: ``PATH?offset=N``; a path with ``?`` goes through a symlink."""
    path, holder = os.path.abspath(loc.path), None
    if "?" in path:
        holder = tempfile.TemporaryDirectory(prefix="imgkit-link-")
        link = os.path.join(holder.name, "image")
        os.symlink(path, link)
        path = link
    return (f"{path}?offset={loc.offset}" if loc.offset else path), holder


def _debugfs(device: str, commands: list[str]) -> str:
    """Run ``commands`` in one debugfs session; its output with each command echoed first."""
    with tempfile.NamedTemporaryFile("w", prefix="imgkit-debugfs-", suffix=".cmd") as cmd:
        cmd.write("\n".join(commands) + "\n")
        cmd.flush()
        proc = tools.run(["debugfs", "-f", cmd.name, device], check=False)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or "Bad magic number" in err or "Couldn't find valid" in err:
        raise ImageError(f"debugfs cannot open {device}: " + " ".join(err.split()[-30:]))
    return proc.stdout.decode("utf-8", "surrogateescape")


def _q(path: str) -> str:
    """Quote for debugfs' command parser: double quotes, a quote inside doubled."""
    return '"' + path.replace('"', '""') + '"'


def _by_command(output: str) -> Iterator[tuple[str, list[str]]]:
    """Split debugfs -f output into ``(command, lines)`` (it echoes ``debugfs: CMD``)."""
    cmd, lines = None, []
    for line in output.splitlines():
        if line.startswith("debugfs: "):
            if cmd is not None:
                yield cmd, lines
            cmd, lines = line[9:], []
        elif cmd is not None:
            lines.append(line)
    if cmd is not None:
        yield cmd, lines


_LS_CMD = re.compile(r"ls -p -r <(\d+)>")
_STAT_CMD = re.compile(r"stat <(\d+)>")
_USER = re.compile(r"User:\s*(\d+)\s+Group:\s*(\d+)")
_SIZE = re.compile(r"\bSize: (\d+)")
_MTIME = re.compile(r"^\s*mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?")
_MODE = re.compile(r"Mode:\s+([0-7]+)")
_FAST_LINK = re.compile(r'^Fast link dest: "(.*)"$', re.S)
_DEVICE = re.compile(r"Device major/minor number: (\d+):(\d+)")


def _ext_tree(loc: Location) -> Tree:
    device, holder = _ext_device(loc)
    keep = (holder, loc.keep) if holder or loc.keep else None
    names: dict[int, list[tuple[str, int]]] = {}   # inode -> [(path, full mode)]
    level = [(2, "")]
    while level:
        out = _debugfs(device, [f"ls -p -r <{ino}>" for ino, _ in level])
        paths = dict(level)
        nxt = []
        for cmd, lines in _by_command(out):
            m = _LS_CMD.fullmatch(cmd.strip())
            if not m:
                continue
            parent = paths[int(m[1])]
            for line in lines:
                fields = line.split("/")
                if len(fields) < 7 or fields[0] != "":
                    continue
                ino, mode = int(fields[1]), int(fields[2], 8)
                name = "/".join(fields[5:-2])
                if name in (".", "..") or not ino:
                    continue
                path = f"{parent}/{name}" if parent else name
                names.setdefault(ino, []).append((path, mode))
                if stat.S_ISDIR(mode):
                    nxt.append((ino, path))
        level = nxt
    info = _ext_stats(device, [2] + list(names))
    tree = Tree()
    root = info.get(2)
    if root:
        tree.with_root(mode=root["mode"], uid=root["uid"], gid=root["gid"], mtime=root["mtime"])
    slow_links = {ino for ino in names if ino in info and stat.S_ISLNK(names[ino][0][1])
                  and info[ino].get("target") is None}
    targets = _ext_slow_links(device, slow_links)
    for ino in sorted(names, key=lambda i: min(sort_key(p) for p, _ in names[i])):
        meta = info.get(ino) or {"mode": 0, "uid": 0, "gid": 0, "mtime": 0, "size": 0}
        paths = sorted(names[ino], key=lambda pm: sort_key(pm[0]))
        first, mode = paths[0]
        kind = _TYPES.get(stat.S_IFMT(mode))
        if kind is None:
            raise ImageError(f"{loc.what}: /{first} has an unknown file type (mode {mode:o})")
        common = dict(mode=stat.S_IMODE(mode), uid=meta["uid"], gid=meta["gid"],
                      mtime=meta["mtime"])
        for path, _ in paths:
            origin = f"{loc.what}: /{path} (inode {ino})"
            if kind is Kind.FILE and path != first:
                tree.add(Entry(path, Kind.HARDLINK, target=first, origin=origin, **common))
            elif kind is Kind.FILE:
                tree.add(Entry(path, kind, origin=origin, **common,
                               data=DebugfsBlob(device, ino, meta["size"], keep)))
            elif kind is Kind.SYMLINK:
                tree.add(Entry(path, kind, origin=origin, target=meta.get("target")
                               or targets.get(ino, ""), **common))
            else:
                tree.add(Entry(path, kind, origin=origin, rdev=meta.get("rdev", (0, 0)),
                               **common))
    return tree


def _ext_stats(device: str, inodes: list[int]) -> dict[int, dict]:
    out = _debugfs(device, [f"stat <{ino}>" for ino in inodes])
    info: dict[int, dict] = {}
    for cmd, lines in _by_command(out):
        m = _STAT_CMD.fullmatch(cmd.strip())
        if not m:
            continue
        text = "\n".join(lines)
        meta: dict = {"mode": 0, "uid": 0, "gid": 0, "mtime": 0, "size": 0, "target": None}
        if (g := _MODE.search(text)):
            meta["mode"] = int(g[1], 8) & 0o7777
        if (g := _USER.search(text)):
            meta["uid"], meta["gid"] = int(g[1]), int(g[2])
        if (g := _SIZE.search(text)):
            meta["size"] = int(g[1])
        for line in lines:
            if (g := _MTIME.match(line)):
                t = int(g[1], 16)
                if t >= 1 << 31:
                    t -= 1 << 32
                if g[2]:
                    t += (int(g[2], 16) & 3) << 32
                meta["mtime"] = t
            elif line.startswith("Fast link dest: "):
                fl = _FAST_LINK.match(line)
                meta["target"] = fl[1] if fl else line[len('Fast link dest: "'):-1]
        if (g := _DEVICE.search(text)):
            meta["rdev"] = (int(g[1]), int(g[2]))
        info[int(m[1])] = meta
    return info


def _ext_slow_links(device: str, inodes: set[int]) -> dict[int, str]:
    """Targets of symlinks too long for the inode (stored in a data block): ``dump`` them."""
    if not inodes:
        return {}
    out: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="imgkit-links-") as tmp:
        _debugfs(device, [f"dump <{ino}> {_q(os.path.join(tmp, str(ino)))}"
                          for ino in sorted(inodes)])
        for ino in inodes:
            try:
                with open(os.path.join(tmp, str(ino)), "rb") as f:
                    out[ino] = f.read().decode("utf-8", "surrogateescape")
            except FileNotFoundError:
                out[ino] = ""
    return out
