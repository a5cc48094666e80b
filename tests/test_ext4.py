"""ext4 images checked with e2fsprogs' own e2fsck and debugfs (read-only).

The tests taking the ``e2fs`` fixture run twice: with the installed e2fsprogs, and with the
one in Debian's bookworm-backports (1.47.1 or newer), whose ``mke2fs -d -`` reads a tar
archive. That one is downloaded once into ``$IMGKIT_CACHE/e2fsprogs-bpo`` with a private apt
setup (nothing is installed) and checked with its own e2fsck and debugfs.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
from conftest import host_source_dir

from imgkit import tools
from imgkit.debfetch import fetch_release_packages
from imgkit.errors import InputError, LayoutError, ToolError
from imgkit.formats.ext4 import estimate_size, write_ext4
from imgkit.formats.ext4 import write as ext4
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree

pytestmark = pytest.mark.skipif(not (tools.have("mke2fs") and tools.have("debugfs")),
                                reason="e2fsprogs not installed")

EPOCH = 1_700_000_000


def e2(name: str, *args: str, check: bool = True):
    """Run e2fsprogs tool ``name`` of the e2fsprogs the image was written with."""
    prog, env = ext4.e2fsprogs_command(name)
    return tools.run([prog, *args], env=env, check=check)


def debugfs(img, request: str) -> str:
    return e2("debugfs", "-R", request, str(img)).stdout.decode(errors="replace")


def fsck(img) -> None:
    proc = e2("e2fsck", "-fn", str(img), check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


# -- the e2fsprogs under test -------------------------------------------------------------

BPO_RELEASE = "bookworm-backports"
BPO_PACKAGES = ("e2fsprogs", "libext2fs2")


def _check_bpo(root: str) -> None:
    version = _e2fsprogs_in(root)
    if version < (1, 47, 1):
        raise ToolError(f"{BPO_RELEASE} has e2fsprogs {version}, expected 1.47.1 or newer")


def _e2fsprogs_in(root: str) -> tuple[int, ...]:
    saved = ext4.E2FSPROGS_DIR
    try:
        ext4.E2FSPROGS_DIR = root
        return ext4.e2fsprogs_version()
    finally:
        ext4.E2FSPROGS_DIR = saved


@pytest.fixture(scope="session")
def bpo_e2fsprogs() -> str:
    """The unpacked backports e2fsprogs, fetched once (:mod:`imgkit.debfetch`: a private apt
    setup, nothing installed) and shared by every user of the cache.

    A download that fails (no network) fails the test: the archive path must not go
    untested silently.
    """
    try:
        return fetch_release_packages("e2fsprogs-bpo", BPO_RELEASE, BPO_PACKAGES,
                                      check=_check_bpo)
    except ToolError as exc:
        pytest.fail(f"could not get e2fsprogs from Debian {BPO_RELEASE} (network needed "
                    f"once): {exc}", pytrace=False)


@pytest.fixture(params=["installed", "backports"])
def e2fs(request, monkeypatch) -> str:
    """Which e2fsprogs writes and checks the image: the installed one, or the backports one
    (through ``ext4.E2FSPROGS_DIR``, as ``IMGKIT_E2FSPROGS`` would set it)."""
    if request.param == "backports":
        monkeypatch.setattr(ext4, "E2FSPROGS_DIR", request.getfixturevalue("bpo_e2fsprogs"))
    else:
        monkeypatch.setattr(ext4, "E2FSPROGS_DIR", "host")
    return request.param


def expected_path() -> str:
    """How write_ext4 fills the image with this e2fsprogs, for a tree needing staging."""
    return "tar" if ext4.e2fsprogs_version() >= (1, 47, 1) else "staging"


def stat_of(img, path: str) -> dict:
    out = debugfs(img, f'stat "{path}"')
    info: dict = {"raw": out}
    m = re.search(r"Inode: (\d+)\s+Type: ([\w ]+?)\s+Mode:\s+(\d+)", out)
    assert m, f"debugfs stat {path}: {out}"
    info["ino"], info["type"], info["perm"] = int(m[1]), m[2], int(m[3], 8)
    m = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    info["uid"], info["gid"] = int(m[1]), int(m[2])
    info["links"] = int(re.search(r"Links: (\d+)", out)[1])
    for field in ("mtime", "atime", "ctime", "crtime"):
        m = re.search(rf"^\s*{field}: 0x([0-9a-f]+):([0-9a-f]+)", out, re.M)
        info[field] = int(m[1], 16) + ((int(m[2], 16) & 3) << 32)
    m = re.search(r"Device major/minor number: (\d+):(\d+)", out)
    if m:
        info["rdev"] = (int(m[1]), int(m[2]))
    return info


def host_tree(src, *, umask: int, host_mtime: int) -> Tree:
    """A tree whose regular files are real host files under ``src``.

    The host files get ``umask``-dependent permissions and ``host_mtime`` (newer than EPOCH,
    so clamped), which must not show in the image: only the tree's metadata may.
    """
    old = os.umask(umask)
    try:
        os.makedirs(src / "etc", exist_ok=True)
        os.makedirs(src / "usr" / "bin", exist_ok=True)
        files = {
            "etc/hostname": b"imgkit\n",
            "etc/with space.conf": b"a = b\n",
            "usr/bin/tool": bytes(range(256)) * 300,
            "usr/bin/su": b"\x7fELF" + b"\0" * 5000,
        }
        for i in range(40):
            files[f"usr/share/doc/f{i:03d}.txt"] = f"file {i}\n".encode() * (i + 1)
        for rel, data in files.items():
            p = src / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.utime(p, (host_mtime + 7, host_mtime))
    finally:
        os.umask(old)
    t = Tree(default_mtime=EPOCH - 100)
    for rel in sorted(files):
        p = src / rel
        mode = 0o4755 if rel == "usr/bin/su" else 0o755 if rel.startswith("usr/bin") else 0o644
        t.add(Entry(rel, Kind.FILE, mode=mode, mtime=int(p.stat().st_mtime),
                    data=FileBlob(str(p), p.stat().st_size)))
    t.add(Entry("home/user", Kind.DIR, mode=0o700, uid=1000, gid=1000, mtime=EPOCH - 5))
    t.add(Entry("home/user/notes", Kind.FILE, mode=0o600, uid=1000, gid=1000,
                mtime=EPOCH - 50, data=BytesBlob(b"private\n")))
    t.add(Entry("usr/bin/su-link", Kind.HARDLINK, target="usr/bin/su"))
    t.add(Entry("dev/console", Kind.CHAR, mode=0o600, rdev=(5, 1), mtime=EPOCH - 1))
    t.add(Entry("dev/sda1", Kind.BLOCK, mode=0o660, gid=6, rdev=(8, 1), mtime=EPOCH - 1))
    t.add(Entry("dev/weird", Kind.CHAR, mode=0o600, rdev=(300, 70000), mtime=EPOCH - 1))
    t.add(Entry("run/initctl", Kind.FIFO, mode=0o600, mtime=EPOCH - 2))
    t.add(Entry("run/sock", Kind.SOCKET, mode=0o777, mtime=EPOCH - 2))
    t.add(Entry("bin", Kind.SYMLINK, mode=0o777, target="usr/bin", mtime=EPOCH - 3))
    t.add(Entry("etc/xattr", Kind.FILE, data=BytesBlob(b"x"),
                xattrs=(("user.foo", b"bar"), ("user.bin", b"\0\n\"\xff"))))
    t.add(Entry('etc/odd "quoted" name', Kind.FILE, data=BytesBlob(b"odd")))
    return t


@pytest.fixture
def tree(tmp_path):
    return host_tree(tmp_path / "src", umask=0o022, host_mtime=EPOCH + 1000)


def test_metadata_seen_by_debugfs(tmp_path, tree, e2fs):
    img = tmp_path / "root.img"
    info = write_ext4(tree, img, size=16 << 20, label="root", seed="test",
                      mtime_epoch=EPOCH)
    assert img.stat().st_size == 16 << 20 == info.size
    assert info.populated_from == expected_path()
    if e2fs == "backports":
        assert info.populated_from == "tar"
    fsck(img)

    st = stat_of(img, "/etc/hostname")
    assert (st["type"], st["perm"], st["uid"], st["gid"]) == ("regular", 0o644, 0, 0)
    assert st["mtime"] == st["atime"] == st["ctime"] == st["crtime"] == EPOCH  # clamped
    assert debugfs(img, "cat /etc/hostname") == "imgkit\n"
    assert debugfs(img, 'cat "/etc/with space.conf"') == "a = b\n"

    su = stat_of(img, "/usr/bin/su")
    assert (su["perm"], su["links"]) == (0o4755, 2)
    assert stat_of(img, "/usr/bin/su-link")["ino"] == su["ino"]

    home = stat_of(img, "/home/user")
    assert (home["type"], home["perm"], home["uid"], home["gid"]) == ("directory", 0o700,
                                                                       1000, 1000)
    assert home["mtime"] == EPOCH - 5
    notes = stat_of(img, "/home/user/notes")
    assert (notes["perm"], notes["uid"], notes["gid"], notes["mtime"]) == (0o600, 1000, 1000,
                                                                           EPOCH - 50)

    con = stat_of(img, "/dev/console")
    assert (con["type"], con["perm"], con["rdev"], con["mtime"]) == (
        "character special", 0o600, (5, 1), EPOCH - 1)
    sda = stat_of(img, "/dev/sda1")
    assert (sda["type"], sda["perm"], sda["gid"], sda["rdev"]) == ("block special", 0o660,
                                                                    6, (8, 1))
    assert stat_of(img, "/dev/weird")["rdev"] == (300, 70000)
    fifo = stat_of(img, "/run/initctl")
    assert (fifo["type"], fifo["perm"]) == ("FIFO", 0o600)
    assert stat_of(img, "/run/sock")["type"] == "socket"

    link = stat_of(img, "/bin")
    assert link["type"] == "symlink"
    assert 'Fast link dest: "usr/bin"' in link["raw"]

    xa = debugfs(img, "ea_list /etc/xattr")
    assert "user.foo (3) = \"bar\"" in xa
    assert "user.bin (4) = 00 0a 22 ff" in xa
    assert debugfs(img, 'cat "/etc/odd ""quoted"" name"') == "odd"

    root = stat_of(img, "/")
    assert (root["uid"], root["gid"], root["perm"], root["mtime"]) == (0, 0, 0o755, EPOCH - 100)
    lf = stat_of(img, "/lost+found")
    assert (lf["uid"], lf["perm"], lf["mtime"]) == (0, 0o700, EPOCH)

    sb = e2("dumpe2fs", "-h", str(img)).stdout.decode()
    assert re.search(r"Filesystem volume name:\s+root", sb)
    assert re.search(rf"Filesystem UUID:\s+{info.uuid}", sb)
    assert "has_journal" in sb and "metadata_csum" in sb
    with open(img, "rb") as f:
        f.seek(1024 + 0x2C)
        mount_time, write_time = (int.from_bytes(f.read(4), "little") for _ in range(2))
    assert write_time == EPOCH and mount_time == 0   # no host clock in the superblock


def test_bit_identical_from_different_copies(tmp_path, e2fs):
    t1 = host_tree(tmp_path / "a" / "src", umask=0o022, host_mtime=EPOCH + 10)
    t2 = host_tree(tmp_path / "b" / "deeper" / "src", umask=0o077, host_mtime=EPOCH + 99999)
    os.utime(tmp_path / "b", (EPOCH + 5, EPOCH + 5))
    i1 = write_ext4(t1, tmp_path / "a.img", seed="same", mtime_epoch=EPOCH)
    # A different staging place, and files touched in between: nothing host-side may leak.
    (tmp_path / "stage").mkdir()
    i2 = write_ext4(t2, tmp_path / "b.img", seed="same", mtime_epoch=EPOCH,
                    staging_dir=tmp_path / "stage")
    assert i1 == i2
    assert i1.populated_from == expected_path()
    fsck(tmp_path / "a.img")
    a = (tmp_path / "a.img").read_bytes()
    assert a == (tmp_path / "b.img").read_bytes()
    # another seed gives another filesystem UUID
    i3 = write_ext4(t1, tmp_path / "c.img", seed="other", mtime_epoch=EPOCH)
    assert i3.uuid != i1.uuid
    assert not os.listdir(tmp_path / "stage")   # staging removed


def test_auto_size_fits_a_few_mb(tmp_path, e2fs):
    t = Tree(default_mtime=EPOCH)
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(3 << 20))
    t.add(Entry("big.bin", Kind.FILE, data=FileBlob(str(src), 3 << 20)))
    for d in range(5):
        for i in range(200):
            t.add(Entry(f"d{d}/file-with-a-longish-name-{i:04d}", Kind.FILE,
                        data=BytesBlob(b"y" * (i * 37))))
    img = tmp_path / "auto.img"
    info = write_ext4(t, img, seed="auto")
    size = img.stat().st_size
    assert size == info.size and size % (1 << 20) == 0
    assert size < 4 * (t.data_size() + 1000 * 4096), size   # no wild over-allocation
    assert info.inodes >= 1000 + 6
    fsck(img)
    assert debugfs(img, "cat /d4/file-with-a-longish-name-0003") == "y" * 111
    data = e2("debugfs", "-R", "cat /big.bin", str(img)).stdout
    assert data == src.read_bytes()
    assert estimate_size(t) <= size * 2


def test_too_small_raises_layout_error(tmp_path, e2fs):
    t = Tree()
    t.add(Entry("a", Kind.FILE, data=BytesBlob(os.urandom(6 << 20))))
    out = tmp_path / "small.img"
    with pytest.raises(LayoutError, match=r"needs about \d+ bytes") as exc:
        write_ext4(t, out, size=4 << 20, seed="x")
    assert exc.value.hint and "MiB" in exc.value.hint
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []   # no temporaries left behind


def test_bad_inputs(tmp_path):
    t = Tree()
    with pytest.raises(InputError):
        write_ext4(t, tmp_path / "x.img", size=1000)
    with pytest.raises(InputError):
        write_ext4(t, tmp_path / "x.img", label="a-label-that-is-too-long")
    t.add(Entry("bad\nname", Kind.FILE, data=BytesBlob(b"")))
    with pytest.raises(InputError):
        write_ext4(t, tmp_path / "x.img")


def test_source_directory_used_as_is_and_same_as_staged(tmp_path, monkeypatch, e2fs):
    """The source directory itself, with either e2fsprogs; the same bytes as a staging copy
    (1.47.0) or the archive stream (1.47.1 and newer) give."""
    from imgkit.formats.ext4 import write as ext4
    from imgkit.sources import read_directory

    src = tmp_path / "src"
    host_source_dir(src, EPOCH)
    before = sorted((str(p), p.lstat().st_mtime_ns) for p in src.rglob("*"))
    tree = read_directory(str(src))
    assert ext4._direct_source(tree, ext4.e2fsprogs_version()) is not None
    info = write_ext4(tree, tmp_path / "direct.img", seed="s", mtime_epoch=EPOCH - 10)
    assert info.populated_from == "directory"
    assert sorted((str(p), p.lstat().st_mtime_ns) for p in src.rglob("*")) == before
    fsck(tmp_path / "direct.img")
    monkeypatch.setattr(ext4, "_direct_source", lambda tree, version: None)
    info = write_ext4(tree, tmp_path / "staged.img", seed="s", mtime_epoch=EPOCH - 10)
    assert info.populated_from == expected_path()
    assert (tmp_path / "direct.img").read_bytes() == (tmp_path / "staged.img").read_bytes()

    img = tmp_path / "direct.img"
    tool = stat_of(img, "/usr/bin/tool")
    # the builder's own setuid file keeps its bit only when it really was root's
    # (the default owner policy drops it otherwise, with a warning)
    setuid = 0o4000 if os.geteuid() == 0 else 0
    assert (tool["perm"], tool["links"], tool["uid"]) == (0o755 | setuid, 2, 0)
    if not setuid:
        assert any("usr/bin/tool" in w for w in tree.warnings), tree.warnings
    assert stat_of(img, "/usr/bin/tool2")["ino"] == tool["ino"]
    for f in ("mtime", "atime", "ctime", "crtime"):
        assert tool[f] == EPOCH - 10
        assert f"{f}: 0x{EPOCH - 10:08x}:00000000" in tool["raw"]   # no nanoseconds
    assert stat_of(img, "/etc/secret")["perm"] == 0o600
    assert stat_of(img, "/etc/fifo")["type"] == "FIFO"
    assert 'Fast link dest: "usr/bin"' in stat_of(img, "/bin")["raw"]
    if tree["etc/tagged"].xattrs:
        assert 'user.tag (1) = "v"' in debugfs(img, "ea_list /etc/tagged")
    if os.getuid() == 0:
        assert stat_of(img, "/dev/null")["rdev"] == (1, 3)
        assert stat_of(img, "/dev/sda")["type"] == "block special"


def test_source_directory_not_matching_is_staged(tmp_path):
    from imgkit.formats.ext4 import write as ext4
    from imgkit.sources import read_directory

    src = tmp_path / "src"
    host_source_dir(src, EPOCH)
    version = ext4.e2fsprogs_version()
    tree = read_directory(str(src))
    tree.remove("etc/secret")   # on the host, not in the tree
    assert ext4._direct_source(tree, version) is None
    write_ext4(tree, tmp_path / "a.img", seed="s")
    assert "secret" not in debugfs(tmp_path / "a.img", "ls /etc")
    fsck(tmp_path / "a.img")

    tree = read_directory(str(src))
    tree.add(Entry("etc/generated", Kind.FILE, data=BytesBlob(b"g")))
    assert ext4._direct_source(tree, version) is None

    # The image written into the source directory itself: its temporaries must not get in.
    tree = read_directory(str(src))
    info = write_ext4(tree, src / "self.img", seed="s")
    assert info.size == (src / "self.img").stat().st_size
    listing = debugfs(src / "self.img", "ls /")
    assert "self.img" not in listing and ".imgkit" not in listing


def test_device_placeholders_give_the_same_image(tmp_path, monkeypatch):
    from imgkit.formats.ext4 import write as ext4

    t = Tree(default_mtime=EPOCH)
    t.add(Entry("dev/a", Kind.FILE, data=BytesBlob(b"a")))
    for i in range(300):   # a directory of several blocks: the entries are linked anew
        t.add(Entry(f"dev/tty{i}", Kind.CHAR, mode=0o620, gid=5, rdev=(4, i)))
    t.add(Entry("dev/sda", Kind.BLOCK, mode=0o660, gid=6, rdev=(8, 0)))
    t.add(Entry("dev/big", Kind.CHAR, rdev=(300, 70000)))
    t.add(Entry("dev/z", Kind.FILE, data=BytesBlob(b"z")))
    write_ext4(t, tmp_path / "a.img", seed="d")   # real nodes if root, else placeholders
    monkeypatch.setattr(ext4, "_stage_device",
                        lambda e, dest: os.mknod(dest, 0o10600))   # FIFOs for all
    write_ext4(t, tmp_path / "b.img", seed="d")
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    fsck(tmp_path / "b.img")
    st = stat_of(tmp_path / "b.img", "/dev/tty299")
    assert (st["type"], st["perm"], st["gid"], st["rdev"]) == ("character special", 0o620, 5,
                                                               (4, 299))
    assert stat_of(tmp_path / "b.img", "/dev/sda")["type"] == "block special"
    assert stat_of(tmp_path / "b.img", "/dev/big")["rdev"] == (300, 70000)


@pytest.mark.skipif(os.getuid() == 0, reason="privilege: root reads every file (runs in the uid 65534 pass)")
def test_unreadable_source_file_is_named(tmp_path, e2fs):
    from imgkit.sources import read_directory

    src = tmp_path / "src"
    host_source_dir(src, EPOCH)
    tree = read_directory(str(src))
    os.chmod(src / "etc" / "secret", 0)
    with pytest.raises(InputError, match="secret"):
        write_ext4(tree, tmp_path / "x.img", seed="s")
    assert not (tmp_path / "x.img").exists()


def test_backports_e2fsprogs_reads_a_tar(tmp_path, bpo_e2fsprogs, monkeypatch):
    """What only the archive path has to get right: names in UTF-8, sockets (which tar cannot
    hold), xattrs too big for the inode, long symlinks, times past 2038 and before 1970, and
    no host directory read or staged."""
    monkeypatch.setattr(ext4, "E2FSPROGS_DIR", bpo_e2fsprogs)
    assert ext4.e2fsprogs_version() >= (1, 47, 1)
    t = Tree(default_mtime=EPOCH)
    t.with_root(mode=0o750, uid=7, gid=8, mtime=EPOCH - 9)
    t.add(Entry("caf\u00e9/na\u00efve \u00fc", Kind.FILE, mode=0o640, uid=5,
                data=BytesBlob(b"utf8\n"), mtime=EPOCH - 7))
    t.add(Entry("run/s", Kind.SOCKET, mode=0o755, uid=3, gid=4, mtime=EPOCH - 6))
    t.add(Entry("run/zz", Kind.FILE, data=BytesBlob(b"after the socket")))
    t.add(Entry("big-xattrs", Kind.FILE, data=BytesBlob(b"x"),
                xattrs=(("user.z", b"1" * 300), ("user.a", b"2" * 300),
                        ("security.capability", b"\x01\x00\x00\x02" + b"\0" * 16))))
    t.add(Entry("long-link", Kind.SYMLINK, target="t/" * 100))
    t.add(Entry("future", Kind.FILE, data=BytesBlob(b""), mtime=(1 << 32) + 5))
    t.add(Entry("past", Kind.FILE, data=BytesBlob(b""), mtime=-100))
    t.add(Entry("lost+found", Kind.DIR, mode=0o755, uid=2, mtime=EPOCH - 3))
    (tmp_path / "stage").mkdir()
    img = tmp_path / "t.img"
    info = write_ext4(t, img, seed="t", staging_dir=tmp_path / "stage")
    assert info.populated_from == "tar"
    assert os.listdir(tmp_path / "stage") == []
    fsck(img)

    root = stat_of(img, "/")
    assert (root["perm"], root["uid"], root["gid"], root["mtime"]) == (0o750, 7, 8, EPOCH - 9)
    f = stat_of(img, "/caf\u00e9/na\u00efve \u00fc")
    assert (f["perm"], f["uid"], f["mtime"], f["ctime"], f["atime"], f["crtime"]) == (
        0o640, 5, EPOCH - 7, EPOCH - 7, EPOCH - 7, EPOCH - 7)
    s = stat_of(img, "/run/s")
    assert (s["type"], s["perm"], s["uid"], s["gid"], s["mtime"]) == ("socket", 0o755, 3, 4,
                                                                      EPOCH - 6)
    assert debugfs(img, "cat /run/zz") == "after the socket"
    xa = debugfs(img, "ea_list /big-xattrs")
    assert "user.z (300)" in xa and "user.a (300)" in xa   # in a block of their own
    assert "1" * 300 in debugfs(img, "ea_get /big-xattrs user.z")
    assert "security.capability (20)" in xa
    assert "Fast link dest" not in stat_of(img, "/long-link")["raw"]
    assert debugfs(img, "cat /long-link") == "t/" * 100
    assert stat_of(img, "/future")["mtime"] == (1 << 32) + 5
    assert stat_of(img, "/past")["mtime"] & 0xFFFFFFFF == (-100) & 0xFFFFFFFF
    lf = stat_of(img, "/lost+found")
    assert (lf["perm"], lf["uid"], lf["mtime"], lf["crtime"]) == (0o755, 2, EPOCH - 3,
                                                                    EPOCH - 3)
    # the same tree again: the same bytes
    write_ext4(t, tmp_path / "u.img", seed="t")
    assert img.read_bytes() == (tmp_path / "u.img").read_bytes()


def test_device_directories_through_a_tar(tmp_path, bpo_e2fsprogs, monkeypatch):
    """A directory of many device nodes (several blocks) keeps its times and numbers."""
    monkeypatch.setattr(ext4, "E2FSPROGS_DIR", bpo_e2fsprogs)
    t = Tree(default_mtime=EPOCH)
    t.add(Entry("dev", Kind.DIR, mtime=EPOCH - 20))
    for i in range(300):
        t.add(Entry(f"dev/tty{i}", Kind.CHAR, mode=0o620, gid=5, rdev=(4, i)))
    t.add(Entry("dev/big", Kind.CHAR, rdev=(300, 70000)))
    info = write_ext4(t, tmp_path / "d.img", seed="d")
    assert info.populated_from == "tar"
    fsck(tmp_path / "d.img")
    st = stat_of(tmp_path / "d.img", "/dev/tty299")
    assert (st["type"], st["perm"], st["gid"], st["rdev"]) == ("character special", 0o620, 5,
                                                               (4, 299))
    assert stat_of(tmp_path / "d.img", "/dev/big")["rdev"] == (300, 70000)
    assert stat_of(tmp_path / "d.img", "/dev")["mtime"] == EPOCH - 20


def test_backports_takes_the_directory_path_for_what_tar_cannot_carry(tmp_path, bpo_e2fsprogs,
                                                                       monkeypatch):
    """A name that is not UTF-8 cannot go through the archive: the tree is staged instead."""
    monkeypatch.setattr(ext4, "E2FSPROGS_DIR", bpo_e2fsprogs)
    t = Tree(default_mtime=EPOCH)
    name = os.fsdecode(b"latin1-\xe9")
    t.add(Entry(name, Kind.FILE, mode=0o600, uid=9, data=BytesBlob(b"l1"), mtime=EPOCH - 1))
    info = write_ext4(t, tmp_path / "l.img", seed="l")
    assert info.populated_from == "staging"
    fsck(tmp_path / "l.img")
    st = stat_of(tmp_path / "l.img", "/" + name)
    assert (st["perm"], st["uid"], st["mtime"], st["crtime"]) == (0o600, 9, EPOCH - 1, EPOCH - 1)


def test_ext4_at_an_offset_equals_the_standalone_image(tmp_path):
    """Built straight into a partition of a bigger file: same bytes, nothing outside touched."""
    from imgkit.tree import BytesBlob, Entry, Kind, Tree
    tree = Tree()
    tree.add(Entry("etc/hostname", Kind.FILE, data=BytesBlob(b"imgkit\n")))
    tree.add(Entry("dev/console", Kind.CHAR, mode=0o600, rdev=(5, 1)))
    alone, disk = tmp_path / "alone.img", tmp_path / "disk.img"
    write_ext4(tree, alone, size=8 << 20, seed="offset", mtime_epoch=1700000000)
    with open(disk, "wb") as f:
        f.write(b"\xaa" * 4096)
        f.truncate(20 << 20)
    write_ext4(tree, disk, size=8 << 20, seed="offset", mtime_epoch=1700000000, offset=3 << 20)
    data = disk.read_bytes()
    assert data[3 << 20:11 << 20] == alone.read_bytes()
    assert data[:4096] == b"\xaa" * 4096 and not any(data[4096:3 << 20]) and not any(data[11 << 20:])
    subprocess.run(["e2fsck", "-fn", f"{disk}?offset={3 << 20}"], check=True, capture_output=True)


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_ext4_from_an_uncompressed_tar_reads_it_in_place(tmp_path, fmt, e2fs, monkeypatch):
    """An uncompressed tar's members are windows of the archive (no spool, no copy in
    scratch), whatever headers precede their data (GNU long names, pax records, hard links);
    the image holds exactly what GNU tar extracts, as e2fsck and debugfs see it."""
    from imgkit.sources.archive import read_archive
    src = tmp_path / "src"
    deep = src / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    files = {"a": b"A" * 511, "b": b"", "c": os.urandom(70000), f"{'d' * 90}/{'e' * 90}/f": b"f\n"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    os.link(src / "c", src / "c-link")
    os.symlink("a", src / "to-a")
    archive = tmp_path / "root.tar"
    sh_bytes("tar", "--sort=name", f"--format={fmt}", "-cf", str(archive), "-C", str(src), ".")
    scratch_dir = tmp_path / "tmp"
    scratch_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_dir))
    tree = read_archive(str(archive))
    for rel, data in files.items():
        blob = tree[rel].data
        assert blob.host_range()[0] == str(archive), rel
        with blob.open() as f:
            assert f.read() == data == sh_bytes("tar", "-xOf", str(archive), "./" + rel), rel
    assert sum(p.stat().st_blocks for p in scratch_dir.rglob("*") if p.is_file()) == 0
    img = tmp_path / "t.img"
    write_ext4(tree, img, seed="t")
    fsck(img)
    for rel, data in files.items():
        assert e2("debugfs", "-R", f'cat "/{rel}"', str(img)).stdout == data, rel
    assert stat_of(img, "/c")["ino"] == stat_of(img, "/c-link")["ino"]
    assert stat_of(img, "/c")["links"] == 2
    assert 'Fast link dest: "a"' in stat_of(img, "/to-a")["raw"]


def sh_bytes(*argv: str) -> bytes:
    return subprocess.run(argv, capture_output=True, check=True).stdout


def test_a_tar_whose_data_is_not_where_expected_is_spooled(tmp_path, monkeypatch):
    """When a member's header block does not check out, the archive is read again into a
    spool: the blobs then hold the bytes GNU tar extracts, not a guess of where they were."""
    from imgkit.sources import archive as archive_source
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 3000)
    (src / "b").write_bytes(b"bb")
    tar = tmp_path / "r.tar"
    sh_bytes("tar", "--sort=name", "-cf", str(tar), "-C", str(src), ".")
    monkeypatch.setattr(archive_source, "_is_member_header", lambda block, size: False)
    tree = archive_source.read_archive(str(tar))
    for name in ("a", "b"):
        assert tree[name].data.host_range()[0] != str(tar)
        with tree[name].data.open() as f:
            assert f.read() == sh_bytes("tar", "-xOf", str(tar), "./" + name)


# -- keep_zeros: a swapfile keeps every block -------------------------------------------------

def _dd_swapfile(path, mib: int) -> None:
    """A swapfile as the swapon manual says to make one: dd from /dev/zero, then mkswap."""
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "status=none"],
                   check=True)
    os.chmod(path, 0o600)
    subprocess.run(["mkswap", str(path)], check=True, capture_output=True)


def _blocks_and_holes(img, path: str) -> tuple[int, int, list[tuple[int, int]]]:
    """debugfs' view of ``path``: i_size, 512-byte sectors counted, and the logical block
    ranges its extents map (``filefrag -v``)."""
    st = debugfs(img, f"stat {path}")
    size = int(re.search(r"Size: (\d+)", st)[1])
    sectors = int(re.search(r"Blockcount: (\d+)", st)[1])
    frag = debugfs(img, f"filefrag -v {path}")
    ranges = [(int(m[1]), int(m[2])) for m in
              re.finditer(r"^\s*\d+\s+(\d+)\s+\d+\s+(?:\d+\s+)?(\d+)\s*$", frag, re.M)]
    return size, sectors, ranges


def _mapped(ranges: list[tuple[int, int]]) -> set[int]:
    return {b for start, length in ranges for b in range(start, start + length)}


@pytest.mark.parametrize("keep", [["/swapfile"], ["/"]], ids=["one-file", "whole-tree"])
def test_keep_zeros_allocates_every_block_of_a_swapfile(tmp_path, e2fs, keep):
    import sys
    src = tmp_path / "src"
    src.mkdir()
    _dd_swapfile(src / "swapfile", 8)
    (src / "zeros").write_bytes(bytes(1 << 20))    # not listed: may become a hole
    (tmp_path / "swap.toml").write_text(f"""
