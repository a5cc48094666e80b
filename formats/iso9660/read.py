"""Read an ISO 9660 image: describe its volume descriptors and El Torito catalog, list its
files as a :class:`Tree` (through pycdlib, which the writer uses too).

The describer reads only the few sectors it needs, from the records declared below (ECMA-119
8.4 and the El Torito 1.0 specification); the bytes are untrusted, so every descriptor and
catalog entry is checked to lie inside the image first.
"""
from __future__ import annotations

import calendar
import io
import os
import stat
import struct
from typing import BinaryIO

from imgkit.errors import ImageError, InputError
from imgkit.formats.blobs import OffsetFile, RunsBlob, available, cstr, read_at
from imgkit.formats.records import Record
from imgkit.tree import Entry, Kind, Tree, sort_key

__all__ = ["describe", "open_tree", "STANDARD_ID", "PVD_OFFSET"]

_BLOCK = 2048
STANDARD_ID = b"CD001"
FIRST_DESCRIPTOR = 16                 # volume descriptors start at sector 16
PVD_OFFSET = FIRST_DESCRIPTOR * _BLOCK
_MAX_DESCRIPTORS = 48
VD_BOOT, VD_PRIMARY, VD_SUPPLEMENTARY, VD_TERMINATOR = 0, 1, 2, 255
EL_TORITO_ID = b"EL TORITO SPECIFICATION"
JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")

# Primary and supplementary volume descriptor (the fields described; both-endian numbers are
# read from their little-endian half).
VOLUME_DESCRIPTOR = Record("VolumeDescriptor", _BLOCK, [
    ("type", "B"), ("standard_id", "5s"), ("version", "B"), ("_", "B"), ("system_id", "32s"),
    ("volume_id", "32s"), ("_", "8s"), ("space_size", "I"), ("_", "4s"),
    ("escape_sequences", "32s"), ("set_size", "4s"), ("sequence", "4s"), ("block_size", "H"),
    ("_", "2s"), ("path_table_size", "8s"), ("path_tables", "16s"), ("root_record", "34s"),
    ("volume_set_id", "128s"), ("publisher_id", "128s"), ("preparer_id", "128s"),
    ("application_id", "128s"), ("copyright_file", "37s"), ("abstract_file", "37s"),
    ("bibliographic_file", "37s"), ("created", "17s"), ("modified", "17s"),
    ("expires", "17s"), ("effective", "17s"), ("fs_version", "B"), ("_", "1166s"),
])
BOOT_RECORD = Record("BootRecord", _BLOCK, [
    ("type", "B"), ("standard_id", "5s"), ("version", "B"), ("boot_system_id", "32s"),
    ("boot_id", "32s"), ("catalog_sector", "I"), ("_", "1973s"),
])
# The directory record head (ECMA-119 9.1): enough to find the root's first record.
DIR_RECORD = Record("DirRecord", 33, [
    ("length", "B"), ("ext_attr_length", "B"), ("extent", "I"), ("_", "4s"),
    ("data_length", "I"), ("_", "4s"), ("date", "7s"), ("flags", "B"), ("unit_size", "B"),
    ("gap", "B"), ("sequence", "4s"), ("name_length", "B"),
])
# El Torito boot catalog: the validation entry, then default/section entries of 32 bytes.
CATALOG_VALIDATION = Record("CatalogValidation", 32, [
    ("header_id", "B"), ("platform", "B"), ("_", "H"), ("id", "24s"), ("checksum", "H"),
    ("key", "2s"),
])
CATALOG_ENTRY = Record("CatalogEntry", 32, [
    ("indicator", "B"), ("media", "B"), ("load_segment", "H"), ("system_type", "B"),
    ("_", "B"), ("sectors", "H"), ("load_rba", "I"), ("_", "20s"),
])
CATALOG_SECTION = Record("CatalogSection", 32, [
    ("indicator", "B"), ("platform", "B"), ("count", "H"), ("id", "28s"),
])
BOOTABLE, NOT_BOOTABLE = 0x88, 0x00
SECTION_MORE, SECTION_LAST = 0x90, 0x91
PLATFORMS = {0: "bios", 1: "ppc", 2: "mac", 0xEF: "efi"}
MEDIA = {0: "no-emulation", 1: "floppy-1.2M", 2: "floppy-1.44M", 3: "floppy-2.88M",
         4: "hard-disk"}


