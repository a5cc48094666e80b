"""Which partition table a disk has, as typed objects: one prober trying GPT, then MBR.

:func:`read_table` is what ``imgkit inspect`` and ``imgkit ls`` call; the tables are parsed by
the readers beside the writers (:mod:`imgkit.formats.gpt`, :mod:`imgkit.formats.mbr`), and
this module only turns them into :class:`Partition` and :class:`PartitionTable`, whose
:meth:`~PartitionTable.to_json` is the one JSON form.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from imgkit.disk.parttypes import MBR_DESCRIPTIONS, describe_gpt, describe_mbr, gpt_description
from imgkit.errors import ImageError

SCHEMES = ("gpt", "mbr")


@dataclass(frozen=True)
class Partition:
    """One partition, whichever the scheme: positions in sectors of ``sector_size`` bytes.

    ``type`` is the GPT type GUID or the MBR type byte; ``name`` the GPT name (MBR has none);
    ``guid`` and ``attributes`` are GPT's, ``bootable`` the MBR active flag or GPT's
    legacy-BIOS-bootable bit; ``logical``/``extended`` are MBR's.
    """

    number: int
    start_lba: int
    sectors: int
    sector_size: int
    type: uuid.UUID | int
    name: str = ""
    guid: uuid.UUID | None = None
    attributes: int = 0
    bootable: bool = False
    logical: bool = False
    extended: bool = False

    @property
    def start(self) -> int:
        return self.start_lba * self.sector_size

    @property
    def size(self) -> int:
        return self.sectors * self.sector_size

    @property
    def end_lba(self) -> int:
        """The last sector (inclusive)."""
        return self.start_lba + self.sectors - 1

    @property
    def type_name(self) -> str:
        """imgkit's friendly name for the type (``esp``, ``linux``...), else the raw value."""
        return describe_gpt(self.type) if isinstance(self.type, uuid.UUID) else describe_mbr(self.type)

    @property
    def type_description(self) -> str:
        """The type as util-linux describes it."""
        if isinstance(self.type, uuid.UUID):
            return gpt_description(self.type)
        return MBR_DESCRIPTIONS.get(self.type, "unknown")

    @property
    def attribute_names(self) -> list[str]:
        from imgkit.formats.gpt import attribute_names
        return attribute_names(self.attributes)

    def to_json(self, filesystem: dict | None = None) -> dict:
        out: dict = {"number": self.number, "name": self.name, "start": self.start,
                     "size": self.size, "start_lba": self.start_lba, "end_lba": self.end_lba,
                     "sectors": self.sectors}
        if isinstance(self.type, uuid.UUID):
            out.update(type=str(self.type), type_name=self.type_name,
                       type_description=self.type_description, guid=str(self.guid),
                       attributes=f"0x{self.attributes:016x}",
                       attribute_names=self.attribute_names, bootable=self.bootable)
        else:
            out.update(type=f"0x{self.type:02x}", type_name=self.type_name,
                       type_description=self.type_description, bootable=self.bootable,
                       logical=self.logical, extended=self.extended)
        out["filesystem"] = filesystem
        return out


