"""ISO 9660 images checked with xorriso (libisofs) and isoinfo (genisoimage)."""
from __future__ import annotations

import os
import re

import pytest

from imgkit import tools
from imgkit.errors import InputError
from imgkit.formats.iso9660 import IsoBoot, write_iso
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree

pytestmark = pytest.mark.skipif(not tools.have("xorriso"), reason="xorriso not installed")

EPOCH = 1_700_000_000
ISOLINUX = "/usr/lib/ISOLINUX/isolinux.bin"


def xorriso(*args: str) -> str:
    proc = tools.run(["xorriso", *args])
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def lsdl(img) -> dict[str, str]:
    """``xorriso -find / -exec lsdl``: path -> its ``ls -l`` style line."""
    out = xorriso("-indev", str(img), "-find", "/", "-exec", "lsdl")
    lines = {}
    for line in out.splitlines():
        m = re.match(r"^([-dlcbps][-rwxsStT]{9})\s.*?'(/[^']*)'", line)
        if m:
            lines[m[2]] = line
    return lines


def isoinfo(*args: str) -> str:
    return tools.run(["isoinfo", *args]).stdout.decode(errors="replace")


def sample_tree(tmp_path) -> Tree:
    src = tmp_path / "payload.bin"
    src.write_bytes(bytes(range(250)) * 400)
    t = Tree(default_mtime=EPOCH - 1000)
    t.add(Entry("usr/bin/BusyBox-Static.Long.Name.x86_64", Kind.FILE, mode=0o4755,
                mtime=EPOCH - 10, data=FileBlob(str(src), 100_000)))
    t.add(Entry("home/user", Kind.DIR, mode=0o750, uid=1000, gid=1000, mtime=EPOCH - 20))
    t.add(Entry("home/user/My Document (final).txt", Kind.FILE, mode=0o640, uid=1000,
                gid=1000, mtime=EPOCH - 30, data=BytesBlob(b"dear diary\n")))
    t.add(Entry("home/user/same-doc", Kind.HARDLINK, target="home/user/My Document (final).txt"))
    t.add(Entry("etc/hostname", Kind.FILE, mode=0o644, mtime=EPOCH - 40,
                data=BytesBlob(b"imgkit\n")))
    t.add(Entry("etc/Hostname", Kind.FILE, mode=0o600, mtime=EPOCH - 40,
                data=BytesBlob(b"other case\n")))
    t.add(Entry("bin", Kind.SYMLINK, mode=0o777, target="usr/bin", mtime=EPOCH - 50))
    t.add(Entry("sh", Kind.SYMLINK, mode=0o777, target="/usr/bin/BusyBox-Static.Long.Name.x86_64"))
    t.add(Entry("dev/console", Kind.CHAR, mode=0o600, rdev=(5, 1)))
    t.add(Entry("dev/sda1", Kind.BLOCK, mode=0o660, gid=6, rdev=(8, 1)))
    t.add(Entry("run/initctl", Kind.FIFO, mode=0o600))
    t.add(Entry("future", Kind.FILE, mtime=EPOCH + 10**6, data=BytesBlob(b"clamped")))
    return t


