"""cpio newc/crc archives, checked by GNU cpio and bsdtar."""
from __future__ import annotations

import io
import os

import pytest
from conftest import bsdtar_listing, cpio_listing, sh

from imgkit.archives import write_initramfs
from imgkit.errors import ImageError
from imgkit.formats.cpio import write_cpio
from imgkit.tree import Kind


def _expected(tree):
    """What ``ls -l``-style listers must show for each entry of ``tree``."""
    import stat
    groups = tree.hardlink_groups()
    out = {}
    for e in tree:
        if not e.path:
            continue
        meta = tree[e.target] if e.kind is Kind.HARDLINK else e
        out[e.path] = {"mode": stat.filemode(meta.st_mode), "uid": meta.uid, "gid": meta.gid,
                       "rdev": e.rdev if e.kind in (Kind.CHAR, Kind.BLOCK) else None,
                       "symlink": e.target if e.kind is Kind.SYMLINK else None,
                       "links": 1 + len(groups.get(meta.path, [])) if meta.kind is Kind.FILE else None}
    return out


@pytest.mark.parametrize("crc", [False, True])
def test_gnu_cpio_sees_the_tree(sample_tree, tmp_path, crc):
    out = tmp_path / "a.cpio"
    with open(out, "wb") as f:
        write_cpio(sample_tree, f, crc=crc)
    listing = cpio_listing(str(out))
    want = _expected(sample_tree)
    assert set(listing) == set(want)
    for path, w in want.items():
        got = listing[path]
        assert got["mode"] == w["mode"], path
        assert (got["uid"], got["gid"]) == (w["uid"], w["gid"]), path
        if w["rdev"]:
            assert got["size"] == f"{w['rdev'][0]},{w['rdev'][1]}", path
        if w["symlink"]:
            assert got["target"] == w["symlink"], path
        if w["links"]:
            assert got["nlink"] == w["links"], path
    # GNU cpio verifies the crc checksums while extracting to stdout
    # sbin/init is the hard-link name carrying the data
    data = sh("cpio", "-i", "--to-stdout", "--quiet", "sbin/init", input=out.read_bytes())
    assert data == "\x7fELF" + "x" * 5000


def test_bsdtar_agrees_and_hard_links_share_data(sample_tree, tmp_path):
    out = tmp_path / "a.cpio"
    with open(out, "wb") as f:
        write_cpio(sample_tree, f)
    listing = bsdtar_listing(str(out))
    assert listing["dev/console"]["size"] == "5,1"
    assert listing["lib64"]["target"] == "/usr/lib64"
    # Extract (as whoever runs the test) the regular files and compare contents and inodes.
    dest = tmp_path / "x"
    dest.mkdir()
    sh("bsdtar", "-xf", str(out), "-C", str(dest), "--exclude", "dev/*", "--exclude", "run/*")
    a, b, c = (os.stat(dest / p) for p in ("bin/busybox", "bin/sh", "sbin/init"))
    assert a.st_ino == b.st_ino == c.st_ino
    assert (dest / "sbin/init").read_bytes().startswith(b"\x7fELF")
    assert (dest / "home/user/empty").read_bytes() == b""


@pytest.mark.parametrize("method,decompress", [
    ("gzip", ["gzip", "-dc"]), ("xz", ["xz", "-dc"]), ("zstd", ["zstd", "-dc"]),
    ("lz4", ["lz4", "-dc"]), ("none", ["cat"]),
])
def test_compressed_initramfs_is_read_by_the_real_decompressor(sample_tree, tmp_path, method, decompress):
    out = tmp_path / "initrd"
    write_initramfs(sample_tree, str(out), compress=method)
    raw = sh(*decompress, str(out))
    listing = sh("cpio", "-it", "--quiet", input=raw.encode("latin-1"))
    assert "dev/console" in listing.split()
    if method == "xz":
        assert "CRC32" in sh("xz", "--list", "--verbose", str(out))
    if method == "lz4":
        assert out.read_bytes()[:4] == b"\x02\x21\x4c\x18"  # legacy frame magic


def test_inode_numbers_do_not_depend_on_the_host(sample_tree, tmp_path):
    a, b = io.BytesIO(), io.BytesIO()
    write_cpio(sample_tree, a)
    write_cpio(sample_tree.map(lambda e: e), b)
    assert a.getvalue() == b.getvalue()


def test_failed_write_leaves_existing_output(sample_tree, tmp_path):
    out = tmp_path / "initrd.gz"
    out.write_bytes(b"previous")
    bad = sample_tree.map(lambda e: e.replace(uid=2**33) if e.path == "bin/ls" else e)
    with pytest.raises(ImageError):
        write_initramfs(bad, str(out), compress="gzip")
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["initrd.gz"]


def _sparse_tree(tmp_path):
    """A tree whose one file is a 16 MiB host file with 4 bytes of data in the middle."""
    from imgkit.sources import read_directory

    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk", "wb") as f:
        f.truncate(16 << 20)
        f.seek(8 << 20)
        f.write(b"data")
    return read_directory(str(src)), (src / "disk").read_bytes()


def test_sparse_file_into_an_old_file_opened_for_update_gets_real_zeros(tmp_path):
    """Seeking over a hole only works when nothing lies behind it: an existing file's bytes
    must not show through."""
    tree, want = _sparse_tree(tmp_path)
    out = tmp_path / "a.cpio"
    out.write_bytes(b"\xff" * (20 << 20))
    with open(out, "r+b") as f:
        n = write_cpio(tree, f)
        f.truncate(n)
    data = sh("cpio", "-i", "--to-stdout", "--quiet", "disk", input=out.read_bytes())
    assert data.encode("latin-1") == want


def test_sparse_file_into_a_pipe(tmp_path):
    tree, want = _sparse_tree(tmp_path)
    dest = tmp_path / "x"
    dest.mkdir()
    import subprocess
    proc = subprocess.Popen(["cpio", "-id", "--quiet"], stdin=subprocess.PIPE, cwd=dest)
    with proc.stdin as pipe:
        write_cpio(tree, pipe)
    assert proc.wait() == 0
    assert (dest / "disk").read_bytes() == want
