"""The ``imgkit build`` config file: TOML in, frozen dataclasses out, from one settings table.

Each key is declared once, as a :func:`imgkit.settings.setting` field of the dataclass of its
table (type, default, choices, help); that declaration drives parsing, the error for an
unknown key, a wrong type or a bad choice (naming the file, the table and the key), and the
README's reference (``python -m imgkit.config --reference``). Choices come from their owners:
compression methods from :mod:`imgkit.compress`, disk formats from :mod:`imgkit.disk.image`,
filesystem types and their keys from :mod:`imgkit.filesystems`, boot paths and their keys
from :mod:`imgkit.bootloaders.table`.

Relative paths are resolved against the config file's directory. Values that name other
artifacts are references (``"initramfs:main"``, ``"uki:main"``, ``"fs:esp"``, ``"kernel"``,
``"kernel:vmlinux"``); they are checked here and resolved by :mod:`imgkit.build`. A UKI
command line may hold ``${verity:PARTITION}``, the root hash of a partition a dm-verity
partition protects; any other ``${...}`` is an error.
"""
from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from imgkit import filesystems
from imgkit.bootloaders import table as boot
from imgkit.errors import InputError
from imgkit.settings import (
    BOOL,
    INT,
    OUTPUT_NAME,
    REF_KINDS,
    SIZE,
    STR,
    STR_OR_INT,
    STRING_MAP,
    STRINGS,
    Row,
    ValueType,
    Where,
    is_ref,
    markdown_table,
    parse_table,
    parse_values,
    reference_rows,
    setting,
    settings_of,
    table_of,
    tables_of,
)
from imgkit.vm.guest_init import InitConfig

if TYPE_CHECKING:
    from imgkit.disk.layout import Table

__all__ = ["Config", "KernelConfig", "TreeConfig", "InitramfsConfig", "UkiConfig",
           "FilesystemConfig", "PartitionConfig", "DiskConfig", "IsoConfig", "load_config",
           "reference_markdown", "REF_KINDS"]


def _compression_methods() -> tuple[str, ...]:
    from imgkit.compress import METHODS
    return METHODS


def _disk_formats() -> tuple[str, ...]:
    from imgkit.disk.image import FORMATS
    return FORMATS


def _partition_tables() -> tuple[str, ...]:
    from imgkit.disk.layout import Table
    return get_args(Table)


@dataclass(frozen=True)
class KernelConfig:
    source: str = setting(STR, "debian", choices=("debian", "host", "path", "tree"),
                          help="where \"kernel\" comes from: a cached Debian package, /boot, path, "
                               "or a tree's own kernel and modules")
    path: str | None = setting(STR, None, path=True, help="the kernel image, with source = \"path\"")
    moddir: str | None = setting(STR, None, path=True, help="its modules directory (lib/modules/VERSION)")
    package: str = setting(STR, "linux-image-amd64", help="the Debian package, with source = \"debian\"")
    tree: str | None = setting(STR, None, help="the [trees.NAME] holding boot/vmlinuz-VERSION (or "
                                               "usr/lib/modules/VERSION/vmlinuz), with source = \"tree\"")
    version: str | None = setting(STR, None, help="which of the tree's kernels (default: the newest)")


@dataclass(frozen=True)
class TreeConfig:
    name: str
    sources: tuple[str, ...] = setting(
        STRINGS, (), path=True,
        help="directories, archives (tar, cpio, initramfs lists) and container images "
             "(oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE); later wins")
    entries: tuple[str, ...] = setting(STRINGS, (), help="initramfs-list lines (dir, nod, slink, file...)")
    files: tuple[tuple[str, str], ...] = setting(STRING_MAP, (), path=True,
                                                 help="tree path = host path or reference")
    owner: str = setting(STR, "keep", choices=("keep", "squash"), help="keep owners, or make all root")
    root_uid: int | None = setting(INT, None, help="the host uid that becomes root")
    root_gid: int | None = setting(INT, None, help="the host gid that becomes root")
    uid_map: str | None = setting(STR, None, help="uid ranges \"INSIDE OUTSIDE COUNT\"")
    gid_map: str | None = setting(STR, None, help="gid ranges \"INSIDE OUTSIDE COUNT\"")
    host_owners: bool = setting(BOOL, False, help="take owners from the host files")
    keep_zeros: tuple[str, ...] = setting(
        STRINGS, (), help="tree paths whose files get every block allocated, all-zero ones "
                          "too (a swapfile for swapon); a directory: its files; \"/\": all")
    init: str | None = setting(STR, None, choices=("busybox",), help="add imgkit's /init and busybox")
    modules: tuple[str, ...] = setting(STRINGS, (), help="kernel modules (and their dependencies) to add")
    rc: str | None = setting(STR, None, help="shell script the built-in init runs when there is no root=")
    binaries: tuple[str, ...] = setting(
        STRINGS, (), help="ELF binaries (paths, or names found in /usr/sbin, /usr/bin, /sbin, /bin) "
                          "added with their shared-library closure, read from the ELF files")
    binaries_from: str = setting(STR, "host", help="where binaries come from: \"host\" or the "
                                                   "name of another [trees.NAME]")
    # -- the built-in init's declarative config (imgkit.vm.guest_init.InitConfig) --
    init_config: InitConfig | None = setting(
        table_of(InitConfig), None,
        help="what the built-in init mounts as the root and runs (written as /etc/imgkit/init.conf)")


