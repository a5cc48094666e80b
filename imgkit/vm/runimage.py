"""Decide how to boot a file: which firmware, which drive interface, direct kernel or not.

A multiboot kernel (``imgkit run --kernel gnumach.gz --module 'FILE ARGS'``) goes to QEMU's
own loader when that can take it (a 32-bit ELF), else through GRUB on a small disk made on
the fly, as QEMU refuses 64-bit multiboot ELFs (GNU Mach amd64) and multiboot2 (Xen).

``imgkit run IMAGE`` accepts a kernel, a UKI, a disk image (raw or qcow2) or an ISO. A UKI
cannot be booted by QEMU as it is, so it is wrapped on the fly into a small GPT disk with an
ESP holding it as ``EFI/BOOT/BOOTX64.EFI``.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgkit import tools
from imgkit.errors import InputError
from imgkit.formats import qcow2
from imgkit.formats.multiboot import multiboot_kind
from imgkit.vm.qemu import Drive, QemuSpec

if TYPE_CHECKING:
    from imgkit.detect import Detected


_TABLE_BYTES = 1 << 20  # the head of a disk that holds its MBR and primary GPT


@dataclass(frozen=True)
class ImageKind:
    kind: str  # kernel | uki | iso | disk
    firmware: str  # bios | uefi
    format: str = "raw"
    why: str = ""


def classify(path: str) -> ImageKind:
    """What ``path`` is and which firmware boots it by default."""
    from imgkit.detect import sniff_path

    try:
        found = sniff_path(path)
    except OSError as exc:
        raise InputError(f"cannot read {path!r}: {exc.strerror}") from None
    fmt = found.format
    if fmt == "qcow2":
        return _qcow2_kind(path)
    if fmt == "iso9660":
        return ImageKind("iso", "bios", why="ISO 9660 image")
    if fmt == "bzimage":
        return ImageKind("kernel", "bios", why="Linux bzImage")
    if fmt in ("pe", "uki"):
        return ImageKind("uki", "uefi", why="PE/COFF EFI binary (UKI)")
    if found.boot_signature:
        return _disk_kind(found)
    raise InputError(f"{path!r} is not something imgkit can boot",
                     hint="expected a Linux kernel, a UKI, a raw or qcow2 disk image, or an ISO")


def _disk_kind(found: Detected, format: str = "raw", what: str = "") -> ImageKind:
    """A GPT disk without BIOS boot code in its MBR boots with UEFI, any other with BIOS."""
    if found.format == "gpt" and not found.boot_code:
        return ImageKind("disk", "uefi", format, what + "GPT disk without BIOS boot code")
    return ImageKind("disk", "bios", format,
                     what + ("GPT" if found.format == "gpt" else "MBR") + " disk with boot code")


def _qcow2_kind(path: str) -> ImageKind:
    """The firmware of a qcow2 from the disk inside it, read without following anything the
    image names (a backing file, a data file or a URL makes it an :class:`ImageError`)."""
    from imgkit.detect import sniff_path

    header = qcow2.check_self_contained(path)
    block = 4096 if header.virtual_size >= _TABLE_BYTES else 512
    count = min(header.virtual_size, _TABLE_BYTES) // block
    if count == 0:
        raise InputError(f"{path!r}: qcow2 image of {header.virtual_size} bytes holds no disk")
    with tempfile.TemporaryDirectory(prefix="imgkit-run-") as tmp:
        head = os.path.join(tmp, "head.img")
        tools.run(["qemu-img", "dd", "-U", "-O", "raw", f"bs={block}", f"count={count}",
                   f"if={qcow2.qemu_filename(path)}", f"of={head}"])
        found = sniff_path(head)
    if not found.boot_signature:
        return ImageKind("disk", "bios", "qcow2",
                         "qcow2 image without a partition table (firmware: bios)")
    return _disk_kind(found, "qcow2", "qcow2 image of a ")


def spec_for(path: str, *, firmware: str | None = None, memory: int = 512, cpus: int = 1,
             display: str = "serial", extra_drives: tuple[Drive, ...] = (),
             extra_args: tuple[str, ...] = (), initrd: str | None = None,
             append: str | None = None, workdir: str | None = None,
             snapshot: bool = False, iso_as_disk: bool = False) -> tuple[QemuSpec, ImageKind]:
    """The QEMU spec that boots ``path``; ``workdir`` receives generated wrapper images."""
    kind = classify(path)
    fw = firmware or kind.firmware
    if snapshot:
        extra_args = ("-snapshot",) + tuple(extra_args)  # guest writes never reach the files
    common = dict(memory=memory, cpus=cpus, display=display, extra_args=extra_args)
    if kind.kind == "kernel":
        return QemuSpec(kernel=path, initrd=initrd, append=append or "console=ttyS0",
                        drives=extra_drives, **common), kind  # type: ignore[arg-type]
    if initrd or append:
        raise InputError("--initrd and --append only apply to a kernel booted directly",
                         hint=f"{path} is a {kind.why}")
    if kind.kind == "uki":
        if fw != "uefi":
            raise InputError("a UKI boots only with UEFI firmware", hint="drop --firmware bios")
        disk = _wrap_uki(path, workdir or os.path.dirname(os.path.abspath(path)))
        return QemuSpec(firmware="uefi", drives=(Drive(disk),) + extra_drives,
                        **common), kind  # type: ignore[arg-type]
    if kind.kind == "iso" and not iso_as_disk:
        return QemuSpec(firmware=fw, drives=(Drive(path, "cdrom"),) + extra_drives,
                        **common), kind  # type: ignore[arg-type]
    return QemuSpec(firmware=fw, drives=(Drive(path, "virtio", kind.format),)
                    + extra_drives, **common), kind  # type: ignore[arg-type]


def _wrap_uki(uki: str, workdir: str) -> str:
    from imgkit.bootloaders.systemd_boot import uki_esp_tree
    from imgkit.disk import layout
    from imgkit.disk.image import write_disk
    from imgkit.formats.fat import write_fat

    esp = os.path.join(workdir, "uki-esp.img")
    plan = write_fat(uki_esp_tree(uki), esp, size=None, label="ESP", serial=0x1D6B17)
    disk_plan = layout.plan(layout.DiskSpec(table="gpt", partitions=(
        layout.PartitionSpec(name="esp", type="esp", content_size=plan.size),)))
    disk = os.path.join(workdir, "uki-disk.img")
    write_disk(disk_plan, {"esp": esp}, disk)
    os.unlink(esp)
    return disk


# -- multiboot kernels (GNU Mach, Xen) ---------------------------------------------------------
def _qemu_loads_it(path: str, kind: str) -> bool:
    """QEMU's own -kernel loader takes a multiboot (v1) kernel that is a 32-bit ELF as is
    (not gzipped, not 64-bit: "Cannot load x86-64 image, give a 32bit one")."""
    with open(path, "rb") as f:
        ident = f.read(5)
    return kind == "multiboot" and ident[:4] == b"\x7fELF" and ident[4] == 1


def parse_module(text: str) -> tuple[str, str]:
    """``--module 'FILE ARGS'`` -> (FILE, ARGS): the file, then its command line."""
    parts = text.strip().split(None, 1)
    if not parts:
        raise InputError("--module needs a file, optionally followed by its command line",
                         hint="--module '/boot/ext2fs.static --host-priv-port=1'")
    if not os.path.isfile(parts[0]):
        raise InputError(f"multiboot module {parts[0]!r} does not exist")
    return parts[0], parts[1] if len(parts) > 1 else ""


def multiboot_spec(kernel: str, modules: Sequence[str], *, append: str | None,
                   firmware: str | None, workdir: str, memory: int = 512, cpus: int = 1,
                   display: str = "serial", extra_drives: tuple[Drive, ...] = (),
                   extra_args: tuple[str, ...] = ()) -> QemuSpec | None:
    """The QEMU spec that boots a multiboot ``kernel`` with ``modules`` (``'FILE ARGS'``), or
    ``None`` when it is no multiboot kernel. A 32-bit ELF multiboot kernel goes to QEMU's
    loader (modules as its ``-initrd`` list); any other (64-bit, gzipped, multiboot2) boots
    through GRUB from a disk made in ``workdir`` (BIOS, or UEFI with ``firmware="uefi"``)."""
    kind = multiboot_kind(kernel)
    if kind is None:
        if modules:
            raise InputError(f"--module is for multiboot kernels; {kernel!r} has no multiboot "
                             "or multiboot2 header")
        return None
    mods = [parse_module(m) for m in modules]
    fw = firmware or "bios"
    common = dict(memory=memory, cpus=cpus, display=display)
    if fw == "bios" and _qemu_loads_it(kernel, kind):
        listed = ",".join(" ".join(filter(None, (f.replace(",", ",,"), a.replace(",", ",,"))))
                          for f, a in mods)
        return QemuSpec(kernel=kernel, append=append or "", drives=extra_drives,
                        extra_args=(("-initrd", listed) if mods else ()) + tuple(extra_args),
                        **common)  # type: ignore[arg-type]
    disk = _wrap_multiboot(kernel, kind, mods, append or "", fw, workdir)
    return QemuSpec(firmware=fw, drives=(Drive(disk),) + extra_drives,
                    extra_args=tuple(extra_args), **common)  # type: ignore[arg-type]


def _wrap_multiboot(kernel: str, kind: str, modules: Sequence[tuple[str, str]], cmdline: str,
                    firmware: str, workdir: str) -> str:
    """An MBR disk of one FAT partition booting ``kernel`` with GRUB: grub.cfg with one
    multiboot entry, boot.img and the core image in the gap (BIOS), BOOTX64.EFI (UEFI)."""
    from imgkit.bootloaders import grub
    from imgkit.disk import layout
    from imgkit.disk.image import write_disk
    from imgkit.formats.fat import write_fat

    efi = grub.efi_image(workdir) if firmware == "uefi" else None
    tree = grub.grub_tree([grub.HostEntry(os.path.basename(kernel), kernel, kind, cmdline,
                                          modules=list(modules))],
                          marker="imgkit-run.id", efi_image=efi)
    fat = os.path.join(workdir, "multiboot-boot.img")
    plan = write_fat(tree, fat, size=None, label="GRUB", serial=0x6D0B007)
    disk_plan = layout.plan(layout.DiskSpec(table="mbr", partitions=(
        layout.PartitionSpec(name="boot", type="esp", content_size=plan.size, bootable=True),)))
    regions = grub.bios_disk_boot("mbr", disk_plan, 1, workdir)
    disk = os.path.join(workdir, "multiboot-disk.img")
    write_disk(disk_plan, {"boot": fat}, disk, boot_code=regions.boot_code,
               extra_regions=regions.regions)
    os.unlink(fat)
    return disk
