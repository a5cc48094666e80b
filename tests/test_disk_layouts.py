"""Disk layouts from the config: prebuilt images in partitions, raw regions outside the table,
per-partition alignment, hybrid MBR types, and keys the table cannot hold refused.

Every layout is read back by sfdisk, sgdisk, fdisk, e2fsck or debugfs; where genimage can
express the same layout, both tools build it and their sanitized ``sfdisk -d`` dumps must be
identical.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import sh

SBIN = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def tool(name: str) -> str:
    path = shutil.which(name, path=SBIN)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def build(tmp_path, text: str):
    cfg = tmp_path / "image.toml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "imgkit", "build", str(cfg), "-O",
                           str(tmp_path / "out"), "--mtime", "1700000000"],
                          capture_output=True, text=True)


def built(tmp_path, text: str, name: str = "disk.img") -> str:
    r = build(tmp_path, text)
    assert r.returncode == 0, r.stderr
    return str(tmp_path / "out" / name)


def assert_refused(tmp_path, text: str, *needles: str) -> str:
    r = build(tmp_path, text)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("imgkit: error: ") and "Traceback" not in r.stderr, r.stderr
    first = r.stderr.splitlines()[0]
    for needle in needles:
        assert needle in first, first
    out = tmp_path / "out"
    assert not out.exists() or not [n for n in os.listdir(out)], os.listdir(out)
    return first


def sfdisk_parts(image: str) -> list[dict]:
    return json.loads(sh(tool("sfdisk"), "--json", image))["partitiontable"]["partitions"]


def ext4_image(tmp_path, name: str = "rootfs.ext4", size_mb: int = 8) -> str:
    """A real ext4 made by mke2fs from a directory (sparse: most of it is holes)."""
    src = tmp_path / "rootfs-src"
    (src / "etc").mkdir(parents=True, exist_ok=True)
    (src / "etc" / "hostname").write_text("board\n")
    path = tmp_path / name
    sh(tool("mke2fs"), "-q", "-F", "-t", "ext4", "-d", str(src), "-E", "root_owner=0:0",
       str(path), f"{size_mb}M")
    return str(path)


def extract(image: str, part: dict, dest) -> str:
    with open(image, "rb") as src, open(dest, "wb") as out:
        src.seek(part["start"] * 512)
        out.write(src.read(part["size"] * 512))
    return str(dest)


# -- keys the table cannot hold ---------------------------------------------------------------
@pytest.mark.parametrize("disk,part,needles", [
    ("table = 'mbr'\nguid = '11111111-2222-3333-4444-555555555555'", "",
     ("image.toml: disk.guid:", "only on GPT", "table is 'mbr'")),
    ("table = 'gpt'\nsignature = 0x12345678", "",
     ("image.toml: disk.signature:", "GPT disk has no MBR disk signature", "table is 'gpt'")),
    ("table = 'mbr'\nhybrid_mbr = ['a']", "",
     ("image.toml: disk.hybrid_mbr:", "only on GPT")),
    ("table = 'mbr'", ", guid = '11111111-2222-3333-4444-555555555555'",
     ("disk.partitions[0] ('a').guid: applies to GPT disks only", "table is 'mbr'")),
    ("table = 'mbr'", ", attributes = ['read-only']",
     ("disk.partitions[0] ('a').attributes: applies to GPT disks only",)),
    ("table = 'gpt'", ", logical = true",
     ("disk.partitions[0] ('a').logical: applies to MBR disks only", "table is 'gpt'")),
    ("table = 'gpt'", ", mbr_type = '0x83'",
     ("disk.partitions[0] ('a').mbr_type:", "not in disk.hybrid_mbr")),
    ("table = 'mbr'", ", mbr_type = '0x83'",
     ("disk.partitions[0] ('a').mbr_type:", "table is 'mbr'")),
    ("table = 'gpt'\nhybrid_mbr = ['b']", "",
     ("disk.hybrid_mbr names partition 'b', which the disk does not have",)),
    ("table = 'gpt'", ", image = 'x.bin', filesystem = 'f'",
     ("disk.partitions[0] ('a'): give filesystem or image, not both",)),
    ("table = 'gpt'", ", image_offset = '4K'",
     ("disk.partitions[0] ('a').image_offset: there is no image",)),
])
def test_keys_the_table_cannot_hold_are_errors(tmp_path, disk, part, needles):
    (tmp_path / "x.bin").write_bytes(b"x")
    assert_refused(tmp_path, f"""
[filesystems.f]
type = "vfat"
[disk]
output = "disk.img"
{disk}
partitions = [{{ name = "a", size = "1M"{part} }}]
""", *needles)


def test_signature_with_a_hybrid_mbr_is_written(tmp_path):
    image = built(tmp_path, """
[disk]
output = "disk.img"
signature = 0x12345678
hybrid_mbr = ["a"]
partitions = [{ name = "a", type = "linux", size = "1M" }]
""")
    assert "Disk identifier: 0x12345678" in sh(tool("fdisk"), "-t", "dos", "-l", image)
    assert "No problems found" in sh(tool("sgdisk"), "-v", image)


# -- prebuilt images in partitions ------------------------------------------------------------
def test_prebuilt_ext4_in_a_partition_keeps_its_holes(tmp_path):
    ext4_image(tmp_path, size_mb=64)
    image = built(tmp_path, """
