"""Write outputs under a temporary name and rename them only on success.

An existing output is never left half-written: on any error the temporary file is removed
and whatever was at the destination before is untouched. The temporary name carries the
writer's pid (``.NAME.imgkit-PID-XXXX.tmp``), so one left by a run killed with SIGKILL is
recognised and removed by the next write into the same directory. A full, read-only or
missing output directory is an :class:`ImgkitError` naming the output.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from imgkit.errors import ImgkitError, InputError
from imgkit.scratch import hold_signals, owner_gone, release_signals

_STALE = re.compile(r"\..*\.imgkit-(\d+)-[A-Za-z0-9_]+\.tmp\Z", re.S)
#: Errors of the output filesystem, not of imgkit: reported as one line naming the output.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
#: ... and these only when they name the output itself (a source may be unreadable too).
_DENIED = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENAMETOOLONG}


def sweep_stale(directory: str) -> list[str]:
    """Remove the temporaries in ``directory`` left by writers that no longer run."""
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if owner_gone(name, _STALE):
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.isfile(path) and not os.path.islink(path):
                    os.unlink(path)
                    removed.append(path)
    return removed


def output_error(dest: str, exc: OSError) -> ImgkitError:
    """``exc`` (raised while writing ``dest``) as one line naming the output."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ImgkitError(f"cannot write {dest}: {reason} (the output filesystem is full or "
                           "the file is larger than allowed)",
                           hint="free space there or choose another output directory with -O/-o")
    return ImgkitError(f"cannot write {dest}: {reason}",
                       hint="choose a writable output directory with -O/-o")


def _make_temp(dest: str) -> str:
    directory = os.path.dirname(os.path.abspath(dest))
    if os.path.isdir(dest):
        raise InputError(f"output {dest} is a directory, expected a file name",
                         hint=f"name a file inside it, e.g. {os.path.join(dest, 'image')}")
    if os.path.exists(dest) and not os.path.isfile(dest):
        # the rename would put a regular file where a device node or FIFO was
        st_mode = os.stat(dest).st_mode
        kind = ("a character device" if stat.S_ISCHR(st_mode) else "a block device"
                if stat.S_ISBLK(st_mode) else "a FIFO" if stat.S_ISFIFO(st_mode) else "a socket")
        raise InputError(f"output {dest} is {kind}, expected a regular file or a new name",
                         hint="outputs are written beside their name and renamed over it: "
                              "write a file, then copy it (dd) to the device")
    if not os.path.isdir(directory):
        raise InputError(f"output directory {directory} of {dest} does not exist",
                         hint=f"create it first: mkdir -p {directory}")
    sweep_stale(directory)
    base = os.path.basename(dest)[:120]   # room for the suffix within NAME_MAX
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.imgkit-{os.getpid()}-", suffix=".tmp",
                                   dir=directory)
    except OSError as exc:
        raise output_error(dest, exc) from None
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, mode: int = 0o644) -> Iterator[str]:
    """Yield a temporary path beside ``dest``; it becomes ``dest`` if the block succeeds.

    For writers that hand a path to an external tool (``mke2fs``, ``qemu-img``).
    """
    dest = os.fspath(dest)
    mask = hold_signals()
    try:
        tmp = _make_temp(dest)
    except BaseException:
        release_signals(mask)
        raise
    try:
        release_signals(mask)
        yield tmp
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.errno in _FULL or (exc.errno in _DENIED and exc.filename in (tmp, dest, None)):
            raise output_error(dest, exc) from exc
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file open for writing; it becomes ``dest`` if the block succeeds."""
    with atomic_path(dest, mode=mode) as tmp:
        with open(tmp, "r+b") as f:
            yield f


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