@dataclass(frozen=True)
class InitramfsConfig:
    name: str
    tree: str = setting(STR, help="the tree to archive")
    compress: str = setting(STR, "zstd", choices=_compression_methods, help="compression")
    output: str | None = setting(OUTPUT_NAME, None, help="also publish it under this name (in -O)")


@dataclass(frozen=True)
class UkiConfig:
    name: str
    cmdline: str = setting(STR, "${cmdline}",
                           help="the kernel command line; ${cmdline} is the top-level cmdline, "
                                "${verity:PARTITION} that partition's dm-verity root hash")
    kernel: str = setting(STR, "kernel", path=True, help="the kernel: a reference or host path")
    initrd: tuple[str, ...] = setting(STRINGS, (), path=True, help="initrds, concatenated")
    os_release: str | None = setting(STR, None, path=True, help="os-release file or text")
    splash: str | None = setting(STR, None, path=True, help="a BMP splash image")
    devicetree: str | None = setting(STR, None, path=True, help="a devicetree blob")
    output: str | None = setting(OUTPUT_NAME, None, help="also publish it under this name (in -O)")


@dataclass(frozen=True)
class FilesystemConfig:
    """A ``[filesystems.NAME]`` table: the keys every type has, the type's own (``options``,
    a dataclass from the filesystem table) and the boot paths it holds (``boot``, by name)."""

    name: str
    type: str = setting(STR, choices=filesystems.names, help="the filesystem type")
    tree: str | None = setting(STR, None, help="the tree it holds (default: empty)")
    size: str = setting(SIZE, "auto", help="bytes or \"64M\"; \"auto\": the tree's size, or the "
                                           "whole partition")
    label: str = setting(STR, "", help="the volume label")
    output: str | None = setting(OUTPUT_NAME, None, help="also publish it under this name (in -O)")
    options: Any = field(default_factory=filesystems.NoOptions)
    boot: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionConfig:
    name: str = setting(STR, help="its name (the GPT partition name)")
    type: str = setting(STR, "linux", help="esp, linux, swap, bios-boot, root-x86-64..., a GUID or an "
                                           "MBR byte")
    size: str = setting(SIZE, "auto", help="bytes, \"64M\", \"25%\", \"auto\" (its filesystem) or \"grow\"")
    filesystem: str | None = setting(STR, None, help="the [filesystems.NAME] it holds")
    offset: str | None = setting(SIZE, None, help="where it starts (default: after the previous one)")
    bootable: bool = setting(BOOL, False, help="MBR active flag / GPT legacy-BIOS-bootable")
    attributes: tuple[str, ...] = setting(STRINGS, (), help="GPT attributes (read-only, no-auto...)")
    guid: str | None = setting(STR, None, help="GPT partition GUID (default: derived from the seed)")
    logical: bool = setting(BOOL, False, help="an MBR logical partition")
    image: str | None = setting(STR, None, path=True,
                                help="a prebuilt file copied in (holes kept), or fs:NAME, uki:NAME, "
                                     "initramfs:NAME")
    image_offset: str = setting(SIZE, "0", help="where the image starts inside the partition")
    mbr_type: str | None = setting(STR_OR_INT, None, help="its hybrid MBR type (default: from type)")
    align: str | None = setting(SIZE, None, help="alignment of its start (default: the disk's)")
    verity: str | None = setting(STR, None, help="holds the dm-verity hash tree of the partition "
                                                 "named here (type root-x86-64-verity...)")
    verity_signature: str | None = setting(
        STR, None, help="holds the signed root hash of the partition named here (type "
                        "root-x86-64-verity-sig...)")
    verity_key: str | None = setting(STR, None, path=True,
                                     help="with verity_signature: the PEM private key signing it")
    verity_certificate: str | None = setting(
        STR, None, path=True, help="with verity_signature: the PEM certificate of that key")


