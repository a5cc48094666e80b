"""Write outputs under a temporary name and rename them only on success.

An existing output is never left half-written: on any error the temporary file is removed
and whatever was at the destination before is untouched.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, mode: int = 0o644) -> Iterator[str]:
    """Yield a temporary path beside ``dest``; it becomes ``dest`` if the block succeeds.

    For writers that hand a path to an external tool (``mke2fs``, ``qemu-img``).
    """
    dest = os.fspath(dest)
    directory = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, dest)
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
