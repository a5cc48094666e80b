"""What is in an image file, as a JSON-able description: dispatch over detect and the formats.

``imgkit inspect`` answers "what did I build?" without mounting anything. :mod:`imgkit.detect`
names the format; partition tables come from :mod:`imgkit.disk.probe` (typed
:class:`~imgkit.disk.probe.PartitionTable`, turned into JSON by its ``to_json``), and each
filesystem is described by its format's reader (``describe(f, offset, size)`` of
:mod:`imgkit.formats.fat.read`, ``ext4.read``, ``iso9660.read``, :mod:`imgkit.formats.squashfs`).
Archives are counted through libarchive, PE files through :mod:`imgkit.formats.pe`, and qcow2
through ``qemu-img info`` (its content is converted to a temporary sparse raw image to be read).

Everything reads at most a few sectors per structure: a 100 GiB disk image describes as fast
as a small one.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import weakref
from collections.abc import Iterator
from typing import BinaryIO

from imgkit import detect as _detect
from imgkit import scratch, tools
from imgkit.detect import ARCHIVE_FORMATS, DISK_FORMATS, FORMATS, FS_FORMATS
from imgkit.disk import probe
from imgkit.errors import ImageError, InputError
from imgkit.formats import qcow2


@contextlib.contextmanager
def _opened(source: str | os.PathLike | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"image {path!r} does not exist")
        if os.path.isdir(path):
            raise InputError(f"{path!r} is a directory, expected an image file")
        _detect.regular_file(path)
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise InputError(f"cannot open image {path!r}: {exc.strerror}") from exc
        with f:
            yield f
    else:
        yield source


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def detect(source: str | os.PathLike | BinaryIO, offset: int | None = None) -> str:
    """The format of the image at ``source`` (a path, or a binary file object).

    ``offset`` is where the image starts in the file (a partition inside a disk); for a file
    object it defaults to the object's current position, for a path to 0. Returns one of
    :data:`FORMATS`, or ``"unknown"``. A compressed cpio or tar (gzip, xz, zstd, lz4, bzip2)
    answers ``"cpio"``/``"tar"``; an ISO 9660 image that also carries an MBR or GPT (a hybrid
    ISO) answers ``"iso9660"``.
    """
    with _opened(source) as f:
        base = offset if offset is not None else (0 if isinstance(source, (str, os.PathLike))
                                                  else f.tell())
        return _detect.sniff(f, base).format


def filesystem_info(f: BinaryIO, base: int = 0, size: int | None = None) -> dict:
    """Detect and describe the filesystem (or whatever else) starting at ``base``."""
    found = _detect.sniff(f, base)
    reader = _detect.reader(found.filesystem)
    if reader is not None:
        return reader.describe(f, base, size)
    if found.format == "grub-core":
        return grub_core_info(f, base, os.fstat(f.fileno()).st_size)
    if found.format == "unknown":
        head = _read_at(f, base, 4096)
        if not head.strip(b"\0"):
            return {"format": "empty"}
        return {"format": "unknown", "magic": head[:16].hex(" ")}
    out = {"format": found.format}
    if found.compression:
        out["compression"] = found.compression
    return out


# -- GRUB for BIOS: boot.img in sector 0, the core image it loads ---------------------------
#: startup_raw.S (lzma_decompress.img, after diskboot.img): the sizes grub-mkimage writes.
_LZMA_COMPRESSED_SIZE, _LZMA_UNCOMPRESSED_SIZE, _NO_REED_SOLOMON_LENGTH = 0x08, 0x0C, 0x14
#: ``struct grub_module_info32 {magic "mimg", offset, size}`` then ``{type, size}`` objects.
_MODULE_INFO = struct.Struct("<4sII")
_MODULE_HEADER = struct.Struct("<II")
_OBJ_TYPE_PREFIX = 3
#: grub-mkimage's LZMA settings (util/mkimage.c compress_kernel_lzma): a raw LZMA1 stream.
_GRUB_LZMA = [{"id": 0x4000000000000001, "dict_size": 1 << 16, "lc": 3, "lp": 0, "pb": 2}]
_MAX_CORE = 1 << 20


def _mbr_boot_code(f: BinaryIO, disk_size: int) -> dict | None:
    """The boot code in sector 0 when imgkit knows it: GRUB's boot.img with the LBA of the
    core image it loads (u64 at 0x5c) and that core image described."""
    from imgkit.bootloaders.grub import KERNEL_SECTOR, SECTOR
    sector = _read_at(f, 0, SECTOR)
    loader = _detect.boot_loader(sector)
    if loader is None:
        return None
    (lba,) = struct.unpack_from("<Q", sector, KERNEL_SECTOR)
    out: dict = {"loader": loader, "core_lba": lba}
    if lba * SECTOR >= disk_size:
        out["core"] = {"error": f"sector {lba} is past the end of the image"}
    else:
        out["core"] = grub_core_info(f, lba * SECTOR, disk_size)
    return out


def grub_core_info(f: BinaryIO, base: int, file_size: int, *, installed: bool = True) -> dict:
    """GRUB's i386-pc core image at ``base``: diskboot.img's first block list (where the rest
    of the core is read from), the LZMA sizes and the prefix (``(,gpt2)/boot/grub``) when the
    compressed kernel can be read. A core image file (not ``installed``) is read as one piece:
    grub-mkimage's block list is a placeholder until grub-setup (or imgkit) places it."""
    from imgkit.bootloaders.grub import BLOCKLIST, FIRST_BLOCKLIST, SECTOR
    first = _read_at(f, base, SECTOR)
    if not _detect.is_grub_core(first):
        return {"format": "unknown", "error": f"no GRUB diskboot.img at offset {base}"}
    start, length, segment = BLOCKLIST.unpack_from(first, FIRST_BLOCKLIST)
    out: dict = {"format": "grub-core", "diskboot": True,
                 "blocklist": {"start_lba": start, "sectors": length, "segment": f"{segment:#x}"}}
    rest_at = start * SECTOR if installed else base + SECTOR
    size = min(length * SECTOR, _MAX_CORE, max(file_size - rest_at, 0))
    rest = _read_at(f, rest_at, size)
    if len(rest) < 0x20:
        out["error"] = f"the core's block list points at {rest_at}, past the end of the image"
        return out
    compressed, uncompressed, no_rs = struct.unpack_from("<I", rest, _LZMA_COMPRESSED_SIZE)[0], \
        struct.unpack_from("<I", rest, _LZMA_UNCOMPRESSED_SIZE)[0], \
        struct.unpack_from("<I", rest, _NO_REED_SOLOMON_LENGTH)[0]
    out.update(compressed_size=compressed, uncompressed_size=uncompressed)
    prefix = _core_prefix(rest, compressed, uncompressed, no_rs)
    if prefix is not None:
        out["prefix"] = prefix
    return out