@dataclass(frozen=True)
class RegionConfig:
    name: str = setting(STR, help="what it is (for messages)")
    offset: str = setting(SIZE, help="its byte offset on the disk")
    image: str = setting(STR, path=True, help="the file written there (a host path or reference)")
    size: str | None = setting(SIZE, None, help="room it takes (default: the file's size)")
    in_table_area: bool = setting(BOOL, False, help="may cover the partition table's own "
                                  "structures, its file holding zeros there (the table's bytes)")


def _disk_bios_paths() -> tuple[str, ...]:
    return boot.names(firmware="bios", on_disk=True)


@dataclass(frozen=True)
class DiskConfig:
    output: str = setting(OUTPUT_NAME, help="the image file name (in -O)")
    table: Table = setting(STR, "gpt", choices=_partition_tables, help="the partition table")
    size: str = setting(SIZE, "auto", help="bytes or \"2G\"; \"auto\": what the partitions need")
    format: str = setting(STR, "raw", choices=_disk_formats, help="the image format")
    alignment: str = setting(SIZE, "1M", help="partition alignment")
    partitions: tuple[PartitionConfig, ...] = setting(tables_of(PartitionConfig), (),
                                                      help="the partitions, in order")
    bios: str | None = setting(STR, None, choices=_disk_bios_paths,
                               help="BIOS boot path; its keys are in the filesystem it boots from")
    hybrid_mbr: tuple[str, ...] = setting(STRINGS, (), help="GPT partitions mirrored into a hybrid MBR")
    guid: str | None = setting(STR, None, help="GPT disk GUID (default: derived from the seed)")
    signature: int | None = setting(INT, None, help="MBR disk signature (default: derived from the seed)")
    regions: tuple[RegionConfig, ...] = setting(tables_of(RegionConfig), (),
                                                help="raw data at fixed offsets, outside the partitions")
    size_align: str | None = setting(SIZE, None, help="an automatic disk size is rounded up to "
                                                      "this (default: the alignment)")
    gpt_entries: int | None = setting(INT, None, help="GPT entry count (default 128; at least "
                                                      "one per partition)")
    gpt_entries_offset: str | None = setting(SIZE, None, help="where the GPT entry array goes, "
                                                              "e.g. \"1M\" (default: LBA 2)")
    gpt_first_lba: int | None = setting(INT, None, help="the first LBA partitions may use "
                                                        "(default: right after the entry array)")
    gpt_backup: bool | None = setting(BOOL, None, help="write the backup GPT at the end (default "
                                                       "true; false makes standard tools complain)")
    auto_logical: bool = setting(BOOL, False, help="on MBR, more than four partitions make the "
                                                   "fourth and later logical ones")
    hybrid_ee: str | None = setting(STR, None, choices=("first", "last"),
                                    help="the hybrid MBR's 0xEE entry: first (default) or last")
    extended_type: str | None = setting(STR, None, help="on MBR, the extended partition's type: "
                                        "\"extended\" (0x0f, LBA; the default), "
                                        "\"extended-chs\" (0x05) or \"0x85\" (Linux)")


def _boot_choice(firmware: str, default: str) -> ValueType:
    """``[iso] bios``/``efi``: a table of the boot path's keys (``loader = NAME`` picks one
    other than ``default``), a boot path's name, or a string for its ``shorthand`` key."""
    def convert(value: Any, where: Where, key: str, path: bool) -> boot.BootChoice:
        allowed = boot.names(firmware=firmware, eltorito=True)
        if isinstance(value, str):
            if value in allowed:
                return boot.BootChoice(value, parse_table(boot.get(value).options, {}, where.sub(key)))
            shorthand = boot.get(default).shorthand if default in allowed else None
            if shorthand is None:
                return boot.BootChoice(value, None)  # reported as a bad choice
            value = {shorthand: value}
        data = dict(value)
        name = data.pop("loader", default)
        if name not in allowed:
            return boot.BootChoice(name, None)
        return boot.BootChoice(name, parse_table(boot.get(name).options, data, where.sub(key)))
    return ValueType("str or table", (str, dict), convert, choice_of=lambda c: c.path)


@dataclass(frozen=True)
class IsoConfig:
    output: str = setting(OUTPUT_NAME, help="the image file name (in -O)")
    tree: str | None = setting(STR, None, help="the tree it holds")
    volume_id: str = setting(STR, "IMGKIT", help="the volume label")
    bios: boot.BootChoice | None = setting(
        _boot_choice("bios", "isolinux"), None, choices=lambda: boot.names(firmware="bios", eltorito=True),
        help="BIOS El Torito entry: a table of the boot path's keys (default loader: isolinux)")
    efi: boot.BootChoice | None = setting(
        _boot_choice("uefi", "uki"), None, choices=lambda: boot.names(firmware="uefi", eltorito=True),
        help="UEFI El Torito entry: an EFI binary (\"uki:main\", loader uki) or a table")
    hybrid: bool = setting(BOOL, True, help="add an MBR/GPT so it also boots from a USB stick")
    type: str = setting(STR, "iso9660", choices=lambda: filesystems.names(boot_media=True),
                        help="the filesystem type of the medium")


