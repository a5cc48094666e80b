"""imgkit build: config validation and layout errors, each with the message a user needs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import sh


def build(tmp_path, text: str, *extra):
    cfg = tmp_path / "image.toml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "imgkit", "build", str(cfg), "-O",
                           str(tmp_path / "out"), *extra], capture_output=True, text=True)


DATA_TREE = """
[trees.data]
entries = ["dir /etc 0755 0 0"]
files = { "/etc/hello" = "hello.txt" }
"""


@pytest.fixture
def hello(tmp_path):
    (tmp_path / "hello.txt").write_text("hello\n")
    (tmp_path / "big.bin").write_bytes(b"x" * 200_000)


def test_disk_with_fat_and_ext4_partitions(tmp_path, hello):
    r = build(tmp_path, DATA_TREE + """
[filesystems.esp]
type = "vfat"
tree = "data"
[filesystems.root]
type = "ext4"
tree = "data"
label = "root"
[disk]
output = "disk.qcow2"
format = "qcow2"
partitions = [
  { name = "esp", type = "esp", size = "8M", filesystem = "esp" },
  { name = "swap", type = "swap", size = "1M" },
  { name = "root", type = "root-x86-64", size = "auto", filesystem = "root", attributes = ["no-auto"] },
]
""", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["outputs"][0]
    assert out["format"] == "qcow2" and [p["name"] for p in out["partitions"]] == ["esp", "swap", "root"]
    image = tmp_path / "out" / "disk.qcow2"
    sh("qemu-img", "check", str(image))
    raw = tmp_path / "disk.raw"
    sh("qemu-img", "convert", "-O", "raw", str(image), str(raw))
    assert "No problems found" in sh("sgdisk", "-v", str(raw))
    dump = json.loads(sh("sfdisk", "--json", str(raw)))["partitiontable"]["partitions"]
    assert dump[0]["size"] == 8 * 2048 and dump[0]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert dump[2]["name"] == "root" and "GUID:63" in dump[2].get("attrs", "")
    root_offset = dump[2]["start"] * 512
    assert sh("debugfs", "-R", "cat /etc/hello", f"{raw}?offset={root_offset}").strip() == "hello"
    sh("e2fsck", "-fn", f"{raw}?offset={root_offset}")


@pytest.mark.parametrize("body,message", [
    ("[disk]\noutput = 'd.img'\nsize = '8M'\npartitions = [{ name = 'a', size = '4M' }, "
     "{ name = 'b', size = '4M', offset = '2M' }]", r"overlap"),
    ("[disk]\noutput = 'd.img'\nsize = '4M'\npartitions = [{ name = 'a', size = '8M' }]",
     r"does not fit|too small|larger"),
    ("[disk]\noutput = 'd.img'\npartitions = [{ name = 'a', type = 'bogus-type', size = '1M' }]",
     r"bogus-type"),
    ("[disk]\noutput = 'd.img'\npartitions = [{ name = 'a', size = '12Q' }]", r"12Q"),
    ("[disk]\noutput = 'd.img'\ntable = 'mbr'\npartitions = [" + ", ".join(
        f"{{ name = 'p{i}', size = '1M' }}" for i in range(5)) + "]", r"logical"),
    ("[disk]\noutput = 'd.img'\npartitons = []", r"unknown key 'partitons' in \[disk\]"),
    ("[disk]\noutput = 3", r"disk.output: expected str"),
    ("[filesystems.x]\ntype = 'ntfs'", r"filesystems.x.type: expected one of vfat, ext4, iso9660"),
    ("[initramfs.i]\ntree = 'nope'\noutput = 'i.zst'", r"names tree 'nope', which is not defined"),
    ("[trees.big]\nfiles = { '/big' = 'big.bin' }\n[filesystems.esp]\ntype = 'vfat'\ntree = 'big'\n"
     "[disk]\noutput = 'd.img'\n"
     "partitions = [{ name = 'esp', type = 'esp', size = '32K', filesystem = 'esp' }]",
     r"'esp'"),
    ("seed = 'x'\n", r"declares no output"),
    ("[disk\n", r"not valid TOML"),
])
def test_bad_configs_fail_with_a_clear_message(tmp_path, hello, body, message):
    r = build(tmp_path, body)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "imgkit: error:" in r.stderr
    import re
    assert re.search(message, r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "d.img").exists()


def test_failed_build_keeps_the_previous_image(tmp_path, hello):
    out = tmp_path / "out"
    out.mkdir()
    (out / "d.img").write_bytes(b"previous image")
    r = build(tmp_path, "[disk]\noutput = 'd.img'\nsize = '4M'\npartitions = [{ name = 'a', size = '8M' }]")
    assert r.returncode == 1
    assert (out / "d.img").read_bytes() == b"previous image"
    assert os.listdir(out) == ["d.img"]


def test_fixed_identifiers_and_cluster_size(tmp_path, hello):
    r = build(tmp_path, DATA_TREE + """
