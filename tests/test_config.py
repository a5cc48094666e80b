"""The config: one settings table drives parsing, the errors and the README's reference."""
from __future__ import annotations

import os
import re

import pytest

from imgkit.bootloaders.syslinux import SyslinuxConfig
from imgkit.bootloaders.table import BootChoice
from imgkit.config import load_config, reference_markdown
from imgkit.errors import InputError

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_reference_is_the_generated_one():
    with open(README) as f:
        text = f.read()
    m = re.search(r"<!-- config-reference:begin -->\n(.*?)<!-- config-reference:end -->", text, re.S)
    assert m, "README lacks the config-reference block"
    assert m[1] == reference_markdown(), \
        "README config reference is stale: paste `python -m imgkit.config --reference` into it"


def load(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(str(path))


@pytest.mark.parametrize("body,message,hint", [
    ("[disk]\noutput = 'd.img'\nformat = 'vdi'\n",
     r"c\.toml: disk\.format: expected one of raw, qcow2, vmdk, vhdx, vpc, android-sparse, "
     r"got 'vdi'", "allowed: raw, qcow2"),
    ("[initramfs.i]\ntree = 't'\ncompress = 'bzip2'\n[trees.t]\n",
     r"initramfs\.i\.compress: expected one of none, gzip, xz, zstd, lz4", "allowed: none"),
    ("[trees.t]\nhost_owners = 1\n", r"trees\.t\.host_owners: expected bool, got int 1", None),
    ("[kernel]\nsorce = 'host'\n", r"unknown key 'sorce' in \[kernel\]", "moddir, package, path, source"),
    ("[disk]\noutput = 'd.img'\npartitions = [{ name = 'a', sise = '1M' }]\n",
     r"unknown key 'sise' in \[disk\.partitions\[0\]\]", "keys allowed there"),
    ("[filesystems.e]\ntype = 'vfat'\nsyslinux = { kernal = 'x' }\n",
     r"unknown key 'kernal' in \[filesystems\.e\.syslinux\]", "append, initrd, kernel"),
    ("[filesystems.e]\ntype = 'ext4'\nfat_type = 32\n",
     r"unknown key 'fat_type' in \[filesystems\.e\] \(type 'ext4'\)", "uuid"),
    ("[filesystems.e]\ntype = 'ext4'\nsyslinux = {}\n",
     r"filesystems\.e\.syslinux: the syslinux boot path needs a filesystem of type vfat", None),
    ("[iso]\noutput = 'x.iso'\nbios = 'syslinux'\n", r"iso\.bios: expected one of isolinux", None),
    ("[iso]\nvolume_id = 'X'\n", r"\[iso\] needs the key 'output'", None),
])
def test_errors_name_file_table_and_key(tmp_path, body, message, hint):
    with pytest.raises(InputError, match=message) as info:
        load(tmp_path, body)
    if hint:
        assert hint in (info.value.hint or ""), info.value.hint


def test_todays_syntax_and_its_meaning(tmp_path):
    cfg = load(tmp_path, """
[filesystems.esp]
type = "vfat"
fat_type = 32
syslinux = { initrd = "initramfs:main", append = "quiet" }
[disk]
output = "d.img"
bios = "syslinux"
[iso]
output = "x.iso"
bios = { kernel = "vmlinuz", append = "console=ttyS0" }
efi = "uki:main"
""")
    esp = cfg.filesystems["esp"]
    assert esp.options.fat_type == 32 and esp.options.uuid is None
    assert esp.boot == {"syslinux": SyslinuxConfig(kernel="kernel", initrd="initramfs:main", append="quiet")}
    assert cfg.disk.bios == "syslinux" and cfg.disk.table == "gpt" and cfg.disk.format == "raw"
    assert cfg.iso.bios == BootChoice("isolinux", SyslinuxConfig(
        kernel=str(tmp_path / "vmlinuz"), initrd=None, append="console=ttyS0"))
    assert cfg.iso.efi.path == "uki" and cfg.iso.efi.options.binary == "uki:main"


def test_a_boot_path_can_be_named_for_an_iso_entry(tmp_path):
    cfg = load(tmp_path, "[iso]\noutput = 'x.iso'\nefi = { loader = 'uki', binary = 'BOOTX64.EFI' }\n")
    assert cfg.iso.efi.options.binary == str(tmp_path / "BOOTX64.EFI")