[disk]
output = "disk.img"
partitions = [
  { name = "rootfs", type = "linux", image = "rootfs.ext4" },
  { name = "data", type = "linux", size = "1M" },
]
""")
    assert "No problems found" in sh(tool("sgdisk"), "-v", image)
    parts = sfdisk_parts(image)
    assert parts[0]["size"] * 512 == 64 << 20          # 'auto': the file's size, aligned
    part = extract(image, parts[0], tmp_path / "p.ext4")
    sh(tool("e2fsck"), "-fn", part)
    assert sh(tool("debugfs"), "-R", "cat /etc/hostname", part).strip() == "board"
    # Holes kept: the 64 MiB filesystem takes a small part of that on disk.
    assert os.stat(image).st_blocks * 512 < 16 << 20


def test_partition_image_from_a_reference_and_at_an_offset(tmp_path):
    (tmp_path / "hello.txt").write_text("hello\n")
    image = built(tmp_path, """
[trees.data]
files = { "/hello" = "hello.txt" }
[filesystems.root]
type = "ext4"
tree = "data"
size = "4M"
[disk]
output = "disk.img"
table = "mbr"
partitions = [
  { name = "root", type = "linux", size = "8M", image = "fs:root", image_offset = "1M" },
]
""")
    parts = sfdisk_parts(image)
    assert parts[0]["size"] * 512 == 8 << 20
    fs = tmp_path / "fs.ext4"
    with open(image, "rb") as src, open(fs, "wb") as out:
        src.seek(parts[0]["start"] * 512 + (1 << 20))
        out.write(src.read(4 << 20))
    sh(tool("e2fsck"), "-fn", str(fs))
    assert sh(tool("debugfs"), "-R", "cat /hello", str(fs)) == "hello\n"


def test_prebuilt_image_larger_than_its_partition_is_an_error(tmp_path):
    ext4_image(tmp_path, size_mb=8)
    first = assert_refused(tmp_path, """
[disk]
output = "disk.img"
partitions = [{ name = "rootfs", type = "linux", size = "4M", image = "rootfs.ext4" }]
""", "partition 'rootfs'", "rootfs.ext4", "(8388608 bytes)", "(4194304 bytes)")
    assert "holds only" in first


def test_missing_prebuilt_image_is_an_error(tmp_path):
    assert_refused(tmp_path, """
[disk]
output = "disk.img"
partitions = [{ name = "rootfs", size = "4M", image = "nowhere.ext4" }]
""", "partition 'rootfs' image", "does not exist")


# -- raw regions outside the table ------------------------------------------------------------
def test_regions_at_fixed_offsets_on_an_mbr_disk(tmp_path):
    spl = os.urandom(20_000)
    env = os.urandom(8192)
    (tmp_path / "spl.bin").write_bytes(spl)
    (tmp_path / "env.bin").write_bytes(env)
    image = built(tmp_path, """
[disk]
output = "disk.img"
table = "mbr"
regions = [
  { name = "spl", offset = "8K", image = "spl.bin" },
  { name = "env", offset = "1M", size = "64K", image = "env.bin" },
]
partitions = [
  { name = "boot", type = "fat32", size = "4M" },
  { name = "root", type = "linux", size = "4M" },
]
""")
    with open(image, "rb") as f:
        data = f.read()
    assert data[8192:8192 + len(spl)] == spl
    assert data[1 << 20:(1 << 20) + len(env)] == env
    parts = sfdisk_parts(image)
    # The first partition is placed after the env region, on the next 1 MiB boundary.
    assert parts[0]["start"] * 512 == 2 << 20
    assert "No errors detected" in sh(tool("sfdisk"), "--verify", image)


def test_region_over_the_gpt_entry_array_is_an_error(tmp_path):
    (tmp_path / "spl.bin").write_bytes(b"\x01" * 4096)
    assert_refused(tmp_path, """
[disk]
output = "disk.img"
regions = [{ name = "spl", offset = "8K", image = "spl.bin" }]
partitions = [{ name = "a", size = "1M" }]
""", "region 'spl' [8192, 12288)", "overlaps the protective MBR, GPT header and entry array")


def test_region_over_a_partition_is_an_error(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x01" * 4096)
    assert_refused(tmp_path, """
[disk]
output = "disk.img"
table = "mbr"
regions = [{ name = "blob", offset = "1M", image = "blob.bin" }]
partitions = [{ name = "a", size = "1M", offset = "1M" }]
""", "partition 'a'", "region 'blob'", "overlaps")


def test_region_file_larger_than_its_size_is_an_error(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x01" * 5000)
    assert_refused(tmp_path, """
[disk]
output = "disk.img"
table = "mbr"
regions = [{ name = "blob", offset = "4K", size = "4K", image = "blob.bin" }]
partitions = [{ name = "a", size = "1M" }]
""", "disk.regions ('blob')", "5,000 bytes", "size is 4,096")


# -- alignment and hybrid MBR types -----------------------------------------------------------
def test_per_partition_alignment(tmp_path):
    image = built(tmp_path, """
[disk]
output = "disk.img"
table = "mbr"
partitions = [
  { name = "a", type = "linux", size = "12K", align = "4K", offset = "4K" },
  { name = "b", type = "linux", size = "100K", align = "4K" },
  { name = "c", type = "linux", size = "1M" },
]
""")
    starts = [p["start"] * 512 for p in sfdisk_parts(image)]
    assert starts == [4096, 16384, 1 << 20]


def test_hybrid_mbr_takes_an_explicit_mbr_type(tmp_path):
    image = built(tmp_path, """
