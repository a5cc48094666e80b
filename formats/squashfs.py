"""squashfs: the superblock declared once, a describer, a writer and a reader.

The writer runs ``mksquashfs`` rootless and reads nothing of the host's metadata. With
squashfs-tools 4.6 or newer (:mod:`imgkit.formats.squashfs_tools` fetches Debian trixie's
4.6.1 where the host has 4.5.1) the tree is streamed to ``mksquashfs - IMG -tar`` as a pax
archive (:func:`imgkit.formats.tar.write_tar`): owners, modes, times, device numbers, hard
links and xattrs come from the archive, file data is read once from its source, and nothing
is staged. Sockets, which tar cannot hold, are pseudo definitions beside it. A tree that is
exactly the host directory it was read from (:func:`imgkit.hostdir.match`) is given to
``mksquashfs DIR`` itself, which walks it faster than it reads the stream: shared owners are
forced, files whose metadata differ from the host get ``M`` definitions, and the listing is
the one the stream gives. squashfs keeps
only ``user.``, ``trusted.`` and ``security.`` xattrs (the kernel reads no other namespace):
others, POSIX ACLs among them, are left out, with one warning naming the paths.

Without 4.6 (no network on the first build), the 4.5.1 path stays: regular file data is staged
in a work directory (linked, or copied with ``copy_file_range``) and every entry is a
pseudo-file definition (``-pf``) whose data ``cat`` reads; 4.5.1 has no pseudo definition for
xattrs, so none are stored, and the paths that had some are named in one warning. Trees a tar
archive cannot carry exactly (names or link targets that are not UTF-8) take that path too,
with ``x`` definitions for their xattrs when the tools are 4.6.

The reader asks ``unsquashfs -pf`` for the same pseudo-file language back (stopping at the
data section; 4.6 lists xattrs there too) and reads file data with ``unsquashfs -cat`` when a
file is opened.
"""
from __future__ import annotations

import base64
import os
import shlex
import shutil
import stat
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
    #: Which squashfs-tools wrote it and how it was fed (``"tar"`` or ``"pseudo"``).
    tools: str = ""
    populated_from: str = ""



#: The xattr namespaces a squashfs holds (mksquashfs drops others, the kernel reads no others).
XATTR_PREFIXES = ("user.", "trusted.", "security.")


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


def xattr_lines(e: Entry) -> list[str]:
    """Pseudo ``x`` definitions (squashfs-tools 4.6) for ``e``'s xattrs, values in base64
    (4.6.1 overruns a buffer decoding hex values longer than a few bytes)."""
    name = _quote(e.path, e.origin) if e.path else "/"
    return [f"{name} x {key}=0s{base64.b64encode(value).decode()}" for key, value in e.xattrs]


def _storable(tree: Tree, why_not: str | None) -> tuple[Tree, list[str]]:
    """``tree`` with only the xattrs the image can hold, and one warning
    (:func:`imgkit.losses.xattr_loss`) naming the paths that lost some: every xattr when
    ``why_not`` (the tools take none), else those outside :data:`XATTR_PREFIXES`."""
    def kept(e: Entry) -> Entry:
        if not e.xattrs:
            return e
        return e.replace(xattrs=() if why_not else
                         tuple((k, v) for k, v in e.xattrs if k.startswith(XATTR_PREFIXES)))

    def dropped(e: Entry) -> Entry:
        if not e.xattrs:
            return e
        return e.replace(xattrs=tuple(x for x in e.xattrs if x not in kept(e).xattrs))

    reason = why_not or "it holds only user., trusted. and security. ones"
    return tree.map(kept), xattr_loss(tree.map(dropped), "squashfs", reason)


def _stage(tree: Tree, data_dir: str, *, xattrs: bool) -> list[str]:
    """Stage file data under ``data_dir`` (one host file per regular file, named by number);
    the pseudo definitions for every entry (``x`` ones too with ``xattrs``).

    Everything is a pseudo definition because mksquashfs 4.5.1 ignores the children of a
    directory whose metadata is changed with ``M`` once a pseudo entry is created in it."""
    lines, links = [], []
    for n, e in enumerate(tree):
        if not e.path:
            lines.extend(xattr_lines(e) if xattrs else ())
            continue
        data = None
        if e.kind is Kind.FILE:
            data = os.path.join(data_dir, str(n))
            _stage_data(e, data)
        (links if e.kind is Kind.HARDLINK else lines).append(pseudo_line(e, data))
        if xattrs and e.kind is not Kind.HARDLINK:
            lines.extend(xattr_lines(e))
    return lines + links


def _tar_can_carry(tree: Tree) -> bool:
    """Whether a pax archive gives mksquashfs every name and link target exactly (they are
    stored as UTF-8)."""
    for e in tree:
        try:
            e.path.encode()
            (e.target or "").encode()
        except UnicodeEncodeError:
            return False
    return True


