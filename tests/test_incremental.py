"""Incremental builds: the artifact cache reuses what did not change, and a cached build is
byte for byte the clean one.

Every build here is the demo (examples/demo.toml) or a copy of it, run through the CLI as a
user runs it. The clean reference is built with ``--no-cache``; cached disks are also checked
by sfdisk, sgdisk, e2fsck and fsck.vfat, since their partitions are copied from the cache.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import copy_partition, sfdisk_partitions, sh

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
EPOCH = "1700000000"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A copy of the demo config and its root tree with a cache of its own (sharing only the
    unpacked kernel with the suite's cache, so nothing is downloaded), built once clean
    (``clean/``) and once into the cache (``warm/``). Tests that change an input put it back
    as it was, times included."""
    root = tmp_path_factory.mktemp("incremental")
    shutil.copy(os.path.join(EXAMPLES, "demo.toml"), root / "demo.toml")
    shutil.copytree(os.path.join(EXAMPLES, "demo-rootfs"), root / "demo-rootfs", symlinks=True)
    cache = root / "cache"
    cache.mkdir()
    shared = os.environ.get("IMGKIT_CACHE", "/tmp/imgkit-cache")
    for downloads in ("kernels", "e2fsprogs-bpo"):   # fetched once, for every test
        if os.path.isdir(os.path.join(shared, downloads)):
            os.symlink(os.path.join(shared, downloads), cache / downloads)
    build(root, "clean", "--no-cache")
    first = build(root, "warm")
    assert set(first) == ALL and not any(first.values()), first
    return root


@contextlib.contextmanager
def edited(path, data: bytes, *, keep_mtime: bool = False):
    """``path`` holds ``data`` for the block, then its old bytes and times again (same
    inode): to the cache it is then unchanged."""
    st = os.stat(path)
    with open(path, "rb") as f:
        old = f.read()
    try:
        with open(path, "wb") as f:
            f.write(data)
        if keep_mtime:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        yield
    finally:
        with open(path, "wb") as f:
            f.write(old)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def private_cache(demo, name: str) -> dict[str, str]:
    """A copy of the module's cache (its entries stay valid: they name inputs, not the cache)."""
    copy = demo / name
    subprocess.run(["cp", "-a", "--sparse=always", str(demo / "cache"), str(copy)], check=True)
    return {"IMGKIT_CACHE": str(copy)}


def build(demo, out: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, bool]:
    """Build the demo copy into ``demo/out`` -> {artifact: taken from the cache?}."""
    r = subprocess.run([sys.executable, "-m", "imgkit", "build", str(demo / "demo.toml"),
                        "-O", str(demo / out), "--json", *extra], capture_output=True, text=True,
                       env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "IMGKIT_CACHE_LIMIT": "2G",
                            "IMGKIT_CACHE": str(demo / "cache"), **(env or {})})
    assert r.returncode == 0, r.stderr
    print(out, r.stdout)   # what changed, shown when a test fails
    return {a["artifact"].partition("@")[0]: a["cached"]
            for a in json.loads(r.stdout)["artifacts"]}


def same_bytes(a, b) -> bool:
    return subprocess.run(["cmp", str(a), str(b)], capture_output=True).returncode == 0


def check_with_other_tools(image, tmp_path) -> None:
    """The partitioning tools read the table; fsck.vfat and e2fsck the copied partitions."""
    assert "No problems found" in sh("sgdisk", "-v", str(image))
    assert "No errors detected" in sh("sfdisk", "--verify", str(image))
    esp, root = sfdisk_partitions(str(image))
    copy_partition(str(image), esp, tmp_path / "esp.part")
    copy_partition(str(image), root, tmp_path / "root.part")
    sh("fsck.vfat", "-n", str(tmp_path / "esp.part"))
    sh("e2fsck", "-fn", str(tmp_path / "root.part"))


ALL = {"initramfs:main", "uki:main", "fs:esp", "fs:root", "disk"}


def build_edited(demo, name: str, path, data: bytes) -> dict[str, bool]:
    """Builds the demo into *name* with *path* holding *data*, through the cache and then
    clean (``--no-cache``): the two disks must be bit-identical. Returns which artifacts the
    cached build took from the cache."""
    with edited(path, data):
        cached = build(demo, name)
        build(demo, f"{name}-clean", "--no-cache")
    assert same_bytes(demo / name / "demo.img", demo / f"{name}-clean/demo.img")
    return cached


def test_unchanged_rebuild_takes_everything_from_the_cache_bit_identically(demo, tmp_path):
    assert same_bytes(demo / "clean/demo.img", demo / "warm/demo.img")
    again = build(demo, "warm")      # over the previous output
    assert again == dict.fromkeys(ALL, True), again
    assert same_bytes(demo / "clean/demo.img", demo / "warm/demo.img")
    check_with_other_tools(demo / "warm/demo.img", tmp_path)


