"""Execute a layout :class:`~imgkit.disk.layout.Plan`: a sparse disk image with tables and contents.

The image starts as a hole of the planned size (``ftruncate``; zeros are never written), each
partition image is copied in with ``os.copy_file_range`` one data extent at a time
(``SEEK_DATA``/``SEEK_HOLE``), so holes in a filesystem image stay holes in the disk, and the
tables are written last with ``pwrite``. Nothing is held in memory but the table sectors.

qcow2, vmdk, vhdx and vpc (VHD) outputs go through ``qemu-img convert`` from a temporary raw
image beside the output, an Android sparse image (``android-sparse``, for fastboot) through
:mod:`imgkit.formats.android_sparse`. Either way the output appears only when complete
(:mod:`imgkit.atomic`).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence

from imgkit import progress
from imgkit.atomic import atomic_path
from imgkit.disk.layout import Plan
from imgkit.errors import InputError, LayoutError
from imgkit.formats import gpt as _gpt
from imgkit.formats import mbr as _mbr
from imgkit.holes import all_holes, copy_sparse, pwrite_all
from imgkit.sizes import format_size, format_size_and_bytes

#: Formats ``qemu-img convert`` writes, with the options each needs (a VHD keeps the exact
#: size instead of rounding it to a CHS geometry).
QEMU_FORMATS: dict[str, tuple[str, ...]] = {"qcow2": (), "vmdk": (), "vhdx": (),
                                            "vpc": ("-o", "force_size=on")}
FORMATS = ("raw", *QEMU_FORMATS, "android-sparse")
#: What goes into a partition: a host file at its start, or (host file, byte offset in it).
Content = str | os.PathLike | tuple[str | os.PathLike, int] | None
_CHUNK = 1 << 20


def table_regions(plan: Plan, *, boot_code: bytes | None = None) -> list[tuple[int, bytes]]:
    """The partition table structures of ``plan`` as ``(byte offset, bytes)`` regions.

    ``boot_code`` (at most 440 bytes) fills the code area of the (protective) MBR.
    """
    code = boot_code or b""
    if plan.table == "none":
        if code:
            raise InputError("a disk without a partition table has no MBR for boot code")
        return []
    if plan.table == "gpt":
        parts = [_gpt.GptPartition(p.number, p.type_guid, p.guid, p.start_lba, p.last_lba,
                                   p.attributes, p.label) for p in plan.partitions]
        hybrid = [_mbr.MbrPartition(0, p.mbr_type, p.start_lba, p.num_sectors, p.bootable)
                  for p in sorted(plan.partitions, key=lambda p: p.start) if p.hybrid]
        return _gpt.build_gpt(plan.disk_sectors, parts, disk_guid=plan.disk_guid,
                              sector_size=plan.sector_size, num_entries=plan.num_entries,
                              boot_code=code, hybrid=hybrid,
                              mbr_signature=plan.disk_signature or 0,
                              entries_lba=plan.entries_lba,
                              first_usable_lba=plan.first_usable_lba, backup=plan.gpt_backup,
                              protective_first=plan.protective_first)
    parts = [_mbr.MbrPartition(p.number, p.mbr_type, p.start_lba, p.num_sectors, p.bootable)
             for p in plan.partitions]
    ebrs = [p.ebr_lba for p in plan.partitions if p.logical]
    if plan.extended is not None:
        e = plan.extended
        parts.append(_mbr.MbrPartition(e.number, e.type, e.start_lba, e.num_sectors))
    return _mbr.build_mbr(parts, disk_signature=plan.disk_signature or 0, boot_code=code,
                          ebr_lbas=ebrs, sector_size=plan.sector_size)


def write_disk(plan: Plan, contents: Mapping[str, Content],
               out_path: str | os.PathLike, *, boot_code: bytes | None = None,
               extra_regions: Sequence[tuple[int, bytes]] = (), format: str = "raw") -> None:
    """Write the disk image ``out_path`` for ``plan``.

    ``contents`` maps partition names to host files (partition images) copied to the start of
    the partition, or to ``(host file, offset)`` to copy it that many bytes into it;
    partitions that are missing or ``None`` stay empty (zero, sparse).
    ``boot_code`` goes into the first 440 bytes of the MBR. ``extra_regions`` are
    ``(byte offset, bytes)`` written last, e.g. bootloader stages in reserved ranges; they may
    not touch partitions or table structures. ``format`` is ``"raw"`` or ``"qcow2"``.
    """
    if format not in FORMATS:
        raise InputError(f"disk format: expected one of {', '.join(FORMATS)}, got {format!r}")
    sources = _check_contents(plan, contents)
    if boot_code is not None and len(boot_code) > _mbr.BOOT_CODE_SIZE:
        raise InputError(f"MBR boot code is {len(boot_code)} bytes; at most "
                         f"{_mbr.BOOT_CODE_SIZE} fit",
                         hint="pass only the first 440 bytes of the MBR image")
    _check_regions(plan, extra_regions, boot_code)
    tables = table_regions(plan, boot_code=boot_code)
    if format in QEMU_FORMATS:
        from imgkit import tools  # spares raw disks the subprocess import
        tools.which("qemu-img")
    with atomic_path(out_path) as tmp:
        if format == "raw":
            _write_raw(plan, sources, tables, extra_regions, tmp)
            return
        fd, raw = tempfile.mkstemp(prefix=".raw.", suffix=".img",
                                   dir=os.path.dirname(os.path.abspath(out_path)))
        os.close(fd)
        try:
            _write_raw(plan, sources, tables, extra_regions, raw)
            convert_raw(raw, tmp, format)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(raw)


def convert_raw(raw: str | os.PathLike, dest: str | os.PathLike, format: str, *,
                seed: str = "", mtime: int = 0, name: str | None = None) -> None:
    """Write the raw disk image ``raw`` as ``dest`` in ``format`` (not ``raw``).

    qemu-img stamps vmdk, vhdx and vpc outputs with random ids and the time; those are
    rewritten from ``seed`` and ``mtime`` (:func:`_stamp`), so the same disk gives the same
    bytes. ``name`` is the file name the output will have (a vmdk names itself)."""
    if format == "android-sparse":
        from imgkit.formats.android_sparse import write_sparse
        write_sparse(raw, dest)
        return
    if format not in QEMU_FORMATS:
        raise InputError(f"disk format: expected one of {', '.join(FORMATS)}, got {format!r}")
    from imgkit import tools
    with progress.watching(os.fspath(dest), f"{format} {os.path.basename(os.fspath(dest))}",
                           os.stat(raw).st_blocks * 512):
        tools.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", format,
                   *QEMU_FORMATS[format], os.fspath(raw), os.fspath(dest)])
    _stamp(os.fspath(dest), format, seed, mtime, name or os.path.basename(os.fspath(dest)))


def _stamp(path: str, format: str, seed: str, mtime: int, name: str) -> None:
    """The fields qemu-img fills at random, derived from ``seed`` instead."""
    from imgkit.formats.gpt import guid_from_seed

    def guid(what: str) -> bytes:
        return guid_from_seed(seed, f"{format}:{what}").bytes_le

    if format == "vmdk":
        from imgkit.formats import vmdk
        vmdk.stamp(path, cid=int.from_bytes(guid("cid")[:4], "little"), extent_name=name)
    elif format == "vpc":
        from imgkit.formats import vpc
        vpc.stamp(path, unique_id=guid_from_seed(seed, "vpc:id").bytes, unix_time=mtime)
    elif format == "vhdx":
        from imgkit.formats import vhdx
        vhdx.stamp(path, vhdx.VhdxIds(guid("file-write"), guid("data-write"), guid("log"),
                                      guid("disk-id")))


def _check_contents(plan: Plan, contents: Mapping[str, Content]
                    ) -> list[tuple[int, str, int]]:
    """``(partition start, host path, size)`` for each content file, checked against the plan."""
    names = {p.name: p for p in plan.partitions}
    out = []
    for name, path in contents.items():
        if name not in names:
            raise InputError(f"content given for partition {name!r}, which the layout does not "
                             "have", hint="partitions: " + ", ".join(names))
        if path is None:
            continue
        offset = 0
        if isinstance(path, tuple):
            path, offset = path
        path = os.fspath(path)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise InputError(f"content of partition {name!r}: cannot read {path}: "
                             f"{exc.strerror}") from None
        part = names[name]
        if offset < 0 or offset + size > part.size:
            at = f" at offset {offset}" if offset else ""
            raise LayoutError(
                f"partition {name!r}: content {path} is {format_size_and_bytes(size)}{at} "
                f"but the partition holds only {format_size_and_bytes(part.size)}",
                hint="make the partition bigger, or its size 'auto'")
        out.append((part.start + offset, path, size))
    return out


def _check_regions(plan: Plan, regions: Sequence[tuple[int, bytes]],
                   boot_code: bytes | None) -> None:
    taken = [(p.start, p.end, f"partition {p.name!r}") for p in plan.partitions]
    taken += [(s.start, s.end, s.what) for s in plan.structures]
    if boot_code:
        taken.append((0, len(boot_code), "the MBR boot code"))
    for offset, data in regions:
        end = offset + len(data)
        if offset < 0 or end > plan.disk_size:
            raise LayoutError(f"extra region [{offset}, {end}) lies outside the "
                              f"{format_size(plan.disk_size)} disk")
        for start, stop, what in taken:
            if offset < stop and start < end:
                raise LayoutError(f"extra region [{offset}, {end}) overlaps {what} "
                                  f"[{start}, {stop})",
                                  hint="reserve a range for it in the layout and place it there")


def write_disk_into(plan: Plan, contents: Mapping[str, Content], path: str,
                    *, boot_code: bytes | None = None,
                    extra_regions: Sequence[tuple[int, bytes]] = ()) -> None:
    """Like :func:`write_disk`, into the existing raw file ``path`` (made ``plan.disk_size``
    bytes), keeping what is already in it.

    For builds that write a filesystem straight into its partition (``mke2fs -E offset=``)
    rather than copying a separate image in; ``path`` is not replaced atomically, so it
    should itself be a temporary file.
    """
    sources = _check_contents(plan, contents)
    if boot_code is not None and len(boot_code) > _mbr.BOOT_CODE_SIZE:
        raise InputError(f"MBR boot code is {len(boot_code)} bytes; at most "
                         f"{_mbr.BOOT_CODE_SIZE} fit")
    _check_regions(plan, extra_regions, boot_code)
    _write_raw(plan, sources, table_regions(plan, boot_code=boot_code), extra_regions,
               os.fspath(path), fresh=False)


def _write_raw(plan: Plan, sources: list[tuple[int, str, int]],
               tables: list[tuple[int, bytes]], extra: Sequence[tuple[int, bytes]],
               path: str, *, fresh: bool = True) -> None:
    with open(path, "r+b") as out:
        fd = out.fileno()
        if fresh:
            all_holes(fd, plan.disk_size)
        else:
            os.ftruncate(fd, plan.disk_size)
        data = sum(min(os.stat(src).st_blocks * 512, size) for _start, src, size in sources)
        with progress.watching(path, f"disk {os.path.basename(path)}", data):
            for start, src, size in sources:
                copy_sparse(src, fd, start, size)
        for offset, data in list(tables) + list(extra):
            pwrite_all(fd, data, offset)


