"""erofs: written by imgkit from the tree, checked with erofs-utils (fsck.erofs, dump.erofs).

erofs-utils 1.5 shows no device numbers: those are checked on the files ``fsck.erofs
--extract`` makes, which only root may create. Neither tool shows set-id bits (dump.erofs
prints the 0777 bits, and the chown of an extracted file clears them), so those are compared
as 0777 bits there.
"""
from __future__ import annotations

import os
import re
import shutil
import stat

import pytest
from conftest import copy_partition, sfdisk_partitions, sh

from imgkit import detect
from imgkit.build import build
from imgkit.config import load_config
from imgkit.formats.erofs import open_tree, write_erofs
from imgkit.tree import BytesBlob, Entry, Kind, Tree

pytestmark = pytest.mark.skipif(not shutil.which("fsck.erofs"),
                                reason="erofs-utils is not installed")

_KIND = {"regular file": Kind.FILE, "directory": Kind.DIR, "symlink file": Kind.SYMLINK,
         "char dev": Kind.CHAR, "block dev": Kind.BLOCK, "FIFO file": Kind.FIFO,
         "SOCK file": Kind.SOCKET}
UUID = "0f8a6ec5-0cf8-4a4b-b2b2-4a1c7c3e9b1d"


def dump_path(image: str, path: str) -> dict:
    """What ``dump.erofs --path`` says of one inode."""
    out = sh("dump.erofs", f"--path=/{path}", image)
    size, kind = re.search(r"^Size: (\d+)\s+On-disk size: \d+\s+(.+?)\s*$", out, re.M).groups()
    nid, links, layout = map(int, re.search(r"NID: (\d+)\s+Links: (\d+)\s+Layout: (\d+)", out).groups())
    uid, gid, mode = re.search(r"Uid: (\d+)\s+Gid: (\d+)\s+Access: (\d+)/", out).groups()
    isize, xsize = map(int, re.search(r"Inode size: (\d+).*Xattr size: (\d+)", out).groups())
    stamp = re.search(r"Timestamp: (\S+ \S+)", out)[1]
    return dict(size=int(size), kind=_KIND[kind], nid=nid, links=links, layout=layout,
                uid=int(uid), gid=int(gid), mode=int(mode, 8), inode_size=isize,
                xattr_size=xsize, time=stamp)


def dump_ls(image: str, path: str) -> list[tuple[str, int, int]]:
    """``dump.erofs --ls``: a directory's (name, nid, file type) in on-disk order."""
    out = sh("dump.erofs", f"--path=/{path}", "--ls", image)
    return [(m[3], int(m[1]), int(m[2]))
            for m in re.finditer(r"^\s+(\d+)\s+(\d+)\s+(.*)$", out.split("FILENAME", 1)[1], re.M)]


def superblock(image: str) -> dict[str, str]:
    return dict(re.findall(r"^Filesystem ([^:]+):\s+(.*?)\s*$", sh("dump.erofs", "-s", image), re.M))


def test_sample_tree_matches_dump_erofs(tmp_path, sample_tree):
    sample_tree.add(Entry("var/t", Kind.FILE, mode=0o640, uid=70000, gid=70001, mtime=1700000000,
                          data=BytesBlob(b"t" * 9000)))
    image = str(tmp_path / "t.erofs")
    info = write_erofs(sample_tree, image, label="rootfs", uuid=UUID)
    assert not info.warnings
    sh("fsck.erofs", image)
    groups = sample_tree.hardlink_groups()
    nids = {}
    for e in sample_tree:
        real = sample_tree[e.target] if e.kind is Kind.HARDLINK else e
        got = dump_path(image, e.path)
        assert got["kind"] is (Kind.FILE if e.kind is Kind.HARDLINK else e.kind), e.path
        assert got["mode"] == real.mode & 0o777, e.path     # dump.erofs shows 0777 bits only
        assert (got["uid"], got["gid"]) == (real.uid, real.gid), e.path
        assert got["size"] == real.size if e.kind is not Kind.DIR else got["size"] > 0, e.path
        assert got["layout"] in (0, 2), e.path
        nids[e.path] = got["nid"]
        if e.kind in (Kind.FILE, Kind.HARDLINK):
            primary = e.target if e.kind is Kind.HARDLINK else e.path
            assert got["links"] == 1 + len(groups.get(primary, [])), e.path
        if e.kind is Kind.DIR:
            subdirs = sum(c.kind is Kind.DIR for c in sample_tree.children(e.path))
            assert got["links"] == 2 + subdirs, e.path
            listed = dump_ls(image, e.path)
            names = [n for n, _, _ in listed]
            assert names == sorted(names, key=os.fsencode), e.path
            assert set(names) - {".", ".."} == {c.name for c in sample_tree.children(e.path)}
    # hard links are one inode
    assert {nids[p] for p in ["bin/busybox", *groups["bin/busybox"]]} == {nids["bin/busybox"]}
    big = dump_path(image, "var/t")
    assert (big["inode_size"], big["time"]) == (64, "2023-11-14 22:13:20.000000000")
    assert dump_path(image, "bin/ls")["inode_size"] == 32    # compact: the build time
    sb = superblock(image)
    assert sb["UUID"] == UUID
    assert sb["features"].split() == ["sb_csum", "mtime"]
    assert int(sb["inode count"]) == len(sample_tree) - sum(map(len, groups.values()))
    assert int(sb["blocks"]) * 4096 == info.size == os.path.getsize(image)
    assert sb["root nid"] == str(nids[""])


