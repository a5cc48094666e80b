"""The fidelity check: every path of a source tree against an image, both sides read by tools
imgkit did not write.

The source is a tar, read by Python's ``tarfile`` (names, kinds, owners, modes with set-id
bits, sizes, mtimes, symlink targets, device numbers, ``SCHILY.xattr`` records, hard links,
content hashes). Each image is read by the tools of its format:

- tar and cpio: ``bsdtar`` (libarchive) converts the archive to an mtree listing (owner,
  mode, size, mtime, link target, device numbers, sha256 of the content); ``bsdtar -tv``
  names hard links; a tar's xattrs come from its pax records (``tarfile``).
- squashfs: ``unsquashfs -pf`` (its pseudo-file listing: every inode with its time, mode,
  owner, device numbers, symlink target, hard links, and the file data itself).
- ISO 9660 (Rock Ridge): ``xorriso -find / -exec lsdl`` (kinds, modes, owners, device
  numbers, targets), ``bsdtar`` (mtimes and content of the same Rock Ridge tree) and
  ``bsdtar -tv`` (hard links).
- erofs: ``dump.erofs`` (the directory tree with inode numbers, owners, permission bits,
  sizes, times) and ``fsck.erofs --extract`` (contents, symlink targets, device numbers).
- ext4: ``debugfs`` (``ls -p``, ``stat``, ``ea_list``, ``rdump``).

Both sides become :class:`Listing` values; :func:`differences` compares them field by field
and names every difference, except for the fields a format cannot hold and those a reader
cannot see, which every caller lists by name with the reason (``cannot_hold`` and
:attr:`Listing.blind`).

Device numbers are compared as Linux decodes them: unsquashfs 4.5 prints a squashfs device as
``rdev >> 8, rdev & 0xff`` and libisofs/libarchive decode Rock Ridge ``PN`` as one glibc
``dev_t``, where the kernels (squashfs ``new_decode_dev``, isofs ``MKDEV(high, low)``) read
other numbers for a minor above 255; the readers' numbers are turned back into what the
kernel sees.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import struct
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field

from imgkit.formats.squashfs import decode_xattr_value
from imgkit.formats.squashfs_tools import squashfs_tools

FIELDS = ("kind", "mode", "uid", "gid", "size", "mtime", "target", "rdev", "xattrs", "sha256")


@dataclass(frozen=True)
class Node:
    """One path as a tool shows it; ``mode`` is the permission bits (``0o7777``)."""

    kind: str                      # file dir symlink char block fifo socket
    mode: int
    uid: int
    gid: int
    size: int = 0                  # regular files
    mtime: int | None = None
    target: str | None = None      # symlinks
    rdev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    sha256: str | None = None      # regular files


@dataclass
class Listing:
    """Every path (``""`` is the root) and the hard-link groups (sets of two or more names);
    ``blind`` maps the fields this reader cannot see to why."""

    nodes: dict[str, Node]
    links: set[frozenset[str]] = field(default_factory=set)
    blind: dict[str, str] = field(default_factory=dict)


def differences(source: Listing, image: Listing, *, cannot_hold: dict[str, str] | None = None,
                absent: dict[str, str] | None = None, clamp: int | None = None,
                extra: tuple[str, ...] = ()) -> list[str]:
    """Every difference between ``source`` and ``image``, one line each.

    ``cannot_hold``: fields the format does not store (field -> reason), ``"root"`` for an
    archive that does not store the root directory, ``"links"`` for hard links; ``absent``:
    paths the format cannot hold at all (path -> reason); ``clamp``: the build's
    ``SOURCE_DATE_EPOCH`` (newer mtimes are expected clamped to it); ``extra``: path prefixes
    the build adds on purpose (found only in the image)."""
    skip = set(cannot_hold or ()) | set(image.blind)
    absent = absent or {}
    diffs = []
    for path in sorted(set(source.nodes) | set(image.nodes)):
        want, have = source.nodes.get(path), image.nodes.get(path)
        if path == "" and "root" in skip:
            continue
        if have is None:
            if path not in absent:
                diffs.append(f"/{path}: missing from the image")
            continue
        if want is None:
            if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in extra):
                diffs.append(f"/{path}: in the image, not in the source")
            continue
        if clamp is not None and want.mtime is not None and want.mtime > clamp:
            want = dataclasses.replace(want, mtime=clamp)
        for name in FIELDS:
            if name in skip:
                continue
            a, b = getattr(want, name), getattr(have, name)
            if name == "mode" and "mode-special" in skip:
                a, b = a & 0o777, b & 0o777
            if name == "xattrs":
                a, b = dict(a), dict(b)
            if a != b:
                diffs.append(f"/{path}: {name} {_show(b)} in the image, {_show(a)} in the source")
    if "links" not in skip:
        known = set(image.nodes)
        want_links = {g for g in source.links if g <= known}
        for g in sorted(want_links ^ image.links, key=sorted):
            where = "the source" if g in want_links else "the image"
            diffs.append(f"hard-link group {sorted(g)} only in {where}")
    return diffs


def _show(value) -> str:
    return oct(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)


# -- the formats: how each is made from a tree, and what it cannot hold ----------------------------
#: What each format cannot hold, with the reason (the only differences allowed).
class _CannotHold(dict):
    """Format -> the fields it does not store (field -> why). squashfs depends on the tools
    imgkit writes it with, which are looked up (and fetched) only when squashfs is asked for."""

    def __getitem__(self, fmt: str) -> dict[str, str]:
        if fmt == "squashfs" and not squashfs_tools().reads_tar:
            return {"xattrs": "written through mksquashfs 4.5 pseudo definitions, which have no "
                              "xattrs (imgkit warns)"}
        # squashfs-tools 4.6 stores user., trusted. and security. xattrs: the trees compared
        # hold no others (POSIX ACLs are system. ones, which squashfs has no place for)
        return super().__getitem__(fmt)


CANNOT_HOLD = _CannotHold({
    "tar": {},
    "cpio": {"xattrs": "cpio newc has no xattrs (imgkit warns)",
             "root": "the root directory is not stored (it exists where the archive is unpacked)"},
    "squashfs": {},
    "iso9660": {"xattrs": "pycdlib writes Rock Ridge without AAIP (imgkit warns)"},
    "erofs": {},
    "ext4": {},
})
#: Paths a format cannot hold at all.
ABSENT = {"tar": {"run/sock": "tar has no socket type (imgkit skips it and says so)"}}
#: What the image has that the source has not (the format's own): ext4's lost+found; the
#: directory Rock Ridge moves directories deeper than ISO 9660's 8 levels into (pycdlib names
#: it rr_moved, as genisoimage does; readers show each moved directory in its place).
EXTRA = {"ext4": ("lost+found",), "iso9660": ("rr_moved",)}


def write_format(fmt: str, tree, out: str) -> tuple[Listing, list[str]]:
    """Write ``tree`` as ``fmt`` at ``out``; the image's listing and the writer's warnings."""
    if fmt == "tar":
        from imgkit.archives import write_tarball
        result = write_tarball(tree, out)
        return archive_listing(out), [*result.warnings, *(f"skipped /{p}" for p in result.skipped)]
    if fmt == "cpio":
        from imgkit.archives import write_initramfs
        result = write_initramfs(tree, out, compress="none")
        return archive_listing(out), result.warnings
    if fmt == "squashfs":
        from imgkit.formats.squashfs import write_squashfs
        info = write_squashfs(tree, out, compression="gzip")
        return squashfs_listing(out), list(info.warnings)
    if fmt == "iso9660":
        from imgkit.formats.iso9660 import write_iso
        info = write_iso(tree, out, seed="fidelity")
        return iso_listing(out), list(getattr(info, "warnings", ()))
    if fmt == "erofs":
        from imgkit.formats.erofs import write_erofs
        info = write_erofs(tree, out, seed="fidelity")
        return erofs_listing(out), list(info.warnings)
    assert fmt == "ext4"
    from imgkit.formats.ext4 import write_ext4
    write_ext4(tree, out, seed="fidelity")
    return ext4_listing(out), []


# -- building listings ---------------------------------------------------------------------------

def _hash_stream(f) -> str:
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return _hash_stream(f)


def _norm(name: str) -> str:
    name = name.strip("/")
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name


def _data_first(node: Node) -> tuple[int, bool]:
    """Which name of a hard-link group holds the data: the largest, with a content hash."""
    return node.size, node.sha256 is not None


def _with_links(nodes: dict[str, Node], pairs: dict[str, str]) -> set[frozenset[str]]:
    """Group ``name -> linked-to name`` pairs; each name of a group gets the node that holds
    the data (the largest: a cpio's data is on its last name, a tar's on its first)."""
    groups: dict[str, set[str]] = {}
    for name, to in pairs.items():
        root = to
        while root in pairs and pairs[root] != root:
            root = pairs[root]
        groups.setdefault(root, {root}).add(name)
    for members in groups.values():
        best = max((nodes[m] for m in members if m in nodes), key=_data_first)
        for m in members:
            nodes[m] = best
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def _group_by(keys: dict[str, object], nodes: dict[str, Node]) -> set[frozenset[str]]:
    """Hard-link groups of regular files sharing a key (an inode number)."""
    by: dict[object, set[str]] = {}
    for path, key in keys.items():
        if nodes[path].kind == "file":
            by.setdefault(key, set()).add(path)
    groups = [g for g in by.values() if len(g) > 1]
    for g in groups:
        best = max((nodes[m] for m in g), key=_data_first)
        for m in g:
            nodes[m] = best
    return {frozenset(g) for g in groups}


_TAR_KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
              tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char",
              tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}


def _pax_xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    return tuple(sorted((k[len("SCHILY.xattr."):], v.encode("utf-8", "surrogateescape"))
                        for k, v in member.pax_headers.items()
                        if k.startswith("SCHILY.xattr.")))


def tar_source(path: str) -> Listing:
    """A tar read by Python's tarfile: the source side, or a tar image's xattrs."""
    nodes: dict[str, Node] = {}
    pairs: dict[str, str] = {}
    with tarfile.open(path) as t:
        for m in t:
            name = _norm(m.name)
            if m.islnk():
                pairs[name] = _norm(m.linkname)
                continue
            kind = _TAR_KINDS[m.type]
            sha = None
            if kind == "file":
                f = t.extractfile(m)
                assert f is not None
                sha = _hash_stream(f)
            nodes[name] = Node(kind, m.mode & 0o7777, m.uid, m.gid,
                               m.size if kind == "file" else 0, int(m.mtime),
                               m.linkname if kind == "symlink" else None,
                               (m.devmajor, m.devminor) if kind in ("char", "block") else None,
                               _pax_xattrs(m), sha)
    nodes.setdefault("", Node("dir", 0o755, 0, 0))
    return Listing(nodes, _with_links(nodes, pairs))


def add_source_node(listing: Listing, path: str, node: Node) -> None:
    """A path the tar cannot carry (a socket) added to the source by its literal fields."""
    listing.nodes[path] = node


_MTREE_KINDS = {"file": "file", "dir": "dir", "link": "symlink", "char": "char",
                "block": "block", "fifo": "fifo", "socket": "socket"}
_MTREE_KEYS = "mtree:all,!md5,!rmd160,!sha1,!sha384,!sha512,!cksum,!uname,!gname,!flags," \
              "!resdevice"


def _run(*argv: str, cwd: str | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, cwd=cwd, env={**os.environ, "LC_ALL": "C",
                                                                 "TZ": "UTC"})
    assert r.returncode == 0, f"{argv} failed: {r.stderr.decode(errors='replace')[-2000:]}"
    return r.stdout.decode("utf-8", "surrogateescape")


def _mtree_unescape(name: str) -> str:
    raw = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), name)
    return raw.encode("latin-1", "surrogateescape").decode("utf-8", "surrogateescape")


def _mtree(path: str) -> tuple[dict[str, Node], dict[str, dict[str, str]]]:
    """``bsdtar`` of any archive libarchive reads, as mtree: path -> node, and raw fields."""
    out = _run("bsdtar", "-cf", "-", "--format=mtree", f"--options={_MTREE_KEYS}", f"@{path}")
    nodes, raw = {}, {}
    for line in out.splitlines():
        if not line or line.startswith("#"):
            continue
        name, *pairs = line.split(" ")
        f = dict(p.split("=", 1) for p in pairs)
        name = _norm(_mtree_unescape(name))
        kind = _MTREE_KINDS[f["type"]]
        rdev = None
        if "device" in f:
            _, major, minor = f["device"].split(",")
            rdev = (int(major), int(minor))
        nodes[name] = Node(kind, int(f["mode"], 8), int(f["uid"]), int(f["gid"]),
                           int(f.get("size", 0)) if kind == "file" else 0,
                           int(f["time"].split(".")[0]),
                           _mtree_unescape(f["link"]) if "link" in f else None, rdev, (),
                           f.get("sha256digest", hashlib.sha256(b"").hexdigest())
                           if kind == "file" else None)
        raw[name] = f
    return nodes, raw


_LINK_TO = re.compile(r"^\S{10}\s+\d+\s+\d+\s+\d+\s+\d+\s+\w{3}\s+\d+\s+\S+\s(.*) link to (.*)$")


def _hard_link_pairs(path: str) -> dict[str, str]:
    """``name -> name it is a hard link to``, from ``bsdtar -tv``."""
    pairs = {}
    for line in _run("bsdtar", "-tvnf", path).splitlines():
        m = _LINK_TO.match(line)
        if m:
            pairs[_norm(m[1])] = _norm(m[2])
    return pairs


def archive_listing(path: str) -> Listing:
    """A tar or cpio (uncompressed or not) through bsdtar; a tar's xattrs from its pax
    records."""
    nodes, _ = _mtree(path)
    links = _with_links(nodes, _hard_link_pairs(path))
    blind = {}
    if tarfile.is_tarfile(path):
        xattrs = {p: n.xattrs for p, n in tar_source(path).nodes.items()}
        nodes = {p: dataclasses.replace(n, xattrs=xattrs.get(p, ())) for p, n in nodes.items()}
    else:
        blind["xattrs"] = "a cpio newc archive has no xattrs (cannot_hold says so too)"
    return Listing(nodes, links, blind)


# -- squashfs --------------------------------------------------------------------------------------

_PF_KINDS = {"D": "dir", "R": "file", "S": "symlink", "C": "char", "B": "block"}
_DATA_MARK = b"\n#\n# START OF DATA - DO NOT MODIFY\n#\n"


def _pf_name(line: str) -> tuple[str, str]:
    """Split a pseudo-file line into its (unescaped) name and the rest."""
    m = re.match(r"((?:\\.|[^\\ ])+) (.*)$", line)
    assert m, f"unparsed unsquashfs -pf line: {line!r}"
    return _norm(re.sub(r"\\(.)", r"\1", m[1])), m[2]


def _kernel_new_decode_dev(rdev: int) -> tuple[int, int]:
    return (rdev & 0xFFF00) >> 8, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)


def squashfs_listing(image: str) -> Listing:
    """``unsquashfs -pf`` of the squashfs-tools imgkit writes with: every inode, the file data
    and, from 4.6 on, the xattrs (4.5 lists none)."""
    tools = squashfs_tools()
    with tempfile.TemporaryDirectory() as tmp:
        pf = os.path.join(tmp, "out.pf")
        _run(tools.unsquashfs, "-no-progress", "-pf", pf, image)
        with open(pf, "rb") as f:
            text = f.read()
    head, _, data = text.partition(_DATA_MARK)
    nodes: dict[str, Node] = {}
    pairs: dict[str, str] = {}
    xattrs: dict[str, list[tuple[str, bytes]]] = {}
    for line in head.decode("utf-8", "surrogateescape").splitlines():
        if not line or line.startswith("#"):
            continue
        name, rest = _pf_name(line)
        kind, *f = rest.split(" ", 5 if rest.startswith("S ") else -1)
        if kind == "x":
            key, _, value = rest[2:].partition("=")
            xattrs.setdefault(name, []).append((key, decode_xattr_value(value)))
            continue
        if kind == "L":
            pairs[name] = _norm(re.sub(r"\\(.)", r"\1", rest[2:]))
            continue
        when, mode, uid, gid = int(f[0]), int(f[1], 8), int(f[2]), int(f[3])
        if kind == "I":
            nodes[name] = Node("fifo" if f[4] == "f" else "socket", mode, uid, gid, 0, when)
        elif kind == "R":
            size, offset = int(f[4]), int(f[5])
            nodes[name] = Node("file", mode, uid, gid, size, when, None, None, (),
                               hashlib.sha256(data[offset:offset + size]).hexdigest())
        elif kind in ("C", "B"):
            rdev = _kernel_new_decode_dev((int(f[4]) << 8) | int(f[5]))
            nodes[name] = Node(_PF_KINDS[kind], mode, uid, gid, 0, when, None, rdev)
        elif kind == "S":
            nodes[name] = Node("symlink", mode, uid, gid, 0, when, f[4])
        else:
            nodes[name] = Node(_PF_KINDS[kind], mode, uid, gid, 0, when)
    nodes = {p: dataclasses.replace(n, xattrs=tuple(sorted(xattrs.get(p, ()))))
             for p, n in nodes.items()}
    blind = {} if tools.reads_tar else {"xattrs": "unsquashfs 4.5 -pf shows no xattrs"}
    return Listing(nodes, _with_links(nodes, pairs), blind)


# -- ISO 9660 with Rock Ridge ------------------------------------------------------------------------

_LSDL = re.compile(r"^(?P<mode>\S{10})\s+\d+\s+(?P<uid>\d+)\s+(?P<gid>\d+)\s+(?P<size>\d+|\d+,\d+)"
                   r"\s+\w{3}\s+\d+\s+\S+\s+'(?P<name>.*?)'(?: -> '(?P<target>.*)')?$")
_LS_KINDS = {"-": "file", "d": "dir", "l": "symlink", "c": "char", "b": "block", "p": "fifo",
             "s": "socket"}


def _perm_bits(text: str) -> int:
    """``rwsr-xr-x`` -> 0o4755."""
    bits = 0
    for i, c in enumerate(text):
        if c not in "-ST":
            bits |= 1 << (8 - i)
        if c in "sStT":
            bits |= {2: 0o4000, 5: 0o2000, 8: 0o1000}[i]
    return bits


def _rock_ridge_pn(major: int, minor: int) -> tuple[int, int]:
    """libisofs' numbers (a glibc ``dev_t`` made of PN high << 32 | low) back to PN's two
    words, then as Linux's isofs reads them."""
    dev = ((major & 0xFFFFF000) << 32) | ((major & 0xFFF) << 8) | \
        ((minor & 0xFFFFFF00) << 12) | (minor & 0xFF)
    high, low = dev >> 32, dev & 0xFFFFFFFF
    if high == 0 and low & ~0xFF:
        return low >> 8, low & 0xFF
    return high, low