def test_rock_ridge_joliet_and_extract(tmp_path):
    img = tmp_path / "a.iso"
    info = write_iso(sample_tree(tmp_path), img, volume_id="TESTVOL", mtime_epoch=EPOCH)
    assert info.size == img.stat().st_size and info.size % 2048 == 0

    ls = lsdl(img)
    assert ls["/usr/bin/BusyBox-Static.Long.Name.x86_64"].startswith("-rwsr-xr-x")
    assert re.search(r"\s0\s+0\s+100000\s", ls["/usr/bin/BusyBox-Static.Long.Name.x86_64"])
    assert ls["/home/user"].startswith("drwxr-x---")
    assert re.search(r"\s1000\s+1000\s", ls["/home/user"])
    doc = ls["/home/user/My Document (final).txt"]
    assert doc.startswith("-rw-r-----") and re.search(r"\s1000\s+1000\s+11\s", doc)
    assert ls["/home/user/same-doc"].startswith("-rw-r-----")
    assert ls["/etc/hostname"].startswith("-rw-r--r--")
    assert ls["/etc/Hostname"].startswith("-rw-------")
    assert ls["/bin"].startswith("lrwxrwxrwx") and ls["/bin"].endswith("-> 'usr/bin'")
    assert ls["/sh"].endswith("-> '/usr/bin/BusyBox-Static.Long.Name.x86_64'")
    assert ls["/dev/console"].startswith("crw-------") and re.search(r"\s5,1\s", ls["/dev/console"])
    assert ls["/dev/sda1"].startswith("brw-rw----") and re.search(r"\s0\s+6\s+8,1\s",
                                                                   ls["/dev/sda1"])
    assert ls["/run/initctl"].startswith("prw-------")

    # isoinfo (genisoimage) reads the same Rock Ridge names and modes (it shows no setuid bit)
    rr = isoinfo("-R", "-l", "-i", str(img))
    assert re.search(r"-rwxr-xr-x\s+1\s+0\s+0\s+100000 .* BusyBox-Static.Long.Name.x86_64", rr)
    # isoinfo prints owners in octal: 1000 is 1750
    assert re.search(r"-rw-r-----\s+\d\s+1750\s+1750\s+11 .* My Document \(final\)\.txt", rr)
    assert re.search(r"crw-------\s+1\s+0\s+0\s+0 .* console", rr)
    # Joliet keeps mixed case and long names; plain ISO 9660 names are valid d-characters
    jol = isoinfo("-J", "-l", "-i", str(img))
    assert "BusyBox-Static.Long.Name.x86_64" in jol
    assert "My Document (final).txt" in jol
    assert "hostname" in jol and "Hostname" in jol
    plain = isoinfo("-l", "-i", str(img))
    names = re.findall(r"\]\s+(\S+)\s*$", plain, re.M)
    files = [n for n in names if n not in (".", "..")]
    assert files and all(re.fullmatch(r"[A-Z0-9_]+(\.[A-Z0-9_]*;1)?", n) for n in files), files
    assert "HOSTNAME.;1" in files and "HOSTNAME_1.;1" in files
    assert "Volume id: TESTVOL" in isoinfo("-d", "-i", str(img))

    # extract as whoever runs the test, content and mtime come back
    dest = tmp_path / "out"
    dest.mkdir()
    xorriso("-osirrox", "on", "-indev", str(img), "-extract",
            "/usr/bin/BusyBox-Static.Long.Name.x86_64", str(dest / "bb"),
            "-extract", "/future", str(dest / "future"))
    assert (dest / "bb").read_bytes() == (tmp_path / "payload.bin").read_bytes()
    assert int((dest / "bb").stat().st_mtime) == EPOCH - 10
    assert (dest / "future").read_bytes() == b"clamped"
    assert int((dest / "future").stat().st_mtime) == EPOCH


def test_reproducible(tmp_path):
    a, b = tmp_path / "a.iso", tmp_path / "b.iso"
    write_iso(sample_tree(tmp_path), a, mtime_epoch=EPOCH)
    os.environ["TZ"] = "America/New_York"   # pycdlib would use local time: it must not leak
    try:
        import time
        time.tzset()
        write_iso(sample_tree(tmp_path / ".."), b, mtime_epoch=EPOCH)
    finally:
        del os.environ["TZ"]
        time.tzset()
    assert a.read_bytes() != b"" and a.read_bytes() == b.read_bytes()


