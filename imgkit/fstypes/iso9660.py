"""The ``iso9660`` entry of the filesystem table: ISO 9660 (Rock Ridge, Joliet, El Torito)
through pycdlib."""
from __future__ import annotations

import os

from imgkit.errors import InputError
from imgkit.filesystems import FilesystemType, report_warnings


class Iso9660(FilesystemType):
    """ISO 9660 with Rock Ridge and Joliet through pycdlib (:mod:`imgkit.formats.iso9660`)."""

    name = "iso9660"
    help = "ISO 9660 (Rock Ridge, Joliet); bootable images come from an [iso] table"
    partition = False
    boot_media = True
    packages = ("xorriso",)

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        from imgkit import progress
        from imgkit.formats.iso9660 import write_iso
        with progress.watching(path, f"filesystem {fs.name}", tree.data_size()):
            info = write_iso(tree, path, volume_id=fs.label or "IMGKIT", mtime_epoch=ctx.mtime,
                             seed=ctx.seed("iso", fs.name))
        report_warnings(info.warnings, ctx)
        return info.size

    def write_boot_media(self, tree, path, entries, *, label, hybrid, ctx):
        from imgkit.formats.iso9660 import IsoBoot, write_iso
        boot = None
        bios = [e for e in entries if e.platform == "bios"]
        efi = [e for e in entries if e.platform == "uefi"]
        if len(bios) > 1 or len(efi) > 1:
            raise InputError("an ISO takes at most one BIOS and one UEFI El Torito entry")
        if entries:
            boot = IsoBoot(bios_image=bios[0].image if bios else None,
                           bios_load_size=bios[0].load_size if bios else 4,
                           boot_info_table=bios[0].boot_info_table if bios else True,
                           efi_image=efi[0].image if efi else None,
                           isohybrid=hybrid and bool(bios), isohybrid_efi=hybrid and bool(efi))
        from imgkit import progress
        with progress.watching(path, f"ISO {os.path.basename(path)}", tree.data_size()):
            info = write_iso(tree, path, volume_id=label, mtime_epoch=ctx.mtime, boot=boot,
                             seed=ctx.seed("iso"))
        report_warnings(info.warnings, ctx)
        return info.size

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.iso9660.read import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.iso9660.read import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)
