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

#: The Discoverable Partitions Specification's per-architecture types: architecture (as
#: systemd-repart spells it) -> (util-linux's name for it, GUIDs of root, /usr, root verity,
#: /usr verity, root verity signature, /usr verity signature).
_DISCOVERABLE: dict[str, tuple[str, tuple[str, str, str, str, str, str]]] = {
    "x86-64": ("x86-64", (
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "8484680c-9521-48c6-9c11-b0720656f69e",
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
        "41092b05-9fc8-4523-994f-2def0408b176", "e7bb33fb-06cf-4e81-8273-e543b413e2e2")),
    "x86": ("x86", (
        "44479540-f297-41b2-9af7-d131d5f0458a", "75250d76-8cc6-458e-bd66-bd47cc81a812",
        "d13c5d3b-b5d1-422a-b29f-9454fdc89d76", "8f461b0d-14ee-4e81-9aa9-049b6fb97abd",
        "5996fc05-109c-48de-808b-23fa0830b676", "974a71c0-de41-43c3-be5d-5c5ccd1ad2c0")),
    "arm64": ("ARM-64", (
        "b921b045-1df0-41c3-af44-4c6f280d3fae", "b0e01050-ee5f-4390-949a-9101b17104e9",
        "df3300ce-d69f-4c92-978c-9bfb0f38d820", "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
        "6db69de6-29f4-4758-a7a5-962190f00ce3", "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a")),
    "arm": ("ARM", (
        "69dad710-2ce4-4e3c-b16c-21a1d49abed3", "7d0359a3-02b3-4f0a-865c-654403e70625",
        "7386cdf2-203c-47a9-a498-f2ecce45a2d6", "c215d751-7bcd-4649-be90-6627490a4c05",
        "42b0455f-eb11-491d-98d3-56145ba9d037", "d7ff812f-37d1-4902-a810-d76ba57b975a")),
    "riscv64": ("RISC-V-64", (
        "72ec70a6-cf74-40e6-bd49-4bda08e8f224", "beaec34b-8442-439b-a40b-984381ed097d",
        "b6ed5582-440b-4209-b8da-5ff7c419ea3d", "8f1056be-9b05-47c4-81d6-be53128e5b54",
        "efe0f087-ea8d-4469-821a-4c2a96a8386a", "d2f9000a-7a18-453f-b5cd-4d32f77a7b32")),
    "riscv32": ("RISC-V-32", (
        "60d5a7fe-8e7d-435c-b714-3dd8162144e1", "b933fb22-5c3f-4f91-af90-e2bb0fa50702",
        "ae0253be-1167-4007-ac68-43926c14c5de", "cb1ee4e3-8cd0-4136-a0a4-aa61a32e8730",
        "3a112a75-8729-4380-b4cf-764d79934448", "c3836a13-3137-45ba-b583-b16c50fe5eb4")),
    "loongarch64": ("LoongArch-64", (
        "77055800-792c-4f94-b39a-98c91b762bb6", "e611c702-575c-4cbe-9a46-434fa0bf7e3f",
        "f3393b22-e9af-4613-a948-9d3bfbd0c535", "f46b2c26-59ae-48f0-9106-c50ed47f673d",
        "5afb67eb-ecc8-4f85-ae8e-ac1e7c50e7d0", "b024f315-d330-444c-8461-44bbde524e99")),
    "ppc64-le": ("PPC64LE", (
        "c31c45e6-3f39-412e-80fb-4809c4980599", "15bb03af-77e7-4d4a-b12b-c0d084f7491c",
        "906bd944-4589-4aae-a4e4-dd983917446a", "ee2b9983-21e8-4153-86d9-b6901a54d1ce",
        "d4a236e7-e873-4c07-bf1d-bf6cf7f1c3c6", "c8bfbd1e-268e-4521-8bba-bf314c399557")),
    "ppc64": ("PPC64", (
        "912ade1d-a839-4913-8964-a10eee08fbd2", "2c9739e2-f068-46b3-9fd0-01c5a9afbcca",
        "9225a9a3-3c19-4d89-b4f6-eeff88f17631", "bdb528a5-a259-475f-a87d-da53fa736a07",
        "f5e2c20c-45b2-4ffa-bce9-2a60737e1aaf", "0b888863-d7f8-4d9e-9766-239fce4d58af")),
    "ppc": ("PPC", (
        "1de3f1ef-fa98-47b5-8dcd-4a860a654d78", "7d14fec5-cc71-415d-9d6c-06bf0b3c3eaf",
        "98cfe649-1588-46dc-b2f0-add147424925", "df765d00-270e-49e5-bc75-f47bb2118b09",
        "1b31b5aa-add9-463a-b2ed-bd467fc857e7", "7007891d-d371-4a80-86a4-5cb875b9302e")),
    "s390x": ("S390X", (
        "5eead9a9-fe09-4a1e-a1d7-520d00531306", "8a4f5770-50aa-4ed3-874a-99b710db6fea",
        "b325bfbe-c7be-4ab8-8357-139e652d2f6b", "31741cc4-1a2a-4111-a581-e00b447d2d06",
        "c80187a5-73a3-491a-901a-017c3fa953e9", "3f324816-667b-46ae-86ee-9b0c0c6c11b4")),
    "s390": ("S390", (
        "08a7acea-624c-4a20-91e8-6e0fa67d23f9", "cd0f869b-d0fb-4ca0-b141-9ea87cc78d66",
        "7ac63b47-b25c-463b-8df8-b4a94e6c90e1", "b663c618-e7bc-4d6d-90aa-11b756bb1797",
        "3482388e-4254-435a-a241-766a065f9960", "17440e4f-a8d0-467f-a46e-3912ae6ef2c5")),
    "mips64-le": ("MIPS-64 LE", (
        "700bda43-7a34-4507-b179-eeb93d7a7ca3", "c97c1f32-ba06-40b4-9f22-236061b08aa8",
        "16b417f8-3e06-4f57-8dd2-9b5232f41aa6", "3c3d61fe-b5f3-414d-bb71-8739a694a4ef",
        "904e58ef-5c65-4a31-9c57-6af5fc7c5de7", "f2c2c7ee-adcc-4351-b5c6-ee9816b66e16")),
    "mips-le": ("MIPS-32 LE", (
        "37c58c8a-d913-4156-a25f-48b1b64e07f0", "0f4868e9-9952-4706-979f-3ed3a473e947",
        "d7d150d2-2a04-4a33-8f12-16651205ff7b", "46b98d8d-b55c-4e8f-aab3-37fca7f80752",
        "c919cc1f-4456-4eff-918c-f75e94525ca5", "3e23ca0b-a4bc-4b4e-8087-5ab6a26aa8a9")),
    "ia64": ("IA-64", (
        "993d8d3d-f80e-4225-855a-9daf8ed7ea97", "4301d2a6-4e3b-4b2a-bb94-9e0b2c4225ea",
        "86ed10d5-b607-45bb-8957-d350f23d0571", "6a491e03-3be7-4545-8e38-83320e0ea880",
        "e98b36ee-32ba-4882-9b12-0ce14655f46a", "8de58bc2-2a43-460d-b14e-a76e4a17b47f")),
    "alpha": ("Alpha", (
        "6523f8ae-3eb1-4e2a-a05a-18b695ae656f", "e18cf08c-33ec-4c0d-8246-c6c6fb3da024",
        "fc56d9e9-e6e5-4c06-be32-e74407ce09a5", "8cce0d25-c0d0-4a44-bd87-46331bf1df67",
        "d46495b7-a053-414f-80f7-700c99921ef8", "5c6e1c76-076a-457a-a0fe-f3b4cd21ce6e")),
    "arc": ("ARC", (
        "d27f46ed-2919-4cb8-bd25-9531f3c16534", "7978a683-6316-4922-bbee-38bff5a2fecc",
        "24b2d975-0f97-4521-afa1-cd531e421b8d", "fca0598c-d880-4591-8c16-4eda05c7347c",
        "143a70ba-cbd3-4f06-919f-6c05683a78bc", "94f9a9a1-9971-427a-a400-50cb297f0f35")),
}