[filesystems.esp]
type = "vfat"
tree = "data"
uuid = "1234-ABCD"
cluster_size = "4K"
[filesystems.root]
type = "ext4"
tree = "data"
uuid = "01234567-89ab-cdef-0123-456789abcdef"
[disk]
output = "ids.img"
guid = "11111111-2222-3333-4444-555555555555"
partitions = [{ name = "esp", type = "esp", filesystem = "esp" },
              { name = "root", filesystem = "root", guid = "66666666-7777-4888-9999-aaaaaaaaaaaa" }]
""")
    assert r.returncode == 0, r.stderr
    image = str(tmp_path / "out" / "ids.img")
    table = json.loads(sh("sfdisk", "--json", image))["partitiontable"]
    assert table["id"] == "11111111-2222-3333-4444-555555555555"
    assert table["partitions"][1]["uuid"] == "66666666-7777-4888-9999-AAAAAAAAAAAA"
    esp, root = (p["start"] * 512 for p in table["partitions"])
    info = sh("minfo", "-i", f"{image}@@{esp}", "::")
    assert "serial number: 1234ABCD" in info and "cluster size: 8 sectors" in info
    assert "01234567-89ab-cdef-0123-456789abcdef" in sh("dumpe2fs", "-h", f"{image}?offset={root}")


# -- outputs stay in -O and never collide ---------------------------------------------------
@pytest.mark.parametrize("output", ["../escaped.img", "a/../../escaped.img", "ABS", "sub/", ".", ""])
def test_output_outside_the_output_directory_is_a_config_error(tmp_path, hello, output):
    if output == "ABS":
        output = str(tmp_path / "escaped.img")
    r = build(tmp_path, DATA_TREE + f"""
[filesystems.root]
type = "ext4"
tree = "data"
output = {output!r}
""")
    assert r.returncode != 0
    assert r.stderr.startswith("imgkit: error: "), r.stderr
    assert "image.toml: filesystems.root.output: expected a file name inside the output directory" \
        in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "escaped.img").exists()
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_output_in_a_subdirectory_of_the_output_directory(tmp_path, hello):
    r = build(tmp_path, DATA_TREE + """
[filesystems.root]
type = "ext4"
tree = "data"
output = "images/./root.ext4"
""")
    assert r.returncode == 0, r.stderr
    image = tmp_path / "out" / "images" / "root.ext4"
    sh("e2fsck", "-fn", str(image))
    assert "hello" in sh("debugfs", "-R", "cat /etc/hello", str(image))


def test_two_outputs_with_one_file_name_are_a_config_error(tmp_path, hello):
    r = build(tmp_path, DATA_TREE + """
[filesystems.root]
type = "ext4"
tree = "data"
output = "same.img"
[disk]
output = "./same.img"
partitions = [{ name = "root", filesystem = "root" }]
""")
    assert r.returncode != 0
    assert r.stderr.startswith("imgkit: error: ")
    assert "image.toml: disk.output = 'same.img' is also filesystems.root.output" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
