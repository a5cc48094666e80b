"""Id-mapped layers without a VM: the ``idmap``/``idmaps`` settings, what the init reads of
them, and the ``idmap-mount`` helper (compiled by gcc, checked with ``file`` and ``readelf``,
run on the host as root where it can mount). The boots are in test_idmap_boot.py."""
from __future__ import annotations

import os
import subprocess

import pytest
from conftest import cpio_listing, sh
from test_live import imgkit, source_conf

from imgkit.errors import InputError, ToolError
from imgkit.vm import idmap_helper
from imgkit.vm.guest_init import InitConfig, layer_idmaps, parse_idmap, render_init_conf

# -- the settings ---------------------------------------------------------------------------


def test_map_spellings():
    both = parse_idmap("0:100000:65536", "idmap")
    assert [(r.kind, r.on_disk, r.seen, r.count) for r in both] == [
        ("u", 0, 100000, 65536), ("g", 0, 100000, 65536)]
    cfg = InitConfig(root="PARTLABEL=sq", lowers=("PARTLABEL=ext", "/dir"), upper="tmpfs",
                     idmap="b:0:1000:10", idmaps=(("PARTLABEL=ext", "u:1000:0:1  g:1000:0:1"),))
    assert layer_idmaps(cfg) == {"PARTLABEL=sq": "u:0:1000:10 g:0:1000:10",
                                 "PARTLABEL=ext": "u:1000:0:1 g:1000:0:1",
                                 "/dir": "u:0:1000:10 g:0:1000:10"}


@pytest.mark.parametrize("idmap, idmaps, message", [
    ("x:1:2:3", (), r"init config idmap: expected .* got 'x:1:2:3'"),
    ("u:-1:0:1", (), r"init config idmap: expected .* got 'u:-1:0:1'"),
    ("", (), r"init config idmap: an empty id map"),
    ("u:0:0:0", (), r"init config idmap: range 'u:0:0:0' is empty"),
    ("4294967200:0:100", (), r"range '4294967200:0:100' goes past id 4294967294"),
    ("u:0:100:10 u:5:200:1", (),
     r"uid ranges u:0:100:10 and u:5:200:1 overlap on the on-disk side"),
    ("g:0:100:10 b:50:105:1", (),
     r"gid ranges g:0:100:10 and g:50:105:1 overlap on the seen side"),
    (None, (("PARTLABEL=ext", "u:1:2:3:4"),), r"init config idmaps.'PARTLABEL=ext': expected"),
])
def test_bad_maps(idmap, idmaps, message):
    with pytest.raises(InputError, match=message):
        render_init_conf(InitConfig(root="/dev/vda", lowers=("PARTLABEL=ext",), idmap=idmap,
                                    idmaps=idmaps))


@pytest.mark.parametrize("body, message", [
    ("idmap = 'u:1000:0'", r"init config idmap: expected u\|g\|b:ON_DISK:SEEN:COUNT or "
                           r"ON_DISK:SEEN:COUNT, got 'u:1000:0'"),
    ("idmaps = { 'PARTLABEL=nope' = 'b:0:1:1' }",
     r"init config idmaps: 'PARTLABEL=nope' is not a layer of the root \(root and lowers: "
     r"'/dev/vda', 'PARTLABEL=ext'\)"),
    ("idmaps = 'b:0:1:1'", r"init_config.idmaps: expected table of str"),
])
def test_bad_maps_are_refused_at_build_time_naming_the_setting(tmp_path, body, message):
    import re
    (tmp_path / "c.toml").write_text(
        f"[trees.i]\ninit = 'busybox'\n[trees.i.init_config]\nroot = '/dev/vda'\n"
        f"lowers = ['PARTLABEL=ext']\n{body}\n[initramfs.i]\ntree = 'i'\noutput = 'i.cpio'\n")
    r = imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / "out"), "-q", check=False)
    assert r.returncode == 1 and re.search(message, r.stderr), r.stderr


def test_too_many_ranges():
    text = " ".join(f"u:{i}:{i + 1000}:1" for i in range(341))
    with pytest.raises(InputError, match="341 uid ranges, the kernel takes at most 340"):
        parse_idmap(text, "idmap")


LOOKUP = ('for l in PARTLABEL=sq PARTLABEL=ext /dir "LABEL=L:/live/r.sq" /dev/mapper/root; do '
          'echo "$l=[$(layer_idmap "$l")]"; done\n')


@pytest.mark.parametrize("cfg, expected", [
    (InitConfig(root="PARTLABEL=sq", lowers=("PARTLABEL=ext", "/dir"),
                idmaps=(("PARTLABEL=ext", "u:1000:0:1"),)),
     ["PARTLABEL=sq=[]", "PARTLABEL=ext=[u:1000:0:1]", "/dir=[]"]),
    (InitConfig(root="LABEL=L", file="/live/r.sq", idmap="0:5:1"),
     ["LABEL=L:/live/r.sq=[u:0:5:1 g:0:5:1]"]),
    (InitConfig(root="PARTLABEL=sq", verity="PARTLABEL=v", idmap="g:7:0:1"),
     ["PARTLABEL=sq=[]", "/dev/mapper/root=[g:7:0:1]"]),
])
def test_the_init_reads_each_layers_map(tmp_path, cfg, expected):
    """``layer_idmap`` in the rendered init.conf, sourced by busybox sh, under the names the
    init mounts the layers by (ROOT:FILE for an image file, /dev/mapper/root under verity)."""
    out = source_conf(render_init_conf(cfg), tmp_path, LOOKUP).splitlines()
    assert [line for line in out if not line.endswith("=[]")] == \
        [e for e in expected if not e.endswith("=[]")]
    assert all(e in out for e in expected)