def _unquote_xorriso(text: str) -> str:
    return text.replace("'\"'\"'", "'")


def iso_listing(image: str) -> Listing:
    """The Rock Ridge tree: xorriso for kinds, modes, owners, devices and targets, bsdtar for
    times, contents and hard links (pycdlib writes no xattrs: AAIP is not written)."""
    nodes: dict[str, Node] = {}
    times, _ = _mtree(image)
    for line in _run("xorriso", "-indev", image, "-find", "/", "-exec", "lsdl").splitlines():
        m = _LSDL.match(line)
        if not m:
            continue
        name = _norm(_unquote_xorriso(m["name"]))
        kind = _LS_KINDS[m["mode"][0]]
        rdev = None
        size = 0
        if kind in ("char", "block"):
            rdev = _rock_ridge_pn(*map(int, m["size"].split(",")))
        elif kind == "file":
            size = int(m["size"])
        mt = times.get(name)
        # bsdtar reads a later name of a hard link as one without data: no hash from it
        sha = mt.sha256 if mt and kind == "file" and mt.size == size else None
        nodes[name] = Node(kind, _perm_bits(m["mode"][1:]), int(m["uid"]), int(m["gid"]), size,
                           mt.mtime if mt else None,
                           _unquote_xorriso(m["target"]) if m["target"] is not None else None,
                           rdev, (), sha)
    links = _with_links(nodes, _hard_link_pairs(image))
    return Listing(nodes, links, {"xattrs": "the writer stores none (no AAIP); see cannot_hold"})