def _core_prefix(rest: bytes, compressed: int, uncompressed: int, no_rs: int) -> str | None:
    """The prefix object of the LZMA-compressed kernel after the decompressor. Where the
    decompressor ends is not recorded: the stream is tried at 16-byte steps after the part
    Reed-Solomon does not cover, until one decompresses to exactly ``uncompressed`` bytes."""
    import lzma
    if not 0 < uncompressed <= 4 * _MAX_CORE or no_rs >= len(rest):
        return None
    for at in range(no_rs & ~15, min(len(rest), no_rs + 8192), 16):
        try:
            kernel = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_GRUB_LZMA).decompress(
                rest[at:at + compressed], uncompressed)
        except lzma.LZMAError:
            continue
        if len(kernel) == uncompressed:
            return _prefix_object(kernel)
    return None


def _prefix_object(kernel: bytes) -> str | None:
    at = kernel.rfind(b"mimg")
    if at < 0 or at + _MODULE_INFO.size > len(kernel):
        return None
    _, offset, size = _MODULE_INFO.unpack_from(kernel, at)
    pos, end = at + offset, min(at + size, len(kernel))
    while pos + _MODULE_HEADER.size <= end:
        kind, length = _MODULE_HEADER.unpack_from(kernel, pos)
        if length < _MODULE_HEADER.size:
            return None
        if kind == _OBJ_TYPE_PREFIX:
            return kernel[pos + _MODULE_HEADER.size:pos + length].split(b"\0")[0].decode(
                "utf-8", "replace")
        pos += length
    return None


def _partition_fs(f: BinaryIO, p: probe.Partition, disk_size: int) -> dict | None:
    """What partition ``p`` holds; damage is reported in the description, not raised."""
    if p.extended:
        return None
    if p.start >= disk_size:
        return {"format": "missing", "error": "the partition starts past the end of the image"}
    try:
        info = filesystem_info(f, p.start, p.size)
    except (ImageError, struct.error, ValueError, IndexError) as exc:
        return {"format": "unknown", "error": f"unreadable: {exc}"}
    if p.start + p.size > disk_size:
        info["truncated"] = True
    if (info.get("size") or 0) > p.size:
        info["larger_than_partition"] = True
    return info


