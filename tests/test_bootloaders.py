"""systemd-boot and syslinux file trees, syslinux installation, and (optionally) real boots.

The trees are copied into FAT images with mkfs.vfat + mcopy and read back with mtools;
syslinux is installed by the real installer and its boot sector checked. Real boots of every
path are in test_examples.py (the boot matrix).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from imgkit.bootloaders import syslinux, systemd_boot
from imgkit.errors import InputError
from imgkit.tree import Kind, Tree

SYSBOOT_EFI = systemd_boot.DEFAULT_EFI


def _tool(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def tree_to_fat(tree: Tree, image, size_mb=64, offset=0):
    """Write ``tree`` into a new FAT32 filesystem (mkfs.vfat + mcopy) at ``offset`` bytes."""
    fat = f"{image}.fat"
    subprocess.run([_tool("mkfs.vfat"), "-C", "-F", "32", "-n", "TEST", fat,
                    str(size_mb * 1024)], check=True, capture_output=True)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    for e in tree:
        if not e.path:
            continue
        if e.kind is Kind.DIR:
            subprocess.run(["mmd", "-i", fat, f"::/{e.path}"], check=True, env=env)
        elif e.kind is Kind.FILE:
            src = e.data.host_range()[0] if e.data.host_range() else None
            if src is None:
                src = f"{image}.tmpfile"
                with open(src, "wb") as f, e.data.open() as r:
                    shutil.copyfileobj(r, f)
            subprocess.run(["mcopy", "-i", fat, src, f"::/{e.path}"], check=True, env=env)
    if offset:
        with open(image, "wb") as out, open(fat, "rb") as src:
            out.truncate(offset + os.path.getsize(fat) + 1024 * 1024)
            out.seek(offset)
            shutil.copyfileobj(src, out)
        os.unlink(fat)
    else:
        os.replace(fat, image)


def mtype(image, path, offset=0):
    spec = f"{image}@@{offset}" if offset else str(image)
    return subprocess.run(["mtype", "-i", spec, f"::/{path}"], check=True, capture_output=True,
                          env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout


def files(tree: Tree) -> dict[str, bytes]:
    out = {}
    for e in tree:
        if e.kind is Kind.FILE:
            with e.data.open() as f:
                out[e.path] = f.read()
    return out


@pytest.fixture
def host(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(b"K" * 1000)
    (tmp_path / "initrd.img").write_bytes(b"I" * 300)
    (tmp_path / "ucode.img").write_bytes(b"U" * 30)
    (tmp_path / "uki.efi").write_bytes(b"MZ" + b"U" * 100)
    (tmp_path / "bootx64.efi").write_bytes(b"MZ" + b"B" * 100)
    return tmp_path


# -- systemd-boot ------------------------------------------------------------------------------
def test_systemd_boot_tree(host):
    entry = systemd_boot.BootEntry(
        id="imgkit", title="imgkit test", linux=host / "vmlinuz",
        initrds=[host / "ucode.img", host / "initrd.img"], options="console=ttyS0 quiet",
        version="6.1")
    tree = systemd_boot.systemd_boot_tree([entry], ukis=[("other", host / "uki.efi")],
                                          efi=host / "bootx64.efi", mtime=1234)
    got = files(tree)
    assert set(got) == {
        "EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi", "loader/loader.conf",
        "loader/entries/imgkit.conf", "imgkit/vmlinuz", "imgkit/ucode.img",
        "imgkit/initrd.img", "EFI/Linux/other.efi"}
    assert got["EFI/BOOT/BOOTX64.EFI"] == (host / "bootx64.efi").read_bytes()
    assert got["EFI/Linux/other.efi"] == (host / "uki.efi").read_bytes()
    assert got["loader/loader.conf"] == b"default imgkit.conf\ntimeout 0\neditor no\n"
    assert got["loader/entries/imgkit.conf"].decode() == (
        "title imgkit test\nversion 6.1\nlinux /imgkit/vmlinuz\ninitrd /imgkit/ucode.img\n"
        "initrd /imgkit/initrd.img\noptions console=ttyS0 quiet\n")
    assert all(e.mtime == 1234 for e in tree)
    # host files stay lazy (copy_file_range-able), generated ones are small bytes
    assert tree["imgkit/vmlinuz"].data.host_range() == (str(host / "vmlinuz"), 0)


def test_systemd_boot_defaults_and_errors(host):
    tree = systemd_boot.systemd_boot_tree(ukis=[("a", host / "uki.efi"), ("b.efi", host / "uki.efi")],
                                          default="b", timeout=5, efi=host / "bootx64.efi")
    assert files(tree)["loader/loader.conf"] == b"default b.efi\ntimeout 5\neditor no\n"
    assert "EFI/Linux/b.efi" in tree
    e = systemd_boot.BootEntry(id="x", title="x", linux=host / "vmlinuz")
    with pytest.raises(InputError, match="twice"):
        systemd_boot.systemd_boot_tree([e, e], efi=host / "bootx64.efi")
    with pytest.raises(InputError, match="at least one"):
        systemd_boot.systemd_boot_tree(efi=host / "bootx64.efi")
    with pytest.raises(InputError, match="not a valid"):
        systemd_boot.systemd_boot_tree([systemd_boot.BootEntry(id="a/b", title="x",
                                                               linux=host / "vmlinuz")],
                                       efi=host / "bootx64.efi")
    with pytest.raises(InputError, match="cannot read"):
        systemd_boot.systemd_boot_tree([systemd_boot.BootEntry(id="a", title="x",
                                                               linux=host / "missing")],
                                       efi=host / "bootx64.efi")
    other = host / "sub"
    other.mkdir()
    (other / "vmlinuz").write_bytes(b"other")
    with pytest.raises(InputError, match="two different files"):
        systemd_boot.systemd_boot_tree(
            [e, systemd_boot.BootEntry(id="y", title="y", linux=other / "vmlinuz", directory="x")],
            efi=host / "bootx64.efi")


def test_uki_esp_tree(host):
    tree = systemd_boot.uki_esp_tree(host / "uki.efi")
    assert files(tree) == {"EFI/BOOT/BOOTX64.EFI": (host / "uki.efi").read_bytes()}


def test_systemd_boot_tree_on_fat(host, tmp_path):
    entry = systemd_boot.BootEntry(id="imgkit", title="t", linux=host / "vmlinuz",
                                   initrds=[host / "initrd.img"], options="console=ttyS0")
    tree = systemd_boot.systemd_boot_tree([entry])
    img = tmp_path / "esp.img"
    tree_to_fat(tree, img)
    assert mtype(img, "loader/loader.conf") == b"default imgkit.conf\ntimeout 0\neditor no\n"
    assert b"linux /imgkit/vmlinuz" in mtype(img, "loader/entries/imgkit.conf")
    assert mtype(img, "EFI/BOOT/BOOTX64.EFI") == open(SYSBOOT_EFI, "rb").read()
    subprocess.run([_tool("fsck.vfat"), "-n", str(img)], check=True, capture_output=True)


# -- syslinux ------------------------------------------------------------------------------------
def test_syslinux_cfg():
    assert syslinux.syslinux_cfg("linux", "/vmlinuz", "/initrd.gz", "console=ttyS0 panic=-1") == (
        "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\n\nLABEL linux\n"
        "    LINUX /vmlinuz\n    INITRD /initrd.gz\n    APPEND console=ttyS0 panic=-1\n")
    cfg = syslinux.syslinux_cfg("l", "/k", None, "", serial=False)
    assert "SERIAL" not in cfg and "INITRD" not in cfg and "APPEND" not in cfg
    with pytest.raises(InputError):
        syslinux.syslinux_cfg("a b", "/k", None, "")
    with pytest.raises(InputError):
        syslinux.syslinux_cfg("l", "/k", None, "x\nDEFAULT evil")


def test_syslinux_tree(host):
    tree = syslinux.syslinux_tree(host / "vmlinuz", host / "initrd.img", "console=ttyS0",
                                  directory="syslinux")
    got = files(tree)
    assert set(got) == {"vmlinuz", "initrd", "syslinux/syslinux.cfg"}
    assert b"LINUX /vmlinuz\n" in got["syslinux/syslinux.cfg"]
    assert b"INITRD /initrd\n" in got["syslinux/syslinux.cfg"]
    assert got["vmlinuz"] == (host / "vmlinuz").read_bytes()
    assert set(files(syslinux.syslinux_tree(host / "vmlinuz", None, ""))) == \
        {"vmlinuz", "syslinux.cfg"}
    with pytest.raises(InputError):
        syslinux.syslinux_tree(host / "vmlinuz", None, "", directory="elsewhere")


def test_mbr_boot_code_and_isolinux_files():
    for table, name in (("mbr", "mbr.bin"), ("gpt", "gptmbr.bin")):
        path = os.path.join(syslinux.MBR_DIR, name)
        code = syslinux.mbr_boot_code(table)
        assert len(code) == 440
        assert code == open(path, "rb").read()[:440].ljust(440, b"\0")
    with pytest.raises(InputError):
        syslinux.mbr_boot_code("apm")  # type: ignore[arg-type]
    found = syslinux.isolinux_files()
    assert set(found) == {"isolinux.bin", "ldlinux.c32", "isohdpfx.bin"}
    assert all(os.path.isfile(p) for p in found.values())
    assert os.path.getsize(found["isohdpfx.bin"]) == 432


def test_install_syslinux_at_offset(host, tmp_path):
    tree = syslinux.syslinux_tree(host / "vmlinuz", host / "initrd.img", "console=ttyS0")
    img = tmp_path / "disk.img"
    offset = 1024 * 1024
    tree_to_fat(tree, img, offset=offset)
    syslinux.install_syslinux(img, offset)
    listing = subprocess.run(["mdir", "-a", "-b", "-i", f"{img}@@{offset}", "::/"],
                             check=True, capture_output=True, text=True,
                             env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout
    assert "LDLINUX.SYS" in listing.upper() and "LDLINUX.C32" in listing.upper()
    with open(img, "rb") as f:
        f.seek(offset)
        vbr = f.read(512)
    assert vbr[510:] == b"\x55\xaa" and b"SYSLINUX" in vbr
    assert mtype(img, "syslinux.cfg", offset).startswith(b"SERIAL 0 115200\n")
    with pytest.raises(InputError):
        syslinux.install_syslinux(img, 1000)


# -- syslinux builds are reproducible -------------------------------------------------------
SYSLINUX_DISK = """
[filesystems.boot]
type = "vfat"
label = "BOOT"
syslinux = { kernel = "vmlinuz", append = "console=ttyS0" }