def test_directory_of_300_files(tmp_path):
    t = Tree(default_mtime=EPOCH)
    for i in range(300):
        t.add(Entry(f"data/Some Long Common Prefix For Every File number {i:04d}.dat",
                    Kind.FILE, data=BytesBlob(f"{i}\n".encode())))
    img = tmp_path / "many.iso"
    write_iso(t, img, mtime_epoch=EPOCH)
    ls = lsdl(img)
    assert len([p for p in ls if p.startswith("/data/")]) == 300
    jol = isoinfo("-J", "-l", "-i", str(img))
    joliet_names = re.findall(r"\]\s+(Some Long.*?)\s*$", jol, re.M)
    assert len(set(joliet_names)) == 300   # truncated to 64 characters, still unique
    plain = isoinfo("-l", "-i", str(img))
    iso_names = re.findall(r"\]\s+(SOME_LONG\S+)\s*$", plain, re.M)
    assert len(set(iso_names)) == 300
    dest = tmp_path / "x"
    xorriso("-osirrox", "on", "-indev", str(img), "-extract",
            "/data/Some Long Common Prefix For Every File number 0299.dat", str(dest))
    assert dest.read_bytes() == b"299\n"


def test_level1_plain_iso9660(tmp_path):
    """Without Rock Ridge and Joliet only 8.3 names remain; they must be valid and unique."""
    t = Tree(default_mtime=EPOCH)
    for name in ("README", "readme.txt", "ReadMe.TXT", ".profile", "a.b.c.tar.gz",
                 "über.conf", "very-long-directory-name/x"):
        t.add(Entry(name, Kind.FILE, data=BytesBlob(name.encode())))
    img = tmp_path / "l1.iso"
    write_iso(t, img, rock_ridge=False, joliet=False, interchange_level=1,
              mtime_epoch=EPOCH)
    plain = isoinfo("-l", "-i", str(img))
    names = [n for n in re.findall(r"\]\s+(\S+)\s*$", plain, re.M) if n not in (".", "..")]
    assert len(names) == 8 and len(set(names)) == 8, names
    for n in names:
        assert re.fullmatch(r"[A-Z0-9_]{1,8}(\.[A-Z0-9_]{0,3};1)?", n), n
    dest = tmp_path / "x"
    xorriso("-osirrox", "on", "-indev", str(img), "-extract", "/README_1.TXT", str(dest))
    assert dest.read_bytes() in (b"readme.txt", b"ReadMe.TXT")


@pytest.mark.skipif(not os.path.exists(ISOLINUX), reason="isolinux not installed")
def test_el_torito_entries(tmp_path):
    t = sample_tree(tmp_path)
    t.add(Entry("isolinux/isolinux.bin", Kind.FILE,
                data=FileBlob(ISOLINUX, os.path.getsize(ISOLINUX))))
    t.add(Entry("efi.img", Kind.FILE, data=BytesBlob(b"\xeb\x3c\x90" + bytes(512 * 2880 - 3))))
    img = tmp_path / "boot.iso"
    boot = IsoBoot(bios_image="isolinux/isolinux.bin", efi_image="efi.img",
                   catalog="isolinux/boot.cat", isohybrid=True)
    write_iso(t, img, mtime_epoch=EPOCH, boot=boot, seed="s")
    report = xorriso("-indev", str(img), "-report_el_torito", "plain")
    assert re.search(r"El Torito boot img :\s+1\s+BIOS\s+y\s+none", report), report
    assert re.search(r"El Torito boot img :\s+2\s+UEFI\s+y\s+none", report), report
    assert re.search(r"El Torito img path :\s+1\s+/isolinux/isolinux.bin", report)
    assert re.search(r"El Torito img path :\s+2\s+/efi.img", report)
    assert "/isolinux/boot.cat" in report
    data = img.read_bytes()
    assert data[510:512] == b"\x55\xaa"   # isohybrid MBR
    again = tmp_path / "boot2.iso"
    write_iso(t, again, mtime_epoch=EPOCH, boot=boot, seed="s")
    assert again.read_bytes() == data


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError):
        write_iso(Tree(), tmp_path / "x.iso", volume_id="lower case")
    t = Tree()
    t.add(Entry("boot.cat", Kind.FILE, data=BytesBlob(b"")))
    with pytest.raises(InputError):
        write_iso(t, tmp_path / "x.iso", boot=IsoBoot(bios_image="boot.cat"))
    assert not (tmp_path / "x.iso").exists()