def _named(cls: type) -> ValueType:
    """``[KEY.NAME]`` tables, each parsed into ``cls`` with its name."""
    def convert(value: dict, where: Where, key: str, path: bool) -> dict[str, Any]:
        return {name: parse_table(cls, t, where.sub(key).sub(name), name=name)
                for name, t in value.items()}
    return ValueType("tables", (dict,), convert, nested=cls)


def _filesystem(data: Any, where: Where, name: str) -> FilesystemConfig:
    """One ``[filesystems.NAME]``: the common keys, then the type's and its boot paths' keys."""
    if not isinstance(data, dict):
        raise InputError(f"{where.file}: [{where.table}] must be a table, got {type(data).__name__}")
    common = [key for key, _, _ in settings_of(FilesystemConfig)]
    handler_keys = [key for key in data if key not in common]
    values = parse_values(FilesystemConfig, data, where, known=handler_keys)
    handler = filesystems.get(values["type"])
    own = [key for key, _, _ in settings_of(handler.options)]
    in_fs = boot.names(in_filesystems=True)
    unknown = [k for k in handler_keys if k not in own and k not in in_fs]
    if unknown:
        allowed = sorted(common + own + list(in_fs))
        raise InputError(f"{where.file}: unknown key {unknown[0]!r} in [{where.table}] "
                         f"(type {handler.name!r})",
                         hint=f"keys allowed there: {', '.join(allowed)}")
    options = parse_table(handler.options, {k: data[k] for k in own if k in data}, where)
    held = {}
    for bp_name in (k for k in handler_keys if k in in_fs):
        bp = boot.get(bp_name)
        if handler.name not in bp.fs_types:
            raise InputError(f"{where.file}: {where.table}.{bp_name}: the {bp_name} boot path "
                             f"needs a filesystem of type {' or '.join(bp.fs_types)}, "
                             f"got {handler.name!r}",
                             hint=f"move it to a {bp.fs_types[0]} filesystem")
        value = data[bp_name]
        if not isinstance(value, dict):
            raise where.error(bp_name, "table", value)
        held[bp_name] = parse_table(bp.options, value, where.sub(bp_name))
    return FilesystemConfig(name=name, options=options, boot=held, **values)


def _filesystems_convert(value: dict, where: Where, key: str, path: bool) -> dict[str, FilesystemConfig]:
    return {name: _filesystem(t, where.sub(key).sub(name), name) for name, t in value.items()}


@dataclass(frozen=True)
class Config:
    path: str
    base_dir: str
    seed: str = setting(STR, "imgkit", help="every UUID, serial and hash seed derives from it")
    mtime: int | None = setting(INT, None, help="clamp times to it (default: $SOURCE_DATE_EPOCH)")
    cmdline: str = setting(STR, "", help="the kernel command line declared once: ${cmdline} in a "
                                         "UKI cmdline (its default), a syslinux append or a "
                                         "systemd-boot/GRUB entry's options or cmdline")
    kernel: KernelConfig = setting(table_of(KernelConfig), default_factory=KernelConfig,
                                   help="what \"kernel\" refers to")
    trees: dict[str, TreeConfig] = setting(_named(TreeConfig), default_factory=dict,
                                           help="file trees")
    initramfs: dict[str, InitramfsConfig] = setting(_named(InitramfsConfig), default_factory=dict,
                                                    help="cpio archives of trees")
    uki: dict[str, UkiConfig] = setting(_named(UkiConfig), default_factory=dict,
                                        help="unified kernel images")
    filesystems: dict[str, FilesystemConfig] = setting(
        ValueType("tables", (dict,), _filesystems_convert, nested=FilesystemConfig),
        default_factory=dict, help="filesystem images")
    disk: DiskConfig | None = setting(table_of(DiskConfig), None, help="a partitioned disk image")
    iso: IsoConfig | None = setting(table_of(IsoConfig), None, help="a bootable ISO image")


# --------------------------------------------------------------------------------------------

