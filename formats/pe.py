"""PE/COFF images: read the headers of an EFI binary and append sections to it.

A unified kernel image is an EFI stub with extra sections (``.linux``, ``.initrd``, ...), so the
one operation we need is "copy this PE file and add named sections". It follows what systemd's
``ukify`` does: each new section starts at the first ``SectionAlignment`` boundary after the end
of the highest existing section, its raw data at the next ``FileAlignment`` boundary of the file,
``SizeOfImage`` covers it, and the checksum is either zeroed or recomputed.

Section payloads are streamed from host files (``copy_file_range``), so a kernel plus a large
initramfs never has to sit in memory. Only the header area is ever held and patched.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from construct import (
    Array,
    Bytes,
    Const,
    ConstructError,
    If,
    IfThenElse,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
    this,
)

from imgkit.errors import ImageError, InputError

# -- structures ------------------------------------------------------------------------------
PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B

#: Only the fields we use are named; the rest of the 64-byte MS-DOS header is kept as bytes.
DosHeader = Struct(
    "e_magic" / Const(b"MZ"),
    "rest" / Bytes(58),
    "e_lfanew" / Int32ul,
)

CoffHeader = Struct(
    "Machine" / Int16ul,
    "NumberOfSections" / Int16ul,
    "TimeDateStamp" / Int32ul,
    "PointerToSymbolTable" / Int32ul,
    "NumberOfSymbols" / Int32ul,
    "SizeOfOptionalHeader" / Int16ul,
    "Characteristics" / Int16ul,
)

DataDirectory = Struct("VirtualAddress" / Int32ul, "Size" / Int32ul)

_Word = IfThenElse(this.Magic == PE32PLUS_MAGIC, Int64ul, Int32ul)

OptionalHeader = Struct(
    "Magic" / Int16ul,
    "MajorLinkerVersion" / Int8ul,
    "MinorLinkerVersion" / Int8ul,
    "SizeOfCode" / Int32ul,
    "SizeOfInitializedData" / Int32ul,
    "SizeOfUninitializedData" / Int32ul,
    "AddressOfEntryPoint" / Int32ul,
    "BaseOfCode" / Int32ul,
    "BaseOfData" / If(this.Magic == PE32_MAGIC, Int32ul),
    "ImageBase" / _Word,
    "SectionAlignment" / Int32ul,
    "FileAlignment" / Int32ul,
    "MajorOperatingSystemVersion" / Int16ul,
    "MinorOperatingSystemVersion" / Int16ul,
    "MajorImageVersion" / Int16ul,
    "MinorImageVersion" / Int16ul,
    "MajorSubsystemVersion" / Int16ul,
    "MinorSubsystemVersion" / Int16ul,
    "Win32VersionValue" / Int32ul,
    "SizeOfImage" / Int32ul,
    "SizeOfHeaders" / Int32ul,
    "CheckSum" / Int32ul,
    "Subsystem" / Int16ul,
    "DllCharacteristics" / Int16ul,
    "SizeOfStackReserve" / _Word,
    "SizeOfStackCommit" / _Word,
    "SizeOfHeapReserve" / _Word,
    "SizeOfHeapCommit" / _Word,
    "LoaderFlags" / Int32ul,
    "NumberOfRvaAndSizes" / Int32ul,
    "DataDirectories" / Array(this.NumberOfRvaAndSizes, DataDirectory),
)

SectionHeader = Struct(
    "Name" / Bytes(8),
    "VirtualSize" / Int32ul,
    "VirtualAddress" / Int32ul,
    "SizeOfRawData" / Int32ul,
    "PointerToRawData" / Int32ul,
    "PointerToRelocations" / Int32ul,
    "PointerToLinenumbers" / Int32ul,
    "NumberOfRelocations" / Int16ul,
    "NumberOfLinenumbers" / Int16ul,
    "Characteristics" / Int32ul,
)

assert DosHeader.sizeof() == 64
assert CoffHeader.sizeof() == 20
assert DataDirectory.sizeof() == 8
assert SectionHeader.sizeof() == 40
assert len(OptionalHeader.build(dict(
    Magic=PE32PLUS_MAGIC, MajorLinkerVersion=0, MinorLinkerVersion=0, SizeOfCode=0,
    SizeOfInitializedData=0, SizeOfUninitializedData=0, AddressOfEntryPoint=0, BaseOfCode=0,
    BaseOfData=None, ImageBase=0, SectionAlignment=0, FileAlignment=0,
    MajorOperatingSystemVersion=0, MinorOperatingSystemVersion=0, MajorImageVersion=0,
    MinorImageVersion=0, MajorSubsystemVersion=0, MinorSubsystemVersion=0, Win32VersionValue=0,
    SizeOfImage=0, SizeOfHeaders=0, CheckSum=0, Subsystem=0, DllCharacteristics=0,
    SizeOfStackReserve=0, SizeOfStackCommit=0, SizeOfHeapReserve=0, SizeOfHeapCommit=0,
    LoaderFlags=0, NumberOfRvaAndSizes=16,
    DataDirectories=[dict(VirtualAddress=0, Size=0)] * 16))) == 240

PE_SIGNATURE = b"PE\0\0"
#: Offset of ``CheckSum`` inside the optional header (same for PE32 and PE32+).
CHECKSUM_OFFSET = 64
DIR_SECURITY = 4
DIR_DEBUG = 6

SCN_CNT_CODE = 0x00000020
SCN_CNT_INITIALIZED_DATA = 0x00000040
SCN_MEM_EXECUTE = 0x20000000
SCN_MEM_READ = 0x40000000
SCN_MEM_WRITE = 0x80000000

SYMBOL_SIZE = 18  # one COFF symbol table record


def align_up(value: int, alignment: int) -> int:
    """``value`` rounded up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


