"""Multiboot (0.6.96) and Multiboot2 kernel headers: where they are, what they ask for.

A multiboot kernel (GNU Mach, Xen) carries a header near its start that a loader (GRUB,
QEMU's ``-kernel`` for v1) finds by scanning for the magic at the spec's alignment and
checking that the first words sum to zero. ``imgkit inspect`` describes it, ``imgkit run``
decides from it how to boot the kernel: both read it here. GNU Mach ships gzipped, so a
gzipped kernel is looked into.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass, field

from imgkit.errors import InputError


@dataclass(frozen=True)
class HeaderFormat:
    """One header version: its ``magic``, how far into the file it may start (``limit``), its
    alignment and how many u32 words from the magic on sum to 0 with its checksum."""

    magic: int
    limit: int
    align: int
    words: int


#: magic, flags, checksum (Multiboot 0.6.96 section 3.1.1); magic, architecture, header
#: length, checksum (Multiboot2 section 3.1.1), followed by tags.
HEADERS = {"multiboot": HeaderFormat(0x1BADB002, 8192, 4, 3),
           "multiboot2": HeaderFormat(0xE85250D6, 32768, 8, 4)}
#: How many bytes of a kernel hold any header (the longest search limit).
HEAD_BYTES = max(h.limit for h in HEADERS.values())

#: Multiboot v1 header flag bits.
V1_FLAGS = {0: "page-aligned modules", 1: "memory map", 2: "video mode",
            16: "load addresses in header"}
#: Multiboot2 header tag types.
V2_TAGS = {1: "information request", 2: "address", 3: "entry address", 4: "console flags",
           5: "framebuffer", 6: "module alignment", 7: "EFI boot services",
           8: "EFI i386 entry", 9: "EFI amd64 entry", 10: "relocatable"}
V2_ARCHITECTURES = {0: "i386", 4: "mips32"}
V2_TAG = struct.Struct("<HHI")   # type, flags, size (tags are 8-byte aligned)
ELF_CLASSES = {1: "ELF32", 2: "ELF64"}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class MultibootHeader:
    """A header found in a kernel: ``kind`` (``multiboot``/``multiboot2``), its ``offset`` in
    the (decompressed) kernel, v1 ``flags`` or v2 ``architecture`` and ``tags``, the ELF class
    of the kernel if it is an ELF, and ``compression`` (``gzip``) when it was gzipped."""

    kind: str
    offset: int
    flags: int = 0
    architecture: int | None = None
    tags: tuple[int, ...] = field(default=())
    elf: str | None = None
    compression: str | None = None

    @property
    def flag_names(self) -> list[str]:
        if self.kind == "multiboot":
            return [name for bit, name in V1_FLAGS.items() if self.flags >> bit & 1]
        return [V2_TAGS.get(t, f"tag {t}") for t in self.tags]

    def describe(self) -> str:
        """``multiboot kernel, ELF64, gzip-compressed, flags 0x3 (...)`` for people."""
        parts = [f"{self.kind} kernel"]
        if self.elf:
            parts.append(self.elf)
        if self.compression:
            parts.append(f"{self.compression}-compressed")
        if self.kind == "multiboot":
            parts.append(f"flags {self.flags:#x} ({', '.join(self.flag_names) or 'none'})")
        else:
            arch = V2_ARCHITECTURES.get(self.architecture or 0, str(self.architecture))
            parts.append(f"architecture {arch}, tags: {', '.join(self.flag_names) or 'none'}")
        return ", ".join(parts)


def find_header(head: bytes, compression: str | None = None) -> MultibootHeader | None:
    """The first valid header in ``head`` (a kernel's first :data:`HEAD_BYTES`), v1 first."""
    elf = ELF_CLASSES.get(head[4]) if head[:4] == b"\x7fELF" and len(head) > 4 else None
    for kind, fmt in HEADERS.items():
        for at in range(0, min(fmt.limit, len(head)) - 4 * fmt.words + 1, fmt.align):
            words = struct.unpack_from(f"<{fmt.words}I", head, at)
            if words[0] != fmt.magic or sum(words) & 0xFFFFFFFF:
                continue
            if kind == "multiboot":
                return MultibootHeader(kind, at, flags=words[1], elf=elf, compression=compression)
            return MultibootHeader(kind, at, architecture=words[1],
                                   tags=_v2_tags(head, at, words[2]), elf=elf,
                                   compression=compression)
    return None


def _v2_tags(head: bytes, at: int, length: int) -> tuple[int, ...]:
    """The tag types of a Multiboot2 header of ``length`` bytes at ``at``, up to the end tag;
    every size is checked against the header and the bytes read."""
    tags, pos, end = [], at + 16, min(at + length, len(head))
    while pos + V2_TAG.size <= end:
        kind, _, size = V2_TAG.unpack_from(head, pos)
        if kind == 0 or size < V2_TAG.size:
            break
        tags.append(kind)
        pos += (size + 7) & ~7
    return tuple(tags)


def kernel_head(path: str, size: int = HEAD_BYTES) -> tuple[bytes, str | None]:
    """The first ``size`` bytes of a kernel, gunzipped if it is gzipped (GNU Mach's .gz), and
    the compression that was undone."""
    try:
        with open(path, "rb") as f:
            head = f.read(size)
        if head.startswith(_GZIP_MAGIC):
            with gzip.open(path) as g:
                return g.read(size), "gzip"
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read the kernel {path!r}: {exc}") from None
    return head, None


def read_header(path: str) -> MultibootHeader | None:
    """The multiboot header of the kernel at ``path`` (gzipped or not), or ``None``."""
    return find_header(*kernel_head(path))


def multiboot_kind(path: str) -> str | None:
    """``"multiboot"``, ``"multiboot2"`` or ``None``: whether ``path`` (or its gunzipped
    content) carries a multiboot header whose checksum holds, where the spec puts it."""
    header = read_header(path)
    return header.kind if header else None
