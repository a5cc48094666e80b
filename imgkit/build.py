"""The build driver: a config in, the images it declares out.

Artifacts reference each other by name (a tree feeds an initramfs, the initramfs a UKI, the
UKI a FAT tree, the FAT a disk partition). :class:`Builder` resolves each reference once, on
demand, building intermediate artifacts in a private work directory and only the declared
outputs in the output directory (each written under a temporary name and renamed on success).

Disks are built in three steps so that a filesystem can fill its partition: measure the
smallest size of every filesystem, plan the layout (pure), then write each filesystem at its
partition's size (a FAT also learns its partition offset, as its boot sector records it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from imgkit.disk import layout
from imgkit.assemble import TreeSpec, assemble, host_file_entry
from imgkit.config import Config, FilesystemConfig, SyslinuxConfig, TreeConfig
from imgkit.errors import InputError, LayoutError
from imgkit.idmap import idmap_from_options
from imgkit.sizes import parse_size
from imgkit.atomic import atomic_path
from imgkit.disk.image import write_disk_into
from imgkit.tree import Entry, Kind, Tree

Progress = Callable[[str], None]


@dataclass
class Output:
    kind: str
    name: str
    path: str
    size: int
    details: dict = field(default_factory=dict)


@dataclass
class BuildResult:
    outputs: list[Output]


def _fat_serial(text: str | None, seed: str) -> int:
    """A FAT volume serial: ``"ABCD-1234"`` as given, else derived from the build seed."""
    if text is None:
        return int(seed[:8], 16)
    digits = text.replace("-", "")
    if len(digits) != 8 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise InputError(f"vfat uuid {text!r}: expected a serial like 'ABCD-1234' (8 hex digits)")
    return int(digits, 16)


def _file_entry(dest: str, host: str, *, mode: int | None = None,
                mtime: int | None = None) -> Entry:
    """A file a config names: group/other write bits never come from the host's umask."""
    return host_file_entry(dest, host, mode=mode, mtime=mtime, mask=0o755)


