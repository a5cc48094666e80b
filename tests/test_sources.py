"""Sources (directory, archives, gen_init_cpio lists) and id maps."""
from __future__ import annotations

import os
import tarfile

import pytest
from conftest import cpio_listing, sh

from imgkit.archives import write_initramfs
from imgkit.assemble import TreeSpec, assemble
from imgkit.errors import ImageError, InputError
from imgkit.idmap import IdMap, parse_ranges
from imgkit.sources import load_source, read_archive, read_directory, read_initramfs_list
from imgkit.tree import Kind


def make_dir(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin/tool", 0o755)
    os.link(root / "bin/tool", root / "bin/tool2")
    os.symlink("/etc/passwd", root / "escape")
    os.symlink("tool", root / "bin/alias")
    (root / "with space").write_text("x")
    os.mkfifo(root / "fifo")
    return root


def test_directory_source(tmp_path):
    tree = read_directory(str(make_dir(tmp_path / "src")))
    assert tree["bin/tool"].mode == 0o755
    assert tree["bin/tool2"].kind is Kind.HARDLINK and tree["bin/tool2"].target == "bin/tool"
    # symlinks are recorded, never followed out of the tree
    assert tree["escape"].kind is Kind.SYMLINK and tree["escape"].target == "/etc/passwd"
    assert "etc/passwd" not in tree
    assert tree["fifo"].kind is Kind.FIFO
    # the invoking user's files become root's
    assert {(e.uid, e.gid) for e in tree} == {(0, 0)}


def test_directory_host_owners(tmp_path):
    tree = read_directory(str(make_dir(tmp_path / "src")), host_owners=True)
    assert tree["bin/tool"].uid == os.getuid()


def test_archive_source_keeps_header_owners(tmp_path):
    src = make_dir(tmp_path / "src")
    tarball = tmp_path / "a.tar.gz"
    sh("bsdtar", "-czf", str(tarball), "--uid", "1000", "--gid", "1001", "-C", str(src), ".")
    tree = read_archive(str(tarball))
    assert tree["bin/tool"].uid == 1000 and tree["bin/tool"].gid == 1001
    assert tree["bin/tool2"].kind is Kind.HARDLINK or tree["bin/tool"].kind is Kind.HARDLINK
    with tree["with space"].data.open() as f:
        assert f.read() == b"x"


def test_tar_with_dotdot_is_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as t:
        info = tarfile.TarInfo("../../etc/cron.d/x")
        info.size = 0
        t.addfile(info)
    with pytest.raises(InputError, match=r"'\.\.'.*evil\.tar"):
        read_archive(str(evil))


def test_garbage_archive_is_an_image_error(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0\1\2" * 100)
    with pytest.raises(ImageError, match="junk.bin"):
        load_source(str(junk))


LIST = """\
# a comment
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
nod /dev/sda 0660 0 6 b 8 0
dir /bin 0755 0 0
file /bin/busybox ${BBDIR}/bb 04755 0 0 /bin/sh /sbin/init
slink /bin/ls busybox 0777 0 0
slink /lib64 /usr/lib64 0777 0 0
pipe /run/fifo 0600 0 0
sock /run/sock 0600 0 0
file /empty ${BBDIR}/empty 0644 1000 1000
"""


def test_list_file_matches_what_gen_init_cpio_documents(tmp_path, monkeypatch):
    (tmp_path / "bb").write_bytes(b"busybox")
    (tmp_path / "empty").write_bytes(b"")
    lst = tmp_path / "initramfs.list"
    lst.write_text(LIST)
    monkeypatch.setenv("BBDIR", str(tmp_path))
    tree = read_initramfs_list(str(lst))
    out = tmp_path / "i.cpio"
    write_initramfs(tree, str(out), compress="none")
    got = cpio_listing(str(out))
    assert got["dev/console"]["mode"] == "crw-------" and got["dev/console"]["size"] == "5,1"
    assert got["dev/sda"]["mode"] == "brw-rw----" and got["dev/sda"]["gid"] == 6
    assert got["bin/busybox"]["mode"] == "-rwsr-xr-x" and got["bin/busybox"]["nlink"] == 3
    assert got["sbin/init"]["nlink"] == 3
    assert got["lib64"]["target"] == "/usr/lib64"
    assert got["run/fifo"]["mode"].startswith("p") and got["run/sock"]["mode"].startswith("s")
    assert got["empty"]["uid"] == 1000 and got["empty"]["size"] == "0"
    assert "sbin" in got  # implied parent


@pytest.mark.parametrize("line,message", [
    ("fiel /x y 0644 0 0", r"list:2: unknown entry type 'fiel'"),
    ("dir /x 0755 0", r"list:2: 'dir' expects"),
    ("dir /x 0799 0 0", r"list:2: mode must be octal"),
    ("nod /x 0600 0 0 x 1 1", r"list:2: device type must be 'c' or 'b'"),
    ("file /x /nonexistent/file 0644 0 0", r"list:2: file '/nonexistent/file' not found"),
    ("file /x ${NOPE_NOT_SET}/f 0644 0 0", r"list:2: variable \$\{NOPE_NOT_SET\}"),
    ("dir /../x 0755 0 0", r"'\.\.'"),
])
def test_list_errors_name_file_and_line(tmp_path, line, message):
    lst = tmp_path / "bad.list"
    lst.write_text("dir /ok 0755 0 0\n" + line + "\n")
    with pytest.raises(InputError, match=message):
        read_initramfs_list(str(lst))


def test_overlay_later_sources_win(tmp_path):
    a = tmp_path / "a"
    (a / "etc").mkdir(parents=True)
    (a / "etc/issue").write_text("old")
    (a / "opt/dir").mkdir(parents=True)
    (a / "opt/dir/file").write_text("gone")
    b = tmp_path / "b"
    (b / "etc").mkdir(parents=True)
    (b / "etc/issue").write_text("new")
    (b / "opt").mkdir()
    (b / "opt/dir").write_text("now a file")
    tree = assemble(TreeSpec(sources=(str(a), str(b))))
    with tree["etc/issue"].data.open() as f:
        assert f.read() == b"new"
    assert tree["opt/dir"].kind is Kind.FILE and "opt/dir/file" not in tree


def test_id_maps(sample_tree):
    squashed = IdMap("squash").apply(sample_tree)
    assert {(e.uid, e.gid) for e in squashed} == {(0, 0)}
    one = IdMap("root", root_uid=1000, root_gid=1000).apply(sample_tree)
    assert one["home/user"].uid == 0 and one["dev/sda"].gid == 6
    ranged = IdMap("ranges", uid_ranges=parse_ranges("0 100000 65536"),
                   gid_ranges=parse_ranges("0 100000 65536")).apply(
        sample_tree.map(lambda e: e.replace(uid=e.uid + 100000, gid=e.gid + 100000)))
    assert ranged["home/user"].uid == 1000 and ranged["dev/sda"].gid == 6
    with pytest.raises(InputError, match="uid 1000 of /home/user is outside every mapped range"):
        IdMap("ranges", uid_ranges=parse_ranges("0 0 1")).apply(sample_tree)
    with pytest.raises(InputError, match="INSIDE OUTSIDE COUNT"):
        parse_ranges("0 1000")


@pytest.mark.skipif(os.getuid() == 0, reason="privilege: root reads every file (runs in the "
                                              "uid 65534 pass)")
@pytest.mark.parametrize("what", ["file", "directory"])
def test_an_unreadable_source_says_how_to_get_a_readable_root(tmp_path, what):
    """What a debootstrap root gives a user: /etc/shadow or /root only root may read."""
    from imgkit.errors import InputError
    from imgkit.sources import read_directory

    src = tmp_path / "rootdir"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    secret = src / "etc" / "shadow" if what == "file" else src / "root"
    if what == "file":
        secret.write_text("root:*:19000::::::\n")
    else:
        secret.mkdir()
    os.chmod(secret, 0)
    try:
        with pytest.raises(InputError) as info:
            read_directory(str(src))
    finally:
        os.chmod(secret, 0o700)
    assert str(secret) in str(info.value)
    hint = info.value.hint or ""
    assert "tar" in hint and "--xattrs" in hint and "mmdebstrap --mode=unshare" in hint
