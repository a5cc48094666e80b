"""Disk layout planning: where every partition goes, decided before a byte is written.

Pure: a :class:`DiskSpec` goes in, a frozen :class:`Plan` comes out, no I/O. Everything that
can be wrong with a layout (overlaps, content that does not fit, too many partitions, a disk
that is too small) is found here, with messages that name the partitions, their byte ranges
and a way out, so the disk writer only ever executes a plan known to be valid.

Placement rules:

* partitions are placed in the order given; each starts at the next multiple of
  ``alignment`` after the previous one (or at its fixed ``offset``), skipping reserved ranges;
* ``size`` is bytes, a percentage of the disk, ``"auto"`` (content size plus slack, rounded up
  to the alignment) or ``"grow"`` (as large as the rest of the disk allows; at most one);
* a logical MBR partition gets its EBR in the first aligned sector before it, and all logical
  partitions together form one extended partition (they must be listed one after another);
* an automatic disk size ends at the last partition plus the backup GPT, rounded up to
  ``size_align`` (default: the alignment);
* a GPT may be shaped: its entry array moved (``gpt_entries_offset``), sized
  (``gpt_entries``), the first usable LBA set, the backup left out;
* ``table = "none"``: no partition table at all, each "partition" only a byte range that an
  image goes into (flash layouts).
"""
from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from imgkit.disk import parttypes
from imgkit.errors import InputError, LayoutError
from imgkit.formats import gpt as _gpt
from imgkit.formats import mbr as _mbr
from imgkit.sizes import (
    AUTO,
    GROW,
    MiB,
    Percent,
    format_size,
    format_size_and_bytes,
    parse_size,
    parse_size_spec,
)

Table = Literal["gpt", "mbr", "none"]

MAX_MBR_PRIMARIES = 4
MAX_GPT_ENTRIES = _gpt.DEFAULT_ENTRIES


@dataclass(frozen=True)
class Reserved:
    """A byte range ``[start, end)`` no partition may use (boot code, a bootloader's blob)."""

    start: int
    end: int
    what: str = "reserved range"
    #: It may cover the partition table's own structures (the bytes there are the table's:
    #: a blob with holes where the MBR or GPT goes, as genimage's ``holes``).
    over_tables: bool = False


@dataclass(frozen=True)
class PartitionSpec:
    """What the user asks for one partition.

    ``size``: bytes, a size string (``"64M"``), a percentage of the disk (``"25%"``),
    ``"auto"`` (the default: ``content_size`` plus ``slack``) or ``"grow"``.
    ``content_size``: bytes of the image that will be copied in, if known.
    ``label``: the GPT partition name (defaults to ``name``).
    ``attributes``: GPT attribute bits (an int, names such as ``"read-only"``, or bit numbers).
    ``bootable``: the MBR active flag, or on GPT the legacy-BIOS-bootable attribute (bit 2).
    ``guid``: the GPT unique partition GUID; derived from the disk's seed when not given.
    ``logical``: an MBR logical partition (inside the extended partition).
    ``hybrid``: on GPT, mirror this partition into a hybrid MBR (at most three);
    ``mbr_type`` then names its MBR type when ``type`` has none (e.g. ``root-x86-64``).
    ``align``: where its start may go, when not the disk's alignment (a multiple of the sector).
    """

    name: str
    type: str | int | uuid.UUID = "linux"
    size: int | str | Percent | None = None
    offset: int | str | None = None
    content_size: int | None = None
    label: str | None = None
    attributes: int | str | Sequence[int | str] = 0
    bootable: bool = False
    guid: uuid.UUID | str | None = None
    logical: bool = False
    hybrid: bool = False
    mbr_type: str | int | None = None
    slack: int | str | None = None
    align: int | str | None = None


