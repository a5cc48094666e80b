"""What every command shares: the error boundary, progress lines, ``--mtime``."""
from __future__ import annotations

import os
import sys

from imgkit.errors import ImgkitError, InputError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    Handler = Callable[[argparse.Namespace], int]


def progress(message: str) -> None:
    """One progress or summary line, on stderr (stdout is kept for ``--json``)."""
    print(f"imgkit: {message}", file=sys.stderr, flush=True)


def epoch(value: str | None) -> int | None:
    """``--mtime EPOCH``, else ``$SOURCE_DATE_EPOCH``, else None (keep the sources' times)."""
    if value is None:
        value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise InputError(f"--mtime/SOURCE_DATE_EPOCH must be seconds since 1970, got {value!r}")
    return int(value)


def guarded(func: Handler, args: argparse.Namespace) -> int:
    """Run one command: library errors become one line and a hint (exit status 1), Ctrl-C
    exits 130; with ``--debug`` errors keep their traceback and the commands run are logged."""
    debug = bool(getattr(args, "debug", False))
    if debug:
        import logging
        logging.basicConfig(level=logging.DEBUG, format="imgkit: %(message)s")
    try:
        return func(args)
    except ImgkitError as exc:
        if debug:
            raise
        print(f"imgkit: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"imgkit: hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imgkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
