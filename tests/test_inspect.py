"""``imgkit inspect`` / ``imgkit ls`` on images made by real tools, checked against those tools.

Disks come from sgdisk and sfdisk, filesystems from mkfs.vfat + mcopy, mke2fs -d (+ debugfs
for a device node) and xorriso; what :func:`describe` and :func:`open_tree` report is compared
with sfdisk --json, sgdisk -p, mdir/minfo, dumpe2fs/debugfs, isoinfo and xorriso -find. One
disk made by our own writers is read back through the CLI.
"""
from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import stat
import subprocess
import sys

import pytest
from conftest import sh

from imgkit import tools
from imgkit.browse import open_tree
from imgkit.errors import ImageError, InputError
from imgkit.inspect import describe, detect, format_description
from imgkit.tree import BytesBlob, Entry, Kind, Tree

MiB = 1 << 20
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
EPOCH = 1600000000


def mt(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, env=MTOOLS_ENV)
    assert proc.returncode == 0, (argv, proc.stderr.decode())
    return proc.stdout.decode(errors="replace")


def listing(spec: str) -> dict[str, Entry]:
    tree = open_tree(spec)
    return {e.path: e for e in tree if e.path}


def meta(tree_entries: dict[str, Entry], e: Entry) -> Entry:
    return tree_entries[e.target] if e.kind is Kind.HARDLINK else e


def content(e: Entry) -> bytes:
    with e.data.open() as f:
        return f.read()


def copy_into(src: str, disk: str, offset: int) -> None:
    with open(src, "rb") as s, open(disk, "r+b") as d:
        d.seek(offset)
        while chunk := s.read(MiB):
            d.write(chunk)


# -- GPT + FAT16 + FAT32, made by sgdisk, mkfs.vfat and mcopy ---------------------------------

@pytest.fixture(scope="module")
def gpt_fat(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gptfat")
    src = tmp / "src"
    (src / "EFI" / "BOOT").mkdir(parents=True)
    (src / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"MZ" + bytes(range(256)) * 300)
    (src / "readme.txt").write_text("lower case 8.3 name\n")
    (src / "A long file name.conf").write_text("x" * 5000)
    (src / "empty").write_bytes(b"")
    disk = str(tmp / "disk.img")
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    sh("sgdisk", "-n1:2048:+16M", "-t1:ef00", "-c1:EFI System", "-A1:set:2",
       "-n2:0:+40M", "-t2:0700", "-c2:data part", "-A2:set:60", disk)
    mt("mkfs.vfat", "-n", "MYESP", "-i", "1234abcd", "--offset", "2048", disk, str(16 * 1024))
    start2 = 2048 + 16 * 2048
    mt("mkfs.vfat", "-F", "32", "-n", "DATA32", "-i", "0badf00d", "--offset", str(start2), disk,
       str(40 * 1024))
    mt("mcopy", "-s", "-m", "-i", f"{disk}@@1M", str(src / "EFI"), str(src / "readme.txt"),
       str(src / "A long file name.conf"), str(src / "empty"), "::/")
    mt("mmd", "-i", f"{disk}@@{start2 * 512}", "::/deep")
    mt("mmd", "-i", f"{disk}@@{start2 * 512}", "::/deep/er")
    mt("mcopy", "-m", "-i", f"{disk}@@{start2 * 512}", str(src / "readme.txt"), "::/deep/er/")
    # A fragmented file: it fills the hole a deleted file left, then continues after "c"
    # (on FAT16, which keeps no next-free hint, mtools allocates from the first free cluster).
    for name, size in (("a", 4096), ("b", 4096), ("c", 4096), ("frag.bin", 20000)):
        (src / name).write_bytes(os.urandom(size))
    esp = f"{disk}@@{MiB}"
    mt("mcopy", "-i", esp, str(src / "a"), str(src / "b"), str(src / "c"), "::/")
    mt("mdel", "-i", esp, "::/b")
    mt("mcopy", "-i", esp, str(src / "frag.bin"), "::/")
    return disk, src, start2


def test_gpt_describe_matches_sfdisk_and_sgdisk(gpt_fat):
    disk, _, _ = gpt_fat
    assert detect(disk) == "gpt"
    d = describe(disk)
    table = d["table"]
    sf = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]
    assert table["table"] == "gpt" and sf["label"] == "gpt"
    assert table["disk_guid"].upper() == sf["id"]
    assert table["sector_size"] == sf["sectorsize"] == 512
    assert table["first_usable_lba"] == sf["firstlba"] and table["last_usable_lba"] == sf["lastlba"]
    assert table["backup_ok"]
    assert len(table["partitions"]) == len(sf["partitions"]) == 2
    for ours, theirs in zip(table["partitions"], sf["partitions"], strict=False):
        assert ours["start_lba"] == theirs["start"]
        assert ours["sectors"] == theirs["size"]
        assert ours["size"] == theirs["size"] * 512 and ours["start"] == theirs["start"] * 512
        assert ours["type"].upper() == theirs["type"]
        assert ours["guid"].upper() == theirs["uuid"]
        assert ours["name"] == theirs["name"]
    p1, p2 = table["partitions"]
    assert p1["type_name"] == "esp" and p1["type_description"] == "EFI System"
    assert p1["bootable"] and p1["attribute_names"] == ["legacy-bios-bootable"]
    assert "LegacyBIOSBootable" in sf["partitions"][0]["attrs"]
    assert p2["attribute_names"] == ["read-only"] and p2["type_name"] == "basic-data"
    # sgdisk -p: the human view, sector columns and names.
    text = sh("sgdisk", "-p", disk)
    assert table["disk_guid"].upper() in text
    for p in table["partitions"]:
        assert re.search(rf"^\s+{p['number']}\s+{p['start_lba']}\s+{p['end_lba']}\s.*{p['name']}$",
                         text, re.M)
    human = format_description(d)
    assert "EFI System" in human and "data part" in human and "fat32" in human