@dataclass(frozen=True)
class DiskSpec:
    """What the user asks for the whole disk.

    ``size``: bytes or a size string; ``None`` or ``"auto"`` sizes the disk to fit.
    ``alignment``: partition starts are multiples of it (default 1 MiB).
    ``reserved``: byte ranges kept free of partitions, as :class:`Reserved` or tuples
    ``(start, end[, what])``; on MBR, ``[0, 440)`` (the boot code area) is always allowed.
    ``seed``: every GUID and the MBR disk signature not given explicitly derive from it.
    ``auto_slack``: extra room added to every ``"auto"`` partition that sets no ``slack``.
    ``size_align``: an automatic disk size is rounded up to it (default: ``alignment``).
    GPT shape: ``gpt_entries`` entries (at least one per partition), the array at byte
    ``gpt_entries_offset`` (default: LBA 2), partitions from ``gpt_first_lba`` (default: right
    after the array), ``gpt_backup`` whether the backup header and array are written;
    ``protective_first``: a hybrid MBR's 0xEE entry is its first entry, else its last.
    ``auto_logical``: an MBR layout of more than four partitions, none marked logical, gets
    its fourth and later ones as logical partitions (else: an error saying to mark them).
    """

    table: Table = "gpt"
    partitions: tuple[PartitionSpec, ...] = ()
    size: int | str | None = None
    alignment: int | str = MiB
    sector_size: int = 512
    reserved: tuple[Reserved | tuple, ...] = ()
    seed: str = "imgkit"
    disk_guid: uuid.UUID | str | None = None
    disk_signature: int | None = None
    extended_type: str | int = "extended"
    auto_slack: int | str = 0
    size_align: int | str | None = None
    gpt_entries: int = _gpt.DEFAULT_ENTRIES
    gpt_entries_offset: int | str | None = None
    gpt_first_lba: int | None = None
    gpt_backup: bool = True
    protective_first: bool = True
    auto_logical: bool = False


@dataclass(frozen=True)
class PlannedPartition:
    """A placed partition: byte and sector positions, resolved types, GUIDs and flags.

    ``number`` is what the OS calls it (GPT entry slot; MBR 1-4 primary, 5+ logical).
    """

    number: int
    name: str
    label: str
    start: int
    size: int
    start_lba: int
    num_sectors: int
    last_lba: int
    type_guid: uuid.UUID | None
    mbr_type: int | None
    guid: uuid.UUID | None
    attributes: int
    bootable: bool
    logical: bool
    ebr_lba: int | None
    hybrid: bool
    content_size: int | None

    @property
    def end(self) -> int:
        """The first byte after the partition."""
        return self.start + self.size


@dataclass(frozen=True)
class ExtendedPartition:
    """The MBR extended partition that holds the logical partitions."""

    number: int
    type: int
    start: int
    size: int
    start_lba: int
    num_sectors: int


@dataclass(frozen=True)
class Plan:
    """A complete, validated layout; :func:`imgkit.disk.image.write_disk` executes it."""

    table: Table
    sector_size: int
    alignment: int
    disk_size: int
    disk_sectors: int
    first_usable_lba: int
    last_usable_lba: int
    partitions: tuple[PlannedPartition, ...]
    disk_guid: uuid.UUID | None
    disk_signature: int | None
    extended: ExtendedPartition | None
    reserved: tuple[Reserved, ...]
    num_entries: int = MAX_GPT_ENTRIES
    entries_lba: int = 2
    gpt_backup: bool = True
    protective_first: bool = True

    def partition(self, name: str) -> PlannedPartition:
        """The planned partition called ``name``."""
        for p in self.partitions:
            if p.name == name:
                return p
        raise InputError(f"no partition named {name!r} in the plan",
                         hint="partitions: " + ", ".join(p.name for p in self.partitions))

    @property
    def gpt(self) -> _gpt.GptGeometry | None:
        """Where the GPT structures are (``None`` on other tables)."""
        if self.table != "gpt":
            return None
        return _gpt.geometry(self.disk_sectors, sector_size=self.sector_size,
                             num_entries=self.num_entries, entries_lba=self.entries_lba,
                             first_usable_lba=self.first_usable_lba, backup=self.gpt_backup)

    @property
    def structures(self) -> tuple[Reserved, ...]:
        """Byte ranges the partition tables occupy (besides the 440-byte boot code area)."""
        return _structures(self.table, self.sector_size, self.gpt,
                           [p.ebr_lba for p in self.partitions if p.ebr_lba is not None])


