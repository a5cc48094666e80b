"""Binaries with their shared-library closure, read from the ELF dynamic section.

The closure of host binaries is checked against what ``ldd`` reports for them (ldd runs only
on the host's own trusted binaries here, as an independent check); a sysroot with binaries
compiled by gcc exercises ``RUNPATH``/``RPATH`` with ``$ORIGIN`` and the error for a missing
library; initramfs images are listed by ``cpio``; one boot runs copied binaries in the guest.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import cpio_listing, sh

from imgkit.elfdeps import HostRoot, TreeRoot, closure, closure_entries, realpath
from imgkit.errors import InputError

VERITYSETUP = "/usr/sbin/veritysetup"


def ldd(path: str) -> tuple[dict[str, str], str]:
    """``ldd``'s libraries (name -> real path) and the interpreter it names."""
    out = sh("ldd", path)
    libs, interp = {}, ""
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+) \(0x", line)
        if m:
            libs[m[1]] = os.path.realpath(m[2])
        elif re.match(r"\s*/\S+ \(0x", line):
            interp = line.split()[0]
    return libs, interp


@pytest.mark.parametrize("binary", [VERITYSETUP, "/usr/sbin/dmsetup", "/usr/sbin/e2fsck",
                                    "/usr/bin/qemu-img"])
def test_closure_matches_ldd(binary):
    theirs, interp = ldd(binary)
    found = closure(HostRoot(), [binary])
    assert found[0].path == binary and found[0].needed_by is None
    assert found[1].path == interp and found[1].needed_by == binary
    ours = {os.path.basename(r.path): os.path.realpath(r.path) for r in found[2:]}
    assert ours == theirs
    # every library is found where the loader would find it, and names who needs it
    for r in found[2:]:
        assert os.path.realpath(r.path) == r.real
        assert r.needed_by in {x.path for x in found}


def test_a_bare_name_is_looked_up_and_entries_are_deduplicated():
    entries = closure_entries(HostRoot(), ["veritysetup", "dmsetup"], mtime=1700000000)
    paths = [e.path for e in entries]
    assert paths[0] == "usr/sbin/veritysetup" and "usr/sbin/dmsetup" in paths
    assert len(paths) == len(set(paths))
    assert paths.count("lib/x86_64-linux-gnu/libc.so.6") == 1
    assert all(e.uid == 0 and e.gid == 0 and e.mtime == 1700000000 for e in entries)


# -- a sysroot of our own: RUNPATH, RPATH, $ORIGIN, missing libraries ---------------------------

HELLO_C = r"""
#include <stdio.h>
extern const char *greeting(void);
int main(void) { printf("%s\n", greeting()); return 0; }
"""
LIB_C = 'const char *greeting(void) { return "ELFDEPS-APP-RAN"; }\n'


def gcc(*argv: str) -> None:
    sh("gcc", *argv)


@pytest.fixture
def sysroot(tmp_path):
    """``opt/app/bin/app`` (RUNPATH $ORIGIN/../lib), ``opt/app/bin/old`` (RPATH, the old tag)
    and ``opt/app/lib/libgreet.so.1``, with the host's libc and loader copied in."""
    root = tmp_path / "sysroot"
    lib, bindir = root / "opt/app/lib", root / "opt/app/bin"
    lib.mkdir(parents=True)
    bindir.mkdir(parents=True)
    (tmp_path / "app.c").write_text(HELLO_C)
    (tmp_path / "lib.c").write_text(LIB_C)
    gcc("-shared", "-fPIC", "-Wl,-soname,libgreet.so.1", "-o", str(lib / "libgreet.so.1.0"),
        str(tmp_path / "lib.c"))
    os.symlink("libgreet.so.1.0", lib / "libgreet.so.1")
    os.symlink("libgreet.so.1", lib / "libgreet.so")
    gcc("-o", str(bindir / "app"), str(tmp_path / "app.c"), f"-L{lib}", "-lgreet",
        "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib")
    gcc("-o", str(bindir / "old"), str(tmp_path / "app.c"), f"-L{lib}", "-lgreet",
        "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib")
    assert "RUNPATH" in sh("readelf", "-d", str(bindir / "app"))
    assert "RPATH" in sh("readelf", "-d", str(bindir / "old"))
    multiarch = root / "usr/lib/x86_64-linux-gnu"
    multiarch.mkdir(parents=True)
    shutil.copy("/lib/x86_64-linux-gnu/libc.so.6", multiarch / "libc.so.6")
    shutil.copy("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", multiarch / "ld-linux-x86-64.so.2")
    os.symlink("usr/lib", root / "lib")            # merged /usr, as Debian lays it out
    (root / "usr/lib64").mkdir()
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
               root / "usr/lib64/ld-linux-x86-64.so.2")
    os.symlink("usr/lib64", root / "lib64")
    return root


