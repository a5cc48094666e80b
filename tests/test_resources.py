"""Resources: published images keep their holes, sizes beyond the free space are refused
before anything is written, and an archive's spool is bounded (a compression bomb ends in one
error line, not a full $TMPDIR)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import sh


def imgkit(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def one_error(r) -> str:
    errors = [line for line in r.stderr.splitlines() if line.startswith("imgkit: error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


def test_a_published_filesystem_keeps_its_holes(tmp_path):
    (tmp_path / "image.toml").write_text(
        '[trees.t]\nentries = ["dir /etc 0755 0 0"]\n'
        '[filesystems.root]\ntype = "ext4"\ntree = "t"\nsize = "1G"\noutput = "root.ext4"\n')
    r = imgkit("build", str(tmp_path / "image.toml"), "-O", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "root.ext4"
    st = out.stat()
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 64 << 20, st.st_blocks   # metadata only, not 1 GiB of zeros
    sh("e2fsck", "-fn", str(out))


def test_a_disk_bigger_than_the_free_space_is_refused_before_writing(tmp_path):
    (tmp_path / "image.toml").write_text(
        '[disk]\noutput = "big.img"\nsize = "1000T"\n'
        'partitions = [{ name = "a", type = "linux", size = "1M" }]\n')
    r = imgkit("build", str(tmp_path / "image.toml"), "-O", str(tmp_path / "out"))
    assert "[disk] size is" in one_error(r) and "free in" in r.stderr
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


def test_a_compression_bomb_stops_at_the_spool_limit(tmp_path):
    bomb = tmp_path / "bomb.tar.zst"
    # 64 MiB of zeros in one member: a few KiB compressed, written by GNU tar and zstd
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "zeros", "wb") as f:
        f.write(b"\0" * (64 << 20))
    sh("tar", "-C", str(tmp_path / "src"), "--zstd", "-cf", str(bomb), "zeros")
    assert bomb.stat().st_size < 1 << 20
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    r = imgkit("tar", str(bomb), "-o", str(tmp_path / "out.tar"),
               env={"IMGKIT_SPOOL_LIMIT": "8M", "TMPDIR": str(tmpdir)})
    line = one_error(r)
    assert "8,388,608 bytes" in line and "IMGKIT_SPOOL_LIMIT" in r.stderr
    assert not (tmp_path / "out.tar").exists()
    assert not list(tmpdir.rglob("imgkit-spool-*")), list(tmpdir.rglob("*"))
    # under the limit the same archive is read
    r = imgkit("tar", str(bomb), "-o", str(tmp_path / "out.tar"),
               env={"IMGKIT_SPOOL_LIMIT": "100M", "TMPDIR": str(tmpdir)})
    assert r.returncode == 0, r.stderr
    assert "zeros" in sh("bsdtar", "-tf", str(tmp_path / "out.tar"))


def _shared_cluster_qcow2(path, virtual_size: int) -> None:
    """A qcow2 (version 2, 64 KiB clusters) whose L1 entries all name one L2 table and whose
    L2 entries all name one data cluster of 0xaa: six clusters on disk describing
    ``virtual_size`` bytes of data."""
    import struct
    cluster = 1 << 16
    l1_size = -(-virtual_size // (cluster * (cluster // 8)))
    copied = 1 << 63
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 2, 0, 0, 16, virtual_size, 0, l1_size,
                         1 * cluster, 2 * cluster, 1, 0, 0)
    with open(path, "wb") as f:
        f.write(header.ljust(cluster, b"\0"))
        f.write(struct.pack(">Q", 4 * cluster | copied).ljust(8, b"\0") * l1_size)
        f.seek(2 * cluster)
        f.write(struct.pack(">Q", 3 * cluster).ljust(cluster, b"\0"))
        f.write((struct.pack(">H", 1) * 6).ljust(cluster, b"\0"))
        f.write(struct.pack(">Q", 5 * cluster | copied) * (cluster // 8))
        f.write(b"\xaa" * cluster)


def test_a_qcow2_describing_more_data_than_the_limit_is_refused(tmp_path):
    bomb = tmp_path / "bomb.qcow2"
    _shared_cluster_qcow2(bomb, 4 << 30)
    assert bomb.stat().st_size < 400 << 10
    # QEMU's own map agrees that every cluster of the 4 GiB holds data
    import json
    extents = json.loads(sh("qemu-img", "map", "-f", "qcow2", "--output=json", str(bomb)))
    assert sum(e["length"] for e in extents if e["data"]) == 4 << 30
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"IMGKIT_SPOOL_LIMIT": "1G", "TMPDIR": str(tmpdir)}
    for command in ("inspect", "ls"):
        r = imgkit(command, str(bomb), env=env)
        line = one_error(r)
        assert "allocated data" in line and "1,073,741,824-byte limit" in line, line
        assert "IMGKIT_SPOOL_LIMIT" in r.stderr
        assert not list(tmpdir.iterdir()), list(tmpdir.rglob("*"))
    # an ordinary qcow2 under the same limit is read
    raw = tmp_path / "disk.img"
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
    sh("mkfs.vfat", "-n", "SMALL", str(raw))
    sh("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_path / "ok.qcow2"))
    r = imgkit("inspect", str(tmp_path / "ok.qcow2"), env=env)
    assert r.returncode == 0 and "SMALL" in r.stdout, r.stderr
