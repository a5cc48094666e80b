"""Layout planning, size strings and partition types (pure; types cross-checked with sfdisk)."""
from __future__ import annotations

import re
import uuid

import pytest

from imgkit import tools
from imgkit.disk import parttypes
from imgkit.disk.layout import DiskSpec, Reserved, plan
from imgkit.disk.layout import PartitionSpec as P
from imgkit.errors import InputError, LayoutError
from imgkit.formats import gpt as gptfmt
from imgkit.sizes import AUTO, GROW, MiB, Percent, parse_size, parse_size_spec

# -- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("512", 512), ("64M", 64 * MiB), ("64m", 64 * MiB), ("1.5G", 1536 * MiB), ("2KiB", 2048),
    ("1T", 1 << 40), ("3 MiB", 3 * MiB), ("100B", 100), (4096, 4096), ("1.5K", 1536),
    (".5M", 512 * 1024),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,needle", [
    ("64MB", "unknown unit 'MB'"), ("abc", "'abc'"), ("-1", "'-1'"), ("12X", "unknown unit"),
    ("0.3K", "not a whole number of bytes"), ("", "''"), ("1.2.3M", "'1.2.3M'"),
])
def test_parse_size_rejects(text, needle):
    with pytest.raises(InputError) as exc:
        parse_size(text, what="size of partition 'root'")
    assert needle in str(exc.value)
    assert "size of partition 'root'" in str(exc.value)


def test_parse_size_mb_hint():
    with pytest.raises(InputError) as exc:
        parse_size("64MB")
    assert "MiB" in exc.value.hint


def test_parse_size_spec():
    assert parse_size_spec("auto") == AUTO
    assert parse_size_spec("GROW") == GROW
    assert parse_size_spec("25%") == Percent(25)
    assert parse_size_spec("12.5%").of(800) == 100
    assert parse_size_spec("8M") == 8 * MiB
    for bad in ("150%", "0%", "x%"):
        with pytest.raises(InputError, match="percentage"):
            parse_size_spec(bad)
    with pytest.raises(InputError, match="not allowed"):
        parse_size_spec("grow", allow=("auto",))


# -- partition types --------------------------------------------------------------------------

def test_known_types():
    assert parttypes.gpt_type("esp") == uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    assert parttypes.gpt_type("root-x86-64") == uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
    assert parttypes.gpt_type("usr-arm64") == uuid.UUID("b0e01050-ee5f-4390-949a-9101b17104e9")
    assert parttypes.gpt_type("EFI") == parttypes.gpt_type("esp")
    assert parttypes.mbr_type("fat32") == 0x0C
    assert parttypes.mbr_type("fat16") == 0x0E
    assert parttypes.mbr_type("linux") == 0x83
    assert parttypes.mbr_type("esp") == 0xEF
    assert parttypes.mbr_type("swap") == 0x82
    assert parttypes.mbr_type("extended") == 0x0F
    assert parttypes.mbr_type("0xda") == 0xDA
    raw = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    assert parttypes.gpt_type(raw) == uuid.UUID(raw)


def test_unknown_types_list_names():
    with pytest.raises(InputError) as exc:
        parttypes.gpt_type("rooot")
    assert "'rooot'" in str(exc.value) and "root-x86-64" in exc.value.hint
    with pytest.raises(InputError) as exc:
        parttypes.mbr_type("0x1ff")
    assert "fat32" in exc.value.hint
    with pytest.raises(InputError, match="GPT-only"):
        parttypes.mbr_type("root-x86-64")
    with pytest.raises(InputError, match="only on MBR"):
        parttypes.gpt_type("extended")


def _sfdisk_types(label: str) -> dict[str, str]:
    out = tools.run(["sfdisk", "--label", label, "-T"]).stdout.decode()
    table = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([0-9A-Fa-f-]{36}|[0-9a-f]{1,2})\s+(.*\S)\s*$", line)
        if m:
            table[m.group(1).lower()] = m.group(2)
    return table


def test_types_match_util_linux():
    """Every GUID and MBR byte we know is listed by sfdisk under the same description."""
    gpt_names, dos_names = _sfdisk_types("gpt"), _sfdisk_types("dos")
    for t in parttypes.TYPES.values():
        if t.gpt is not None and t.name not in ("fat32", "fat16", "fat12", "ntfs"):
            assert gpt_names.get(str(t.gpt)) == t.description, t.name
        if t.gpt is not None:
            assert str(t.gpt) in gpt_names, t.name
        if t.mbr is not None:
            assert f"{t.mbr:x}" in dos_names, t.name
            if t.gpt is None or t.name in ("fat32", "fat16", "fat12", "ntfs"):
                assert dos_names[f"{t.mbr:x}"] == t.description, t.name


# -- placement --------------------------------------------------------------------------------