# -- erofs ------------------------------------------------------------------------------------------

_EROFS_KINDS = {1: "file", 2: "dir", 3: "char", 4: "block", 5: "fifo", 6: "socket",
                7: "symlink"}


def _erofs_inode(image: str, path: str) -> tuple[int, int, int, int, int]:
    """(uid, gid, permission bits, size, mtime) from ``dump.erofs --path``."""
    out = _run("dump.erofs", f"--path=/{path}", image)
    uid, gid, mode = re.search(r"Uid: (\d+)\s+Gid: (\d+)\s+Access: (\d+)/", out).groups()
    size = int(re.search(r"^Size: (\d+)", out, re.M)[1])
    stamp = re.search(r"Timestamp: (\d+-\d+-\d+ \d+:\d+:\d+)", out)[1]
    import calendar
    import time
    when = calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
    return int(uid), int(gid), int(mode, 8), size, when


def erofs_listing(image: str) -> Listing:
    """erofs-utils 1.5: ``dump.erofs --ls`` walks the directories (names, types and inode
    numbers: hard links share one), ``dump.erofs --path`` gives each inode's owner,
    permission bits, size and time, ``fsck.erofs --extract`` the contents, targets and (as
    root) device numbers."""
    kinds: dict[str, tuple[int, str]] = {"": (0, "dir")}
    todo = [""]
    while todo:
        d = todo.pop()
        out = _run("dump.erofs", f"--path=/{d}", "--ls", image)
        for m in re.finditer(r"^\s+(\d+)\s+(\d+)\s+(.*)$", out.split("FILENAME", 1)[1], re.M):
            if m[3] in (".", ".."):
                continue
            path = f"{d}/{m[3]}" if d else m[3]
            kinds[path] = (int(m[1]), _EROFS_KINDS[int(m[2])])
            if kinds[path][1] == "dir":
                todo.append(path)
    root = os.geteuid() == 0
    nodes: dict[str, Node] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "x")
        _run("fsck.erofs", f"--extract={out}", "--preserve" if root else "--no-preserve", image)
        for path, (_nid, kind) in kinds.items():
            uid, gid, perm, size, when = _erofs_inode(image, path)
            host = os.path.join(out, path)
            target = os.readlink(host) if kind == "symlink" else None
            rdev = None
            if kind in ("char", "block") and root:
                st = os.lstat(host)
                rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            sha = _hash_file(host) if kind == "file" else None
            nodes[path] = Node(kind, perm, uid, gid, size if kind == "file" else 0, when, target,
                               rdev, (), sha)
    links = _group_by({p: nid for p, (nid, _) in kinds.items()}, nodes)
    blind = {"xattrs": "erofs-utils 1.5 shows no xattrs (formats/erofs.py tests read them)",
             "mode-special": "dump.erofs shows only the 0777 bits"}
    if not root:
        blind["rdev"] = "fsck.erofs makes device nodes only as root"
    return Listing(nodes, links, blind)