def test_fat_filesystems_described_like_mtools(gpt_fat):
    disk, _, start2 = gpt_fat
    parts = describe(disk)["table"]["partitions"]
    for p, offset, kind in ((parts[0], MiB, "fat16"), (parts[1], start2 * 512, "fat32")):
        fs = p["filesystem"]
        assert fs["format"] == kind
        img = f"{disk}@@{offset}"
        listing_text = mt("mdir", "-i", img, "::/")
        assert f"Volume in drive : is {fs['label']}" in listing_text
        assert f"Volume Serial Number is {fs['uuid']}" in listing_text
        info = mt("minfo", "-i", img, "::")
        assert f"cluster size: {fs['sectors_per_cluster']} sectors" in info
        assert f"sector size: {fs['bytes_per_sector']} bytes" in info
        assert f"reserved (boot) sectors: {fs['reserved_sectors']}" in info
        assert f"fats: {fs['fats']}" in info
        assert fs["size"] == p["size"]
    assert parts[0]["filesystem"]["label"] == "MYESP"
    assert parts[0]["filesystem"]["uuid"] == "1234-ABCD"
    assert parts[1]["filesystem"]["uuid"] == "0BAD-F00D"


def test_fat_listing_matches_mdir(gpt_fat):
    disk, src, start2 = gpt_fat
    for spec, img in ((f"{disk}:1", f"{disk}@@{MiB}"), (f"{disk}:EFI System", f"{disk}@@{MiB}"),
                      (f"{disk}:data part", f"{disk}@@{start2 * 512}")):
        entries = listing(spec)
        bare = mt("mdir", "-/", "-b", "-i", img, "::/").splitlines()
        theirs = {line[3:].rstrip("/") for line in bare if line.startswith("::/")}
        assert set(entries) == theirs, spec
        for path, e in entries.items():
            assert (e.uid, e.gid) == (0, 0)
            if e.kind is Kind.DIR:
                assert e.mode == 0o755
            else:
                assert e.kind is Kind.FILE and e.mode == 0o644
                proc = subprocess.run(["mtype", "-i", img, "::/" + path], capture_output=True,
                                      env=MTOOLS_ENV, check=True)
                assert content(e) == proc.stdout, path
    esp = listing(f"{disk}:1")
    assert {"readme.txt", "A long file name.conf", "EFI/BOOT/BOOTX64.EFI", "empty"} <= set(esp)
    big = esp["EFI/BOOT/BOOTX64.EFI"]
    assert big.size == os.path.getsize(src / "EFI" / "BOOT" / "BOOTX64.EFI")
    assert big.data.host_range() is not None
    # mcopy -m kept the host mtime (FAT stores it in 2-second steps, as local time = UTC here).
    assert abs(esp["readme.txt"].mtime - int(os.stat(src / "readme.txt").st_mtime)) <= 2
    assert "deep/er/readme.txt" in listing(f"{disk}:2") and "b" not in esp
    frag = esp["frag.bin"]
    assert frag.data.host_range() is None and len(frag.data.runs) == 2
    assert content(frag) == (src / "frag.bin").read_bytes()


