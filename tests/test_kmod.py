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


# -- a tree's own kernel and modules -----------------------------------------------------------
_SUBSET = ("kernel/fs", "kernel/lib", "kernel/crypto", "kernel/arch", "kernel/drivers/virtio",
           "kernel/drivers/block")


@pytest.fixture(scope="session")
def merged_usr_tar(debian_kernel, tmp_path_factory):
    """A merged-/usr root as a tar made by GNU tar: ``lib -> usr/lib``, the Debian kernel in
    /boot and part of its modules in /usr/lib/modules/VERSION (no depmod files, as the
    package ships them)."""
    root = os.path.dirname(os.path.dirname(debian_kernel.vmlinuz))
    version = debian_kernel.version
    tar = str(tmp_path_factory.mktemp("tree") / "root.tar")
    tools.run(["tar", "--numeric-owner", "-cf", tar, "-C", root,
               "--transform", r"s,^lib/,usr/lib/,", f"boot/vmlinuz-{version}",
               *[f"lib/modules/{version}/{d}" for d in _SUBSET]])
    link_dir = tmp_path_factory.mktemp("link")
    os.symlink("usr/lib", link_dir / "lib")
    tools.run(["tar", "--numeric-owner", "-rf", tar, "-C", str(link_dir), "lib"])
    return tar


def test_tree_kernel_from_a_tar_materializes_only_what_is_needed(merged_usr_tar, debian_kernel,
                                                                  tmp_path):
    from imgkit.sources import load_source
    tree = load_source(merged_usr_tar)
    info = kernel.tree_kernel(tree, str(tmp_path), where="test tree",
                              modules=["virtio_pci", "virtio_blk", "ext4"])
    assert info.version == debian_kernel.version
    with open(info.vmlinuz, "rb") as a, open(debian_kernel.vmlinuz, "rb") as b:
        assert a.read() == b.read()
    written = sorted(os.path.relpath(os.path.join(d, f), info.moddir)
                     for d, _, files in os.walk(info.moddir) for f in files)
    # only the resolved modules left the tree, and kmod's modinfo finds their dependencies
    # among them (softdeps included: crc32c for ext4)
    assert len(written) < 20, written
    names = {tools.run(["modinfo", "-F", "name", os.path.join(info.moddir, w)]).stdout.decode().strip()
             for w in written}
    assert {"ext4", "jbd2", "virtio_blk", "virtio_pci", "crc32c_generic"} <= names
    for w in written:
        deps = tools.run(["modinfo", "-F", "depends", os.path.join(info.moddir, w)]).stdout.decode()
        assert {d for d in deps.strip().split(",") if d} <= names, (w, deps)
    from_tree = kmod.resolve_modules(info.moddir, ["virtio_pci", "virtio_blk", "ext4"])
    assert [m.name for m in from_tree] == [m.name for m in kmod.resolve_modules(
        debian_kernel.moddir, ["virtio_pci", "virtio_blk", "ext4"])]


def test_unknown_module_in_a_tree_names_the_tree(merged_usr_tar, tmp_path):
    from imgkit.sources import load_source
    with pytest.raises(InputError) as info:
        kernel.tree_kernel(load_source(merged_usr_tar), str(tmp_path), where="tree rootfs",
                           modules=["ext5"])
    assert "tree rootfs: /usr/lib/modules/" in str(info.value)


def _fake_root(kernels=(), moddirs=(), bootc=()):
    from imgkit.tree import BytesBlob, Entry, Tree
    t = Tree()
    for v in kernels:
        t.add(Entry(f"boot/vmlinuz-{v}", Kind.FILE, data=BytesBlob(b"not a bzImage " + v.encode())))
    for v in moddirs:
        t.add(Entry(f"usr/lib/modules/{v}/kernel", Kind.DIR))
    for v in bootc:
        t.add(Entry(f"usr/lib/modules/{v}/vmlinuz", Kind.FILE, data=BytesBlob(b"bootc " + v.encode())))
        t.add(Entry(f"usr/lib/modules/{v}/kernel", Kind.DIR))
    t.add(Entry("lib", Kind.SYMLINK, mode=0o777, target="usr/lib"))
    return t


def test_tree_kernel_versions(tmp_path):
    tree = _fake_root(kernels=["6.1.0-9-amd64", "6.1.0-50-amd64"],
                      moddirs=["6.1.0-9-amd64", "6.1.0-50-amd64"])
    assert kernel.tree_kernel(tree, str(tmp_path), where="t").version == "6.1.0-50-amd64"
    assert kernel.tree_kernel(tree, str(tmp_path), where="t",
                              version="6.1.0-9-amd64").version == "6.1.0-9-amd64"
    with pytest.raises(InputError, match="6.1.0-9-amd64, 6.1.0-50-amd64"):
        kernel.tree_kernel(tree, str(tmp_path), where="t", version="6.2")
    bootc = kernel.tree_kernel(_fake_root(bootc=["6.8.0"]), str(tmp_path), where="t")
    assert bootc.version == "6.8.0" and open(bootc.vmlinuz, "rb").read() == b"bootc 6.8.0"
    with pytest.raises(InputError, match="no kernel in the tree"):
        kernel.tree_kernel(_fake_root(moddirs=["6.1.0-50-amd64"]), str(tmp_path), where="t")