[trees.root]
sources = ["src"]
keep_zeros = {keep!r}
[filesystems.root]
type = "ext4"
tree = "root"
output = "root.ext4"
""".replace("'", '"'))
    r = subprocess.run([sys.executable, "-m", "imgkit", "build", str(tmp_path / "swap.toml"),
                        "-O", str(tmp_path / "out"), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    img = tmp_path / "out" / "root.ext4"
    fsck(img)
    size, sectors, ranges = _blocks_and_holes(img, "/swapfile")
    blocks = size // 4096
    assert size == 8 << 20 and sectors * 512 >= size, (size, sectors)
    assert _mapped(ranges) == set(range(blocks)), f"holes in the swapfile: {ranges}"
    dumped = tmp_path / "swap.out"
    debugfs(img, f"dump /swapfile {dumped}")
    assert dumped.read_bytes() == (src / "swapfile").read_bytes()   # the header, then zeros
    zsize, zsectors, zranges = _blocks_and_holes(img, "/zeros")
    if keep == ["/"]:
        assert _mapped(zranges) == set(range(zsize // 4096))
    else:
        assert zsectors == 0 and zranges == [], "an unlisted all-zero file is a hole"


def test_keep_zeros_of_a_path_not_in_the_tree_is_an_error(tmp_path):
    from imgkit.assemble import TreeSpec, assemble
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(InputError, match="keep_zeros: '/swap' is not in the tree"):
        assemble(TreeSpec(sources=(str(src),), keep_zeros=("/swap",)))


def test_the_writer_chooses_an_e2fsprogs_that_reads_archives(tmp_path, monkeypatch,
                                                             bpo_e2fsprogs):
    """Unset IMGKIT_E2FSPROGS: the host's 1.47.0 reads no archive, so the writer takes
    bookworm-backports' (fetched once, cached) and streams a generated tree; when it cannot
    be had, the host's with a staging copy, saying so. Reading never fetches."""
    import imgkit.debfetch
    from imgkit.formats.ext4.read import open_tree

    host = ext4._version_of(None)
    monkeypatch.setattr(ext4, "E2FSPROGS_DIR", None)
    monkeypatch.setattr(ext4, "_chosen", {})
    tree = Tree()
    tree.add(Entry("etc/generated", Kind.FILE, data=BytesBlob(b"g" * 5000)))
    info = write_ext4(tree, tmp_path / "auto.img", seed="s")
    if host >= ext4.TAR_INPUT:
        assert "the host's" in info.tools
    else:
        assert info.tools.endswith("from Debian bookworm-backports"), info.tools
        assert ext4.e2fsprogs_command("mke2fs")[0].startswith(bpo_e2fsprogs)
    assert info.populated_from == "tar"
    fsck(tmp_path / "auto.img")

    def no_network(*args, **kwargs):
        raise ToolError("apt-get update failed: no network")

    monkeypatch.setattr(ext4, "_chosen", {})
    monkeypatch.setattr(imgkit.debfetch, "fetch_release_packages", no_network)
    info = write_ext4(tree, tmp_path / "host.img", seed="s")
    if host < ext4.TAR_INPUT:
        assert info.populated_from == "staging"
        assert "could not be fetched: apt-get update failed" in info.tools, info.tools
    assert "g" * 5000 in debugfs(tmp_path / "host.img", "cat /etc/generated")

    def must_not_fetch(*args, **kwargs):
        raise AssertionError("reading an image fetched packages")

    monkeypatch.setattr(ext4, "_chosen", {})
    monkeypatch.setattr(imgkit.debfetch, "fetch_release_packages", must_not_fetch)
    assert open_tree(str(tmp_path / "auto.img"))["etc/generated"].size == 5000
