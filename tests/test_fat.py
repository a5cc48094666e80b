"""The FAT writer, checked by tools we did not write: fsck.vfat, mtools, file, fatlabel,
mkfs.vfat (for its size defaults) and pyfatfs as an independent reader."""
from __future__ import annotations

import os
import re
import struct

import pytest

from imgkit import tools
from imgkit.errors import InputError, LayoutError
from imgkit.formats.fat import fat_size_for, plan_fat, write_fat
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree

MT_ENV = {"MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
T2023 = 1700000000          # 2023-11-14 22:13:20 UTC

needs = pytest.mark.skipif(
    not all(tools.have(t) for t in ("fsck.vfat", "mdir", "mtype", "minfo", "fatlabel", "file")),
    reason="dosfstools, mtools and file are needed")


# -- helpers ---------------------------------------------------------------------------
def make_tree(files: dict[str, bytes | None], mtime: int = T2023) -> Tree:
    """``path -> bytes`` makes a file, ``path -> None`` a directory."""
    t = Tree(default_mtime=mtime)
    for path, data in files.items():
        if data is None:
            t.add(Entry(path, Kind.DIR, mode=0o755, mtime=mtime))
        else:
            t.add(Entry(path, Kind.FILE, mode=0o644, mtime=mtime, data=BytesBlob(data)))
    return t


def expected(tree: Tree) -> tuple[set[str], dict[str, bytes]]:
    """Directories and file contents a reader should find (hard links read as copies)."""
    dirs, files = set(), {}
    for e in tree:
        if not e.path:
            continue
        if e.kind is Kind.DIR:
            dirs.add(e.path)
        elif e.kind is Kind.FILE:
            with e.data.open() as f:
                files[e.path] = f.read()
        elif e.kind is Kind.HARDLINK:
            with tree[e.target].data.open() as f:
                files[e.path] = f.read()
    return dirs, files


def fsck_clean(img) -> str:
    """fsck.vfat -n must exit 0 and say nothing beyond its banner and summary."""
    proc = tools.run(["fsck.vfat", "-n", str(img)], check=False)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[0].startswith("fsck.fat "), out
    assert re.fullmatch(r".*: \d+ files, \d+/\d+ clusters", lines[-1]), out
    assert len(lines) == 2, f"fsck.vfat reported problems:\n{out}"
    return lines[-1]


def mdir_tree(img) -> tuple[set[str], set[str]]:
    """(directories, files) as `mdir -/ -b` lists them, long names included."""
    out = tools.run(["mdir", "-/", "-b", "-i", str(img), "::"], env=MT_ENV).stdout.decode()
    dirs, files = set(), set()
    for line in out.splitlines():
        if not line.startswith("::/"):
            continue
        path = line[3:]
        (dirs if path.endswith("/") else files).add(path.rstrip("/"))
    return dirs, files


def mtype(img, path: str) -> bytes:
    # mtools reads [ ] as a wildcard class and has no escape: match those with "?".
    pattern = path.replace("[", "?").replace("]", "?")
    return tools.run(["mtype", "-i", str(img), "::/" + pattern], env=MT_ENV).stdout


def minfo(img) -> str:
    return tools.run(["minfo", "-i", str(img), "::"], env=MT_ENV).stdout.decode()


def pyfatfs_tree(img) -> tuple[set[str], dict[str, bytes]]:
    fs = pytest.importorskip("fs")
    pytest.importorskip("pyfatfs")
    handle = fs.open_fs(f"fat://{img}?read_only=true")
    try:
        dirs = {p.lstrip("/") for p in handle.walk.dirs("/")}
        files = {p.lstrip("/"): handle.readbytes(p) for p in handle.walk.files("/")}
    finally:
        handle.close()
    return dirs, files


def check_all(img, tree: Tree, *, pyfatfs: bool = True) -> None:
    fsck_clean(img)
    dirs, files = expected(tree)
    got_dirs, got_files = mdir_tree(img)
    assert got_dirs == dirs
    assert got_files == set(files)
    for path, data in files.items():
        assert mtype(img, path) == data, path
    if pyfatfs:
        assert pyfatfs_tree(img) == (dirs, files)


def mixed_tree(tmp_path) -> Tree:
    host = tmp_path / "host.bin"
    host.write_bytes(os.urandom(70000))
    t = make_tree({
        "EFI/BOOT/BOOTX64.EFI": b"MZ" + bytes(5000),
        "README.TXT": b"upper case 8.3, stored without a long name\n",
        "readme2.txt": b"lower case 8.3\n",
        "Makefile": b"all:\n",
        "a long name with spaces.tar.gz": os.urandom(3000),
        "multi.dot.name.conf": b"x=1\n",
        ".hidden": b"h",
        "ünïcödé ✓.txt": b"utf-16 long name",
        "plus+comma,semi;eq=[br].txt": b"lossy short name",
        "empty": b"",
        "thirteen_char": b"LFN exactly one entry long",
        "n" * 22 + ".txt": b"LFN exactly two entries long",
        "L" * 251 + ".txt": b"the longest name FAT allows",
        "empty dir": None,
        "dir/sub/deep/f.txt": b"deep",
        "dir/sub/deep/" + "x" * 200 + ".bin": b"long long name",
    })
    t.add(Entry("big/host.bin", Kind.FILE, mode=0o444, mtime=T2023,
                data=FileBlob(str(host), 70000)))
    t.add(Entry("big/window.bin", Kind.FILE, mtime=T2023,
                data=FileBlob(str(host), 1000, offset=500)))
    t.add(Entry("big/hardlink.bin", Kind.HARDLINK, target="big/host.bin", mtime=T2023))
    return t


# -- tests -----------------------------------------------------------------------------
@needs
@pytest.mark.parametrize("fat_type", [12, 16, 32])
def test_types_clean_and_readable(tmp_path, fat_type):
    tree = mixed_tree(tmp_path)
    img = tmp_path / "fat.img"
    plan = write_fat(tree, img, fat_type=fat_type, label="IMGKIT")
    assert plan.fat_type == fat_type
    assert img.stat().st_size == plan.size
    check_all(img, tree)
    desc = tools.run(["file", "-s", str(img)]).stdout.decode()
    assert f"FAT ({fat_type} bit)" in desc, desc
    assert f'disk type="FAT{fat_type}   "' in minfo(img)


@needs
def test_cluster_boundaries(tmp_path):
    cs = 2048
    sizes = {"zero": 0, "one": 1, "under": cs - 1, "exact": cs, "over": cs + 1,
             "three": 3 * cs, "odd": 5 * cs + 7}
    tree = make_tree({name: bytes((i * 7 + 1) % 256 for i in range(n))
                      for name, n in sizes.items()})
    img = tmp_path / "fat.img"
    plan = write_fat(tree, img, fat_type=16, cluster_size=cs)
    assert plan.cluster_size == cs
    assert plan.used_clusters == sum(-(-n // cs) for n in sizes.values())
    check_all(img, tree)


@needs
def test_many_long_names_sharing_prefix(tmp_path):
    names = [f"__pycache_module_{i:05d}.cpython-311.pyc" for i in range(2000)]
    tree = make_tree({f"pkg/__pycache__/{n}": n.encode() for n in names})
    img = tmp_path / "fat.img"
    write_fat(tree, img)
    assert ": 2002 files" in fsck_clean(img)      # 2000 files and 2 directories
    got_dirs, got_files = mdir_tree(img)
    assert got_files == {f"pkg/__pycache__/{n}" for n in names}
    assert mtype(img, f"pkg/__pycache__/{names[1234]}") == names[1234].encode()
    # pyfatfs is slow to walk a directory this size file by file: list it, read one.
    fs = pytest.importorskip("fs")
    pytest.importorskip("pyfatfs")
    with fs.open_fs(f"fat://{img}?read_only=true") as handle:
        assert sorted(handle.listdir("/pkg/__pycache__")) == names
        path = f"/pkg/__pycache__/{names[1999]}"
        assert handle.readbytes(path) == names[1999].encode()


@needs
def test_name_outside_the_bmp(tmp_path):
    # mtools 4.0.32 cannot show UTF-16 surrogate pairs; fsck.vfat and pyfatfs check this one.
    tree = make_tree({"emoji-\U0001F600.txt": b"surrogate pair"})
    img = tmp_path / "fat.img"
    write_fat(tree, img)
    fsck_clean(img)
    assert pyfatfs_tree(img) == expected(tree)


@needs
def test_label_serial_hidden_sectors(tmp_path):
    tree = make_tree({"a": b"1"})
    img = tmp_path / "fat.img"
    write_fat(tree, img, label="Boot Disk", serial=0x1234ABCD, hidden_sectors=2048)
    fsck_clean(img)
    assert tools.run(["fatlabel", str(img)]).stdout.decode().strip() == "BOOT DISK"
    info = minfo(img)
    assert "serial number: 1234ABCD" in info
    assert "hidden sectors: 2048" in info
    assert 'disk label="BOOT DISK  "' in info
    assert "physical drive id: 0x80" in info
    assert "media descriptor byte: 0xf8" in info
    assert "sectors per track: 63" in info and "heads: 255" in info
    # The label also sits in the root directory, where mtools and Windows look for it.
    vol = tools.run(["mlabel", "-s", "-i", str(img), "::"], env=MT_ENV).stdout.decode()
    assert "BOOT DISK" in vol


def test_reproducible_and_serial_from_content(tmp_path):
    tree = make_tree({"x/y.txt": b"same", "z": b"zz"})
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    pa = write_fat(tree, a, label="SAME")
    pb = write_fat(tree, b, label="SAME")
    assert a.read_bytes() == b.read_bytes()
    assert pa.serial == pb.serial
    other = plan_fat(make_tree({"x/y.txt": b"same", "z": b"zzz"}), label="SAME")
    assert other.serial != pa.serial


@needs
def test_case_bits(tmp_path):
    names = {"readme.txt", "vmlinuz", "CONFIG.sys", "Mixed.txt"}
    tree = make_tree({n: n.encode() for n in names})
    img = tmp_path / "fat.img"
    write_fat(tree, img, case_bits=True)
    fsck_clean(img)
    assert mdir_tree(img)[1] == names
    for n in names:
        assert mtype(img, n) == n.encode()
    # Only the mixed-case name needs a long-name entry: the root directory holds
    # 3 short entries + (1 long + 1 short), then the end mark.
    raw = img.read_bytes()
    bpb = struct.unpack_from("<HBHBHHBH", raw, 11)
    root = (bpb[2] + bpb[3] * bpb[7]) * 512
    attrs = [raw[root + 32 * i + 11] for i in range(5)]
    assert attrs.count(0x0F) == 1 and raw[root + 32 * 5] == 0


@needs
def test_times(tmp_path):
    t = Tree(default_mtime=T2023)
    t.add(Entry("old", Kind.FILE, mtime=0, data=BytesBlob(b"o")))
    t.add(Entry("new", Kind.FILE, mtime=T2023 + 1, data=BytesBlob(b"n")))
    t.add(Entry("d", Kind.DIR, mtime=T2023))
    img = tmp_path / "fat.img"
    write_fat(t, img)
    fsck_clean(img)
    out = tools.run(["mdir", "-i", str(img), "::"], env=MT_ENV).stdout.decode()
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln[:1].isalpha()}
    # mtools prints FAT times as stored; the writer stores UTC.
    assert "1980-01-01   0:00" in lines["OLD"]             # before 1980: clamped
    assert "2023-11-14  22:13" in lines["NEW"]
    assert "2023-11-14  22:13" in lines["D"]


@needs
@pytest.mark.parametrize("kib", [1024, 8192, 16384, 65536, 262144, 266240, 524288, 1048576])
def test_defaults_follow_mkfs_fat(tmp_path, kib):
    ref = tmp_path / "ref.img"
    tools.run(["mkfs.vfat", "-C", str(ref), str(kib)])
    with open(ref, "rb") as f:
        boot = f.read(512)
    spc = boot[13]
    fat_type = 32 if struct.unpack_from("<H", boot, 22)[0] == 0 else \
        int(boot[54:59].decode().strip()[3:])
    plan = plan_fat(make_tree({"f": b"x"}), size=kib * 1024)
    assert (plan.fat_type, plan.cluster_size) == (fat_type, spc * 512)


@needs
def test_auto_size_is_tight(tmp_path):
    tree = make_tree({f"d{i}/f{j}.bin": bytes(1000 * j) for i in range(5) for j in range(20)})
    need = fat_size_for(tree)
    img = tmp_path / "fat.img"
    plan = write_fat(tree, img, size=need)
    assert plan.size == need == plan.min_size
    assert plan.free_clusters == 0
    check_all(img, tree, pyfatfs=False)
    with pytest.raises(LayoutError) as exc:
        plan_fat(tree, size=need - plan.cluster_size, fat_type=plan.fat_type,
                 cluster_size=plan.cluster_size)
    assert str(need) in str(exc.value)
    # Slack is extra free space on top of the minimum.
    roomy = plan_fat(tree, slack=1 << 20)
    assert roomy.free_bytes >= 1 << 20


def test_too_small_names_needed_and_given():
    tree = make_tree({"big": bytes(3 << 20)})
    with pytest.raises(LayoutError) as exc:
        plan_fat(tree, size=2 << 20)
    msg = str(exc.value)
    assert str(2 << 20) in msg and "needs" in msg


@needs
def test_fat32_forced_small_and_sparse_output(tmp_path):
    tree = make_tree({"EFI/BOOT/BOOTX64.EFI": os.urandom(100000)})
    img = tmp_path / "esp.img"
    with open(img, "wb") as f:
        f.write(b"junk" * 1000)
        plan = write_fat(tree, f, fat_type=32, size=256 << 20)
    assert plan.fat_type == 32 and img.stat().st_size == 256 << 20
    assert img.stat().st_blocks * 512 < 8 << 20, "image should be sparse"
    check_all(img, tree)


@pytest.mark.parametrize("name", ["a:b", "star*", "what?", 'quote"', "lt<", "gt>", "pipe|",
                                  "back\\slash", "ctl\x01", "dot.", "space "])
def test_invalid_names(name):
    tree = make_tree({f"dir/{name}": b"x"})
    with pytest.raises(InputError) as exc:
        plan_fat(tree)
    assert repr(f"dir/{name}") in str(exc.value)


def test_case_duplicates():
    with pytest.raises(InputError, match="letter case"):
        plan_fat(make_tree({"d/README": b"1", "d/readme": b"2"}))


@needs
def test_special_files(tmp_path):
    tree = make_tree({"keep": b"k"})
    tree.add(Entry("link", Kind.SYMLINK, target="keep"))
    with pytest.raises(InputError, match="'link' is a symlink"):
        plan_fat(tree)
    tree.add(Entry("dev/null", Kind.CHAR, rdev=(1, 3)))
    with pytest.raises(InputError, match="'dev/null' is a character device"):
        plan_fat(tree)
    img = tmp_path / "fat.img"
    write_fat(tree, img, skip_special=True)
    fsck_clean(img)
    assert mdir_tree(img) == ({"dev"}, {"keep"})


def test_plan_is_pure_and_write_fails_cleanly(tmp_path):
    tree = Tree()
    tree.add(Entry("gone", Kind.FILE, data=FileBlob(str(tmp_path / "missing"), 10)))
    plan = plan_fat(tree)                     # reads no content
    out = tmp_path / "out.img"
    with pytest.raises(OSError):
        write_fat(tree, out, plan)
    assert not out.exists()


def test_bad_options():
    tree = make_tree({"a": b""})
    for kw in ({"fat_type": 24}, {"cluster_size": 3000}, {"size": 1000},
               {"label": "way too long label"}, {"label": "bad:label"}, {"serial": -1}):
        with pytest.raises(InputError):
            plan_fat(tree, **kw)
    with pytest.raises(LayoutError):
        plan_fat(tree, fat_type=12, size=1 << 30)


@needs
def test_fat12_nearly_full_fat(tmp_path):
    # 12-bit entries straddle bytes; fill almost every cluster a FAT12 can have.
    tree = make_tree({f"f{i:02d}": bytes([i]) * (101 * 512 + i) for i in range(40)})
    img = tmp_path / "fat.img"
    plan = write_fat(tree, img, fat_type=12, cluster_size=512)
    assert plan.fat_type == 12 and 4000 < plan.clusters <= 4084
    # Not pyfatfs here: it counts clusters before it knows the root directory's size, so it
    # reads FAT12 volumes this close to the limit (mkfs.fat's 8 MiB ones too) as FAT16.
    check_all(img, tree, pyfatfs=False)