def _read_toml(path: str) -> dict[str, Any]:
    """The TOML at ``path``; a missing, unreadable, non-regular or non-UTF-8 file is an
    :class:`InputError` naming it."""
    from imgkit.detect import regular_file

    regular_file(path, "config file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"config file {path!r} cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset "
                         f"{exc.start}", hint="TOML files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: not valid TOML: nested too deeply") from None
    except ValueError as exc:   # an integer of more than 4300 digits
        raise InputError(f"{path}: not valid TOML: {exc}") from None


def _check_cycles(cfg: Config) -> None:
    """No artifact may be built from itself (a tree holding the filesystem made of it):
    one line naming the cycle instead of endless recursion."""
    edges: dict[str, list[str]] = {}
    for t in cfg.trees.values():
        edges[f"tree:{t.name}"] = [src for _, src in t.files if is_ref(src)]
    for ic in cfg.initramfs.values():
        edges[f"initramfs:{ic.name}"] = [f"tree:{ic.tree}"]
    for f in cfg.filesystems.values():
        edges[f"fs:{f.name}"] = [f"tree:{f.tree}"] if f.tree else []
    for u in cfg.uki.values():
        edges[f"uki:{u.name}"] = [r for r in (u.kernel, *u.initrd) if is_ref(r)]
    done: set[str] = set()
    for start in edges:
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, step = stack.pop()
            if step == 0:
                if node in done:
                    continue
                if node in path:
                    cycle = path[path.index(node):] + [node]
                    raise InputError(f"{cfg.path}: {' -> '.join(cycle)}: an artifact is built "
                                     "from itself", hint="remove one of these references")
                path.append(node)
            children = edges.get(node, [])
            if step < len(children):
                stack.append((node, step + 1))
                stack.append((children[step], 0))
            else:
                path.pop()
                done.add(node)


def load_config(path: str) -> Config:
    """Parse and validate the build config at ``path``."""
    data = _read_toml(path)
    base = os.path.dirname(os.path.abspath(path))
    cfg = parse_table(Config, data, Where(path, "top level", base), path=path, base_dir=base)
    if cfg.kernel.source == "path" and not cfg.kernel.path:
        raise InputError(f"{path}: [kernel] source = 'path' needs path = '...'")
    _check_kernel(cfg)
    _check_names(cfg)
    _check_cycles(cfg)
    _check_outputs(cfg)
    _check_verity(cfg)
    if cfg.disk:
        _check_disk_keys(cfg, cfg.disk)
    return cfg


def _check_kernel(cfg: Config) -> None:
    """``[kernel]`` keys that belong to another source would be silently ignored; a kernel
    tree must exist and cannot itself take modules from the kernel it provides."""
    kc = cfg.kernel
    if kc.source != "tree":
        for key in ("tree", "version"):
            if getattr(kc, key) is not None:
                raise InputError(f"{cfg.path}: [kernel] {key} applies to source = 'tree' only "
                                 f"(source is {kc.source!r})", hint="add source = 'tree'")
        return
    if kc.tree is None:
        raise InputError(f"{cfg.path}: [kernel] source = 'tree' needs tree = 'NAME'",
                         hint="the [trees.NAME] whose /boot/vmlinuz-VERSION boots")
    if kc.tree not in cfg.trees:
        known = ", ".join(sorted(cfg.trees)) or "none defined"
        raise InputError(f"{cfg.path}: [kernel] names tree {kc.tree!r}, which is not defined",
                         hint=f"tree defined: {known}")
    if kc.path is not None or kc.moddir is not None:
        raise InputError(f"{cfg.path}: [kernel] path and moddir apply to source = 'path' only "
                         "(source is 'tree': both come from the tree)")
    if cfg.trees[kc.tree].modules:
        raise InputError(f"{cfg.path}: [trees.{kc.tree}] modules: the tree the kernel comes from "
                         "cannot take modules from that kernel",
                         hint="list the modules in the initramfs tree, not in the root tree")


#: Partition keys that only one kind of table has: key -> (table, what to use instead).
_TABLE_ONLY_PARTITION_KEYS = {"guid": ("gpt", None), "attributes": ("gpt", "bootable"),
                              "logical": ("mbr", None)}