[disk]
output = "disk.img"
hybrid_mbr = ["root", "esp"]
partitions = [
  { name = "esp", type = "esp", size = "1M" },
  { name = "root", type = "root-x86-64", size = "1M", mbr_type = "0x83" },
]
""")
    assert "No problems found" in sh(tool("sgdisk"), "-v", image)
    dos = sh(tool("fdisk"), "-t", "dos", "-l", image)
    rows = [row for row in dos.splitlines() if row.startswith(image)]
    assert re.search(r"\s83\s+Linux$", rows[-1]), dos
    assert re.search(r"\see\s+GPT$", rows[0]) and re.search(r"\sef\s+EFI", rows[1]), dos


# -- genimage side by side --------------------------------------------------------------------
def _sanitized_dump(image: str) -> str:
    """``sfdisk -d`` without what differs by construction: the device name, random IDs."""
    text = sh(tool("sfdisk"), "-d", image)
    text = text.replace(image, "IMAGE")
    text = re.sub(r"^label-id: .*\n", "", text, flags=re.M)
    text = re.sub(r", uuid=[0-9A-F-]+", "", text)
    text = re.sub(r'^(device|first-lba|last-lba|sector-size): .*\n', "", text, flags=re.M)
    return text


@pytest.mark.skipif(shutil.which("genimage") is None, reason="genimage not installed")
def test_prebuilt_images_match_genimage(tmp_path):
    ext4_image(tmp_path, size_mb=6)
    (tmp_path / "spl.bin").write_bytes(os.urandom(3000))
    image = built(tmp_path, """
[disk]
output = "disk.img"
table = "mbr"
regions = [{ name = "spl", offset = "1K", image = "spl.bin" }]
partitions = [
  { name = "boot", type = "fat32", size = "4M", offset = "1M" },
  { name = "rootfs", type = "linux", image = "rootfs.ext4" },
]
""")
    (tmp_path / "boot.vfat").write_bytes(b"")
    gen = tmp_path / "genimage.cfg"
    gen.write_text("""
image gen.img {
  hdimage { partition-table-type = "mbr" }
  partition spl { image = "spl.bin" offset = 1K in-partition-table = false }
  partition boot { partition-type = 0xc offset = 1M size = 4M }
  partition rootfs { partition-type = 0x83 image = "rootfs.ext4" }
}
""")
    for d in ("gtmp", "gout", "groot"):
        (tmp_path / d).mkdir()
    sh("genimage", "--config", str(gen), "--inputpath", str(tmp_path), "--outputpath",
       str(tmp_path / "gout"), "--tmppath", str(tmp_path / "gtmp" / "t"),
       "--rootpath", str(tmp_path / "groot"))
    theirs = str(tmp_path / "gout" / "gen.img")
    assert _sanitized_dump(image).replace("IMAGE", "X") == \
        _sanitized_dump(theirs).replace("IMAGE", "X")
    with open(image, "rb") as a, open(theirs, "rb") as b:
        ours, gens = a.read(), b.read()
    assert ours[1024:4024] == gens[1024:4024]
    p = sfdisk_parts(image)[1]
    lo, hi = p["start"] * 512, p["start"] * 512 + (6 << 20)
    assert ours[lo:hi] == gens[lo:hi]


# -- a shaped GPT -----------------------------------------------------------------------------
def genimage_build(tmp_path, config: str) -> str:
    """Run Debian's genimage on ``config`` (inputs from tmp_path); the image it wrote."""
    tool("genimage")
    gen = tmp_path / "genimage.cfg"
    gen.write_text(config)
    for d in ("gout", "groot"):
        (tmp_path / d).mkdir(exist_ok=True)
    sh("genimage", "--config", str(gen), "--inputpath", str(tmp_path), "--outputpath",
       str(tmp_path / "gout"), "--tmppath", str(tmp_path / "gtmp"),
       "--rootpath", str(tmp_path / "groot"))
    return str(tmp_path / "gout" / "gen.img")


def same_table(ours: str, theirs: str) -> None:
    assert _sanitized_dump(ours).replace("IMAGE", "X") == \
        _sanitized_dump(theirs).replace("IMAGE", "X")


def gpt_header(image: str) -> dict:
    """The primary GPT header's fields, unpacked here with struct (not our construct)."""
    import struct
    with open(image, "rb") as f:
        f.seek(512)
        raw = f.read(92)
    names = ("signature", "revision", "header_size", "crc", "reserved", "my_lba", "alternate_lba",
             "first_usable_lba", "last_usable_lba", "disk_guid", "entries_lba", "num_entries",
             "entry_size", "entries_crc")
    return dict(zip(names, struct.unpack("<8sIIIIQQQQ16sQIII", raw), strict=True))


_SHAPED = """
[disk]
output = "disk.img"
size = "16M"
gpt_entries_offset = "1M"
{extra}
regions = [{{ name = "spl", offset = "8K", image = "spl.bin" }}]
partitions = [
  {{ name = "boot", type = "linux", size = "4M", offset = "2M" }},
  {{ name = "root", type = "linux", size = "4M" }},
]
"""
_SHAPED_GENIMAGE = """
image gen.img {{
  size = 16M
  hdimage {{ partition-table-type = "gpt" gpt-location = 1M {extra} }}
  partition spl {{ image = "spl.bin" offset = 8K in-partition-table = false }}
  partition boot {{ partition-type-uuid = "L" offset = 2M size = 4M }}
  partition root {{ partition-type-uuid = "L" size = 4M }}
}}
"""


