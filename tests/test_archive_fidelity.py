"""Archive sources keep what the headers carry: xattrs, POSIX ACLs and sparse members.

The archives are made by GNU tar, bsdtar and Python's tarfile (pax records written directly,
so a ``security.capability`` needs no privilege); what comes out of imgkit is checked by GNU
tar, bsdtar, getfacl, Python's tarfile and debugfs, never by reading it back through imgkit.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import subprocess
import sys
import tarfile

import pytest
from conftest import bsdtar_listing, cpio_listing, sh

from imgkit.formats.ext4 import write_ext4
from imgkit.sources import read_archive

MIB = 1 << 20
#: ``cap_net_raw=ep`` as ``setcap`` stores it (struct vfs_cap_data, revision 2).
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def imgkit(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def sha256_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_blob(blob) -> str:
    with blob.open() as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pax_value(data: bytes) -> str:
    """A binary pax value as tarfile wants it (it writes hdrcharset=BINARY)."""
    return data.decode("utf-8", "surrogateescape")


def add_file(t: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644,
             pax: dict[str, str] | None = None, kind=tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = mode
    info.type = kind
    info.mtime = 1_700_000_000
    info.pax_headers = pax or {}
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.fixture
def root_tar(tmp_path):
    """A small root as ``tar --xattrs --acls`` of a real system gives it, made unprivileged."""
    path = tmp_path / "root.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        add_file(t, "etc", mode=0o755, kind=tarfile.DIRTYPE)
        add_file(t, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n")
        add_file(t, "etc/group", b"root:x:0:\nadm:x:4:\nalice:x:1000:\n")
        add_file(t, "usr/bin/ping", b"\x7fELF ping", mode=0o755,
                 pax={"SCHILY.xattr.security.capability": pax_value(CAP_NET_RAW)})
        add_file(t, "usr/bin/note", b"x", pax={"SCHILY.xattr.user.comment": "kept",
                                                "SCHILY.xattr.trusted.overlay": "y"})
        # GNU tar --acls writes names only; the ids come from the tree's own passwd/group.
        acl = "user::rwx\nuser:alice:rw-\ngroup::r--\ngroup:adm:r-x\nmask::rwx\nother::---\n"
        add_file(t, "var/log/journal", mode=0o2770, kind=tarfile.DIRTYPE,
                 pax={"SCHILY.acl.access": acl, "SCHILY.acl.default": acl})
        # bsdtar writes the numeric id after the name.
        add_file(t, "srv/shared", b"s", mode=0o660,
                 pax={"SCHILY.acl.access": "user::rw-,group::r--,other::---,"
                                           "user:nobody:rw-:4242,mask::rw-"})
    return path


def gnu_tar_extract(archive, dest, *members: str) -> None:
    """Extract with GNU tar, which restores ``system.posix_acl_*`` xattrs (bsdtar skips them
    and restores only ``SCHILY.acl`` records)."""
    sh("tar", "--xattrs", "--xattrs-include=*", "--no-same-owner", "-xf", str(archive),
       "-C", str(dest), *members)


def gnu_acl_text(path) -> str:
    return sh("getfacl", "-n", "-p", "-c", str(path))


def test_security_capability_survives_imgkit_tar(root_tar, tmp_path):
    tree = read_archive(str(root_tar))
    assert dict(tree["usr/bin/ping"].xattrs)["security.capability"] == CAP_NET_RAW
    assert tree.warnings == []
    out = tmp_path / "out.tar"
    imgkit("tar", str(root_tar), "-o", str(out))
    listing = sh("tar", "--xattrs", "--xattrs-include=*", "-tvvf", str(out))
    assert re.search(r"usr/bin/ping\n\s+x: 20 security\.capability", listing), listing
    assert re.search(r"x: 4 user\.comment", listing) and "trusted.overlay" in listing
    with tarfile.open(out) as t:
        pax = t.getmember("usr/bin/ping").pax_headers
    assert pax["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") \
        == CAP_NET_RAW


def test_acls_become_kernel_xattrs_with_ids_from_the_tree(root_tar, tmp_path):
    out = tmp_path / "out.tar"
    imgkit("tar", str(root_tar), "-o", str(out))
    dest = tmp_path / "x"
    dest.mkdir()
    gnu_tar_extract(out, dest, "var", "srv")
    # with an ACL, the group bits of the mode are the mask (as stat shows them)
    mode = os.stat(dest / "var/log/journal").st_mode
    assert stat.filemode(mode & ~stat.S_ISGID) == "drwxrwx---"
    if os.geteuid() == 0:  # an unprivileged extraction cannot keep setgid for a foreign group
        assert mode & stat.S_ISGID
    text = gnu_acl_text(dest / "var/log/journal")
    for line in ("user:1000:rw-", "group:4:r-x", "group::r--", "mask::rwx", "other::---",
                 "default:user:1000:rw-", "default:group:4:r-x"):
        assert line in text.splitlines(), text
    assert "user:4242:rw-" in gnu_acl_text(dest / "srv/shared").splitlines()


def test_acl_naming_an_unknown_user_is_reported(tmp_path):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        add_file(t, "d", mode=0o750, kind=tarfile.DIRTYPE,
                 pax={"SCHILY.acl.access": "user::rwx\nuser:ghost:r-x\ngroup::r-x\nmask::r-x\n"
                                           "other::---\n"})
        add_file(t, "f", b"x", pax={"SCHILY.fflags": "nodump"})
        add_file(t, "n", b"x", pax={"SCHILY.acl.ace": "owner@:rwxp--aARWcCos::allow"})
    tree = read_archive(str(path))
    assert not tree["d"].xattrs
    text = "\n".join(tree.warnings)
    assert "user 'ghost'" in text and "/d" in text
    assert "nodump" in text and "/f" in text
    assert "NFSv4" in text and "/n" in text


def test_gnu_tar_and_bsdtar_xattrs_and_acls_of_a_real_directory(tmp_path):
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir/file").write_bytes(b"content")
    os.setxattr(src / "dir/file", "user.mime_type", b"text/plain\0\xff")
    sh("setfacl", "-m", "u:1000:rwx,g:4:r-x", str(src / "dir"))
    sh("setfacl", "-d", "-m", "u:1000:rwx", str(src / "dir"))
    want_acl = gnu_acl_text(src / "dir")
    for name, argv in [("gnu", ["tar", "--xattrs", "--xattrs-include=*", "--acls", "-H", "pax"]),
                       ("gnu-acls-only", ["tar", "--xattrs", "--acls", "--numeric-owner"]),
                       ("bsd", ["bsdtar", "--xattrs", "--acls"])]:
        archive, out, dest = (tmp_path / f"{name}{x}" for x in (".tar", "-out.tar", "-x"))
        sh(*argv, "-cf", str(archive), "-C", str(src), "dir")
        imgkit("tar", str(archive), "-o", str(out))
        dest.mkdir()
        gnu_tar_extract(out, dest)
        assert os.getxattr(dest / "dir/file", "user.mime_type") == b"text/plain\0\xff", name
        warnings = read_archive(str(archive)).warnings
        if warnings:   # GNU tar --acls wrote host user names, and the tree has no etc/passwd
            assert name == "gnu-acls-only" and "left out" in warnings[0], warnings
        else:
            assert gnu_acl_text(dest / "dir") == want_acl, name


def test_ext4_from_the_archive_has_the_capability_and_the_acl(root_tar, tmp_path):
    img = tmp_path / "root.ext4"
    write_ext4(read_archive(str(root_tar)), img)
    sh("e2fsck", "-fn", str(img))
    ping = sh("debugfs", "-R", "ea_list /usr/bin/ping", str(img))
    hex_cap = " ".join(f"{b:02x}" for b in CAP_NET_RAW)
    assert f"security.capability (20) = {hex_cap}" in ping, ping
    journal = sh("debugfs", "-R", "ea_list /var/log/journal", str(img))
    # ext4's own ACL format (version 1): the named user entry is tag 2, rw-, id 1000
    assert re.search(r"system\.posix_acl_access \(\d+\) = 01 00 00 00 .*02 00 06 00 e8 03 00 00",
                     journal), journal
    assert "system.posix_acl_default" in journal
    assert "Size: 9" in sh("debugfs", "-R", "stat /usr/bin/ping", str(img))


# -- sparse members ---------------------------------------------------------------------

def make_sparse(root) -> dict[str, str]:
    """Two files that are mostly holes: 64 MiB with data at 48 MiB, 10 MiB holding 4 bytes."""
    root.mkdir()
    with open(root / "big", "wb") as f:
        f.truncate(64 * MIB)
        f.seek(48 * MIB)
        f.write(b"data at 48 MiB")
    with open(root / "small", "wb") as f:
        f.truncate(10 * MIB)
        f.write(b"abcd")
    return {name: sha256_file(root / name) for name in ("big", "small")}


def assert_holes_on_disk(root) -> None:
    """The extracting tool made holes: the files hold a few blocks, not their size."""
    for name in SIZES:
        st = os.stat(root / name)
        assert st.st_blocks * 512 <= 64 * 1024, f"{name}: {st.st_blocks} sectors, written dense"


SPARSE_WAYS = {
    "gnu": ["tar", "-S", "-H", "gnu"],
    "pax-0.0": ["tar", "-S", "-H", "pax", "--sparse-version=0.0"],
    "pax-0.1": ["tar", "-S", "-H", "pax", "--sparse-version=0.1"],
    "pax-1.0": ["tar", "-S", "-H", "pax", "--sparse-version=1.0"],
    "bsdtar": ["bsdtar"],
}
SIZES = {"big": 64 * MIB, "small": 10 * MIB}


@pytest.mark.parametrize("way", SPARSE_WAYS)
def test_sparse_members_keep_size_bytes_and_holes(way, tmp_path):
    digests = make_sparse(tmp_path / "src")
    archive = tmp_path / "sparse.tar"
    sh(*SPARSE_WAYS[way], "-cf", str(archive), "-C", str(tmp_path / "src"), "big", "small")
    assert os.path.getsize(archive) < MIB   # the tool did store it sparse
    tree = read_archive(str(archive))
    for name, size in SIZES.items():
        blob = tree[name].data
        assert tree[name].size == size, name
        assert sha256_blob(blob) == digests[name], name
        assert sum(length for _, length in blob.data_ranges()) <= 64 * 1024, blob.data_ranges()
    spool = os.stat(tree["big"].data.host_range()[0])
    assert spool.st_blocks * 512 < MIB, "the spool wrote the holes as zeros"

    listed = imgkit("ls", str(archive)).stdout
    for name, size in SIZES.items():
        assert re.search(rf"\s{size}\s.*/{name}$", listed, re.M), listed

    out = tmp_path / "out.tar"
    imgkit("tar", str(archive), "-o", str(out))
    listing = bsdtar_listing(str(out))
    assert {n: int(listing[n]["size"]) for n in SIZES} == SIZES
    assert os.path.getsize(out) < MIB, "the holes were stored as zeros"
    dest = tmp_path / "x"
    dest.mkdir()
    sh("tar", "-xf", str(out), "-C", str(dest))
    assert {n: sha256_file(dest / n) for n in SIZES} == digests
    assert_holes_on_disk(dest)


def test_ext4_from_a_sparse_tar_has_the_size_and_the_holes(tmp_path):
    digests = make_sparse(tmp_path / "src")
    archive = tmp_path / "sparse.tar"
    sh("tar", "-S", "--sparse-version=1.0", "-H", "pax", "-cf", str(archive),
       "-C", str(tmp_path / "src"), "big", "small")
    img = tmp_path / "sparse.ext4"
    write_ext4(read_archive(str(archive)), img)
    sh("e2fsck", "-fn", str(img))
    for name, size in SIZES.items():
        st = sh("debugfs", "-R", f"stat /{name}", str(img))
        assert f"Size: {size}" in st, st
        blocks = int(re.search(r"Blockcount: (\d+)", st)[1])
        assert blocks * 512 <= 64 * 1024, f"{name}: {blocks} sectors, the holes were filled"
        dumped = tmp_path / f"{name}.out"
        sh("debugfs", "-R", f"dump /{name} {dumped}", str(img))
        assert sha256_file(dumped) == digests[name]


def test_cpio_from_a_sparse_tar_has_the_size_and_bytes(tmp_path):
    digests = make_sparse(tmp_path / "src")
    archive = tmp_path / "sparse.tar"
    sh("tar", "-S", "-H", "gnu", "-cf", str(archive), "-C", str(tmp_path / "src"), "big", "small")
    out = tmp_path / "out.cpio"
    imgkit("initramfs", str(archive), "-o", str(out), "--compress", "none")
    listing = cpio_listing(str(out))
    assert {n: int(listing[n]["size"]) for n in SIZES} == SIZES
    dest = tmp_path / "x"
    dest.mkdir()
    with open(out, "rb") as f:
        subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], stdin=f,
                       cwd=dest, check=True)
    assert {n: sha256_file(dest / n) for n in SIZES} == digests


# -- what the writers keep: sparse files, ACL records, and what cpio cannot hold -------------

def test_tar_of_a_directory_with_sparse_files_stores_only_their_data(tmp_path):
    digests = make_sparse(tmp_path / "src")
    (tmp_path / "src/dense").write_bytes(os.urandom(100_000))
    out = tmp_path / "out.tar"
    imgkit("tar", str(tmp_path / "src"), "-o", str(out))
    assert os.path.getsize(out) < MIB
    listing = bsdtar_listing(str(out))
    assert {n: int(listing[n]["size"]) for n in SIZES} == SIZES
    assert int(listing["dense"]["size"]) == 100_000
    with tarfile.open(out) as t:   # pax sparse 1.0, as GNU tar writes it
        assert t.getmember("big").pax_headers["GNU.sparse.realsize"] == str(64 * MIB)
        assert "GNU.sparse.major" not in t.getmember("dense").pax_headers
    dest = tmp_path / "x"
    dest.mkdir()
    sh("bsdtar", "-xf", str(out), "-C", str(dest))
    assert {n: sha256_file(dest / n) for n in SIZES} == digests
    assert sha256_file(dest / "dense") == sha256_file(tmp_path / "src/dense")
    assert_holes_on_disk(dest)


def test_tar_of_a_file_that_is_all_hole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "empty-disk", "wb") as f:
        f.truncate(32 * MIB)
    out = tmp_path / "out.tar"
    imgkit("tar", str(src), "-o", str(out))
    assert os.path.getsize(out) < 64 * 1024
    dest = tmp_path / "x"
    dest.mkdir()
    sh("tar", "-xf", str(out), "-C", str(dest))
    st = os.stat(dest / "empty-disk")
    assert st.st_size == 32 * MIB and st.st_blocks * 512 <= 4096
    assert sha256_file(dest / "empty-disk") == sha256_file(src / "empty-disk")


def test_tar_acls_are_restored_by_bsdtar_and_by_gnu_tar_acls(root_tar, tmp_path):
    out = tmp_path / "out.tar"
    imgkit("tar", str(root_tar), "-o", str(out))
    with tarfile.open(out) as t:
        pax = t.getmember("var/log/journal").pax_headers
    assert "SCHILY.xattr.system.posix_acl_access" in pax   # what GNU tar --xattrs restores
    assert "user:1000:rw-" in pax["SCHILY.acl.access"].split(",")   # what bsdtar restores
    assert "group:4:r-x" in pax["SCHILY.acl.default"].split(",")
    for name, argv in [("bsdtar", ["bsdtar", "-xpf"]),
                       ("gnu-acls", ["tar", "--acls", "--no-same-owner", "-xf"])]:
        dest = tmp_path / name
        dest.mkdir()
        sh(*argv, str(out), "-C", str(dest), "var", "srv")
        journal = dest / "var/log/journal"
        text = gnu_acl_text(journal).splitlines()
        for line in ("user::rwx", "user:1000:rw-", "group::r--", "group:4:r-x", "mask::rwx",
                     "other::---", "default:user:1000:rw-", "default:group:4:r-x",
                     "default:mask::rwx"):
            assert line in text, (name, text)
        mode = os.stat(journal).st_mode
        assert stat.filemode(mode & ~stat.S_ISGID) == "drwxrwx---", name
        if os.geteuid() == 0:  # unprivileged, setgid for a foreign group cannot be kept
            assert mode & stat.S_ISGID, name
        assert "user:4242:rw-" in gnu_acl_text(dest / "srv/shared").splitlines(), name


def test_tar_of_a_directory_keeps_its_acls_for_bsdtar(tmp_path):
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    sh("setfacl", "-m", "u:1000:rwx,g:4:r-x", str(src / "dir"))
    sh("setfacl", "-d", "-m", "u:1000:rwx", str(src / "dir"))
    out, dest = tmp_path / "out.tar", tmp_path / "x"
    imgkit("tar", str(src), "-o", str(out))
    dest.mkdir()
    sh("bsdtar", "-xpf", str(out), "-C", str(dest))
    assert gnu_acl_text(dest / "dir") == gnu_acl_text(src / "dir")


def cpio_extract(archive, dest, *flags: str) -> None:
    dest.mkdir()
    with open(archive, "rb") as f:
        subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames", *flags], stdin=f,
                       cwd=dest, check=True)


def test_uncompressed_cpio_of_sparse_files_is_sparse_on_disk(tmp_path):
    digests = make_sparse(tmp_path / "src")
    archive = tmp_path / "sparse.tar"
    sh("tar", "-S", "-H", "pax", "-cf", str(archive), "-C", str(tmp_path / "src"), "big", "small")
    for name, source in [("from-tar", archive), ("from-dir", tmp_path / "src")]:
        for fmt in ("newc", "crc"):   # GNU cpio checks the crc format's sums on extraction
            out = tmp_path / f"{name}-{fmt}.cpio"
            imgkit("initramfs", str(source), "-o", str(out), "--compress", "none",
                   "--format", fmt)
            assert os.path.getsize(out) > 74 * MIB
            assert os.stat(out).st_blocks * 512 < MIB, f"{out.name}: holes written as zeros"
            assert int(sh("du", "-k", str(out)).split()[0]) < 1024
            dest = tmp_path / f"{name}-{fmt}"
            cpio_extract(out, dest, "--sparse")
            assert {n: sha256_file(dest / n) for n in SIZES} == digests, out.name
            assert_holes_on_disk(dest)


@pytest.mark.parametrize("method,decompress", [("gzip", "gzip"), ("zstd", "zstd")])
def test_compressed_cpio_of_sparse_files_has_the_zeros(method, decompress, tmp_path):
    digests = make_sparse(tmp_path / "src")
    archive = tmp_path / "sparse.tar"
    sh("tar", "-S", "-H", "gnu", "-cf", str(archive), "-C", str(tmp_path / "src"), "big", "small")
    out = tmp_path / "out.cpio.z"
    imgkit("initramfs", str(archive), "-o", str(out), "--compress", method)
    assert os.path.getsize(out) < MIB
    plain = tmp_path / "out.cpio"
    with open(plain, "wb") as f:
        subprocess.run([decompress, "-dc", str(out)], stdout=f, check=True)
    listing = cpio_listing(str(plain))
    assert {n: int(listing[n]["size"]) for n in SIZES} == SIZES
    dest = tmp_path / "x"
    cpio_extract(plain, dest)
    assert {n: sha256_file(dest / n) for n in SIZES} == digests


def test_cpio_says_which_xattrs_it_cannot_store(root_tar, tmp_path):
    from imgkit.archives import write_initramfs, write_tarball

    tree = read_archive(str(root_tar))
    result = write_initramfs(tree, str(tmp_path / "out.cpio"), compress="none")
    assert len(result.warnings) == 1, result.warnings
    warning = result.warnings[0]
    assert warning.startswith("cpio newc cannot store extended attributes: 4 entries")
    for name in ("security.capability", "system.posix_acl_access", "/usr/bin/ping",
                 "/var/log/journal", "/srv/shared", "/usr/bin/note"):
        assert name in warning, warning
    # GNU cpio agrees: the archive has the files, and nothing else to restore them from
    assert "usr/bin/ping" in cpio_listing(str(tmp_path / "out.cpio"))
    assert write_tarball(tree, str(tmp_path / "out.tar")).warnings == []


def test_archive_results_carry_what_the_sources_lost(tmp_path):
    from imgkit.archives import write_initramfs, write_tarball

    path = tmp_path / "a.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        add_file(t, "f", b"x", pax={"SCHILY.fflags": "nodump"})
    tree = read_archive(str(path))
    for result in (write_tarball(tree, str(tmp_path / "o.tar")),
                   write_initramfs(tree, str(tmp_path / "o.cpio"), compress="none")):
        assert len(result.warnings) == 1 and "nodump" in result.warnings[0], result.warnings
    assert "f" in bsdtar_listing(str(tmp_path / "o.tar"))


def test_compressed_tar_of_sparse_files_stores_only_their_data(tmp_path):
    from imgkit.archives import write_tarball
    from imgkit.sources import read_directory

    digests = make_sparse(tmp_path / "src")
    out = tmp_path / "a.tar.xz"
    result = write_tarball(read_directory(str(tmp_path / "src")), str(out), compress="xz")
    assert result.warnings == [] and result.skipped == ()
    raw = subprocess.run(["xz", "-dc", str(out)], capture_output=True, check=True).stdout
    assert len(raw) < MIB   # the archive itself is small, not only its compression
    dest = tmp_path / "x"
    dest.mkdir()
    sh("tar", "-xJf", str(out), "-C", str(dest))
    assert {n: sha256_file(dest / n) for n in SIZES} == digests
    assert_holes_on_disk(dest)


def test_tar_without_acl_text_keeps_the_mask_in_the_header_mode(root_tar, tmp_path):
    from imgkit.formats.tar import write_tar

    out = tmp_path / "out.tar"
    with open(out, "wb") as f:
        write_tar(read_archive(str(root_tar)), f, acl_text=False)
    with tarfile.open(out) as t:
        journal = t.getmember("var/log/journal")
    assert "SCHILY.xattr.system.posix_acl_access" in journal.pax_headers
    assert not any(k.startswith("SCHILY.acl") for k in journal.pax_headers)
    assert stat.filemode(stat.S_IFDIR | journal.mode) == "drwxrws---"
    assert "drwxrws---" in sh("tar", "-tvf", str(out), "var/log/journal")