class Builder:
    """Builds the artifacts of one config; every artifact is built at most once."""

    def __init__(self, cfg: Config, output_dir: str, *, progress: Progress | None = None,
                 mtime: int | None = None) -> None:
        self.cfg = cfg
        self.output_dir = output_dir
        self.progress = progress or (lambda msg: None)
        self.mtime = mtime if mtime is not None else cfg.mtime
        self._work = tempfile.TemporaryDirectory(prefix="imgkit-build-")
        self.work = self._work.name
        self._cache: dict[str, object] = {}
        self.outputs: list[Output] = []

    def close(self) -> None:
        self._work.cleanup()

    # -- helpers ----------------------------------------------------------------------------
    def _once(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _seed(self, *parts: str) -> str:
        return hashlib.sha256("\0".join((self.cfg.seed, *parts)).encode()).hexdigest()

    def _out_path(self, name: str) -> str:
        os.makedirs(self.output_dir, exist_ok=True)
        return os.path.join(self.output_dir, name)

    def _record(self, kind: str, name: str, path: str, **details) -> None:
        size = os.path.getsize(path)
        self.outputs.append(Output(kind, name, path, size, details))
        self.progress(f"wrote {path} ({size:,} bytes)")

    def _publish(self, kind: str, name: str, built: str, output: str | None) -> None:
        """Copy an intermediate artifact to a declared output (atomically)."""
        if not output:
            return
        dest = self._out_path(output)
        with atomic_path(dest) as tmp:
            shutil.copyfile(built, tmp)
        self._record(kind, name, dest)

    # -- kernel -----------------------------------------------------------------------------
    def kernel(self):
        def make():
            from imgkit.vm import kernel as k
            kc = self.cfg.kernel
            if kc.source == "path":
                return k.find_kernel(kc.path, kc.moddir)  # type: ignore[arg-type]
            if kc.source == "host":
                info = k.host_kernel()
                if info is None:
                    raise InputError("[kernel] source = 'host': no readable kernel in /boot",
                                     hint="use source = 'debian' to fetch one, or 'path'")
                return info
            self.progress(f"kernel: Debian package {kc.package} (cached)")
            return k.fetch_debian_kernel(package=kc.package)
        return self._once("kernel", make)

    # -- references -------------------------------------------------------------------------
    def resolve(self, ref: str, where: str) -> str:
        """A reference or host path -> a host file path."""
        if ref in ("kernel", "kernel:vmlinuz"):
            return self.kernel().vmlinuz
        if ref == "kernel:vmlinux":
            from imgkit.vm.kernel import extract_vmlinux
            return extract_vmlinux(self.kernel().vmlinuz)
        kind, _, name = ref.partition(":")
        if name and kind == "initramfs":
            return self.initramfs(name)
        if name and kind == "uki":
            return self.uki(name)
        if name and kind == "fs":
            return self.filesystem(name)[0]
        if name and kind == "file":
            ref = name
        if not os.path.exists(ref):
            raise InputError(f"{self.cfg.path}: {where}: {ref!r} does not exist",
                             hint="a host path (relative to the config file) or a reference: "
                                  "kernel, initramfs:NAME, uki:NAME, fs:NAME")
        return ref

    # -- trees ------------------------------------------------------------------------------
    def tree(self, name: str) -> Tree:
        return self._once(f"tree:{name}", lambda: self._make_tree(self.cfg.trees[name]))  # type: ignore[return-value]

    def _make_tree(self, tc: TreeConfig) -> Tree:
        moddir = None
        if tc.modules:
            moddir = self.kernel().moddir
            if not moddir:
                raise InputError(f"[trees.{tc.name}] modules need a kernel modules directory",
                                 hint="set [kernel] moddir, or use source = 'debian'")
        files = tuple((self.resolve(src, f"[trees.{tc.name}] files.{dest!r}"), dest, None)
                      for dest, src in tc.files)
        idmap = idmap_from_options(squash=tc.owner == "squash", root_uid=tc.root_uid,
                                   root_gid=tc.root_gid, uid_map=tc.uid_map, gid_map=tc.gid_map)
        spec = TreeSpec(sources=tc.sources, entries=tc.entries, files=files, idmap=idmap,
                        host_owners=tc.host_owners, mtime=self.mtime,
                        origin=f"{self.cfg.path}: [trees.{tc.name}]",
                        entries_origin=f"{self.cfg.path}: [trees.{tc.name}] entries line",
                        init=tc.init, modules=tc.modules, moddir=moddir, rc=tc.rc,
                        file_mask=0o755)
        return assemble(spec, progress=lambda msg: self.progress(f"tree {tc.name}: {msg}"))

    # -- archives and UKIs ------------------------------------------------------------------
    def initramfs(self, name: str) -> str:
        def make() -> str:
            from imgkit.archives import write_initramfs
            ic = self.cfg.initramfs[name]
            path = os.path.join(self.work, f"initramfs-{name}.cpio")
            write_initramfs(self.tree(ic.tree), path, compress=ic.compress)
            self.progress(f"initramfs {name}: {os.path.getsize(path):,} bytes ({ic.compress})")
            self._publish("initramfs", name, path, ic.output)
            return path
        return self._once(f"initramfs:{name}", make)  # type: ignore[return-value]

    def uki(self, name: str) -> str:
        def make() -> str:
            from imgkit.bootloaders.uki import build_uki
            uc = self.cfg.uki[name]
            where = f"[uki.{name}]"
            path = os.path.join(self.work, f"uki-{name}.efi")
            build_uki(path, kernel=self.resolve(uc.kernel, where),
                      initrds=[self.resolve(r, where) for r in uc.initrd], cmdline=uc.cmdline,
                      os_release=uc.os_release,
                      splash=self.resolve(uc.splash, where) if uc.splash else None,
                      devicetree=self.resolve(uc.devicetree, where) if uc.devicetree else None)
            self.progress(f"uki {name}: {os.path.getsize(path):,} bytes")
            self._publish("uki", name, path, uc.output)
            return path
        return self._once(f"uki:{name}", make)  # type: ignore[return-value]

    # -- filesystems ------------------------------------------------------------------------
    def fs_tree(self, fc: FilesystemConfig) -> Tree:
        """The filesystem's tree plus what its bootloaders contribute."""
        def make() -> Tree:
            tree = Tree(default_mtime=self.mtime or 0)
            if fc.tree:
                tree.overlay(self.tree(fc.tree))
            mtime = self.mtime or 0
            if fc.syslinux is not None:
                tree.overlay(self._syslinux_tree(fc.syslinux, f"[filesystems.{fc.name}.syslinux]"))
            if fc.systemd_boot is not None:
                from imgkit.bootloaders.systemd_boot import BootEntry, systemd_boot_tree
                sb = fc.systemd_boot
                where = f"[filesystems.{fc.name}.systemd_boot]"
                entries = [BootEntry(id=e.id, title=e.title, linux=self.resolve(e.kernel, where),
                                     initrds=[self.resolve(r, where) for r in e.initrd],
                                     options=e.options) for e in sb.entries]
                ukis = [(r.partition(":")[2] or os.path.basename(r), self.resolve(r, where))
                        for r in sb.ukis]
                tree.overlay(systemd_boot_tree(entries, ukis, default=sb.default,
                                               timeout=sb.timeout, mtime=mtime))
            return tree
        return self._once(f"fstree:{fc.name}", make)  # type: ignore[return-value]

    def _syslinux_tree(self, sc: SyslinuxConfig, where: str) -> Tree:
        from imgkit.bootloaders.syslinux import syslinux_tree
        return syslinux_tree(self.resolve(sc.kernel, where),
                             self.resolve(sc.initrd, where) if sc.initrd else None, sc.append,
                             mtime=self.mtime or 0)

    def min_fs_size(self, fc: FilesystemConfig) -> int:
        """Smallest size of the filesystem (explicit sizes are taken as they are)."""
        if fc.size != "auto":
            return parse_size(fc.size, what=f"[filesystems.{fc.name}] size")
        tree = self.fs_tree(fc)
        if fc.type == "vfat":
            from imgkit.formats.fat import plan_fat
            slack = 0
            if fc.syslinux is not None:
                from imgkit.bootloaders.syslinux import INSTALL_ROOM
                slack = INSTALL_ROOM
            return plan_fat(tree, size=None, fat_type=fc.fat_type, label=fc.label,
                            cluster_size=parse_size(fc.cluster_size) if fc.cluster_size else None,
                            skip_special=True, slack=slack).size
        if fc.type == "ext4":
            from imgkit.formats.ext4 import estimate_size
            return estimate_size(tree)
        raise InputError(f"[filesystems.{fc.name}]: type {fc.type!r} cannot go in a partition",
                         hint="iso9660 images are built with an [iso] table")

    def filesystem(self, name: str, *, size: int | None = None,
                   hidden_sectors: int = 0) -> tuple[str, int]:
        """Build filesystem ``name`` (at ``size`` bytes, else its own size) -> (path, size)."""
        def make() -> tuple[str, int]:
            fc = self.cfg.filesystems[name]
            tree = self.fs_tree(fc)
            path = os.path.join(self.work, f"fs-{name}.img")
            want = size if size is not None else (
                None if fc.size == "auto" else parse_size(fc.size, what=f"[filesystems.{name}] size"))
            if fc.type == "vfat":
                from imgkit.formats.fat import write_fat
                plan = write_fat(tree, path, size=want, fat_type=fc.fat_type, label=fc.label,
                                 serial=_fat_serial(fc.uuid, self._seed("fat", name)),
                                 cluster_size=parse_size(fc.cluster_size, what=f"[filesystems.{name}] cluster_size")
                                 if fc.cluster_size else None,
                                 hidden_sectors=hidden_sectors, skip_special=True)
                self.progress(f"filesystem {name}: FAT{plan.fat_type}, {plan.size:,} bytes")
            elif fc.type == "ext4":
                from imgkit.formats.ext4 import write_ext4
                info = write_ext4(tree, path, size=want, label=fc.label, seed=self._seed("ext4", name),
                                  uuid=fc.uuid, mtime_epoch=self.mtime)
                self.progress(f"filesystem {name}: ext4, {info.size:,} bytes")
            else:
                from imgkit.formats.iso9660 import write_iso
                write_iso(tree, path, volume_id=fc.label or "IMGKIT", mtime_epoch=self.mtime,
                          seed=self._seed("iso", name))
            self._publish("filesystem", name, path, fc.output)
            return path, os.path.getsize(path)
        key = f"fs:{name}" if size is None else f"fs:{name}@{size}+{hidden_sectors}"
        return self._once(key, make)  # type: ignore[return-value]

    # -- disk -------------------------------------------------------------------------------
    def disk(self) -> str:
        dc = self.cfg.disk
        assert dc is not None
        syslinux_part = None
        if dc.bios == "syslinux":
            holders = [p for p in dc.partitions if p.filesystem
                       and self.cfg.filesystems[p.filesystem].syslinux is not None]
            if len(holders) != 1 or self.cfg.filesystems[holders[0].filesystem].type != "vfat":  # type: ignore[index]
                raise InputError(f"{self.cfg.path}: [disk] bios = 'syslinux' needs exactly one "
                                 "vfat partition whose filesystem has a [syslinux] table",
                                 hint="add syslinux = { kernel = 'kernel', initrd = ..., append = ... } "
                                      "to the ESP's [filesystems.NAME]")
            syslinux_part = holders[0].name
        specs = []
        for p in dc.partitions:
            content = self.min_fs_size(self.cfg.filesystems[p.filesystem]) if p.filesystem else None
            size: int | str | None = p.size
            if p.size == "auto" and content is None:
                raise LayoutError(f"{self.cfg.path}: partition {p.name!r} has size 'auto' but no "
                                  "filesystem to measure", hint="give it a size, e.g. '1M' or 'grow'")
            specs.append(layout.PartitionSpec(
                name=p.name, type=p.type, size=size, offset=p.offset, content_size=content,
                attributes=list(p.attributes), bootable=p.bootable or p.name == syslinux_part,
                guid=p.guid, logical=p.logical, hybrid=p.name in dc.hybrid_mbr))
        plan = layout.plan(layout.DiskSpec(table=dc.table, partitions=tuple(specs),  # type: ignore[arg-type]
                                           size=None if dc.size == "auto" else dc.size,
                                           alignment=dc.alignment, seed=self._seed("disk"),
                                           disk_guid=dc.guid, disk_signature=dc.signature))
        boot_code = None
        if syslinux_part:
            from imgkit.bootloaders.syslinux import mbr_boot_code
            boot_code = mbr_boot_code(dc.table)  # type: ignore[arg-type]
        out = self._out_path(dc.output)
        with atomic_path(out) as tmp:
            # A raw disk is assembled in its final file; qcow2 is converted from a raw one.
            raw = tmp if dc.format == "raw" else os.path.join(self.work, "disk.raw")
            with open(raw, "wb") as f:
                f.truncate(plan.disk_size)
            contents: dict[str, str | None] = {}
            for p in dc.partitions:
                if p.filesystem:
                    contents[p.name] = self._partition_content(p.name, p.filesystem, plan, raw)
            write_disk_into(plan, contents, raw, boot_code=boot_code)
            if syslinux_part:
                from imgkit.bootloaders.syslinux import install_syslinux
                install_syslinux(raw, plan.partition(syslinux_part).start)
            if dc.format == "qcow2":
                from imgkit import tools
                tools.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp])
        self._record("disk", dc.output, out, table=dc.table, format=dc.format,
                     partitions=[{"name": p.name, "start": p.start, "size": p.size,
                                  "number": p.number} for p in plan.partitions])
        return out

    def _partition_content(self, part: str, fs_name: str, plan, disk: str) -> str | None:
        """Put filesystem ``fs_name`` into partition ``part``: ext4 is made in place in the
        disk file (no copy of hundreds of MB); others are built apart and copied in (returns
        the image to copy, or ``None`` when already in place)."""
        pp = plan.partition(part)
        fc = self.cfg.filesystems[fs_name]
        fs_size = pp.size if fc.size == "auto" else parse_size(fc.size)
        if fs_size > pp.size:
            raise LayoutError(f"filesystem {fc.name!r} is {fs_size:,} bytes but partition "
                              f"{part!r} holds {pp.size:,}",
                              hint="make the partition bigger or the filesystem size 'auto'")
        if fc.type == "ext4" and not fc.output:
            from imgkit.formats.ext4 import write_ext4
            info = write_ext4(self.fs_tree(fc), disk, size=fs_size - fs_size % 4096,
                              offset=pp.start, label=fc.label, seed=self._seed("ext4", fc.name),
                              uuid=fc.uuid, mtime_epoch=self.mtime)
            self.progress(f"filesystem {fc.name}: ext4, {info.size:,} bytes, in partition {part}")
            return None
        return self.filesystem(fc.name, size=fs_size, hidden_sectors=pp.start_lba)[0]

    # -- ISO --------------------------------------------------------------------------------
    def iso(self) -> str:
        from imgkit.formats.iso9660 import IsoBoot, write_iso
        ic = self.cfg.iso
        assert ic is not None
        mtime = self.mtime or 0
        tree = Tree(default_mtime=mtime)
        if ic.tree:
            tree.overlay(self.tree(ic.tree))
        bios_image = efi_image = None
        if ic.bios is not None:
            from imgkit.bootloaders.syslinux import isolinux_files, syslinux_cfg
            files = isolinux_files()
            tree.add(_file_entry("isolinux/isolinux.bin", files["isolinux.bin"], mode=0o644, mtime=self.mtime))
            tree.add(_file_entry("isolinux/ldlinux.c32", files["ldlinux.c32"], mode=0o644, mtime=self.mtime))
            where = "[iso.bios]"
            tree.add(_file_entry("boot/vmlinuz", self.resolve(ic.bios.kernel, where), mode=0o644, mtime=self.mtime))
            initrd = None
            if ic.bios.initrd:
                tree.add(_file_entry("boot/initrd", self.resolve(ic.bios.initrd, where), mode=0o644, mtime=self.mtime))
                initrd = "/boot/initrd"
            cfg_text = syslinux_cfg("linux", "/boot/vmlinuz", initrd, ic.bios.append)
            from imgkit.tree import BytesBlob
            tree.add(Entry("isolinux/isolinux.cfg", Kind.FILE, mode=0o644, mtime=mtime,
                           data=BytesBlob(cfg_text.encode())))
            bios_image = "isolinux/isolinux.bin"
        if ic.efi is not None:
            from imgkit.formats.fat import write_fat
            efi = self.resolve(ic.efi, "[iso] efi")
            esp = Tree(default_mtime=mtime)
            esp.add(_file_entry("EFI/BOOT/BOOTX64.EFI", efi, mode=0o644, mtime=self.mtime))
            esp_img = os.path.join(self.work, "iso-efi.img")
            write_fat(esp, esp_img, size=None, label="EFIBOOT", serial=int(self._seed("isoefi")[:8], 16))
            tree.add(_file_entry("boot/efi.img", esp_img, mode=0o644, mtime=self.mtime))
            efi_image = "boot/efi.img"
        boot = None
        if bios_image or efi_image:
            boot = IsoBoot(bios_image=bios_image, efi_image=efi_image,
                           isohybrid=ic.hybrid and bios_image is not None,
                           isohybrid_efi=ic.hybrid and efi_image is not None)
        out = self._out_path(ic.output)
        write_iso(tree, out, volume_id=ic.volume_id, mtime_epoch=self.mtime, boot=boot,
                  seed=self._seed("iso"))
        self._record("iso", ic.output, out)
        return out