def test_gpt_entry_array_moved_leaves_room_for_a_bootloader_at_8k(tmp_path):
    spl = os.urandom(20 * 1024)          # LBA 16-55: where a default entry array would be
    (tmp_path / "spl.bin").write_bytes(spl)
    image = built(tmp_path, _SHAPED.format(extra=""))
    assert "No problems found" in sh(tool("sgdisk"), "-v", image)
    assert "No errors detected" in sh(tool("sfdisk"), "--verify", image)
    header = gpt_header(image)
    assert (header["entries_lba"], header["num_entries"]) == (2048, 128)
    assert header["first_usable_lba"] == 2048 + 32
    with open(image, "rb") as f:
        f.seek(8192)
        assert f.read(len(spl)) == spl
    fdisk = sh(tool("fdisk"), "-l", image)
    assert re.search(r"disk\.img1\s+4096\s+12287\s+8192\s+4M Linux filesystem", fdisk), fdisk
    # imgkit's own reader follows the header to the moved array.
    info = json.loads(sh(sys.executable, "-m", "imgkit", "inspect", "--json", image))
    table = info.get("table", info)
    assert table["entries_lba"] == 2048 and [p["name"] for p in table["partitions"]] == \
        ["boot", "root"]
    if shutil.which("genimage"):
        same_table(image, genimage_build(tmp_path, _SHAPED_GENIMAGE.format(extra="")))


def test_gpt_without_backup_matches_genimage_and_warns(tmp_path):
    (tmp_path / "spl.bin").write_bytes(os.urandom(4096))
    r = build(tmp_path, _SHAPED.format(extra="gpt_backup = false"))
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "no backup GPT" in r.stderr
    image = str(tmp_path / "out" / "disk.img")
    with open(image, "rb") as f:
        f.seek(-33 * 512, 2)
        assert not any(f.read())           # nothing written where the backup would be
    verify = sh(tool("sgdisk"), "-v", image)
    assert "Identified 1 problems" in verify and "backup partition table" in verify, verify
    dump = subprocess.run([tool("sfdisk"), "-d", image], capture_output=True, text=True)
    assert "primary appears OK" in dump.stderr and 'name="root"' in dump.stdout
    if shutil.which("genimage"):
        # genimage needs fill to write a table past the last partition image.
        same_table(image, genimage_build(
            tmp_path, _SHAPED_GENIMAGE.format(extra="gpt-no-backup = true fill = true")))


def test_gpt_entry_count_and_first_usable_lba(tmp_path):
    image = built(tmp_path, """
[disk]
output = "disk.img"
gpt_entries = 4
gpt_first_lba = 2048
partitions = [
  { name = "a", type = "linux", size = "1M" },
  { name = "b", type = "swap", size = "1M" },
]
""")
    verify = sh(tool("sgdisk"), "-v", image)
    assert "No problems found" in verify and "(512 bytes) is less than the minimum" in verify
    table = json.loads(sh(tool("sfdisk"), "--json", image))["partitiontable"]
    assert table["firstlba"] == 2048
    assert "Using 2 out of 4 partitions" in sh(tool("sfdisk"), "--verify", image)
    header = gpt_header(image)
    assert (header["entries_lba"], header["num_entries"], header["first_usable_lba"]) == \
        (2, 4, 2048)
    # The backup array is one sector: the header sits right after it, at the end.
    assert header["alternate_lba"] == os.path.getsize(image) // 512 - 1
    assert header["last_usable_lba"] == header["alternate_lba"] - 2


@pytest.mark.parametrize("disk,needles", [
    ('gpt_entries_offset = "1M"\nregions = [{ name = "spl", offset = "1032K", image = "x.bin" }]',
     ("region 'spl' [1056768, 1057768)", "overlaps the GPT entry array at LBA 2048")),
    ('regions = [{ name = "spl", offset = "8K", image = "x.bin" }]',
     ("region 'spl'", "overlaps the protective MBR, GPT header and entry array")),
    ('gpt_first_lba = 20', ("first usable LBA 20 lies inside the entry array (LBA 2-33)",)),
    ('gpt_entries = 1', ("a GPT with gpt_entries = 1 holds at most 1 partitions, got 2",)),
    ('gpt_entries_offset = "1000"', ("GPT entry array offset 1000 is not a multiple",)),
    ('gpt_entries_offset = "512"', ("GPT entry array at LBA 1: expected LBA 2 or later",)),
    ('gpt_entries_offset = "4K"\npartitions = [{ name = "a", size = "1M", offset = "4K" }]',
     ("partition 'a'", "does not fit")),
    ('table = "mbr"\ngpt_entries = 16', ("disk.gpt_entries: shapes a GPT", "table is 'mbr'")),
    ('table = "mbr"\ngpt_backup = false', ("disk.gpt_backup: shapes a GPT",)),
    ('auto_logical = true', ("disk.auto_logical: makes MBR logical partitions",)),
    ('hybrid_ee = "last"', ("disk.hybrid_ee:", "no disk.hybrid_mbr")),
    ('hybrid_ee = "middle"', ("disk.hybrid_ee: expected one of first, last",)),
    ('gpt_entries = 0', ("GPT entry count: expected 1..65535, got 0",)),
    ('gpt_first_lba = "2048"', ("disk.gpt_first_lba: expected int",)),
    ('size_align = "1000"', ("disk size alignment: expected a positive multiple of the "
                             "512-byte sector, got 1000",)),
])
def test_gpt_shape_errors(tmp_path, disk, needles):
    (tmp_path / "x.bin").write_bytes(b"\x01" * 1000)
    parts = "" if "partitions" in disk else \
        'partitions = [{ name = "a", size = "1M" }, { name = "b", size = "1M" }]'
    assert_refused(tmp_path, f'[disk]\noutput = "disk.img"\n{disk}\n{parts}\n', *needles)