@dataclass(frozen=True)
class PartitionTable:
    """A disk's partition table. GPT fills ``disk_guid`` and the usable range, MBR
    ``disk_signature``; ``hybrid_mbr`` lists the non-protective entries of a GPT's MBR."""

    scheme: str
    sector_size: int
    sectors: int
    partitions: tuple[Partition, ...]
    disk_guid: uuid.UUID | None = None
    disk_signature: int | None = None
    first_usable_lba: int | None = None
    last_usable_lba: int | None = None
    max_partitions: int | None = None
    entries_lba: int | None = None
    backup_ok: bool | None = None
    hybrid_mbr: tuple[Partition, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def find(self, spec: str) -> Partition | None:
        """The partition numbered ``spec`` (digits) or, failing that, named ``spec``."""
        if spec.isascii() and spec.isdigit():
            for p in self.partitions:
                if p.number == int(spec):
                    return p
        for p in self.partitions:
            if p.name and p.name == spec:
                return p
        return None

    def to_json(self, filesystem: Callable[[Partition], dict | None] = lambda p: None) -> dict:
        """The table as a JSON-able dict; ``filesystem(p)`` describes what each partition holds."""
        parts = [p.to_json(filesystem(p)) for p in self.partitions]
        if self.scheme == "mbr":
            return {"table": "mbr", "sector_size": self.sector_size,
                    "disk_signature": f"0x{self.disk_signature or 0:08x}",
                    "sectors": self.sectors, "partitions": parts,
                    **({"warnings": list(self.warnings)} if self.warnings else {})}
        out = {"table": "gpt", "sector_size": self.sector_size, "disk_guid": str(self.disk_guid),
               "sectors": self.sectors, "first_usable_lba": self.first_usable_lba,
               "last_usable_lba": self.last_usable_lba, "max_partitions": self.max_partitions,
               "entries_lba": self.entries_lba,
               "backup_ok": self.backup_ok, "partitions": parts}
        if self.hybrid_mbr:
            out["hybrid_mbr"] = [{"number": p.number, "type": f"0x{p.type:02x}",
                                  "start_lba": p.start_lba, "sectors": p.sectors,
                                  "bootable": p.bootable} for p in self.hybrid_mbr]
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def read_gpt_table(f: BinaryIO, disk_size: int) -> PartitionTable:
    """The GPT of ``f`` (:class:`ImageError` when there is none or it is damaged)."""
    from imgkit.formats import gpt, mbr

    table = gpt.read_gpt(f)
    ss = table.sector_size
    parts = tuple(Partition(p.number, p.first_lba, p.num_sectors, ss, p.type_guid, name=p.name,
                            guid=p.guid, attributes=p.attributes,
                            bootable=bool(p.attributes & gpt.ATTR_LEGACY_BIOS_BOOTABLE))
                  for p in table.partitions)
    hybrid: tuple[Partition, ...] = ()
    if table.protective_mbr is not None:
        hybrid = tuple(Partition(p.number, p.start_lba, p.num_sectors, mbr.SECTOR, p.type,
                                 bootable=p.bootable)
                       for p in table.protective_mbr.partitions if p.type != mbr.PROTECTIVE_TYPE)
    warnings = [] if table.backup_ok else ["the backup GPT is missing or differs from the primary"]
    warnings += _outside(parts, disk_size)
    return PartitionTable("gpt", ss, disk_size // ss, parts, disk_guid=table.disk_guid,
                          first_usable_lba=table.first_usable_lba,
                          last_usable_lba=table.last_usable_lba, max_partitions=table.num_entries,
                          entries_lba=table.entries_lba,
                          backup_ok=table.backup_ok, hybrid_mbr=hybrid, warnings=tuple(warnings))


def read_mbr_table(f: BinaryIO, disk_size: int) -> PartitionTable:
    """The MBR (and EBR chain) of ``f`` (:class:`ImageError` when it is damaged)."""
    from imgkit.formats import mbr

    table = mbr.read_mbr(f)
    parts = tuple(Partition(p.number, p.start_lba, p.num_sectors, mbr.SECTOR, p.type,
                            bootable=p.bootable, logical=p.is_logical, extended=p.is_extended)
                  for p in table.partitions)
    return PartitionTable("mbr", mbr.SECTOR, disk_size // mbr.SECTOR, parts,
                          disk_signature=table.disk_signature,
                          warnings=tuple(_outside(parts, disk_size)))


def _outside(parts: tuple[Partition, ...], disk_size: int) -> list[str]:
    return [f"partition {p.number} (sectors {p.start_lba}-{p.end_lba}) ends past the end of "
            f"the image ({disk_size} bytes)" for p in parts if p.start + p.size > disk_size]


def read_table(f: BinaryIO, disk_size: int, scheme: str | None = None) -> PartitionTable | None:
    """The partition table of the disk ``f``: GPT first, then MBR; ``None`` when there is none.

    ``scheme`` is what the sniffer found: ``"gpt"`` or ``"mbr"`` makes a damaged table an
    :class:`ImageError`; ``None`` (or ``"iso9660"``, for hybrid ISOs) tries both quietly.
    """
    from imgkit.formats import mbr

    if scheme in (None, "gpt", "iso9660"):
        try:
            return read_gpt_table(f, disk_size)
        except ImageError:
            if scheme == "gpt":
                raise
    if scheme in (None, "mbr", "iso9660"):
        f.seek(0)
        if mbr.looks_like_table(f.read(mbr.SECTOR)):
            return read_mbr_table(f, disk_size)
    return None
