"""squashfs: written by mksquashfs, checked with unsquashfs.

The tests run twice (the ``squashfs_tools`` fixture): with squashfs-tools 4.6 (Debian trixie's,
fetched once into the cache, fed a tar stream) and with the host's 4.5.1 (pseudo definitions
only, ``IMGKIT_SQUASHFS_TOOLS=host``). The listings come from the host's ``unsquashfs``; the
xattrs, which only 4.6 stores and lists, from the fetched one's ``unsquashfs -pf``.
"""
from __future__ import annotations

import re
import stat
import subprocess

import pytest
from conftest import copy_partition, host_source_dir, sfdisk_partitions, sh

from imgkit import detect
from imgkit.build import build
from imgkit.config import load_config
from imgkit.formats import squashfs_tools as sqt
from imgkit.formats.squashfs import open_tree, write_squashfs
from imgkit.tree import BytesBlob, Entry, Kind

pytestmark = pytest.mark.skipif(not __import__("shutil").which("mksquashfs"),
                                reason="squashfs-tools is not installed")

_LLN = re.compile(r"^(\S{10}) (\d+)/(\d+) +(\d+|\d+, +\d+) (\S+ \S+) squashfs-root(.*?)(?: -> (.*))?$")
_TYPE = {"-": Kind.FILE, "d": Kind.DIR, "l": Kind.SYMLINK, "c": Kind.CHAR, "b": Kind.BLOCK,
         "p": Kind.FIFO, "s": Kind.SOCKET}


@pytest.fixture(autouse=True, params=["4.6", "host"])
def squashfs_tools(request, monkeypatch) -> sqt.SquashfsTools:
    """Which squashfs-tools writes the images: 4.6 (fetched; a failed download fails the
    test, the tar path must not go untested silently) or the host's."""
    if request.param == "host":
        monkeypatch.setenv("IMGKIT_SQUASHFS_TOOLS", "host")
    else:
        monkeypatch.delenv("IMGKIT_SQUASHFS_TOOLS", raising=False)
    chosen = sqt.squashfs_tools()
    if request.param == "4.6" and not chosen.reads_tar:
        pytest.fail(f"no squashfs-tools 4.6: {chosen.why}", pytrace=False)
    return chosen


def lln(image: str, *extra: str) -> dict[str, tuple]:
    """unsquashfs -lln: path -> (kind, mode string, uid, gid, size or device, target)."""
    out = {}
    for line in sh("unsquashfs", *extra, "-lln", image).splitlines():
        m = _LLN.match(line)
        if m:
            out[m[6].lstrip("/")] = (_TYPE[m[1][0]], m[1], int(m[2]), int(m[3]),
                                     m[4].replace(" ", ""), m[7])
    return out


def test_sample_tree_matches_unsquashfs_listing(tmp_path, sample_tree):
    image = str(tmp_path / "t.sqfs")
    info = write_squashfs(sample_tree, image, compression="zstd", block_size=64 * 1024,
                          mtime=1700000000)
    listing = lln(image)
    assert set(listing) == {e.path for e in sample_tree}
    groups = sample_tree.hardlink_groups()
    for e in sample_tree:
        kind, mode, uid, gid, size, target = listing[e.path]
        real = sample_tree[e.target] if e.kind is Kind.HARDLINK else e
        assert kind is (Kind.FILE if e.kind is Kind.HARDLINK else e.kind), e.path
        assert mode[1:] == stat.filemode(real.st_mode)[1:], e.path
        assert (uid, gid) == (real.uid, real.gid), e.path
        if e.kind in (Kind.CHAR, Kind.BLOCK):
            assert size == f"{e.rdev[0]},{e.rdev[1]}", e.path
        elif e.kind in (Kind.FILE, Kind.HARDLINK, Kind.SYMLINK):
            assert int(size) == real.size, e.path
        assert target == (e.target if e.kind is Kind.SYMLINK else None), e.path
    # hard links: unsquashfs's own pseudo-file listing names them as links of one inode
    sh("unsquashfs", "-pf", str(tmp_path / "out.pf"), image)
    links = dict(re.findall(r"^(\S+) L (\S+)$", (tmp_path / "out.pf").read_text(), re.M))
    assert {k: v for k, v in links.items()} == {p: "bin/busybox" for p in groups["bin/busybox"]}
    stats = sh("unsquashfs", "-s", image)
    assert "Compression zstd" in stats and "Block size 65536" in stats
    assert f"Number of inodes {len(sample_tree) - sum(map(len, groups.values()))}\n" in stats
    assert sh("unsquashfs", "-mkfs-time", image).strip() == "1700000000"
    assert sh("unsquashfs", "-cat", image, "bin/sh").encode() == b"\x7fELF" + b"x" * 5000
    assert info.size % 4096 == 0


def test_rebuild_is_bit_identical(tmp_path, sample_tree):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_squashfs(sample_tree, a, mtime=1700000000)
    write_squashfs(sample_tree.map(lambda e: e), b, mtime=1700000000)
    assert open(a, "rb").read() == open(b, "rb").read()