# -- a disk without a partition table ---------------------------------------------------------
def test_tableless_disk_holds_images_at_their_offsets(tmp_path):
    uboot = os.urandom(70_000)
    (tmp_path / "uboot.bin").write_bytes(uboot)
    ext4_image(tmp_path, size_mb=4)
    image = built(tmp_path, """
[disk]
output = "flash.img"
table = "none"
size_align = "4K"
partitions = [
  { name = "uboot", image = "uboot.bin", offset = "32K", size = "512K" },
  { name = "env", image = "uboot.bin", size = "128K", align = "64K" },
  { name = "rootfs", image = "rootfs.ext4", offset = "1M" },
]
""", "flash.img")
    assert os.path.getsize(image) == (1 << 20) + (4 << 20)
    r = subprocess.run([tool("sfdisk"), "-d", image], capture_output=True, text=True)
    assert r.returncode != 0 and "does not contain a recognized partition table" in r.stderr
    with open(image, "rb") as f:
        assert not any(f.read(32768))           # nothing before the first image: no MBR
    # cmp the regions: uboot at 32 KiB, env after it on the next 64 KiB boundary (576 KiB).
    for offset in (32768, 589824):
        sh("cmp", "-n", str(len(uboot)), "-i", f"{offset}:0", image, str(tmp_path / "uboot.bin"))
    part = extract(image, {"start": 2048, "size": 8192}, tmp_path / "p.ext4")
    sh(tool("e2fsck"), "-fn", part)
    assert sh(tool("debugfs"), "-R", "cat /etc/hostname", part).strip() == "board"


def test_tableless_disk_with_a_filesystem_from_the_config(tmp_path):
    (tmp_path / "hello.txt").write_text("hello\n")
    image = built(tmp_path, """
[trees.data]
files = { "/hello" = "hello.txt" }
[filesystems.root]
type = "ext4"
tree = "data"
size = "4M"
[disk]
output = "flash.img"
table = "none"
partitions = [{ name = "root", filesystem = "root", offset = "64K" }]
""", "flash.img")
    part = extract(image, {"start": 128, "size": 8192}, tmp_path / "p.ext4")
    sh(tool("e2fsck"), "-fn", part)
    assert sh(tool("debugfs"), "-R", "cat /hello", part) == "hello\n"


@pytest.mark.parametrize("disk,part,key", [
    ("guid = '11111111-2222-3333-4444-555555555555'", "", "disk.guid"),
    ("signature = 1", "", "disk.signature"),
    ("hybrid_mbr = ['a']", "", "disk.hybrid_mbr"),
    ("gpt_entries = 8", "", "disk.gpt_entries"),
    ("", ", type = 'esp'", "disk.partitions[0] ('a').type"),
    ("", ", bootable = true", "disk.partitions[0] ('a').bootable"),
    ("", ", attributes = ['read-only']", "disk.partitions[0] ('a').attributes"),
    ("", ", guid = '11111111-2222-3333-4444-555555555555'", "disk.partitions[0] ('a').guid"),
    ("", ", logical = true", "disk.partitions[0] ('a').logical"),
    ("", ", mbr_type = '0x83'", "disk.partitions[0] ('a').mbr_type"),
])
def test_tableless_disk_refuses_table_keys(tmp_path, disk, part, key):
    first = assert_refused(tmp_path, f"""
[disk]
output = "flash.img"
table = "none"
{disk}
partitions = [{{ name = "a", size = "1M"{part} }}]
""", f"image.toml: {key}:", "table is 'none'")
    assert "needs a partition table" in first or "shapes a GPT" in first


def test_tableless_overlap_is_an_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"x" * 100)
    assert_refused(tmp_path, """
[disk]
output = "flash.img"
table = "none"
partitions = [
  { name = "a", image = "x.bin", offset = "0", size = "64K" },
  { name = "b", image = "x.bin", offset = "32K", size = "64K" },
]
""", "partition 'a'", "partition 'b'", "overlaps")


# -- hybrid MBR: where the 0xEE entry goes ----------------------------------------------------
def _nested_dos(image: str) -> list[str]:
    """The hybrid MBR's entries as ``sfdisk --label-nested dos -d`` lists them."""
    text = sh(tool("sfdisk"), "--label-nested", "dos", "-d", image)
    return [re.sub(r"^\S+(\d) :", r"\1 :", row) for row in text.splitlines() if " : start=" in row]


_HYBRID = """
[disk]
output = "disk.img"
hybrid_mbr = ["esp", "root"]
{ee}
partitions = [
  {{ name = "esp", type = "esp", size = "1M", bootable = true }},
  {{ name = "root", type = "root-x86-64", size = "1M", mbr_type = "linux" }},
]
"""


@pytest.mark.parametrize("ee", ["", 'hybrid_ee = "first"'])
def test_hybrid_mbr_protective_entry_first(tmp_path, ee):
    image = built(tmp_path, _HYBRID.format(ee=ee))
    assert "No problems found" in sh(tool("sgdisk"), "-v", image)
    assert _nested_dos(image) == [
        "1 : start=           1, size=        2047, type=ee",
        "2 : start=        2048, size=        2048, type=ef, bootable",
        "3 : start=        4096, size=        2048, type=83"]