def test_contents_extracted_by_fsck(tmp_path, sample_tree):
    """``fsck.erofs --extract`` writes every file back; devices only when run as root."""
    root = os.geteuid() == 0
    tree = sample_tree if root else sample_tree.map(lambda e: e)
    if not root:
        for p in ("dev/console", "dev/sda"):
            tree.remove(p)
    tree.add(Entry("data/big", Kind.FILE, data=BytesBlob(bytes(range(256)) * 4097)))
    tree.add(Entry("data/page", Kind.FILE, data=BytesBlob(b"p" * 8192)))
    if root:
        tree.add(Entry("dev/nvme", Kind.BLOCK, mode=0o600, rdev=(259, 70000)))
    image, out = str(tmp_path / "t.erofs"), tmp_path / "x"
    write_erofs(tree, image)
    sh("fsck.erofs", f"--extract={out}", "--preserve-perms", image)
    for e in tree:
        host = out / e.path
        st = os.lstat(host)
        real = tree[e.target] if e.kind is Kind.HARDLINK else e
        assert stat.S_IMODE(st.st_mode) & 0o777 == real.mode & 0o777, e.path
        if e.kind in (Kind.FILE, Kind.HARDLINK):
            assert host.read_bytes() == real.data.open().read(), e.path
        elif e.kind is Kind.SYMLINK:
            assert os.readlink(host) == e.target
        elif e.kind in (Kind.CHAR, Kind.BLOCK):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == e.rdev, e.path
            assert stat.S_ISCHR(st.st_mode) == (e.kind is Kind.CHAR), e.path
        if root:
            assert (st.st_uid, st.st_gid) == (real.uid, real.gid), e.path
        if e.kind is Kind.FIFO:
            assert stat.S_ISFIFO(st.st_mode)


def test_rebuild_is_bit_identical(tmp_path, sample_tree):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_erofs(sample_tree, a, seed="s")
    write_erofs(sample_tree.map(lambda e: e), b, seed="s")
    assert open(a, "rb").read() == open(b, "rb").read()


def test_reader_gives_back_the_tree(tmp_path, sample_tree):
    tree = sample_tree.map(lambda e: e.replace(mtime=1234567) if e.kind is Kind.FILE else e)
    tree.add(Entry("x", Kind.FILE, data=BytesBlob(b"v"),
                   xattrs=(("user.k", b"v"), ("security.selinux", b"s\0"))))
    image = str(tmp_path / "t.erofs")
    write_erofs(tree, image)
    back = open_tree(image)
    assert [e.path for e in back] == [e.path for e in tree]
    for e in tree:
        got = back[e.path]
        if e.kind is Kind.HARDLINK:
            assert (got.kind, got.target, got.mode) == (e.kind, e.target, tree[e.target].mode)
            continue
        assert got == e, e.path
        if e.kind is Kind.FILE:
            assert got.data.open().read() == e.data.open().read()
    found = detect.sniff_path(image)
    assert found.format == "erofs"
    handler = detect.reader(found.filesystem)
    assert handler.name == "erofs"
    with open(image, "rb") as f:
        assert handler.describe(f)["checksum_ok"] is True