def test_one_root_file_changed_rebuilds_only_root_and_disk(demo, tmp_path):
    release = demo / "demo-rootfs/etc/os-release"
    changed = build_edited(demo, "changed", release, release.read_bytes() + b"VARIANT=changed\n")
    assert changed == {"initramfs:main": True, "uki:main": True, "fs:esp": True,
                       "fs:root": False, "disk": False}, changed
    check_with_other_tools(demo / "changed/demo.img", tmp_path)
    assert b"VARIANT=changed" in subprocess.run(
        ["debugfs", "-R", "cat /etc/os-release", str(tmp_path / "root.part")],
        capture_output=True, check=True).stdout
    # and back: both versions stay cached, and the original is the clean build again
    assert build(demo, "back") == dict.fromkeys(ALL, True)
    assert same_bytes(demo / "back/demo.img", demo / "clean/demo.img")


def test_changed_kernel_cmdline_rebuilds_uki_esp_and_disk(demo, tmp_path):
    config = demo / "demo.toml"
    text = config.read_text()
    assert text.count('panic=-1"\n') == 1    # the [uki.main] cmdline line
    changed = build_edited(demo, "cmdline", config,
                           text.replace('panic=-1"\n', 'panic=-1 quiet"\n').encode())
    assert changed == {"initramfs:main": True, "uki:main": False, "fs:esp": False,
                       "fs:root": True, "disk": False}, changed
    check_with_other_tools(demo / "cmdline/demo.img", tmp_path)


def test_content_identity_sees_an_edit_that_keeps_size_and_mtime(demo):
    assert not any(build(demo, "content", "--cache-identity", "content").values())
    init = demo / "demo-rootfs/sbin/init"
    data = init.read_bytes()
    assert b"root filesystem is up" in data
    with edited(init, data.replace(b"root filesystem is up", b"ROOT FILESYSTEM IS UP"),
                keep_mtime=True):
        changed = build(demo, "content-changed", "--cache-identity", "content")
        assert changed["fs:root"] is False and changed["fs:esp"] is True, changed
        build(demo, "content-clean", "--no-cache")
    assert same_bytes(demo / "content-changed/demo.img", demo / "content-clean/demo.img")


def test_another_tool_binary_rebuilds_what_it_made(demo, tmp_path):
    """A tool's binary is an input: an mke2fs found first on PATH (here a wrapper of the same
    one, so the bytes stay those of the clean build) rebuilds the ext4 and the disk only."""
    wrapper = tmp_path / "mke2fs"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('mke2fs', path='/usr/sbin:/sbin')} \"$@\"\n")
    wrapper.chmod(0o755)
    changed = build(demo, "tool", env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert changed == {"initramfs:main": True, "uki:main": True, "fs:esp": True,
                       "fs:root": False, "disk": False}, changed
    assert same_bytes(demo / "tool/demo.img", demo / "clean/demo.img")


def test_no_cache_neither_reads_nor_writes(demo):
    objects = demo / "cache/artifacts/objects"
    before = sorted(os.listdir(objects))
    assert build(demo, "uncached", "--no-cache") == {}
    assert sorted(os.listdir(objects)) == before
    assert same_bytes(demo / "uncached/demo.img", demo / "clean/demo.img")


def test_the_size_limit_evicts_least_recently_used(demo):
    env = private_cache(demo, "cache-limited")
    objects = demo / "cache-limited/artifacts/objects"

    def used() -> int:
        return sum(os.stat(objects / n).st_blocks * 512 for n in os.listdir(objects))
    assert used() > 40 << 20
    assert build(demo, "limited", "--cache-limit", "40M", env=env)["disk"] is True
    assert 0 < used() <= 40 << 20
    again = build(demo, "limited", "--cache-limit", "40M", env=env)
    assert again["disk"] is True and again["initramfs:main"] is False, again   # oldest first
    assert used() <= 40 << 20
    assert same_bytes(demo / "limited/demo.img", demo / "clean/demo.img")
    build(demo, "limited", env={**env, "IMGKIT_CACHE_LIMIT": "1M"})
    assert used() <= 1 << 20


def test_damaged_or_partial_entries_are_never_used(demo):
    env = private_cache(demo, "cache-damaged")
    objects = demo / "cache-damaged/artifacts/objects"
    images = sorted(objects.glob("*.img"), key=os.path.getsize)
    biggest = images[-1]
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    metas = sorted(m for m in objects.glob("*.json") if m.stem != biggest.stem)
    for n, meta in enumerate(metas):             # every other entry's metadata damaged
        if n % 2:
            meta.write_text(meta.read_text()[:-3])           # truncated
        else:
            data = json.loads(meta.read_text())
            data["body"]["size"] += 1                        # checksum no longer matches
            meta.write_text(json.dumps(data))
    (objects / ".tmp-999999999-partial").write_bytes(b"\0" * 4096)
    rebuilt = build(demo, "rebuilt", env=env)
    assert set(rebuilt) == ALL and not any(rebuilt.values()), rebuilt
    assert same_bytes(demo / "rebuilt/demo.img", demo / "clean/demo.img")
    assert not (objects / ".tmp-999999999-partial").exists()   # a dead run's temporary