#: The six kinds, in the order of the GUIDs above: (name prefix, util-linux's description).
_KINDS = (("root", "Linux root"), ("usr", "Linux /usr"), ("root-verity", "Linux root verity"),
          ("usr-verity", "Linux /usr verity"), ("root-verity-sig", "Linux root verity sign."),
          ("usr-verity-sig", "Linux /usr verity sign."))

#: Debian's (and others') names for architectures, where they differ from systemd's.
_ARCH_ALIASES = {"amd64": "x86-64", "x86_64": "x86-64", "i386": "x86", "i686": "x86",
                 "aarch64": "arm64", "armhf": "arm", "armel": "arm", "ppc64el": "ppc64-le",
                 "ppc64le": "ppc64-le", "mips64el": "mips64-le", "mipsel": "mips-le",
                 "loong64": "loongarch64"}

_TYPES += tuple(_t(f"{kind}-{arch}", guid, None, f"{description} ({label})")
                for arch, (label, guids) in _DISCOVERABLE.items()
                for (kind, description), guid in zip(_KINDS, guids, strict=True))

#: Every known type by friendly name.
TYPES: dict[str, PartType] = {t.name: t for t in _TYPES}

#: Other spellings people use for the same types.
ALIASES: dict[str, str] = {"efi": "esp", "uefi": "esp", "efi-system": "esp",
                           "bios": "bios-boot", "bios_grub": "bios-boot", "extended-boot": "xbootldr",
                           "linux-data": "linux", "data": "linux", "linux-swap": "swap",
                           "basic": "basic-data", "msdata": "basic-data",
                           "lvm": "linux-lvm", "raid": "linux-raid", "vfat": "fat32"}
ALIASES.update({f"{kind}-{alias}": f"{kind}-{arch}" for alias, arch in _ARCH_ALIASES.items()
                for kind, _ in _KINDS})


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


_PER_ARCH = {f"{kind}-{arch}" for arch in _DISCOVERABLE for kind, _ in _KINDS}


def _known(table: str) -> str:
    """The type names of ``table`` for a hint: the per-architecture ones once, by pattern."""
    names = sorted(t.name for t in _TYPES if (t.gpt if table == "gpt" else t.mbr) is not None
                   and t.name not in _PER_ARCH)
    if table != "gpt":
        return ", ".join(names)
    arches = [a for a in _DISCOVERABLE if a != "x86-64"]
    return (", ".join(names) + "; per architecture: " +
            ", ".join(f"{kind}-x86-64" for kind, _ in _KINDS) +
            ", with x86-64 replaced by " + ", ".join(arches))


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