def read_table(f: BinaryIO, disk_size: int, kind: str | None = None) -> dict | None:
    """The partition table of the disk ``f`` as JSON, with what each partition holds."""
    table = probe.read_table(f, disk_size, kind)
    if table is None:
        return None
    return table.to_json(lambda p: _partition_fs(f, p, disk_size))


# -- other kinds ------------------------------------------------------------------------------

def _archive_info(path: str) -> dict:
    import libarchive
    entries = data = 0
    fmt = filters = None
    try:
        with libarchive.file_reader(path) as archive:
            for entry in archive:
                entries += 1
                data += (entry.size or 0) if entry.isreg else 0
            fmt, filters = archive.format_name, archive.filter_names
    except libarchive.ArchiveError as exc:
        raise ImageError(f"cannot read archive {path!r}: {exc}") from exc
    dec = [x.decode() if isinstance(x, bytes) else str(x) for x in (filters or [])]
    return {"archive_format": fmt.decode() if isinstance(fmt, bytes) else fmt,
            "filters": [x for x in dec if x != "none"], "entries": entries, "data_bytes": data}


def _pe_info(path: str) -> dict:
    from imgkit.formats.pe import PEImage
    img = PEImage.read(path)
    sections = [{"name": s.name, "virtual_size": s.virtual_size,
                 "virtual_address": f"0x{s.virtual_address:x}", "raw_size": s.raw_size,
                 "raw_offset": f"0x{s.raw_offset:x}"} for s in img.sections]
    out: dict = {"machine": f"0x{img.coff['Machine']:04x}", "pe32plus": img.is_pe32plus,
                 "subsystem": img.optional.get("Subsystem"), "signed": img.is_signed,
                 "sections": sections, "uki": img.section(".linux") is not None}
    with open(path, "rb") as f:
        for name in (".osrel", ".cmdline", ".uname"):
            s = img.section(name)
            if s is None or not s.raw_size:
                continue
            raw = _read_at(f, s.raw_offset, min(s.virtual_size or s.raw_size, s.raw_size, 65536))
            text = raw.rstrip(b"\0").decode("utf-8", "replace").strip()
            if name == ".osrel":
                for line in text.splitlines():
                    if line.startswith("PRETTY_NAME="):
                        out["os"] = line.split("=", 1)[1].strip().strip('"')
            else:
                out[name[1:]] = text
    return out


class _TempRaw:
    """A temporary raw image converted from qcow2, removed when nothing refers to it."""

    def __init__(self, src: str) -> None:
        qcow2.check_self_contained(src)
        fd, self.path = tempfile.mkstemp(prefix="imgkit-raw-", suffix=".img",
                                            dir=scratch.current())
        os.close(fd)
        weakref.finalize(self, _unlink, self.path)
        _check_expansion(src, os.path.dirname(self.path))
        tools.run(["qemu-img", "convert", "-U", qcow2.qemu_filename(src), "-O", "raw", self.path])


def _check_expansion(src: str, directory: str) -> None:
    """Refuse a qcow2 whose allocated data would pass the spool limit once converted: a few
    hundred KB of qcow2 whose tables all point at one cluster describe 64 GiB of data."""
    measured = json.loads(tools.run(["qemu-img", "measure", "-U", "--output=json", "-O", "qcow2",
                                     qcow2.qemu_filename(src)]).stdout)
    needed = int(measured.get("required", 0))
    limit = scratch.spool_limit(directory)
    if os.path.basename(directory).startswith(scratch.PREFIX):
        directory = os.path.dirname(directory)
    if needed > limit:
        raise ImageError(f"{src}: the qcow2 image holds {needed:,} bytes of allocated data "
                         f"({os.path.getsize(src):,} bytes on disk), more than the "
                         f"{limit:,}-byte limit for reading it through {directory}",
                         hint="IMGKIT_SPOOL_LIMIT=SIZE raises it (default: 90% of the free "
                              "space there); a small qcow2 describing this much data has "
                              "tables pointing at shared clusters")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def qcow2_raw(path: str) -> _TempRaw:
    """``path`` (qcow2) converted to a sparse temporary raw image (``.path``).

    An image naming a backing file, a data file or a URL is refused (:class:`ImageError`)."""
    return _TempRaw(path)


