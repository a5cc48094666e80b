"""The real Debian bookworm root of tests/test_debian.py as a live ISO, booted to ``login:``.

examples/debian-live.toml is built from the same cached debootstrap tar: the root becomes
``live/root.squashfs`` on the ISO (squashfs-tools 4.6 fed a tar stream of the tree), imgkit's
init stacks a tmpfs overlay on it and runs systemd. The squashfs is compared path by path with
the tar (tests/fidelity.py: Python's tarfile against ``unsquashfs -pf``); the boot must reach
``login:`` with no failed unit, the live report must show the overlay root and a write into it,
and the ISO file must be unchanged afterwards.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from fidelity import differences, squashfs_listing, tar_source
from test_debian import EXAMPLES, _example_work, _imgkit, check_report

from imgkit.debfetch import file_sha256
from imgkit.formats.squashfs_tools import squashfs_tools


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


@pytest.mark.boot   # with the boots: the build alone takes minutes
@pytest.mark.slow
def test_debian_live_squashfs_matches_the_tar(debian_live):
    """Every path of the tar in the squashfs as ``unsquashfs -pf`` shows it (tests/fidelity.py):
    kind, mode, owner, size, target, device numbers, hard links and contents. The build adds
    its own files (the live check unit) and sets its own times, and squashfs has no place for
    the POSIX ACLs of /var/log/journal: those are not compared; ping's capability is."""
    tar, _, image = debian_live
    diffs = differences(tar_source(tar), squashfs_listing(image),
                        cannot_hold={"mtime": "the build's own times",
                                     "xattrs": "compared for ping below; squashfs holds no ACLs"})
    diffs = [d for d in diffs if "in the image, not in the source" not in d]
    assert diffs == [], "\n".join(diffs[:40])
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
