"""The progress line on a terminal: the CLI's :class:`imgkit.progress.Reporter`.

A step that has run for :data:`DELAY` seconds gets one line on stderr, redrawn in place
(carriage return, erase to the end of the line) at most ten times a second:

    imgkit: ext4 root: 312.4 of 759.0 MB, 4,210 of 10,828 files, 210.3 MB/s

and erased when the step ends, so the lines printed after it start clean. Only on a terminal
and without ``-q`` / ``--json`` (:func:`for_stream` returns ``None`` otherwise): a log or a
pipe never sees a carriage return.
"""
from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

#: Seconds a step runs before its line appears (``IMGKIT_PROGRESS_DELAY`` overrides it).
DELAY = 1.0
#: Seconds between two redraws of the line.
INTERVAL = 0.1

_active: ProgressLine | None = None


def for_stream(stream: TextIO, *, quiet: bool) -> ProgressLine | None:
    """The reporter to install for a command writing its messages to ``stream``."""
    if quiet:
        return None
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    try:
        delay = float(os.environ.get("IMGKIT_PROGRESS_DELAY", DELAY))
    except ValueError:
        delay = DELAY
    return ProgressLine(stream, delay=delay)


def clear() -> None:
    """Erase the line being shown, if any (before printing a message of its own)."""
    if _active is not None:
        _active.erase()


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


class ProgressLine:
    """Draws the current step (the innermost one, when steps nest)."""

    def __init__(self, stream: TextIO, *, delay: float = DELAY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.delay = delay
        self.clock = clock
        self._steps: list[tuple[str, int | None, int | None, float]] = []
        self._drawn = False
        self._last = 0.0

    def begin(self, what: str, total_bytes: int | None, total_files: int | None) -> None:
        global _active
        _active = self
        self._steps.append((what, total_bytes, total_files, self.clock()))

    def update(self, what: str, done_bytes: int, done_files: int) -> None:
        if not self._steps:
            return
        name, total_bytes, total_files, started = self._steps[-1]
        now = self.clock()
        if now - started < self.delay or (self._drawn and now - self._last < INTERVAL):
            return
        self._last = now
        parts = [f"{_mb(done_bytes)} of {_mb(total_bytes)} MB" if total_bytes
                 else f"{_mb(done_bytes)} MB"]
        if total_files:
            parts.append(f"{done_files:,} of {total_files:,} files")
        elif done_files:
            parts.append(f"{done_files:,} files")
        if now > started:
            parts.append(f"{done_bytes / 1e6 / (now - started):,.1f} MB/s")
        self.stream.write(f"\r\033[Kimgkit: {name}: " + ", ".join(parts))
        self.stream.flush()
        self._drawn = True

    def end(self, what: str) -> None:
        global _active
        if self._steps:
            self._steps.pop()
        self.erase()
        if not self._steps and _active is self:
            _active = None

    def erase(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