def _check_disk_keys(cfg: Config, dc: DiskConfig) -> None:
    """A key that the disk's table cannot hold would be silently ignored: refuse it, naming
    the key, the table and the file."""
    def refuse(key: str, why: str, hint: str | None = None) -> InputError:
        return InputError(f"{cfg.path}: {key}: {why} (this disk's table is {dc.table!r})", hint=hint)

    if dc.table == "mbr":
        if dc.guid is not None:
            raise refuse("disk.guid", "a disk GUID exists only on GPT disks",
                         hint="use signature for the MBR disk signature")
        if dc.hybrid_mbr:
            raise refuse("disk.hybrid_mbr", "a hybrid MBR exists only on GPT disks")
    if dc.table != "gpt":
        for key in ("gpt_entries", "gpt_entries_offset", "gpt_first_lba", "gpt_backup"):
            if getattr(dc, key) is not None:
                raise refuse(f"disk.{key}", "shapes a GPT, and this disk has none")
    if dc.extended_type is not None and dc.table != "mbr":
        raise refuse("disk.extended_type", "types the MBR extended partition, and this disk is "
                     "not MBR")
    if dc.auto_logical and dc.table != "mbr":
        raise refuse("disk.auto_logical", "makes MBR logical partitions, and this disk is not "
                     "MBR")
    if dc.hybrid_ee is not None and not dc.hybrid_mbr:
        raise refuse("disk.hybrid_ee", "places the 0xEE entry of a hybrid MBR, and this disk "
                     "has no disk.hybrid_mbr")
    if dc.table == "none":
        _check_tableless_keys(cfg, dc)
    if dc.table == "gpt" and dc.signature is not None and not dc.hybrid_mbr:
        raise refuse("disk.signature", "a GPT disk has no MBR disk signature (only a hybrid MBR "
                                       "has one)", hint="use guid for the GPT disk GUID")
    names = [p.name for p in dc.partitions]
    for n in dc.hybrid_mbr:
        if n not in names:
            raise InputError(f"{cfg.path}: disk.hybrid_mbr names partition {n!r}, which the disk "
                             "does not have", hint="partitions: " + ", ".join(names))
    for i, p in enumerate(dc.partitions):
        where = f"disk.partitions[{i}] ({p.name!r})"
        for key, (table, instead) in _TABLE_ONLY_PARTITION_KEYS.items():
            if getattr(p, key) and dc.table != table:
                raise refuse(f"{where}.{key}", f"applies to {table.upper()} disks only",
                             hint=f"use {instead}" if instead else None)
        if p.mbr_type is not None and p.name not in dc.hybrid_mbr:
            raise refuse(f"{where}.mbr_type", "is the type of a hybrid MBR entry, and this "
                         "partition is not in disk.hybrid_mbr",
                         hint="on an MBR disk, type is the MBR type; on GPT, list the "
                              "partition in hybrid_mbr")
        if p.image and p.filesystem:
            raise InputError(f"{cfg.path}: {where}: give filesystem or image, not both")
        if p.image_offset not in ("0", "0B") and not p.image:
            raise InputError(f"{cfg.path}: {where}.image_offset: there is no image to place",
                             hint="add image = ... or drop image_offset")


#: Partition keys a disk without a partition table has nowhere to write (key -> its default).
_TABLE_PARTITION_KEYS = {"type": "linux", "bootable": False, "attributes": (), "guid": None,
                         "logical": False, "mbr_type": None}


def _check_tableless_keys(cfg: Config, dc: DiskConfig) -> None:
    """``table = "none"``: the disk keys and partition keys that only a table holds."""
    def refuse(key: str) -> InputError:
        return InputError(f"{cfg.path}: {key}: needs a partition table (this disk's table is "
                          "'none')", hint="drop the key, or use table = 'gpt' or 'mbr'")

    for key in ("guid", "signature", "bios", "hybrid_mbr"):
        if getattr(dc, key):
            raise refuse(f"disk.{key}")
    for i, p in enumerate(dc.partitions):
        for key, default in _TABLE_PARTITION_KEYS.items():
            if getattr(p, key) != default:
                raise refuse(f"disk.partitions[{i}] ({p.name!r}).{key}")


def declared_outputs(cfg: Config) -> list[tuple[str, str]]:
    """(key, file name) of every output the config declares, in build order."""
    outs: list[tuple[str, str | None]] = []
    outs += [(f"initramfs.{n}.output", c.output) for n, c in cfg.initramfs.items()]
    outs += [(f"uki.{n}.output", c.output) for n, c in cfg.uki.items()]
    outs += [(f"filesystems.{n}.output", c.output) for n, c in cfg.filesystems.items()]
    if cfg.disk:
        outs.append(("disk.output", cfg.disk.output))
    if cfg.iso:
        outs.append(("iso.output", cfg.iso.output))
    return [(key, name) for key, name in outs if name]


def _check_outputs(cfg: Config) -> None:
    """Two outputs with one file name would overwrite each other: refuse before building.
    (Each name is already known to stay inside the output directory: OUTPUT_NAME.)"""
    seen: dict[str, str] = {}
    for key, name in declared_outputs(cfg):
        other = seen.get(name)
        if other is not None:
            raise InputError(f"{cfg.path}: {key} = {name!r} is also {other}: one would "
                             "overwrite the other", hint=f"give {key} another file name")
        seen[name] = key


