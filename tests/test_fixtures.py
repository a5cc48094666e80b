"""Our readers on images made by other tools (fixtures/make-fixtures.sh): ``describe`` (what
``imgkit inspect`` prints) and ``open_tree`` (what ``imgkit ls`` lists), against the exact
contents the script put there. None of these bytes were written by imgkit."""
from __future__ import annotations

import lzma
import os

import pytest

from imgkit.browse import open_tree
from imgkit.inspect import describe
from imgkit.tree import Kind

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
EPOCH = 1700000000          # SOURCE_DATE_EPOCH of the script
SPC12 = 4                   # mkfs.vfat 4.2 picks 2 KiB clusters for a 1 MiB FAT12


def fixture(tmp_path, name: str) -> str:
    """The fixture ``name`` decompressed into ``tmp_path``."""
    out = tmp_path / name
    with lzma.open(os.path.join(FIXTURES, name + ".xz")) as src, open(out, "wb") as dst:
        dst.write(src.read())
    return str(out)


def contents(tree) -> dict[str, tuple[str, int, bytes | str | None]]:
    """path -> (kind, mode, file bytes or link target) for every entry but the root."""
    out = {}
    for e in tree:
        if not e.path:
            continue
        if e.kind is Kind.FILE:
            with e.data.open() as f:
                value: bytes | str | None = f.read()
            assert len(value) == e.size
        else:
            value = e.target
        out[e.path] = (e.kind.value, e.mode, value)
    return out


FAT_FILES = {
    "hello.txt": ("file", 0o644, b"hello from fat\n"),
    "A long file name.txt": ("file", 0o644, b"a file with a long name\n"),
    "sub": ("dir", 0o755, None),
    "sub/deeper": ("dir", 0o755, None),
    "sub/deeper/nested.txt": ("file", 0o644, b"nested\n"),
}


@pytest.mark.parametrize("name, kind, label, serial, size, spc", [
    ("fat12.img", "fat12", "FIX12", "1212-0001", 1024 * 1024, SPC12),
    ("fat16.img", "fat16", "FIX16", "1616-0002", 4096 * 1024, 1),
    ("fat32.img", "fat32", "FIX32", "3232-0003", 34816 * 1024, 1),
])
def test_fat_made_by_mkfs_vfat_and_mcopy(tmp_path, name, kind, label, serial, size, spc):
    img = fixture(tmp_path, name)
    d = describe(img)
    assert d["format"] == kind
    fs = d["filesystem"]
    assert (fs["format"], fs["label"], fs["uuid"], fs["size"]) == (kind, label, serial, size)
    assert fs["sectors_per_cluster"] == spc      # mkfs.vfat's default, or -s 1
    tree = open_tree(img)
    assert contents(tree) == FAT_FILES
    assert {e.mtime for e in tree if e.path} == {EPOCH}


def test_ext4_made_by_mke2fs_d(tmp_path):
    img = fixture(tmp_path, "ext4.img")
    fs = describe(img)["filesystem"]
    assert (fs["format"], fs["label"], fs["uuid"]) == (
        "ext4", "FIXEXT4", "6a4d3f2e-1b2c-4d5e-8f90-a1b2c3d4e5f6")
    assert (fs["block_size"], fs["blocks"], fs["inodes"]) == (1024, 2048, 64)
    assert fs["created"] == EPOCH
    tree = open_tree(img)
    assert contents(tree) == {
        "bin": ("dir", 0o755, None),
        "bin/tool": ("file", 0o755, b"#!/bin/sh\necho hi\n"),
        "bin/tool-link": ("hardlink", 0o755, "bin/tool"),
        "bin/motd-link": ("symlink", 0o777, "../etc/motd"),
        "etc": ("dir", 0o755, None),
        "etc/motd": ("file", 0o644, b"ext4 fixture\n"),
        "etc/nested": ("dir", 0o755, None),
        "etc/nested/deeper": ("dir", 0o755, None),
        "etc/nested/deeper/file": ("file", 0o644, b"deep\n"),
        "lost+found": ("dir", 0o700, None),
    }
    assert {e.mtime for e in tree} == {EPOCH}


def test_iso9660_made_by_xorriso(tmp_path):
    img = fixture(tmp_path, "iso9660.iso")
    d = describe(img)
    assert d["format"] == "iso9660" and "table" not in d
    fs = d["filesystem"]
    assert (fs["label"], fs["joliet"], fs["rock_ridge"]) == ("FIXISO", True, True)
    assert fs["uuid"] == "2023-11-14-22-13-20-00"
    assert fs["el_torito"] == [{"platform": "bios", "bootable": True, "media": "no-emulation",
                                "load_rba": fs["el_torito"][0]["load_rba"], "sectors": 4}]
    tree = open_tree(img)
    got = contents(tree)
    assert got["docs/readme.txt"] == ("file", 0o644, b"iso fixture\n")
    assert got["docs/Mixed Case Name.txt"] == ("file", 0o644, b"Mixed Case Name\n")
    assert got["boot/boot.bin"] == ("file", 0o644, b"B" * 2048)
    assert {p for p in got if not p.startswith("boot.")} == {
        "docs", "docs/readme.txt", "docs/Mixed Case Name.txt", "boot", "boot/boot.bin"}
    # The El Torito entry points at boot.bin's extent.
    blob = tree["boot/boot.bin"].data
    assert blob.host_range() == (img, fs["el_torito"][0]["load_rba"] * 2048)