def test_kernel_and_modules_of_different_versions(tmp_path):
    tree = _fake_root(kernels=["6.1.0-57-amd64"], moddirs=["6.1.0-50-amd64"])
    with pytest.raises(InputError) as info:
        kernel.tree_kernel(tree, str(tmp_path), where="t")
    assert "6.1.0-57-amd64" in str(info.value) and "6.1.0-50-amd64" in str(info.value)
    other = kernel.KernelInfo("vmlinuz", None, "6.1.0-57-amd64")
    assert kernel.mismatched_tree_modules(other, tree) == ["6.1.0-50-amd64"]
    assert kernel.mismatched_tree_modules(kernel.KernelInfo("v", None, "6.1.0-50-amd64"), tree) == []


def _config(tmp_path, text):
    from imgkit.config import load_config
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(str(path))


@pytest.mark.parametrize("text,message", [
    ('[kernel]\nsource = "tree"\n', "needs tree"),
    ('[kernel]\nsource = "tree"\ntree = "root"\n', "not defined"),
    ('[kernel]\nversion = "6.1"\n', "source = 'tree' only"),
    ('[kernel]\nsource = "tree"\ntree = "root"\n[trees.root]\nmodules = ["ext4"]\ninit = "busybox"\n',
     "cannot take modules"),
])
def test_kernel_tree_config_errors(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        _config(tmp_path, text)


def test_build_warns_when_a_tree_has_modules_for_another_kernel(tmp_path):
    from imgkit.build import build
    (tmp_path / "vmlinuz-6.1.0-57-amd64").write_bytes(b"not a bzImage")
    cfg = _config(tmp_path, """
[kernel]
source = "path"
path = "vmlinuz-6.1.0-57-amd64"

[trees.root]
entries = ["dir /usr/lib/modules/6.1.0-50-amd64/kernel 0755 0 0"]
files = { "/boot/vmlinuz" = "kernel" }

[initramfs.root]
tree = "root"
output = "root.cpio"
""")
    messages: list[str] = []
    build(cfg, str(tmp_path / "out"), progress=messages.append)
    warnings = [m for m in messages if m.startswith("warning: tree root")]
    assert len(warnings) == 1 and "6.1.0-50-amd64" in warnings[0] and "6.1.0-57-amd64" in warnings[0]


def test_cli_initramfs_modules_from_a_tree(merged_usr_tar, debian_kernel, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "initrd.gz"
    subprocess.run([sys.executable, "-m", "imgkit", "initramfs", "--init", "busybox",
                    "--kernel-from-tree", merged_usr_tar, "--modules", "virtio_blk,ext4",
                    "-o", str(out)], check=True)
    names = tools.run(["bsdtar", "-tf", str(out)]).stdout.decode().split()
    version = debian_kernel.version
    for ko in ("fs/ext4/ext4.ko", "fs/jbd2/jbd2.ko", "drivers/block/virtio_blk.ko",
               "crypto/crc32c_generic.ko"):
        assert f"lib/modules/{version}/kernel/{ko}" in names, names


def test_kernel_initrd_is_the_trees_own(tmp_path):
    from imgkit.build import build
    (tmp_path / "k").write_bytes(b"not a bzImage")
    (tmp_path / "i").write_bytes(b"the tree's own initramfs\n" * 100)
    text = """
[kernel]
source = "tree"
tree = "root"

[trees.root]
files = { "/boot/vmlinuz-6.1.0-50-amd64" = "k", "/boot/initrd.img-6.1.0-50-amd64" = "i" }

[trees.esp]
files = { "/initrd" = "kernel:initrd", "/vmlinuz" = "kernel" }

[initramfs.esp]
tree = "esp"
compress = "none"
output = "esp.cpio"
"""
    build(_config(tmp_path, text), str(tmp_path / "out"))
    tools.run(["bsdtar", "-xf", str(tmp_path / "out" / "esp.cpio"), "-C", str(tmp_path / "out")])
    assert (tmp_path / "out" / "initrd").read_bytes() == (tmp_path / "i").read_bytes()
    assert (tmp_path / "out" / "vmlinuz").read_bytes() == b"not a bzImage"
    with pytest.raises(InputError, match="kernel:initrd"):
        build(_config(tmp_path, text.replace('source = "tree"\ntree = "root"', 'source = "host"')),
              str(tmp_path / "out2"))


def test_a_fresh_download_is_not_called_cached(tmp_path, monkeypatch):
    """The first fetch into an empty cache says it downloaded, the second that it did not.
    apt is stood in for by a package built with dpkg-deb (no network); dpkg -x unpacks it."""
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "boot").mkdir()
    (pkg / "boot" / "vmlinuz-9.9.9-test").write_bytes(b"MZ kernel")
    (pkg / "DEBIAN" / "control").write_text(
        "Package: linux-image-9.9.9-test\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: nobody <nobody@example.org>\nDescription: test kernel\n")
    deb = tmp_path / "linux-image-9.9.9-test_1.0_all.deb"
    tools.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)])
    real_run = tools.run

    def run(argv, **kw):
        if argv[:2] == ["apt-cache", "depends"]:
            return real_run(["echo", "  Depends: linux-image-9.9.9-test"])
        if argv[:2] == ["apt-cache", "show"]:
            return real_run(["echo", "Version: 1.0"])
        if argv[:2] == ["apt-get", "download"]:
            shutil.copy(deb, kw["cwd"])
            return real_run(["true"])
        return real_run(argv, **kw)

    monkeypatch.setattr(kernel.tools, "run", run)
    first = kernel.fetch_debian_kernel(tmp_path / "cache", package="linux-image-test")
    second = kernel.fetch_debian_kernel(tmp_path / "cache", package="linux-image-test")
    assert (first.version, first.downloaded) == ("9.9.9-test", True)
    assert (second.vmlinuz, second.downloaded) == (first.vmlinuz, False)