# -- the parsed view -------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """One section header, decoded (what ``objdump -h`` shows)."""

    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_offset: int
    characteristics: int

    @property
    def memory_end(self) -> int:
        """First RVA after the section in memory (a loader maps ``raw_size`` if the virtual
        size is zero)."""
        return self.virtual_address + (self.virtual_size or self.raw_size)


@dataclass
class PEImage:
    """The headers of a PE file: enough to list it and to append sections to it."""

    path: str
    file_size: int
    e_lfanew: int
    coff: dict
    optional: dict
    sections: list[Section]
    header_bytes: bytes = field(repr=False)
    """The file's bytes up to the first section's raw data (DOS stub, headers, padding)."""

    @classmethod
    def read(cls, path: str | os.PathLike) -> PEImage:
        """Parse the headers of the PE file at ``path``; :class:`ImageError` if it is not one."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
            if len(head) < 64 or head[:2] != b"MZ":
                raise ImageError(f"{path}: not a PE file: expected the 'MZ' signature, "
                                 f"got {head[:2]!r}")
            lfanew = DosHeader.parse(head).e_lfanew
            if lfanew + 24 > size:
                raise ImageError(f"{path}: e_lfanew at offset 0x3c: expected the PE header "
                                 f"within the file's {size:#x} bytes, got {lfanew:#x}")
            f.seek(lfanew)
            if f.read(4) != PE_SIGNATURE:
                raise ImageError(f"{path}: no 'PE\\0\\0' signature at offset {lfanew:#x} "
                                 f"(e_lfanew)")
            coff = CoffHeader.parse(_read_exact(f, 20, path))
            opt_raw = _read_exact(f, coff.SizeOfOptionalHeader, path)
            magic = struct.unpack_from("<H", opt_raw)[0] if len(opt_raw) >= 2 else None
            if magic not in (PE32_MAGIC, PE32PLUS_MAGIC):
                raise ImageError(f"{path}: unknown optional header magic "
                                 f"{magic!r}, expected 0x10b (PE32) or 0x20b (PE32+)")
            try:
                opt = OptionalHeader.parse(opt_raw)
            except ConstructError as exc:
                raise ImageError(f"{path}: optional header at offset {lfanew + 24:#x}: expected "
                                 f"its data directories within SizeOfOptionalHeader "
                                 f"({coff.SizeOfOptionalHeader} bytes), got "
                                 f"{type(exc).__name__}") from None
            table = _read_exact(f, 40 * coff.NumberOfSections, path)
            sections = []
            for i in range(coff.NumberOfSections):
                s = SectionHeader.parse(table[40 * i: 40 * i + 40])
                sections.append(Section(
                    name=s.Name.rstrip(b"\0").decode("ascii", "replace"),
                    virtual_size=s.VirtualSize, virtual_address=s.VirtualAddress,
                    raw_size=s.SizeOfRawData, raw_offset=s.PointerToRawData,
                    characteristics=s.Characteristics))
            header_end = min([s.raw_offset for s in sections if s.raw_size] or [size])
            f.seek(0)
            header_bytes = f.read(min(header_end, size))
        img = cls(path=path, file_size=size, e_lfanew=lfanew, coff=_plain(coff),
                  optional=_plain(opt), sections=sections, header_bytes=header_bytes)
        img._validate()
        return img

    def _validate(self) -> None:
        for s in self.sections:
            if s.raw_size and s.raw_offset + s.raw_size > self.file_size:
                raise ImageError(
                    f"{self.path}: section {s.name} claims raw data {s.raw_offset:#x}+"
                    f"{s.raw_size:#x}, beyond the end of the file ({self.file_size:#x} bytes)")
        for name in ("SectionAlignment", "FileAlignment"):
            value = self.optional[name]
            if value <= 0 or value & (value - 1):
                raise ImageError(f"{self.path}: {name} is {value:#x}, expected a power of two")

    # -- derived facts ---------------------------------------------------------------------
    @property
    def is_pe32plus(self) -> bool:
        return self.optional["Magic"] == PE32PLUS_MAGIC

    @property
    def section_alignment(self) -> int:
        return self.optional["SectionAlignment"]

    @property
    def file_alignment(self) -> int:
        return self.optional["FileAlignment"]

    @property
    def size_of_image(self) -> int:
        return self.optional["SizeOfImage"]

    @property
    def size_of_headers(self) -> int:
        return self.optional["SizeOfHeaders"]

    @property
    def checksum(self) -> int:
        return self.optional["CheckSum"]

    @property
    def optional_offset(self) -> int:
        return self.e_lfanew + 4 + 20

    @property
    def checksum_offset(self) -> int:
        """File offset of the ``CheckSum`` field."""
        return self.optional_offset + CHECKSUM_OFFSET

    @property
    def section_table_offset(self) -> int:
        return self.optional_offset + self.coff["SizeOfOptionalHeader"]

    def directory(self, index: int) -> tuple[int, int]:
        """``(VirtualAddress, Size)`` of data directory ``index`` (0, 0 if absent)."""
        dirs = self.optional["DataDirectories"]
        if index >= len(dirs):
            return (0, 0)
        return (dirs[index]["VirtualAddress"], dirs[index]["Size"])

    @property
    def is_signed(self) -> bool:
        """Whether an Authenticode certificate table is attached (security directory)."""
        return self.directory(DIR_SECURITY) != (0, 0)

    def section(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def raw_end(self) -> int:
        """First file offset after the last section's raw data (or after the headers)."""
        ends = [s.raw_offset + s.raw_size for s in self.sections if s.raw_size]
        return max(ends or [len(self.header_bytes)])

    def memory_end(self) -> int:
        """First RVA after every section."""
        return max([s.memory_end for s in self.sections] or [self.size_of_headers])

    def symbol_table_span(self) -> tuple[int, int] | None:
        """``(offset, length)`` of the COFF symbol and string tables, if present."""
        ptr = self.coff["PointerToSymbolTable"]
        if not ptr:
            return None
        length = SYMBOL_SIZE * self.coff["NumberOfSymbols"]
        with open(self.path, "rb") as f:
            f.seek(ptr + length)
            raw = f.read(4)
        if len(raw) == 4:
            length += struct.unpack("<I", raw)[0]
        return (ptr, length)


