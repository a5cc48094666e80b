"""Kernel module resolution against Debian's real kernel package, checked with kmod's depmod."""
from __future__ import annotations

import lzma
import os
import shutil
import time

import pytest

from imgkit import tools
from imgkit.errors import InputError
from imgkit.tree import Kind
from imgkit.vm import kernel, kmod


@pytest.fixture(scope="session")
def debian_kernel():
    """Debian's kernel, fetched once (CI sets IMGKIT_CACHE to a shared mode-1777 directory so
    runs as root and as an unprivileged user reuse one download)."""
    return kernel.fetch_debian_kernel(os.environ.get("IMGKIT_CACHE"))


@pytest.fixture(scope="session")
def moddir(debian_kernel):
    assert debian_kernel.moddir and os.path.isdir(debian_kernel.moddir)
    return debian_kernel.moddir


def _names(mods):
    return [m.name for m in mods]


def _assert_before(order, first, then):
    assert order.index(first) < order.index(then), f"{first} must load before {then}: {order}"


def test_ext4_on_virtio_order(moddir):
    mods = kmod.resolve_modules(moddir, ["virtio_pci", "virtio_blk", "ext4"])
    order = _names(mods)
    # the hard dependencies, as BOOTLAB's hand-made order that booted
    for a, b in [("virtio_ring", "virtio"), ("virtio", "virtio_pci"),
                 ("virtio_pci_legacy_dev", "virtio_pci"), ("virtio_pci_modern_dev", "virtio_pci"),
                 ("virtio", "virtio_blk"), ("crc16", "ext4"), ("mbcache", "ext4"),
                 ("jbd2", "ext4")]:
        _assert_before(order, a, b)
    # ext4's softdep (pre: crc32c) must be followed
    assert "crc32c_generic" in order
    _assert_before(order, "crc32c_generic", "ext4")
    assert len(order) == len(set(order))
    ext4 = mods[order.index("ext4")]
    assert ext4.path == "kernel/fs/ext4/ext4.ko" and not ext4.compressed


def test_aliases_and_dash_underscore(moddir):
    assert _names(kmod.resolve_modules(moddir, ["fs-ext4"]))[-1] == "ext4"
    assert _names(kmod.resolve_modules(moddir, ["virtio-blk"]))[-1] == "virtio_blk"
    # a device alias matched against the fnmatch patterns of alias=virtio:d00000002v*
    assert "virtio_blk" in _names(kmod.resolve_modules(moddir, ["virtio:d00000002v00001AF4"]))
    assert _names(kmod.resolve_modules(moddir, ["crc32c-intel"])) == ["crc32c_intel"]


def test_builtin_counts_as_satisfied(moddir):
    with open(os.path.join(moddir, "modules.builtin")) as f:
        builtin = os.path.basename(f.readline().strip()).removesuffix(".ko")
    assert kmod.resolve_modules(moddir, [builtin]) == []


def test_unknown_module_suggests_close_names(moddir):
    with pytest.raises(InputError) as info:
        kmod.resolve_modules(moddir, ["ext5"])
    assert "ext5" in str(info.value)
    assert "ext4" in (info.value.hint or "")


def _depmod_copy(moddir, tmp_path):
    """A depmod-able copy of the modules directory (kernel/ symlinked, not copied)."""
    version = os.path.basename(moddir)
    dst = tmp_path / "base" / "lib" / "modules" / version
    dst.mkdir(parents=True)
    os.symlink(os.path.join(moddir, "kernel"), dst / "kernel")
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if os.path.exists(os.path.join(moddir, name)):
            shutil.copy(os.path.join(moddir, name), dst / name)
    tools.run(["depmod", "-b", str(tmp_path / "base"), version])
    return dst


