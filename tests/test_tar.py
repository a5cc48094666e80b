"""pax tar output, checked by bsdtar and GNU tar."""
from __future__ import annotations

import os

from conftest import bsdtar_listing, sh

from imgkit.archives import write_tarball


def test_tar_listed_by_bsdtar_and_gnu_tar(sample_tree, tmp_path):
    out = tmp_path / "a.tar"
    write_tarball(sample_tree, str(out))
    got = bsdtar_listing(str(out))
    assert got["dev/console"]["size"] == "5,1" and got["dev/console"]["mode"] == "crw-------"
    assert got["home/user"]["uid"] == 1000
    assert got["bin/busybox"]["mode"] == "-rwsr-xr-x"
    assert got["lib64"]["target"] == "/usr/lib64"
    assert got["bin/sh"]["target"] == "bin/busybox"  # hard link after its file
    gnu = sh("tar", "--numeric-owner", "-tvf", str(out))
    assert "run/sock" not in gnu  # tar cannot store sockets: left out, and reported
    assert "bin/sh link to bin/busybox" in gnu
    dest = tmp_path / "x"
    dest.mkdir()
    sh("tar", "-xf", str(out), "-C", str(dest), "--exclude=dev/*", "--exclude=run/*")
    assert os.stat(dest / "bin/sh").st_ino == os.stat(dest / "sbin/init").st_ino


def test_tar_compressed_gzip_is_reproducible(sample_tree, tmp_path):
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    write_tarball(sample_tree, str(a), compress="gzip")
    write_tarball(sample_tree, str(b), compress="gzip")
    assert a.read_bytes() == b.read_bytes()
    assert "bin/busybox" in sh("tar", "-tzf", str(a))