def _iso_date(raw: bytes) -> str | None:
    """A volume descriptor date (``YYYYMMDDHHMMSScc`` + zone) as ISO 8601, or None if unset."""
    text = raw[:16].decode("ascii", "replace")
    if not text.strip("0 \0"):
        return None
    zone = int.from_bytes(raw[16:17], "little", signed=True) * 15
    sign = "+" if zone >= 0 else "-"
    return (f"{text[0:4]}-{text[4:6]}-{text[6:8]}T{text[8:10]}:{text[10:12]}:{text[12:14]}"
            f"{sign}{abs(zone) // 60:02d}:{abs(zone) % 60:02d}")


def describe(f: BinaryIO, offset: int = 0, size: int | None = None) -> dict:
    """The ISO 9660 image at ``offset``: volume ids, extensions, El Torito entries."""
    limit = available(f, offset, size)
    out: dict = {"format": "iso9660"}
    joliet = False
    catalog = None
    for n in range(FIRST_DESCRIPTOR, FIRST_DESCRIPTOR + _MAX_DESCRIPTORS):
        if (n + 1) * _BLOCK > limit:
            break
        raw = read_at(f, offset + n * _BLOCK, _BLOCK)
        vd = VOLUME_DESCRIPTOR.unpack(raw)
        if vd.standard_id != STANDARD_ID or vd.type == VD_TERMINATOR:
            break
        if vd.type == VD_PRIMARY:
            block = vd.block_size
            out.update(label=cstr(vd.volume_id), uuid=None, size=vd.space_size * block,
                       system_id=cstr(vd.system_id), volume_set=cstr(vd.volume_set_id),
                       publisher=cstr(vd.publisher_id), preparer=cstr(vd.preparer_id),
                       application=cstr(vd.application_id), block_size=block,
                       created=_iso_date(vd.created), modified=_iso_date(vd.modified))
            # UUID as blkid shows it: the creation date digits.
            created = vd.created[:16].decode("ascii", "replace")
            if created.strip("0 \0"):
                out["uuid"] = "-".join((created[0:4], created[4:6], created[6:8], created[8:10],
                                        created[10:12], created[12:14], created[14:16]))
            out["rock_ridge"] = _rock_ridge(f, offset, limit, vd.root_record, block)
        elif vd.type == VD_SUPPLEMENTARY and vd.escape_sequences[:3] in JOLIET_ESCAPES:
            joliet = True
        elif vd.type == VD_BOOT:
            br = BOOT_RECORD.unpack(raw)
            if br.boot_system_id.rstrip(b"\0") == EL_TORITO_ID:
                catalog = br.catalog_sector
    if "label" not in out:
        raise ImageError(f"ISO 9660 at offset {offset}: no primary volume descriptor found "
                         f"from sector {FIRST_DESCRIPTOR}")
    out["joliet"] = joliet
    out["el_torito"] = _el_torito(f, offset, limit, catalog) if catalog is not None else []
    return out


def _rock_ridge(f: BinaryIO, base: int, limit: int, root: bytes, block: int) -> bool:
    """Whether the root's "." record carries SUSP/Rock Ridge entries."""
    extent = DIR_RECORD.unpack(root).extent
    if not block or (extent + 1) * block > limit:
        return False
    rec = read_at(f, base + extent * block, 256)
    if len(rec) < DIR_RECORD.size:
        return False
    head = DIR_RECORD.unpack(rec)
    name_len = head.name_length
    su = rec[DIR_RECORD.size + name_len + (1 - name_len % 2): head.length]
    return su[:2] == b"SP" or b"PX" in su or b"RR" in su