# -- ext4 (debugfs) ---------------------------------------------------------------------------------

def debugfs_commands(image: str, commands: list[str]) -> dict[str, str]:
    """Each command's output from one ``debugfs -f`` run (read-only)."""
    with tempfile.NamedTemporaryFile("w", suffix=".cmds") as f:
        f.write("".join(c + "\n" for c in commands))
        f.flush()
        out = subprocess.run(["debugfs", "-f", f.name, image], capture_output=True, text=True,
                             check=True, errors="surrogateescape").stdout
    results: dict[str, str] = {}
    for chunk in out.split("debugfs: ")[1:]:
        cmd, _, body = chunk.partition("\n")
        results[cmd] = body
    return results


def _q(path: str) -> str:
    return '"/' + path + '"'


_EXT4_ACL_IDS = {2, 8}   # ACL_USER, ACL_GROUP carry an id


def _ext4_acl_to_vfs(value: bytes) -> bytes:
    """ext4's on-disk POSIX ACL (version 1, ids only where named) as the kernel's xattr
    (version 2, every entry with an id, 0xFFFFFFFF where unnamed), which the tar holds."""
    out = [struct.pack("<I", 2)]
    i = 4
    while i < len(value):
        tag, perm = struct.unpack_from("<HH", value, i)
        i += 4
        ident = 0xFFFFFFFF
        if tag in _EXT4_ACL_IDS:
            (ident,) = struct.unpack_from("<I", value, i)
            i += 4
        out.append(struct.pack("<HHI", tag, perm, ident))
    return b"".join(out)