def test_reader_gives_back_what_unsquashfs_lists(tmp_path, sample_tree):
    image = str(tmp_path / "t.sqfs")
    tree = sample_tree.map(lambda e: e.replace(mtime=1234567) if e.kind is Kind.FILE else e)
    write_squashfs(tree, image, mtime=1700000000)
    back = open_tree(image)
    for e in tree:
        got = back[e.path]
        assert (got.kind, got.mode, got.uid, got.gid, got.rdev, got.target) == \
               (e.kind, e.mode if e.kind is not Kind.HARDLINK else tree[e.target].mode,
                e.uid if e.kind is not Kind.HARDLINK else tree[e.target].uid,
                e.gid if e.kind is not Kind.HARDLINK else tree[e.target].gid, e.rdev, e.target), e.path
        if e.kind is Kind.FILE:
            assert got.mtime == 1234567
            assert got.data.open().read() == e.data.open().read()
    assert detect.reader(detect.sniff_path(image).filesystem).name == "squashfs"


@pytest.mark.parametrize("squashfs_tools", ["host"], indirect=True)
def test_names_with_spaces_and_xattrs_warned(tmp_path, sample_tree):
    sample_tree.add(Entry("a dir/a \"file\"", Kind.FILE, mode=0o640, uid=3, gid=4,
                          data=BytesBlob(b"q"), xattrs=(("user.k", b"v"),)))
    image = str(tmp_path / "t.sqfs")
    info = write_squashfs(sample_tree, image)
    assert lln(image)['a dir/a "file"'][1:4] == ("-rw-r-----", 3, 4)
    assert any("a dir/a \"file\"" in w and "user.k" in w for w in info.warnings)
    assert open_tree(image)['a dir/a "file"'].data.open().read() == b"q"


def pf_listing(tools: sqt.SquashfsTools, image: str, tmp_path) -> str:
    """``unsquashfs -pf`` of squashfs-tools 4.6: the inodes and their ``x`` (xattr) lines."""
    sh(tools.unsquashfs, "-pf", str(tmp_path / "listing.pf"), image)
    return (tmp_path / "listing.pf").read_bytes().split(b"# START OF DATA")[0].decode(
        "utf-8", "surrogateescape")


@pytest.mark.parametrize("squashfs_tools", ["4.6"], indirect=True)
def test_xattrs_stored_by_squashfs_tools_4_6(tmp_path, sample_tree, squashfs_tools):
    cap = b"\x01\x00\x00\x02" + bytes(16)
    acl = bytes.fromhex("0200000001000600ffffffff04000400ffffffff20000400ffffffff")
    sample_tree.add(Entry("a dir/a \"file\"", Kind.FILE, mode=0o4750, uid=3, gid=4,
                          data=BytesBlob(b"q" * 70000),
                          xattrs=(("security.capability", cap), ("user.k", b"v a\\l"),
                                  ("trusted.t", b"\x00\xff"), ("system.posix_acl_access", acl))))
    sample_tree.add(Entry("run/sock", Kind.SOCKET, mode=0o600, uid=7, gid=8, mtime=1600000000,
                          xattrs=(("trusted.s", b"sock"),)))
    sample_tree.with_root(xattrs=(("security.selinux", b"system_u:object_r:root_t:s0\x00"),))
    image = str(tmp_path / "t.sqfs")
    info = write_squashfs(sample_tree, image, mtime=1700000000)
    assert info.populated_from == "tar" and info.tools.startswith("squashfs-tools 4.")
    listing = pf_listing(squashfs_tools, image, tmp_path)
    assert 'a\\ dir/a\\ \\"file\\" R 1700000000 4750 3 4 70000' in listing or \
        "4750 3 4 70000" in listing, listing
    xattrs = re.findall(r"^(.*) x (.*?)=(.*)$", listing, re.M)
    names = {(path, key) for path, key, _ in xattrs}
    assert {('a\\ dir/a\\ \\"file\\"', "security.capability"), ('a\\ dir/a\\ \\"file\\"', "user.k"),
            ('a\\ dir/a\\ \\"file\\"', "trusted.t"), ("run/sock", "trusted.s"),
            ("/", "security.selinux")} <= names, listing
    assert not any(key.startswith("system.") for _, key in names)
    assert re.search(r"^run/sock I 1600000000 600 7 8 s$", listing, re.M), listing
    assert [w for w in info.warnings if "posix_acl_access" in w and "a dir" in w]
    # read back through the reader, values exact
    back = open_tree(image)
    assert dict(back['a dir/a "file"'].xattrs) == {"security.capability": cap,
                                                  "user.k": b"v a\\l", "trusted.t": b"\x00\xff"}
    assert dict(back.root.xattrs) == {"security.selinux": b"system_u:object_r:root_t:s0\x00"}
    assert back["run/sock"].kind is Kind.SOCKET
    stat_text = sh(squashfs_tools.unsquashfs, "-stat", image)
    assert "Xattrs are compressed" in stat_text and "Creation or last append time" in stat_text
    # bit-identical again
    again = str(tmp_path / "again.sqfs")
    write_squashfs(sample_tree.map(lambda e: e), again, mtime=1700000000)
    assert open(image, "rb").read() == open(again, "rb").read()