def _check_names(cfg: Config) -> None:
    """Every name a table uses must be defined: catch typos before building anything."""
    def need(kind: str, name: str | None, table: Mapping[str, object], where: str) -> None:
        if name is not None and name not in table:
            known = ", ".join(sorted(table)) or "none defined"
            raise InputError(f"{cfg.path}: {where} names {kind} {name!r}, which is not defined",
                             hint=f"{kind} defined: {known}")

    for i in cfg.initramfs.values():
        need("tree", i.tree, cfg.trees, f"[initramfs.{i.name}]")
    for f in cfg.filesystems.values():
        need("tree", f.tree, cfg.trees, f"[filesystems.{f.name}]")
    if cfg.disk:
        for p in cfg.disk.partitions:
            need("filesystem", p.filesystem, cfg.filesystems, f"partition {p.name!r}")
    if cfg.iso:
        need("tree", cfg.iso.tree, cfg.trees, "[iso]")
    refs: list[tuple[str, str]] = []
    for t in cfg.trees.values():
        refs += [(src, f"[trees.{t.name}] files") for _, src in t.files]
    for u in cfg.uki.values():
        refs += [(u.kernel, f"[uki.{u.name}]")] + [(r, f"[uki.{u.name}]") for r in u.initrd]
    if cfg.disk:
        refs += [(p.image, f"partition {p.name!r}") for p in cfg.disk.partitions if p.image]
        refs += [(r.image, f"disk.regions ({r.name!r})") for r in cfg.disk.regions]
    tables: dict[str, Mapping[str, object]] = {
        "initramfs": cfg.initramfs, "uki": cfg.uki, "fs": cfg.filesystems}
    for value, where in refs:
        if is_ref(value) and value not in ("kernel", "kernel:vmlinuz", "kernel:vmlinux"):
            kind, name = value.split(":", 1)
            table = tables.get(kind)
            if table is not None:
                need(kind, name, table, where)


# -- dm-verity --------------------------------------------------------------------------------

#: A substitution in a kernel command line: ``${verity:NAME}``, the root hash of partition NAME.
SUBSTITUTION = re.compile(r"\$\{([^}]*)\}")
SUBSTITUTION_KINDS = ("verity", "cmdline")


def substitutions(text: str) -> list[tuple[str, str]]:
    """The ``(kind, name)`` of every ``${KIND:NAME}`` in ``text`` (unchecked)."""
    return [(kind, name) for kind, _, name in
            (m.group(1).partition(":") for m in SUBSTITUTION.finditer(text))]


def verity_partitions(dc: DiskConfig) -> dict[str, PartitionConfig]:
    """Data partition name -> the partition holding its hash tree."""
    return {p.verity: p for p in dc.partitions if p.verity}


def _check_companion_type(cfg: Config, p: PartitionConfig, data: PartitionConfig,
                          which: int) -> None:
    """On GPT, the hash (``which`` 0) or signature (1) partition of a discoverable root or
    /usr partition must have its companion type, or systemd would not pair them."""
    from imgkit.disk import parttypes
    assert cfg.disk is not None
    if cfg.disk.table != "gpt":
        return
    want = parttypes.verity_types(data.type)[which]
    if want is not None and parttypes.gpt_type(p.type, what=f"type of partition {p.name!r}") \
            != parttypes.gpt_type(want):
        raise InputError(f"{cfg.path}: partition {p.name!r}: type {p.type!r} does not go with "
                         f"partition {data.name!r} of type {data.type!r}",
                         hint=f'give it type = "{want}"')


