"""pax tar output, checked by bsdtar and GNU tar."""
from __future__ import annotations

import os
import subprocess
import tarfile

import pytest
from conftest import bsdtar_listing, parse_ls_listing, sh

from imgkit.archives import write_tarball
from imgkit.sources import read_directory
from imgkit.tree import BytesBlob, Entry, Kind, Tree


def test_tar_listed_by_bsdtar_and_gnu_tar(sample_tree, tmp_path):
    out = tmp_path / "a.tar"
    write_tarball(sample_tree, str(out))
    got = bsdtar_listing(str(out))
    assert got["dev/console"]["size"] == "5,1" and got["dev/console"]["mode"] == "crw-------"
    assert got["home/user"]["uid"] == 1000
    assert got["bin/busybox"]["mode"] == "-rwsr-xr-x"
    assert got["lib64"]["target"] == "/usr/lib64"
    assert got["bin/sh"]["target"] == "bin/busybox"  # hard link after its file
    gnu = sh("tar", "--numeric-owner", "-tvf", str(out))
    assert "run/sock" not in gnu  # tar cannot store sockets: left out, and reported
    assert "bin/sh link to bin/busybox" in gnu
    dest = tmp_path / "x"
    dest.mkdir()
    sh("tar", "-xf", str(out), "-C", str(dest), "--exclude=dev/*", "--exclude=run/*")
    assert os.stat(dest / "bin/sh").st_ino == os.stat(dest / "sbin/init").st_ino


def test_tar_compressed_gzip_is_reproducible(sample_tree, tmp_path):
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    write_tarball(sample_tree, str(a), compress="gzip")
    write_tarball(sample_tree, str(b), compress="gzip")
    assert a.read_bytes() == b.read_bytes()
    assert "bin/busybox" in sh("tar", "-tzf", str(a))


# -- the pax writer's records, read by GNU tar, bsdtar and Python's tarfile -----------------

LONG_DIR = "d" * 120                       # past ustar's 100-byte name field
DEEP = f"{LONG_DIR}/{'e' * 150}/{'f' * 90}"  # 362 bytes: past name and prefix together
UNICODE = "usr/share/zoneinfo/Amérique/São_Paulo €"


def _rich_tree() -> Tree:
    """Names and targets past ustar's fields and outside ASCII, binary xattrs, owners, device
    numbers and times past the octal fields."""
    t = Tree()
    t.add(Entry(f"{DEEP}/file", Kind.FILE, data=BytesBlob(b"deep\n"), mtime=1_700_000_000))
    t.add(Entry(UNICODE, Kind.FILE, data=BytesBlob(b"tz\n"), uid=3_000_000, gid=2_500_000,
                mtime=1_700_000_000))
    t.add(Entry("link-long", Kind.SYMLINK, mode=0o777, target="/" + "t" * 150))
    t.add(Entry("link-unicode", Kind.SYMLINK, mode=0o777, target=UNICODE))
    t.add(Entry("hard-deep", Kind.HARDLINK, target=f"{DEEP}/file"))
    t.add(Entry("dev/big", Kind.CHAR, mode=0o600, rdev=(4000, 3_000_000)))
    t.add(Entry("later", Kind.FILE, data=BytesBlob(b"x"), mtime=2**33 + 5))   # year 2242
    t.add(Entry("caps", Kind.FILE, data=BytesBlob(b"\x7fELF"), mode=0o755, mtime=1_700_000_000,
                xattrs=(("security.capability", CAP), ("user.nl", b"a\nb=c\0d"))))
    return t


CAP = bytes.fromhex("0100000200200000000000000000000000000000")