def section_names_in_head(head: bytes) -> set[str] | None:
    """The section names of the PE whose first bytes are ``head`` (``None`` if it is not a
    PE, or its section table lies beyond ``head``): what the magic sniffer asks."""
    if len(head) < 64 or head[:2] != b"MZ":
        return None
    lfanew = DosHeader.parse(head[:64]).e_lfanew
    if lfanew + 24 > len(head) or head[lfanew:lfanew + 4] != PE_SIGNATURE:
        return None
    coff = CoffHeader.parse(head[lfanew + 4:lfanew + 24])
    table = lfanew + 24 + coff.SizeOfOptionalHeader
    return {SectionHeader.parse(head[table + 40 * i:table + 40 * i + 40]).Name.rstrip(b"\0")
            .decode("ascii", "replace")
            for i in range(coff.NumberOfSections) if table + 40 * i + 40 <= len(head)}


def _read_exact(f: BinaryIO, n: int, path: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ImageError(f"{path}: truncated PE headers (wanted {n} bytes at offset "
                         f"{f.tell() - len(data):#x}, got {len(data)})")
    return data


def _plain(container) -> dict:
    """A construct Container as plain dicts/lists (drops construct's private keys)."""
    if isinstance(container, dict):
        return {k: _plain(v) for k, v in container.items() if not k.startswith("_")}
    if isinstance(container, list):
        return [_plain(v) for v in container]
    return container


def list_sections(path: str | os.PathLike) -> list[Section]:
    """The section table of the PE file at ``path`` (an ``objdump -h`` equivalent)."""
    return PEImage.read(path).sections


def format_sections(image: PEImage) -> str:
    """A human-readable section listing in the spirit of ``objdump -h``."""
    lines = [f"{'Idx':<4}{'Name':<10}{'VirtSize':>10}{'VMA':>10}{'RawSize':>10}"
             f"{'FileOff':>10}  Flags"]
    for i, s in enumerate(image.sections):
        lines.append(f"{i:<4}{s.name:<10}{s.virtual_size:>10x}{s.virtual_address:>10x}"
                     f"{s.raw_size:>10x}{s.raw_offset:>10x}  {s.characteristics:#010x}")
    return "\n".join(lines)


# -- appending sections ----------------------------------------------------------------------
Part = bytes | str | os.PathLike
"""A piece of section content: literal bytes or a host file path (streamed)."""


@dataclass(frozen=True)
class NewSection:
    """A section to append. ``parts`` are concatenated: bytes as given, paths streamed."""

    name: str
    parts: Sequence[Part]
    characteristics: int = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ

    def __post_init__(self) -> None:
        raw = self.name.encode("ascii", "replace")
        if not self.name.startswith(".") or len(raw) > 8 or not self.name.isascii():
            raise InputError(f"PE section name {self.name!r} is invalid: expected an ASCII "
                             f"name of at most 8 bytes starting with '.'")

    @property
    def size(self) -> int:
        return sum(len(p) if isinstance(p, (bytes, bytearray)) else os.stat(p).st_size
                   for p in self.parts)


@dataclass(frozen=True)
class PlacedSection:
    """Where :func:`plan_sections` put a new section."""

    section: NewSection
    header: Section


@dataclass(frozen=True)
class Plan:
    """Everything :func:`add_sections` will write, decided before any byte is written."""

    headers: bytes          # the new header area, exactly ``body_offset`` bytes long
    body_offset: int        # where the stub's section data goes in the output
    body_span: tuple[int, int]  # (offset, length) of the stub bytes copied after the headers
    placed: list[PlacedSection]
    file_size: int


def plan_sections(stub: PEImage, sections: Sequence[NewSection], *,
                  strip_signature: bool = False) -> Plan:
    """Decide the output layout of ``stub`` plus ``sections`` without writing anything.

    Raises :class:`InputError` for a signed stub (unless ``strip_signature``) or a duplicate
    section name, :class:`ImageError` when the headers cannot be made to fit.
    """
    path = stub.path
    existing = {s.name for s in stub.sections}
    seen: set[str] = set()
    for sec in sections:
        if sec.name in existing or sec.name in seen:
            raise InputError(f"{path}: cannot add section {sec.name}: the image already has one",
                             hint="use a plain stub, not an already assembled image")
        seen.add(sec.name)

    coff = dict(stub.coff)
    opt = {k: (list(map(dict, v)) if k == "DataDirectories" else v)
           for k, v in stub.optional.items()}
    fa, sa = stub.file_alignment, stub.section_alignment

    # What of the stub's file we keep: its section data, plus whatever trailing bytes are not
    # a COFF symbol table (image files should not carry one; ukify strips it too) or a
    # certificate table we were told to strip.
    body_start = len(stub.header_bytes)
    body_end = stub.file_size
    sec_va, sec_size = stub.directory(DIR_SECURITY)
    if stub.is_signed:
        if not strip_signature:
            raise InputError(
                f"{path} is signed (its security directory holds a {sec_size}-byte certificate "
                f"table at {sec_va:#x}); appending sections would invalidate the signature",
                hint="use an unsigned stub, or pass strip_signature=True and sign the result")
        if sec_va + sec_size == stub.file_size and sec_va >= stub.raw_end():
            body_end = sec_va
        opt["DataDirectories"][DIR_SECURITY] = {"VirtualAddress": 0, "Size": 0}
    symtab = stub.symbol_table_span()
    if symtab is not None and symtab[0] + symtab[1] >= body_end and symtab[0] >= stub.raw_end():
        body_end = symtab[0]
        coff["PointerToSymbolTable"] = 0
        coff["NumberOfSymbols"] = 0
        coff["Characteristics"] |= 0x0008  # IMAGE_FILE_LOCAL_SYMS_STRIPPED
    body_end = max(body_end, stub.raw_end())

    # Room for the section table: use the header padding, else shift the section data.
    table_off = stub.section_table_offset
    table_end = table_off + 40 * (len(stub.sections) + len(sections))
    shift = 0
    if table_end > body_start:
        shift = align_up(table_end - body_start, fa)
        if stub.directory(DIR_DEBUG)[1]:
            raise ImageError(
                f"{path}: no room for {len(sections)} more section headers (the table would end "
                f"at {table_end:#x}, section data starts at {body_start:#x}) and the image has "
                f"a debug directory whose file offsets cannot be moved safely")
        if coff["PointerToSymbolTable"]:
            coff["PointerToSymbolTable"] += shift
    new_headers_size = max(stub.size_of_headers, align_up(table_end, fa))
    first_va = min([s.virtual_address for s in stub.sections] or [align_up(table_end, sa)])
    if new_headers_size > first_va:
        raise ImageError(
            f"{path}: the headers would need {new_headers_size:#x} bytes, but the first section "
            f"is mapped at RVA {first_va:#x}: no room for {len(sections)} more section headers")
    body_offset = body_start + shift

    # Place the new sections after everything that exists, in memory and in the file.
    va = align_up(stub.memory_end(), sa)
    file_off = align_up(body_offset + (body_end - body_start), fa)
    placed: list[PlacedSection] = []
    for sec in sections:
        size = sec.size
        raw = align_up(size, fa)
        header = Section(name=sec.name, virtual_size=size, virtual_address=va, raw_size=raw,
                         raw_offset=file_off if raw else 0, characteristics=sec.characteristics)
        placed.append(PlacedSection(sec, header))
        if sec.characteristics & SCN_CNT_CODE:
            opt["SizeOfCode"] += raw
        else:
            opt["SizeOfInitializedData"] += raw
        va = align_up(va + max(size, 1), sa)
        file_off += raw
    if va > 0xFFFFFFFF or file_off > 0xFFFFFFFF:
        raise InputError(f"the image would be {file_off} bytes / {va:#x} in memory: PE images "
                         f"are limited to 4 GiB")

    old = [s for s in stub.sections]
    if shift:
        old = [Section(s.name, s.virtual_size, s.virtual_address, s.raw_size,
                       s.raw_offset + shift if s.raw_size else s.raw_offset, s.characteristics)
               for s in old]
    all_sections = old + [p.header for p in placed]
    coff["NumberOfSections"] = len(all_sections)
    opt["SizeOfHeaders"] = new_headers_size
    opt["SizeOfImage"] = align_up(max(s.memory_end for s in all_sections), sa)
    opt["CheckSum"] = 0

    head = bytearray(stub.header_bytes[:stub.optional_offset - 24])
    head += PE_SIGNATURE + CoffHeader.build(coff) + OptionalHeader.build(opt)
    head += stub.header_bytes[len(head):table_off]  # any bytes between header and table
    for s in all_sections:
        head += SectionHeader.build(dict(
            Name=s.name.encode("ascii").ljust(8, b"\0"), VirtualSize=s.virtual_size,
            VirtualAddress=s.virtual_address, SizeOfRawData=s.raw_size,
            PointerToRawData=s.raw_offset, PointerToRelocations=0, PointerToLinenumbers=0,
            NumberOfRelocations=0, NumberOfLinenumbers=0, Characteristics=s.characteristics))
    if len(head) < body_offset:
        tail = stub.header_bytes[len(head):body_start]
        head += tail + bytes(body_offset - len(head) - len(tail))
    assert len(head) == body_offset, (len(head), body_offset)
    return Plan(headers=bytes(head), body_offset=body_offset,
                body_span=(body_start, body_end - body_start), placed=placed,
                file_size=file_off)


def add_sections(stub_path: str | os.PathLike, out: BinaryIO, sections: Sequence[NewSection], *,
                 strip_signature: bool = False, checksum: bool = False) -> Plan:
    """Write ``stub_path`` plus ``sections`` to the (empty, seekable) binary file ``out``.

    The checksum field is zeroed, as ukify does (UEFI firmware does not check it), or
    recomputed over the finished file with ``checksum=True``. Returns the layout written.
    """
    stub = PEImage.read(stub_path)
    plan = plan_sections(stub, sections, strip_signature=strip_signature)
    out.seek(0)
    out.truncate(0)
    out.write(plan.headers)
    out.flush()
    fd = out.fileno()
    with open(stub.path, "rb") as src:
        _copy(src, fd, plan.body_span[0], plan.body_offset, plan.body_span[1])
    for placed in plan.placed:
        pos = placed.header.raw_offset
        for part in placed.section.parts:
            if isinstance(part, (bytes, bytearray)):
                os.pwrite(fd, part, pos)
                pos += len(part)
            else:
                with open(part, "rb") as src:
                    n = os.fstat(src.fileno()).st_size
                    _copy(src, fd, 0, pos, n)
                    pos += n
    os.ftruncate(fd, plan.file_size)  # zero padding of the last section, without writing it
    if checksum:
        value = pe_checksum_fd(fd, stub.checksum_offset)
        os.pwrite(fd, struct.pack("<I", value), stub.checksum_offset)
    out.seek(0, os.SEEK_END)
    return plan


def _copy(src: BinaryIO, dst_fd: int, src_off: int, dst_off: int, length: int) -> None:
    """Copy ``length`` bytes between files by offset, in the kernel where possible."""
    sfd = src.fileno()
    while length > 0:
        try:
            n = os.copy_file_range(sfd, dst_fd, min(length, 1 << 30), src_off, dst_off)
        except OSError:
            n = 0
        if n <= 0:  # cross-device on old kernels, or unsupported: plain read/pwrite
            data = os.pread(sfd, min(length, 1 << 20), src_off)
            if not data:
                raise ImageError(f"{src.name}: ended early while copying "
                                 f"(wanted {length} more bytes at {src_off:#x})")
            n = os.pwrite(dst_fd, data, dst_off)
        src_off += n
        dst_off += n
        length -= n


# -- checksum --------------------------------------------------------------------------------
def pe_checksum_fd(fd: int, checksum_offset: int, *, chunk: int = 1 << 20) -> int:
    """The PE image checksum (as ``CheckSumMappedFile`` computes it) of the file ``fd``.

    The 16-bit little-endian words of the file, with the ``CheckSum`` field read as zero, are
    summed with end-around carry, and the file length is added. Because 2**16 = 1 mod 0xFFFF,
    the one's-complement sum of a chunk's words equals its little-endian integer mod 0xFFFF,
    which Python computes at C speed.
    """
    size = os.fstat(fd).st_size
    total = 0
    pos = 0
    while pos < size:
        data = bytearray(os.pread(fd, min(chunk, size - pos), pos))
        if not data:
            break
        lo, hi = checksum_offset - pos, checksum_offset + 4 - pos
        if hi > 0 and lo < len(data):
            data[max(lo, 0):min(hi, len(data))] = bytes(min(hi, len(data)) - max(lo, 0))
        if len(data) % 2:
            data.append(0)
        total += int.from_bytes(data, "little") % 0xFFFF
        pos += len(data)  # chunks are even-sized except possibly the last
    folded = total % 0xFFFF
    if folded == 0 and total:
        folded = 0xFFFF  # end-around carry never turns a non-zero sum into zero
    return (folded + size) & 0xFFFFFFFF


def pe_checksum(path: str | os.PathLike) -> int:
    """The PE checksum the file at ``path`` should carry."""
    image = PEImage.read(path)
    with open(path, "rb") as f:
        return pe_checksum_fd(f.fileno(), image.checksum_offset)
