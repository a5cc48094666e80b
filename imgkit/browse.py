"""Open an archive, a filesystem image or a partition of a disk image as a read-only :class:`Tree`.

This is what ``imgkit ls`` lists. ``spec`` is ``IMAGE`` or ``IMAGE:PARTITION``, where
``PARTITION`` is a partition number (``disk.img:2``) or a GPT partition name
(``disk.img:root``); a path that exists as given is always taken whole, even if it contains a
colon. Nothing is mounted and nothing needs root. This module only finds the byte range
(:mod:`imgkit.disk.probe` for partitions, :mod:`imgkit.detect` for what is there) and hands
it to the format's reader (``open_tree(path, offset, size)`` of
:mod:`imgkit.formats.fat.read`, ``ext4.read``, ``iso9660.read``); archives (cpio, tar, zip,
compressed or not) are read by libarchive (:mod:`imgkit.sources.archive`), and qcow2 disks
are first converted to a temporary sparse raw image with ``qemu-img convert``.

File contents are lazy blobs: FAT and ISO files point into the image itself, ext4 files are
extracted with ``debugfs dump`` when opened. Listing only ever reads metadata.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field

from imgkit import detect
from imgkit.disk import probe
from imgkit.errors import ImageError, InputError
from imgkit.tree import Tree


def split_spec(spec: str) -> tuple[str, str | None]:
    """``IMAGE[:PARTITION]`` -> ``(image, partition or None)``; an existing path wins whole."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    image, part = spec.rsplit(":", 1)
    if os.path.exists(image) and part:
        return image, part
    return spec, None


@dataclass
class Location:
    """Where a filesystem sits: a host file, a byte range in it, and what was detected there.

    ``keep`` holds objects (a temporary converted image) that must live as long as the tree.
    """

    path: str
    offset: int
    size: int
    found: detect.Detected
    what: str
    keep: list = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.found.format


def locate(spec: str) -> Location:
    """Resolve ``IMAGE[:PARTITION]`` to the byte range of one filesystem or archive."""
    from imgkit import inspect as _inspect

    image, part = split_spec(spec)
    if not os.path.exists(image):
        raise InputError(f"image {image!r} does not exist")
    if os.path.isdir(image):
        raise InputError(f"{image!r} is a directory, expected an image or archive file")
    detect.regular_file(image)
    keep: list = []
    found = detect.sniff_path(image)
    path = image
    if found.format == "qcow2":
        raw = _inspect.qcow2_raw(image)
        keep.append(raw)
        path = raw.path
        found = detect.sniff_path(path)
    size = os.path.getsize(path)
    if part is None:
        if found.is_disk:
            raise InputError(f"{image} is a partitioned disk ({found.format}): name a partition "
                             f"as {image}:NUMBER or {image}:NAME",
                             hint="partitions: " + _list_parts(_table(path, found.format), path))
        return Location(path, 0, size, found, image, keep)
    table = _table(path, found.format)
    if table is None:
        raise InputError(f"{image} is {_article(found.format)} image, not a partitioned disk, "
                         f"so it has no partition {part!r}",
                         hint=f"list it whole: imgkit ls {image}")
    p = table.find(part)
    if p is None:
        raise InputError(f"{image} has no partition {part!r}", hint="partitions: " + _list_parts(table, path))
    if p.extended:
        raise InputError(f"{image}:{part} is the extended partition, which holds the logical "
                         "partitions (5 and up), not a filesystem")
    if p.start + p.size > size:
        raise ImageError(f"{image}:{part}: partition {p.number} (bytes {p.start}.."
                         f"{p.start + p.size}) ends past the end of the image ({size} bytes)")
    with open(path, "rb") as f:
        sub = detect.sniff(f, p.start)
    return Location(path, p.start, p.size, sub, f"{image}:{part}", keep)


def _article(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def _table(path: str, kind: str) -> probe.PartitionTable | None:
    if kind not in ("gpt", "mbr", "iso9660"):
        return None
    with open(path, "rb") as f:
        return probe.read_table(f, os.path.getsize(path), kind)


def _list_parts(table: probe.PartitionTable | None, path: str) -> str:
    """``1 (esp) fat16, 2 (root) ext4``: each partition and what it holds."""
    if not table or not table.partitions:
        return "(none)"
    out = []
    with open(path, "rb") as f:
        for p in table.partitions:
            fs = "" if p.extended else detect.sniff(f, p.start).format
            out.append(f"{p.number}" + (f" ({p.name})" if p.name else "") + f" {fs}".rstrip())
    return ", ".join(out)


def open_tree(spec: str) -> Tree:
    """``IMAGE`` or ``IMAGE:PARTITION`` -> its files (see the module docstring)."""
    loc = locate(spec)
    found = loc.found
    reader = detect.reader(found.filesystem)
    if reader is not None and hasattr(reader, "open_tree"):
        tree = reader.open_tree(loc.path, loc.offset, loc.size, what=loc.what,
                                keep=loc.keep or None)
    elif loc.offset == 0 and (found.is_archive or found.format in ("unknown",) + detect.COMPRESSIONS):
        tree = _archive_tree(loc)
    elif found.format == "squashfs":
        raise ImageError(f"{loc.what}: listing squashfs is not supported",
                         hint="unsquashfs -lls lists it (package squashfs-tools)")
    else:
        raise ImageError(f"{loc.what} holds {_article(found.format)} image, which has no files "
                         f"to list" if found.format != "unknown"
                         else f"{loc.what}: no filesystem recognised",
                         hint="imgkit inspect shows what is in it")
    if loc.keep:
        _keep_alive[id(tree)] = loc.keep
        weakref.finalize(tree, _keep_alive.pop, id(tree), None)
    return tree


def _archive_tree(loc: Location) -> Tree:
    from imgkit import inspect as _inspect
    from imgkit.sources.archive import read_archive

    try:
        tree = read_archive(loc.path)
    except ImageError:
        if loc.kind != "unknown":
            raise
        with open(loc.path, "rb") as f:
            raise _inspect.unknown_format(loc.what, f.read(16)) from None
    if loc.kind == "unknown" and not any(e.path for e in tree):
        # libarchive takes zeros (or an empty file) for an empty tar: nothing was recognised
        with open(loc.path, "rb") as f:
            raise _inspect.unknown_format(loc.what, f.read(16)) from None
    return tree


_keep_alive: dict[int, list] = {}