# --------------------------------------------------------------------------------------------

def _align_up(n: int, a: int) -> int:
    return -(-n // a) * a


def _align_down(n: int, a: int) -> int:
    return n // a * a


def _rng(start: int, end: int) -> str:
    return f"[{start}, {end}) ({format_size(start)} .. {format_size(end)})"


def _structures(table: str, ss: int, geo: _gpt.GptGeometry | None,
                ebr_lbas: Iterable[int] = ()) -> tuple[Reserved, ...]:
    out = []
    if geo is not None:
        out += [Reserved(start, end, what) for start, end, what in geo.ranges()]
    elif table == "mbr":
        out.append(Reserved(_mbr.BOOT_CODE_SIZE, ss, "the MBR partition table"))
    for lba in ebr_lbas:
        out.append(Reserved(lba * ss, (lba + 1) * ss, f"the EBR at LBA {lba}"))
    return tuple(out)


def _reserved(items: Sequence[Reserved | tuple]) -> tuple[Reserved, ...]:
    out = []
    for item in items:
        r = item if isinstance(item, Reserved) else Reserved(*item)
        if not (isinstance(r.start, int) and isinstance(r.end, int) and 0 <= r.start < r.end):
            raise InputError(f"reserved range {item!r}: expected (start, end) bytes with "
                             "0 <= start < end")
        out.append(r)
    return tuple(out)


@dataclass
class _Part:
    """Working state of one partition while placing."""

    spec: PartitionSpec
    index: int
    size: int | None            # None for grow until resolved
    offset: int | None
    start: int = 0
    ebr: int | None = None      # byte offset of its EBR (logical only)
    align: int | None = None    # its own alignment, if it has one


def _gpt_shape(spec: DiskSpec, ss: int, disk_size: int | None) -> _gpt.GptGeometry | None:
    """The GPT geometry ``spec`` asks for (``None`` on other tables); without a disk size yet,
    one of zero sectors (no backup position)."""
    if spec.table != "gpt":
        return None
    entries_lba = 2
    if spec.gpt_entries_offset is not None:
        offset = parse_size(spec.gpt_entries_offset, what="GPT entry array offset")
        if offset % ss:
            raise LayoutError(f"GPT entry array offset {offset} is not a multiple of the "
                              f"{ss}-byte sector", hint=f"use {_align_up(offset, ss)}")
        entries_lba = offset // ss
    geo = _gpt.geometry(0, sector_size=ss, num_entries=spec.gpt_entries,
                        entries_lba=entries_lba, first_usable_lba=spec.gpt_first_lba,
                        backup=spec.gpt_backup)
    # The disk's size and the partition count are checked by the caller, naming partitions.
    _gpt.check_geometry(geo)
    return dataclasses.replace(geo, disk_sectors=(disk_size or 0) // ss)


def plan(spec: DiskSpec) -> Plan:
    """Place every partition of ``spec``; raise :class:`LayoutError` if it cannot be done."""
    table = spec.table
    if table not in ("gpt", "mbr", "none"):
        raise InputError(f"partition table: expected 'gpt', 'mbr' or 'none', got {table!r}")
    ss = spec.sector_size
    if ss not in (512, 1024, 2048, 4096):
        raise InputError(f"sector size: expected 512, 1024, 2048 or 4096, got {ss}")
    align = parse_size(spec.alignment, what="alignment")
    if align <= 0 or align % ss:
        raise InputError(f"alignment: expected a positive multiple of the {ss}-byte sector, "
                         f"got {align}")
    disk_size: int | None = None
    if spec.size is not None and not (isinstance(spec.size, str) and spec.size.strip() == AUTO):
        disk_size = parse_size(spec.size, what="disk size")
        if disk_size % ss:
            raise LayoutError(f"disk size {disk_size} is not a multiple of the {ss}-byte sector",
                              hint=f"use {_align_up(disk_size, ss)}")
    reserved = _reserved(spec.reserved)
    spec = _auto_logicals(spec)
    size_align = align if spec.size_align is None else \
        parse_size(spec.size_align, what="disk size alignment")
    if size_align <= 0 or size_align % ss:
        raise InputError(f"disk size alignment: expected a positive multiple of the {ss}-byte "
                         f"sector, got {size_align}")
    _gpt_shape(spec, ss, disk_size)
    _check_counts(spec)

    parts = [_resolve(p, i, spec, ss, align, disk_size) for i, p in enumerate(spec.partitions)]
    grow = [p for p in parts if p.size is None]

    if grow and disk_size is None:
        g = grow[0]
        if g.spec.content_size is None:
            raise LayoutError(f"partition {g.spec.name!r}: size 'grow' needs a fixed disk size",
                              hint="set the disk size, or give this partition a size")
        g.size = _align_up(g.spec.content_size + _slack(g.spec, spec), align)

    if grow and disk_size is not None:
        g = grow[0]
        lo, hi = 0, disk_size // ss
        # The largest grow size that still fits: placement only gets worse as it grows.
        while lo < hi:
            mid = (lo + hi + 1) // 2
            g.size = mid * ss
            try:
                _place(parts, spec, ss, align, reserved)
                _check_geometry(parts, spec, ss, disk_size, reserved)
                lo = mid
            except LayoutError:
                hi = mid - 1
        g.size = lo * ss
        if lo == 0:
            _place(parts, spec, ss, align, reserved)       # the real error if not the grow
            _check_geometry(parts, spec, ss, disk_size, reserved)
            raise LayoutError(f"partition {g.spec.name!r}: no room is left for size 'grow'",
                              hint="make the disk larger or the other partitions smaller")

    _place(parts, spec, ss, align, reserved)
    if disk_size is None:
        geo = _gpt_shape(spec, ss, None)
        heads = [s.end for s in _structures(table, ss, geo)] or [ss]
        end = max([p.start + p.size for p in parts] + [r.end for r in reserved] + heads)
        tail = geo.tail_sectors * ss if geo is not None else 0
        disk_size = _align_up(end + tail, size_align)
    _check_geometry(parts, spec, ss, disk_size, reserved)
    _check_contents(parts)
    return _finish(parts, spec, ss, align, disk_size, reserved)


def _auto_logicals(spec: DiskSpec) -> DiskSpec:
    """An MBR layout of more than four partitions, none marked logical: the fourth and later
    become logical partitions in an extended partition (which takes the fourth primary slot),
    as genimage and fdisk do."""
    parts = spec.partitions
    if not spec.auto_logical or spec.table != "mbr" or len(parts) <= MAX_MBR_PRIMARIES \
            or any(p.logical for p in parts):
        return spec
    first = MAX_MBR_PRIMARIES - 1
    return dataclasses.replace(spec, partitions=parts[:first] + tuple(
        dataclasses.replace(p, logical=True) for p in parts[first:]))


def _check_counts(spec: DiskSpec) -> None:
    names = [p.name for p in spec.partitions]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise InputError(f"partition names must be unique; used twice: {', '.join(dups)}")
    grows = [p.name for p in spec.partitions
             if isinstance(p.size, str) and p.size.strip().lower() == GROW]
    if len(grows) > 1:
        raise LayoutError(f"only one partition can have size 'grow', got {len(grows)}: "
                          f"{', '.join(grows)}",
                          hint="give all but one of them a fixed size or 'auto'")
    if spec.table == "none":
        return
    if spec.table == "gpt":
        if len(spec.partitions) > spec.gpt_entries:
            shaped = f" with gpt_entries = {spec.gpt_entries}" \
                if spec.gpt_entries != MAX_GPT_ENTRIES else ""
            raise LayoutError(f"a GPT{shaped} holds at most {spec.gpt_entries} partitions, "
                              f"got {len(spec.partitions)}",
                              hint="raise gpt_entries" if shaped else None)
        for p in spec.partitions:
            if p.logical:
                raise LayoutError(f"partition {p.name!r}: logical partitions exist only on MBR",
                                  hint="drop 'logical' (a GPT holds 128 partitions)")
        if sum(p.hybrid for p in spec.partitions) > 3:
            raise LayoutError("a hybrid MBR mirrors at most 3 GPT partitions, got "
                              f"{sum(p.hybrid for p in spec.partitions)}")
        return
    logical_idx = [i for i, p in enumerate(spec.partitions) if p.logical]
    primaries = len(spec.partitions) - len(logical_idx) + (1 if logical_idx else 0)
    if primaries > MAX_MBR_PRIMARIES:
        raise LayoutError(
            f"an MBR holds at most {MAX_MBR_PRIMARIES} primary partitions, this layout needs "
            f"{primaries}" + (" (counting the extended partition)" if logical_idx else ""),
            hint="mark the later partitions 'logical' (they go into an extended partition; "
                 "auto_logical = true does it for the fourth and later), or use a GPT table")
    if logical_idx and logical_idx != list(range(logical_idx[0], logical_idx[-1] + 1)):
        raise LayoutError("logical partitions must be listed one after another (they share "
                          "one extended partition)",
                          hint="move the primary partitions before or after the logical ones")
    for p in spec.partitions:
        if p.hybrid:
            raise LayoutError(f"partition {p.name!r}: 'hybrid' applies to GPT disks only")
        if p.attributes:
            raise LayoutError(f"partition {p.name!r}: attributes are a GPT feature",
                              hint="use 'bootable' for the MBR active flag")


def _slack(p: PartitionSpec, spec: DiskSpec) -> int:
    s = p.slack if p.slack is not None else spec.auto_slack
    return parse_size(s, what=f"slack of partition {p.name!r}")


def _resolve(p: PartitionSpec, index: int, spec: DiskSpec, ss: int, align: int,
             disk_size: int | None) -> _Part:
    """Turn the size and offset of one partition into bytes (``None`` size for 'grow')."""
    own_align = None
    if p.align is not None:
        own_align = parse_size(p.align, what=f"alignment of partition {p.name!r}")
        if own_align <= 0 or own_align % ss:
            raise InputError(f"alignment of partition {p.name!r}: expected a positive multiple "
                             f"of the {ss}-byte sector, got {own_align}")
    what = f"size of partition {p.name!r}"
    raw = AUTO if p.size is None else p.size
    size_spec = parse_size_spec(raw, what=what)
    if p.content_size is not None and (not isinstance(p.content_size, int) or p.content_size < 0):
        raise InputError(f"content size of partition {p.name!r}: expected bytes, "
                         f"got {p.content_size!r}")
    size: int | None
    if size_spec == GROW:
        size = None
    elif size_spec == AUTO:
        if p.content_size is None:
            raise LayoutError(f"partition {p.name!r}: size 'auto' needs the size of its content",
                              hint="give the partition a size such as '64M'")
        size = _align_up(max(p.content_size + _slack(p, spec), 1), own_align or align)
    elif isinstance(size_spec, Percent):
        if disk_size is None:
            raise LayoutError(f"partition {p.name!r}: size {size_spec} needs a fixed disk size",
                              hint="set the disk size or give the partition a size in bytes")
        size = size_spec.of(disk_size)
        size = _align_down(size, align) if size >= align else _align_down(size, ss)
    else:
        size = _align_up(size_spec, ss)
    if size is not None and size <= 0:
        raise LayoutError(f"partition {p.name!r}: size {raw!r} is zero",
                          hint="give a size of at least one sector")
    offset = None
    if p.offset is not None:
        offset = parse_size(p.offset, what=f"offset of partition {p.name!r}")
        if offset % ss:
            raise LayoutError(f"partition {p.name!r}: offset {offset} is not a multiple of the "
                              f"{ss}-byte sector", hint=f"use {_align_up(offset, ss)}")
    return _Part(p, index, size, offset, align=own_align)


def _place(parts: list[_Part], spec: DiskSpec, ss: int, align: int,
           reserved: tuple[Reserved, ...]) -> None:
    """Assign starts (and EBR positions) in order; overlaps are checked afterwards."""
    geo = _gpt_shape(spec, ss, None)
    cursor = geo.first_usable_lba * ss if geo is not None else (ss if spec.table == "mbr" else 0)
    for p in parts:
        size = p.size or 0
        if p.offset is not None:
            p.start = p.offset
            p.ebr = p.offset - ss if p.spec.logical else None
        else:
            start = cursor
            a = p.align or align
            while True:
                ebr = _align_up(start, a) if p.spec.logical else None
                begin = _align_up(ebr + ss, a) if ebr is not None else _align_up(start, a)
                lo = ebr if ebr is not None else begin
                hit = [r for r in reserved if r.start < begin + size and lo < r.end]
                if not hit:
                    break
                start = max(r.end for r in hit)
            p.start, p.ebr = begin, ebr
        cursor = p.start + size


def _check_geometry(parts: list[_Part], spec: DiskSpec, ss: int, disk_size: int,
                    reserved: tuple[Reserved, ...]) -> None:
    """Everything inside the disk, nothing overlapping anything else."""
    geo = _gpt_shape(spec, ss, disk_size)
    structures = _structures(spec.table, ss, geo)
    if geo is not None:
        first = geo.first_usable_lba * ss
        last_end = (geo.last_usable_lba + 1) * ss
        if last_end <= first:
            raise LayoutError(f"a disk of {format_size(disk_size)} is too small for a GPT "
                              f"(its tables alone take {format_size(first + disk_size - last_end)})",
                              hint="make the disk larger or leave its size automatic")
    elif spec.table == "none":
        first, last_end = 0, disk_size
    else:
        first, last_end = ss, disk_size
        if disk_size > (1 << 32) * ss:
            max_end = (1 << 32) * ss
            for p in parts:
                if p.start + (p.size or 0) > max_end:
                    raise LayoutError(f"partition {p.spec.name!r} ends at "
                                      f"{format_size(p.start + p.size)}, beyond the "
                                      f"{format_size(max_end)} an MBR can address",
                                      hint="use a GPT table")
    for r in reserved:
        for s in structures:
            if r.start < s.end and s.start < r.end and not r.over_tables:
                raise LayoutError(f"{r.what} {_rng(r.start, r.end)} overlaps {s.what} "
                                  f"{_rng(s.start, s.end)}",
                                  hint="move it into a gap between partitions" +
                                  (", or move the GPT entry array (gpt_entries_offset)"
                                   if geo is not None else ""))
        if r.end > disk_size:
            raise LayoutError(f"{r.what} {_rng(r.start, r.end)} lies beyond the end of the "
                              f"{format_size(disk_size)} disk")
    # Things that take space: partitions, their EBRs, reserved ranges, table structures.
    items: list[tuple[int, int, str, _Part | None]] = []
    for p in parts:
        items.append((p.start, p.start + (p.size or 0), f"partition {p.spec.name!r}", p))
        if p.ebr is not None:
            items.append((p.ebr, p.ebr + ss, f"the EBR of partition {p.spec.name!r}", p))
    for r in reserved:
        items.append((r.start, r.end, r.what, None))
    for s in structures:
        items.append((s.start, s.end, s.what, None))
    for p in parts:
        end = p.start + (p.size or 0)
        if p.start < first or end > last_end:
            need = _align_up(end + (disk_size - last_end), ss)
            raise LayoutError(
                f"partition {p.spec.name!r} {_rng(p.start, end)} does not fit: the "
                f"{format_size(disk_size)} disk can hold partitions in {_rng(first, last_end)}",
                hint=(f"make the disk at least {format_size(need)} or leave its size automatic"
                      if end > last_end else f"start it at {first} or later"))
    items.sort(key=lambda t: (t[0], t[1]))
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if b[0] >= a[1]:
                break
            if a[3] is None and b[3] is None:
                continue          # two fixed structures (e.g. EBR inside a reserved range)
            mover = b if b[3] is not None else a
            fixed = a if mover is b else b
            raise LayoutError(f"{a[2]} {_rng(a[0], a[1])} overlaps {b[2]} {_rng(b[0], b[1])}",
                              hint=_overlap_hint(mover, fixed, ss))
    if spec.table == "mbr":
        logicals = [p for p in parts if p.spec.logical]
        if logicals:
            ext_start = min(p.ebr for p in logicals)
            ext_end = max(p.start + (p.size or 0) for p in logicals)
            for p in parts:
                if not p.spec.logical and p.start < ext_end and ext_start < p.start + p.size:
                    raise LayoutError(
                        f"primary partition {p.spec.name!r} {_rng(p.start, p.start + p.size)} "
                        f"lies inside the extended partition {_rng(ext_start, ext_end)} that "
                        "holds the logical ones",
                        hint="give it an offset before or after the logical partitions")
            for a, b in itertools.pairwise(logicals):
                if b.ebr < a.start:
                    raise LayoutError(f"logical partition {b.spec.name!r} comes before "
                                      f"{a.spec.name!r} on disk; the EBR chain must go forward",
                                      hint="list the logical partitions in disk order")


def _overlap_hint(mover: tuple[int, int, str, _Part | None],
                  fixed: tuple[int, int, str, _Part | None], ss: int) -> str:
    """How to resolve an overlap, naming only what the user places: an EBR goes where its
    logical partition puts it (the sector before it), so the partition is what moves."""
    part = mover[3]
    assert part is not None
    if mover[0] != part.start:            # the EBR of a logical partition
        to = _align_up(fixed[1] + ss, part.align or ss)
        move = (f"move partition {part.spec.name!r} to offset {to} or later (its EBR takes "
                "the sector before it)")
    else:
        move = f"move {mover[2]} to offset {_align_up(fixed[1], ss)} or later"
    return move + (f", or make {fixed[2]} smaller" if fixed[3] is not None else "")


def _check_contents(parts: list[_Part]) -> None:
    for p in parts:
        c = p.spec.content_size
        if c is not None and c > p.size:
            raise LayoutError(
                f"partition {p.spec.name!r}: its content is {format_size_and_bytes(c)} but the "
                f"partition holds only {format_size_and_bytes(p.size)}",
                hint=f"give it a size of at least {format_size(_align_up(c, MiB))} or 'auto'")


def _finish(parts: list[_Part], spec: DiskSpec, ss: int, align: int, disk_size: int,
            reserved: tuple[Reserved, ...]) -> Plan:
    seed = spec.seed
    gpt = spec.table == "gpt"
    planned: list[PlannedPartition] = []
    number, extended = 0, None
    logicals = [p for p in parts if p.spec.logical]
    for p in parts:
        s = p.spec
        what = f"type of partition {s.name!r}"
        label = s.label if s.label is not None else s.name
        if spec.table == "none":
            type_guid, mbr_type, guid, attrs = None, None, None, 0
            number = p.index + 1
        elif gpt:
            _gpt.check_name(label, what=f"label of partition {s.name!r}")
            type_guid = parttypes.gpt_type(s.type, what=what)
            mbr_type = None
            if s.hybrid:
                mt = s.mbr_type if s.mbr_type is not None else s.type
                try:
                    mbr_type = parttypes.mbr_type(mt, what=f"hybrid MBR type of {s.name!r}")
                except InputError as exc:
                    raise LayoutError(str(exc), hint="set mbr_type for this partition, "
                                      "e.g. 'linux' or '0x83'") from None
            guid = (_as_uuid(s.guid, f"GUID of partition {s.name!r}") if s.guid is not None
                    else _gpt.guid_from_seed(seed, "partition:" + s.name))
            attrs = _gpt.parse_attributes(s.attributes)
            if s.bootable:
                attrs |= _gpt.ATTR_LEGACY_BIOS_BOOTABLE
            number = p.index + 1
        else:
            type_guid, guid, attrs = None, None, 0
            mbr_type = parttypes.mbr_type(s.mbr_type if s.mbr_type is not None else s.type,
                                          what=what)
            if mbr_type in _mbr.EXTENDED_TYPES or mbr_type == _mbr.PROTECTIVE_TYPE:
                raise LayoutError(f"partition {s.name!r}: type 0x{mbr_type:02x} is managed by "
                                  "imgkit itself",
                                  hint="mark partitions 'logical' to get an extended partition")
            if s.logical:
                if extended is None:
                    number += 1
                    ext_start = min(q.ebr for q in logicals)
                    ext_end = max(q.start + q.size for q in logicals)
                    ext_type = parttypes.mbr_type(spec.extended_type, what="extended type")
                    if ext_type not in _mbr.EXTENDED_TYPES:
                        raise InputError(f"extended type: expected 0x05, 0x0f or 0x85, got "
                                         f"0x{ext_type:02x}")
                    extended = ExtendedPartition(number, ext_type, ext_start,
                                                 ext_end - ext_start, ext_start // ss,
                                                 (ext_end - ext_start) // ss)
                pnum = 5 + logicals.index(p)
            else:
                number += 1
                pnum = number
        planned.append(PlannedPartition(
            number=number if gpt or spec.table == "none" else pnum, name=s.name, label=label, start=p.start,
            size=p.size, start_lba=p.start // ss, num_sectors=p.size // ss,
            last_lba=(p.start + p.size) // ss - 1, type_guid=type_guid, mbr_type=mbr_type,
            guid=guid, attributes=attrs, bootable=s.bootable, logical=s.logical,
            ebr_lba=p.ebr // ss if p.ebr is not None else None, hybrid=s.hybrid,
            content_size=s.content_size))
    geo = _gpt_shape(spec, ss, disk_size)
    if geo is not None:
        first, last = geo.first_usable_lba, geo.last_usable_lba
        disk_guid = (_as_uuid(spec.disk_guid, "disk GUID") if spec.disk_guid is not None
                     else _gpt.guid_from_seed(seed, "disk"))
        sig = spec.disk_signature
    elif spec.table == "none":
        first, last, disk_guid, sig = 0, disk_size // ss - 1, None, None
    else:
        first, last = 1, disk_size // ss - 1
        disk_guid = None
        sig = spec.disk_signature if spec.disk_signature is not None else \
            _mbr.signature_from_seed(seed)
    if sig is not None and not 0 <= sig <= 0xFFFFFFFF:
        raise InputError(f"disk signature: expected a 32-bit number, got {sig}")
    return Plan(table=spec.table, sector_size=ss, alignment=align, disk_size=disk_size,
                disk_sectors=disk_size // ss, first_usable_lba=first, last_usable_lba=last,
                partitions=tuple(planned), disk_guid=disk_guid, disk_signature=sig,
                extended=extended, reserved=reserved, num_entries=spec.gpt_entries,
                entries_lba=geo.entries_lba if geo is not None else 2,
                gpt_backup=spec.gpt_backup, protective_first=spec.protective_first)


def _as_uuid(value: uuid.UUID | str, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise InputError(f"{what}: expected a GUID such as "
                         f"'0fc63daf-8483-4772-8e79-3d69d8477de4', got {value!r}") from None