def test_runpath_and_rpath_with_origin(sysroot):
    # the binary runs on the host from where it was built: the loader agrees with us
    assert sh(str(sysroot / "opt/app/bin/app")).strip() == "ELFDEPS-APP-RAN"
    for name in ("app", "old"):
        found = closure(HostRoot(str(sysroot)), [f"/opt/app/bin/{name}"])
        assert [(r.path, r.real) for r in found] == [
            (f"/opt/app/bin/{name}", f"/opt/app/bin/{name}"),
            ("/lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            ("/opt/app/lib/libgreet.so.1", "/opt/app/lib/libgreet.so.1.0"),
            ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        ]


def test_symlinks_stay_inside_the_root(sysroot):
    root = HostRoot(str(sysroot))
    assert realpath(root, "/lib64/ld-linux-x86-64.so.2") == \
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    os.symlink("../../../../../../etc/passwd", sysroot / "opt/escape")
    assert realpath(root, "/opt/escape") is None   # /etc/passwd of the sysroot: absent
    os.symlink("loop2", sysroot / "opt/loop1")
    os.symlink("loop1", sysroot / "opt/loop2")
    assert realpath(root, "/opt/loop1") is None


def test_a_missing_library_names_who_needs_it(sysroot):
    os.remove(sysroot / "opt/app/lib/libgreet.so.1")
    with pytest.raises(InputError, match=r"library libgreet\.so\.1, needed by /opt/app/bin/app, "
                                         r"was not found in the directory .*sysroot") as exc:
        closure(HostRoot(str(sysroot)), ["/opt/app/bin/app"])
    assert "/opt/app/lib" in (exc.value.hint or "")
    with pytest.raises(InputError, match="binary 'nothere' was not found"):
        closure(HostRoot(str(sysroot)), ["nothere"])


def test_a_library_of_another_kind_is_skipped_as_the_loader_does(sysroot):
    """A file that is not a loadable ELF in the RUNPATH directory is passed over."""
    lib = sysroot / "opt/app/lib"
    os.rename(lib / "libgreet.so.1.0", sysroot / "usr/lib/x86_64-linux-gnu/libgreet.so.1")
    os.remove(lib / "libgreet.so.1")
    (lib / "libgreet.so.1").write_text("not an ELF file\n")
    found = closure(HostRoot(str(sysroot)), ["/opt/app/bin/app"])
    assert found[2].path == "/lib/x86_64-linux-gnu/libgreet.so.1"


def test_scripts_are_refused(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/tool").write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(InputError, match=r"is a script \(#!/bin/sh\)"):
        closure(HostRoot(str(tmp_path)), ["/bin/tool"])


# -- the config: binaries from the host and from a tree, in an initramfs ------------------------

def imgkit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"imgkit {' '.join(args)} failed:\n{r.stderr}\n{r.stdout[-3000:]}")
    return r


CONFIG = """
seed = "elfdeps"
mtime = 1700000000

[trees.sys]
sources = ["sysroot"]

[trees.tools]
binaries = ["/opt/app/bin/app"]
binaries_from = "sys"

[trees.initrd]
init = "busybox"
binaries = ["veritysetup", "/usr/sbin/e2fsck"]
rc = '''
veritysetup --version
e2fsck -V 2>&1 | head -1
/opt/app/bin/app
poweroff -f
'''

[initramfs.tools]
tree = "tools"
compress = "none"
output = "tools.cpio"

[initramfs.main]
tree = "initrd"
compress = "none"
output = "initrd.cpio"
"""


def build_config(tmp_path, config=CONFIG, out="out"):
    (tmp_path / "c.toml").write_text(config)
    out = tmp_path / out
    imgkit("build", str(tmp_path / "c.toml"), "-O", str(out), "-q")
    return out


def test_config_binaries_from_host_and_from_a_tree(tmp_path, sysroot):
    out = build_config(tmp_path)
    tools = cpio_listing(str(out / "tools.cpio"))
    assert {"opt/app/bin/app", "opt/app/lib/libgreet.so.1", "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6"} <= set(tools)
    assert tools["opt/app/bin/app"]["mode"] == "-rwxr-xr-x"
    assert tools["opt/app/bin/app"]["uid"] == 0
    initrd = cpio_listing(str(out / "initrd.cpio"))
    theirs, interp = ldd(VERITYSETUP)
    for lib in theirs:
        assert f"lib/x86_64-linux-gnu/{lib}" in initrd, lib
    assert interp.lstrip("/") in initrd and "usr/sbin/veritysetup" in initrd
    assert "init" in initrd and "bin/busybox" in initrd
    # reproducible
    first = (out / "initrd.cpio").read_bytes()
    imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / "again"), "-q")
    assert (tmp_path / "again" / "initrd.cpio").read_bytes() == first