def _el_torito(f: BinaryIO, base: int, limit: int, catalog: int) -> list[dict]:
    if (catalog + 1) * _BLOCK > limit:
        raise ImageError(f"ISO 9660 at offset {base}: the El Torito catalog at sector "
                         f"{catalog} lies past the end of the image")
    data = read_at(f, base + catalog * _BLOCK, _BLOCK)
    entries: list[dict] = []
    if CATALOG_VALIDATION.unpack(data).header_id != 1:
        return entries
    platform = CATALOG_VALIDATION.unpack(data).platform

    def entry(e) -> dict:
        return {"platform": PLATFORMS.get(platform, f"0x{platform:02x}"),
                "bootable": e.indicator == BOOTABLE,
                "media": MEDIA.get(e.media & 0x0F, f"0x{e.media:02x}"),
                "load_rba": e.load_rba, "sectors": e.sectors}

    entries.append(entry(CATALOG_ENTRY.unpack(data, 32)))
    pos = 64
    while pos + 32 <= len(data) and data[pos] in (SECTION_MORE, SECTION_LAST):
        section = CATALOG_SECTION.unpack(data, pos)
        platform = section.platform
        pos += 32
        for _ in range(section.count):
            if pos + 32 > len(data):
                break
            e = CATALOG_ENTRY.unpack(data, pos)
            if e.indicator in (BOOTABLE, NOT_BOOTABLE):
                entries.append(entry(e))
            pos += 32
        if section.indicator == SECTION_LAST:
            break
    return entries


#: What pycdlib raises, besides its own exception, on records whose lengths it trusts.
_PYCDLIB_PARSE_ERRORS = (struct.error, ValueError, IndexError, KeyError, UnicodeError,
                         OverflowError, AttributeError, TypeError, ZeroDivisionError)


def open_tree(path: str, offset: int = 0, size: int | None = None, *, what: str | None = None,
              keep: object = None) -> Tree:
    """The files of the ISO 9660 image at ``offset`` of ``path``, read by pycdlib.

    Rock Ridge names, modes, owners, symlinks, device nodes and hard links when present, else
    Joliet names, else plain ISO 9660 names (without ``;1``). File data stays in the image.
    """
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    what = what or (path if not offset else f"{path}@{offset}")
    if size is None:
        size = os.path.getsize(path) - offset
    fp = (open(path, "rb") if offset == 0
          else io.BufferedReader(OffsetFile(path, offset, size)))
    tree = Tree()
    try:
        iso.open_fp(fp)
        if iso.has_rock_ridge():
            facet = "rr_path"
        elif iso.has_joliet():
            facet = "joliet_path"
        else:
            facet = "iso_path"
        root = iso.get_record(**{facet: "/"})
        meta = _iso_meta(root, facet)
        tree.with_root(mode=meta["mode"] if meta["kind"] is Kind.DIR else 0o755, uid=meta["uid"],
                       gid=meta["gid"], mtime=meta["mtime"])
        linked: dict[tuple[int, int], list[tuple[str, dict]]] = {}
        stack = ["/"]
        while stack:
            d = stack.pop()
            for rec in iso.list_children(**{facet: d}):
                if rec.is_dot() or rec.is_dotdot():
                    continue
                name = _iso_name(rec, facet)
                ipath = d.rstrip("/") + "/" + name
                rel = ipath.lstrip("/")
                m = _iso_meta(rec, facet)
                kind = m["kind"]
                common = dict(mode=m["mode"], uid=m["uid"], gid=m["gid"], mtime=m["mtime"],
                              origin=f"{what}: {ipath}")
                if kind is Kind.DIR:
                    tree.add(Entry(rel, Kind.DIR, **common))
                    stack.append(ipath)
                elif kind is Kind.FILE:
                    fsize = rec.get_data_length()
                    start = offset + rec.extent_location() * _BLOCK
                    common["data"] = RunsBlob(path, fsize, ((start, fsize),) if fsize else (),
                                              keep)
                    if fsize and m["nlink"] > 1:
                        # Rock Ridge hard links: several names, one extent.
                        linked.setdefault((rec.extent_location(), fsize), []).append((rel, common))
                    else:
                        tree.add(Entry(rel, Kind.FILE, **common))
                elif kind is Kind.SYMLINK:
                    tree.add(Entry(rel, kind, target=m["target"], **common))
                else:
                    tree.add(Entry(rel, kind, rdev=m["rdev"], **common))
        for names in linked.values():
            names.sort(key=lambda pc: sort_key(pc[0]))
            first = names[0][0]
            tree.add(Entry(first, Kind.FILE, **names[0][1]))
            for other, common in names[1:]:
                common = {k: v for k, v in common.items() if k != "data"}
                tree.add(Entry(other, Kind.HARDLINK, target=first, **common))
    except PyCdlibException as exc:
        raise ImageError(f"{what}: cannot read the ISO 9660 image: {exc}") from exc
    except _PYCDLIB_PARSE_ERRORS as exc:
        # pycdlib trusts some lengths and offsets of the records it parses; a damaged image
        # then fails inside it with a plain Python error
        raise ImageError(f"{what}: cannot read the ISO 9660 image: a damaged record "
                         f"({type(exc).__name__}: {exc})") from exc
    finally:
        try:
            iso.close()
        except Exception:  # pycdlib refuses to close what it did not open
            pass
        fp.close()
    return tree