def test_gpt_placement_grow_and_alignment():
    p = plan(DiskSpec("gpt", (P("esp", "esp", "64M", bootable=True),
                              P("root", "root-x86-64", "grow"),
                              P("swap", "swap", "100M")), size="1G"))
    esp, root, swap = p.partitions
    assert (esp.start, esp.size, esp.start_lba, esp.number) == (MiB, 64 * MiB, 2048, 1)
    assert esp.attributes == gptfmt.ATTR_LEGACY_BIOS_BOOTABLE
    assert root.start == 65 * MiB and root.start % MiB == 0
    assert swap.start % MiB == 0 and swap.end <= (p.last_usable_lba + 1) * 512
    assert root.end == swap.start                                # grow fills the gap
    assert (p.disk_size, p.first_usable_lba, p.last_usable_lba) == (1 << 30, 34, 2097118)
    assert swap.last_lba == swap.start_lba + swap.num_sectors - 1


def test_grow_last_fills_to_last_usable_lba():
    p = plan(DiskSpec("gpt", (P("a", size="1M"), P("b", size="grow")), size="16M"))
    assert p.partitions[1].last_lba == p.last_usable_lba


def test_auto_sizes_and_auto_disk():
    p = plan(DiskSpec("gpt", (P("esp", "esp", content_size=5 * MiB + 1),
                              P("root", "linux", "auto", content_size=3000, slack="1M"))))
    esp, root = p.partitions
    assert esp.size == 6 * MiB and root.size == 2 * MiB
    # end of the last partition + 33 sectors of backup GPT, rounded up to 1 MiB
    assert root.end == 9 * MiB and p.disk_size == 10 * MiB


def test_percent_and_fixed_offset():
    p = plan(DiskSpec("gpt", (P("a", size="25%"), P("b", size="4M", offset="32M"),
                              P("c", size="1M")), size="64M"))
    a, b, c = p.partitions
    assert a.size == 16 * MiB and b.start == 32 * MiB and c.start == 36 * MiB


def test_reserved_ranges_are_skipped():
    p = plan(DiskSpec("mbr", (P("a", "linux", "2M"), P("b", "linux", "2M")), size="16M",
                      reserved=[(0, 440, "boot code"), Reserved(3 * MiB, 4 * MiB + 1, "stage2")]))
    a, b = p.partitions
    assert a.start == MiB and b.start == 5 * MiB


def test_mbr_logical_numbering_and_ebrs():
    p = plan(DiskSpec("mbr", (P("a", "fat32", "10M", bootable=True), P("b", size="10M"),
                              P("c", size="10M"), P("d", size="5M", logical=True),
                              P("e", "swap", "2M", logical=True))))
    assert [q.number for q in p.partitions] == [1, 2, 3, 5, 6]
    d, e = p.partitions[3:]
    assert d.ebr_lba * 512 == 31 * MiB and d.start == 32 * MiB
    assert e.ebr_lba * 512 == 37 * MiB and e.start == 38 * MiB
    assert p.extended.number == 4 and p.extended.start == 31 * MiB and p.extended.size == 9 * MiB
    assert p.disk_signature == plan(DiskSpec("mbr", (P("x", size="1M"),))).disk_signature


def test_guids_derive_from_seed():
    spec = DiskSpec("gpt", (P("root", size="1M"),), seed="one")
    a, b = plan(spec), plan(spec)
    assert a == b
    c = plan(DiskSpec("gpt", (P("root", size="1M"),), seed="two"))
    assert c.disk_guid != a.disk_guid and c.partitions[0].guid != a.partitions[0].guid
    g = a.partitions[0].guid
    assert g.version == 4 and g.variant == uuid.RFC_4122 and g != a.disk_guid
    fixed = uuid.UUID("11111111-2222-4333-8444-555555555555")
    d = plan(DiskSpec("gpt", (P("root", size="1M", guid=str(fixed)),), disk_guid=fixed))
    assert d.disk_guid == fixed and d.partitions[0].guid == fixed


# -- errors -----------------------------------------------------------------------------------

def _err(spec: DiskSpec) -> LayoutError:
    with pytest.raises(LayoutError) as exc:
        plan(spec)
    return exc.value


def test_overlap_names_both_and_fix():
    e = _err(DiskSpec("gpt", (P("esp", "esp", "8M", offset="1M"),
                              P("root", "linux", "8M", offset="4M")), size="32M"))
    msg = str(e)
    assert "partition 'esp' [1048576, 9437184)" in msg
    assert "overlaps partition 'root' [4194304, 12582912)" in msg
    assert "move partition 'root' to offset 9437184 or later" in e.hint


def test_overlap_with_gpt_header():
    e = _err(DiskSpec("gpt", (P("a", size="1M", offset=0),), size="8M"))
    assert "partition 'a'" in str(e) and "does not fit" in str(e)


