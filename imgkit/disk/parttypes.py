"""Friendly partition type names -> GPT type GUIDs and MBR type bytes.

The GPT values follow the UAPI Discoverable Partitions Specification (what systemd's
gpt-auto-generator and ``systemd-repart`` act on), so ``root-x86-64`` is found and mounted
without any ``root=`` option. Descriptions are the ones util-linux shows, which lets the tests
check every GUID here against ``sfdisk --label gpt -T``.

Besides names, a spec may be a raw GUID (``"0fc63daf-8483-4772-8e79-3d69d8477de4"``) for GPT,
or ``"0xNN"`` for MBR.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from imgkit.errors import InputError


@dataclass(frozen=True)
class PartType:
    """One known type: its friendly name, GPT GUID and MBR byte (either may be missing)."""

    name: str
    gpt: uuid.UUID | None
    mbr: int | None
    description: str


def _t(name: str, gpt: str | None, mbr: int | None, description: str) -> PartType:
    return PartType(name, uuid.UUID(gpt) if gpt else None, mbr, description)


_BASIC_DATA = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"

_TYPES: tuple[PartType, ...] = (
    _t("esp", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", 0xEF, "EFI System"),
    _t("xbootldr", "bc13c2ff-59e6-4262-a352-b275fd6f7172", 0xEA, "Linux extended boot"),
    _t("bios-boot", "21686148-6449-6e6f-744e-656564454649", None, "BIOS boot"),
    _t("linux", "0fc63daf-8483-4772-8e79-3d69d8477de4", 0x83, "Linux filesystem"),
    _t("swap", "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", 0x82, "Linux swap"),
    _t("home", "933ac7e1-2eb4-4f13-b844-0e14e2aef915", None, "Linux home"),
    _t("srv", "3b8f8425-20e0-4f3b-907f-1a25a76f98e8", None, "Linux server data"),
    _t("var", "4d21b016-b534-45c2-a9fb-5c16e091fd2d", None, "Linux variable data"),
    _t("tmp", "7ec6f557-3bc5-4aca-b293-16ef5df639d1", None, "Linux temporary data"),
    _t("user-home", "773f91ef-66d4-49b5-bd83-d683bf40ad16", None, "Linux user's home"),
    _t("linux-lvm", "e6d6d379-f507-44c2-a23c-238f2a3df928", 0x8E, "Linux LVM"),
    _t("linux-raid", "a19d880f-05fc-4d3b-a006-743f0f84911e", 0xFD, "Linux RAID"),
    _t("linux-reserved", "8da63339-0007-60c0-c436-083ac8230908", None, "Linux reserved"),
    # Discoverable root / usr and their dm-verity companions, per architecture.
    _t("root-x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", None, "Linux root (x86-64)"),
    _t("root-x86", "44479540-f297-41b2-9af7-d131d5f0458a", None, "Linux root (x86)"),
    _t("root-arm64", "b921b045-1df0-41c3-af44-4c6f280d3fae", None, "Linux root (ARM-64)"),
    _t("root-arm", "69dad710-2ce4-4e3c-b16c-21a1d49abed3", None, "Linux root (ARM)"),
    _t("root-riscv64", "72ec70a6-cf74-40e6-bd49-4bda08e8f224", None, "Linux root (RISC-V-64)"),
    _t("usr-x86-64", "8484680c-9521-48c6-9c11-b0720656f69e", None, "Linux /usr (x86-64)"),
    _t("usr-x86", "75250d76-8cc6-458e-bd66-bd47cc81a812", None, "Linux /usr (x86)"),
    _t("usr-arm64", "b0e01050-ee5f-4390-949a-9101b17104e9", None, "Linux /usr (ARM-64)"),
    _t("usr-arm", "7d0359a3-02b3-4f0a-865c-654403e70625", None, "Linux /usr (ARM)"),
    _t("usr-riscv64", "beaec34b-8442-439b-a40b-984381ed097d", None, "Linux /usr (RISC-V-64)"),
    _t("root-verity-x86-64", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", None, "Linux root verity (x86-64)"),
    _t("root-verity-x86", "d13c5d3b-b5d1-422a-b29f-9454fdc89d76", None, "Linux root verity (x86)"),
    _t("root-verity-arm64", "df3300ce-d69f-4c92-978c-9bfb0f38d820", None, "Linux root verity (ARM-64)"),
    _t("usr-verity-x86-64", "77ff5f63-e7b6-4633-acf4-1565b864c0e6", None, "Linux /usr verity (x86-64)"),
    _t("usr-verity-x86", "8f461b0d-14ee-4e81-9aa9-049b6fb97abd", None, "Linux /usr verity (x86)"),
    _t("usr-verity-arm64", "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e", None, "Linux /usr verity (ARM-64)"),
    _t("root-verity-sig-x86-64", "41092b05-9fc8-4523-994f-2def0408b176", None,
       "Linux root verity sign. (x86-64)"),
    _t("root-verity-sig-x86", "5996fc05-109c-48de-808b-23fa0830b676", None,
       "Linux root verity sign. (x86)"),
    _t("root-verity-sig-arm64", "6db69de6-29f4-4758-a7a5-962190f00ce3", None,
       "Linux root verity sign. (ARM-64)"),
    _t("usr-verity-sig-x86-64", "e7bb33fb-06cf-4e81-8273-e543b413e2e2", None,
       "Linux /usr verity sign. (x86-64)"),
    _t("usr-verity-sig-x86", "974a71c0-de41-43c3-be5d-5c5ccd1ad2c0", None,
       "Linux /usr verity sign. (x86)"),
    _t("usr-verity-sig-arm64", "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a", None,
       "Linux /usr verity sign. (ARM-64)"),
    # Data partitions other systems can read; on GPT they are all "basic data".
    _t("basic-data", _BASIC_DATA, None, "Microsoft basic data"),
    _t("fat32", _BASIC_DATA, 0x0C, "W95 FAT32 (LBA)"),
    _t("fat16", _BASIC_DATA, 0x0E, "W95 FAT16 (LBA)"),
    _t("fat12", _BASIC_DATA, 0x01, "FAT12"),
    _t("ntfs", _BASIC_DATA, 0x07, "HPFS/NTFS/exFAT"),
    # MBR only: the container of logical partitions.
    _t("extended", None, 0x0F, "W95 Ext'd (LBA)"),
    _t("extended-chs", None, 0x05, "Extended"),
)

#: Every known type by friendly name.
TYPES: dict[str, PartType] = {t.name: t for t in _TYPES}

#: Other spellings people use for the same types.
ALIASES: dict[str, str] = {"efi": "esp", "bios": "bios-boot", "bios_grub": "bios-boot",
                           "lvm": "linux-lvm", "raid": "linux-raid", "vfat": "fat32",
                           "root-amd64": "root-x86-64", "usr-amd64": "usr-x86-64",
                           "root-aarch64": "root-arm64", "usr-aarch64": "usr-arm64"}


def _repart_spelling(name: str) -> str:
    """``root-verity-sig-x86-64`` as systemd-repart spells it: ``root-x86-64-verity-sig``."""
    kind, _, rest = name.partition("-verity-")
    sig = rest.startswith("sig-")
    return f"{kind}-{rest[4:] if sig else rest}-verity" + ("-sig" if sig else "")


ALIASES.update({_repart_spelling(t.name): t.name for t in _TYPES if "-verity-" in t.name})

#: MBR type bytes that mark an extended partition (logical partitions live inside).
MBR_EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})

#: The MBR type byte of the protective partition in front of a GPT.
MBR_PROTECTIVE = 0xEE

_HEX_BYTE = re.compile(r"^0x([0-9a-fA-F]{1,2})$")


def lookup(name: str) -> PartType | None:
    """The known type called ``name`` (or one of its aliases), else ``None``."""
    key = name.strip().lower()
    return TYPES.get(ALIASES.get(key, key))


def _known(table: str) -> str:
    names = sorted(t.name for t in _TYPES if (t.gpt if table == "gpt" else t.mbr) is not None)
    return ", ".join(names)


def gpt_type(spec: str | uuid.UUID, *, what: str = "partition type") -> uuid.UUID:
    """The GPT type GUID for ``spec`` (a friendly name or a GUID string)."""
    if isinstance(spec, uuid.UUID):
        return spec
    t = lookup(spec)
    if t is not None and t.gpt is not None:
        return t.gpt
    if t is not None:
        raise InputError(f"{what}: {spec!r} exists only on MBR disks, this disk is GPT",
                         hint=f"known GPT types: {_known('gpt')}")
    try:
        return uuid.UUID(spec.strip())
    except (ValueError, AttributeError):
        pass
    raise InputError(f"{what}: unknown GPT partition type {spec!r}",
                     hint=f"use a GUID or one of: {_known('gpt')}")


def verity_types(data_type: str | uuid.UUID) -> tuple[str | None, str | None]:
    """The hash and signature partition types that go with a discoverable root or /usr type
    (``root-x86-64`` -> ``root-verity-x86-64``, ``root-verity-sig-x86-64``); ``None`` where
    the type has no such companion (any type may hold data a hash tree protects)."""
    try:
        guid = gpt_type(data_type)
    except InputError:
        return None, None
    kind, _, arch = describe_gpt(guid).partition("-")
    if kind not in ("root", "usr") or arch.startswith("verity"):
        return None, None
    hash_type, sig_type = f"{kind}-verity-{arch}", f"{kind}-verity-sig-{arch}"
    return (hash_type if hash_type in TYPES else None, sig_type if sig_type in TYPES else None)


def mbr_type(spec: str | int, *, what: str = "partition type") -> int:
    """The MBR type byte for ``spec`` (a friendly name, ``"0xNN"`` or an int)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if 0 < spec <= 0xFF:
            return spec
        raise InputError(f"{what}: expected an MBR type byte 0x01..0xff, got {spec}")
    t = lookup(spec)
    if t is not None and t.mbr is not None:
        return t.mbr
    if t is not None:
        hint = "use 'linux' (0x83) for Linux data on MBR" if t.gpt else None
        raise InputError(f"{what}: {spec!r} has no MBR type byte (it is a GPT-only type)",
                         hint=hint or f"known MBR types: {_known('mbr')}")
    m = _HEX_BYTE.match(spec.strip()) if isinstance(spec, str) else None
    if m and int(m.group(1), 16) != 0:
        return int(m.group(1), 16)
    raise InputError(f"{what}: unknown MBR partition type {spec!r}",
                     hint=f"use 0xNN or one of: {_known('mbr')}")


