"""Read an ext2/3/4 filesystem: describe its superblock, list its files as a :class:`Tree`.

The superblock is parsed from :mod:`.c_ext4`. Files are listed through ``debugfs`` (the
same wrapper the writer uses), which opens a filesystem at a byte offset inside a disk image
with its ``IMAGE?offset=N`` syntax, so nothing is copied and nothing needs root.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import BinaryIO

from imgkit import scratch
from imgkit.errors import ImageError, InputError
from imgkit.formats.blobs import available, cstr, read_at
from imgkit.formats.ext4 import c_ext4, debugfs
from imgkit.tree import Entry, Kind, Tree, sort_key

__all__ = ["describe", "open_tree", "DebugfsBlob"]

def describe(f: BinaryIO, offset: int = 0, size: int | None = None) -> dict:
    """The ext2/3/4 filesystem at ``offset``, from its superblock, as a JSON-able dict."""
    sb_end = c_ext4.SUPERBLOCK_OFFSET + c_ext4.SUPERBLOCK.size
    if available(f, offset, size) < sb_end:
        raise ImageError(f"ext superblock at offset {offset + c_ext4.SUPERBLOCK_OFFSET}: the "
                         f"image ends first")
    sb = c_ext4.SUPERBLOCK.unpack(read_at(f, offset + c_ext4.SUPERBLOCK_OFFSET,
                                          c_ext4.SUPERBLOCK.size))
    if sb.magic != c_ext4.MAGIC:
        raise ImageError(f"ext superblock at offset {offset + c_ext4.SUPERBLOCK_OFFSET}: "
                         f"expected magic 0x{c_ext4.MAGIC:04x}, got 0x{sb.magic:04x}")
    wide = sb.feature_incompat & c_ext4.INCOMPAT_64BIT
    block_size = 1024 << min(sb.log_block_size, 16)
    blocks = sb.blocks_count_lo | (sb.blocks_count_hi << 32 if wide else 0)
    free = sb.free_blocks_count_lo | (sb.free_blocks_count_hi << 32 if wide else 0)
    features = ([n for b, n in c_ext4.COMPAT.items() if sb.feature_compat & b]
                + [n for b, n in c_ext4.INCOMPAT.items() if sb.feature_incompat & b]
                + [n for b, n in c_ext4.RO_COMPAT.items() if sb.feature_ro_compat & b])
    return {"format": c_ext4.kind(sb), "label": cstr(sb.volume_name, "utf-8"),
            "uuid": str(uuid.UUID(bytes=sb.uuid)), "size": blocks * block_size,
            "block_size": block_size, "blocks": blocks, "free_blocks": free,
            "inodes": sb.inodes_count, "free_inodes": sb.free_inodes_count,
            "inode_size": sb.inode_size if sb.rev_level else 128,
            "features": features,
            "last_mounted": cstr(sb.last_mounted, "utf-8"),
            "created": sb.mkfs_time or None}


@dataclass(frozen=True)
class DebugfsBlob:
    """An ext2/3/4 file's data, extracted with ``debugfs dump`` when it is opened."""

    device: str
    inode: int
    size: int
    keep: object = field(default=None, compare=False, repr=False)

    def open(self) -> BinaryIO:
        with tempfile.TemporaryDirectory(prefix="imgkit-dump-", dir=scratch.current()) as tmp:
            out = os.path.join(tmp, "data")
            _run(self.device, [f"dump <{self.inode}> {debugfs.quote(out)}"])
            f = open(out, "rb")
        return f   # the directory is gone; the open file stays readable

    def host_range(self) -> tuple[str, int] | None:
        return None


def _run(device: str, commands: list[str]) -> str:
    return debugfs.run(device, commands, reading=True).decode("utf-8", "surrogateescape")


def _device(path: str, offset: int) -> tuple[str, object | None]:
    """The name debugfs opens: ``PATH?offset=N``; a path with ``?`` goes through a symlink."""
    path, holder = os.path.abspath(path), None
    if "?" in path:
        holder = tempfile.TemporaryDirectory(prefix="imgkit-link-", dir=scratch.current())
        link = os.path.join(holder.name, "image")
        os.symlink(path, link)
        path = link
    return (f"{path}?offset={offset}" if offset else path), holder


_LS_CMD = re.compile(r"ls -p -r <(\d+)>")
_STAT_CMD = re.compile(r"stat <(\d+)>")
_USER = re.compile(r"User:\s*(\d+)\s+Group:\s*(\d+)")
_SIZE = re.compile(r"\bSize: (\d+)")
_MTIME = re.compile(r"^\s*mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?")
_MODE = re.compile(r"Mode:\s+([0-7]+)")
_FAST_LINK = re.compile(r'^Fast link dest: "(.*)"$', re.S)
_DEVICE = re.compile(r"Device major/minor number: (\d+):(\d+)")


