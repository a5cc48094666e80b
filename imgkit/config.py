"""The ``imgkit build`` config file: TOML in, frozen dataclasses out.

Every table has a fixed set of keys with fixed types; anything else is an error naming the
key, the table and the file, so a typo never silently does nothing. Relative paths are
resolved against the config file's directory. Values that name other artifacts are
references (``"initramfs:main"``, ``"uki:main"``, ``"fs:esp"``, ``"kernel"``,
``"kernel:vmlinux"``); they are checked here and resolved by :mod:`imgkit.build`.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from imgkit.errors import InputError

REF_KINDS = ("initramfs", "uki", "fs", "kernel", "file")


@dataclass(frozen=True)
class KernelConfig:
    source: str = "debian"  # debian | host | path
    path: str | None = None
    moddir: str | None = None
    package: str = "linux-image-amd64"


@dataclass(frozen=True)
class TreeConfig:
    name: str
    sources: tuple[str, ...] = ()
    entries: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # (tree path, host path or reference)
    owner: str = "keep"  # keep | squash
    root_uid: int | None = None
    root_gid: int | None = None
    uid_map: str | None = None
    gid_map: str | None = None
    host_owners: bool = False
    init: str | None = None  # busybox
    modules: tuple[str, ...] = ()
    rc: str | None = None  # shell script run by the built-in init when there is no root=


@dataclass(frozen=True)
class InitramfsConfig:
    name: str
    tree: str
    compress: str = "zstd"
    output: str | None = None


@dataclass(frozen=True)
class UkiConfig:
    name: str
    cmdline: str
    kernel: str = "kernel"
    initrd: tuple[str, ...] = ()
    os_release: str | None = None
    splash: str | None = None
    devicetree: str | None = None
    output: str | None = None


@dataclass(frozen=True)
class SyslinuxConfig:
    kernel: str = "kernel"
    initrd: str | None = None
    append: str = "console=ttyS0"


@dataclass(frozen=True)
class BootEntryConfig:
    id: str
    title: str
    kernel: str = "kernel"
    initrd: tuple[str, ...] = ()
    options: str = ""


@dataclass(frozen=True)
class SystemdBootConfig:
    entries: tuple[BootEntryConfig, ...] = ()
    ukis: tuple[str, ...] = ()  # references placed under EFI/Linux/
    default: str | None = None
    timeout: int = 0


@dataclass(frozen=True)
class FilesystemConfig:
    name: str
    type: str  # vfat | ext4 | iso9660
    tree: str | None = None
    size: str = "auto"
    label: str = ""
    fat_type: int | None = None
    cluster_size: str | None = None
    uuid: str | None = None  # ext4 UUID; vfat serial as "XXXX-XXXX"
    output: str | None = None
    syslinux: SyslinuxConfig | None = None
    systemd_boot: SystemdBootConfig | None = None


@dataclass(frozen=True)
class PartitionConfig:
    name: str
    type: str = "linux"
    size: str = "auto"
    filesystem: str | None = None
    offset: str | None = None
    bootable: bool = False
    attributes: tuple[str, ...] = ()
    guid: str | None = None
    logical: bool = False


@dataclass(frozen=True)
class DiskConfig:
    output: str
    table: str = "gpt"
    size: str = "auto"
    format: str = "raw"
    alignment: str = "1M"
    partitions: tuple[PartitionConfig, ...] = ()
    bios: str | None = None  # syslinux: boot code + installer into the partition holding it
    hybrid_mbr: tuple[str, ...] = ()
    guid: str | None = None  # GPT disk GUID (default: derived from the seed)
    signature: int | None = None  # MBR disk signature (default: derived from the seed)


@dataclass(frozen=True)
class IsoConfig:
    output: str
    tree: str | None = None
    volume_id: str = "IMGKIT"
    bios: SyslinuxConfig | None = None  # isolinux, El Torito no-emulation
    efi: str | None = None  # reference to an EFI binary (e.g. "uki:main") for the EFI El Torito entry
    hybrid: bool = True


@dataclass(frozen=True)
class Config:
    path: str
    base_dir: str
    seed: str = "imgkit"
    mtime: int | None = None
    kernel: KernelConfig = field(default_factory=KernelConfig)
    trees: dict[str, TreeConfig] = field(default_factory=dict)
    initramfs: dict[str, InitramfsConfig] = field(default_factory=dict)
    uki: dict[str, UkiConfig] = field(default_factory=dict)
    filesystems: dict[str, FilesystemConfig] = field(default_factory=dict)
    disk: DiskConfig | None = None
    iso: IsoConfig | None = None


# --------------------------------------------------------------------------------------------

class _Table:
    """Typed, exhaustive access to one TOML table: unknown keys are reported at the end."""

    def __init__(self, data: Any, where: str, file: str) -> None:
        if not isinstance(data, dict):
            raise InputError(f"{file}: [{where}] must be a table, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where
        self.file = file
        self.used: set[str] = set()

    def _err(self, key: str, expected: str, value: Any) -> InputError:
        return InputError(f"{self.file}: {self.where}.{key}: expected {expected}, "
                          f"got {type(value).__name__} {value!r}")

    def get(self, key: str, typ: type | tuple, default: Any = None, *, required: bool = False,
            choices: tuple[str, ...] | None = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise InputError(f"{self.file}: [{self.where}] needs the key {key!r}")
            return default
        value = self.data[key]
        if typ is int and isinstance(value, bool):
            raise self._err(key, "an integer", value)
        if not isinstance(value, typ):
            name = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self._err(key, name, value)
        if choices is not None and value not in choices:
            raise InputError(f"{self.file}: {self.where}.{key}: expected one of "
                             f"{', '.join(choices)}, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, (list, str), [])
        if isinstance(value, str):
            value = [value]
        if not all(isinstance(v, str) for v in value):
            raise self._err(key, "a list of strings", value)
        return tuple(value)

    def size(self, key: str, default: str) -> str:
        value = self.get(key, (str, int), default)
        return str(value)

    def table(self, key: str) -> "_Table | None":
        value = self.get(key, dict)
        where = key if self.where == "top level" else f"{self.where}.{key}"
        return None if value is None else _Table(value, where, self.file)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise InputError(f"{self.file}: unknown key {unknown[0]!r} in [{self.where}]",
                             hint=f"keys allowed there: {known}")


def load_config(path: str) -> Config:
    """Parse and validate the build config at ``path``."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"config file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    top = _Table(data, "top level", path)

    def rel(p: str | None) -> str | None:
        if p is None or os.path.isabs(p) or _is_ref(p):
            return p
        return os.path.normpath(os.path.join(base, p))

    kernel_t = top.table("kernel")
    kernel = KernelConfig()
    if kernel_t is not None:
        kernel = KernelConfig(
            source=kernel_t.get("source", str, "debian", choices=("debian", "host", "path")),
            path=rel(kernel_t.get("path", str)), moddir=rel(kernel_t.get("moddir", str)),
            package=kernel_t.get("package", str, "linux-image-amd64"))
        kernel_t.done()
        if kernel.source == "path" and not kernel.path:
            raise InputError(f"{path}: [kernel] source = 'path' needs path = '...'")

    trees = {}
    for name, t in _named_tables(top, "trees"):
        files_t = t.get("files", dict, {})
        files = []
        for dest, src in files_t.items():
            if not isinstance(src, str):
                raise t._err(f"files.{dest}", "a host path or reference string", src)
            files.append((dest, rel(src)))
        trees[name] = TreeConfig(
            name=name, sources=tuple(rel(s) for s in t.strings("sources")),  # type: ignore[misc]
            entries=t.strings("entries"), files=tuple(files),
            owner=t.get("owner", str, "keep", choices=("keep", "squash")),
            root_uid=t.get("root_uid", int), root_gid=t.get("root_gid", int),
            uid_map=t.get("uid_map", str), gid_map=t.get("gid_map", str),
            host_owners=t.get("host_owners", bool, False),
            init=t.get("init", str, None, choices=("busybox",)),
            modules=t.strings("modules"), rc=t.get("rc", str))
        t.done()

    initramfs = {}
    for name, t in _named_tables(top, "initramfs"):
        initramfs[name] = InitramfsConfig(
            name=name, tree=t.get("tree", str, required=True),
            compress=t.get("compress", str, "zstd", choices=("none", "gzip", "xz", "zstd", "lz4")),
            output=t.get("output", str))
        t.done()

    ukis = {}
    for name, t in _named_tables(top, "uki"):
        ukis[name] = UkiConfig(name=name, cmdline=t.get("cmdline", str, required=True),
                               kernel=rel(t.get("kernel", str, "kernel")),  # type: ignore[arg-type]
                               initrd=tuple(rel(s) for s in t.strings("initrd")),  # type: ignore[misc]
                               os_release=rel(t.get("os_release", str)),
                               splash=rel(t.get("splash", str)),
                               devicetree=rel(t.get("devicetree", str)), output=t.get("output", str))
        t.done()

    filesystems = {}
    for name, t in _named_tables(top, "filesystems"):
        sl = _syslinux(t.table("syslinux"), rel)
        sb_t = t.table("systemd_boot")
        sb = None
        if sb_t is not None:
            entries = []
            for i, e in enumerate(sb_t.get("entries", list, [])):
                et = _Table(e, f"{sb_t.where}.entries[{i}]", path)
                entries.append(BootEntryConfig(
                    id=et.get("id", str, required=True), title=et.get("title", str, "Linux"),
                    kernel=rel(et.get("kernel", str, "kernel")),  # type: ignore[arg-type]
                    initrd=tuple(rel(s) for s in et.strings("initrd")),  # type: ignore[misc]
                    options=et.get("options", str, "")))
                et.done()
            sb = SystemdBootConfig(entries=tuple(entries),
                                   ukis=tuple(rel(s) for s in sb_t.strings("ukis")),  # type: ignore[misc]
                                   default=sb_t.get("default", str),
                                   timeout=sb_t.get("timeout", int, 0))
            sb_t.done()
        filesystems[name] = FilesystemConfig(
            name=name, type=t.get("type", str, required=True, choices=("vfat", "ext4", "iso9660")),
            tree=t.get("tree", str), size=t.size("size", "auto"), label=t.get("label", str, ""),
            fat_type=t.get("fat_type", int),
            cluster_size=None if t.get("cluster_size", (str, int)) is None else str(t.data["cluster_size"]),
            uuid=t.get("uuid", str), output=t.get("output", str), syslinux=sl,
            systemd_boot=sb)
        t.done()

    disk = None
    disk_t = top.table("disk")
    if disk_t is not None:
        parts = []
        for i, p in enumerate(disk_t.get("partitions", list, [])):
            pt = _Table(p, f"disk.partitions[{i}]", path)
            parts.append(PartitionConfig(
                name=pt.get("name", str, required=True), type=pt.get("type", str, "linux"),
                size=pt.size("size", "auto"), filesystem=pt.get("filesystem", str),
                offset=None if pt.get("offset", (str, int)) is None else str(pt.data["offset"]),
                bootable=pt.get("bootable", bool, False), attributes=pt.strings("attributes"),
                guid=pt.get("guid", str), logical=pt.get("logical", bool, False)))
            pt.done()
        disk = DiskConfig(output=disk_t.get("output", str, required=True),
                          table=disk_t.get("table", str, "gpt", choices=("gpt", "mbr")),
                          size=disk_t.size("size", "auto"),
                          format=disk_t.get("format", str, "raw", choices=("raw", "qcow2")),
                          alignment=disk_t.size("alignment", "1M"), partitions=tuple(parts),
                          bios=disk_t.get("bios", str, None, choices=("syslinux",)),
                          hybrid_mbr=disk_t.strings("hybrid_mbr"), guid=disk_t.get("guid", str),
                          signature=disk_t.get("signature", int))
        disk_t.done()

    iso = None
    iso_t = top.table("iso")
    if iso_t is not None:
        iso = IsoConfig(output=iso_t.get("output", str, required=True), tree=iso_t.get("tree", str),
                        volume_id=iso_t.get("volume_id", str, "IMGKIT"),
                        bios=_syslinux(iso_t.table("bios"), rel), efi=rel(iso_t.get("efi", str)),
                        hybrid=iso_t.get("hybrid", bool, True))
        iso_t.done()

    cfg = Config(path=path, base_dir=base, seed=top.get("seed", str, "imgkit"),
                 mtime=top.get("mtime", int), kernel=kernel, trees=trees, initramfs=initramfs,
                 uki=ukis, filesystems=filesystems, disk=disk, iso=iso)
    top.done()
    _check_names(cfg)
    return cfg


def _syslinux(t: _Table | None, rel) -> SyslinuxConfig | None:
    if t is None:
        return None
    out = SyslinuxConfig(kernel=rel(t.get("kernel", str, "kernel")), initrd=rel(t.get("initrd", str)),
                         append=t.get("append", str, "console=ttyS0"))
    t.done()
    return out


def _named_tables(top: _Table, key: str):
    group = top.get(key, dict, {})
    for name, value in group.items():
        yield name, _Table(value, f"{key}.{name}", top.file)  # [trees.NAME] etc.


def _is_ref(value: str) -> bool:
    return value == "kernel" or value.split(":", 1)[0] in REF_KINDS and ":" in value


def _check_names(cfg: Config) -> None:
    """Every name a table uses must be defined: catch typos before building anything."""
    def need(kind: str, name: str | None, table: dict, where: str) -> None:
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
    for value, where in refs:
        if _is_ref(value) and value not in ("kernel", "kernel:vmlinuz", "kernel:vmlinux"):
            kind, name = value.split(":", 1)
            table = {"initramfs": cfg.initramfs, "uki": cfg.uki, "fs": cfg.filesystems}.get(kind)
            if table is not None:
                need(kind, name, table, where)