def _rr_record(rr, name: str):
    got = getattr(rr.dr_entries, name, None)
    if got is None and getattr(rr, "ce_entries", None) is not None:
        got = getattr(rr.ce_entries, name, None)
    return got


def _iso_meta(rec, facet: str) -> dict:
    rr = getattr(rec, "rock_ridge", None) if facet == "rr_path" else None
    out = {"mtime": _iso_time(rec.date), "uid": 0, "gid": 0, "nlink": 1, "target": None,
           "rdev": (0, 0)}
    if rr is None:
        out["kind"] = Kind.DIR if rec.is_dir() else Kind.FILE
        out["mode"] = 0o755 if rec.is_dir() else 0o644
        return out
    px = _rr_record(rr, "px_record")
    if px is not None:
        mode = px.posix_file_mode
        out.update(uid=px.posix_user_id, gid=px.posix_group_id, nlink=px.posix_file_links)
    else:
        mode = (stat.S_IFDIR | 0o755) if rec.is_dir() else (stat.S_IFREG | 0o644)
    if rr.is_symlink():
        mode = stat.S_IFLNK | stat.S_IMODE(mode)
        out["target"] = rr.symlink_path().decode("utf-8", "surrogateescape")
    try:
        kind = Kind.from_mode(mode)
    except InputError:
        kind = Kind.DIR if rec.is_dir() else Kind.FILE
    out["kind"], out["mode"] = kind, stat.S_IMODE(mode)
    pn = _rr_record(rr, "pn_record")
    if pn is not None and kind in (Kind.CHAR, Kind.BLOCK):
        high, low = pn.dev_t_high, pn.dev_t_low
        out["rdev"] = (low >> 8, low & 0xFF) if high == 0 and low & ~0xFF else (high, low)
    tf = _rr_record(rr, "tf_record")
    mod = getattr(tf, "modification_time", None) if tf is not None else None
    if mod is not None:
        out["mtime"] = _iso_time(mod)
    return out


def _iso_time(d) -> int:
    """A pycdlib directory-record or volume-descriptor date as epoch seconds (UTC)."""
    try:
        if hasattr(d, "years_since_1900"):
            year = 1900 + d.years_since_1900
            day = d.day_of_month
        else:
            year, day = d.year, d.dayofmonth
        if year < 1970 or not d.month:
            return 0
        t = calendar.timegm((year, d.month, day, d.hour, d.minute, d.second, 0, 0, 0))
        return t - d.gmtoffset * 15 * 60
    except (AttributeError, ValueError, OverflowError, TypeError):
        return 0


def _iso_name(rec, facet: str) -> str:
    if facet == "rr_path":
        return rec.rock_ridge.name().decode("utf-8", "surrogateescape")
    ident = rec.file_identifier()
    if facet == "joliet_path":
        return ident.decode("utf-16-be", "replace")
    name = ident.decode("ascii", "replace")
    if not rec.is_dir():
        name = name.split(";", 1)[0]
        if name.endswith("."):
            name = name[:-1]
    return name