def test_hybrid_mbr_protective_entry_last_matches_genimage(tmp_path):
    image = built(tmp_path, _HYBRID.format(ee='hybrid_ee = "last"'))
    assert "No problems found" in sh(tool("sgdisk"), "-v", image)
    ours = _nested_dos(image)
    assert ours[2] == "3 : start=           1, size=        2047, type=ee"
    dos = sh(tool("fdisk"), "-t", "dos", "-l", image)
    rows = [row for row in dos.splitlines() if row.startswith(image)]
    assert re.search(r"\see\s+GPT$", rows[2]) and re.search(r"\*.*\sef\s+EFI", rows[0]), dos
    if shutil.which("genimage"):
        # genimage's hybrid MBR also puts 0xEE last, but covers only the GPT structures
        # (LBA 1-33) where imgkit, like sgdisk -h, covers the gap up to the first partition.
        theirs = genimage_build(tmp_path, """
image gen.img {
  hdimage { partition-table-type = "hybrid" }
  partition esp { partition-type-uuid = "U" partition-type = 0xef offset = 1M size = 1M
                  bootable = true }
  partition root { partition-type-uuid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
                   partition-type = 0x83 size = 1M }
}
""")
        gens = _nested_dos(theirs)
        assert ours[:2] == gens[:2] and gens[2].endswith("type=ee")
        same_table(image, theirs)


# -- smaller points: size rounding, EBR hints, readable sizes, type names, logicals -----------
def test_disk_size_rounds_to_size_align(tmp_path):
    image = built(tmp_path, """
[disk]
output = "disk.img"
size_align = "4K"
partitions = [{ name = "a", type = "linux", size = "1M" }]
""")
    # 1 MiB before the partition, 1 MiB of it, the 33-sector backup rounded up to 4 KiB.
    assert os.path.getsize(image) == (2 << 20) + 20480
    assert "No problems found" in sh(tool("sgdisk"), "-v", image)


def test_ebr_overlap_hint_moves_the_partition_not_its_ebr(tmp_path):
    r = build(tmp_path, """
[disk]
output = "disk.img"
table = "mbr"
partitions = [
  { name = "a", type = "linux", size = "2M", offset = "1M" },
  { name = "b", type = "linux", size = "1M", offset = "3M", logical = true },
]
""")
    assert r.returncode == 1
    error, hint = r.stderr.splitlines()[:2]
    assert "partition 'a'" in error and "overlaps the EBR of partition 'b'" in error
    assert hint.startswith("imgkit: hint: move partition 'b' to offset 3146240 or later "
                           "(its EBR takes the sector before it)"), hint
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_sizes_in_messages_show_every_byte(tmp_path):
    from imgkit.sizes import format_size
    assert format_size(4193792) == "4,193,792 bytes (4.00 MiB)"
    assert format_size(64 << 20) == "64 MiB" and format_size(100) == "100 bytes"
    (tmp_path / "blob.bin").write_bytes(b"\x01" * 4193792)
    assert_refused(tmp_path, """
[disk]
output = "disk.img"
partitions = [{ name = "a", size = "2M", image = "blob.bin" }]
""", "is 4,193,792 bytes (4.00 MiB) but the partition holds only 2 MiB (2097152 bytes)")


def test_discoverable_types_of_other_architectures_and_short_aliases(tmp_path):
    names = ["root-arm64", "usr-riscv64", "root-verity-loongarch64", "usr-verity-sig-ppc64le",
             "root-verity-sig-s390x", "usr-s390x", "esp", "linux", "swap", "home", "srv", "var",
             "tmp", "xbootldr", "bios"]
    parts = ",\n".join(f'  {{ name = "p{i}", type = "{n}", size = "1M" }}'
                       for i, n in enumerate(names))
    image = built(tmp_path, f'[disk]\noutput = "disk.img"\npartitions = [\n{parts}\n]\n')
    fdisk = sh(tool("fdisk"), "-l", image)
    shown = [re.split(r"\s+1M\s+", row, maxsplit=1)[1] for row in fdisk.splitlines()
             if row.startswith(image)]
    assert shown == ["Linux root (ARM-64)", "Linux /usr (RISC-V-64)",
                     "Linux root verity (LoongArch-64)", "Linux /usr verity sign. (PPC64LE)",
                     "Linux root verity sign. (S390X)", "Linux /usr (S390X)", "EFI System",
                     "Linux filesystem", "Linux swap", "Linux home", "Linux server data",
                     "Linux variable data", "Linux temporary data", "Linux extended boot",
                     "BIOS boot"], fdisk