def test_mbr_made_by_sfdisk(tmp_path):
    img = fixture(tmp_path, "mbr.img")
    d = describe(img)
    assert d["format"] == "mbr"
    t = d["table"]
    assert (t["table"], t["disk_signature"], t["sectors"]) == ("mbr", "0x1f2e3d4c", 16384)
    rows = [(p["number"], p["start_lba"], p["sectors"], p["type"], p["bootable"], p["logical"],
             p["extended"]) for p in t["partitions"]]
    assert rows == [
        (1, 2048, 2048, "0x83", True, False, False),
        (2, 4096, 4096, "0x0c", False, False, False),
        (3, 8192, 8192, "0x05", False, False, True),
        (5, 10240, 2048, "0x82", False, True, False),
        (6, 14336, 2047, "0x83", False, True, False),
    ]
    assert [p["start"] for p in t["partitions"]] == [r[1] * 512 for r in rows]


def test_gpt_made_by_sgdisk(tmp_path):
    img = fixture(tmp_path, "gpt.img")
    t = describe(img)["table"]
    assert (t["table"], t["disk_guid"], t["backup_ok"]) == (
        "gpt", "11111111-2222-3333-4444-555555555555", True)
    assert (t["first_usable_lba"], t["last_usable_lba"], t["max_partitions"]) == (34, 16350, 128)
    rows = [(p["number"], p["name"], p["start_lba"], p["end_lba"], p["type"], p["guid"],
             p["attribute_names"], p["bootable"]) for p in t["partitions"]]
    assert rows == [
        (1, "esp", 2048, 4095, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
         "aaaaaaaa-0000-4000-8000-000000000001", ["required"], False),
        (2, "root", 4096, 8191, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
         "aaaaaaaa-0000-4000-8000-000000000002", ["read-only", "no-auto"], False),
        (3, "swap space", 8192, 10239, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
         "aaaaaaaa-0000-4000-8000-000000000003", [], False),
    ]
    assert [p["attributes"] for p in t["partitions"]] == [
        "0x0000000000000001", "0x9000000000000000", "0x0000000000000000"]


def test_genimage_gpt_disk_with_vfat(tmp_path):
    img = fixture(tmp_path, "genimage.img")
    t = describe(img)["table"]
    assert t["disk_guid"] == "22222222-3333-4444-5555-666666666666"
    [p] = t["partitions"]
    assert (p["name"], p["start"], p["size"], p["type_name"], p["guid"]) == (
        "boot", 1 << 20, 2 << 20, "esp", "bbbbbbbb-0000-4000-8000-000000000001")
    fs = p["filesystem"]
    assert (fs["format"], fs["label"], fs["uuid"], fs["size"]) == (
        "fat12", "GENBOOT", "6E6E-0001", 2 << 20)
    for spec in (f"{img}:boot", f"{img}:1"):
        assert contents(open_tree(spec)) == {
            "genimage.txt": ("file", 0o644, b"made by genimage\n")}


def test_fat_reader_refuses_a_looping_chain_and_a_truncated_image(tmp_path):
    """Damage a mkfs.vfat image by hand: a cluster chain that points back at itself, and an
    image cut short before its data; both are refused naming what is wrong, never hung on."""
    from imgkit.errors import ImageError

    img = fixture(tmp_path, "fat16.img")
    fs = describe(img)["filesystem"]
    root = (fs["reserved_sectors"] + fs["fats"] * fs["fat_sectors"]) * 512
    data_start = root + fs["root_entries"] * 32
    raw = bytearray(open(img, "rb").read())
    at = raw.index(b"SUB        ", root, data_start)    # the 8.3 entry of /sub (FAT spec)
    cluster = int.from_bytes(raw[at + 26:at + 28], "little")
    looped = tmp_path / "looped.img"
    fat = fs["reserved_sectors"] * 512
    raw[fat + 2 * cluster: fat + 2 * cluster + 2] = cluster.to_bytes(2, "little")
    looped.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match=f"cluster {cluster} (again|is longer)"):
        open_tree(str(looped))

    cut = tmp_path / "cut.img"
    cut.write_bytes(bytes(raw[:data_start]))
    with pytest.raises(ImageError, match="past the end of the image"):
        open_tree(str(cut))
