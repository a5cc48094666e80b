"""A one-pass FAT12/16/32 writer.

Everything about the volume is planned before a byte is written: names (long and 8.3), the
number of clusters of every file and directory, the FAT type and geometry. Clusters are then
allocated contiguously (directories first, then files, both in the tree's canonical order), so
the FAT is a run of "next = this + 1" links with an end mark per chain, built once in memory
for the used part only. The image is written front to back in one pass: boot sector(s), both
FAT copies, the root directory, all other directories (batched), then file data streamed
with ``copy_file_range``/``sendfile``. Nothing is read back, nothing is rewritten, which is
why this is at copy speed where a general FAT library that edits a live filesystem per file
is quadratic.

Structures come from :mod:`imgkit.formats.fat.c_fat`, the declarations the reader uses too
(packed with :mod:`struct`: a large tree produces tens of thousands of 32-byte directory
entries).

Conventions (all chosen for reproducible output):

* Times are the tree's ``mtime`` converted as UTC (FAT has no time zone), 2-second
  resolution, clamped to 1980-01-01 .. 2107-12-31.
* The volume serial is the caller's, or derived from a hash of the label, geometry and tree
  metadata; never from the clock.
* FAT type and cluster size default to what ``mkfs.fat`` 4.2 picks for the same size.

Public API: :func:`plan_fat`, :func:`write_fat`, :func:`fat_size_for`, :class:`FatPlan`.
"""
from __future__ import annotations

import array
import errno
import hashlib
import io
import os
import re
import struct
import sys
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from imgkit.atomic import atomic_open
from imgkit.errors import InputError, LayoutError
from imgkit.formats.fat import c_fat
from imgkit.formats.fat.c_fat import (
    ATTR_ARCHIVE,
    ATTR_DIRECTORY,
    ATTR_LFN,
    ATTR_READ_ONLY,
    ATTR_VOLUME_ID,
    BPB,
    CASE_LOWER_BASE,
    CASE_LOWER_EXT,
    DIRENT,
    EBPB16,
    EBPB32,
    FSINFO,
    LFN,
    NO_NAME,
    SECTOR,
    lfn_checksum,
)
from imgkit.holes import all_holes
from imgkit.tree import Blob, BytesBlob, Entry, Kind, Tree

__all__ = ["FatPlan", "plan_fat", "write_fat", "fat_size_for"]

MIB = 1 << 20

_MIN_CLUSTERS = c_fat.MIN_CLUSTERS
_MAX_CLUSTERS = c_fat.MAX_CLUSTERS
_EOC = c_fat.EOC
_MEDIA = c_fat.MEDIA_FIXED
_SPC_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128)
_MAX_DIR_ENTRIES = c_fat.MAX_DIR_ENTRIES
_MAX_FILE_SIZE = c_fat.MAX_FILE_SIZE

_OEM = b"MSWIN4.1"   # what Microsoft recommends for the widest compatibility

# Characters allowed in an 8.3 name besides A-Z and 0-9 (space excluded on purpose: short
# names with spaces confuse too many tools, such names get a long name instead).
_SFN_EXTRA = set("!#$%&'()-@^_`{}~")
_SFN_OK = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") | _SFN_EXTRA
# What no FAT name may contain (long names included), as Linux vfat and Windows refuse.
_BAD_CHARS = re.compile(r'[\x00-\x1f"*/:<>?\\|]')


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------
#: What every file node has as children: one shared empty list, not one each.
_NO_CHILDREN: list = []


class _Node:
    """One directory entry to be: its FAT names, size and clusters."""

    __slots__ = ("entry", "data", "size", "is_dir", "short", "lfn", "case", "attr",
                 "first", "nclus", "children", "nentries", "mtime", "parent")

    def __init__(self, entry: Entry, data: Blob | None, size: int, is_dir: bool,
                 attr: int) -> None:
        self.entry = entry
        self.data = data
        self.size = size
        self.is_dir = is_dir
        self.attr = attr
        self.mtime = entry.mtime
        self.short = b""
        self.lfn: bytes | None = None      # UTF-16-LE long name, when one is stored
        self.case = 0
        self.first = 0
        self.nclus = 0
        self.children: list[_Node] = [] if is_dir else _NO_CHILDREN
        self.nentries = 0                   # 32-byte slots this node takes in its parent
        self.parent: _Node | None = None


@dataclass(frozen=True)
class FatPlan:
    """The complete layout of one FAT volume; :func:`write_fat` only executes it.

    Sizes are bytes unless named ``*_sectors``. ``min_size`` is the smallest volume the
    same tree fits in with the same options (what ``size=None`` would choose).
    """

    fat_type: int
    size: int
    min_size: int
    cluster_size: int
    reserved_sectors: int
    fat_sectors: int
    num_fats: int
    root_entries: int
    total_sectors: int
    clusters: int
    used_clusters: int
    data_start_sector: int
    hidden_sectors: int
    label: str
    serial: int
    files: int
    directories: int
    _root: _Node = field(repr=False, compare=False)
    _dirs: list = field(repr=False, compare=False)      # in allocation order, root first
    _files: list = field(repr=False, compare=False)     # in allocation order
    _tree: Tree = field(repr=False, compare=False)
    _options: dict = field(repr=False, compare=False)

    sector_size: int = SECTOR

    @property
    def sectors_per_cluster(self) -> int:
        return self.cluster_size // SECTOR

    @property
    def free_clusters(self) -> int:
        return self.clusters - self.used_clusters

    @property
    def free_bytes(self) -> int:
        return self.free_clusters * self.cluster_size


