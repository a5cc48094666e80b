"""The kernel's ``gen_init_cpio`` list format (``CONFIG_INITRAMFS_SOURCE`` lists).

Grammar (from ``usr/gen_init_cpio.c``)::

    file  <name> <location> <mode> <uid> <gid> [<hard links>...]
    dir   <name> <mode> <uid> <gid>
    nod   <name> <mode> <uid> <gid> <dev_type> <maj> <min>
    slink <name> <target> <mode> <uid> <gid>
    pipe  <name> <mode> <uid> <gid>
    sock  <name> <mode> <uid> <gid>

Modes are octal; ``#`` starts a comment; ``${VAR}`` in a location is expanded from the
environment. A relative location is looked up from the current directory first (as the
kernel build runs it), then beside the list file.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable

from imgkit.errors import InputError
from imgkit.tree import Entry, FileBlob, Kind, Tree

KEYWORDS = {
    "file": "<name> <location> <mode> <uid> <gid> [<hard links>...]",
    "dir": "<name> <mode> <uid> <gid>",
    "nod": "<name> <mode> <uid> <gid> <dev_type> <maj> <min>",
    "slink": "<name> <target> <mode> <uid> <gid>",
    "pipe": "<name> <mode> <uid> <gid>",
    "sock": "<name> <mode> <uid> <gid>",
}
_MIN_FIELDS = {"file": 5, "dir": 4, "nod": 7, "slink": 5, "pipe": 4, "sock": 4}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def looks_like_list(path: str) -> bool:
    """Whether ``path`` is a text file, which among our sources only a list can be.

    Every archive format libarchive reads has binary headers (even ASCII cpio pads names with
    NULs), so a text file is parsed as a list and a typo gets a line-numbered error. A FIFO
    or a device is refused here (:class:`InputError`): reading one would block or never end.
    """
    from imgkit.detect import regular_file
    regular_file(path, "source")
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return False
    if b"\0" in head or not head.strip():
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a character cut by the 8 KiB boundary
    return True


def read_initramfs_list(path: str, *, default_mtime: int = 0,
                        env: dict[str, str] | None = None) -> Tree:
    """Parse the list at ``path`` into a new :class:`Tree`."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as exc:
        raise InputError(f"cannot read list file {path!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"list file {path!r} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} "
                         f"at offset {exc.start}") from None
    return parse_list_lines(lines, origin=path, base=os.path.dirname(os.path.abspath(path)),
                            default_mtime=default_mtime, env=env)


def parse_list_lines(lines: Iterable[str], *, origin: str, base: str, default_mtime: int = 0,
                     env: dict[str, str] | None = None) -> Tree:
    """Parse list lines held in memory (``--entry`` options, a config's ``entries``).

    Errors name ``origin:N``; relative locations are looked up in the current directory,
    then in ``base``.
    """
    env = dict(os.environ) if env is None else env
    tree = Tree(default_mtime=default_mtime)
    for lineno, raw in enumerate(lines, 1):
        where = f"{origin}:{lineno}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        kw = words[0]
        if kw not in KEYWORDS:
            raise InputError(
                f"{where}: unknown entry type {kw!r}; expected one of {', '.join(KEYWORDS)}",
                hint=f"the line was: {raw.strip()}")
        if len(words) < _MIN_FIELDS[kw] + 1 or (kw != "file" and len(words) > _MIN_FIELDS[kw] + 1):
            raise InputError(
                f"{where}: {kw!r} expects '{kw} {KEYWORDS[kw]}', got {len(words) - 1} fields",
                hint=f"the line was: {raw.strip()}")
        for entry in _parse(kw, words[1:], where, base, env, default_mtime):
            tree.add(entry)
    tree.validate()
    return tree


def _octal(value: str, what: str, where: str) -> int:
    if len(value) > 24:
        raise InputError(f"{where}: {what} must be octal (like 0755), got {value[:24]!r}...")
    try:
        mode = int(value, 8)
    except ValueError:
        raise InputError(f"{where}: {what} must be octal (like 0755), got {value!r}") from None
    if mode > 0o7777:
        raise InputError(f"{where}: {what} {value!r} has bits beyond 07777")
    return mode


def _int(value: str, what: str, where: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise InputError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    if len(value.lstrip("0")) > 20:   # beyond 64 bits; and int() refuses > 4300 digits
        raise InputError(f"{where}: {what} {value[:24]}... has {len(value)} digits, expected "
                         "at most a 64-bit number")
    return int(value)


def _expand(location: str, env: dict[str, str], where: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group(1) not in env:
            raise InputError(f"{where}: variable ${{{m.group(1)}}} in {location!r} is not set")
        return env[m.group(1)]
    return _VAR.sub(sub, location)


def _locate(location: str, base: str, where: str) -> str:
    if os.path.isabs(location):
        candidates = [location]
    else:
        candidates = [os.path.abspath(location), os.path.join(base, location)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise InputError(f"{where}: file {location!r} not found (looked at {', '.join(candidates)})")


def _parse(kw: str, a: list[str], where: str, base: str, env: dict[str, str], mtime: int):
    name = a[0]
    if kw == "file":
        host = _locate(_expand(a[1], env, where), base, where)
        mode, uid, gid = _octal(a[2], "mode", where), _int(a[3], "uid", where), _int(a[4], "gid", where)
        st = os.stat(host)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{where}: {host!r} is not a regular file")
        yield Entry(name, Kind.FILE, mode=mode, uid=uid, gid=gid, mtime=int(st.st_mtime),
                    data=FileBlob(host, st.st_size), origin=where)
        for link in a[5:]:
            yield Entry(link, Kind.HARDLINK, mode=mode, uid=uid, gid=gid, mtime=int(st.st_mtime),
                        target=name, origin=where)
        return
    if kw == "slink":
        yield Entry(name, Kind.SYMLINK, target=a[1], mode=_octal(a[2], "mode", where),
                    uid=_int(a[3], "uid", where), gid=_int(a[4], "gid", where), mtime=mtime,
                    origin=where)
        return
    mode, uid, gid = _octal(a[1], "mode", where), _int(a[2], "uid", where), _int(a[3], "gid", where)
    common = dict(mode=mode, uid=uid, gid=gid, mtime=mtime, origin=where)
    if kw == "dir":
        yield Entry(name, Kind.DIR, **common)
    elif kw == "pipe":
        yield Entry(name, Kind.FIFO, **common)
    elif kw == "sock":
        yield Entry(name, Kind.SOCKET, **common)
    else:  # nod
        dev_type = a[4]
        if dev_type not in ("c", "b"):
            raise InputError(f"{where}: device type must be 'c' or 'b', got {dev_type!r}")
        yield Entry(name, Kind.CHAR if dev_type == "c" else Kind.BLOCK,
                    rdev=(_int(a[5], "major", where), _int(a[6], "minor", where)), **common)
