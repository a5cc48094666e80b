"""Hostile input: mutated images of every kind, bad configs and bad arguments must each end in
a correct answer (exit 0) or one ``imgkit: error:`` line (exit 1 or 2), never a traceback,
within a time and memory limit, leaving nothing in the output directory, ``$TMPDIR`` or the
working directory, and no process behind.

The corpus and the worker are in ``tests/fuzzing.py``. The normal suite runs a few hundred
cases with a fixed seed; ``make fuzz`` runs thousands (``IMGKIT_FUZZ_CASES``,
``IMGKIT_FUZZ_SEED``).
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fuzzing  # noqa: E402

CASES = int(os.environ.get("IMGKIT_FUZZ_CASES", "300"))
SEED = int(os.environ.get("IMGKIT_FUZZ_SEED", "14"))
TOOLS = ("mkfs.vfat", "mke2fs", "debugfs", "qemu-img", "xorriso")

pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="needs " + ", ".join(TOOLS))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    return fuzzing.make_seeds(tmp_path_factory.mktemp("fuzz"))


def _report(results: list[dict]) -> str:
    lines = [str(fuzzing.table(results))]
    for r in results:
        v = fuzzing.verdict(r)
        if v != "clean":
            lines.append(f"{v}: {r['name']}: {r['argv']} -> {r['rc']} in {r['seconds']} s; "
                         f"out {r['out']} tmp {r['tmp']} cwd {r['cwd']} children {r['children']}"
                         f"\n{r['stderr'][-1200:]}")
    return "\n".join(lines[:40])


def test_seeds_are_valid(seeds):
    """The unmutated images are read correctly (checked against the tools that wrote the
    fixtures and against fsck): what the mutations start from is real."""
    for tool, kind in (("e2fsck", "ext4"), ("fsck.vfat", "fat")):
        if shutil.which(tool):
            subprocess.run([tool, "-n", "-f", str(seeds[kind])] if tool == "e2fsck"
                           else [tool, "-n", str(seeds[kind])], check=True,
                           stdout=subprocess.DEVNULL)
    out = subprocess.run(["sgdisk", "-p", str(seeds["gpt"])], capture_output=True, text=True,
                         check=True).stdout if shutil.which("sgdisk") else ""
    assert not out or ("esp" in out and "root" in out)
    listing = subprocess.run([sys.executable, "-m", "imgkit", "ls", f"{seeds['gpt']}:root"],
                             capture_output=True, text=True, check=True).stdout
    assert "etc/hello.txt" in listing and "dev/null" in listing


def test_mutated_images_configs_and_arguments(seeds, tmp_path):
    """The seeded corpus: every case clean."""
    cases = fuzzing.make_cases(seeds, tmp_path, CASES, SEED)
    results = fuzzing.run_worker(cases, tmp_path / "run", timeout=60 + CASES * 2)
    counts = fuzzing.table(results)
    assert counts["tried"] == len(cases)
    assert counts["clean"] == counts["tried"], _report(results)


def _limited(seconds: int = 20):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (fuzzing.MEMORY_LIMIT, fuzzing.MEMORY_LIMIT))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    return limit


def _imgkit(*args: str, tmp: Path, timeout: float = fuzzing.TIME_LIMIT) -> subprocess.CompletedProcess:
    """``imgkit ARGS`` as a real process under the limits, with its own empty ``$TMPDIR``."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmpdir))
    r = subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True, text=True,
                       timeout=timeout, env=env, preexec_fn=_limited())
    assert not list(tmpdir.iterdir()), f"left in $TMPDIR: {list(tmpdir.iterdir())}"
    return r


def _one_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode in (1, 2), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = fuzzing.ERROR_LINE.findall(r.stderr)
    assert len(errors) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr


def test_ext4_directory_cycle_is_refused(tmp_path):
    """A directory linked into itself (made with debugfs, not by us): ``ls`` stops with one
    error naming the cycle instead of listing forever."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    img = tmp_path / "cycle.ext4"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(src), str(img), "2M"],
                   check=True)
    subprocess.run(["debugfs", "-w", "-R", "ln /a /a/b/loop", str(img)], check=True,
                   capture_output=True)
    listing = subprocess.run(["debugfs", "-R", "ls -p /a/b", str(img)], capture_output=True,
                             text=True).stdout
    assert "/loop/" in listing          # the cycle is really there
    r = _imgkit("ls", str(img), tmp=tmp_path)
    _one_error(r, "cycle", "inode")


@pytest.mark.parametrize("make", ["fifo", "chardev"])
@pytest.mark.parametrize("command", ["inspect", "ls", "initramfs"])
def test_non_regular_input_is_refused_at_once(tmp_path, make, command):
    if make == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    argv = [command, str(path)] + (["-o", str(tmp_path / "x.cpio")] if command == "initramfs"
                                   else [])
    r = _imgkit(*argv, tmp=tmp_path, timeout=5)
    _one_error(r, str(path), "FIFO" if make == "fifo" else "character device")
    assert not (tmp_path / "x.cpio").exists()


def test_all_zero_file_is_no_filesystem(tmp_path):
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(1 << 20))
    for command in ("ls", "inspect"):
        r = _imgkit(command, str(zeros), tmp=tmp_path)
        _one_error(r, "unknown image format", "zeros")
        assert r.stdout == ""


def test_gpt_hostile_entry_count_and_backup(seeds, tmp_path):
    """CRC-valid headers with an entry count of 0xffffffff, a backup LBA past the end and a
    name with a lone surrogate: an error naming the field, or a listing with the backup
    reported missing."""
    import struct

    data = bytearray(seeds["gpt"].read_bytes())
    count = bytearray(data)
    struct.pack_into("<I", count, 512 + 80, 0xFFFFFFFF)
    fuzzing.reseal_gpt(count)
    (tmp_path / "count.img").write_bytes(count)
    _one_error(_imgkit("inspect", str(tmp_path / "count.img"), tmp=tmp_path),
               "4294967295 entries", "offset")
    backup = bytearray(data)
    struct.pack_into("<Q", backup, 512 + 32, 1 << 63)
    fuzzing.reseal_gpt(backup)
    (tmp_path / "backup.img").write_bytes(backup)
    r = _imgkit("inspect", str(tmp_path / "backup.img"), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "backup table MISSING OR DIFFERENT" in r.stdout
    name = bytearray(data)
    entries = struct.unpack_from("<Q", name, 512 + 72)[0] * 512
    name[entries + 56:entries + 58] = b"\x00\xd8"
    fuzzing.reseal_gpt(name)
    (tmp_path / "name.img").write_bytes(name)
    r = _imgkit("inspect", str(tmp_path / "name.img"), tmp=tmp_path)
    assert r.returncode == 0 and "\ufffd" in r.stdout, r.stderr


def test_run_refuses_what_is_not_a_kernel(seeds, tmp_path):
    import gzip

    elf = gzip.compress(Path(sys.executable).read_bytes()[:65536])
    (tmp_path / "kernel.gz").write_bytes(elf)
    r = _imgkit("run", "--kernel", str(tmp_path / "kernel.gz"), "--print-cmdline", tmp=tmp_path)
    _one_error(r, "not a kernel", "gzip-compressed")
    r = _imgkit("run", "--kernel", str(seeds["gpt"]), "--print-cmdline", tmp=tmp_path)
    _one_error(r, "a gpt image")
    r = _imgkit("run", "--timeout", "-1", "--kernel", str(seeds["uki"]), tmp=tmp_path)
    _one_error(r, "positive number of seconds")


def test_tar_refuses_values_that_do_not_fit(tmp_path):
    for entry in ("nod /dev/x 0600 0 0 c 1099511627776 1", "dir /x 0755 4294967296 0",
                  "dir /x 0755 0 18446744073709551616"):
        out = tmp_path / "a.tar"
        r = _imgkit("tar", "--entry", entry, "-o", str(out), tmp=tmp_path)
        _one_error(r, "does not fit in 32 bits")
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    # what fits is written, and bsdtar reads it back as given
    r = _imgkit("tar", "--entry", "nod /dev/x 0600 4294967295 0 c 4095 1048575", "-o",
                str(tmp_path / "ok.tar"), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    if shutil.which("bsdtar"):
        listing = subprocess.run(["bsdtar", "-tvnf", str(tmp_path / "ok.tar")], text=True,
                                 capture_output=True, check=True).stdout
        assert "4294967295" in listing and "4095,1048575" in listing.replace(" ", "")


def test_level_and_mode_checks(tmp_path):
    out = str(tmp_path / "a.cpio.zst")
    _one_error(_imgkit("initramfs", "--level", "99", "--entry", "dir /x 0755 0 0", "-o", out,
                       tmp=tmp_path), "zstd levels are 1 to 22")
    _one_error(_imgkit("initramfs", "--level", "99", "--entry", "dir /x 0755 0 0", "-o",
                       str(tmp_path / "a.cpio.gz"), tmp=tmp_path), "gzip levels are 0 to 9")
    host = tmp_path / "h"
    host.write_text("x")
    _one_error(_imgkit("initramfs", "--file", f"{host}:/x:777777", "-o", out, tmp=tmp_path),
               "beyond 07777")
    _one_error(_imgkit("initramfs", "--file", f"{host}:/x:abc", "-o", out, tmp=tmp_path),
               "must be octal")
    _one_error(_imgkit("initramfs", "--mtime", "\u00b2", "--entry", "dir /x 0755 0 0", "-o", out,
                       tmp=tmp_path), "--mtime")
    assert not list(tmp_path.glob("a.cpio*"))


def test_source_nested_beyond_path_max(tmp_path):
    """A directory source nested deeper than PATH_MAX: one short error line."""
    deep = tmp_path / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(50):
            os.mkdir("d" * 100, dir_fd=fd)
            nfd = os.open("d" * 100, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    r = _imgkit("initramfs", str(deep), "-o", str(tmp_path / "x.cpio"), tmp=tmp_path)
    err = _one_error(r, "File name too long", "characters")
    assert len(err) < 600 and not (tmp_path / "x.cpio").exists()
