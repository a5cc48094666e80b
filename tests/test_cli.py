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


def test_help_lists_every_command_with_its_line():
    from imgkit.cli import COMMANDS

    r = imgkit("--help")
    assert r.returncode == 0
    for name, entry in COMMANDS.items():
        assert any(line.split()[:1] == [name] for line in r.stdout.splitlines()), name
        assert " ".join(entry.help.split()[:3]) in r.stdout, name


@pytest.mark.parametrize("cmd", ["inspect", "build", "run", "kernel", "virt"])
def test_help_of_the_other_commands(cmd):
    r = imgkit(cmd, "--help")
    assert r.returncode == 0 and "usage: imgkit " + cmd in r.stdout


HEAVY = ("construct", "libarchive", "pycdlib", "pyfatfs", "zstandard")


def imported_by(*args: str) -> set[str]:
    """Top-level modules that ``imgkit ARGS`` imports, as this interpreter sees them."""
    code = ("import sys\nfrom imgkit.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return set(r.stderr.strip().splitlines()[-1].split())


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["tar", "--help"],
                                  ["build", "--help"], ["inspect", "--help"]])
def test_start_up_imports_no_format_library(args):
    modules = imported_by(*args)
    assert "argparse" in modules  # the probe itself worked
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_only_the_chosen_command_is_imported():
    from imgkit.cli import COMMANDS

    modules = imported_by("tar", "--help")
    commands = {entry.module for entry in COMMANDS.values()}
    assert modules & commands == {"imgkit.cli.tar"}
    assert not imported_by("--help") & commands


EMPTY_DISK = """[disk]
output = "d.img"
partitions = [
  { name = "a", type = "linux", size = "1M" },
  { name = "b", type = "linux", size = "1M" },
]
"""


def test_a_disk_of_empty_partitions_imports_no_tree_or_boot_machinery(tmp_path):
    (tmp_path / "d.toml").write_text(EMPTY_DISK)
    modules = imported_by("build", "-q", str(tmp_path / "d.toml"), "-O", str(tmp_path / "out"))
    assert "imgkit.build" in modules and "construct" in modules  # it built a GPT
    unwanted = {"pycdlib", "libarchive", "pyfatfs", "zstandard", "imgkit.assemble", "imgkit.idmap",
                "imgkit.tree", "imgkit.sources", "imgkit.tools", "subprocess"}
    assert not modules & unwanted, sorted(modules & unwanted)
    assert not [m for m in modules if m.startswith(("imgkit.bootloaders.", "imgkit.fstypes."))
                and m != "imgkit.bootloaders.table"]
    table = json.loads(subprocess.run(["sfdisk", "--json", str(tmp_path / "out" / "d.img")],
                                      capture_output=True, text=True, check=True).stdout)
    assert [(p["start"], p["size"]) for p in table["partitiontable"]["partitions"]] == \
        [(2048, 2048), (4096, 2048)]


def test_an_initramfs_build_imports_no_disk_planner(tmp_path):
    (tmp_path / "i.toml").write_text('[trees.t]\nentries = ["dir /etc 0755 0 0"]\n'
                                     '[initramfs.main]\ntree = "t"\ncompress = "none"\n'
                                     'output = "i.cpio"\n')
    modules = imported_by("build", "-q", str(tmp_path / "i.toml"), "-O", str(tmp_path / "out"))
    assert "imgkit.archives" in modules
    assert not {"construct", "imgkit.disk.layout", "imgkit.disk.image"} & modules
    listing = subprocess.run(["cpio", "-t", "--quiet", "-F", str(tmp_path / "out" / "i.cpio")],
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == ["etc"]


def test_debug_shows_the_traceback(tmp_path):
    plain = imgkit("tar", str(tmp_path / "nope"), "-o", str(tmp_path / "x.tar"))
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("imgkit: error: ")
    debug = imgkit("--debug", "tar", str(tmp_path / "nope"), "-o", str(tmp_path / "x.tar"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "InputError" in debug.stderr


def test_usage_errors_exit_2(tmp_path):
    r = imgkit("initramfs", str(tmp_path))  # no -o
    assert r.returncode == 2 and "the following arguments are required: -o" in r.stderr
    assert imgkit("no-such-command").returncode == 2


def test_initramfs_defaults_to_zstd_with_a_plain_install(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "hello").write_text("hi\n")
    out = tmp_path / "initrd"
    r = imgkit("initramfs", str(tmp_path / "root"), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compression"] == "zstd"
    listing = subprocess.run(f"zstd -dc {out} | cpio -t --quiet", shell=True, check=True,
                             capture_output=True, text=True).stdout.split()
    assert "hello" in listing