def _virtual_disk_info(path: str, kind: str) -> dict:
    """The header facts of a vmdk, vhdx or vpc file, read by :mod:`imgkit.formats` (the disk
    inside is not opened: QEMU would follow what such a file names)."""
    if kind == "vmdk":
        from imgkit.formats import vmdk
        v = vmdk.read_info(path)
        cid = next((line[4:] for line in v.descriptor.splitlines() if line.startswith("CID=")), "")
        return {"format": kind, "virtual_size": v.virtual_size, "grain_size": v.grain_size,
                "cid": cid}
    if kind == "vpc":
        from imgkit.formats import vpc
        h = vpc.read_info(path)
        return {"format": kind, "virtual_size": h.virtual_size, "disk_type": h.disk_type,
                "created": h.created, "creator": h.creator}
    from imgkit.formats import vhdx
    return {"format": kind, "virtual_size": vhdx.read_virtual_size(path)}


def _qcow2_info(path: str) -> dict:
    qcow2.check_self_contained(path)
    info = json.loads(tools.run(["qemu-img", "info", "-U", "--output=json",
                                 qcow2.qemu_filename(path)]).stdout)
    spec = (info.get("format-specific") or {}).get("data") or {}
    out = {"virtual_size": info.get("virtual-size"), "cluster_size": info.get("cluster-size"),
           "compat": spec.get("compat"), "backing_file": info.get("backing-filename"),
           "allocated": info.get("actual-size")}
    if out["backing_file"] is None:
        raw = _TempRaw(path)
        out["contents"] = describe(raw.path)
        out["contents"]["path"] = f"{path} (virtual disk)"
    return out


# -- the public description -------------------------------------------------------------------

def describe(path: str | os.PathLike) -> dict:
    """Everything worth knowing about the image at ``path``, as a JSON-able dict.

    Always: ``path``, ``size`` (file bytes), ``format`` (as :func:`detect`). Disks add
    ``table`` with the partition list, each partition with the ``filesystem`` found in it;
    filesystem images add ``filesystem``; a hybrid ISO has both. Archives add ``archive``,
    PE files ``pe``, qcow2 ``qcow2`` (with the described virtual disk as ``contents``).
    Raises :class:`InputError` for a missing file, :class:`ImageError` for an unknown format.
    """
    path = os.fspath(path)
    with _opened(path) as f:
        size = os.fstat(f.fileno()).st_size
        found = _detect.sniff(f, 0)
        kind, compression = found.format, found.compression
        out: dict = {"path": path, "size": size, "format": kind}
        if kind in DISK_FORMATS or kind == "grub-boot":
            out["table"] = read_table(f, size, kind) if kind in DISK_FORMATS else None
            boot_code = _mbr_boot_code(f, size)
            if boot_code is not None:
                out["boot_code"] = boot_code
        elif kind == "grub-core":
            out["grub_core"] = grub_core_info(f, 0, size, installed=False)
        elif found.is_multiboot:
            from imgkit.formats.multiboot import read_header
            header = read_header(path)
            if header is not None:
                out["multiboot"] = _multiboot_info(header)
        elif kind == "iso9660":
            out["filesystem"] = filesystem_info(f, 0, size)
            table = read_table(f, size, kind)
            if table is not None:
                out["table"] = table
                out["hybrid"] = table["table"]
        elif kind in FS_FORMATS:
            out["filesystem"] = filesystem_info(f, 0, size)
        elif kind == "android-sparse":
            from imgkit.formats import android_sparse
            out["android_sparse"] = android_sparse.summary(android_sparse.read_sparse(f))
        elif kind in ("vmdk", "vhdx", "vpc"):
            out["virtual_disk"] = _virtual_disk_info(path, kind)
        elif kind == "unknown":
            raise unknown_format(path, _read_at(f, 0, 16))
    if found.is_archive:
        out["archive"] = _archive_info(path) if kind in ARCHIVE_FORMATS else {}
        out["archive"]["compression"] = compression or "none"
    elif kind in ("pe", "uki") or (kind == "bzimage" and _is_pe(path)):
        out["pe"] = _pe_info(path)
    elif kind == "qcow2":
        out["qcow2"] = _qcow2_info(path)
    return out


def _multiboot_info(header) -> dict:
    return {"kind": header.kind, "offset": header.offset, "elf": header.elf,
            "compression": header.compression or "none",
            **({"flags": f"{header.flags:#x}"} if header.kind == "multiboot"
               else {"architecture": header.architecture, "tags": list(header.tags)}),
            "flag_names": header.flag_names, "summary": header.describe()}