# -- MBR + ext4, made by sfdisk and mke2fs -d ------------------------------------------------

@pytest.fixture(scope="module")
def mbr_ext4(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mbrext")
    root = tmp / "root"
    (root / "etc" / "deep").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("imgkit\n")
    (root / "etc" / "deep" / "data.bin").write_bytes(os.urandom(70000))
    (root / "script").write_text("#!/bin/sh\n")
    os.chmod(root / "script", 0o750)
    os.symlink("etc/hostname", root / "short")
    os.symlink("/" + "x" * 100 + "/target", root / "long")
    os.link(root / "etc" / "hostname", root / "hard")
    for p in ("etc/hostname", "script"):
        os.utime(root / p, (EPOCH, EPOCH))
    fs = str(tmp / "root.ext4")
    sh("mke2fs", "-q", "-t", "ext4", "-L", "ROOTFS", "-U", "0e8e5d2f-4c47-4c63-9d0b-6a1f37f3c1aa",
       "-d", str(root), fs, "8M")
    sh("debugfs", "-w", "-R", "mknod console c 5 1", fs)
    sh("debugfs", "-w", "-R", "sif console mode 020600", fs)
    disk = str(tmp / "disk.img")
    with open(disk, "wb") as f:
        f.truncate(16 * MiB)
    sh("sfdisk", "-q", disk, input=b"label: dos\nlabel-id: 0x12345678\n"
       b"2048,4096,c,*\n6144,,83\n")
    copy_into(fs, disk, 6144 * 512)
    return disk, fs, root


def test_mbr_describe_matches_sfdisk_and_dumpe2fs(mbr_ext4):
    disk, _, _ = mbr_ext4
    assert detect(disk) == "mbr"
    d = describe(disk)
    table = d["table"]
    sf = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]
    assert sf["label"] == "dos" and table["table"] == "mbr"
    assert table["disk_signature"] == sf["id"] == "0x12345678"
    for ours, theirs in zip(table["partitions"], sf["partitions"], strict=True):
        assert ours["start_lba"] == theirs["start"] and ours["sectors"] == theirs["size"]
        assert int(ours["type"], 16) == int(theirs["type"], 16)
        assert ours["bootable"] == bool(theirs.get("bootable"))
    assert table["partitions"][0]["filesystem"]["format"] == "empty"
    fs = table["partitions"][1]["filesystem"]
    dump = sh("dumpe2fs", "-h", f"{disk}?offset={6144 * 512}")
    field = dict(line.split(":", 1) for line in dump.splitlines() if ":" in line)
    assert fs["format"] == "ext4"
    assert fs["label"] == field["Filesystem volume name"].strip() == "ROOTFS"
    assert fs["uuid"] == field["Filesystem UUID"].strip()
    assert fs["blocks"] == int(field["Block count"])
    assert fs["block_size"] == int(field["Block size"])
    assert fs["inodes"] == int(field["Inode count"])
    assert fs["free_blocks"] == int(field["Free blocks"])
    assert set(fs["features"]) == set(field["Filesystem features"].split())
    assert fs["size"] == 8 * MiB
    text = format_description(d)
    assert "0x12345678" in text and "ROOTFS" in text