def test_tools_choice_can_be_forced(monkeypatch):
    monkeypatch.setenv("IMGKIT_SQUASHFS_TOOLS", "host")
    host = sqt.squashfs_tools()
    assert host.version == sqt._version(__import__("shutil").which("mksquashfs"))
    monkeypatch.setenv("IMGKIT_SQUASHFS_TOOLS", "/nonexistent")
    with pytest.raises(__import__("imgkit.errors").errors.ToolError, match="no mksquashfs"):
        sqt.squashfs_tools()


CONFIG = """
[trees.data]
entries = ["dir /etc 0755 0 0", "dir /home/u 0700 1000 1000", "nod /dev/console 0600 0 5 c 5 1"]
files = { "/etc/hello" = "hello.txt" }

[filesystems.root]
type = "squashfs"
tree = "data"
compression = "xz"
block_size = "256K"

[disk]
output = "t.img"
partitions = [
  { name = "root", type = "root-x86-64", size = "auto", filesystem = "root" },
]
"""


def test_disk_with_a_squashfs_partition(tmp_path):
    (tmp_path / "hello.txt").write_text("hello from squashfs\n")
    (tmp_path / "t.toml").write_text(CONFIG)
    build(load_config(str(tmp_path / "t.toml")), str(tmp_path / "out"), mtime=1700000000)
    image = str(tmp_path / "out" / "t.img")
    parts = sfdisk_partitions(image)
    assert len(parts) == 1
    part = tmp_path / "root.sqfs"
    copy_partition(image, parts[0], part)
    listing = lln(str(part))
    assert listing["etc/hello"][1:5] == ("-rw-r--r--", 0, 0, "20")
    assert listing["home/u"][1:4] == ("drwx------", 1000, 1000)
    assert listing["dev/console"][1:5] == ("crw-------", 0, 5, "5,1")
    assert "Compression xz" in sh("unsquashfs", "-s", str(part))
    assert sh("unsquashfs", "-cat", str(part), "etc/hello") == "hello from squashfs\n"
    # the same partition read in place through the filesystem table
    from imgkit import browse
    assert browse.open_tree(f"{image}:1")["etc/hello"].data.open().read() == b"hello from squashfs\n"


@pytest.mark.parametrize("squashfs_tools", ["4.6"], indirect=True)
def test_source_directory_given_to_mksquashfs_as_is(tmp_path, monkeypatch, squashfs_tools):
    """A tree that is exactly its source directory is handed to ``mksquashfs DIR``: what
    unsquashfs lists (owners, modes, times, xattrs, devices, hard links) is what the tar
    stream gives, and so are the file contents."""
    from imgkit.formats import squashfs
    from imgkit.sources import read_directory

    epoch = 1_700_000_000
    src = tmp_path / "src"
    host_source_dir(src, epoch)
    tree = read_directory(str(src))
    direct = str(tmp_path / "direct.sqfs")
    info = write_squashfs(tree, direct, mtime=epoch)
    assert info.populated_from == "directory"
    monkeypatch.setattr(squashfs, "_direct_options", lambda tree: None)
    streamed = str(tmp_path / "tar.sqfs")
    assert write_squashfs(tree, streamed, mtime=epoch).populated_from == "tar"
    assert lln(direct) == lln(streamed)
    assert pf_listing(squashfs_tools, direct, tmp_path) == pf_listing(squashfs_tools, streamed,
                                                                      tmp_path)
    for image in (direct, streamed):
        assert subprocess.run(["unsquashfs", "-cat", image, "usr/bin/tool2"], check=True,
                              capture_output=True).stdout == bytes(range(256)) * 40
    # owners are the tree's (the builder's own files are root's), not the host's
    assert {v[2:4] for v in lln(direct).values()} == {(0, 0)}


@pytest.mark.parametrize("squashfs_tools", ["4.6"], indirect=True)
def test_source_directory_with_changed_metadata(tmp_path, squashfs_tools):
    """A file whose mode or time differs from the host is corrected with a pseudo ``M``
    definition; a directory that would need one, an extra entry or a missing one send the
    tree through the tar stream instead."""
    from imgkit.sources import read_directory

    epoch = 1_700_000_000
    src = tmp_path / "src"
    host_source_dir(src, epoch)
    tree = read_directory(str(src))
    tree.add(tree["etc/secret"].replace(mode=0o640, mtime=epoch - 5))
    image = str(tmp_path / "m.sqfs")
    assert write_squashfs(tree, image, mtime=epoch).populated_from == "directory"
    listing = lln(image)
    assert listing["etc/secret"][1] == "-rw-r-----"
    assert f"etc/secret R {epoch - 5} 640 0 0" in pf_listing(squashfs_tools, image, tmp_path)

    tree = read_directory(str(src))
    tree.add(tree["etc"].replace(mode=0o700))
    assert write_squashfs(tree, image, mtime=epoch).populated_from == "tar"
    assert lln(image)["etc"][1] == "drwx------"

    tree = read_directory(str(src))
    tree.remove("etc/secret")
    assert write_squashfs(tree, image, mtime=epoch).populated_from == "tar"
    assert "etc/secret" not in lln(image)
