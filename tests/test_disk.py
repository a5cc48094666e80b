"""Disk images checked by sfdisk, sgdisk and qemu-img (and our readers checked against them)."""
from __future__ import annotations

import json
import os
import re

import pytest

from imgkit import tools
from imgkit.disk.image import write_disk
from imgkit.disk.layout import DiskSpec, plan
from imgkit.disk.layout import PartitionSpec as P
from imgkit.errors import LayoutError
from imgkit.formats import gpt as gptfmt
from imgkit.formats import mbr as mbrfmt
from imgkit.sizes import MiB

SFDISK_ATTR_NAMES = {0: "RequiredPartition", 1: "NoBlockIOProtocol", 2: "LegacyBIOSBootable"}


def run(*argv: str) -> str:
    return tools.run(list(argv)).stdout.decode()


def make_content(path, size: int, marks: dict[int, bytes]) -> str:
    """A sparse file of ``size`` bytes with ``marks`` written at their offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in marks.items():
            f.seek(off)
            f.write(data)
    return str(path)


def sfdisk_json(img) -> dict:
    return json.loads(run("sfdisk", "--json", str(img)))["partitiontable"]


def sfdisk_attrs(mask: int) -> str | None:
    names = [SFDISK_ATTR_NAMES[b] for b in (0, 1, 2) if mask >> b & 1]
    high = [str(b) for b in range(48, 64) if mask >> b & 1]
    if high:
        names.append("GUID:" + ",".join(high))
    return " ".join(names) or None


def sanitize_dump(text: str) -> list[str]:
    """``sfdisk --dump`` without the device path, which depends on where the test ran."""
    lines = []
    for line in text.splitlines():
        if line.startswith("device:"):
            continue
        lines.append(re.sub(r"^\S+?(\d+) :", r"part\1 :", line))
    return lines


@pytest.fixture
def gpt_disk(tmp_path):
    esp = make_content(tmp_path / "esp.img", 3 * MiB, {0: b"\xeb\x3c\x90MSDOS5.0", 2 * MiB: b"E" * 4096})
    root = make_content(tmp_path / "root.img", 8 * MiB, {1024: b"ROOT" * 256, 7 * MiB: b"tail"})
    spec = DiskSpec("gpt", (
        P("esp", "esp", "16M", bootable=True, content_size=os.path.getsize(esp)),
        P("root", "root-x86-64", "grow", label="Root FS \u00e9", content_size=8 * MiB,
          attributes=["read-only", "no-auto", 48]),
        P("swap", "swap", "4M", attributes="required"),
        P("data", "linux", "4M", attributes=["hidden", "no-block-io"]),
    ), size="64M", seed="test-seed")
    p = plan(spec)
    out = tmp_path / "disk.img"
    write_disk(p, {"esp": esp, "root": root, "swap": None}, out)
    return p, out, {"esp": esp, "root": root}


def test_gpt_verified_by_sgdisk_and_sfdisk(gpt_disk):
    p, img, _ = gpt_disk
    assert "No problems found" in run("sgdisk", "-v", str(img))
    assert "No errors detected" in run("sfdisk", "--verify", str(img))
    table = sfdisk_json(img)
    assert table["label"] == "gpt"
    assert table["id"] == str(p.disk_guid).upper()
    assert (table["firstlba"], table["lastlba"]) == (p.first_usable_lba, p.last_usable_lba)
    assert len(table["partitions"]) == len(p.partitions)
    for want, got in zip(p.partitions, table["partitions"], strict=True):
        assert got["node"].endswith(str(want.number))
        assert (got["start"], got["size"]) == (want.start_lba, want.num_sectors)
        assert got["type"] == str(want.type_guid).upper()
        assert got["uuid"] == str(want.guid).upper()
        assert got["name"] == want.label
        assert got.get("attrs") == sfdisk_attrs(want.attributes)
    esp = p.partition("esp")
    assert esp.attributes & gptfmt.ATTR_LEGACY_BIOS_BOOTABLE
    assert "LegacyBIOSBootable" in table["partitions"][0]["attrs"]


def test_gpt_sgdisk_details(gpt_disk):
    p, img, _ = gpt_disk
    listing = run("sgdisk", "-p", str(img))
    assert f"Disk identifier (GUID): {str(p.disk_guid).upper()}" in listing
    for want in p.partitions:
        info = run("sgdisk", "-i", str(want.number), str(img))
        assert f"Partition GUID code: {str(want.type_guid).upper()}" in info
        assert f"Partition unique GUID: {str(want.guid).upper()}" in info
        assert f"First sector: {want.start_lba} " in info
        assert f"Last sector: {want.last_lba} " in info
        assert f"Attribute flags: {want.attributes:016X}" in info
        assert f"Partition name: '{want.label}'" in info


def test_gpt_contents_sparse_and_readable(gpt_disk):
    p, img, contents = gpt_disk
    with open(img, "rb") as disk:
        for name, path in contents.items():
            part = p.partition(name)
            with open(path, "rb") as src:
                size = os.path.getsize(path)
                disk.seek(part.start)
                assert disk.read(size) == src.read(), name
        table = gptfmt.read_gpt(disk)
    st = os.stat(img)
    assert st.st_size == 64 * MiB
    assert st.st_blocks * 512 < 2 * MiB          # ~20 KiB of data in a 64 MiB image
    assert table.disk_guid == p.disk_guid and table.backup_ok
    assert [(q.number, q.type_guid, q.guid, q.first_lba, q.last_lba, q.attributes, q.name)
            for q in table.partitions] == \
        [(q.number, q.type_guid, q.guid, q.start_lba, q.last_lba, q.attributes, q.label)
         for q in p.partitions]
    assert table.protective_mbr.partitions == (
        mbrfmt.MbrPartition(1, 0xEE, 1, p.disk_sectors - 1),)


def test_read_gpt_of_sgdisk_image(tmp_path):
    """Our reader against a table written by sgdisk (not by us)."""
    img = tmp_path / "sg.img"
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
    run("sgdisk", "-o", "-n", "1:2048:+4M", "-t", "1:ef00", "-c", "1:EFI stuff",
        "-A", "1:set:2", "-n", "2:0:0", "-t", "2:8304", "-c", "2:root", "-A", "2:set:60",
        str(img))
    ref = sfdisk_json(img)
    with open(img, "rb") as f:
        t = gptfmt.read_gpt(f)
    assert str(t.disk_guid).upper() == ref["id"] and t.backup_ok
    for got, want in zip(t.partitions, ref["partitions"], strict=True):
        assert (got.first_lba, got.num_sectors) == (want["start"], want["size"])
        assert str(got.type_guid).upper() == want["type"]
        assert str(got.guid).upper() == want["uuid"]
        assert got.name == want["name"]
        assert sfdisk_attrs(got.attributes) == want.get("attrs")


def test_mbr_with_logicals_checked_by_sfdisk(tmp_path):
    boot = make_content(tmp_path / "boot.img", 2 * MiB, {510: b"\x55\xaa"})
    p = plan(DiskSpec("mbr", (
        P("boot", "fat32", "8M", bootable=True),
        P("root", "linux", "8M"),
        P("swap", "swap", "2M"),
        P("var", "linux", "4M", logical=True),
        P("srv", "0xda", "3M", logical=True),
    ), seed="mbr-seed"))
    img = tmp_path / "mbr.img"
    code = bytes(range(256)) + bytes(184)
    write_disk(p, {"boot": boot}, img, boot_code=code)
    assert "No errors detected" in run("sfdisk", "--verify", str(img))
    expected = [
        "label: dos",
        f"label-id: 0x{p.disk_signature:08x}",
        "unit: sectors",
        "sector-size: 512",
        "",
        "part1 : start=        2048, size=       16384, type=c, bootable",
        "part2 : start=       18432, size=       16384, type=83",
        "part3 : start=       34816, size=        4096, type=82",
        "part4 : start=       38912, size=       18432, type=f",
        "part5 : start=       40960, size=        8192, type=83",
        "part6 : start=       51200, size=        6144, type=da",
    ]
    assert sanitize_dump(run("sfdisk", "--dump", str(img))) == expected
    for q in p.partitions:
        assert (q.start_lba, q.num_sectors) in [(2048, 16384), (18432, 16384), (34816, 4096),
                                               (40960, 8192), (51200, 6144)]
    with open(img, "rb") as f:
        assert f.read(440) == code
        t = mbrfmt.read_mbr(f)
    assert t.disk_signature == p.disk_signature and t.boot_code == code
    assert [(q.number, q.type, q.start_lba, q.num_sectors, q.bootable) for q in t.partitions] == [
        (1, 0x0C, 2048, 16384, True), (2, 0x83, 18432, 16384, False),
        (3, 0x82, 34816, 4096, False), (4, 0x0F, 38912, 18432, False),
        (5, 0x83, 40960, 8192, False), (6, 0xDA, 51200, 6144, False)]
    with open(img, "rb") as f:
        f.seek(2048 * 512 + 510)
        assert f.read(2) == b"\x55\xaa"


def test_read_mbr_of_sfdisk_image(tmp_path):
    """Our reader (EBR chain included) against a table written by sfdisk."""
    img = tmp_path / "sf.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    script = ("label: dos\nlabel-id: 0x12345678\n"
              "size=8M, type=83, bootable\nsize=8M, type=82\ntype=5\nsize=4M, type=83\n"
              "size=6M, type=c\nsize=2M, type=83\n")
    tools.run(["sfdisk", "-q", str(img)], input=script.encode())
    ref = sfdisk_json(img)
    with open(img, "rb") as f:
        t = mbrfmt.read_mbr(f)
    assert t.disk_signature == 0x12345678
    got = [(f"{q.type:x}", q.start_lba, q.num_sectors, q.bootable) for q in t.partitions]
    want = [(r["type"], r["start"], r["size"], r.get("bootable", False))
            for r in ref["partitions"]]
    assert got == want and len(t.logicals) == 3


def test_hybrid_mbr(tmp_path):
    p = plan(DiskSpec("gpt", (
        P("esp", "esp", "8M", bootable=True, hybrid=True),
        P("boot", "xbootldr", "8M"),
        P("root", "root-x86-64", "8M", hybrid=True, mbr_type="linux"),
    ), size="32M"))
    img = tmp_path / "hybrid.img"
    code = b"\xfa\xeb\xfe" + bytes(437)
    write_disk(p, {}, img, boot_code=code)
    assert "No problems found" in run("sgdisk", "-v", str(img))
    dump = sanitize_dump(run("sfdisk", "--label", "dos", "-Y", "dos", "--dump", str(img)))
    assert dump[dump.index("") + 1:] == [
        "part1 : start=           1, size=        2047, type=ee",
        "part2 : start=        2048, size=       16384, type=ef, bootable",
        "part3 : start=       34816, size=       16384, type=83",
    ]
    assert sfdisk_json(img)["label"] == "gpt"
    with open(img, "rb") as f:
        assert f.read(440) == code


def test_qcow2_output(tmp_path, gpt_disk):
    p, raw, contents = gpt_disk
    q = tmp_path / "disk.qcow2"
    write_disk(p, {"esp": contents["esp"], "root": contents["root"], "swap": None}, q,
               format="qcow2")
    info = json.loads(run("qemu-img", "info", "--output=json", str(q)))
    assert info["format"] == "qcow2" and info["virtual-size"] == p.disk_size
    run("qemu-img", "check", str(q))
    assert "Images are identical" in run("qemu-img", "compare", "-f", "raw", "-F", "qcow2",
                                         str(raw), str(q))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]   # no temp leftovers


def test_same_seed_same_bytes(tmp_path):
    content = make_content(tmp_path / "c.img", MiB, {100: b"data"})

    def build(seed: str, name: str) -> bytes:
        p = plan(DiskSpec("gpt", (P("a", "linux", "2M"), P("b", "swap", "grow")),
                          size="8M", seed=seed))
        write_disk(p, {"a": content}, tmp_path / name)
        return (tmp_path / name).read_bytes()

    one, two, other = build("s", "1.img"), build("s", "2.img"), build("t", "3.img")
    assert one == two and one != other


def test_content_too_large_leaves_no_output(tmp_path):
    big = make_content(tmp_path / "big.img", 3 * MiB, {})
    p = plan(DiskSpec("gpt", (P("a", size="2M"),)))
    out = tmp_path / "out.img"
    with pytest.raises(LayoutError) as exc:
        write_disk(p, {"a": big}, out)
    assert "partition 'a'" in str(exc.value) and "3 MiB" in str(exc.value) \
        and "2 MiB" in str(exc.value)
    assert not out.exists()
    with pytest.raises(Exception, match="does not have"):
        write_disk(p, {"nope": big}, out)


def test_extra_regions(tmp_path):
    p = plan(DiskSpec("mbr", (P("a", "linux", "1M"),), size="4M",
                      reserved=[(4096, 8192, "stage2")]))
    out = tmp_path / "x.img"
    write_disk(p, {}, out, extra_regions=[(4096, b"S" * 4096)])
    data = out.read_bytes()
    assert data[4096:8192] == b"S" * 4096
    assert "No errors detected" in run("sfdisk", "--verify", str(out))
    with pytest.raises(LayoutError, match="overlaps partition 'a'"):
        write_disk(p, {}, out, extra_regions=[(MiB, b"x")])
    with pytest.raises(LayoutError, match="MBR partition table"):
        write_disk(p, {}, out, extra_regions=[(446, b"x")])


def test_mbr_entries_byte_identical_to_sfdisk(tmp_path):
    """CHS fields included (with FE FF FF past cylinder 1023), against sfdisk's own bytes."""
    img = tmp_path / "ref.img"
    with open(img, "wb") as f:
        f.truncate(10 << 30)                     # sparse; needed for the > 8 GiB CHS case
    tools.run(["sfdisk", "-q", str(img)], input=(
        b"label: dos\nlabel-id: 0x01020304\nstart=2048, size=16384, type=c, bootable\n"
        b"start=18432, size=18000000, type=83\n"))
    ours = mbrfmt.build_mbr([mbrfmt.MbrPartition(1, 0x0C, 2048, 16384, True),
                             mbrfmt.MbrPartition(2, 0x83, 18432, 18000000)],
                            disk_signature=0x01020304)[0][1]
    with open(img, "rb") as f:
        theirs = f.read(512)
    assert ours[440:] == theirs[440:]
    assert ours[446 + 16 + 5:446 + 16 + 8] == b"\xfe\xff\xff"
