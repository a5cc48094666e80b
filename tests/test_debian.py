"""A real Debian bookworm root, from debootstrap, built by imgkit and booted to ``login:``.

The root is made once by ``debootstrap`` (as root: it chroots and runs maintainer scripts)
and cached as a tar in ``$IMGKIT_CACHE`` keyed by its package list, so the unprivileged run
of the suite and later runs reuse it. Everything after that runs as whoever runs the test:
imgkit builds a GPT disk from the tar (a UKI with the tree's own kernel on an ESP, syslinux
on the same ESP for BIOS, an ext4 root), the ext4 is compared path by path with the tar
(tests/fidelity.py: Python's tarfile against ``debugfs``), and the disk boots under OVMF
(raw) and SeaBIOS (qcow2). The same root as an OCI image (``umoci raw add-layer``) gives the
same ext4 and boots too. The other formats (cpio, tar, squashfs, ISO, erofs) made from the
tar are compared with it through their own tools.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from fidelity import (
    ABSENT,
    CANNOT_HOLD,
    EXTRA,
    debugfs_commands,
    differences,
    ext4_listing,
    tar_source,
    write_format,
)

SUITE = "bookworm"
PACKAGES = ("systemd-sysv", "udev", "linux-image-amd64", "kmod", "iproute2", "passwd",
            "iputils-ping")


def debian_mirror() -> str:
    """The Debian mirror apt uses here (the first ``URIs:`` of debian.sources)."""
    for path in ("/etc/apt/sources.list.d/debian.sources",):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("URIs:"):
                        return line.split()[1]
        except OSError:
            pass
    return "http://deb.debian.org/debian"


def cached_root_tar() -> str:
    """Where the tar of the root for :data:`PACKAGES` is cached."""
    cache = os.environ.get("IMGKIT_CACHE", "/tmp/imgkit-cache")
    key = hashlib.sha256("\n".join((SUITE, "minbase", *sorted(PACKAGES))).encode()).hexdigest()[:16]
    return os.path.join(cache, "debian-roots", f"{SUITE}-minbase-{key}.tar")


def make_root_tar() -> str:
    """The cached root tar, made with debootstrap when missing (root only, else a skip)."""
    tar = cached_root_tar()
    if os.path.exists(tar):
        return tar
    if os.getuid() != 0:
        pytest.skip("privilege: debootstrap needs root and no cached root tar exists "
                    f"({tar}); run the suite as root once")
    if shutil.which("debootstrap") is None:
        raise AssertionError("debootstrap is missing (packages.txt lists it)")
    os.makedirs(os.path.dirname(tar), exist_ok=True)
    os.chmod(os.path.dirname(tar), 0o755)
    work = tempfile.mkdtemp(prefix="debootstrap-", dir=os.path.dirname(tar))
    try:
        root = os.path.join(work, "root")
        r = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                            SUITE, root, debian_mirror()], capture_output=True, text=True)
        assert r.returncode == 0, f"debootstrap failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
        part = os.path.join(work, "root.tar")
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
                        "-S", "-cpf", part, "."], cwd=root, check=True)
        os.chmod(part, 0o644)   # the unprivileged run reads it too
        os.replace(part, tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar


def cached_oci_layout(tar: str) -> str:
    """An OCI image layout of the root tar, tagged ``debian``, made by umoci (``raw add-layer``
    stores the tar verbatim as one gzip layer) and cached beside the tar; a run that cannot
    write the cache makes its own copy in a temporary directory."""
    done = tar.removesuffix(".tar") + "-oci"
    if os.path.isdir(done):
        return done
    parent = os.path.dirname(tar)
    if not os.access(parent, os.W_OK):
        parent = tempfile.mkdtemp(prefix="debian-oci-")
        done = os.path.join(parent, "oci")
    work = tempfile.mkdtemp(prefix="umoci-", dir=parent)
    try:
        layout = os.path.join(work, "oci")
        for argv in (["init", "--layout", layout], ["new", "--image", f"{layout}:base"],
                     ["raw", "add-layer", "--image", f"{layout}:base", "--tag", "debian", tar]):
            subprocess.run(["umoci", *argv], check=True, capture_output=True)
        subprocess.run(["chmod", "-R", "a+rX", layout], check=True)
        os.replace(layout, done)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return done


# -- the fidelity check (tests/fidelity.py): the tar against each image --------------------------
#: Build time of every test build (SOURCE_DATE_EPOCH): newer mtimes are clamped to it.
EPOCH = 1700000000
#: What the example config adds to the tar's root, and the filesystem's own lost+found.
ADDED = ("lost+found", "etc/systemd/system/imgkit-check.service",
         "etc/systemd/system/multi-user.target.wants/imgkit-check.service",
         "usr/local/sbin/imgkit-check")


def image_differences(tar: str, image: str) -> list[str]:
    """Every difference between the tar's paths and the ext4 image (``IMG?offset=N``):
    kind, permissions, owner, size, mtime (clamped to the build time), symlink target,
    device numbers, xattrs (ACLs too), hard-link groups, contents."""
    return differences(tar_source(tar), ext4_listing(image), clamp=EPOCH, extra=ADDED)


def tar_xattr(tar: str, path: str, name: str) -> bytes | None:
    """An xattr as GNU tar stored it (a ``SCHILY.xattr.NAME`` pax record), read by Python's
    tarfile, not by imgkit."""
    import tarfile
    with tarfile.open(tar) as t:
        for member in t:
            if member.name.removeprefix("./") == path:
                value = member.pax_headers.get(f"SCHILY.xattr.{name}")
                return value.encode("utf-8", "surrogateescape") if value is not None else None
    return None


def image_xattr(image: str, path: str, name: str) -> bytes | None:
    command = f'ea_list "/{path}"'
    body = debugfs_commands(image, [command]).get(command, "")
    m = re.search(rf"^\s*{re.escape(name)} \(\d+\) = ((?:[0-9a-f]{{2}} ?)+)$", body, re.M)
    return bytes.fromhex(m[1].replace(" ", "")) if m else None


# -- the tests -------------------------------------------------------------------------------
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _imgkit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True, text=True,
                       timeout=timeout, errors="replace",
                       env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert r.returncode == 0, f"imgkit {' '.join(args)} failed:\n{r.stderr[-4000:]}\n{r.stdout[-4000:]}"
    return r


def _example_work(tmp_path_factory, name: str):
    """The cached root tar and a directory holding it as root.tar beside examples/debian/."""
    tar = make_root_tar()
    work = tmp_path_factory.mktemp(name)
    shutil.copytree(os.path.join(EXAMPLES, "debian"), work / "debian")
    os.symlink(tar, work / "root.tar")
    return tar, work


@pytest.fixture(scope="module")
def debian_images(tmp_path_factory):
    """examples/debian.toml built from the cached root tar, as a raw disk and as a qcow2."""
    tar, work = _example_work(tmp_path_factory, "debian")
    with open(os.path.join(EXAMPLES, "debian.toml"), encoding="utf-8") as f:
        text = f.read()
    (work / "raw.toml").write_text(text)
    (work / "qcow2.toml").write_text(text.replace('output = "debian.img"',
                                                  'output = "debian.qcow2"\nformat = "qcow2"'))
    r = _imgkit("build", str(work / "raw.toml"), "-O", str(work / "out"))
    assert re.search(r"kernel: \S+ from tree rootfs", r.stderr), r.stderr
    _imgkit("build", str(work / "qcow2.toml"), "-O", str(work / "out"), "-q")
    qcow2 = str(work / "out" / "debian.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", qcow2],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2", info
    return tar, str(work / "out" / "debian.img"), qcow2


@pytest.fixture(scope="module")
def debian_oci_image(tmp_path_factory):
    """examples/debian.toml with the root taken from an OCI image of the root tar
    (``oci:DIR:debian``) instead of the tar itself, as a raw disk."""
    tar, work = _example_work(tmp_path_factory, "debian-oci")
    os.symlink(cached_oci_layout(tar), work / "debian-oci")
    with open(os.path.join(EXAMPLES, "debian.toml"), encoding="utf-8") as f:
        text = f.read()
    assert 'sources = ["root.tar"]' in text
    (work / "oci.toml").write_text(text.replace('sources = ["root.tar"]',
                                                'sources = ["oci:debian-oci:debian"]'))
    r = _imgkit("build", str(work / "oci.toml"), "-O", str(work / "out"))
    assert re.search(r"kernel: \S+ from tree rootfs", r.stderr), r.stderr
    return tar, str(work / "out" / "debian.img")


def _root_partition(image: str) -> str:
    """The ext4 root of a raw disk as debugfs opens it (``IMG?offset=BYTES``), from sfdisk."""
    table = json.loads(subprocess.run(["sfdisk", "-J", image], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    root = next(p for p in table["partitions"] if p.get("name") == "root")
    return f"{image}?offset={root['start'] * table.get('sectorsize', 512)}"


def test_example_config_takes_the_kernel_from_the_root():
    from imgkit.config import load_config
    cfg = load_config(os.path.join(EXAMPLES, "debian.toml"))
    assert (cfg.kernel.source, cfg.kernel.tree) == ("tree", "rootfs")
    assert all(os.path.exists(src) for _, src in cfg.trees["rootfs"].files)


@pytest.mark.slow
def test_the_root_tar_is_made_for_both_passes():
    """debootstrap needs root: under ``make test`` the root pass (which leaves the boots to
    the uid 65534 pass) makes the cached tar here, readable by the unprivileged pass."""
    tar = make_root_tar()
    names = subprocess.run(["bsdtar", "-tf", tar], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert len(names) > 10_000 and "./usr/bin/ping" in names, names[:20]
    assert os.stat(tar).st_mode & 0o004, "the unprivileged pass cannot read the cached tar"


@pytest.mark.boot
@pytest.mark.slow
def test_debian_root_is_intact_in_the_image(debian_images):
    tar, raw, _ = debian_images
    fs = _root_partition(raw)
    fsck = subprocess.run(["e2fsck", "-fn", fs], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert image_differences(tar, fs) == []
    cap = tar_xattr(tar, "usr/bin/ping", "security.capability")
    assert cap, "debootstrap's ping has no security.capability in the tar"
    assert image_xattr(fs, "usr/bin/ping", "security.capability") == cap


def check_report(console: str) -> None:
    """What the check unit printed before login: no failed unit, ping's capability kept."""
    report = dict(re.findall(r"^imgkit-check: ([\w-]+)=(.*)$", console, re.M))
    assert report.get("done") == "yes", f"no boot report before login:\n{console[-3000:]}"
    assert report["failed-units"] == "0", f"failed units:\n{console[-3000:]}"
    assert "cap_net_raw" in report["ping-caps"], report
    assert report["ping-as-nobody"] == "1 received", report