def build(cfg: Config, output_dir: str, *, progress: Progress | None = None,
          mtime: int | None = None, only: tuple[str, ...] = ()) -> BuildResult:
    """Build every output ``cfg`` declares (or only those named in ``only``) into ``output_dir``.

    ``only`` names artifacts as ``disk``, ``iso``, ``initramfs:NAME``, ``uki:NAME``,
    ``fs:NAME``.
    """
    b = Builder(cfg, output_dir, progress=progress, mtime=mtime)
    try:
        wanted = set(only)

        def want(key: str) -> bool:
            return not wanted or key in wanted

        for name, ic in cfg.initramfs.items():
            if ic.output and want(f"initramfs:{name}"):
                b.initramfs(name)
        for name, uc in cfg.uki.items():
            if uc.output and want(f"uki:{name}"):
                b.uki(name)
        for name, fc in cfg.filesystems.items():
            if fc.output and want(f"fs:{name}"):
                b.filesystem(name)
        if cfg.disk and want("disk"):
            b.disk()
        if cfg.iso and want("iso"):
            b.iso()
        for key in wanted:
            kind, _, name = key.partition(":")
            if kind not in ("disk", "iso", "initramfs", "uki", "fs") or (
                    name and name not in {"initramfs": cfg.initramfs, "uki": cfg.uki,
                                          "fs": cfg.filesystems}.get(kind, {})):
                raise InputError(f"nothing named {key!r} in {cfg.path}")
        if not b.outputs:
            raise InputError(f"{cfg.path} declares no output",
                             hint="add [disk] or [iso] with output = ..., or output = ... to an "
                                  "[initramfs.NAME], [uki.NAME] or [filesystems.NAME] table")
        return BuildResult(b.outputs)
    finally:
        b.close()
