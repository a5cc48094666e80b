"""The boot matrix: every example config is built and booted on the firmwares it names.

Each example says in its header what its guest prints once up (``# expect:``), which
firmwares boot it (``# firmware:``) and, for ISOs, as which media (``# media:``). The images
are also checked structurally by sgdisk/sfdisk, objdump and xorriso.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess
import sys

import pytest
from conftest import sh

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def header(path: str) -> dict[str, list[str]]:
    meta: dict[str, list[str]] = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"#\s*(expect|firmware|media):\s*(.+)", line)
            if m:
                meta[m[1]] = [v.strip() for v in m[2].split(",")] if m[1] != "expect" else [m[2].strip()]
    return meta


def bootable_examples():
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*.toml"))):
        meta = header(path)
        name = os.path.basename(path)[:-5]
        if "expect" not in meta or "firmware" not in meta:
            continue
        for fw in meta["firmware"]:
            for media in meta.get("media", ["default"]):
                yield pytest.param(name, fw, media, meta["expect"][0], id=f"{name}-{fw}-{media}")


def imgkit(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True, text=True,
                       env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    if check and r.returncode != 0:
        raise AssertionError(f"imgkit {' '.join(args)} failed:\n{r.stderr}\n{r.stdout[-3000:]}")
    return r


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            imgkit("build", os.path.join(EXAMPLES, f"{name}.toml"), "-O", str(out), "-q")
            cache[name] = str(out)
        return cache[name]
    return get


def main_output(outdir: str) -> str:
    files = [f for f in os.listdir(outdir) if f.endswith((".img", ".iso", ".qcow2"))]
    assert len(files) == 1, files
    return os.path.join(outdir, files[0])


@pytest.mark.boot
@pytest.mark.parametrize("name,firmware,media,expect", list(bootable_examples()))
def test_example_boots(built, name, firmware, media, expect):
    image = main_output(built(name))
    args = ["run", image, "--firmware", firmware, "--expect", expect, "--timeout", "240",
            "--quiet", "--snapshot"]
    if media == "disk":
        args.append("--iso-as-disk")
    r = imgkit(*args, check=False)
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-4000:]}"


def test_example_disks_pass_the_partitioning_tools(built):
    for name in ("demo", "uefi-uki", "systemd-boot"):
        image = main_output(built(name))
        assert "No problems found" in sh("sgdisk", "-v", image)
        assert "No errors detected" in sh("sfdisk", "--verify", image)
    image = main_output(built("bios-mbr"))
    dump = sh("sfdisk", "--dump", image)
    assert "label: dos" in dump and "bootable" in dump
    assert "No errors detected" in sh("sfdisk", "--verify", image)
    with open(image, "rb") as f:
        mbr = f.read(440)
    with open("/usr/lib/syslinux/mbr/mbr.bin", "rb") as f:
        assert mbr == f.read()[:440]


def test_uki_sections_seen_by_objdump(built):
    uki = os.path.join(built("uefi-uki"), "uefi-uki.efi")
    sections = sh("objdump", "-h", uki)
    for name in (".osrel", ".cmdline", ".initrd", ".linux"):
        assert name in sections


def test_demo_builds_are_bit_identical(tmp_path):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        imgkit("build", os.path.join(EXAMPLES, "demo.toml"), "-O", str(out), "-q", "--no-cache")
        with open(out / "demo.img", "rb") as f:
            digests.append(hashlib.file_digest(f, "sha256").hexdigest())
    assert digests[0] == digests[1]


def test_demo_disk_is_sparse(built):
    image = main_output(built("demo"))
    st = os.stat(image)
    assert st.st_blocks * 512 < st.st_size * 0.6


def test_hybrid_iso_structure_seen_by_xorriso(built):
    iso = main_output(built("hybrid-iso"))
    area = sh("xorriso", "-indev", iso, "-report_system_area", "plain")
    assert "MBR isohybrid" in area and "GPT" in area
    assert "CRC wrong" not in area and "backup problems" not in area
    torito = sh("xorriso", "-indev", iso, "-report_el_torito", "plain")
    assert "BIOS  y   none" in torito and "UEFI  y   none" in torito
    assert "boot-info-table" in torito
    listing = sh("xorriso", "-indev", iso, "-find", "/", "-exec", "lsdl")
    assert "/README.txt" in listing and "/isolinux/isolinux.cfg" in listing