def test_more_than_four_mbr_partitions_become_logical_as_in_genimage(tmp_path):
    sizes = [("fat32", "1M", "0xc"), ("linux", "2M", "0x83"), ("linux", "1M", "0x83"),
             ("linux", "1M", "0x83"), ("swap", "1M", "0x82"), ("linux", "3M", "0x83")]
    parts = ",\n".join(f'  {{ name = "p{i}", type = "{t}", size = "{s}" }}'
                       for i, (t, s, _) in enumerate(sizes, 1))
    image = built(tmp_path, f'[disk]\noutput = "disk.img"\ntable = "mbr"\nauto_logical = true\n'
                            f'partitions = [\n{parts}\n]\n')
    assert "No errors detected" in sh(tool("sfdisk"), "--verify", image)
    rows = [(p["node"][-1], p["type"]) for p in sfdisk_parts(image)]
    assert rows == [("1", "c"), ("2", "83"), ("3", "83"), ("4", "f"), ("5", "83"),
                    ("6", "82"), ("7", "83")]
    if shutil.which("genimage"):
        gen = "\n".join(f"  partition p{i} {{ partition-type = {b} size = {s}"
                        + (" offset = 1M" if i == 1 else "") + " }"
                        for i, (_, s, b) in enumerate(sizes, 1))
        theirs = genimage_build(tmp_path, f'image gen.img {{\n  hdimage {{ partition-table-type '
                                          f'= "mbr" align = 1M }}\n{gen}\n}}\n')
        same_table(image, theirs)


# -- virtual disk formats and Android sparse images -------------------------------------------
_FORMAT_DISK = """
[disk]
output = "{name}"
format = "{format}"
{extra}
partitions = [
  {{ name = "a", type = "linux", size = "4M", image = "blob.bin" }},
  {{ name = "b", type = "linux", size = "2M" }},
]
"""


def _two_formats(tmp_path, fmt: str, name: str, extra: str = "") -> tuple[str, str]:
    """The same disk built raw and in ``fmt`` (same seed, same bytes)."""
    if not (tmp_path / "blob.bin").exists():
        (tmp_path / "blob.bin").write_bytes(os.urandom(300_000) + bytes(8192) + b"\xab" * 8192)
    raw = built(tmp_path, _FORMAT_DISK.format(name="disk.img", format="raw", extra=extra))
    other = built(tmp_path, _FORMAT_DISK.format(name=name, format=fmt, extra=extra), name)
    return raw, other


@pytest.mark.parametrize("fmt", ["vmdk", "vhdx", "vpc", "qcow2"])
def test_virtual_disk_formats_hold_the_same_disk(tmp_path, fmt):
    qemu_img = tool("qemu-img")
    raw, image = _two_formats(tmp_path, fmt, f"disk.{fmt}")
    info = json.loads(sh(qemu_img, "info", "--output=json", image))
    assert info["format"] == fmt and info["virtual-size"] == os.path.getsize(raw)
    if fmt != "vpc":                      # qemu-img cannot check a VHD
        assert "No errors were found" in sh(qemu_img, "check", "-f", fmt, image)
    assert "Images are identical" in sh(qemu_img, "compare", "-f", "raw", "-F", fmt, raw, image)


@pytest.mark.parametrize("fmt", ["vmdk", "vhdx", "vpc"])
def test_virtual_disk_formats_are_reproducible(tmp_path, fmt):
    """qemu-img writes random ids and the time into these; two builds a second apart in two
    directories must still be the same bytes, and QEMU must still read them."""
    import struct
    import time
    images = []
    for run in ("one", "two"):
        d = tmp_path / run
        d.mkdir()
        (d / "blob.bin").write_bytes(bytes(range(256)) * 1000)
        text = _FORMAT_DISK.format(name=f"disk.{fmt}", format=fmt, extra="")
        images.append(built(d, 'seed = "repro"\nmtime = 1700000000\n' + text, f"disk.{fmt}"))
        time.sleep(1.1)
    one, two = (open(p, "rb").read() for p in images)
    assert one == two
    qemu_img = tool("qemu-img")
    assert json.loads(sh(qemu_img, "info", "--output=json", images[0]))["format"] == fmt
    if fmt == "vmdk":
        assert b'RW 16384 SPARSE "disk.vmdk"' in one[:4096]   # its own name, not a temporary one
    if fmt == "vpc":
        footer = one[-512:]
        assert footer[:8] == b"conectix" and footer == one[:512]
        want = ~(sum(footer[:64]) + sum(footer[68:])) & 0xFFFFFFFF
        assert struct.unpack(">I", footer[64:68])[0] == want
        assert struct.unpack(">I", footer[24:28])[0] == 1700000000 - 946684800
    if fmt != "vpc":
        assert "No errors were found" in sh(qemu_img, "check", "-f", fmt, images[0])


