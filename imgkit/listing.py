"""``ls -l``-style rows for tree entries, as ``cpio -tv`` and ``tar -tv`` print them."""
from __future__ import annotations

import grp
import pwd
import stat
import time
from functools import cache

from imgkit.tree import Entry, Kind, Tree


@cache
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@cache
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def long_row(e: Entry, tree: Tree | None = None, *, numeric: bool = False) -> str:
    """One line: mode, links, owner, group, size or device, date, name, link target."""
    meta = e
    if e.kind is Kind.HARDLINK and tree is not None and e.target in tree:
        meta = tree[e.target]
    owner = str(meta.uid) if numeric else _user(meta.uid)
    group = str(meta.gid) if numeric else _group(meta.gid)
    if e.kind in (Kind.CHAR, Kind.BLOCK):
        size = f"{e.rdev[0]:>4}, {e.rdev[1]:>3}"
    else:
        size = str(meta.size)
    date = time.strftime("%Y-%m-%d %H:%M", time.gmtime(meta.mtime))
    name = "/" + e.path
    if e.kind is Kind.SYMLINK:
        name += f" -> {e.target}"
    elif e.kind is Kind.HARDLINK:
        name += f" link to /{e.target}"
    return f"{stat.filemode(meta.st_mode)} {owner:<8} {group:<8} {size:>10} {date} {name}"


def entry_json(e: Entry, tree: Tree | None = None) -> dict:
    meta = tree[e.target] if (e.kind is Kind.HARDLINK and tree is not None and e.target in tree) else e
    out = {"path": "/" + e.path, "type": e.kind.value, "mode": f"{meta.mode:04o}",
           "uid": meta.uid, "gid": meta.gid, "mtime": meta.mtime, "size": meta.size}
    if e.kind in (Kind.SYMLINK, Kind.HARDLINK):
        out["target"] = e.target
    if e.kind in (Kind.CHAR, Kind.BLOCK):
        out["rdev"] = list(e.rdev)
    return out
