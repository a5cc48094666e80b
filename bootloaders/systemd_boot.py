"""systemd-boot on an EFI system partition: the files, as a :class:`Tree`.

systemd-boot is a boot manager the firmware starts as ``EFI/BOOT/BOOTX64.EFI`` (the removable
media path, so no NVRAM boot entry is needed). It reads ``loader/loader.conf`` and shows
Boot Loader Specification entries: Type 1 (``loader/entries/ID.conf`` text files naming a
kernel and initrds on the ESP) and Type 2 (unified kernel images in ``EFI/Linux/*.efi``).
The functions here only describe files; a FAT writer turns the tree into a filesystem.
"""
from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from imgkit.bootloaders.table import BootPath, EltoritoEntry
from imgkit.errors import InputError
from imgkit.settings import INT, STR, STRINGS, setting, tables_of
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree, normalize_path

DEFAULT_EFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
#: Where UEFI firmware looks for a boot program on removable media (x86-64).
REMOVABLE_PATH = "EFI/BOOT/BOOTX64.EFI"

PathLike = str | os.PathLike

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class BootEntry:
    """A Type 1 Boot Loader Specification entry plus the host files it needs on the ESP.

    ``linux`` and ``initrds`` are host paths; they are placed under ``directory`` on the ESP
    (default: the entry id) with their base names, and the entry refers to them there.
    """

    id: str
    title: str
    linux: PathLike
    initrds: Sequence[PathLike] = ()
    options: str = ""
    directory: str | None = None
    version: str | None = None
    sort_key: str | None = None
    extra: Sequence[tuple[str, str]] = field(default=())
    """Further ``key value`` lines (``devicetree``, ``architecture``...)."""

    @property
    def esp_dir(self) -> str:
        return normalize_path(self.directory if self.directory is not None else self.id)

    def esp_files(self) -> list[tuple[str, str]]:
        """``(esp_path, host_path)`` of the kernel and initrds, in entry order."""
        files = []
        for host in [self.linux, *self.initrds]:
            host = os.fspath(host)
            files.append((posixpath.join(self.esp_dir, os.path.basename(host)), host))
        return files

    def conf(self) -> str:
        """The entry file's text."""
        if "\n" in self.title or "\n" in self.options:
            raise InputError(f"boot entry {self.id!r}: title and options must be one line")
        files = self.esp_files()
        lines = [f"title {self.title}"]
        if self.version:
            lines.append(f"version {self.version}")
        if self.sort_key:
            lines.append(f"sort-key {self.sort_key}")
        lines.append(f"linux /{files[0][0]}")
        lines += [f"initrd /{esp}" for esp, _ in files[1:]]
        if self.options:
            lines.append(f"options {self.options}")
        lines += [f"{k} {v}" for k, v in self.extra]
        return "\n".join(lines) + "\n"


def loader_conf(default: str | None, timeout: int = 0, *, editor: bool = False,
                console_mode: str | None = None) -> str:
    """``loader/loader.conf``: the default entry (an entry file name such as ``x.conf`` or
    ``x.efi``, globs allowed), the menu timeout in seconds (0 boots at once; holding a key
    still shows the menu) and whether the command line may be edited at boot."""
    lines = []
    if default:
        lines.append(f"default {default}")
    lines.append(f"timeout {int(timeout)}")
    lines.append(f"editor {'yes' if editor else 'no'}")
    if console_mode:
        lines.append(f"console-mode {console_mode}")
    return "\n".join(lines) + "\n"


def _file(tree: Tree, path: str, host: PathLike, mtime: int, origin: str) -> None:
    host = os.fspath(host)
    try:
        size = os.stat(host).st_size
    except OSError as exc:
        raise InputError(f"{origin}: cannot read {host!r}: {exc.strerror}") from exc
    if path in tree and tree[path].kind is Kind.FILE:
        old = tree[path].data
        if getattr(old, "path", None) == host:
            return  # the same host file shared by two entries
        raise InputError(f"{origin}: two different files want the ESP path /{path}",
                         hint="give the entries distinct 'directory' values")
    tree.add(Entry(path, Kind.FILE, mode=0o644, mtime=mtime, data=FileBlob(host, size),
                   origin=origin))


def _text(tree: Tree, path: str, text: str, mtime: int, origin: str) -> None:
    tree.add(Entry(path, Kind.FILE, mode=0o644, mtime=mtime, data=BytesBlob(text.encode()),
                   origin=origin))