def describe_gpt(guid: uuid.UUID) -> str:
    """A human name for a GPT type GUID (its friendly name, else the GUID itself)."""
    for t in _TYPES:
        if t.gpt == guid:
            return t.name
    return str(guid)


def describe_mbr(byte: int) -> str:
    """A human name for an MBR type byte."""
    for t in _TYPES:
        if t.mbr == byte:
            return t.name
    if byte == MBR_PROTECTIVE:
        return "gpt-protective"
    return f"0x{byte:02x}"


#: MBR type bytes as util-linux's fdisk names them (what ``imgkit inspect`` shows beside them).
MBR_DESCRIPTIONS = {
    0x00: "Empty", 0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16",
    0x07: "HPFS/NTFS/exFAT", 0x0B: "W95 FAT32", 0x0C: "W95 FAT32 (LBA)",
    0x0E: "W95 FAT16 (LBA)", 0x0F: "W95 Ext'd (LBA)", 0x82: "Linux swap / Solaris",
    0x83: "Linux", 0x85: "Linux extended", 0x8E: "Linux LVM", 0xA5: "FreeBSD",
    0xA6: "OpenBSD", 0xEA: "Linux extended boot", 0xEE: "GPT",
    0xEF: "EFI (FAT-12/16/32)", 0xFD: "Linux raid autodetect",
}


def gpt_description(guid: uuid.UUID) -> str:
    """util-linux's description of a GPT type GUID, or ``"unknown"``."""
    t = lookup(describe_gpt(guid))
    return t.description if t is not None else "unknown"
