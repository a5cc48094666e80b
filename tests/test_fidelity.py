"""Every format keeps every path of a tree with every kind of file, as the format's own tools
read it back (tests/fidelity.py): zero differences but those the format cannot hold, listed
here with the reason.

The source is a tar written by Python's tarfile (so owners, device nodes and a
``security.capability`` need no privilege), plus a socket, which no tar holds, added as an
entry line. Each image is made by imgkit from it and read by bsdtar, unsquashfs, xorriso,
dump.erofs/fsck.erofs or debugfs.
"""
from __future__ import annotations

import io
import struct
import tarfile

import pytest
from fidelity import (
    ABSENT,
    CANNOT_HOLD,
    EXTRA,
    Listing,
    Node,
    add_source_node,
    differences,
    tar_source,
    write_format,
)

from imgkit.assemble import TreeSpec, assemble

CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
T = 1_600_000_000

def _add(t: tarfile.TarFile, name: str, kind=tarfile.REGTYPE, data: bytes = b"",
         mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: int = T, pax=None, **kw) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, mtime
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.pax_headers = pax or {}
    for k, v in kw.items():
        setattr(ti, k, v)
    t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _xattr(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def make_every_kind_tar(path) -> None:
    """Directories (sticky, private), files (setuid, setgid, empty, a long name, a space),
    hard links within and across directories, a symlink, character and block devices (one
    with numbers beyond 8 bits), a fifo, xattrs in the security and user namespaces."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        _add(t, ".", tarfile.DIRTYPE, mode=0o755, mtime=T + 100)
        _add(t, "bin", tarfile.DIRTYPE, mode=0o755)
        _add(t, "bin/busybox", data=b"\x7fELF" + bytes(range(256)) * 40, mode=0o4755)
        _add(t, "bin/sh", tarfile.LNKTYPE, linkname="bin/busybox", mode=0o4755)
        _add(t, "bin/ping", data=b"ping", mode=0o755,
             pax={"SCHILY.xattr.security.capability": _xattr(CAP_NET_RAW)})
        _add(t, "bin/ls", tarfile.SYMTYPE, linkname="busybox", mode=0o777, mtime=T + 5)
        _add(t, "dev", tarfile.DIRTYPE, mode=0o755, mtime=T + 1)
        _add(t, "dev/console", tarfile.CHRTYPE, mode=0o600, devmajor=5, devminor=1)
        _add(t, "dev/sda", tarfile.BLKTYPE, mode=0o660, gid=6, devmajor=8, devminor=0)
        _add(t, "dev/tty300", tarfile.CHRTYPE, mode=0o620, gid=5, devmajor=300, devminor=70000)
        _add(t, "run", tarfile.DIRTYPE, mode=0o755)
        _add(t, "run/fifo", tarfile.FIFOTYPE, mode=0o600, uid=7, gid=8)
        _add(t, "home", tarfile.DIRTYPE, mode=0o755)
        _add(t, "home/user", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000, mtime=T - 10**8)
        _add(t, "home/user/empty", uid=1000, gid=1000)
        _add(t, "home/user/note with space", data=b"x\n", uid=1000, gid=100, mode=0o640,
             pax={"SCHILY.xattr.user.comment": "kept"})
        _add(t, "home/user/hl-other-dir", tarfile.LNKTYPE, linkname="bin/busybox")
        _add(t, "etc", tarfile.DIRTYPE, mode=0o755)
        _add(t, "etc/" + "n" * 200, data=b"long name\n", mode=0o600)
        _add(t, "etc/sticky", tarfile.DIRTYPE, mode=0o1777)
        _add(t, "etc/setgid", data=b"g", mode=0o2755, gid=50)
        # a tail too big to follow its inode in one block (erofs stores it in a block)
        _add(t, "etc/almost-a-block", data=bytes(range(256)) * 15 + b"x" * 246)


SOCKET = ("run/sock", Node("socket", 0o755, 3, 4, 0, T + 100))   # entry lines take the build time


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """The source tar, its listing (the socket added by its literal fields) and the tree."""
    d = tmp_path_factory.mktemp("every-kind")
    make_every_kind_tar(d / "src.tar")
    source = tar_source(str(d / "src.tar"))
    add_source_node(source, *SOCKET)
    tree = assemble(TreeSpec(sources=(str(d / "src.tar"),),
                             entries=("sock /run/sock 0755 3 4",), mtime=T + 100))
    return d, source, tree


@pytest.mark.parametrize("fmt", list(CANNOT_HOLD))
def test_every_kind_of_file_survives(every_kind, fmt):
    d, source, tree = every_kind
    image, _warnings = write_format(fmt, tree, str(d / f"out.{fmt}"))
    diffs = differences(source, image, cannot_hold=CANNOT_HOLD[fmt], absent=ABSENT.get(fmt),
                        extra=EXTRA.get(fmt, ()))
    assert diffs == [], "\n".join(diffs)


def test_the_check_finds_what_it_is_there_to_find(every_kind):
    """The comparison is not blind: a changed owner, mode, time, target, device, xattr,
    content or hard link, and a missing path, each make a difference."""
    import dataclasses
    _, source, _ = every_kind
    image = Listing(dict(source.nodes), set(source.links))
    n = image.nodes
    n["bin/ping"] = dataclasses.replace(n["bin/ping"], xattrs=())
    n["etc/setgid"] = dataclasses.replace(n["etc/setgid"], mode=0o755)
    n["home/user"] = dataclasses.replace(n["home/user"], uid=0, mtime=T)
    n["bin/ls"] = dataclasses.replace(n["bin/ls"], target="sh")
    n["dev/tty300"] = dataclasses.replace(n["dev/tty300"], rdev=(1, 3))
    n["home/user/note with space"] = dataclasses.replace(n["home/user/note with space"],
                                                         sha256="0" * 64)
    del n["run/fifo"]
    image.links = set()
    text = "\n".join(differences(source, image))
    for want in ("/bin/ping: xattrs", "/etc/setgid: mode", "/home/user: uid", "/home/user: mtime",
                 "/bin/ls: target", "/dev/tty300: rdev", "note with space: sha256",
                 "/run/fifo: missing", "hard-link group"):
        assert want in text, (want, text)


@pytest.mark.parametrize("fmt", list(CANNOT_HOLD))
def test_a_format_without_xattrs_says_so_once(every_kind, fmt):
    """One line per format (imgkit.losses.xattr_loss) naming the paths and xattrs lost; the
    formats that hold xattrs say nothing."""
    d, _, tree = every_kind
    _, warnings = write_format(fmt, tree, str(d / f"warned.{fmt}"))
    lost = [w for w in warnings if "cannot store extended attributes" in w]
    if "xattrs" in CANNOT_HOLD[fmt]:
        assert len(lost) == 1, warnings
        for name in ("/bin/ping", "/home/user/note with space", "security.capability",
                     "user.comment", "2 entries"):
            assert name in lost[0], lost
    else:
        assert lost == [], warnings


def test_the_warning_names_the_first_few_paths(tmp_path):
    from imgkit.losses import xattr_loss
    from imgkit.tree import BytesBlob, Entry, Kind, Tree
    t = Tree()
    for i in range(12):
        t.add(Entry(f"f{i:02}", Kind.FILE, data=BytesBlob(b""), xattrs=((f"user.k{i}", b"v"),)))
    (line,) = xattr_loss(t, "FAT")
    assert line.startswith("FAT cannot store extended attributes: 12 entries lose their xattrs")
    assert "/f04" in line and "/f05" not in line and "and 7 more" in line
    assert "user.k0, user.k1, user.k10, user.k11, user.k2, ..." in line


CONFIG = """
[trees.root]
sources = ["src.tar"]
[trees.esp]
sources = ["src.tar:/copy"]
[filesystems.iso]
type = "iso9660"
tree = "root"
output = "root.iso"
[filesystems.esp]
type = "vfat"
tree = "esp"
[filesystems.root]
type = "ext4"
tree = "root"
[disk]
output = "disk.img"
partitions = [{ name = "esp", type = "esp", size = "8M", filesystem = "esp" },
              { name = "root", size = "16M", filesystem = "root" }]
"""


def test_a_build_warns_for_each_format_that_drops_xattrs(tmp_path):
    """Through the filesystem table: ISO and FAT say what they drop, ext4 nothing."""
    import subprocess
    import sys
    make_every_kind_tar(tmp_path / "src.tar")
    (tmp_path / "b.toml").write_text(CONFIG)
    r = subprocess.run([sys.executable, "-m", "imgkit", "build", str(tmp_path / "b.toml"),
                        "-O", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if "cannot store extended attributes" in x]
    assert len(lines) == 2, r.stderr
    iso = next(x for x in lines if "ISO 9660" in x)
    fat = next(x for x in lines if "FAT" in x)
    assert "/bin/ping" in iso and "/copy/bin/ping" in fat and "security.capability" in fat
    assert all(x.startswith("imgkit: warning: ") for x in lines)
