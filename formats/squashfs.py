"""squashfs: the superblock declared once, a describer, a writer and a reader.

The writer runs ``mksquashfs`` rootless on an empty directory: regular file data is staged in
a work directory (linked, or copied with ``copy_file_range``) and every entry, with its owner,
mode, time and device numbers, is a pseudo-file definition (``-pf``) written from the tree,
so nothing of the host's metadata reaches the image. squashfs-tools 4.5.1 has no pseudo
definition for xattrs: they are not stored, and the paths that had some are returned as
warnings.

The reader asks ``unsquashfs -pf`` for the same pseudo-file language back (stopping at the
data section) and reads file data with ``unsquashfs -cat`` when a file is opened.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO

from imgkit import tools
from imgkit.errors import ImageError, InputError, ToolError
from imgkit.formats.blobs import available, read_at
from imgkit.formats.records import Record
from imgkit.losses import xattr_loss
from imgkit.tree import Entry, Kind, Tree

MAGIC = b"hsqs"
SUPERBLOCK = Record("SquashfsSuperblock", 96, [
    ("magic", "4s"), ("inodes", "I"), ("mkfs_time", "I"), ("block_size", "I"),
    ("fragments", "I"), ("compression", "H"), ("block_log", "H"), ("flags", "H"),
    ("ids", "H"), ("major", "H"), ("minor", "H"), ("root_inode", "Q"), ("bytes_used", "Q"),
    ("id_table", "Q"), ("xattr_table", "Q"), ("inode_table", "Q"), ("directory_table", "Q"),
    ("fragment_table", "Q"), ("export_table", "Q"),
])
COMPRESSION = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
#: What the writer offers (the kernel reads all four).
WRITE_COMPRESSIONS = ("gzip", "xz", "lz4", "zstd")
_DATA_MARKER = "# START OF DATA"


def describe(f: BinaryIO, offset: int = 0, size: int | None = None) -> dict:
    """The squashfs image at ``offset``, from its superblock, as a JSON-able dict."""
    if available(f, offset, size) < SUPERBLOCK.size:
        raise ImageError(f"squashfs superblock at offset {offset}: the image ends first")
    sb = SUPERBLOCK.unpack(read_at(f, offset, SUPERBLOCK.size))
    if sb.magic != MAGIC:
        raise ImageError(f"squashfs superblock at offset {offset}: expected magic {MAGIC!r}, "
                         f"got {sb.magic!r}")
    return {"format": "squashfs", "label": "", "uuid": None, "size": sb.bytes_used,
            "version": f"{sb.major}.{sb.minor}", "inodes": sb.inodes,
            "block_size": sb.block_size,
            "compression": COMPRESSION.get(sb.compression, str(sb.compression)),
            "created": sb.mkfs_time}


# -- the pseudo-file language (written by the writer, read back by the reader) ---------------

def _quote(path: str, origin: str = "") -> str:
    if "\n" in path:
        raise InputError(f"squashfs: path {path!r} contains a newline, which a mksquashfs "
                         f"pseudo-file cannot express" + (f" (from {origin})" if origin else ""))
    out = []
    for ch in path:
        if ch in ' \t\\"':
            out.append("\\")
        out.append(ch)
    return "".join(out)


def _split_name(line: str) -> tuple[str, str]:
    """The unescaped first field of a pseudo definition, and the rest of the line."""
    name, i = [], 0
    while i < len(line) and line[i] != " ":
        if line[i] == "\\" and i + 1 < len(line):
            i += 1
        name.append(line[i])
        i += 1
    return "".join(name), line[i + 1:]


_PSEUDO_KIND = {Kind.DIR: "D", Kind.CHAR: "C", Kind.BLOCK: "B", Kind.SYMLINK: "S",
                Kind.FIFO: "I", Kind.SOCKET: "I"}


def pseudo_line(e: Entry, data: str | None = None) -> str:
    """The definition creating ``e`` with all of its metadata; a regular file's bytes come
    from the staged host file ``data`` through ``cat``."""
    head = f"{_quote(e.path, e.origin)} "
    attrs = f"{e.mtime} {e.mode & 0o7777:o} {e.uid} {e.gid}"
    if e.kind is Kind.HARDLINK:
        return f"{head}L {_quote(e.target or '')}"
    if e.kind is Kind.FILE:
        return f"{head}F {attrs} cat -- {shlex.quote(data or '')}"
    kind = _PSEUDO_KIND[e.kind]
    if e.kind in (Kind.CHAR, Kind.BLOCK):
        return f"{head}{kind} {attrs} {e.rdev[0]} {e.rdev[1]}"
    if e.kind is Kind.SYMLINK:
        target = e.target or ""
        if "\n" in target or target != target.strip():
            raise InputError(f"squashfs: symlink {e.path!r} -> {target!r}: a target with a "
                             f"newline or surrounding spaces cannot be given to mksquashfs")
        return f"{head}S {attrs} {target}"
    if e.kind is Kind.DIR:
        return f"{head}D {attrs}"
    return f"{head}I {attrs} {'f' if e.kind is Kind.FIFO else 's'}"


# -- writer ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SquashfsInfo:
    size: int
    warnings: tuple[str, ...] = ()


def _stage_data(e: Entry, dest: str) -> None:
    """Put ``e``'s data at ``dest``: a hard link to the host file when it is the whole file,
    else a copy through ``copy_file_range`` (a reflink where the filesystem offers it)."""
    blob = e.data
    if blob is None:
        open(dest, "wb").close()
        return
    where = blob.host_range()
    if where is not None:
        src, off = where
        try:
            if off == 0 and os.stat(src).st_size == blob.size:
                os.link(src, dest)
                return
        except OSError:
            pass
        with open(src, "rb") as fi, open(dest, "wb") as fo:
            left, pos = blob.size, off
            try:
                while left:
                    n = os.copy_file_range(fi.fileno(), fo.fileno(), left, pos)
                    if n == 0:
                        raise ImageError(f"{src}: ends before {blob.size} bytes from {off} "
                                         f"(for {e.path!r})")
                    left, pos = left - n, pos + n
                return
            except OSError:
                fo.seek(0)
                fo.truncate()
    with blob.open() as fi, open(dest, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)


def _stage(tree: Tree, data_dir: str) -> tuple[list[str], list[str]]:
    """Stage file data under ``data_dir`` (one host file per regular file, named by number);
    the pseudo definitions for every entry and the warnings for what cannot be stored.

    Everything is a pseudo definition because mksquashfs 4.5.1 ignores the children of a
    directory whose metadata is changed with ``M`` once a pseudo entry is created in it."""
    lines, links, warnings = [], [], []
    for n, e in enumerate(tree):
        if not e.path:
            continue
        data = None
        if e.kind is Kind.FILE:
            data = os.path.join(data_dir, str(n))
            _stage_data(e, data)
        (links if e.kind is Kind.HARDLINK else lines).append(pseudo_line(e, data))
    warnings += xattr_loss(tree, "squashfs", "mksquashfs 4.5 pseudo definitions hold none")
    return lines + links, warnings


def write_squashfs(tree: Tree, path: str, *, compression: str = "gzip",
                   block_size: int = 128 * 1024, mtime: int | None = None,
                   work: str | None = None) -> SquashfsInfo:
    """Write ``tree`` as a squashfs image at ``path`` (replaced).

    ``mtime`` is the image's creation time (``SOURCE_DATE_EPOCH``); without it, the newest
    time in the tree, so the same tree gives the same bytes.
    """
    if compression not in WRITE_COMPRESSIONS:
        raise InputError(f"squashfs compression {compression!r}: expected one of "
                         f"{', '.join(WRITE_COMPRESSIONS)}")
    if block_size & (block_size - 1) or not 4096 <= block_size <= 1 << 20:
        raise InputError(f"squashfs block size {block_size}: expected a power of two from "
                         f"4K to 1M")
    tree.validate()
    root = tree.root
    epoch = mtime if mtime is not None else max((e.mtime for e in tree), default=0)
    with tempfile.TemporaryDirectory(prefix="imgkit-squashfs-", dir=work) as tmp:
        stage, data_dir = os.path.join(tmp, "empty"), os.path.join(tmp, "data")
        os.mkdir(stage)
        os.mkdir(data_dir)
        lines, warnings = _stage(tree, data_dir)
        pseudo = os.path.join(tmp, "pseudo")
        with open(pseudo, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("".join(line + "\n" for line in lines))
        if os.path.exists(path):
            os.unlink(path)
        tools.run(["mksquashfs", stage, path, "-noappend", "-no-progress", "-quiet",
                   "-comp", compression, "-b", str(block_size), "-pf", pseudo,
                   "-root-mode", f"{root.mode & 0o7777:o}", "-root-uid", str(root.uid),
                   "-root-gid", str(root.gid), "-root-time", str(root.mtime),
                   "-mkfs-time", str(epoch), "-reproducible"],
                  # the times are given explicitly; mksquashfs refuses both at once
                  env={"SOURCE_DATE_EPOCH": None})
    return SquashfsInfo(os.path.getsize(path), tuple(warnings))


def estimate_size(tree: Tree) -> int:
    """An upper bound of the image size: the data uncompressed, plus metadata per entry."""
    data = sum(e.size for e in tree if e.kind in (Kind.FILE, Kind.SYMLINK))
    return -(-(data + 256 * len(tree) + 64 * 1024) // 4096) * 4096


# -- reader ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SquashfsBlob:
    """A file of a squashfs image, extracted with ``unsquashfs -cat`` when it is opened."""

    image: str
    offset: int
    path: str
    size: int
    keep: object = field(default=None, compare=False, repr=False)

    def open(self) -> BinaryIO:
        out = tempfile.TemporaryFile(prefix="imgkit-unsquashfs-")
        tools.run(["unsquashfs", "-o", str(self.offset), "-no-wildcards", "-cat", self.image,
                   self.path], stdout=out)
        out.seek(0)
        return out  # type: ignore[return-value]

    def host_range(self) -> tuple[str, int] | None:
        return None


def _pseudo_listing(image: str, offset: int, what: str) -> list[str]:
    """The definitions ``unsquashfs -pf`` writes for the image, without its data section."""
    with tempfile.TemporaryFile() as err:
        proc = tools.spawn(["unsquashfs", "-o", str(offset), "-no-progress", "-pf",
                            "/dev/stdout", image], stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        lines, complete = [], False
        for raw in proc.stdout:
            line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
            if line.startswith(_DATA_MARKER):
                complete = True
                break
            if line and not line.startswith("#"):
                lines.append(line)
        if complete:
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
        if not complete and code != 0:
            err.seek(0)
            raise ToolError(f"unsquashfs cannot list {what}: "
                            f"{err.read().decode(errors='replace').strip()[-800:]}")
    return lines


def open_tree(path: str, offset: int = 0, size: int | None = None, *, what: str | None = None,
              keep: object = None) -> Tree:
    """The files of the squashfs image at ``offset`` of ``path`` (xattrs are not read back:
    ``unsquashfs -pf`` of squashfs-tools 4.5 does not list them)."""
    what = what or (path if not offset else f"{path}@{offset}")
    with open(path, "rb") as f:
        describe(f, offset, size)
    image = os.path.abspath(path)
    tree = Tree()
    kinds = {"D": Kind.DIR, "R": Kind.FILE, "S": Kind.SYMLINK, "C": Kind.CHAR, "B": Kind.BLOCK}
    for line in _pseudo_listing(image, offset, what):
        name, rest = _split_name(line)
        fields = rest.split(" ", 5)
        name = name.strip("/")
        if fields[0] == "L":
            target = _split_name(rest[2:])[0].strip("/")
            primary = tree.get(target)
            same = {} if primary is None else dict(mode=primary.mode, uid=primary.uid,
                                                    gid=primary.gid, mtime=primary.mtime)
            tree.add(Entry(name, Kind.HARDLINK, target=target, **same))
            continue
        if fields[0] not in kinds and fields[0] != "I" or len(fields) < 5:
            raise ImageError(f"{what}: unexpected unsquashfs listing line {line!r}")
        mtime, mode, uid, gid = int(fields[1]), int(fields[2], 8), int(fields[3]), int(fields[4])
        extra = fields[5] if len(fields) > 5 else ""
        attrs = dict(mode=mode, uid=uid, gid=gid, mtime=mtime, origin=f"{what}:/{name}")
        kind = kinds.get(fields[0]) or (Kind.FIFO if extra == "f" else Kind.SOCKET)
        if not name:
            tree.with_root(mode=mode, uid=uid, gid=gid, mtime=mtime)
        elif kind is Kind.FILE:
            nbytes = int(extra.split(" ")[0])
            tree.add(Entry(name, kind, data=SquashfsBlob(image, offset, name, nbytes, keep),
                           **attrs))
        elif kind is Kind.SYMLINK:
            tree.add(Entry(name, kind, target=extra, **attrs))
        elif kind in (Kind.CHAR, Kind.BLOCK):
            major, minor = extra.split(" ")
            tree.add(Entry(name, kind, rdev=(int(major), int(minor)), **attrs))
        else:
            tree.add(Entry(name, kind, **attrs))
    return tree
