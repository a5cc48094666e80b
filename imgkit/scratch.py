"""One scratch directory per run, so a killed run's temporaries are found and removed.

The big temporaries of a command (the build work directory, archive spools, converted
qcow2 images, debugfs dumps) go below ``$TMPDIR/imgkit-scratch-PID-XXXX`` (:func:`current`
names it while :func:`run_scratch` is active; the CLI activates it for every command) and the
whole directory is removed on the way out. A run killed with SIGKILL cannot remove it, so
every run first sweeps the ``imgkit-scratch-PID-*`` directories that no run holds: each run
keeps a lock on a file inside its own, which the kernel drops when the run dies.
Caches stay where they are: only this run's own temporaries live here.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator

from imgkit.errors import ImgkitError

PREFIX = "imgkit-scratch-"
_OWNED = re.compile(r"imgkit-scratch-(\d+)-")
LOCK = ".lock"
_DEFERRED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_current: str | None = None


def current() -> str | None:
    """This run's scratch directory, or None (then :mod:`tempfile`'s default) outside one."""
    return _current


def hold_signals() -> set[signal.Signals]:
    """Defer SIGINT, SIGTERM and SIGHUP (whose handlers raise) while a temporary is created
    and the block that removes it is not yet entered; returns the mask to restore."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)


def release_signals(mask: set[signal.Signals]) -> None:
    """Deliver what :func:`hold_signals` deferred (call it inside the cleaning block)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spool_limit(directory: str) -> int:
    """How many bytes a run may expand an input into below ``directory`` (an archive's spool,
    a qcow2 converted to raw): ``$IMGKIT_SPOOL_LIMIT`` (a size such as ``20G``), else 90% of
    the free space there, so that a compression bomb ends in an error, not a full ``$TMPDIR``."""
    given = os.environ.get("IMGKIT_SPOOL_LIMIT")
    if given:
        from imgkit.sizes import parse_size
        return parse_size(given, what="IMGKIT_SPOOL_LIMIT")
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize * 9 // 10


def owner_gone(name: str, pattern: re.Pattern[str]) -> bool:
    """Whether the temporary ``name`` carries the pid of a process that no longer exists."""
    m = pattern.match(name)
    return bool(m) and int(m[1]) != os.getpid() and not pid_alive(int(m[1]))


def sweep_stale(parent: str) -> list[str]:
    """Remove the scratch directories in ``parent`` whose run is gone; returns their paths."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        if not _OWNED.match(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _unlocked(path, name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _unlocked(path: str, name: str) -> bool:
    """Whether no run holds the scratch directory ``path``: its lock file can be locked (a
    lock is released by the kernel when its holder dies, whatever pid namespace it ran in).
    Without a lock file (a run killed before it made one) the pid in the name decides."""
    import fcntl
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR)
    except FileNotFoundError:
        return owner_gone(name, _OWNED)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _lock(path: str) -> int:
    """Hold the lock of this run's scratch directory (released on exit, even by SIGKILL)."""
    import fcntl
    fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@contextlib.contextmanager
def run_scratch() -> Iterator[str]:
    """Create this run's scratch directory (after sweeping stale ones), remove it at the end."""
    try:
        parent = tempfile.gettempdir()
    except OSError as exc:   # "No usable temporary directory found in [...]"
        raise ImgkitError(f"no usable temporary directory: {exc}",
                          hint="set TMPDIR to a writable directory") from None
    sweep_stale(parent)
    # a signal handler that raises (SIGTERM, Ctrl-C) waits until the directory exists and
    # the block that removes it is entered
    mask = hold_signals()
    try:
        path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
    except OSError as exc:
        release_signals(mask)
        raise ImgkitError(f"cannot create a temporary directory in {parent}: {exc.strerror}",
                          hint="set TMPDIR to a writable directory") from None
    global _current
    saved, lock = _current, None
    try:
        release_signals(mask)
        lock = _lock(path)
        _current = path
        yield path
    finally:
        _current = saved
        shutil.rmtree(path, ignore_errors=True)
        if lock is not None:
            os.close(lock)