def systemd_boot_tree(entries: Sequence[BootEntry] = (), ukis: Sequence[tuple[str, PathLike]] = (),
                      *, default: str | None = None, timeout: int = 0, efi: PathLike = DEFAULT_EFI,
                      editor: bool = False, mtime: int = 0) -> Tree:
    """The ESP files of a systemd-boot installation with Type 1 ``entries`` and Type 2 ``ukis``.

    ``ukis`` are ``(name, host_path)`` pairs, placed at ``EFI/Linux/NAME.efi``. ``default``
    is an entry id (``ID`` or ``ID.conf``, ``NAME.efi``); without it the first entry (or
    UKI) is the default. All files get ``mtime`` (reproducible images).
    """
    if not entries and not ukis:
        raise InputError("systemd-boot needs at least one boot entry or UKI")
    tree = Tree(default_mtime=mtime)
    _file(tree, REMOVABLE_PATH, efi, mtime, "systemd-boot")
    _file(tree, "EFI/systemd/systemd-bootx64.efi", efi, mtime, "systemd-boot")
    ids: list[str] = []
    for entry in entries:
        if not _ID.fullmatch(entry.id):
            raise InputError(f"boot entry id {entry.id!r} is not a valid file name "
                             f"(letters, digits, '.', '_', '+', '-')")
        if entry.id in ids:
            raise InputError(f"boot entry id {entry.id!r} is used twice")
        ids.append(entry.id)
        origin = f"boot entry {entry.id}"
        for esp, host in entry.esp_files():
            _file(tree, esp, host, mtime, origin)
        _text(tree, f"loader/entries/{entry.id}.conf", entry.conf(), mtime, origin)
    names: list[str] = []
    for name, path in ukis:
        name = name[:-4] if name.endswith(".efi") else name
        if not _ID.fullmatch(name):
            raise InputError(f"UKI name {name!r} is not a valid file name")
        if name in names:
            raise InputError(f"UKI name {name!r} is used twice")
        names.append(name)
        _file(tree, f"EFI/Linux/{name}.efi", path, mtime, f"UKI {name}")
    if default is None:
        default = f"{ids[0]}.conf" if ids else f"{names[0]}.efi"
    elif default in ids:
        default = f"{default}.conf"
    elif default in names:
        default = f"{default}.efi"
    _text(tree, "loader/loader.conf", loader_conf(default, timeout, editor=editor), mtime,
          "systemd-boot")
    return tree


def uki_esp_tree(uki_path: PathLike, *, mtime: int = 0) -> Tree:
    """An ESP that boots ``uki_path`` directly: the UKI as ``EFI/BOOT/BOOTX64.EFI``."""
    tree = Tree(default_mtime=mtime)
    _file(tree, REMOVABLE_PATH, uki_path, mtime, "UKI")
    return tree


# -- the boot paths (entries "systemd_boot" and "uki" of the boot path table) ------------------

@dataclass(frozen=True)
class BootEntryConfig:
    id: str = setting(STR, help="the entry's file name (loader/entries/ID.conf)")
    title: str = setting(STR, "Linux", help="the title in the menu")
    kernel: str = setting(STR, "kernel", path=True, help="the kernel: a reference or host path")
    initrd: tuple[str, ...] = setting(STRINGS, (), path=True, help="initrds: references or host paths")
    options: str = setting(STR, "", help="the kernel command line")


@dataclass(frozen=True)
class SystemdBootConfig:
    entries: tuple[BootEntryConfig, ...] = setting(tables_of(BootEntryConfig), (),
                                                   help="Type 1 entries (kernel + initrds + options)")
    ukis: tuple[str, ...] = setting(STRINGS, (), path=True,
                                    help="UKIs placed under EFI/Linux/ (Type 2 entries)")
    default: str | None = setting(STR, None, help="the default entry id or UKI name; default: the first")
    timeout: int = setting(INT, 0, help="menu timeout in seconds (0 boots at once)")


class SystemdBoot(BootPath):
    """systemd-boot on an ESP with Boot Loader Specification entries."""

    name = "systemd_boot"
    firmware = "uefi"
    options = SystemdBootConfig
    help = "UEFI boot manager with Type 1 entries and UKIs, on an ESP"
    fs_types = ("vfat",)
    packages = ("systemd-boot-efi",)

    def fs_files(self, options, ctx, where):
        entries = [BootEntry(id=e.id, title=e.title, linux=ctx.resolve(e.kernel, where),
                             initrds=[ctx.resolve(r, where) for r in e.initrd],
                             options=ctx.substitute(e.options, where))
                   for e in options.entries]
        ukis = [(r.partition(":")[2] or os.path.basename(r), ctx.resolve(r, where))
                for r in options.ukis]
        return systemd_boot_tree(entries, ukis, default=options.default,
                                 timeout=options.timeout, mtime=ctx.mtime or 0)


@dataclass(frozen=True)
class EfiBinaryConfig:
    binary: str = setting(STR, path=True, help="the EFI binary: a reference (\"uki:main\") or host path")


class Uki(BootPath):
    """An EFI binary (usually a UKI) as ``EFI/BOOT/BOOTX64.EFI``: in an ESP, or in the FAT
    image of an ISO's UEFI El Torito entry."""

    name = "uki"
    firmware = "uefi"
    options = EfiBinaryConfig
    help = "UEFI boot of one EFI binary (a UKI) from the removable-media path"
    fs_types = ("vfat",)
    eltorito_capable = True
    shorthand = "binary"
    packages = ("systemd-boot-efi",)

    def fs_files(self, options, ctx, where):
        return uki_esp_tree(ctx.resolve(options.binary, where), mtime=ctx.mtime or 0)

    def eltorito(self, options, ctx, where):
        from imgkit import filesystems
        from imgkit.assemble import host_file_entry
        from imgkit.config import FilesystemConfig

        esp = Tree(default_mtime=ctx.mtime or 0)
        esp.add(host_file_entry(REMOVABLE_PATH, ctx.resolve(options.binary, where), mode=0o644,
                                mtime=ctx.mtime, mask=0o755))
        serial = ctx.seed("isoefi")[:8]
        vfat = filesystems.get("vfat")
        fs = FilesystemConfig(name="iso-efi", type="vfat", label="EFIBOOT",
                              options=vfat.options(uuid=f"{serial[:4]}-{serial[4:]}"))
        image = os.path.join(ctx.work, "iso-efi.img")
        vfat.write(esp, image, 0, None, fs, ctx)
        files = Tree(default_mtime=ctx.mtime or 0)
        files.add(host_file_entry("boot/efi.img", image, mode=0o644, mtime=ctx.mtime, mask=0o755))
        return EltoritoEntry("uefi", "boot/efi.img", files)