def open_tree(path: str, offset: int = 0, size: int | None = None, *, what: str | None = None,
              keep: object = None) -> Tree:
    """The files of the ext2/3/4 filesystem at ``offset`` of ``path``, listed by debugfs.

    One ``ls -p`` pass per directory level and one ``stat`` pass for every inode; file data
    is extracted with ``debugfs dump`` when a file is opened.
    """
    what = what or (path if not offset else f"{path}@{offset}")
    device, holder = _device(path, offset)
    keep = (holder, keep) if holder or keep else None
    names: dict[int, list[tuple[str, int]]] = {}   # inode -> [(path, full mode)]
    dirs = {2: ""}   # directory inode -> its path: a second name is a cycle (or a damaged fs)
    level = [(2, "")]
    while level:
        out = _run(device, [f"ls -p -r <{ino}>" for ino, _ in level])
        paths = dict(level)
        nxt = []
        for cmd, lines in debugfs.by_command(out):
            m = _LS_CMD.fullmatch(cmd.strip())
            if not m:
                continue
            parent = paths[int(m[1])]
            for line in lines:
                fields = line.split("/")
                if len(fields) < 7 or fields[0] != "":
                    continue
                ino, mode = int(fields[1]), int(fields[2], 8)
                name = "/".join(fields[5:-2])
                if name in (".", "..") or not ino:
                    continue
                path = f"{parent}/{name}" if parent else name
                names.setdefault(ino, []).append((path, mode))
                if stat.S_ISDIR(mode):
                    if ino in dirs:
                        raise ImageError(
                            f"{what}: directory /{path} is inode {ino}, already listed as "
                            f"/{dirs[ino]}: the directory tree has a cycle (a damaged filesystem)",
                            hint="e2fsck -fn shows the damage")
                    dirs[ino] = path
                    nxt.append((ino, path))
        level = nxt
    info = _ext_stats(device, [2] + list(names))
    tree = Tree()
    root = info.get(2)
    if root:
        tree.with_root(mode=root["mode"], uid=root["uid"], gid=root["gid"], mtime=root["mtime"])
    slow_links = {ino for ino in names if ino in info and stat.S_ISLNK(names[ino][0][1])
                  and info[ino].get("target") is None}
    targets = _ext_slow_links(device, slow_links)
    for ino in sorted(names, key=lambda i: min(sort_key(p) for p, _ in names[i])):
        meta = info.get(ino) or {"mode": 0, "uid": 0, "gid": 0, "mtime": 0, "size": 0}
        paths = sorted(names[ino], key=lambda pm: sort_key(pm[0]))
        first, mode = paths[0]
        try:
            kind = Kind.from_mode(mode)
        except InputError:
            raise ImageError(f"{what}: /{first} has an unknown file type (mode {mode:o})") from None
        common = dict(mode=stat.S_IMODE(mode), uid=meta["uid"], gid=meta["gid"],
                      mtime=meta["mtime"])
        for path, _ in paths:
            origin = f"{what}: /{path} (inode {ino})"
            if kind is Kind.FILE and path != first:
                tree.add(Entry(path, Kind.HARDLINK, target=first, origin=origin, **common))
            elif kind is Kind.FILE:
                tree.add(Entry(path, kind, origin=origin, **common,
                               data=DebugfsBlob(device, ino, meta["size"], keep)))
            elif kind is Kind.SYMLINK:
                tree.add(Entry(path, kind, origin=origin, target=meta.get("target")
                               or targets.get(ino, ""), **common))
            else:
                tree.add(Entry(path, kind, origin=origin, rdev=meta.get("rdev", (0, 0)),
                               **common))
    return tree


def _ext_stats(device: str, inodes: list[int]) -> dict[int, dict]:
    out = _run(device, [f"stat <{ino}>" for ino in inodes])
    info: dict[int, dict] = {}
    for cmd, lines in debugfs.by_command(out):
        m = _STAT_CMD.fullmatch(cmd.strip())
        if not m:
            continue
        text = "\n".join(lines)
        meta: dict = {"mode": 0, "uid": 0, "gid": 0, "mtime": 0, "size": 0, "target": None}
        if (g := _MODE.search(text)):
            meta["mode"] = int(g[1], 8) & 0o7777
        if (g := _USER.search(text)):
            meta["uid"], meta["gid"] = int(g[1]), int(g[2])
        if (g := _SIZE.search(text)):
            meta["size"] = int(g[1])
        for line in lines:
            if (g := _MTIME.match(line)):
                t = int(g[1], 16)
                if t >= 1 << 31:
                    t -= 1 << 32
                if g[2]:
                    t += (int(g[2], 16) & 3) << 32
                meta["mtime"] = t
            elif line.startswith("Fast link dest: "):
                fl = _FAST_LINK.match(line)
                meta["target"] = fl[1] if fl else line[len('Fast link dest: "'):-1]
        if (g := _DEVICE.search(text)):
            meta["rdev"] = (int(g[1]), int(g[2]))
        info[int(m[1])] = meta
    return info


def _ext_slow_links(device: str, inodes: set[int]) -> dict[int, str]:
    """Targets of symlinks too long for the inode (stored in a data block): ``dump`` them."""
    if not inodes:
        return {}
    out: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="imgkit-links-", dir=scratch.current()) as tmp:
        _run(device, [f"dump <{ino}> {debugfs.quote(os.path.join(tmp, str(ino)))}"
                          for ino in sorted(inodes)])
        for ino in inodes:
            try:
                with open(os.path.join(tmp, str(ino)), "rb") as f:
                    out[ino] = f.read().decode("utf-8", "surrogateescape")
            except FileNotFoundError:
                out[ino] = ""
    return out