[disk]
output = "bios.img"
table = "mbr"
bios = "syslinux"
partitions = [{ name = "boot", type = "fat32", size = "auto", filesystem = "boot" }]
"""


def _build_syslinux_disk(tmp_path, out: str, mtime: int) -> bytes:
    import hashlib
    import sys
    (tmp_path / "vmlinuz").write_bytes(b"\x00" * 4096)
    cfg = tmp_path / "bios.toml"
    cfg.write_text(SYSLINUX_DISK)
    r = subprocess.run([sys.executable, "-m", "imgkit", "build", str(cfg), "-O", str(tmp_path / out),
                        "--mtime", str(mtime)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return hashlib.sha256((tmp_path / out / "bios.img").read_bytes()).hexdigest()


@pytest.mark.skipif(not os.path.exists("/usr/bin/syslinux"), reason="syslinux not installed")
def test_syslinux_disk_builds_are_bit_identical(tmp_path):
    import json
    import time
    mtime = 1700000000   # 2023-11-14 22:13:20 UTC
    first = _build_syslinux_disk(tmp_path, "a", mtime)
    time.sleep(2.1)      # FAT times have 2 s steps: a stamp of "now" would differ
    assert _build_syslinux_disk(tmp_path, "b", mtime) == first
    image = str(tmp_path / "a" / "bios.img")
    table = json.loads(subprocess_out([_tool("sfdisk"), "--json", image]))["partitiontable"]
    start = table["partitions"][0]["start"]
    # mtools' own listing shows the installer's files with the build's time, in UTC.
    listing = subprocess_out(["mdir", "-a", "-i", f"{image}@@{start * 512}", "::/"])
    for name in ("ldlinux  sys", "ldlinux  c32"):
        line = next(row for row in listing.splitlines() if row.lower().startswith(name))
        assert "2023-11-14  22:13" in line, line
    # The partition as a file, checked by dosfstools.
    part = tmp_path / "part.img"
    with open(image, "rb") as src, open(part, "wb") as dst:
        src.seek(start * 512)
        dst.write(src.read())
    subprocess_out([_tool("fsck.vfat"), "-n", str(part)])


def subprocess_out(argv: list[str]) -> str:
    """stdout of a real tool, with times shown in UTC; fails on a non-zero exit."""
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", TZ="UTC0", LC_ALL="C")
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