@pytest.mark.boot
@pytest.mark.slow
@pytest.mark.parametrize("firmware,which", [("uefi", 1), ("bios", 2)], ids=["ovmf-raw", "seabios-qcow2"])
def test_debian_boots_to_login(debian_images, firmware, which):
    image = debian_images[which]
    r = _imgkit("run", image, "--firmware", firmware, "--snapshot", "--expect", "login:",
                "--timeout", "480", timeout=560)
    check_report(r.stdout)


@pytest.fixture(scope="module")
def debian_grub_image(tmp_path_factory):
    """examples/debian-grub.toml (GRUB for BIOS, a GPT disk) built from the cached root tar."""
    _, work = _example_work(tmp_path_factory, "debian-grub")
    shutil.copy(os.path.join(EXAMPLES, "debian-grub.toml"), work / "debian-grub.toml")
    _imgkit("build", str(work / "debian-grub.toml"), "-O", str(work / "out"), "-q")
    return str(work / "out" / "debian-grub.img")


@pytest.mark.boot
@pytest.mark.slow
def test_debian_boots_to_login_with_grub_under_seabios(debian_grub_image):
    cfg = subprocess.run(["grub-fstest", debian_grub_image, "cat", "(loop0,gpt2)/boot/grub/grub.cfg"],
                         capture_output=True, text=True, check=True).stdout
    assert "console=ttyS0 root=PARTLABEL=root rw rootwait panic=-1" in cfg, cfg
    r = _imgkit("run", debian_grub_image, "--firmware", "bios", "--snapshot", "--expect", "login:",
                "--timeout", "480", timeout=560)
    check_report(r.stdout)