def test_xattrs_by_prefix_and_unknown_ones_warned(tmp_path):
    acl = bytes.fromhex("02000000" "01000600ffffffff" "04000400ffffffff" "20000400ffffffff")
    tree = Tree()
    tree.add(Entry("f", Kind.FILE, data=BytesBlob(b"q"), xattrs=(
        ("user.k", b"v"), ("trusted.t", b"1234"), ("security.capability", b"\1\0\0\2"),
        ("system.posix_acl_access", acl), ("other.x", b"no"))))
    image = str(tmp_path / "t.erofs")
    info = write_erofs(tree, image, checksum=False)
    assert len(info.warnings) == 1 and "other.x" in info.warnings[0]
    sh("fsck.erofs", image)
    assert "sb_csum" not in superblock(image)["features"]
    # each entry: 4-byte head + suffix + value, aligned to 4; plus the 12-byte ibody header
    expected = 12 + sum(-(-(4 + len(n) + len(v)) // 4) * 4 for n, v in
                        ((b"k", b"v"), (b"t", b"1234"), (b"capability", b"\1\0\0\2"), (b"", acl)))
    assert dump_path(image, "f")["xattr_size"] == expected
    assert dict(open_tree(image)["f"].xattrs) == {
        "user.k": b"v", "trusted.t": b"1234", "security.capability": b"\1\0\0\2",
        "system.posix_acl_access": acl}


def test_large_directory_spans_blocks(tmp_path):
    tree = Tree()
    for n in range(600):
        tree.add(Entry(f"d/file-{n:04d}-" + "x" * 20, Kind.FILE, data=BytesBlob(b"%d" % n)))
    image = str(tmp_path / "t.erofs")
    write_erofs(tree, image)
    sh("fsck.erofs", image)
    listed = dump_ls(image, "d")
    assert len(listed) == 602
    assert dump_path(image, "d")["size"] > 4096 * 4
    assert open_tree(image)["d/file-0599-" + "x" * 20].data.open().read() == b"599"


CONFIG = """
[trees.data]
entries = ["dir /etc 0755 0 0", "dir /home/u 0700 1000 1000", "nod /dev/console 0600 0 5 c 5 1"]
files = { "/etc/hello" = "hello.txt" }

[filesystems.root]
type = "erofs"
tree = "data"
label = "rootfs"
uuid = "0f8a6ec5-0cf8-4a4b-b2b2-4a1c7c3e9b1d"

[disk]
output = "t.img"
partitions = [
  { name = "root", type = "root-x86-64", size = "auto", filesystem = "root" },
]
"""


def test_disk_with_an_erofs_partition(tmp_path):
    (tmp_path / "hello.txt").write_text("hello from erofs\n")
    (tmp_path / "t.toml").write_text(CONFIG)
    build(load_config(str(tmp_path / "t.toml")), str(tmp_path / "out"), mtime=1700000000)
    image = str(tmp_path / "out" / "t.img")
    parts = sfdisk_partitions(image)
    assert len(parts) == 1
    part = tmp_path / "root.erofs"
    copy_partition(image, parts[0], part)
    sh("fsck.erofs", str(part))
    assert superblock(str(part))["UUID"] == "0f8a6ec5-0cf8-4a4b-b2b2-4a1c7c3e9b1d"
    hello = dump_path(str(part), "etc/hello")
    assert (hello["mode"], hello["uid"], hello["gid"], hello["size"]) == (0o644, 0, 0, 17)
    home = dump_path(str(part), "home/u")
    assert (home["kind"], home["mode"], home["uid"], home["gid"]) == (Kind.DIR, 0o700, 1000, 1000)
    assert dump_path(str(part), "dev/console")["kind"] is Kind.CHAR
    # the same partition read in place through the filesystem table
    from imgkit import browse
    assert browse.open_tree(f"{image}:1")["etc/hello"].data.open().read() == b"hello from erofs\n"
    # the same config builds the same bytes
    build(load_config(str(tmp_path / "t.toml")), str(tmp_path / "again"), mtime=1700000000)
    assert (tmp_path / "again" / "t.img").read_bytes() == (tmp_path / "out" / "t.img").read_bytes()


def test_reader_reads_what_mkfs_erofs_made(tmp_path):
    """The reader against a tool we did not write: an image ``mkfs.erofs`` made from a
    directory (uncompressed; its tail packing and its dirent blocks)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "small").write_bytes(b"s" * 100)
    (src / "big").write_bytes(bytes(range(256)) * 70)
    (src / "sub" / "deep").write_text("deep\n")
    os.symlink("sub/deep", src / "link")
    os.link(src / "small", src / "sub" / "again")
    os.chmod(src / "big", 0o600)
    image = str(tmp_path / "m.erofs")
    sh("mkfs.erofs", "-T1700000000", image, str(src))
    back = open_tree(image)
    assert {e.path for e in back} == {"", "sub", "small", "big", "sub/deep", "link", "sub/again"}
    assert back["big"].data.open().read() == (src / "big").read_bytes()
    assert back["big"].mode == 0o600
    assert back["small"].data.open().read() == b"s" * 100
    assert back["sub/deep"].data.open().read() == b"deep\n"
    assert back["link"].target == "sub/deep"
    assert {back["sub/again"].kind, back["small"].kind} == {Kind.FILE, Kind.HARDLINK}
    with open(image, "rb") as f:
        desc = detect.reader("erofs").describe(f)
    assert desc["checksum_ok"] is True and desc["created"] == 1700000000


@pytest.mark.boot
def test_boot_an_erofs_root(tmp_path):
    """Debian's kernel mounts the erofs root (its module loaded by imgkit's init) by
    PARTLABEL and runs the init on it."""
    from imgkit import tools
    from imgkit.compress import compressed_writer
    from imgkit.formats.cpio import write_cpio
    from imgkit.tree import FileBlob
    from imgkit.vm import guest_init, kernel, kmod, qemu

    kern = kernel.fetch_debian_kernel(os.environ.get("IMGKIT_CACHE"))
    root = Tree()
    for d in ("dev", "proc", "sys", "tmp"):
        root.add(Entry(d, Kind.DIR, mode=0o755))
    root.add(Entry("bin/busybox", Kind.FILE, mode=0o755,
                   data=FileBlob("/bin/busybox", os.path.getsize("/bin/busybox"))))
    root.add(Entry("bin/owned", Kind.FILE, mode=0o4750, uid=1234, gid=4321, data=BytesBlob(b"o")))
    root.add(Entry("sbin/init", Kind.FILE, mode=0o755, data=BytesBlob(
        b"#!/bin/busybox sh\n/bin/busybox echo EROFS-ROOT pid=$$\n"
        b"/bin/busybox grep ' / ' /proc/mounts | /bin/busybox sed 's/^/MOUNT /'\n"
        b"/bin/busybox stat -c 'STAT %u:%g %a' /bin/owned\n/bin/busybox poweroff -f\n")))
    fs = str(tmp_path / "root.erofs")
    write_erofs(root, fs)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    tools.run(["sgdisk", "-n", "1:2048:+4M", "-t", "1:8304", "-c", "1:erofs-root", str(disk)])
    with open(fs, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(2048 * 512)
        shutil.copyfileobj(src, dst)
    mods = kmod.resolve_modules(kern.moddir, ["virtio_pci", "virtio_blk", "erofs"])
    tree = guest_init.busybox_init_tree(modules=mods, moddir=kern.moddir)
    initrd = str(tmp_path / "initrd.zst")
    with open(initrd, "wb") as f, compressed_writer(f, "zstd") as w:
        write_cpio(tree, w)
    spec = qemu.QemuSpec(kernel=kernel.extract_vmlinux(kern.vmlinuz), initrd=initrd,
                         append="console=ttyS0 panic=-1 quiet root=PARTLABEL=erofs-root "
                                "rootfstype=erofs",
                         drives=(qemu.Drive(str(disk), readonly=True),))
    result = qemu.boot(spec, expect=re.compile(r"STAT \d+:\d+ \d+\r?\n"), timeout=90)
    assert "EROFS-ROOT pid=1" in result.log
    assert re.search(r"MOUNT /dev/vda1 / erofs ro\S*", result.log), result.log
    assert "STAT 1234:4321 4750" in result.log


def test_estimate_is_an_upper_bound(tmp_path, sample_tree):
    from imgkit.formats.erofs import estimate_size
    for n in range(300):
        sample_tree.add(Entry(f"many/f{n}", Kind.FILE, data=BytesBlob(b"z" * (n * 37 % 5000)),
                              xattrs=(("user.n", b"%d" % n),) if n % 3 else ()))
    image = str(tmp_path / "t.erofs")
    info = write_erofs(sample_tree, image)
    sh("fsck.erofs", image)
    assert info.size <= estimate_size(sample_tree) < 2 * info.size + 8192


def test_too_long_a_name_is_an_input_error(tmp_path):
    from imgkit.errors import InputError
    tree = Tree()
    tree.add(Entry("d/" + "n" * 256, Kind.FILE, data=BytesBlob(b"")))
    with pytest.raises(InputError, match="256 bytes"):
        write_erofs(tree, str(tmp_path / "t.erofs"))