@dataclass(frozen=True)
class _Geometry:
    fat_type: int
    spc: int
    total_sectors: int
    reserved: int
    fat_sectors: int
    root_sectors: int
    data_start: int
    clusters: int


def _fat_sectors_for(fat_type: int, clusters: int) -> int:
    return -(-((clusters + 2) * fat_type) // (SECTOR * 8))


def _root_sectors(fat_type: int, root_entries: int) -> int:
    return 0 if fat_type == 32 else -(-(root_entries * 32) // SECTOR)


def _geometry(total: int, fat_type: int, spc: int, reserved_min: int, root_entries: int,
              align: bool) -> _Geometry | None:
    """Geometry of a ``total``-sector volume, or None when nothing fits.

    The FAT must cover every cluster, and the cluster count depends on the FAT's size: grow
    the FAT from one sector until it covers what is left (this converges, monotonically).
    """
    rs = _root_sectors(fat_type, root_entries)

    def layout(fat: int) -> tuple[int, int] | None:
        meta = reserved_min + 2 * fat + rs
        start = -(-meta // spc) * spc if align else meta
        return None if start >= total else (start, (total - start) // spc)

    def enough(fat: int) -> bool:
        got = layout(fat)
        return got is not None and _fat_sectors_for(fat_type, got[1]) <= fat

    # FAT size f is enough when it covers the clusters left beside it; that test is
    # monotonic in f. Find an upper bound by iterating, then the smallest f by bisection
    # (the plain iteration can overshoot by a sector and lose clusters).
    hi = 1
    while not enough(hi):
        got = layout(hi)
        if got is None:
            return None
        hi = max(hi + 1, _fat_sectors_for(fat_type, got[1]))
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    start, clusters = layout(hi)  # type: ignore[misc]
    return _Geometry(fat_type, spc, total, start - 2 * hi - rs, hi, rs, start, clusters)


def _valid(geo: _Geometry | None) -> bool:
    return geo is not None and \
        _MIN_CLUSTERS[geo.fat_type] <= geo.clusters <= _MAX_CLUSTERS[geo.fat_type]


def _fat32_default_spc(total: int) -> int:
    """Microsoft's (and mkfs.fat's) FAT32 cluster size table."""
    mb = -(-total * SECTOR // MIB)
    return 64 if mb > 32768 else 32 if mb > 16384 else 16 if mb > 8192 else 8 if mb > 260 else 1


class _Sizing:
    """Chooses FAT type and cluster size for a volume, the way mkfs.fat 4.2 does."""

    def __init__(self, fat_type: int | None, spc: int | None, reserved: int | None,
                 root_entries: int, align: bool) -> None:
        self.fat_type = fat_type
        self.spc = spc
        self.reserved = reserved
        self.root_entries = root_entries
        self.align = align

    def reserved_for(self, fat_type: int) -> int:
        if self.reserved is not None:
            return self.reserved
        return 32 if fat_type == 32 else 1

    def geometry(self, total: int, fat_type: int, spc: int) -> _Geometry | None:
        return _geometry(total, fat_type, spc, self.reserved_for(fat_type),
                         self.root_entries, self.align)

    def choose(self, total: int) -> _Geometry:
        """Type and cluster size for ``total`` sectors; LayoutError when none is valid."""
        big = total * SECTOR >= 512 * MIB
        if self.spc is not None:
            order = [self.fat_type] if self.fat_type else ([32, 16, 12] if big else [12, 16, 32])
            for t in order:
                geo = self.geometry(total, t, self.spc)
                if _valid(geo):
                    return geo  # type: ignore[return-value]
        elif self.fat_type is None and not big:
            for spc in _SPC_CHOICES[2:]:          # mkfs.fat starts at 2 KiB clusters
                for t in (12, 16):
                    geo = self.geometry(total, t, spc)
                    if _valid(geo):
                        return geo  # type: ignore[return-value]
        else:
            t = self.fat_type or 32
            start = _fat32_default_spc(total) if t == 32 else 4
            # From the default, go up while there are too many clusters, down while too few.
            i = _SPC_CHOICES.index(start)
            for step in (1, -1):
                j = i
                while 0 <= j < len(_SPC_CHOICES):
                    geo = self.geometry(total, t, _SPC_CHOICES[j])
                    if _valid(geo):
                        return geo  # type: ignore[return-value]
                    if geo is not None:
                        too_many = geo.clusters > _MAX_CLUSTERS[t]
                        if too_many != (step == 1):
                            break
                    elif step == 1:
                        break
                    j += step
        what = f"FAT{self.fat_type}" if self.fat_type else "any FAT type"
        with_cs = f" with {self.spc * SECTOR}-byte clusters" if self.spc else ""
        raise LayoutError(
            f"a FAT volume of {total * SECTOR} bytes cannot be laid out as {what}{with_cs}: "
            f"expected a cluster count in FAT's valid ranges (FAT12 < 4085, FAT16 4087..65524, "
            f"FAT32 >= 65525)",
            hint="choose another size, FAT type or cluster size (or leave them unset)")

    def min_total(self, fat_type: int, spc: int, need: int) -> int | None:
        """Fewest sectors of a volume with ``need`` data clusters of this type and size."""
        clusters = max(need, _MIN_CLUSTERS[fat_type])
        if clusters > _MAX_CLUSTERS[fat_type]:
            return None
        fat = _fat_sectors_for(fat_type, clusters)
        meta = self.reserved_for(fat_type) + 2 * fat + _root_sectors(fat_type, self.root_entries)
        start = -(-meta // spc) * spc if self.align else meta
        total = start + clusters * spc
        return total if total <= 0xFFFFFFFF else None


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------
def _check_name(name: str, entry: Entry) -> bytes:
    """The UTF-16-LE long name, or InputError naming the path when FAT cannot hold it."""
    where = f" (from {entry.origin})" if entry.origin else ""
    bad = _BAD_CHARS.search(name)
    if bad:
        ch = bad.group()
        raise InputError(
            f"{entry.path!r} cannot be stored on FAT: its name contains {ch!r}{where}",
            hint='FAT names may not contain control characters or any of " * / : < > ? \\ |')
    if name[-1] in ". ":
        raise InputError(
            f"{entry.path!r} cannot be stored on FAT: its name ends with "
            f"{'a dot' if name[-1] == '.' else 'a space'}{where}",
            hint="FAT drivers strip trailing dots and spaces; rename the file")
    try:
        utf16 = name.encode("utf-16-le")
    except UnicodeEncodeError:
        raise InputError(
            f"{entry.path!r} cannot be stored on FAT: its name is not valid Unicode "
            f"(undecodable bytes){where}",
            hint="FAT long names are UTF-16; rename the file to valid UTF-8") from None
    if len(utf16) > 510:
        raise InputError(
            f"{entry.path!r} cannot be stored on FAT: its name is {len(utf16) // 2} UTF-16 "
            f"units long, expected at most 255{where}")
    return utf16


def _sfn_char(c: str) -> str:
    u = c.upper()
    return u if u in _SFN_OK else "_"


def _plain_83(name: str) -> tuple[str, str, int, bool] | None:
    """``(BASE, EXT, case_bits, exact)`` when ``name`` is an 8.3 name as it stands.

    ``exact`` is true when the name is all upper case (no long name needed); ``case_bits``
    is set when each part is entirely lower or upper case (NT case flags can carry it);
    otherwise it is -1 (mixed case: a long name is needed but the short name has no tail).
    """
    if len(name) > 12 or name[0] == ".":
        return None
    base, dot, ext = name.partition(".")
    if not base or len(base) > 8 or len(ext) > 3 or (dot and not ext) or "." in ext:
        return None
    ub, ue = base.upper(), ext.upper()
    for c in ub + ue:
        if c not in _SFN_OK:
            return None
    case = 0
    for part, upper, bit in ((base, ub, CASE_LOWER_BASE), (ext, ue, CASE_LOWER_EXT)):
        if part == upper:
            continue
        if part == part.lower():
            case |= bit
        else:
            case = -1
            break
    return ub, ue, case, case == 0


def _basis(name: str) -> tuple[str, str]:
    """The Windows basis-name for an 8.3 alias: upper case, invalid characters as ``_``,
    leading dots and all spaces dropped, embedded dots removed, base 8 and extension 3."""
    stripped = name.replace(" ", "").lstrip(".")
    dot = stripped.rfind(".")
    if dot >= 0:
        base, ext = stripped[:dot].replace(".", ""), stripped[dot + 1:]
    else:
        base, ext = stripped, ""
    base = "".join(map(_sfn_char, base))[:8]
    ext = "".join(map(_sfn_char, ext))[:3]
    return base or "_", ext


def _name_directory(parent: _Node, case_bits: bool) -> None:
    """Give every child of one directory its short name (and long name where needed; each
    child's ``lfn`` holds its UTF-16-LE name on entry, and keeps it only if it is needed).

    Plain 8.3 names are reserved first so that a generated ``~n`` alias never takes a name a
    later file needs as it stands. Aliases use one counter per (prefix, extension, tail
    width) and a set of taken names: a directory of thousands of names sharing their first
    six characters costs one set lookup per name, not a scan.
    """
    used: set[bytes] = set()
    pending: list[tuple[_Node, str]] = []
    for node in parent.children:
        name = node.entry.name
        p = _plain_83(name)
        if p is not None and (p[3] or (case_bits and p[2] > 0)):
            node.short = (p[0].ljust(8) + p[1].ljust(3)).encode("ascii")
            node.case = p[2]
            node.lfn = None
            used.add(node.short)
        else:
            pending.append((node, name))
    counters: dict[tuple[str, str, int], int] = {}
    for node, name in pending:
        p = _plain_83(name)
        if p is not None:
            short = (p[0].ljust(8) + p[1].ljust(3)).encode("ascii")
            if short not in used:
                node.short = short
                used.add(short)
                continue
        base, ext = _basis(name)
        ext11 = ext.ljust(3)
        for width in range(2, 8):                 # "~1" .. "~999999"
            key = (base[:8 - width], ext, width)
            n = counters.get(key, 10 ** (width - 2))
            limit = 10 ** (width - 1)
            while n < limit:
                short = (f"{key[0]}~{n}".ljust(8) + ext11).encode("ascii")
                n += 1
                if short not in used:
                    break
            else:
                counters[key] = n
                continue
            counters[key] = n
            node.short = short
            used.add(short)
            break
        else:  # pragma: no cover - needs about a million similar names in one directory
            raise LayoutError(f"no free 8.3 alias left for {node.entry.path!r}")


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------
_SPECIAL = {Kind.SYMLINK: "a symlink", Kind.CHAR: "a character device",
            Kind.BLOCK: "a block device", Kind.FIFO: "a fifo", Kind.SOCKET: "a socket"}


def _build_nodes(tree: Tree, case_bits: bool, skip_special: bool) -> tuple[_Node, list[_Node], list[_Node]]:
    """Nodes for every directory and file, named; returns (root, dirs, files)."""
    root = _Node(tree.root, None, 0, True, ATTR_DIRECTORY)
    dirs: dict[str, _Node] = {"": root}
    dir_list: list[_Node] = [root]
    files: list[_Node] = []
    folded: dict[str, dict[str, str]] = {"": {}}
    for e in tree:
        if not e.path:
            continue
        parent = e.parent
        if parent not in dirs:
            continue                      # below a skipped entry (cannot happen for dirs)
        kind = e.kind
        if kind in _SPECIAL:
            if skip_special:
                continue
            where = f" (from {e.origin})" if e.origin else ""
            raise InputError(
                f"{e.path!r} is {_SPECIAL[kind]}, which a FAT filesystem cannot hold{where}",
                hint="remove it from the tree, or pass skip_special=True to leave such "
                     "entries out")
        ro = 0 if e.mode & 0o222 else ATTR_READ_ONLY
        if kind is Kind.DIR:
            node = _Node(e, None, 0, True, ATTR_DIRECTORY | ro)
            dirs[e.path] = node
            dir_list.append(node)
            folded[e.path] = {}
        else:
            src = e
            if kind is Kind.HARDLINK:
                src = tree.get(e.target or "")  # type: ignore[assignment]
                if src is None or src.kind is not Kind.FILE:
                    raise InputError(
                        f"hard link {e.path!r} points at {e.target!r}, which is not a regular "
                        f"file in the tree" + (f" (from {e.origin})" if e.origin else ""))
                ro = 0 if src.mode & 0o222 else ATTR_READ_ONLY
            size = src.size
            if size > _MAX_FILE_SIZE:
                raise LayoutError(
                    f"{e.path!r} is {size} bytes; a FAT file holds at most {_MAX_FILE_SIZE}",
                    hint="use another filesystem (ext4, ISO) for files of 4 GiB or more")
            node = _Node(e, src.data, size, False, ATTR_ARCHIVE | ro)
            files.append(node)
        name = e.name
        node.lfn = _check_name(name, e)     # the candidate long name (see _name_directory)
        low = name.lower()
        seen = folded[parent]
        other = seen.get(low)
        if other is not None:
            raise InputError(
                f"{e.path!r} and {other!r} differ only in letter case; FAT compares names "
                f"ignoring case, so one directory cannot hold both",
                hint="rename one of them")
        seen[low] = e.path
        node.parent = dirs[parent]
        dirs[parent].children.append(node)
    for directory in dir_list:
        _name_directory(directory, case_bits)
        for node in directory.children:
            node.nentries = 1 + (-(-len(node.lfn) // 26) if node.lfn else 0)
    return root, dir_list, files


def _dir_slots(node: _Node, is_root: bool, label: bool) -> int:
    own = (1 if label else 0) if is_root else 2
    return own + sum(c.nentries for c in node.children)


def _normalize_label(label: str) -> bytes:
    if not label:
        return b""
    up = label.upper()
    bad = [c for c in up if c != " " and c not in _SFN_OK]
    if len(up) > 11 or bad or up[0] == " ":
        raise InputError(
            f"FAT volume label {label!r} is invalid: expected at most 11 characters of "
            f"A-Z 0-9 {''.join(sorted(_SFN_EXTRA))} or space, not starting with a space",
            hint="pick a shorter ASCII label, such as 'ESP' or 'BOOT'")
    return up.ljust(11).encode("ascii")


def plan_fat(
    tree: Tree,
    *,
    size: int | str | None = None,
    fat_type: int | None = None,
    cluster_size: int | None = None,
    label: str = "",
    serial: int | None = None,
    reserved_sectors: int | None = None,
    root_entries: int = 512,
    hidden_sectors: int = 0,
    slack: int | float = 0,
    align: bool = True,
    case_bits: bool = False,
    skip_special: bool = False,
) -> FatPlan:
    """Plan a FAT volume holding ``tree``; pure (reads no file content).

    ``size``: volume bytes (a multiple of 512), or None/``"auto"`` for the smallest that fits
    (plus ``slack``: extra free bytes if an int, a fraction of the content if a float).
    ``fat_type`` 12/16/32 and ``cluster_size`` (bytes, 512..65536, a power of two) default to
    mkfs.fat's choice for the size: FAT32 from 512 MiB, below that FAT12 or FAT16 by cluster
    count, 2 KiB clusters doubled until the count is valid. ``reserved_sectors`` is a
    minimum (default 1, FAT32 32); with ``align`` it grows so data starts on a cluster
    boundary. ``root_entries`` (FAT12/16) is a minimum and grows to fit the root.
    ``hidden_sectors`` is the partition's start sector (syslinux and Windows read it).
    ``case_bits`` stores all-lower-case 8.3 names with NT case flags instead of a long name
    (pyfatfs and some boot loaders ignore those flags; long names are understood everywhere
    that matters). ``skip_special`` leaves out symlinks, devices, fifos and sockets instead
    of failing on them. Raises InputError for names FAT cannot hold, LayoutError when the
    tree does not fit ``size``.
    """
    options = dict(size=size, fat_type=fat_type, cluster_size=cluster_size, label=label,
                   serial=serial, reserved_sectors=reserved_sectors, root_entries=root_entries,
                   hidden_sectors=hidden_sectors, slack=slack, align=align,
                   case_bits=case_bits, skip_special=skip_special)
    if fat_type not in (None, 12, 16, 32):
        raise InputError(f"FAT type must be 12, 16 or 32, got {fat_type!r}")
    spc: int | None = None
    if cluster_size is not None:
        if cluster_size < SECTOR or cluster_size > 65536 or cluster_size & (cluster_size - 1):
            raise InputError(
                f"FAT cluster size must be a power of two from 512 to 65536 bytes, "
                f"got {cluster_size}")
        spc = cluster_size // SECTOR
    if reserved_sectors is not None and (reserved_sectors < 1 or reserved_sectors > 0xFFFF
                                         or (fat_type == 32 and reserved_sectors < 8)):
        raise InputError(
            f"reserved_sectors must be 1..65535 (FAT32: at least 8, room for the backup boot "
            f"sector), got {reserved_sectors}")
    if not 0 <= hidden_sectors <= 0xFFFFFFFF:
        raise InputError(f"hidden_sectors must fit in 32 bits, got {hidden_sectors}")
    if serial is not None and not 0 <= serial <= 0xFFFFFFFF:
        raise InputError(f"FAT volume serial must fit in 32 bits, got {serial:#x}")
    if isinstance(slack, bool) or not isinstance(slack, (int, float)) or slack < 0:
        raise InputError(f"slack must be a non-negative byte count or fraction, got {slack!r}")
    label11 = _normalize_label(label)

    root, dirs, files = _build_nodes(tree, case_bits, skip_special)

    # The FAT12/16 root directory is a fixed region: size it for the root's entries.
    root_slots = _dir_slots(root, True, bool(label11))
    entries = max(root_entries, -(-root_slots // 16) * 16)
    if entries > 0xFFF0:
        if fat_type in (12, 16):
            raise LayoutError(
                f"the root directory needs {root_slots} entries; a FAT{fat_type} root holds at "
                f"most 65520", hint="use FAT32, or move files into a subdirectory")
        fat_type = 32
    sizing = _Sizing(fat_type, spc, reserved_sectors, entries, align)

    # Cluster demand per cluster size, computed lazily (file sizes do not change).
    sub_slots = [_dir_slots(d, False, False) for d in dirs[1:]]
    for d, slots in zip(dirs[1:], sub_slots, strict=False):
        if slots > _MAX_DIR_ENTRIES:
            raise LayoutError(
                f"directory {d.entry.path!r} needs {slots} entries; a FAT directory holds at "
                f"most {_MAX_DIR_ENTRIES}", hint="spread its files over subdirectories")
    if root_slots > _MAX_DIR_ENTRIES:
        raise LayoutError(f"the root directory needs {root_slots} entries; a FAT directory "
                          f"holds at most {_MAX_DIR_ENTRIES}")
    file_sizes = [f.size for f in files]
    base_cache: dict[int, int] = {}

    def content_clusters(t: int, s: int) -> int:
        """Clusters the files and directories take (FAT32: the root directory too)."""
        n = base_cache.get(s)
        if n is None:
            cs = s * SECTOR
            n = base_cache[s] = sum(-(-x // cs) for x in file_sizes) + \
                sum(-(-(x * 32) // cs) for x in sub_slots)
        if t == 32:
            n += max(1, -(-(root_slots * 32) // (s * SECTOR)))
        return n

    def demand(t: int, s: int) -> int:
        """Clusters an auto-sized volume needs: the content plus the slack."""
        n = content_clusters(t, s)
        cs = s * SECTOR
        extra = slack if isinstance(slack, int) else int(slack * n * cs)
        return n + -(-extra // cs)

    types = [fat_type] if fat_type else [12, 16, 32]
    spcs = [spc] if spc else list(_SPC_CHOICES)
    minima = sorted({m for t in types for s in spcs
                     if (m := sizing.min_total(t, s, demand(t, s))) is not None})
    if not minima:
        raise LayoutError(
            f"the tree ({sum(file_sizes)} bytes in {len(files)} files) is too big for "
            f"{'FAT' + str(fat_type) if fat_type else 'FAT'}"
            + (f" with {cluster_size}-byte clusters" if cluster_size else ""),
            hint="use FAT32 or a bigger cluster size")

    def auto_total() -> tuple[int, _Geometry]:
        total = minima[0]
        for _ in range(200):
            try:
                geo = sizing.choose(total)
            except LayoutError:
                geo = None
            if geo is not None:
                m = sizing.min_total(geo.fat_type, geo.spc, demand(geo.fat_type, geo.spc))
                if m is not None and m <= total:
                    return total, geo
                if m is not None:
                    total = m
                    continue
            higher = [m for m in minima if m > total]
            if not higher:
                break
            total = higher[0]
        raise LayoutError(  # pragma: no cover - the candidate list always ends somewhere
            "could not find a FAT geometry for the tree with these options",
            hint="set fat_type and cluster_size explicitly")

    min_total, min_geo = auto_total()
    if size is None or size == "auto":
        total, geo = min_total, min_geo
    else:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % SECTOR:
            raise InputError(f"FAT volume size must be a positive multiple of 512 bytes, "
                             f"got {size!r}")
        total = size // SECTOR
        if total > 0xFFFFFFFF:
            raise LayoutError(f"a FAT volume holds at most {0xFFFFFFFF * SECTOR} bytes, "
                              f"got {size}")
        geo = sizing.choose(total)
    # Slack only sizes auto volumes; a given size just has to hold the content.
    cs = geo.spc * SECTOR
    content = content_clusters(geo.fat_type, geo.spc)
    if content > geo.clusters:
        raise LayoutError(
            f"the tree does not fit in a {total * SECTOR}-byte FAT{geo.fat_type} volume: it "
            f"needs {content} clusters of {cs} bytes ({content * cs} bytes of data area, "
            f"{min_total * SECTOR} bytes of volume), the volume has {geo.clusters} "
            f"({geo.clusters * cs} bytes)",
            hint=f"give the volume at least {min_total * SECTOR} bytes, or leave its size "
                 f"to be computed")

    # Allocate: FAT32 root first, then directories, then files, all contiguous.
    nxt = 2
    alloc_dirs = dirs if geo.fat_type == 32 else dirs[1:]
    for d in alloc_dirs:
        slots = root_slots if d is root else _dir_slots(d, False, False)
        d.nclus = max(1, -(-(slots * 32) // cs))
        d.first = nxt
        nxt += d.nclus
    for f in files:
        if f.size:
            f.nclus = -(-f.size // cs)
            f.first = nxt
            nxt += f.nclus
    used = nxt - 2
    assert used == content

    if serial is None:
        serial = _derive_serial(label11, geo, hidden_sectors, dirs, files)

    return FatPlan(
        fat_type=geo.fat_type, size=total * SECTOR, min_size=min_total * SECTOR,
        cluster_size=cs, reserved_sectors=geo.reserved, fat_sectors=geo.fat_sectors,
        num_fats=2, root_entries=0 if geo.fat_type == 32 else entries,
        total_sectors=total, clusters=geo.clusters, used_clusters=used,
        data_start_sector=geo.data_start, hidden_sectors=hidden_sectors,
        label=label11.decode("ascii").rstrip(), serial=serial,
        files=len(files), directories=len(dirs) - 1,
        _root=root, _dirs=dirs, _files=files, _tree=tree, _options=options)


def _derive_serial(label: bytes, geo: _Geometry, hidden: int, dirs: list[_Node],
                   files: list[_Node]) -> int:
    """A serial that depends only on what goes into the volume (reproducible builds)."""
    h = hashlib.sha256()
    h.update(b"imgkit-fat\0%s\0%d %d %d %d\0" % (label, geo.fat_type, geo.spc,
                                                 geo.total_sectors, hidden))
    h.update("\0".join(f"{n.entry.path}/{n.mtime}" for n in dirs).encode("utf-8", "surrogateescape"))
    h.update("\0".join(f"{n.entry.path}:{n.size}:{n.mtime}" for n in files)
             .encode("utf-8", "surrogateescape"))
    return int.from_bytes(h.digest()[:4], "little")


def fat_size_for(tree: Tree, **options: Any) -> int:
    """The smallest volume size in bytes that holds ``tree`` (options as for :func:`plan_fat`)."""
    options.pop("size", None)
    return plan_fat(tree, size=None, **options).size


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------
def _boot_code(at: int) -> bytes:
    """A stub that prints a message and waits for a key, for disks booted by mistake."""
    msg_addr = 0x7C00 + at + 29
    code = (b"\x0e\x1f"                                  # push cs; pop ds
            + b"\xbe" + struct.pack("<H", msg_addr)       # mov si, msg
            + b"\xac"                                     # next: lodsb
            + b"\x22\xc0"                                 # and al, al
            + b"\x74\x0b"                                 # jz key
            + b"\x56"                                     # push si
            + b"\xb4\x0e"                                 # mov ah, 0Eh
            + b"\xbb\x07\x00"                             # mov bx, 0007h
            + b"\xcd\x10"                                 # int 10h
            + b"\x5e"                                     # pop si
            + b"\xeb\xf0"                                 # jmp next
            + b"\x32\xe4"                                 # key: xor ah, ah
            + b"\xcd\x16"                                 # int 16h
            + b"\xcd\x19"                                 # int 19h
            + b"\xeb\xfe")                                # jmp $
    assert len(code) == 29
    return code + b"This is not a bootable disk.\r\nPress any key to try again.\r\n\0"


def _boot_sector(plan: FatPlan) -> bytes:
    t = plan.fat_type
    label = plan.label.ljust(11).encode("ascii") if plan.label else NO_NAME
    total = plan.total_sectors
    small = total if t != 32 and total < 0x10000 else 0
    bpb = BPB.pack(jump=b"\xeb\x58\x90" if t == 32 else b"\xeb\x3c\x90", oem=_OEM,
                   bytes_per_sector=SECTOR, sectors_per_cluster=plan.sectors_per_cluster,
                   reserved_sectors=plan.reserved_sectors, num_fats=2,
                   root_entries=plan.root_entries, total_sectors16=small, media=_MEDIA,
                   fat_sectors16=0 if t == 32 else plan.fat_sectors, sectors_per_track=63,
                   heads=255, hidden_sectors=plan.hidden_sectors,
                   total_sectors32=0 if small else total)
    common = dict(drive=0x80, boot_signature=0x29, serial=plan.serial, label=label)
    if t == 32:
        ext = EBPB32.pack(fat_sectors32=plan.fat_sectors, root_cluster=2, fsinfo_sector=1,
                          backup_boot_sector=6, fs_type=b"FAT32   ", **common)
    else:
        ext = EBPB16.pack(fs_type=b"FAT%d   " % t, **common)
    head = bpb + ext
    sector = bytearray(head + _boot_code(len(head)))
    sector.extend(bytes(510 - len(sector)))
    sector += b"\x55\xaa"
    assert len(sector) == SECTOR
    return bytes(sector)


def _fsinfo(plan: FatPlan) -> bytes:
    free = plan.free_clusters
    nxt = plan.used_clusters + 2 if free else 0xFFFFFFFF
    return FSINFO.pack(lead_signature=c_fat.FSINFO_LEAD, struct_signature=c_fat.FSINFO_STRUCT,
                       free_count=free, next_free=nxt, trail_signature=c_fat.FSINFO_TRAIL)


def _fat_bytes(plan: FatPlan, chains: list[tuple[int, int]]) -> bytes:
    """The used part of one FAT: ``chains`` are (first, count) runs, all contiguous."""
    t = plan.fat_type
    used = plan.used_clusters
    eoc = _EOC[t]
    code = "H" if t != 32 else "I"
    fat = array.array(code, [(_MEDIA | (eoc & ~0xFF)) & eoc, eoc])
    fat.extend(range(3, used + 3))
    for first, count in chains:
        fat[first + count - 1] = eoc
    if t == 12:
        if len(fat) % 2:
            fat.append(0)
        out = bytearray()
        it = iter(fat)
        for a, b in zip(it, it, strict=False):
            out += bytes((a & 0xFF, (a >> 8) | ((b & 0xF) << 4), b >> 4))
        return bytes(out)
    assert fat.itemsize == (2 if t != 32 else 4)
    if sys.byteorder == "big":  # pragma: no cover
        fat.byteswap()
    return fat.tobytes()


class _Clock:
    """FAT (date, time, tenths) of tree mtimes, cached: trees share few distinct times."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[int, int, int]] = {}

    def __call__(self, mtime: int) -> tuple[int, int, int]:
        got = self._cache.get(mtime)
        if got is None:
            got = self._cache[mtime] = c_fat.pack_time(mtime)
        return got


def _dirent(short: bytes, attr: int, case: int, cluster: int, size: int,
            when: tuple[int, int, int]) -> bytes:
    date, tod, tenth = when
    return _DIRENT_PACK(short, attr, case, tenth, tod, date, date, cluster >> 16, tod, date,
                        cluster & 0xFFFF, size)


_DIRENT_PACK = DIRENT.struct.pack     # positional, in DIRENT's field order (the hot path)


def _lfn_entries(utf16: bytes, checksum: int) -> bytes:
    units = len(utf16) // 2
    per = c_fat.LFN_UNITS * 2
    n = -(-units // c_fat.LFN_UNITS)
    padded = utf16 + (b"\0\0" if units % c_fat.LFN_UNITS else b"")
    padded += b"\xff" * (n * per - len(padded))
    out = []
    for i in range(n, 0, -1):
        c = padded[(i - 1) * per:i * per]
        # LFN's fields in order: order, name1, attr, type, checksum, name2, cluster, name3.
        out.append(_LFN_PACK(i | (c_fat.LFN_LAST if i == n else 0), c[:10], ATTR_LFN, 0,
                             checksum, c[10:22], 0, c[22:]))
    return b"".join(out)


_LFN_PACK = LFN.struct.pack


def _directory(node: _Node, parent_cluster: int, is_root: bool, label: bytes,
               clock: _Clock) -> bytes:
    parts: list[bytes] = []
    when = clock(node.mtime)
    if is_root:
        if label:
            parts.append(_dirent(label, ATTR_VOLUME_ID, 0, 0, 0, when))
    else:
        parts.append(_dirent(c_fat.DOT, node.attr, 0, node.first, 0, when))
        parts.append(_dirent(c_fat.DOTDOT, node.attr, 0, parent_cluster, 0, when))
    for c in node.children:
        if c.lfn is not None:
            parts.append(_lfn_entries(c.lfn, lfn_checksum(c.short)))
        parts.append(_dirent(c.short, c.attr, c.case, c.first, 0 if c.is_dir else c.size,
                             clock(c.mtime)))
    return b"".join(parts)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
class _Sink:
    """Positional writes into the output: a file descriptor when there is one."""

    _CHUNK = 1 << 20

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        try:
            self.fd: int | None = f.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self.fd = None
        self.can_cfr = hasattr(os, "copy_file_range")
        self.can_sendfile = hasattr(os, "sendfile")

    def reset(self, size: int) -> None:
        """Empty the output and make it ``size`` bytes of holes."""
        if self.fd is not None:
            self.f.flush()
            all_holes(self.fd, size)
        else:
            self.f.seek(0)
            self.f.truncate(0)
            self.size = size

    def finish(self) -> None:
        if self.fd is None:
            end = self.f.seek(0, io.SEEK_END)
            if end < self.size:
                self.f.seek(self.size - 1)
                self.f.write(b"\0")
            self.f.flush()

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        if self.fd is not None:
            view = memoryview(data)
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        else:
            self.f.seek(offset)
            self.f.write(data)

    def copy(self, node: _Node, offset: int) -> None:
        size = node.size
        blob = node.data
        if blob is None:
            raise InputError(f"{node.entry.path!r} has {size} bytes but no content")
        if isinstance(blob, BytesBlob):
            self.pwrite(blob.data[:size], offset)
            done = min(size, len(blob.data))
            if done != size:
                raise InputError(f"{node.entry.path!r} should have {size} bytes of content "
                                 f"but has {done}")
            return
        rng = blob.host_range() if self.fd is not None else None
        if rng is not None:
            src = os.open(rng[0], os.O_RDONLY | os.O_CLOEXEC)
            try:
                done = self._copy_fd(src, rng[1], offset, size)
            finally:
                os.close(src)
        else:
            done = 0
            with blob.open() as r:
                while done < size:
                    chunk = r.read(min(self._CHUNK, size - done))
                    if not chunk:
                        break
                    self.pwrite(chunk, offset + done)
                    done += len(chunk)
        if done != size:
            raise InputError(
                f"{node.entry.path!r} should have {size} bytes of content but only {done} "
                f"could be read (did the file change while the image was written?)")

    def _copy_fd(self, src: int, src_off: int, dst_off: int, size: int) -> int:
        assert self.fd is not None
        done = 0
        while done < size and self.can_cfr:
            try:
                n = os.copy_file_range(src, self.fd, size - done, src_off + done, dst_off + done)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL,
                                 errno.EPERM, errno.EBADF):
                    self.can_cfr = False
                    break
                raise
            if n == 0:
                return done
            done += n
        if done < size and self.can_sendfile:
            os.lseek(self.fd, dst_off + done, os.SEEK_SET)
            while done < size:
                try:
                    n = os.sendfile(self.fd, src, src_off + done, size - done)
                except OSError as exc:
                    if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        self.can_sendfile = False
                        break
                    raise
                if n == 0:
                    return done
                done += n
        while done < size:
            chunk = os.pread(src, min(self._CHUNK, size - done), src_off + done)
            if not chunk:
                return done
            self.pwrite(chunk, dst_off + done)
            done += len(chunk)
        return done


def write_fat(tree: Tree, out: BinaryIO | str | os.PathLike, plan: FatPlan | None = None,
              **options: Any) -> FatPlan:
    """Write the FAT volume for ``tree`` into ``out`` in one pass; returns the plan used.

    ``out`` is a path (written atomically: a temporary name renamed on success) or a binary
    file object, whose content is replaced (it ends up exactly ``plan.size`` bytes, sparse
    where the volume is empty). Pass a ``plan`` from :func:`plan_fat`, or the options of
    :func:`plan_fat` to make one. A plan made for another tree object is redone with the
    same options.
    """
    if plan is None:
        plan = plan_fat(tree, **options)
    elif options:
        raise InputError("pass either a plan or planning options to write_fat, not both")
    elif plan._tree is not tree:
        plan = plan_fat(tree, **plan._options)
    if isinstance(out, (str, os.PathLike)):
        with atomic_open(out) as f:
            _write(plan, f)
    else:
        _write(plan, out)
    return plan


def _write(plan: FatPlan, f: BinaryIO) -> None:
    sink = _Sink(f)
    sink.reset(plan.size)
    t = plan.fat_type
    root = plan._root
    label = plan.label.ljust(11).encode("ascii") if plan.label else b""
    clock = _Clock()

    boot = _boot_sector(plan)
    sink.pwrite(boot, 0)
    if t == 32:
        info = _fsinfo(plan)
        sink.pwrite(info, SECTOR)
        sink.pwrite(boot, 6 * SECTOR)
        sink.pwrite(info, 7 * SECTOR)

    dirs: list[_Node] = plan._dirs
    files: list[_Node] = [n for n in plan._files if n.nclus]
    chains = [(d.first, d.nclus) for d in dirs if d.nclus]
    chains += [(n.first, n.nclus) for n in files]
    fat = _fat_bytes(plan, chains)
    fat_off = plan.reserved_sectors * SECTOR
    sink.pwrite(fat, fat_off)
    sink.pwrite(fat, fat_off + plan.fat_sectors * SECTOR)

    cs = plan.cluster_size
    data_off = plan.data_start_sector * SECTOR

    def cluster_offset(c: int) -> int:
        return data_off + (c - 2) * cs

    # Directories: contiguous clusters, written in batches of a few MiB.
    buf = bytearray()
    buf_off = -1
    for node in dirs:
        pc = 0 if node.parent is root or node.parent is None else node.parent.first
        raw = _directory(node, pc, node is root, label, clock)
        if node is root and t != 32:
            sink.pwrite(raw, (plan.reserved_sectors + 2 * plan.fat_sectors) * SECTOR)
            continue
        off = cluster_offset(node.first)
        if buf_off < 0:
            buf_off = off
        elif buf_off + len(buf) != off or len(buf) >= 8 * MIB:
            sink.pwrite(buf, buf_off)
            buf, buf_off = bytearray(), off
        buf += raw
        buf += bytes(node.nclus * cs - len(raw))
    if buf:
        sink.pwrite(buf, buf_off)

    for n in files:
        sink.copy(n, cluster_offset(n.first))
    sink.finish()