def test_names_owners_devices_and_times_past_ustar(tmp_path):
    out = tmp_path / "rich.tar"
    write_tarball(_rich_tree(), str(out))
    gnu = sh("tar", "--numeric-owner", "--utc", "--full-time", "--quoting-style=literal", "-tvf",
             str(out))
    assert f"{DEEP}/file\n" in gnu and f"hard-deep link to {DEEP}/file" in gnu
    assert "3000000/2500000" in gnu and UNICODE in gnu
    assert "link-long -> /" + "t" * 150 in gnu and f"link-unicode -> {UNICODE}" in gnu
    assert "4000,3000000" in gnu.replace(" ", "")
    assert "2242-03-16" in gnu.split("later")[0].splitlines()[-1]
    text = subprocess.run(["bsdtar", "-tvnf", str(out)], capture_output=True, check=True,
                          env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout.decode()
    bsd = parse_ls_listing(text)
    assert bsd["dev/big"]["size"] == "4000,3000000" and bsd[UNICODE]["uid"] == 3_000_000
    assert bsd[f"{DEEP}/file"]["size"] == "5"
    with tarfile.open(out) as t:
        members = {m.name: m for m in t}
        assert members["dev/big"].devmajor == 4000 and members["dev/big"].devminor == 3_000_000
        assert members["later"].mtime == 2**33 + 5
        assert members["hard-deep"].linkname == f"{DEEP}/file"
        caps = members["caps"].pax_headers
        assert caps["SCHILY.xattr.user.nl"].encode("utf-8", "surrogateescape") == b"a\nb=c\0d"
        assert t.extractfile(f"{DEEP}/file").read() == b"deep\n"
    listing = sh("tar", "--xattrs", "--xattrs-include=*", "-tvvf", str(out))
    assert "x: 20 security.capability" in listing and "x: 7 user.nl" in listing
    dest = tmp_path / "x"
    dest.mkdir()
    sh("tar", "-xf", str(out), "-C", str(dest), "--exclude=dev/*")
    assert (dest / DEEP / "file").read_bytes() == b"deep\n"
    assert os.stat(dest / "hard-deep").st_ino == os.stat(dest / DEEP / "file").st_ino
    assert os.readlink(dest / "link-unicode") == UNICODE


def _sparse_source(root) -> dict[str, bytes]:
    """Files with holes at the start, the middle and the end, and one that is all hole."""
    root.mkdir()
    layout = {"lead": [(3 * MIB, b"after a hole")], "middle": [(0, b"a" * 5000), (2 * MIB, b"b")],
              "hole": []}
    for name, chunks in layout.items():
        with open(root / name, "wb") as f:
            for offset, data in chunks:
                f.seek(offset)
                f.write(data)
            f.truncate(4 * MIB)
    return {name: (root / name).read_bytes() for name in layout}


MIB = 1 << 20


def test_sparse_members_keep_their_holes_for_every_reader(tmp_path):
    content = _sparse_source(tmp_path / "src")
    out = tmp_path / "sparse.tar"
    write_tarball(read_directory(str(tmp_path / "src")), str(out))
    assert os.path.getsize(out) < 64 * 1024
    with tarfile.open(out) as t:   # GNU sparse 1.0 in pax, as GNU tar -S writes it
        for name, data in content.items():
            member = t.getmember(name)
            assert member.pax_headers["GNU.sparse.major"] == "1" and member.size == 4 * MIB
            assert t.extractfile(member).read() == data, name
    for tool in (["tar", "-xf"], ["bsdtar", "-xf"]):
        dest = tmp_path / tool[0]
        dest.mkdir()
        sh(*tool, str(out), "-C", str(dest))
        for name, data in content.items():
            assert (dest / name).read_bytes() == data, (tool, name)
            assert os.stat(dest / name).st_blocks * 512 <= 64 * 1024, (tool, name)


def test_the_archive_in_a_pipe_is_the_archive_in_a_file(sample_tree, tmp_path):
    """A pipe gets file data through sendfile, a file through copy_file_range: same bytes,
    as GNU tar reading each of them sees it."""
    from imgkit.formats.tar import run_reading_tar

    tree = _rich_tree()
    tree.update(sample_tree)
    (tmp_path / "big").write_bytes(os.urandom(3 * MIB + 7))
    tree.add(Entry("big", Kind.FILE, data=read_directory(str(tmp_path)).get("big").data))
    out = tmp_path / "a.tar"
    write_tarball(tree, str(out))
    piped = tmp_path / "piped.tar"
    code, _ = run_reading_tar(["sh", "-c", f"cat > {piped}"], tree, str(tmp_path / "log"),
                              tool="cat")
    assert code == 0 and piped.read_bytes() == out.read_bytes()
    code, text = run_reading_tar(["tar", "--numeric-owner", "-tvf", "-"], tree,
                                 str(tmp_path / "log"), tool="tar")
    assert code == 0 and text == sh("tar", "--numeric-owner", "-tvf", str(out))


@pytest.mark.parametrize("method,reader", [
    ("gzip", ["tar", "-xzf"]), ("zstd", ["tar", "--zstd", "-xf"]), ("xz", ["tar", "-xJf"]),
    ("lz4", ["bsdtar", "-xf"])])
def test_compressed_tar_is_reproducible_and_read_by_tar(method, reader, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(os.urandom(200_000))
    (src / "text").write_text("hello\n" * 1000)
    a, b = tmp_path / "a.tar.c", tmp_path / "b.tar.c"
    write_tarball(read_directory(str(src)), str(a), compress=method)
    write_tarball(read_directory(str(src)), str(b), compress=method)
    assert a.read_bytes() == b.read_bytes()
    dest = tmp_path / "x"
    dest.mkdir()
    sh(*reader, str(a), "-C", str(dest))
    assert (dest / "data").read_bytes() == (src / "data").read_bytes()
    assert (dest / "text").read_text() == "hello\n" * 1000


def test_same_tree_in_two_places_gives_the_same_bytes(tmp_path):
    for where in ("one", "two"):
        root = tmp_path / where / "root"
        (root / "etc").mkdir(parents=True)
        (root / "etc/hostname").write_text("box\n")
        (root / ("n" * 130)).write_bytes(b"\0" * 10_000)
        for p in (root / "etc/hostname", root / ("n" * 130), root / "etc", root):
            os.utime(p, (1_700_000_000, 1_700_000_000))
        write_tarball(read_directory(str(root)), str(tmp_path / f"{where}.tar"))
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


@pytest.mark.parametrize("fmt", ["v7", "ustar", "gnu", "pax"])
def test_header_declaration_reads_gnu_tar_headers(fmt, tmp_path):
    from imgkit.formats.tar import BLOCK, HEADER, is_member_header, looks_like_tar, parse_number

    (tmp_path / "f").write_bytes(b"x" * 1234)
    out = tmp_path / "a.tar"
    sh("tar", "-H", fmt, "-cf", str(out), "-C", str(tmp_path), "f")
    block = out.read_bytes()[:BLOCK]
    assert looks_like_tar(block)
    assert not looks_like_tar(block[:148] + b"7" + block[149:]) or fmt != "v7"
    fields = HEADER.unpack(block)
    if fmt == "pax":   # GNU tar puts an extended header first
        assert fields.typeflag == b"x"
        return
    assert fields.name.rstrip(b"\0") == b"f" and parse_number(fields.size) == 1234
    assert is_member_header(block, 1234) is (fmt != "v7")   # v7 has no ustar magic
    assert not is_member_header(block, 1233)