def test_matches_depmod(moddir, tmp_path):
    """Our modinfo reading agrees with kmod's depmod: same dependency closure and softdeps."""
    dst = _depmod_copy(moddir, tmp_path)
    deps = {}
    with open(dst / "modules.dep") as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
    index = kmod.load_index(moddir)
    for name in ["ext4", "virtio_blk", "9p", "vfat", "sr_mod", "virtiofs", "ata_piix"]:
        mods = kmod.resolve_modules(moddir, [name])
        ours = {m.path for m in mods} - {index.modules[name]["path"]}
        theirs = set(deps[index.modules[name]["path"]])
        # every hard dependency depmod lists is there; anything more comes from a softdep
        assert theirs <= ours, f"{name}: depmod says {sorted(theirs - ours)} are missing"
        soft_roots = [s for m in mods for s in index.modules[m.name]["pre"]
                      + index.modules[m.name]["post"] if index.lookup(s) is not None]
        soft = {m.path for m in kmod.resolve_modules(moddir, soft_roots)}
        assert ours - theirs <= soft, f"{name}: unexplained extra modules {ours - theirs - soft}"
    with open(dst / "modules.softdep") as f:
        assert "softdep ext4 pre: crypto-crc32c" in f.read()
    # and resolving from depmod's files gives the same order as from .modinfo
    via_depmod = kmod.resolve_modules(dst, ["virtio_pci", "virtio_blk", "ext4", "9p"])
    via_modinfo = kmod.resolve_modules(moddir, ["virtio_pci", "virtio_blk", "ext4", "9p"])
    assert {m.name for m in via_depmod} == {m.name for m in via_modinfo}
    order = _names(via_depmod)
    _assert_before(order, "crc32c_generic", "ext4")
    _assert_before(order, "virtio", "virtio_pci")


def test_index_cache_is_fast(moddir):
    kmod.load_index(moddir)
    kmod._memo.clear()
    t = time.monotonic()
    kmod.resolve_modules(moddir, ["ext4"])
    assert time.monotonic() - t < 1.5


def test_compressed_modules(moddir, tmp_path):
    """.ko.xz / .ko.zst / .ko.gz are indexed through their decompressed .modinfo and put
    into the tree decompressed, for busybox insmod."""
    import gzip

    import zstandard

    fake = tmp_path / "6.1.0-test"
    want = {"virtio_ring": "xz", "virtio": "zstd", "virtio_blk": "gzip"}
    index = kmod.load_index(moddir)
    originals = {}
    for name, comp in want.items():
        src = os.path.join(moddir, index.modules[name]["path"])
        data = open(src, "rb").read()
        originals[name] = data
        rel = index.modules[name]["path"]
        suffix = {"xz": ".xz", "zstd": ".zst", "gzip": ".gz"}[comp]
        out = fake / (rel + suffix)
        out.parent.mkdir(parents=True, exist_ok=True)
        packed = {"xz": lambda d: lzma.compress(d, check=lzma.CHECK_CRC32),
                  "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
                  "gzip": gzip.compress}[comp](data)
        out.write_bytes(packed)
    mods = kmod.resolve_modules(fake, ["virtio_blk"])
    assert _names(mods) == ["virtio_ring", "virtio", "virtio_blk"]
    assert {m.name: m.compression for m in mods} == want
    tree = kmod.modules_tree(fake, mods)
    lines = tree["etc/imgkit/modules"].data.open().read().decode().splitlines()
    assert lines == [f"/lib/modules/6.1.0-test/{index.modules[n]['path']}" for n in want]
    for name in want:
        entry = tree[lines[list(want).index(name)]]
        assert entry.kind is Kind.FILE and entry.uid == 0
        assert entry.data.open().read() == originals[name]


def test_modules_tree_plain(moddir):
    mods = kmod.resolve_modules(moddir, ["ext4"])
    tree = kmod.modules_tree(moddir, mods)
    version = os.path.basename(moddir)
    order = tree["etc/imgkit/modules"].data.open().read().decode().split()
    assert order == [f"/lib/modules/{version}/{m.path}" for m in mods]
    e = tree[order[-1]]
    assert e.data.host_range() == (os.path.join(os.path.realpath(moddir), mods[-1].path), 0)