def _debugfs_ls(device: str, directory: str) -> dict[str, tuple]:
    out = sh("debugfs", "-R", f"ls -l {directory}", device)
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^\s*(\d+)\s+(\d+)\s+\(\d+\)\s+(\d+)\s+(\d+)\s+(\S+)\s+\S+\s+\S+\s(.*)$", line)
        if m and m[6] not in (".", ".."):
            rows[m[6]] = (int(m[1]), int(m[2], 8), int(m[3]), int(m[4]), m[5])
    return rows


def test_ext4_listing_matches_debugfs(mbr_ext4):
    disk, fs, root = mbr_ext4
    entries = listing(f"{disk}:2")
    device = f"{disk}?offset={6144 * 512}"
    seen = set()
    for directory in ("/", "/etc", "/etc/deep", "/lost+found"):
        for name, (_ino, mode, uid, gid, size) in _debugfs_ls(device, directory).items():
            path = (directory.strip("/") + "/" + name).lstrip("/")
            seen.add(path)
            e = entries[path]
            m = meta(entries, e)
            assert m.st_mode == mode, path
            assert (m.uid, m.gid) == (uid, gid), path
            if e.kind in (Kind.FILE, Kind.HARDLINK, Kind.SYMLINK):
                assert str(m.size) == size, path
    assert seen == set(entries)
    assert entries["short"].kind is Kind.SYMLINK and entries["short"].target == "etc/hostname"
    assert entries["long"].target == "/" + "x" * 100 + "/target"
    assert entries["console"].kind is Kind.CHAR and entries["console"].rdev == (5, 1)
    assert entries["console"].mode == 0o600
    # mke2fs -d makes one inode for both names; the first in canonical order is the file.
    assert entries["etc/hostname"].kind is Kind.FILE
    assert entries["hard"].kind is Kind.HARDLINK and entries["hard"].target == "etc/hostname"
    assert entries["script"].mode == 0o750 and entries["script"].mtime == EPOCH
    assert entries["etc/hostname"].mtime == EPOCH
    assert content(entries["etc/deep/data.bin"]) == (root / "etc/deep/data.bin").read_bytes()
    assert content(entries["etc/hostname"]) == b"imgkit\n"
    # The bare filesystem image lists the same.
    assert set(listing(fs)) == set(entries)


# -- ISO 9660 made by xorriso, and a hybrid one -----------------------------------------------

@pytest.fixture(scope="module")
def iso_image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iso")
    src = tmp / "src"
    (src / "boot" / "grub").mkdir(parents=True)
    (src / "boot" / "grub" / "grub.cfg").write_text("menuentry\n")
    (src / "Mixed Case Name.txt").write_text("hello iso\n")
    (src / "bin").mkdir()
    (src / "bin" / "tool").write_bytes(b"\x7fELF" + b"\0" * 3000)
    os.chmod(src / "bin" / "tool", 0o755)
    os.symlink("../boot/grub/grub.cfg", src / "bin" / "cfg")
    iso = str(tmp / "plain.iso")
    sh("xorriso", "-as", "mkisofs", "-R", "-J", "-V", "MYVOLUME", "-o", iso, str(src))
    fat = str(tmp / "efi.img")
    with open(fat, "wb") as f:
        f.truncate(2 * MiB)
    mt("mkfs.vfat", "-n", "EFIBOOT", fat)
    mt("mcopy", "-i", fat, str(src / "boot" / "grub" / "grub.cfg"), "::/GRUB.CFG")
    hybrid = str(tmp / "hybrid.iso")
    sh("xorriso", "-as", "mkisofs", "-R", "-J", "-V", "HYBRID", "-append_partition", "2", "0xef",
       fat, "-o", hybrid, str(src))
    return iso, hybrid, src