def _direct_options(tree: Tree) -> tuple[str, list[str], list[str]] | None:
    """The source directory, the options and the pseudo definitions with which
    ``mksquashfs DIR`` (4.6) writes exactly ``tree``; None unless the tree is that directory
    (:func:`imgkit.hostdir.match`).

    mksquashfs takes owners, modes and times from the host. Owners the whole tree shares are
    forced (``-force-uid``/``-force-gid``); a file or symlink whose metadata still differs gets
    an ``M`` definition. A directory that would need one is not taken: squashfs-tools 4.6.1
    drops every pseudo definition below a directory given one (or the other way round). The
    host's xattrs must be the tree's, all of namespaces squashfs holds.
    """
    from imgkit import hostdir

    def xattrs_ok(path: str, e: Entry, h: hostdir.HostEntry) -> bool:
        if sorted(h.xattrs) != sorted(k for k, _v in e.xattrs):
            return False
        if not all(k.startswith(XATTR_PREFIXES) for k in h.xattrs):
            return False
        try:
            return all(os.getxattr(path, k, follow_symlinks=False) == v for k, v in e.xattrs)
        except OSError:
            return False

    if any(e.kind is Kind.SOCKET for e in tree):
        return None
    found = hostdir.match(tree, xattrs_ok=xattrs_ok)
    if found is None:
        return None
    root, host = found
    uids = {e.uid for e in tree if e.path and e.kind is not Kind.HARDLINK}
    gids = {e.gid for e in tree if e.path and e.kind is not Kind.HARDLINK}
    options = ["-no-exports"]
    if len(uids) == 1:
        options += ["-force-uid", str(uids.pop())]
    if len(gids) == 1:
        options += ["-force-gid", str(gids.pop())]
    forced_uid = "-force-uid" in options
    forced_gid = "-force-gid" in options
    lines = []
    for e in tree:
        if not e.path or e.kind is Kind.HARDLINK:
            continue
        st = host[e.path].st
        same = (int(st.st_mtime) == e.mtime
                and (e.kind is Kind.SYMLINK or stat.S_IMODE(st.st_mode) == e.mode & 0o7777)
                and (forced_uid or st.st_uid == e.uid) and (forced_gid or st.st_gid == e.gid))
        if same:
            continue
        if e.kind is Kind.DIR or not 0 <= e.mtime < 1 << 32:
            return None
        lines.append(f"{_quote(e.path, e.origin)} M {e.mtime} {e.mode & 0o7777:o} "
                     f"{e.uid} {e.gid}")
    if lines:
        options.append("-pseudo-override")
    return root, options, lines


def _write_pseudo_file(lines: list[str], path: str) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("".join(line + "\n" for line in lines))


def _mksquashfs_from_tar(argv: list[str], tree: Tree, log: str) -> None:
    """Run ``argv`` (``mksquashfs - IMG -tar ...``) reading ``tree`` as a pax archive from its
    standard input, written as the archive goes."""
    from imgkit.formats.tar import run_reading_tar

    code, text = run_reading_tar(argv, tree, log, tool="squashfs",
                                 env={"SOURCE_DATE_EPOCH": None},
                                 defer=(BrokenPipeError, ImageError))
    if code != 0:
        raise ToolError(f"mksquashfs -tar failed (exit {code}): {text.strip()[-1500:]}")


