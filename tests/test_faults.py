"""Faults of the host, not of the input: a full or read-only output filesystem, a missing tool,
no usable temporary directory, and signals at several points of a build and of a run. Each
must end in one ``imgkit: error:`` line (or the signal's exit status), with no temporary left
in the output directory or ``$TMPDIR`` and no child process left running.
"""
from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ERROR_LINE = re.compile(r"^imgkit(?: [a-z]+)?: error: ", re.M)
ROOT = os.geteuid() == 0

BIG_TOML = """\
seed = "faults"
[trees.t]
sources = ["data"]
[filesystems.root]
type = "ext4"
tree = "t"
output = "root.ext4"
[filesystems.esp]
type = "vfat"
tree = "t"
output = "esp.fat"
[initramfs.i]
tree = "t"
compress = "gzip"
output = "i.cpio.gz"
"""


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmpdir))
    env.update(extra)
    return env


def _imgkit(*args: str, env: dict[str, str], preexec=None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, preexec_fn=preexec)


def _one_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(ERROR_LINE.findall(r.stderr)) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def _leftovers(*dirs: Path) -> list[str]:
    return [str(p) for d in dirs if d.exists() for p in d.iterdir()]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """Incompressible data (4 MiB), so the builds below take a moment and need room."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"f{i}").write_bytes(os.urandom(1 << 20))
    return data


def test_output_larger_than_allowed_is_one_error(tmp_path, data_dir):
    """RLIMIT_FSIZE makes writes fail with EFBIG as a full disk fails with ENOSPC: an error
    naming the output, and no temporary beside it."""
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    r = _imgkit("initramfs", str(data_dir), "--compress", "none", "-o", str(out / "i.cpio"),
                env=_env(tmp_path), preexec=limit)
    _one_error(r, str(out / "i.cpio"), "too large")
    assert _leftovers(out, tmp_path / "tmpdir") == []


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"privilege: mounting a tmpfs failed: {r.stderr.strip()}")


@pytest.mark.skipif(not ROOT, reason="privilege: mounting a small tmpfs needs root")
def test_full_output_filesystem(tmp_path, data_dir):
    out = tmp_path / "full"
    _mount_tmpfs(out, "size=1m")
    try:
        r = _imgkit("initramfs", str(data_dir), "--compress", "none", "-o",
                    str(out / "i.cpio"), env=_env(tmp_path))
        _one_error(r, str(out / "i.cpio"), "No space left on device")
        assert _leftovers(out, tmp_path / "tmpdir") == []
        (tmp_path / "cfg.toml").write_text(BIG_TOML)
        r = _imgkit("build", str(tmp_path / "cfg.toml"), "-O", str(out), env=_env(tmp_path))
        _one_error(r, "No space left on device")
        assert _leftovers(out, tmp_path / "tmpdir") == []
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_read_only_output_directory(tmp_path):
    out = tmp_path / "ro"
    if ROOT:
        _mount_tmpfs(out, "ro,size=1m")
    else:
        out.mkdir()
        out.chmod(0o555)
    try:
        r = _imgkit("initramfs", "--entry", "dir /x 0755 0 0", "-o", str(out / "i.cpio"),
                    env=_env(tmp_path))
        _one_error(r, str(out / "i.cpio"))
        assert _leftovers(out, tmp_path / "tmpdir") == []
    finally:
        if ROOT:
            subprocess.run(["umount", str(out)], check=False)
        else:
            out.chmod(0o755)


def test_output_naming_a_directory_or_a_missing_one(tmp_path):
    env = _env(tmp_path)
    r = _imgkit("initramfs", "--entry", "dir /x 0755 0 0", "-o", str(tmp_path), env=env)
    _one_error(r, "is a directory")
    r = _imgkit("initramfs", "--entry", "dir /x 0755 0 0", "-o", str(tmp_path / "no" / "i.cpio"),
                env=env)
    _one_error(r, "does not exist")


def test_missing_tool_is_named(tmp_path):
    """qemu-img (in /usr/bin, so a PATH without it hides it) is named with its package."""
    import shutil
    if shutil.which("qemu-img") is None or os.path.exists("/usr/sbin/qemu-img"):
        pytest.skip("needs qemu-img in /usr/bin only")
    raw, disk = tmp_path / "d.raw", tmp_path / "d.qcow2"
    raw.write_bytes(bytes(1 << 20))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)],
                   check=True)
    env = _env(tmp_path, PATH=str(tmp_path / "empty-path"))
    r = _imgkit("inspect", str(disk), env=env)
    _one_error(r, "qemu-img", "qemu-utils")
    assert _leftovers(tmp_path / "tmpdir") == []


def test_missing_temporary_directory(tmp_path, monkeypatch):
    """A ``$TMPDIR`` that does not exist: the command still runs (Python falls back to
    /tmp) or, with no usable directory at all, says so in one line."""
    env = _env(tmp_path, TMPDIR=str(tmp_path / "missing"))
    r = _imgkit("inspect", str(tmp_path), env=env)
    _one_error(r, "is a directory")
    import tempfile

    from imgkit import scratch
    from imgkit.errors import ImgkitError

    def nowhere() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/nowhere']")

    monkeypatch.setattr(tempfile, "gettempdir", nowhere)
    with pytest.raises(ImgkitError, match="no usable temporary directory"):
        with scratch.run_scratch():
            pass


# -- signals ----------------------------------------------------------------------------------

def _descendants(pid: int) -> list[int]:
    """Processes whose parent chain reaches ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def _mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment mentions ``text``."""
    me, pids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (text.encode() in cmd or text.encode() in environ):
            pids.append(int(entry))
    return pids


def _wait_gone(text: str, seconds: float = 5) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _started(tmpdir: Path, proc: subprocess.Popen, seconds: float = 30) -> None:
    """Wait until the command runs (its scratch directory exists): a signal before that
    meets the interpreter starting up, not imgkit."""
    deadline = time.monotonic() + seconds
    while not list(tmpdir.glob("imgkit-scratch-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.01)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                         (signal.SIGHUP, 129)])
@pytest.mark.parametrize("delay", [0.0, 0.4, 1.0])
def test_signal_during_build_cleans_up(tmp_path, data_dir, sig, status, delay):
    (tmp_path / "cfg.toml").write_text(BIG_TOML)
    out, env = tmp_path / "out", _env(tmp_path)
    # --no-cache: the signal must meet a build at work, not one placing cached artifacts
    proc = subprocess.Popen([sys.executable, "-m", "imgkit", "build", str(tmp_path / "cfg.toml"),
                             "-O", str(out), "--no-cache"], env=env, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    _started(tmp_path / "tmpdir", proc)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    if "imgkit: done" not in err:   # the signal came before the build was over
        assert proc.returncode == status, (proc.returncode, err)
    assert not [p for p in _leftovers(out) if p.endswith(".tmp")]
    assert _leftovers(tmp_path / "tmpdir") == []
    assert _wait_gone(str(tmp_path / "tmpdir")) == []


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_sigkill_leftovers_are_swept_by_the_next_run(tmp_path, data_dir, delay):
    """SIGKILL leaves the run's scratch directory and maybe an output's temporary; the next
    run into the same places removes them, since their owner is gone."""
    (tmp_path / "cfg.toml").write_text(BIG_TOML)
    out, env = tmp_path / "out", _env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "imgkit", "build", str(tmp_path / "cfg.toml"),
                             "-O", str(out), "--no-cache"], env=env, stderr=subprocess.DEVNULL,
                            cwd=tmp_path)
    _started(tmp_path / "tmpdir", proc)
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=30)
    assert _wait_gone(str(tmp_path / "tmpdir"), 10) == []   # children die or finish
    r = _imgkit("build", str(tmp_path / "cfg.toml"), "-O", str(out), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["esp.fat", "i.cpio.gz", "root.ext4"]
    assert _leftovers(tmp_path / "tmpdir") == []


def test_stale_scratch_of_a_live_process_is_kept(tmp_path):
    """Only temporaries whose owner is gone are swept: another run's are left alone."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    live = tmpdir / f"imgkit-scratch-{os.getpid()}-abc"
    live.mkdir()
    dead_pid = 2 ** 22 - 1
    dead = tmpdir / f"imgkit-scratch-{dead_pid}-abc"
    dead.mkdir()
    (dead / "spool").write_bytes(b"x")
    # a run in another pid namespace: its pid means nothing here, its lock is held
    import fcntl
    held = tmpdir / f"imgkit-scratch-{dead_pid}-def"
    held.mkdir()
    lock = os.open(held / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    released = tmpdir / f"imgkit-scratch-{os.getpid()}-ghi"
    released.mkdir()
    (released / ".lock").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".i.cpio.imgkit-{dead_pid}-abc123.tmp"
    stale.write_bytes(b"x")
    mine = out / f".i.cpio.imgkit-{os.getpid()}-abc123.tmp"
    mine.write_bytes(b"x")
    r = _imgkit("initramfs", "--entry", "dir /x 0755 0 0", "-o", str(out / "i.cpio"),
                env=_env(tmp_path))
    assert r.returncode == 0, r.stderr
    os.close(lock)
    assert live.exists() and mine.exists() and held.exists()
    assert not dead.exists() and not stale.exists() and not released.exists()


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_run_kills_qemu(tmp_path, sig, status):
    """``imgkit run`` of a disk with nothing to boot keeps QEMU waiting in the firmware; a
    signal to imgkit ends QEMU too."""
    import shutil
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    disk = tmp_path / "blank.img"
    disk.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * (1 << 20))
    env = _env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "imgkit", "run", str(disk), "--firmware",
                             "bios", "--timeout", "60", "--quiet", "--expect", "never"],
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not [
            p for p in _descendants(proc.pid) if b"qemu" in Path(f"/proc/{p}/cmdline").read_bytes()]:
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    assert "Traceback" not in err, err
    assert _wait_gone(str(disk)) == []
    assert _leftovers(tmp_path / "tmpdir") == []