def _xorriso_find(iso: str) -> dict[str, tuple]:
    out = sh("xorriso", "-indev", iso, "-find", "/", "-exec", "lsdl")
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S{10})\s+\d+\s+(\d+)\s+(\d+)\s+(\d+)\s.*?'(/[^']*)'(?: -> '(.*)')?$",
                     line)
        if m and m[5] != "/":
            rows[m[5].lstrip("/")] = (m[1], int(m[2]), int(m[3]), int(m[4]), m[6])
    return rows


def test_iso_listing_matches_xorriso(iso_image):
    iso, hybrid, src = iso_image
    for image in (iso, hybrid):
        entries = listing(image)
        theirs = _xorriso_find(image)
        assert set(entries) == set(theirs)
        for path, (mode, uid, gid, size, target) in theirs.items():
            e = entries[path]
            m = meta(entries, e)
            assert stat.filemode(m.st_mode) == mode, path
            assert (m.uid, m.gid) == (uid, gid), path
            if e.kind is Kind.SYMLINK:
                assert e.target == target
            elif e.kind is not Kind.DIR:
                assert m.size == size, path
    entries = listing(iso)
    assert content(entries["Mixed Case Name.txt"]) == b"hello iso\n"
    assert entries["bin/tool"].mode == 0o755
    assert content(entries["bin/tool"]) == (src / "bin" / "tool").read_bytes()


def test_iso_describe_matches_isoinfo(iso_image):
    iso, hybrid, _ = iso_image
    assert detect(iso) == detect(hybrid) == "iso9660"
    d = describe(iso)
    info = sh("isoinfo", "-d", "-i", iso)
    fs = d["filesystem"]
    assert f"Volume id: {fs['label']}" in info and fs["label"] == "MYVOLUME"
    blocks = int(re.search(r"Volume size is: (\d+)", info)[1])
    assert fs["size"] == blocks * 2048
    assert fs["rock_ridge"] and "Rock Ridge signatures" in info
    assert fs["joliet"] and "Joliet" in info
    assert "table" not in d
    h = describe(hybrid)
    sf = json.loads(sh("sfdisk", "--json", hybrid))["partitiontable"]
    assert h["hybrid"] == "mbr"
    assert [(p["start_lba"], p["sectors"]) for p in h["table"]["partitions"]] == \
        [(p["start"], p["size"]) for p in sf["partitions"]]
    esp = h["table"]["partitions"][1]["filesystem"]
    assert esp["format"] == "fat12" and esp["label"] == "EFIBOOT"
    assert set(listing(f"{hybrid}:2")) == {"GRUB.CFG"}
    assert "Hybrid" in format_description(h)


# -- our own writers, through the CLI ---------------------------------------------------------

def imgkit(*argv: str) -> subprocess.CompletedProcess:
    """``python -m imgkit ARGS``."""
    return subprocess.run([sys.executable, "-m", "imgkit", *argv], capture_output=True, text=True)


@pytest.fixture(scope="module")
def own_disk(tmp_path_factory):
    from imgkit.disk.image import write_disk
    from imgkit.disk.layout import DiskSpec, plan
    from imgkit.disk.layout import PartitionSpec as P
    from imgkit.formats.ext4 import write_ext4
    from imgkit.formats.fat import write_fat

    tmp = tmp_path_factory.mktemp("own")
    esp = Tree()
    esp.add(Entry("EFI/BOOT/BOOTX64.EFI", Kind.FILE, mtime=EPOCH, data=BytesBlob(b"MZ" * 4000)))
    esp.add(Entry("loader/loader.conf", Kind.FILE, mtime=EPOCH, data=BytesBlob(b"timeout 0\n")))
    root = Tree()
    root.add(Entry("etc/os-release", Kind.FILE, mode=0o644, uid=0, gid=0, mtime=EPOCH,
                   data=BytesBlob(b"ID=imgkit\n")))
    root.add(Entry("home/user", Kind.DIR, mode=0o700, uid=1000, gid=1000, mtime=EPOCH))
    root.add(Entry("bin/sh", Kind.SYMLINK, mode=0o777, target="busybox", mtime=EPOCH))
    root.add(Entry("dev/null", Kind.CHAR, mode=0o666, rdev=(1, 3), mtime=EPOCH))
    esp_img, root_img = str(tmp / "esp.img"), str(tmp / "root.img")
    write_fat(esp, esp_img, size=8 * MiB, label="ESP")
    write_ext4(root, root_img, label="root", seed="t", mtime_epoch=EPOCH)
    p = plan(DiskSpec("gpt", (
        P("esp", "esp", content_size=os.path.getsize(esp_img)),
        P("root", "root-x86-64", content_size=os.path.getsize(root_img)),
    ), seed="inspect"))
    disk = str(tmp / "disk.img")
    write_disk(p, {"esp": esp_img, "root": root_img}, disk)
    return disk, p, root


