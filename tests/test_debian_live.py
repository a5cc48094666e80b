"""The real Debian bookworm root of tests/test_debian.py as a live ISO, booted to ``login:``.

examples/debian-live.toml is built from the same cached debootstrap tar: the root becomes
``live/root.squashfs`` on the ISO (squashfs-tools 4.6 fed a tar stream of the tree), imgkit's
init stacks a tmpfs overlay on it and runs systemd. The squashfs is compared path by path with
the tar (GNU tar's listing against ``unsquashfs -lln``, ping's capability through
``unsquashfs -pf``); the boot must reach ``login:`` with no failed unit, the live report must
show the overlay root and a write into it, and the ISO file must be unchanged afterwards.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess

import pytest
from test_debian import EXAMPLES, _example_work, _imgkit, check_report, tar_listing

from imgkit.debfetch import file_sha256
from imgkit.formats.squashfs_tools import squashfs_tools

_LLN = re.compile(r"^(\S{10}) (\d+)/(\d+) +(\d+|\d+, *\d+) \S+ \S+ squashfs-root(.*?)(?: -> (.*))?$")


@pytest.fixture(scope="module")
def debian_live(tmp_path_factory):
    """The cached root tar and examples/debian-live.toml built from it (the ISO, and the
    squashfs taken out of it with bsdtar)."""
    tar, work = _example_work(tmp_path_factory, "debian-live")
    shutil.copy(os.path.join(EXAMPLES, "debian-live.toml"), work / "debian-live.toml")
    r = _imgkit("build", str(work / "debian-live.toml"), "-O", str(work / "out"), timeout=3000)
    assert "squashfs-tools 4.6" in r.stderr, r.stderr[-2000:]
    iso = str(work / "out" / "debian-live.iso")
    subprocess.run(["bsdtar", "-xf", iso, "-C", str(work), "live/root.squashfs"], check=True)
    return tar, iso, str(work / "live" / "root.squashfs")


def _squashfs_listing(image: str) -> dict[str, tuple]:
    out = subprocess.run(["unsquashfs", "-lln", image], capture_output=True, text=True,
                         check=True, errors="surrogateescape").stdout
    entries = {}
    for line in out.splitlines():
        m = _LLN.match(line)
        if m:
            entries[m[5].lstrip("/")] = (m[1], int(m[2]), int(m[3]), m[4].replace(" ", ""), m[6])
    return entries


@pytest.mark.boot   # with the boots: the build alone takes minutes
@pytest.mark.slow
def test_debian_live_squashfs_matches_the_tar(debian_live):
    tar, _, image = debian_live
    want, got = tar_listing(tar), _squashfs_listing(image)
    differences = []
    for path, t in want.items():
        if not path:
            continue
        real = want[t["hardlink"]] if t["hardlink"] else t
        s = got.get(path)
        if s is None:
            differences.append(f"{path}: missing")
            continue
        mode = stat.filemode(real["mode"])
        size = f"{real['rdev'][0]},{real['rdev'][1]}" if real["rdev"] else str(real["size"])
        if s[0][1:] != mode[1:] or (s[1], s[2]) != (real["uid"], real["gid"]):
            differences.append(f"{path}: {s[:3]} != {mode} {real['uid']}/{real['gid']}")
        elif real["mode"] & 0o170000 in (0o100000, 0o020000, 0o060000) and s[3] != size:
            differences.append(f"{path}: size {s[3]} != {size}")
        elif real["target"] is not None and s[4] != real["target"]:
            differences.append(f"{path}: -> {s[4]} != {real['target']}")
    assert differences == [], differences[:20]
    pf = subprocess.run([squashfs_tools().unsquashfs, "-pf", "-", image], capture_output=True,
                        check=True).stdout.split(b"# START OF DATA")[0].decode(errors="replace")
    assert re.search(r"^usr/bin/ping x security\.capability=", pf, re.M), \
        "ping's security.capability is not in the squashfs"


@pytest.mark.boot
@pytest.mark.slow
# One way for the whole distribution (minutes under TCG); the four ways (BIOS and UEFI, CD and
# disk) are booted with the small live ISO in tests/test_live.py.
@pytest.mark.parametrize("firmware,media", [("bios", "cdrom")])
def test_debian_live_iso_boots_to_login(debian_live, firmware, media):
    _, iso, _ = debian_live
    before = file_sha256(iso)
    extra = ["--iso-as-disk"] if media == "disk" else []
    r = _imgkit("run", iso, "--firmware", firmware, *extra, "--mem", "1024", "--expect",
                "login:", "--timeout", "900", timeout=1000)
    check_report(r.stdout)
    live = dict(re.findall(r"^imgkit-live: (\w+)=(.*)$", r.stdout, re.M))
    assert live.get("root", "").startswith("overlay "), r.stdout[-3000:]
    assert "upperdir=/run/imgkit/upper/upper" in live["root"], live
    assert live.get("wrote") == "written by the live system", live
    assert file_sha256(iso) == before, "the guest changed the ISO"