def unknown_format(path: str, head: bytes) -> ImageError:
    """The error for an image none of :data:`FORMATS` matches, showing its first bytes."""
    what = "an empty file" if not head else (
        "zeros" if not head.strip(b"\0") else f"first bytes {head.hex(' ')} ({head!r:.40})")
    return ImageError(f"{path}: unknown image format: found {what}",
                      hint="recognised: GPT and MBR disks, FAT12/16/32, ext2/3/4, ISO 9660, "
                           "squashfs, qcow2, Android sparse, cpio and tar (plain or gzip/xz/zstd/lz4/bzip2), "
                           "zip, PE/UKI, multiboot kernels, GRUB boot.img and core.img")


# -- for humans -------------------------------------------------------------------------------

def _size(n: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def _fs_summary(fs: dict | None) -> str:
    if not fs:
        return ""
    parts = [fs["format"]]
    if fs.get("label"):
        parts.append(f"label={fs['label']!r}")
    if fs.get("uuid"):
        parts.append(f"uuid={fs['uuid']}")
    if fs.get("size"):
        parts.append(_size(fs["size"]))
    if fs.get("cluster_size"):
        parts.append(f"cluster {fs['cluster_size']}")
    if fs.get("block_size") and fs["format"].startswith("ext"):
        parts.append(f"block {fs['block_size']}")
    if fs.get("truncated"):
        parts.append("TRUNCATED (the image ends inside the partition)")
    if fs.get("larger_than_partition"):
        parts.append("LARGER THAN ITS PARTITION")
    if fs.get("magic"):
        parts.append(f"magic {fs['magic']}")
    if fs.get("format") == "grub-core":
        parts.append(f"(GRUB core image, prefix {fs.get('prefix', 'unreadable')})")
    return " ".join(parts)


def _table_lines(table: dict) -> list[str]:
    ss = table["sector_size"]
    lines = []
    if table["table"] == "gpt":
        lines.append(f"Partition table: GPT, disk GUID {table['disk_guid'].upper()}, "
                     f"{ss}-byte sectors, {table['max_partitions']} entries at LBA "
                     f"{table['entries_lba']}")
        lines.append(f"Usable sectors {table['first_usable_lba']}-{table['last_usable_lba']}; "
                     f"backup table {'OK' if table['backup_ok'] else 'MISSING OR DIFFERENT'}")
    else:
        lines.append(f"Partition table: MBR, disk signature {table['disk_signature']}, "
                     f"{ss}-byte sectors")
    parts = table["partitions"]
    if not parts:
        lines.append("No partitions.")
        return lines
    rows = [("#", "Start", "End", "Sectors", "Size", "Type", "Name" if table["table"] == "gpt"
             else "Boot", "Filesystem")]
    for p in parts:
        t = p["type_name"] if p["type_name"] != p["type"] else p["type"]
        if table["table"] == "mbr":
            t = f"{p['type'][2:]} {p['type_description']}"
            name = "*" if p["bootable"] else ""
        else:
            name = p["name"]
        rows.append((str(p["number"]), str(p["start_lba"]), str(p["end_lba"]), str(p["sectors"]),
                     _size(p["size"]), t, name, _fs_summary(p["filesystem"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {0, 1, 2, 3, 4}
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=False))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    if table["table"] == "gpt":
        lines.append("")
        for p in parts:
            attrs = ", ".join(p["attribute_names"]) or "none"
            lines.append(f"  {p['number']}: type {p['type']} ({p['type_description']}), "
                         f"guid {p['guid']}, attributes {p['attributes']} ({attrs})")
    for h in table.get("hybrid_mbr", ()):
        lines.append(f"  hybrid MBR entry {h['number']}: type {h['type']}, sectors "
                     f"{h['start_lba']}+{h['sectors']}{', bootable' if h['bootable'] else ''}")
    return lines


def _fs_lines(fs: dict) -> list[str]:
    lines = [f"Filesystem: {_fs_summary(fs)}"]
    skip = {"format", "label", "uuid", "size", "el_torito"}
    for key, value in fs.items():
        if key in skip or value in (None, "", []):
            continue
        if isinstance(value, list):
            value = " ".join(map(str, value))
        lines.append(f"  {key.replace('_', ' ')}: {value}")
    for e in fs.get("el_torito", ()):
        lines.append(f"  El Torito: {e['platform']} {e['media']}, image at block {e['load_rba']}"
                     f" ({e['sectors']} sectors){'' if e['bootable'] else ', not bootable'}")
    return lines


def format_description(d: dict) -> str:
    """The output of :func:`describe` as aligned text for people (like ``sgdisk -p``)."""
    lines = [f"{d['path']}: {d['format']}, {d['size']:,} bytes ({_size(d['size'])})"]
    if "filesystem" in d:
        lines += _fs_lines(d["filesystem"])
    if d.get("table"):
        if "filesystem" in d:
            lines.append(f"Hybrid: the image is also a partitioned disk ({d['table']['table']})")
        lines += _table_lines(d["table"])
    if d.get("boot_code"):
        b = d["boot_code"]
        lines.append(f"Boot code: {b['loader']}, core image at sector {b['core_lba']}")
        lines += ["  " + line for line in _core_lines(b["core"])]
    if "grub_core" in d:
        lines += _core_lines(d["grub_core"])
    if "multiboot" in d:
        lines.append(f"Kernel: {d['multiboot']['summary']}")
    if "archive" in d:
        a = d["archive"]
        lines.append(f"Archive: {a.get('archive_format') or d['format']}, compression "
                     f"{a['compression']}"
                     + (f", {a['entries']} entries, {a['data_bytes']:,} bytes of file data"
                        if "entries" in a else ""))
    if "pe" in d:
        pe = d["pe"]
        kind = "UKI (unified kernel image)" if pe["uki"] else "PE executable"
        lines.append(f"{kind}: machine {pe['machine']}, "
                     f"{'PE32+' if pe['pe32plus'] else 'PE32'}, subsystem {pe['subsystem']}"
                     f"{', signed' if pe['signed'] else ''}")
        for key in ("os", "uname", "cmdline"):
            if pe.get(key):
                lines.append(f"  {key}: {pe[key]}")
        lines.append(f"  {'Name':<10}{'VirtSize':>12}{'VMA':>12}{'RawSize':>12}{'FileOff':>12}")
        for s in pe["sections"]:
            lines.append(f"  {s['name']:<10}{s['virtual_size']:>12}{s['virtual_address']:>12}"
                         f"{s['raw_size']:>12}{s['raw_offset']:>12}")
    if "android_sparse" in d:
        a = d["android_sparse"]
        lines.append(f"Android sparse image: {a['expanded_size']:,} bytes "
                     f"({_size(a['expanded_size'])}) expanded, {a['block_size']}-byte blocks, "
                     f"{a['chunks']} chunks: {a['raw_blocks']} blocks raw, {a['fill_blocks']} "
                     f"fill, {a['dont-care_blocks']} don't care")
    if "virtual_disk" in d:
        v = d["virtual_disk"]
        size = v["virtual_size"]
        lines.append(f"{v['format']} virtual disk: "
                     + (f"virtual size {size:,} bytes ({_size(size)})" if size is not None
                        else "virtual size not declared")
                     + "".join(f", {k.replace('_', ' ')} {v[k]}" for k in ("disk_type", "cid")
                               if v.get(k)))
    if "qcow2" in d:
        q = d["qcow2"]
        lines.append(f"qcow2 (compat {q['compat']}): virtual size {q['virtual_size']:,} bytes "
                     f"({_size(q['virtual_size'])}), cluster size {q['cluster_size']}"
                     + (f", backing file {q['backing_file']}" if q["backing_file"] else ""))
        if q.get("contents"):
            lines.append("Virtual disk:")
            lines += [("  " + line).rstrip() for line in
                      format_description(q["contents"]).splitlines()[1:]]
    return "\n".join(lines)


def _core_lines(core: dict) -> list[str]:
    if core.get("format") != "grub-core":
        return [f"core image: {core.get('error', 'not found')}"]
    bl = core["blocklist"]
    line = (f"GRUB i386-pc core image (diskboot.img): block list {bl['sectors']} sectors from "
            f"LBA {bl['start_lba']} to segment {bl['segment']}")
    if core.get("uncompressed_size"):
        line += (f", kernel {core['compressed_size']:,} bytes LZMA "
                 f"({core['uncompressed_size']:,} unpacked)")
    if core.get("prefix"):
        line += f", prefix {core['prefix']}"
    return [line] + ([f"  {core['error']}"] if core.get("error") else [])


def _is_pe(path: str) -> bool:
    from imgkit.formats.pe import section_names_in_head
    with open(path, "rb") as f:
        return section_names_in_head(f.read(_detect.HEAD)) is not None


__all__ = ["detect", "describe", "format_description", "filesystem_info", "read_table",
           "FORMATS", "unknown_format", "qcow2_raw"]
