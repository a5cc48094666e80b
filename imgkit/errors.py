"""Exceptions, grouped by who is at fault.

The CLI turns any :class:`ImgkitError` into one ``ERROR`` line plus an optional hint;
anything else is a bug and shows a traceback.
"""
from __future__ import annotations


class ImgkitError(Exception):
    """Base of every error imgkit raises on purpose.

    ``hint`` tells the user what to do about it; it is printed after the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class InputError(ImgkitError):
    """The user's input is wrong: a bad spec line, config key, size, path, or option."""


class LayoutError(InputError):
    """A disk or filesystem layout cannot be satisfied (overlap, too small, too many partitions)."""


class ImageError(ImgkitError):
    """An existing image or archive we were asked to read is malformed."""


class ToolError(ImgkitError):
    """An external tool is missing or failed."""


class BootError(ImgkitError):
    """A VM did not boot as expected (timeout, panic, expected text never seen)."""