def test_qemu_killed_under_run_is_one_error(tmp_path):
    """QEMU dying under ``imgkit run`` (here SIGKILL from outside) ends the run with one
    error line and nothing left behind."""
    import shutil
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    disk = tmp_path / "blank.img"
    disk.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * (1 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "imgkit", "run", str(disk), "--firmware",
                             "bios", "--timeout", "60", "--quiet", "--expect", "never"],
                            env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
    deadline, qemu = time.monotonic() + 30, []
    while time.monotonic() < deadline and not qemu:
        qemu = [p for p in _descendants(proc.pid)
                if b"qemu" in Path(f"/proc/{p}/cmdline").read_bytes()]
        time.sleep(0.1)
    assert qemu, "QEMU never started"
    time.sleep(0.5)
    for pid in qemu:
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(ERROR_LINE.findall(err)) == 1, err
    assert _leftovers(tmp_path / "tmpdir") == []


def test_output_over_a_device_or_fifo_is_refused(tmp_path):
    """An output renamed over its name must not turn a device node or a FIFO into a regular
    file (as root, ``-o /dev/full`` would have replaced the device)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = _imgkit("tar", "--entry", "dir /x 0755 0 0", "-o", str(fifo), env=_env(tmp_path))
    _one_error(r, "is a FIFO")
    assert fifo.is_fifo()


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "cfg.toml").write_text(BIG_TOML)
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        r = _imgkit("build", str(tmp_path / "cfg.toml"), "-O", str(out), env=_env(tmp_path))
        _one_error(r, "-O")
        assert "initramfs" not in r.stderr   # refused before building anything
