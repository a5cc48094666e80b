"""The progress line: drawn in place on a terminal (a real pty), never into a pipe, nor with
``-q`` or ``--json``; and not before a step has run for its delay."""
from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys

import pytest
from conftest import sh

from imgkit import progress
from imgkit.cli.progress_line import ProgressLine

pytestmark = pytest.mark.skipif(not sh("sh", "-c", "command -v mke2fs || true"),
                                reason="e2fsprogs not installed")


@pytest.fixture
def config(tmp_path):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    for i in range(200):
        (src / "etc" / f"f{i:03d}").write_bytes(os.urandom(2000))
    sh("tar", "-cf", str(tmp_path / "root.tar"), "-C", str(src), ".")
    cfg = tmp_path / "image.toml"
    cfg.write_text(f'seed = "p"\n\n[trees.root]\nsources = ["{tmp_path / "root.tar"}"]\n\n'
                   '[filesystems.root]\ntype = "ext4"\ntree = "root"\noutput = "root.ext4"\n')
    return cfg


def run_on_pty(argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run with stderr on a pseudo-terminal and stdout on a pipe: (status, stdout, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=env)
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            proc.kill()
            raise AssertionError("no output for 120 s")
        try:
            chunk = os.read(master, 65536)
        except OSError:   # EIO: the other end is closed
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    out = proc.stdout.read()
    return proc.wait(), out, err


def build_argv(config, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgkit", "build", str(config), "-O",
            str(config.parent / "out"), *extra]


ENV = {**os.environ, "IMGKIT_PROGRESS_DELAY": "0"}


def test_a_terminal_gets_a_line_redrawn_in_place(config):
    status, _, err = run_on_pty(build_argv(config), ENV)
    assert status == 0, err
    text = err.decode(errors="replace")
    assert "\r\x1b[Kimgkit: reading root.tar: " in text, text
    assert " files" in text and "MB/s" in text and " of " in text
    assert "\r\x1b[K" in text.rsplit("imgkit: wrote", 1)[0]   # erased before the next message
    assert "wrote" in text   # the ordinary messages still come


@pytest.mark.parametrize("command, output", [("initramfs", "i.cpio"), ("tar", "t.tar")])
def test_archive_commands_draw_the_line_too(tmp_path, config, command, output):
    """``imgkit initramfs`` and ``imgkit tar`` report their writing like a build; ``-q``
    silences both the line and the summary."""
    argv = [sys.executable, "-m", "imgkit", command, str(tmp_path / "src"), "-o",
            str(tmp_path / output)]
    status, _, err = run_on_pty(argv, ENV)
    assert status == 0, err
    text = err.decode(errors="replace")
    assert f"\r\x1b[Kimgkit: {'initramfs' if command == 'initramfs' else 'tar'} {output}: " \
        in text, text
    assert "\r\x1b[K" in text.rsplit("imgkit: wrote", 1)[0] and "wrote" in text
    status, _, err = run_on_pty([*argv, "-q"], ENV)
    assert status == 0 and b"\r" not in err and b"wrote" not in err, err


def test_a_pipe_gets_no_progress_line(config):
    proc = subprocess.run(build_argv(config), env=ENV, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert b"\r" not in proc.stderr and b"MB/s" not in proc.stderr
    assert b"wrote" in proc.stderr


@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_quiet_and_json_show_no_line_on_a_terminal(config, flag):
    status, out, err = run_on_pty(build_argv(config, flag), ENV)
    assert status == 0, err
    assert b"MB/s" not in err and b"\r\x1b[K" not in err
    if flag == "--json":
        assert json.loads(out)["outputs"][0]["name"] == "root"


def test_no_line_before_the_delay_and_erased_at_the_end():
    now = [0.0]
    stream = io.StringIO()
    line = ProgressLine(stream, delay=1.0, clock=lambda: now[0])
    with progress.reporting(line), progress.step("copy", 10_000_000, 10) as s:
        s.advance(1_000_000, 1)
        now[0] = 0.5
        s.advance(1_000_000, 1)
        assert stream.getvalue() == ""
        now[0] = 2.0
        s.advance(3_000_000, 3)
        assert stream.getvalue() == "\r\x1b[Kimgkit: copy: 5.0 of 10.0 MB, 5 of 10 files, 2.5 MB/s"
    assert stream.getvalue().endswith("\r\x1b[K")
    assert progress.step("after", 1).done_bytes == 0   # no reporter outside the block


@pytest.mark.parametrize("fstype", ["vfat", "erofs", "squashfs", "iso9660"])
def test_filesystems_and_disks_report_their_writing(tmp_path, config, fstype):
    """Writers that report nothing themselves (the FAT, erofs and ISO writers, mksquashfs)
    are followed by the space their output takes; so is the disk assembly."""
    partition = fstype in ("vfat", "erofs", "squashfs")
    text = (f'seed = "p"\n\n[trees.root]\nsources = ["{tmp_path / "src"}"]\n\n'
            f'[filesystems.root]\ntype = "{fstype}"\ntree = "root"\n')
    if partition:
        text += ('\n[disk]\noutput = "d.img"\npartitions = [{ name = "p", type = "linux", '
                 'filesystem = "root" }]\n')
    else:
        text += 'output = "root.iso"\n'
    (tmp_path / "fs.toml").write_text(text)
    status, _, err = run_on_pty([sys.executable, "-m", "imgkit", "build", str(tmp_path / "fs.toml"),
                                 "-O", str(tmp_path / "fsout")], ENV)
    assert status == 0, err
    shown = err.decode(errors="replace")
    assert "\r\x1b[Kimgkit: filesystem root" in shown, shown
    if partition:
        assert "\r\x1b[Kimgkit: disk " in shown, shown