def test_content_too_large():
    e = _err(DiskSpec("gpt", (P("root", "linux", "8M", content_size=9 * MiB),)))
    assert str(e) == ("partition 'root': its content is 9 MiB (9437184 bytes) but the partition "
                      "holds only 8 MiB (8388608 bytes)")


def test_disk_too_small():
    e = _err(DiskSpec("gpt", (P("a", size="8M"), P("b", size="8M")), size="16M"))
    assert "partition 'b'" in str(e) and "does not fit" in str(e) and "16 MiB disk" in str(e)
    assert "at least" in e.hint
    e = _err(DiskSpec("gpt", (), size="16K"))
    assert "too small for a GPT" in str(e)


def test_too_many_primaries():
    e = _err(DiskSpec("mbr", tuple(P(f"p{i}", size="1M") for i in range(5))))
    assert "at most 4 primary partitions" in str(e) and "logical" in e.hint
    e = _err(DiskSpec("mbr", tuple(P(f"p{i}", size="1M") for i in range(4))
                      + (P("l", size="1M", logical=True),)))
    assert "counting the extended partition" in str(e)


def test_too_many_gpt_entries():
    e = _err(DiskSpec("gpt", tuple(P(f"p{i}", size="1M") for i in range(129))))
    assert "at most 128 partitions, got 129" in str(e)


def test_grow_twice():
    e = _err(DiskSpec("gpt", (P("a", size="grow"), P("b", size="grow")), size="64M"))
    assert "only one partition can have size 'grow'" in str(e) and "a, b" in str(e)


def test_grow_needs_disk_size():
    e = _err(DiskSpec("gpt", (P("a", size="grow"),)))
    assert "needs a fixed disk size" in str(e)


def test_no_room_to_grow():
    e = _err(DiskSpec("gpt", (P("a", size="1M"), P("b", size="grow"),
                              P("c", size="1M", offset="2M")), size="8M"))
    assert "partition 'b': no room is left for size 'grow'" in str(e)
    e = _err(DiskSpec("gpt", (P("a", size="15M"), P("b", size="grow")), size="16M"))
    assert "partition 'a'" in str(e) and "does not fit" in str(e)


@pytest.mark.parametrize("size,needle", [
    ("12Q", "unknown unit 'Q'"), ("64MB", "unknown unit 'MB'"), ("lots", "'lots'"),
    ("0", "is zero"), ("200%", "at most 100%"),
])
def test_bad_partition_sizes(size, needle):
    with pytest.raises(InputError) as exc:
        plan(DiskSpec("gpt", (P("root", size=size),), size="64M"))
    assert needle in str(exc.value) and "'root'" in str(exc.value)


def test_auto_needs_content_and_percent_needs_disk():
    assert "needs the size of its content" in str(_err(DiskSpec("gpt", (P("a"),))))
    assert "needs a fixed disk size" in str(_err(DiskSpec("gpt", (P("a", size="10%"),))))


def test_mbr_rules():
    e = _err(DiskSpec("mbr", (P("a", size="1M", logical=True), P("b", size="1M"),
                              P("c", size="1M", logical=True))))
    assert "one after another" in str(e)
    e = _err(DiskSpec("mbr", (P("a", size="4M", logical=True), P("b", size="4M", logical=True),
                              P("c", size="1M", offset="6M"))))
    assert "overlaps" in str(e) or "inside the extended partition" in str(e)
    with pytest.raises(InputError, match="GPT-only"):
        plan(DiskSpec("mbr", (P("a", "root-x86-64", "1M"),)))
    assert "GPT feature" in str(_err(DiskSpec("mbr", (P("a", size="1M", attributes=1),))))
    assert "only on MBR" in str(_err(DiskSpec("gpt", (P("a", size="1M", logical=True),))))


def test_reserved_range_over_gpt_header():
    e = _err(DiskSpec("gpt", (P("a", size="1M"),), reserved=[(512, 1024, "stage1.5")]))
    assert "stage1.5 [512, 1024)" in str(e) and "GPT header" in str(e)


def test_label_too_long_and_duplicates():
    with pytest.raises(InputError, match="at most 36 fit"):
        plan(DiskSpec("gpt", (P("a", size="1M", label="x" * 37),)))
    with pytest.raises(InputError, match="used twice: a"):
        plan(DiskSpec("gpt", (P("a", size="1M"), P("a", size="1M"))))


def test_hybrid_rules():
    e = _err(DiskSpec("gpt", tuple(P(f"p{i}", size="1M", hybrid=True) for i in range(4))))
    assert "at most 3" in str(e)
    e = _err(DiskSpec("gpt", (P("r", "root-x86-64", "1M", hybrid=True),)))
    assert "mbr_type" in e.hint
    p = plan(DiskSpec("gpt", (P("r", "root-x86-64", "1M", hybrid=True, mbr_type="linux"),)))
    assert p.partitions[0].mbr_type == 0x83