def test_own_disk_through_cli(own_disk):
    disk, p, root = own_disk
    proc = imgkit("inspect", disk, "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    parts = d["table"]["partitions"]
    assert [q["name"] for q in parts] == ["esp", "root"]
    assert [q["start"] for q in parts] == [q.start for q in p.partitions]
    assert parts[0]["filesystem"]["format"].startswith("fat")
    assert parts[0]["filesystem"]["label"] == "ESP"
    assert parts[1]["filesystem"]["format"] == "ext4"
    assert parts[1]["filesystem"]["label"] == "root"
    assert parts[1]["type_name"] == "root-x86-64"
    assert d["table"]["disk_guid"] == str(p.disk_guid)
    human = imgkit("inspect", disk)
    assert human.returncode == 0 and "root-x86-64" in human.stdout
    ls = imgkit("ls", "--json", f"{disk}:2")
    assert ls.returncode == 0, ls.stderr
    rows = {r["path"]: r for r in json.loads(ls.stdout)}
    for e in root:
        if not e.path:
            continue
        r = rows["/" + e.path]
        assert r["type"] == e.kind.value and int(r["mode"], 8) == e.mode, e.path
        assert (r["uid"], r["gid"], r["mtime"]) == (e.uid, e.gid, e.mtime), e.path
    assert rows["/bin/sh"]["target"] == "busybox"
    assert rows["/dev/null"]["rdev"] == [1, 3]
    ls = imgkit("ls", "-n", f"{disk}:esp", "EFI")
    assert ls.returncode == 0, ls.stderr
    assert "/EFI/BOOT/BOOTX64.EFI" in ls.stdout and "loader" not in ls.stdout


def test_cli_errors(own_disk, tmp_path):
    disk, _, _ = own_disk
    r = imgkit("inspect", str(tmp_path / "missing.img"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x13\x37JUNKDATA" * 100)
    r = imgkit("inspect", str(junk))
    assert r.returncode == 1 and "13 37 4a 55" in r.stderr and "recognised" in r.stderr
    r = imgkit("ls", f"{disk}:9")
    assert r.returncode == 1 and "no partition '9'" in r.stderr
    assert "1 (esp)" in r.stderr and "2 (root)" in r.stderr
    r = imgkit("ls", disk)
    assert r.returncode == 1 and "partitioned disk" in r.stderr
    r = imgkit("inspect", "--help")
    assert r.returncode == 0 and "--json" in r.stdout


def test_errors_in_the_library(own_disk, tmp_path, iso_image):
    disk, _, _ = own_disk
    with pytest.raises(InputError, match="does not exist"):
        describe(tmp_path / "nope")
    with pytest.raises(InputError, match="no partition 'swap'"):
        open_tree(f"{disk}:swap")
    with pytest.raises(InputError, match="not a partitioned disk"):
        open_tree(f"{iso_image[0]}:1")
    # A path that exists wins over the IMAGE:PARTITION reading.
    odd = tmp_path / "odd:1"
    os.symlink(iso_image[0], odd)
    assert "bin/tool" in listing(str(odd))
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(4096))
    with pytest.raises(ImageError, match="zeros"):
        describe(zeros)


# -- archives, qcow2, PE ----------------------------------------------------------------------

def test_archives_detected_behind_compression(tmp_path, iso_image):
    _, _, src = iso_image
    raw = subprocess.run(["bsdtar", "--format", "newc", "-cf", "-", "-C", str(src), "."],
                         capture_output=True, check=True).stdout
    count = len(sh("bsdtar", "-tf", "-", input=raw).splitlines())
    cases = {"a.cpio": raw, "a.cpio.gz": gzip.compress(raw), "a.cpio.xz": lzma.compress(raw)}
    if tools.have("zstd"):
        cases["a.cpio.zst"] = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True,
                                             check=True).stdout
    if tools.have("lz4"):
        cases["a.cpio.lz4"] = subprocess.run(["lz4", "-q", "-c"], input=raw, capture_output=True,
                                             check=True).stdout
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert detect(str(path)) == "cpio", name
        d = describe(path)
        assert d["archive"]["entries"] == count, name
        assert set(listing(str(path))) >= {"bin/tool", "boot/grub/grub.cfg"}
    tar = tmp_path / "a.tar"
    sh("tar", "-cf", str(tar), "-C", str(src), ".")
    assert detect(str(tar)) == "tar"
    with open(tar, "rb") as f:
        f.seek(0)
        assert detect(f) == "tar"


def test_qcow2_describes_its_virtual_disk(gpt_fat, tmp_path):
    disk, _, _ = gpt_fat
    q = str(tmp_path / "disk.qcow2")
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, q)
    assert detect(q) == "qcow2"
    d = describe(q)
    info = json.loads(sh("qemu-img", "info", "--output=json", q))
    assert d["qcow2"]["virtual_size"] == info["virtual-size"] == os.path.getsize(disk)
    raw = describe(disk)["table"]
    got = d["qcow2"]["contents"]["table"]
    assert got["partitions"] == raw["partitions"]
    assert set(listing(f"{q}:1")) == set(listing(f"{disk}:1"))
    assert "Virtual disk" in format_description(d)


STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"


@pytest.mark.skipif(not os.path.exists(STUB), reason="systemd-boot-efi is not installed")
def test_pe_and_uki_sections_match_objdump(tmp_path):
    assert detect(STUB) == "pe"
    d = describe(STUB)
    names = [s["name"] for s in d["pe"]["sections"]]
    objdump = sh("objdump", "-h", STUB)
    theirs = re.findall(r"^\s+\d+\s+(\S+)\s+[0-9a-f]+", objdump, re.M)
    assert names == theirs
    uki = str(tmp_path / "uki.efi")
    (tmp_path / "cmdline").write_text("console=ttyS0")
    (tmp_path / "linux").write_bytes(b"K" * 4096)
    sh("objcopy", "--add-section", f".cmdline={tmp_path / 'cmdline'}",
       "--change-section-vma", ".cmdline=0x30000", "--add-section",
       f".linux={tmp_path / 'linux'}", "--change-section-vma", ".linux=0x2000000", STUB, uki)
    assert detect(uki) == "uki"
    u = describe(uki)
    assert u["pe"]["uki"] and u["pe"]["cmdline"] == "console=ttyS0"
    assert "UKI" in format_description(u)


@pytest.mark.parametrize("fmt,options", [("vmdk", ()), ("vhdx", ()), ("vpc", ("-o", "force_size=on"))])
def test_virtual_disks_made_by_qemu_img_are_described(tmp_path, fmt, options):
    """qemu-img's own vmdk, vhdx and vpc files: the virtual size from their headers, the disk
    inside never opened; a truncated file is one error naming what is missing."""
    image = tmp_path / f"disk.{fmt}"
    sh("qemu-img", "create", "-q", "-f", fmt, *options, str(image), "48M")
    d = describe(str(image))
    assert d["format"] == fmt and d["virtual_disk"]["virtual_size"] == 48 << 20
    assert f"{fmt} virtual disk: virtual size 50,331,648 bytes" in format_description(d)
    with open(image, "rb") as f:
        head = f.read(600 if fmt != "vhdx" else 70000)
    (tmp_path / "cut").write_bytes(head)
    with pytest.raises(ImageError):
        describe(str(tmp_path / "cut"))