def write_squashfs(tree: Tree, path: str, *, compression: str = "gzip",
                   block_size: int = 128 * 1024, mtime: int | None = None,
                   work: str | None = None) -> SquashfsInfo:
    """Write ``tree`` as a squashfs image at ``path`` (replaced).

    ``mtime`` is the image's creation time (``SOURCE_DATE_EPOCH``); without it, the newest
    time in the tree, so the same tree gives the same bytes.
    """
    from imgkit.formats.squashfs_tools import squashfs_tools

    if compression not in WRITE_COMPRESSIONS:
        raise InputError(f"squashfs compression {compression!r}: expected one of "
                         f"{', '.join(WRITE_COMPRESSIONS)}")
    if block_size & (block_size - 1) or not 4096 <= block_size <= 1 << 20:
        raise InputError(f"squashfs block size {block_size}: expected a power of two from "
                         f"4K to 1M")
    tree.validate()
    sq = squashfs_tools()
    why_not = None if sq.reads_tar else (f"{sq.label} ({sq.why}) has no pseudo definition "
                                         f"for xattrs")
    tree, warnings = _storable(tree, why_not)
    root = tree.root
    epoch = mtime if mtime is not None else max((e.mtime for e in tree), default=0)
    # the times are given explicitly: mksquashfs refuses SOURCE_DATE_EPOCH beside them
    options = ["-noappend", "-no-progress", "-quiet", "-comp", compression,
               "-b", str(block_size), "-root-mode", f"{root.mode & 0o7777:o}",
               "-root-uid", str(root.uid), "-root-gid", str(root.gid),
               "-root-time", str(root.mtime), "-mkfs-time", str(epoch), "-reproducible"]
    if os.path.exists(path):
        os.unlink(path)
    with tempfile.TemporaryDirectory(prefix="imgkit-squashfs-", dir=work) as tmp:
        pseudo = os.path.join(tmp, "pseudo")
        direct = _direct_options(tree) if sq.reads_tar else None
        if direct is not None:
            populated_from = "directory"
            source, more, lines = direct
            extra = []
            if lines:
                _write_pseudo_file(lines, pseudo)
                extra = ["-pf", pseudo]
            tools.run([sq.mksquashfs, source, path, *options, *more, *extra],
                      env={"SOURCE_DATE_EPOCH": None})
        elif sq.reads_tar and _tar_can_carry(tree):
            populated_from = "tar"
            # the archive holds no socket, and mksquashfs ignores its root entry
            lines = xattr_lines(tree.root) + [line for e in tree if e.kind is Kind.SOCKET
                                              for line in (pseudo_line(e), *xattr_lines(e))]
            extra = []
            if lines:
                _write_pseudo_file(lines, pseudo)
                extra = ["-pf", pseudo]
            _mksquashfs_from_tar([sq.mksquashfs, "-", path, "-tar", *options, *extra], tree,
                                 os.path.join(tmp, "log"))
        else:
            populated_from = "pseudo"
            stage, data_dir = os.path.join(tmp, "empty"), os.path.join(tmp, "data")
            os.mkdir(stage)
            os.mkdir(data_dir)
            _write_pseudo_file(_stage(tree, data_dir, xattrs=sq.reads_tar), pseudo)
            tools.run([sq.mksquashfs, stage, path, *options, "-pf", pseudo],
                      env={"SOURCE_DATE_EPOCH": None})
    return SquashfsInfo(os.path.getsize(path), tuple(warnings), sq.label, populated_from)


def estimate_size(tree: Tree) -> int:
    """An upper bound of the image size: the data uncompressed, plus metadata per entry."""
    data = sum(e.size for e in tree if e.kind in (Kind.FILE, Kind.SYMLINK))
    return -(-(data + 256 * len(tree) + 64 * 1024) // 4096) * 4096


# -- reader ----------------------------------------------------------------------------------

def _unsquashfs() -> str:
    from imgkit.formats.squashfs_tools import squashfs_tools
    return squashfs_tools().unsquashfs


def decode_xattr_value(text: str) -> bytes:
    """A pseudo ``x`` value as unsquashfs 4.6 writes it back: ``0t`` text with backslash
    octal escapes (for values with unprintable bytes), ``0x`` hex, ``0s`` base64, else the
    text itself."""
    if text.startswith("0x"):
        return bytes.fromhex(text[2:])
    if text.startswith("0s"):
        return base64.b64decode(text[2:])
    data = text.encode("utf-8", "surrogateescape")
    if not text.startswith("0t"):
        return data   # printable: as it is, unescaped
    out, i, data = bytearray(), 0, data[2:]
    while i < len(data):
        if data[i] == 0x5C and i + 4 <= len(data) and data[i + 1:i + 4].isdigit():
            out.append(int(data[i + 1:i + 4], 8))
            i += 4
        elif data[i] == 0x5C and i + 1 < len(data):
            out.append(data[i + 1])
            i += 2
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


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
        tools.run([_unsquashfs(), "-o", str(self.offset), "-no-wildcards", "-cat", self.image,
                   self.path], stdout=out)
        out.seek(0)
        return out  # type: ignore[return-value]

    def host_range(self) -> tuple[str, int] | None:
        return None


def _pseudo_listing(image: str, offset: int, what: str) -> list[str]:
    """The definitions ``unsquashfs -pf`` writes for the image, without its data section."""
    with tempfile.TemporaryFile() as err:
        proc = tools.spawn([_unsquashfs(), "-o", str(offset), "-no-progress", "-pf",
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
    """The files of the squashfs image at ``offset`` of ``path`` (xattrs are read back with
    squashfs-tools 4.6, whose ``unsquashfs -pf`` lists them; 4.5's does not)."""
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
        if fields[0] == "x":
            key, _, value = rest[2:].partition("=")
            entry = tree.root if not name else tree.get(name)
            if entry is None:
                raise ImageError(f"{what}: unsquashfs lists an xattr of {name!r} before it")
            xattrs = (*entry.xattrs, (key, decode_xattr_value(value)))
            if not name:
                tree.with_root(xattrs=xattrs)
            else:
                tree.add(entry.replace(xattrs=xattrs))
            continue
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
