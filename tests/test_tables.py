"""A filesystem type and a boot path added through the two tables alone, then built into a
disk by the unchanged driver and config, and checked by tar, sfdisk and mtools."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass

import pytest
from conftest import sh

from imgkit import filesystems
from imgkit.bootloaders import table as boot
from imgkit.build import build
from imgkit.config import load_config, reference_markdown
from imgkit.errors import InputError
from imgkit.settings import INT, STR, setting
from imgkit.tree import BytesBlob, Entry, Kind, Tree

MARKER = b"TABLES-TEST-BOOT-CODE"


@dataclass(frozen=True)
class TarOptions:
    block_factor: int = setting(INT, 20, choices=(1, 20), help="tar records of N blocks")


class TarFs(filesystems.FilesystemType):
    """A partition holding a ustar archive of the tree, written in place at its offset by the
    standard library's tarfile (so tar, not imgkit, judges the result)."""

    name = "test-tar"
    options = TarOptions
    in_place = True

    def _members(self, tree: Tree):
        for e in tree:
            if e.kind in (Kind.FILE, Kind.DIR) and e.path:
                info = tarfile.TarInfo(e.path)
                info.type = tarfile.DIRTYPE if e.kind is Kind.DIR else tarfile.REGTYPE
                info.mode, info.mtime, info.size = e.mode, e.mtime, e.size
                yield info, e

    def min_size(self, tree, fs, ctx, *, free=0):
        record = 512 * fs.options.block_factor
        payload = sum(512 + -(-info.size // 512) * 512 for info, _ in self._members(tree)) + 1024
        return -(-(payload + free) // record) * record

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        with open(path, "r+b" if offset else "wb") as f:
            f.seek(offset)
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT,
                              bufsize=512 * fs.options.block_factor) as tar:
                for info, e in self._members(tree):
                    if info.isfile():
                        with e.data.open() as data:
                            tar.addfile(info, data)
                    else:
                        tar.addfile(info)
            return f.tell() - offset


@dataclass(frozen=True)
class MarkerOptions:
    text: str = setting(STR, help="what goes into the MBR boot code area and marker.txt")


INSTALLS: list[int] = []


class MarkerBoot(boot.BootPath):
    """A BIOS boot path that writes a marker as MBR boot code, puts a file on its ESP and
    records where its install step was told the partition starts."""

    name = "test-marker"
    firmware = "bios"
    options = MarkerOptions
    fs_types = ("vfat",)
    on_disk = True
    bootable_holder = True

    def fs_files(self, options, ctx, where):
        tree = Tree(default_mtime=ctx.mtime or 0)
        tree.add(Entry("marker.txt", Kind.FILE, data=BytesBlob(options.text.encode())))
        return tree

    def disk_regions(self, options, table, plan, holder, ctx):
        return boot.DiskBoot(boot_code=MARKER + options.text.encode())

    def install(self, options, disk, holder, ctx):
        INSTALLS.append(holder.start)


@pytest.fixture
def registered():
    fs = filesystems.register(TarFs())
    bp = boot.register(MarkerBoot())
    INSTALLS.clear()
    try:
        yield fs, bp
    finally:
        filesystems.unregister(fs.name)
        boot.unregister(bp.name)


CONFIG = """
[trees.data]
entries = ["dir /etc 0755 0 0"]
files = { "/etc/hello" = "hello.txt" }

[filesystems.esp]
type = "vfat"
label = "ESP"
test-marker = { text = "booted by a table entry" }

[filesystems.data]
type = "test-tar"
tree = "data"
block_factor = 1

[disk]
output = "t.img"
bios = "test-marker"
partitions = [
  { name = "esp", type = "esp", size = "8M", filesystem = "esp" },
  { name = "data", type = "linux", size = "auto", filesystem = "data" },
]
"""


def test_a_registered_type_and_boot_path_build_a_disk(tmp_path, registered):
    (tmp_path / "hello.txt").write_text("hello from a tar partition\n")
    (tmp_path / "t.toml").write_text(CONFIG)
    build(load_config(str(tmp_path / "t.toml")), str(tmp_path / "out"), mtime=1700000000)
    image = str(tmp_path / "out" / "t.img")

    assert "No problems found" in sh("sgdisk", "-v", image)
    parts = json.loads(sh("sfdisk", "--json", image))["partitiontable"]["partitions"]
    esp, data = parts
    assert "LegacyBIOSBootable" in esp.get("attrs", "")  # the boot path's holder is bootable
    assert "LegacyBIOSBootable" not in data.get("attrs", "")
    assert INSTALLS == [esp["start"] * 512]

    with open(image, "rb") as f:
        code = f.read(440)
        f.seek(esp["start"] * 512)
        (tmp_path / "esp.img").write_bytes(f.read(esp["size"] * 512))
        f.seek(data["start"] * 512)
        tar_bytes = f.read(data["size"] * 512)
    assert code.startswith(MARKER + b"booted by a table entry")

    esp_at = f"{image}@@{esp['start'] * 512}"
    assert sh("mtype", "-i", esp_at, "::marker.txt") == "booted by a table entry"
    sh("fsck.vfat", "-n", str(tmp_path / "esp.img"))
    listing = sh("tar", "-tvf", "-", input=tar_bytes)
    assert "etc/hello" in listing and "etc/" in listing
    assert sh("tar", "-xOf", "-", "etc/hello", input=tar_bytes) == "hello from a tar partition\n"


def test_the_reference_lists_the_registered_keys(registered):
    text = reference_markdown()
    assert '(type = "test-tar") | `block_factor` | int | `20` | `1`, `20` |' in text
    assert "`[filesystems.NAME.test-marker]`" in text and '`"test-marker"`' in text


def test_registered_options_are_validated(tmp_path, registered):
    (tmp_path / "t.toml").write_text("[filesystems.d]\ntype = 'test-tar'\nblock_factor = 7\n")
    with pytest.raises(InputError, match=r"filesystems\.d\.block_factor: expected one of 1, 20, got 7"):
        load_config(str(tmp_path / "t.toml"))
    (tmp_path / "t.toml").write_text("[filesystems.d]\ntype = 'ext4'\nblock_factor = 1\n")
    with pytest.raises(InputError, match=r"unknown key 'block_factor' in \[filesystems\.d\]"):
        load_config(str(tmp_path / "t.toml"))
    (tmp_path / "t.toml").write_text("[filesystems.d]\ntype = 'ext4'\ntest-marker = { text = 'x' }\n")
    with pytest.raises(InputError, match=r"test-marker boot path needs a filesystem of type vfat"):
        load_config(str(tmp_path / "t.toml"))


@pytest.mark.parametrize("body,message,hint", [
    ("[filesystems.d]\ntype = 'test-tar'\n",
     r"filesystems\.d\.type: expected one of vfat, ext4, iso9660, squashfs, erofs, got 'test-tar'",
     "allowed: vfat, ext4, iso9660, squashfs, erofs"),
    ("[disk]\noutput = 'd.img'\nbios = 'test-marker'\n",
     r"disk\.bios: expected one of syslinux, grub, got 'test-marker'", "allowed: syslinux, grub"),
    ("[iso]\noutput = 'd.iso'\nbios = { loader = 'test-marker' }\n",
     r"iso\.bios: expected one of isolinux, grub, got 'test-marker'", "allowed: isolinux, grub"),
    ("[filesystems.esp]\ntype = 'vfat'\ntest-marker = { text = 'x' }\n",
     r"unknown key 'test-marker' in \[filesystems\.esp\]", "syslinux, systemd_boot, tree, type, uki"),
])
def test_unregistered_names_are_rejected_listing_the_registered_ones(tmp_path, body, message, hint):
    (tmp_path / "t.toml").write_text(body)
    with pytest.raises(InputError, match=message) as info:
        load_config(str(tmp_path / "t.toml"))
    assert str(tmp_path / "t.toml") in str(info.value)
    assert hint in (info.value.hint or "")


def test_loading_a_config_imports_no_format_backend():
    code = ("import sys, imgkit.config, imgkit.filesystems, imgkit.bootloaders.table; "
            "print(sorted(m for m in ('construct', 'pycdlib', 'libarchive') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_config_imports_only_the_types_and_boot_paths_it_names(tmp_path):
    (tmp_path / "t.toml").write_text("[filesystems.esp]\ntype = 'vfat'\n"
                                     "syslinux = { append = 'quiet' }\n")
    code = ("import sys; from imgkit.config import load_config; "
            f"load_config({str(tmp_path / 't.toml')!r}); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith("
            "('imgkit.fstypes.', 'imgkit.bootloaders.')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["imgkit.bootloaders.syslinux", "imgkit.bootloaders.table",
                                  "imgkit.fstypes.vfat"]


def test_every_built_in_entry_loads_and_states_what_its_table_lists():
    for name in filesystems.names():
        assert filesystems.get(name).name == name
    for name in boot.names():
        assert boot.get(name).name == name
    drifted = boot.LazyPath("syslinux", "imgkit.bootloaders.syslinux:Syslinux", firmware="uefi",
                            fs_types=("vfat",), on_disk=True)
    with pytest.raises(RuntimeError, match=r"firmware='bios' but the table lists firmware='uefi'"):
        drifted.load()
