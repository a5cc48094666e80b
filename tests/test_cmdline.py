"""One kernel command line for every boot path of an image (``cmdline`` at the top level,
``${cmdline}`` where a boot path writes one), checked in the files the boot loaders read."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SHARED = "console=ttyS0 root=PARTLABEL=root"

CONFIG = f"""
cmdline = "{SHARED}"
mtime = 1700000000

[uki.main]
kernel = "vmlinuz"

[uki.quiet]
kernel = "vmlinuz"
cmdline = "${{cmdline}} quiet"

[filesystems.esp]
type = "vfat"
size = "32M"
syslinux = {{ kernel = "vmlinuz", append = "${{cmdline}} loglevel=3" }}

[filesystems.esp.systemd_boot]
entries = [{{ id = "linux", title = "Linux", kernel = "vmlinuz", options = "${{cmdline}}" }}]
ukis = ["uki:main", "uki:quiet"]

[disk]
output = "disk.img"
bios = "syslinux"
partitions = [{{ name = "esp", type = "esp", size = "40M", filesystem = "esp" }}]
"""


def build(tmp_path, text):
    (tmp_path / "vmlinuz").write_bytes(b"not really a kernel\n" * 100)
    cfg = tmp_path / "image.toml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "imgkit", "build", str(cfg), "-O",
                           str(tmp_path / "out"), "--json"], capture_output=True, text=True)


def mtype(image: str, offset: int, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", f"{image}@@{offset}", f"::/{path}"], check=True,
                          capture_output=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout


def uki_cmdline(tmp_path, image: str, offset: int, path: str) -> str:
    uki = tmp_path / os.path.basename(path)
    uki.write_bytes(mtype(image, offset, path))
    out = tmp_path / (uki.name + ".cmdline")
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.cmdline", str(uki), str(out)],
                   check=True)
    return out.read_bytes().rstrip(b"\0").decode()


def test_one_command_line_reaches_every_boot_path(tmp_path):
    r = build(tmp_path, CONFIG)
    assert r.returncode == 0, r.stderr
    image = str(tmp_path / "out" / "disk.img")
    table = json.loads(subprocess.run(["sfdisk", "--json", image], check=True,
                                      capture_output=True, text=True).stdout)
    offset = table["partitiontable"]["partitions"][0]["start"] * 512
    assert f"APPEND {SHARED} loglevel=3" in mtype(image, offset, "syslinux.cfg").decode()
    entry = mtype(image, offset, "loader/entries/linux.conf").decode()
    assert f"options {SHARED}\n" in entry
    assert uki_cmdline(tmp_path, image, offset, "EFI/Linux/main.efi") == SHARED
    assert uki_cmdline(tmp_path, image, offset, "EFI/Linux/quiet.efi") == SHARED + " quiet"


@pytest.mark.parametrize("edit, message", [
    (('append = "${cmdline} loglevel=3"', 'append = "${nope}"'), "unknown substitution ${nope}"),
    (('cmdline = "${cmdline} quiet"', 'cmdline = "${kernel}"'), "unknown substitution ${kernel}"),
    ((f'cmdline = "{SHARED}"', 'cmdline = "${cmdline}"'), "takes no ${...}"),
])
def test_unknown_substitutions_are_one_error_line(tmp_path, edit, message):
    r = build(tmp_path, CONFIG.replace(*edit, 1))
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("imgkit: error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "disk.img").exists()