@pytest.mark.parametrize("body, message", [
    ('binaries = ["nothere"]', "binaries: binary 'nothere' was not found in the host"),
    ('binaries = ["/etc/hostname"]', "is not an ELF file"),
    ('binaries = ["veritysetup"]\nbinaries_from = "ghost"',
     "binaries_from: expected \"host\" or another tree, got 'ghost'"),
    ('binaries = ["veritysetup"]\nbinaries_from = "t"',
     "binaries_from: expected \"host\" or another tree, got 't'"),
])
def test_config_binaries_errors(tmp_path, body, message):
    (tmp_path / "c.toml").write_text(f"[trees.t]\n{body}\n[initramfs.i]\ntree = 't'\n"
                                     "output = 'i.cpio'\n")
    if "hostname" in body and not os.path.exists("/etc/hostname"):
        (tmp_path / "c.toml").write_text((tmp_path / "c.toml").read_text()
                                         .replace("/etc/hostname", "/etc/passwd"))
    r = imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / "out"), "-q", check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_tree_root_reads_a_tree(sysroot):
    from imgkit.sources import load_source
    tree = load_source(str(sysroot))
    found = closure(TreeRoot(tree, "tree sys"), ["/opt/app/bin/app"])
    assert [r.path for r in found] == ["/opt/app/bin/app", "/lib64/ld-linux-x86-64.so.2",
                                       "/opt/app/lib/libgreet.so.1",
                                       "/lib/x86_64-linux-gnu/libc.so.6"]


@pytest.mark.boot
def test_boot_runs_copied_binaries(tmp_path, sysroot):
    """veritysetup and e2fsck from the host and the app from a tree, run in the guest."""
    from imgkit.vm import kernel
    # the app's tree first: its cpio is then a source of the initrd tree
    shutil.copy(build_config(tmp_path, out="tools") / "tools.cpio", tmp_path / "tools.cpio")
    build_config(tmp_path, CONFIG.replace('binaries = ["veritysetup", "/usr/sbin/e2fsck"]',
                                          'binaries = ["veritysetup", "/usr/sbin/e2fsck"]\n'
                                          'sources = ["tools.cpio"]'))
    vmlinuz = kernel.fetch_debian_kernel(os.environ.get("IMGKIT_CACHE")).vmlinuz
    r = imgkit("run", "--kernel", vmlinuz, "--initrd", str(tmp_path / "out" / "initrd.cpio"),
               "--append", "console=ttyS0 panic=-1", "--expect", "ELFDEPS-APP-RAN",
               "--timeout", "120", check=False)
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-3000:]}\n{r.stdout[-3000:]}"
    assert re.search(r"veritysetup \d+\.\d+", r.stdout), r.stdout[-3000:]
    assert re.search(r"e2fsck \d+\.\d+", r.stdout), r.stdout[-3000:]