def _sparse_chunks(path: str) -> tuple[dict, list[tuple[int, int, int]]]:
    """The header and ``(type, blocks, bytes)`` of each chunk, read with struct."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    fields = struct.unpack_from("<IHHHHIIII", data)
    header = dict(zip(("magic", "major", "minor", "file_hdr", "chunk_hdr", "blk_sz",
                       "total_blks", "total_chunks", "checksum"), fields, strict=True))
    chunks, pos = [], header["file_hdr"]
    for _ in range(header["total_chunks"]):
        kind, _reserved, blocks, total = struct.unpack_from("<HHII", data, pos)
        chunks.append((kind, blocks, total))
        pos += total
    assert pos == len(data)
    return header, chunks


def test_android_sparse_expands_to_the_raw_disk(tmp_path):
    tool("simg2img")
    raw, image = _two_formats(tmp_path, "android-sparse", "disk.simg")
    sh("simg2img", image, str(tmp_path / "back.img"))
    sh("cmp", raw, str(tmp_path / "back.img"))
    header, chunks = _sparse_chunks(image)
    assert (header["magic"], header["major"], header["blk_sz"]) == (0xED26FF3A, 1, 4096)
    assert header["total_blks"] * 4096 == os.path.getsize(raw)
    kinds = {k for k, _, _ in chunks}
    assert kinds == {0xCAC1, 0xCAC2, 0xCAC3}         # raw, fill (zeros, 0xab), don't care
    assert os.path.getsize(image) < 400_000            # the holes are not in the file
    info = json.loads(sh(sys.executable, "-m", "imgkit", "inspect", "--json", image))
    assert info["format"] == "android-sparse"
    assert info["android_sparse"]["expanded_size"] == os.path.getsize(raw)
    # Reproducible: the same config gives the same bytes.
    with open(image, "rb") as f:
        first = f.read()
    shutil.rmtree(tmp_path / "out")
    _, again = _two_formats(tmp_path, "android-sparse", "disk.simg")
    with open(again, "rb") as f:
        assert f.read() == first


def test_android_sparse_of_a_disk_not_a_multiple_of_4k(tmp_path):
    tool("simg2img")
    raw, image = _two_formats(tmp_path, "android-sparse", "disk.simg",
                              extra='alignment = "512"\nsize_align = "512"')
    assert os.path.getsize(raw) % 4096
    header, _ = _sparse_chunks(image)
    assert header["blk_sz"] == 512
    sh("simg2img", image, str(tmp_path / "back.img"))
    sh("cmp", raw, str(tmp_path / "back.img"))


def test_unknown_disk_format_is_an_error(tmp_path):
    assert_refused(tmp_path, '[disk]\noutput = "disk.vdi"\nformat = "vdi"\n'
                             'partitions = [{ name = "a", size = "1M" }]\n',
                   "disk.format: expected one of raw, qcow2, vmdk, vhdx, vpc, android-sparse")


def _blob_with_table_holes(path, *, stray: int | None = None) -> bytes:
    """64 KiB like a vendor boot blob written at offset 0: boot code in the first 440 bytes,
    zeros where the protective MBR, GPT header and 128-entry array go (440 to 17,408), data
    after; ``stray``: one non-zero byte inside the holes."""
    data = bytearray(os.urandom(440) + bytes(17408 - 440) + os.urandom(65536 - 17408))
    if stray is not None:
        data[stray] = 0x5A
    path.write_bytes(bytes(data))
    return bytes(data)


_TABLE_AREA_DISK = """
[disk]
output = "disk.img"
regions = [{{ name = "idb", offset = 0, image = "idb.bin"{flag} }}]
partitions = [{{ name = "root", type = "linux", size = "2M" }}]
"""


def test_region_in_the_table_area_keeps_the_table_in_its_holes(tmp_path):
    blob = _blob_with_table_holes(tmp_path / "idb.bin")
    image = built(tmp_path, _TABLE_AREA_DISK.format(flag=", in_table_area = true"))
    with open(image, "rb") as f:
        data = f.read(65536)
    assert data[:440] == blob[:440] and data[17408:] == blob[17408:]
    assert data[510:512] == b"\x55\xaa" and data[512:520] == b"EFI PART"
    assert "No problems found" in sh(tool("sgdisk"), "-v", image)
    assert "No errors detected" in sh(tool("sfdisk"), "--verify", image)
    assert sfdisk_parts(image)[0]["start"] * 512 >= 65536


def test_region_in_the_table_area_needs_the_flag_and_zeros_there(tmp_path):
    _blob_with_table_holes(tmp_path / "idb.bin")
    assert_refused(tmp_path, _TABLE_AREA_DISK.format(flag=""), "region 'idb'",
                   "overlaps the protective MBR, GPT header and entry array")
    _blob_with_table_holes(tmp_path / "idb.bin", stray=1500)
    assert_refused(tmp_path, _TABLE_AREA_DISK.format(flag=", in_table_area = true"),
                   "region 'idb' has data at byte 1,500",
                   "inside the protective MBR, GPT header and entry array")


@pytest.mark.parametrize("given,byte", [(None, "f"), ("extended-chs", "5"), ("0x85", "85")])
def test_extended_partition_type_and_placement(tmp_path, given, byte):
    """The extended partition takes the slot where its first logical partition is listed,
    starts at the first logical's EBR (placed by that partition's offset) and has the type
    asked for; sfdisk reads it so."""
    key = f'extended_type = "{given}"\n' if given else ""
    image = built(tmp_path, f"""
[disk]
output = "disk.img"
table = "mbr"
{key}partitions = [
  {{ name = "boot", type = "fat32", size = "2M" }},
  {{ name = "l1", type = "linux", size = "2M", offset = "8M", logical = true }},
  {{ name = "l2", type = "linux", size = "2M", logical = true }},
  {{ name = "last", type = "linux", size = "2M" }},
]
""")
    dump = json.loads(sh(tool("sfdisk"), "--json", image))["partitiontable"]["partitions"]
    by_node = {p["node"].rsplit("img", 1)[1]: p for p in dump}
    assert by_node["2"]["type"] == byte                     # the extended one, in slot 2
    assert by_node["2"]["start"] * 512 == (8 << 20) - 512    # l1's EBR, the sector before it
    assert by_node["5"]["start"] * 512 == 8 << 20 and "6" in by_node and "3" in by_node
    assert "No errors detected" in sh(tool("sfdisk"), "--verify", image)


def test_extended_type_on_gpt_is_an_error(tmp_path):
    assert_refused(tmp_path, '[disk]\noutput = "disk.img"\nextended_type = "0x0f"\n'
                   'partitions = [{ name = "a", size = "1M" }]\n', "disk.extended_type")