def _ea_list(body: str) -> tuple[tuple[str, bytes], ...]:
    out = []
    for m in re.finditer(r'^\s*(\S+) \((\d+)\)(?: = (?:"(.*)"|((?:[0-9a-f]{2} ?)+)))?\s*$', body,
                         re.M):
        name = m[1]
        if m[4] is not None:
            value = bytes.fromhex(m[4].replace(" ", ""))
        else:
            value = (m[3] or "").encode("utf-8", "surrogateescape").decode(
                "unicode_escape").encode("latin-1")
        if name.startswith("system.posix_acl_"):
            value = _ext4_acl_to_vfs(value)
        out.append((name, value))
    return tuple(sorted(out))


def ext4_listing(image: str) -> Listing:
    """debugfs: ``ls -p`` of every directory (inode numbers, modes, owners, sizes), ``stat``
    of every path (mtime, symlink target, device numbers), ``ea_list`` (xattrs, ACLs turned
    into the kernel's format), ``rdump`` (contents). ``image`` may carry ``?offset=N``."""
    dirs = [""]
    seen: dict[str, tuple[int, int, int, int, int]] = {"": (2, 0o40755, 0, 0, 0)}
    while dirs:
        batch, dirs = dirs, []
        listed = debugfs_commands(image, [f"ls -p {_q(d)}" for d in batch])
        for d in batch:
            for line in listed.get(f"ls -p {_q(d)}", "").splitlines():
                parts = line.split("/")
                if len(parts) < 7 or parts[5] in ("", ".", "..") or parts[1] == "0":
                    continue   # lost+found's empty slots are inode 0
                path = f"{d}/{parts[5]}" if d else parts[5]
                mode = int(parts[2], 8)
                seen[path] = (int(parts[1]), mode, int(parts[3]), int(parts[4]),
                              int(parts[6] or 0))
                if stat.S_ISDIR(mode):
                    dirs.append(path)
    paths = list(seen)
    stats = debugfs_commands(image, [f"stat {_q(p)}" for p in paths])
    eas = debugfs_commands(image, [f"ea_list {_q(p)}" for p in paths])
    nodes: dict[str, Node] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = [p for p in paths if stat.S_ISREG(seen[p][1])]
        debugfs_commands(image, [f'dump {_q(p)} "{tmp}/{n}"' for n, p in enumerate(files)])
        hashes = {p: _hash_file(f"{tmp}/{n}") for n, p in enumerate(files)}
    for path in paths:
        ino, mode, uid, gid, size = seen[path]
        body = stats.get(f"stat {_q(path)}", "")
        if path == "":
            m = re.search(r"Mode:\s+0?(\d+)", body)
            mode = 0o40000 | int(m[1], 8) if m else mode
            m = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", body)
            uid, gid = (int(m[1]), int(m[2])) if m else (uid, gid)
        kind = _LS_KINDS[stat.filemode(mode)[0]]
        m = re.search(r"mtime: 0x([0-9a-f]+)(?::[0-9a-f]+)?", body)
        when = int(m[1], 16) if m else None
        if when is not None and when >= 1 << 31:
            when -= 1 << 32
        target = None
        if kind == "symlink":
            m = re.search(r'Fast link dest: "(.*)"', body) or re.search(r'link dest: "(.*)"', body)
            target = m[1] if m else None
        rdev = None
        if kind in ("char", "block"):
            m = re.search(r"Device major/minor number: (\d+):(\d+)", body)
            rdev = (int(m[1]), int(m[2])) if m else None
        nodes[path] = Node(kind, mode & 0o7777, uid, gid, size if kind == "file" else 0, when,
                           target, rdev, _ea_list(eas.get(f"ea_list {_q(path)}", "")),
                           hashes.get(path))
    links = _group_by({p: v[0] for p, v in seen.items()}, nodes)
    return Listing(nodes, links)