def test_a_plain_config_has_no_map_and_no_helper(tmp_path):
    assert "layer_idmap" not in render_init_conf(InitConfig(root="/dev/vda"))
    listings = {}
    for name, extra in (("plain", ""), ("mapped", "idmap = 'u:1000:0:1 g:1000:0:1'")):
        (tmp_path / f"{name}.toml").write_text(
            f"[trees.i]\ninit = 'busybox'\n[trees.i.init_config]\nroot = '/dev/vda'\n{extra}\n"
            "[initramfs.i]\ntree = 'i'\ncompress = 'none'\noutput = 'i.cpio'\n")
        imgkit("build", str(tmp_path / f"{name}.toml"), "-O", str(tmp_path / name), "-q")
        listings[name] = cpio_listing(str(tmp_path / name / "i.cpio"))
    assert "bin/idmap-mount" not in listings["plain"]
    helper = listings["mapped"]["bin/idmap-mount"]
    assert helper["mode"] == "-rwxr-xr-x" and (helper["uid"], helper["gid"]) == (0, 0)


# -- the helper -----------------------------------------------------------------------------


@pytest.fixture
def helper(tmp_path_factory) -> str:
    return idmap_helper.helper_path(tmp_path_factory.mktemp("cache"))


def test_helper_is_a_static_executable_with_a_content_build_id(helper):
    assert "statically linked" in sh("file", helper) and "ELF 64-bit" in sh("file", helper)
    assert "There is no dynamic section" in sh("readelf", "-d", helper)
    assert not [line for line in sh("readelf", "-lW", helper).splitlines() if "INTERP" in line]
    assert "Build ID:" in sh("readelf", "-n", helper)
    mode = os.stat(helper).st_mode & 0o777
    assert mode == 0o755 and os.stat(os.path.dirname(helper)).st_mode & 0o555 == 0o555


def test_helper_is_reproducible_and_cached(helper, tmp_path):
    again = idmap_helper.helper_path(tmp_path / "other-cache")
    assert again != helper and sh("sha256sum", again).split()[0] == sh("sha256sum", helper).split()[0]
    assert sh("readelf", "-n", again) == sh("readelf", "-n", helper)
    before = os.stat(helper).st_mtime_ns
    assert idmap_helper.helper_path(os.path.dirname(os.path.dirname(helper))) == helper
    assert os.stat(helper).st_mtime_ns == before
    assert sorted(os.listdir(os.path.dirname(helper))) == [os.path.basename(helper)]  # no temporaries


def test_missing_gcc_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError, match="id-mapped layers need gcc") as exc:
        idmap_helper.helper_path(tmp_path / "cache")
    assert "apt-get install gcc" in (exc.value.hint or "")


def test_missing_static_libc_names_the_package(tmp_path, monkeypatch):
    """A gcc without libc6-dev's libc.a fails at the link; the hint names the package."""
    fake = tmp_path / "bin" / "gcc"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "gcc (fake) 0"; exit 0; }\n'
                    'echo "/usr/bin/ld: cannot find -lc: No such file or directory" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(ToolError, match="gcc could not compile idmap-mount.c") as exc:
        idmap_helper.helper_path(tmp_path / "cache")
    assert "apt-get install libc6-dev" in (exc.value.hint or "")
    assert os.listdir(tmp_path / "cache" / "idmap-mount") == []  # nothing half-written left


@pytest.mark.parametrize("argv, message", [
    ([], "usage: idmap-mount SOURCE TARGET"),
    (["/a", "/b", "u:1:2"], "bad map entry 'u:1:2'"),
    (["/a", "/b", "q:1:2:3"], "bad map entry 'q:1:2:3'"),
    (["/a", "/b", "u:1:2:0"], "bad map entry 'u:1:2:0'"),
])
def test_helper_refuses_bad_arguments(helper, argv, message):
    r = subprocess.run([helper, *argv], capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_helper_makes_an_id_mapped_mount_on_the_host(helper, tmp_path):
    """As root: an id-mapped clone of a tmpfs (id-mappable since Linux 6.3) shows on-disk 1000
    as 0 and an unmapped id as the overflow id, and a file root makes through it lands as 1000."""
    if os.geteuid() != 0:
        pytest.skip("privilege: mounting needs root")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(src)]).returncode != 0:
        pytest.skip("privilege: this host cannot mount a tmpfs")
    try:
        (src / "mine").write_text("x")
        (src / "other").write_text("y")
        os.chown(src / "mine", 1000, 1000)
        os.chown(src / "other", 1001, 1001)
        (src / "dir").mkdir()
        os.chown(src / "dir", 1000, 1000)
        r = subprocess.run([helper, str(src), str(dst), "u:1000:0:1 g:1000:0:1"],
                           capture_output=True, text=True)
        if r.returncode != 0 and ("EINVAL" in r.stderr or "EPERM" in r.stderr):
            pytest.skip(f"privilege: this host cannot id-map a tmpfs ({r.stderr.strip()})")
        assert r.returncode == 0, r.stderr
        try:
            assert sh("stat", "-c", "%u:%g", str(dst / "mine"), str(dst / "other")).split() == \
                ["0:0", "65534:65534"]
            (dst / "dir" / "made").write_text("z")  # in a directory root owns through the map
            assert sh("stat", "-c", "%u:%g", str(src / "dir" / "made")).strip() == "1000:1000"
        finally:
            subprocess.run(["umount", str(dst)], check=True)
    finally:
        subprocess.run(["umount", str(src)], check=True)