def test_grub_example_config_boots_the_trees_kernel_with_the_declared_cmdline():
    from imgkit.config import load_config
    cfg = load_config(os.path.join(EXAMPLES, "debian-grub.toml"))
    assert (cfg.kernel.source, cfg.kernel.tree) == ("tree", "rootfs")
    assert cfg.disk.bios == "grub" and "root=PARTLABEL=root" in cfg.cmdline


@pytest.mark.boot
@pytest.mark.slow
def test_debian_root_from_an_oci_image_is_the_tars_root(debian_oci_image):
    """The ext4 built from the OCI image holds exactly what the tar holds (GNU tar's listing
    against debugfs), ping's capability included."""
    tar, raw = debian_oci_image
    fs = _root_partition(raw)
    fsck = subprocess.run(["e2fsck", "-fn", fs], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert image_differences(tar, fs) == []
    assert image_xattr(fs, "usr/bin/ping", "security.capability") == \
        tar_xattr(tar, "usr/bin/ping", "security.capability")


@pytest.mark.boot
@pytest.mark.slow
def test_debian_from_an_oci_image_boots_to_login(debian_oci_image):
    _, raw = debian_oci_image
    r = _imgkit("run", raw, "--firmware", "bios", "--snapshot", "--expect", "login:",
                "--timeout", "420", timeout=480)
    check_report(r.stdout)


@pytest.fixture(scope="module")
def debian_source():
    """The cached root tar and its listing (Python's tarfile), read once for every format."""
    tar = make_root_tar()
    return tar, tar_source(tar)


# Marked boot as well as slow so that the non-boot suite leaves these minutes-long builds of
# the whole root to the slow run, with the boot tests.
@pytest.mark.boot
@pytest.mark.slow
# squashfs: tests/test_debian_live.py compares the live ISO's squashfs with the tar
@pytest.mark.parametrize("fmt", ["cpio", "tar", "iso9660", "erofs"])
def test_debian_root_in_every_format(debian_source, fmt, tmp_path):
    """The whole root written as each format keeps every path, as the format's own tools
    read it back: no difference but what the format cannot hold (fidelity.CANNOT_HOLD)."""
    from imgkit.assemble import TreeSpec, assemble
    tar, source = debian_source
    tree = assemble(TreeSpec(sources=(tar,), mtime=EPOCH))
    image, warnings = write_format(fmt, tree, str(tmp_path / f"root.{fmt}"))
    diffs = differences(source, image, cannot_hold=CANNOT_HOLD[fmt], absent=ABSENT.get(fmt),
                        clamp=EPOCH, extra=EXTRA.get(fmt, ()))
    assert diffs == [], "\n".join(diffs[:40])
    if "xattrs" in CANNOT_HOLD[fmt]:   # ping's capability and the journal's ACL: said, not lost silently
        assert any("/usr/bin/ping" in w for w in warnings), warnings
