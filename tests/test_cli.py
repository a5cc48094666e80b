"""The command line: help, errors with hints and exit codes, nothing half-written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import cpio_listing


def imgkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.parametrize("cmd", ["initramfs", "tar", "ls"])
def test_help(cmd):
    r = imgkit(cmd, "--help")
    assert r.returncode == 0 and "usage: imgkit " + cmd in r.stdout


def test_initramfs_with_entries_and_json(tmp_path):
    (tmp_path / "hello").write_text("hi\n")
    out = tmp_path / "i.cpio"
    r = imgkit("initramfs", "--entry", "nod /dev/console 0600 0 0 c 5 1",
               "--file", f"{tmp_path}/hello:/etc/hello:0640", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["compression"] == "none" and summary["entries"] == 4
    got = cpio_listing(str(out))
    assert got["etc/hello"]["mode"] == "-rw-r-----"
    ls = imgkit("ls", "-n", str(out))
    row = next(line for line in ls.stdout.splitlines() if line.endswith("/dev/console"))
    assert row.split()[:5] == ["crw-------", "0", "0", "5,", "1"]


def test_missing_source_is_named(tmp_path):
    r = imgkit("initramfs", str(tmp_path / "nope"), "-o", str(tmp_path / "x.gz"))
    assert r.returncode == 1
    assert "source" in r.stderr and "nope" in r.stderr and "does not exist" in r.stderr
    assert "hint:" in r.stderr
    assert not list(tmp_path.iterdir())


def test_bad_list_keeps_previous_output(tmp_path):
    lst = tmp_path / "bad.list"
    lst.write_text("dir /a 0755 0 0\nslink /b\n")
    out = tmp_path / "initrd.gz"
    out.write_bytes(b"old")
    r = imgkit("initramfs", str(lst), "-o", str(out))
    assert r.returncode == 1 and "bad.list:2:" in r.stderr
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.list", "initrd.gz"]


def test_no_command_prints_usage():
    r = imgkit()
    assert r.returncode == 2 and "usage:" in r.stderr