def _check_verity(cfg: Config) -> None:
    """dm-verity partitions name a data partition of the same disk; a signature partition
    names a protected one and has a key; every ``${verity:NAME}`` names a protected partition.
    Anything else is refused here, before a byte is hashed."""
    parts = {p.name: p for p in cfg.disk.partitions} if cfg.disk else {}
    hashed = verity_partitions(cfg.disk) if cfg.disk else {}
    for p in parts.values():
        where = f"{cfg.path}: partition {p.name!r}"
        if p.verity is not None:
            data = parts.get(p.verity)
            if data is None or data is p:
                raise InputError(f"{where}: verity = {p.verity!r} names no other partition of "
                                 "the disk", hint="partitions: " + ", ".join(parts))
            if p.filesystem or p.image:
                raise InputError(f"{where}: a verity partition holds the hash tree of "
                                 f"{p.verity!r}; it takes no filesystem or image")
            if hashed[p.verity] is not p:
                raise InputError(f"{where}: partition {p.verity!r} already has the verity "
                                 f"partition {hashed[p.verity].name!r}")
            if not (data.filesystem or data.image):
                raise InputError(f"{where}: partition {data.name!r} has no filesystem or image "
                                 "for a hash tree to protect")
            _check_companion_type(cfg, p, data, 0)
            if data.image and data.image_offset not in ("0", "0B"):
                raise InputError(f"{where}: partition {data.name!r} has an image_offset; the "
                                 "data a hash tree protects starts at the partition's start")
        has_key = p.verity_key is not None or p.verity_certificate is not None
        if p.verity_signature is not None:
            if p.verity_signature not in hashed:
                raise InputError(f"{where}: verity_signature = {p.verity_signature!r} names no "
                                 "partition that a verity partition protects",
                                 hint="protected: " + (", ".join(hashed) or "none"))
            if p.verity_key is None or p.verity_certificate is None:
                raise InputError(f"{where}: verity_signature needs verity_key and "
                                 "verity_certificate (PEM files)")
            if p.filesystem or p.image or p.verity:
                raise InputError(f"{where}: a signature partition holds only the signed root "
                                 "hash; it takes no filesystem, image or verity")
            _check_companion_type(cfg, p, parts[p.verity_signature], 1)
        elif has_key:
            raise InputError(f"{where}: verity_key and verity_certificate go with "
                             "verity_signature", hint='add verity_signature = "PARTITION"')
    if substitutions(cfg.cmdline):
        raise InputError(f"{cfg.path}: cmdline: the top-level command line takes no ${{...}}",
                         hint="substitutions go in the UKI or boot entry command lines")
    for u in cfg.uki.values():
        for kind, name in substitutions(u.cmdline):
            if kind == "cmdline" and not name:
                continue
            if kind not in SUBSTITUTION_KINDS or not name:
                raise InputError(f"{cfg.path}: [uki.{u.name}] cmdline: unknown substitution "
                                 f"${{{kind}{':' + name if name else ''}}}",
                                 hint="there are ${cmdline} (the top-level cmdline) and "
                                      "${verity:PARTITION}, the root hash of a partition a "
                                      "verity partition protects")
            if name not in hashed:
                raise InputError(f"{cfg.path}: [uki.{u.name}] cmdline: ${{verity:{name}}} names "
                                 f"no partition that a verity partition protects",
                                 hint="protected: " + (", ".join(hashed) or "none (add a "
                                      "partition with verity = \"PARTITION\" to [disk])"))


# -- the reference ----------------------------------------------------------------------------

def _rows(table: str, cls: type, when: str = "") -> list[Row]:
    """Rows for ``cls`` and, after each nested table's key, that table's rows."""
    rows = []
    for row, (key, s, _) in zip(reference_rows(table, cls), settings_of(cls), strict=True):
        rows.append(Row(row.table, row.key, row.type, row.default, row.choices, row.help, when))
        if s.type.nested is FilesystemConfig:
            rows += _filesystem_rows()
            continue
        if s.type.nested is None:
            continue
        sub = {"tables": f"{key}.NAME", "list of tables": f"{key}[]"}.get(s.type.name, key)
        rows += _rows(f"{table}.{sub}" if table else sub, s.type.nested)
    if cls is IsoConfig:
        rows += _iso_boot_rows()
    return rows


def _filesystem_rows() -> list[Row]:
    rows = _rows("filesystems.NAME", FilesystemConfig)
    for h in filesystems.handlers():
        rows += _rows("filesystems.NAME", h.options, when=f'type = "{h.name}"')
    for bp in boot.paths():
        if bp.fs_types:
            types = " or ".join(f'"{t}"' for t in bp.fs_types)
            rows += _rows(f"filesystems.NAME.{bp.name}", bp.options, when=f"type = {types}")
    return rows


def _iso_boot_rows() -> list[Row]:
    rows = []
    for key, firmware, default in (("bios", "bios", "isolinux"), ("efi", "uefi", "uki")):
        allowed = boot.names(firmware=firmware, eltorito=True)
        rows.append(Row(f"iso.{key}", "loader", "str", f'`"{default}"`',
                        ", ".join(f'`"{n}"`' for n in allowed),
                        "the boot path whose keys the table holds"))
        for name in allowed:
            rows += _rows(f"iso.{key}", boot.get(name).options, when=f'loader = "{name}"')
    return rows


def reference_markdown() -> str:
    """The README's config reference: a markdown table of every key."""
    return markdown_table(_rows("", Config))


if __name__ == "__main__":
    if sys.argv[1:] != ["--reference"]:
        sys.exit("usage: python -m imgkit.config --reference")
    sys.stdout.write(reference_markdown())
