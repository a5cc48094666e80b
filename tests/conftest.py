"""Shared fixtures and the listing parsers of the real tools our outputs are checked with."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from imgkit.tree import BytesBlob, Entry, Kind, Tree

# Tests and the runtime share one kernel cache (so a root and an unprivileged run reuse it).
os.environ.setdefault("IMGKIT_CACHE", "/tmp/imgkit-cache")
# Builds run by the tests are real builds: a second build of the same config must not be the
# first one's cached bytes (tests/test_incremental.py turns the artifact cache on for itself).
os.environ.setdefault("IMGKIT_CACHE_LIMIT", "0")


def sh(*argv: str, input: bytes | None = None, check: bool = True) -> str:
    """Run a real tool and return its stdout (tests may call tools directly)."""
    proc = subprocess.run(argv, input=input, capture_output=True, env={**os.environ, "LC_ALL": "C"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc.stdout.decode(errors="replace")


_LS = re.compile(r"^(?P<mode>\S{10})\s+(?P<nlink>\d+)\s+(?P<uid>\d+)\s+(?P<gid>\d+)\s+"
                 r"(?P<size>\d+|\d+,\s*\d+)\s+\w{3}\s+\d+\s+[\d:]+\s(?P<name>.*)$")


def parse_ls_listing(text: str) -> dict[str, dict]:
    """Parse ``cpio -itv --numeric-uid-gid`` or ``bsdtar -tvnf`` lines into path -> fields."""
    out: dict[str, dict] = {}
    for line in text.splitlines():
        m = _LS.match(line)
        if not m:
            continue
        name, target = m["name"], None
        if " -> " in name:
            name, target = name.split(" -> ", 1)
        elif " link to " in name:
            name, target = name.split(" link to ", 1)
        name = name.rstrip("/")
        if name.startswith("./"):
            name = name[2:]
        out[name] = {"mode": m["mode"], "nlink": int(m["nlink"]), "uid": int(m["uid"]),
                     "gid": int(m["gid"]), "size": re.sub(r"\s", "", m["size"]), "target": target}
    return out


def cpio_listing(path: str) -> dict[str, dict]:
    with open(path, "rb") as f:
        return parse_ls_listing(sh("cpio", "-itv", "--numeric-uid-gid", "--quiet", input=f.read()))


def bsdtar_listing(path: str) -> dict[str, dict]:
    return parse_ls_listing(sh("bsdtar", "-tvnf", path))


@pytest.fixture
def sample_tree() -> Tree:
    """Every kind of entry, owners other than 0, a hard-link set across directories."""
    t = Tree()
    t.add(Entry("bin/busybox", Kind.FILE, mode=0o4755, data=BytesBlob(b"\x7fELF" + b"x" * 5000)))
    t.add(Entry("bin/sh", Kind.HARDLINK, target="bin/busybox"))
    t.add(Entry("sbin/init", Kind.HARDLINK, target="bin/busybox"))
    t.add(Entry("bin/ls", Kind.SYMLINK, mode=0o777, target="busybox"))
    t.add(Entry("lib64", Kind.SYMLINK, mode=0o777, target="/usr/lib64"))
    t.add(Entry("dev", Kind.DIR, mode=0o755))
    t.add(Entry("dev/console", Kind.CHAR, mode=0o600, rdev=(5, 1)))
    t.add(Entry("dev/sda", Kind.BLOCK, mode=0o660, gid=6, rdev=(8, 0)))
    t.add(Entry("run/initctl", Kind.FIFO, mode=0o600))
    t.add(Entry("run/sock", Kind.SOCKET, mode=0o755))
    t.add(Entry("home/user", Kind.DIR, mode=0o700, uid=1000, gid=1000))
    t.add(Entry("home/user/empty", Kind.FILE, mode=0o644, uid=1000, gid=1000, data=BytesBlob(b"")))
    t.add(Entry("etc/" + "n" * 200, Kind.FILE, mode=0o600, data=BytesBlob(b"long name\n")))
    return t


# In CI every tool is installed (packages.txt): a skipped test there means a missing package,
# which must fail the run instead of passing silently. The only allowed skips are those that
# depend on who runs the test (reason "privilege: ..."): `make test` runs as root and as 65534.
_skipped: list[str] = []


_SLOW_ONCE = "IMGKIT_SLOW_IN_UNPRIVILEGED_PASS"


def pytest_collection_modifyitems(config, items):
    """``make test`` as root runs the suite twice, as root and as uid 65534. Booting a whole
    distribution (``slow`` and ``boot``) takes minutes, and what it must prove is that a plain
    user can do it: with IMGKIT_SLOW_IN_UNPRIVILEGED_PASS set, the root pass leaves those boots
    to the uid 65534 pass (where they may not be skipped: see below). The root pass still runs
    the slow tests that do not boot, which make the root-only caches (debootstrap's tar)."""
    if os.geteuid() != 0 or not os.environ.get(_SLOW_ONCE):
        return
    skip = pytest.mark.skip(reason="privilege: a distribution boots in the uid 65534 pass")
    for item in items:
        if "slow" in item.keywords and "boot" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    if report.skipped:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        once_here = os.environ.get(_SLOW_ONCE) and os.geteuid() != 0 and "slow" in report.keywords
        if "privilege:" not in reason or once_here:
            _skipped.append(f"{report.nodeid} ({reason})")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and _skipped and exitstatus == 0:
        print(f"\nCI: {len(_skipped)} test(s) skipped; every test must run in CI:", *_skipped[:20],
              sep="\n  ")
        session.exitstatus = 1


def sfdisk_partitions(image: str) -> list[dict]:
    """The partitions of a disk image as sfdisk reads them (``start``/``size`` in sectors)."""
    import json
    return json.loads(sh("sfdisk", "--json", image))["partitiontable"]["partitions"]


def copy_partition(image: str, part: dict, dest) -> None:
    """Write the bytes of partition ``part`` (an :func:`sfdisk_partitions` row) to ``dest``."""
    with open(image, "rb") as f:
        f.seek(part["start"] * 512)
        data = f.read(part["size"] * 512)
    with open(dest, "wb") as out:
        out.write(data)


def host_source_dir(src, epoch: int) -> None:
    """A host directory with every kind an unprivileged user can make (devices if root)."""
    (src / "etc").mkdir(parents=True)
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "etc" / "hostname").write_bytes(b"imgkit\n")
    (src / "usr" / "bin" / "tool").write_bytes(bytes(range(256)) * 40)
    os.chmod(src / "usr" / "bin" / "tool", 0o4755)
    os.link(src / "usr" / "bin" / "tool", src / "usr" / "bin" / "tool2")
    os.symlink("usr/bin", src / "bin")
    os.mkfifo(src / "etc" / "fifo")
    (src / "etc" / "secret").write_bytes(b"s\n")
    os.chmod(src / "etc" / "secret", 0o600)
    (src / "etc" / "tagged").write_bytes(b"t\n")
    try:
        os.setxattr(src / "etc" / "tagged", "user.tag", b"v")
    except OSError:
        pass
    if os.getuid() == 0:
        (src / "dev").mkdir()
        os.mknod(src / "dev" / "null", 0o20666, os.makedev(1, 3))
        os.mknod(src / "dev" / "sda", 0o60660, os.makedev(8, 0))
    for p in sorted(src.rglob("*"), reverse=True):
        os.utime(p, ns=(epoch * 10**9 + 123, epoch * 10**9 + 456), follow_symlinks=False)
