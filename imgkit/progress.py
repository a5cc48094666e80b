"""Progress of long steps (bytes and files done of a total), for whoever wants to show it.

The library never prints: a step only tells the :class:`Reporter` that the caller installed
with :func:`reporting` (the CLI installs one that draws a line on a terminal). Without one,
:func:`step` hands out a step whose calls cost an attribute test, so writers may report
every file.

    with progress.step("ext4 root", total_bytes=n, total_files=k) as s:
        for ...:
            s.advance(nbytes=len(chunk), files=1)
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Protocol


class Reporter(Protocol):
    """What a front end implements to show steps: called from the thread doing the work."""

    def begin(self, what: str, total_bytes: int | None, total_files: int | None) -> None: ...

    def update(self, what: str, done_bytes: int, done_files: int) -> None: ...

    def end(self, what: str) -> None: ...


_current: Reporter | None = None


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send the steps started inside the block to ``reporter`` (``None``: to nobody)."""
    global _current
    saved, _current = _current, reporter
    try:
        yield
    finally:
        _current = saved


class Step:
    """One long piece of work; :meth:`advance` it as bytes and files get done."""

    __slots__ = ("what", "done_bytes", "done_files", "_reporter")

    def __init__(self, what: str, total_bytes: int | None, total_files: int | None,
                 reporter: Reporter | None) -> None:
        self.what = what
        self.done_bytes = 0
        self.done_files = 0
        self._reporter = reporter
        if reporter is not None:
            reporter.begin(what, total_bytes, total_files)

    def advance(self, nbytes: int = 0, files: int = 0) -> None:
        self.done_bytes += nbytes
        self.done_files += files
        if self._reporter is not None:
            self._reporter.update(self.what, self.done_bytes, self.done_files)

    def set(self, done_bytes: int, done_files: int) -> None:
        """Where the work is, for callers that know it as a position rather than steps."""
        self.done_bytes, self.done_files = done_bytes, done_files
        if self._reporter is not None:
            self._reporter.update(self.what, done_bytes, done_files)

    def close(self) -> None:
        if self._reporter is not None:
            self._reporter.end(self.what)
            self._reporter = None

    def __enter__(self) -> Step:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def step(what: str, total_bytes: int | None = None, total_files: int | None = None) -> Step:
    """Start a step reported to the current reporter (if any); use it as a context manager."""
    return Step(what, total_bytes, total_files, _current)


@contextlib.contextmanager
def watching(path: str, what: str, total_bytes: int | None = None, *,
             interval: float = 0.2) -> Iterator[None]:
    """A step for work that reports nothing itself (another process, a library writing a
    file): its progress is the growth of the space allocated to ``path``. Outputs are written
    sparse, so what a file holds is what was written to it, even into a file made at its
    final size or at an offset in a disk. Nothing is started when no reporter listens."""
    if _current is None:
        yield
        return
    import threading

    def allocated() -> int:
        try:
            return os.stat(path).st_blocks * 512
        except OSError:
            return 0

    with step(what, total_bytes or None) as s:
        base = allocated()
        done = threading.Event()
        ceiling = total_bytes or 1 << 62
        s.set(0, 0)

        def poll() -> None:
            while not done.wait(interval):
                s.set(min(max(allocated() - base, 0), ceiling), 0)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()
