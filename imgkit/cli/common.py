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
    """One progress or summary line, on stderr (stdout is kept for ``--json``); a progress
    line being drawn (:mod:`imgkit.cli.progress_line`) is erased first."""
    line = sys.modules.get("imgkit.cli.progress_line")
    if line is not None:
        line.clear()
    print(f"imgkit: {message}", file=sys.stderr, flush=True)


def epoch(value: str | None) -> int | None:
    """``--mtime EPOCH``, else ``$SOURCE_DATE_EPOCH``, else None (keep the sources' times)."""
    if value is None:
        value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()):
        raise InputError(f"--mtime/SOURCE_DATE_EPOCH must be seconds since 1970, got {value!r}")
    return int(value)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so every ``finally`` and ``with`` runs
    (temporaries removed, QEMU killed), then the command exits ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []


def _terminate(signum: int, _frame: object) -> None:
    import signal
    # one unwinding is enough: a second signal must not interrupt the clean-up, nor kill
    # the process once the command has returned its status
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _on_signals() -> dict:
    """Make SIGINT, SIGTERM and SIGHUP unwind the command (in the main thread only)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return {}
    wanted = [signal.SIGTERM, signal.SIGHUP]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        wanted.append(signal.SIGINT)
    return {sig: signal.signal(sig, _terminate) for sig in wanted}


def _restore(saved: dict) -> None:
    import signal
    if _received:
        return   # exiting on a signal: the others stay ignored
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _error(message: str, hint: str | None = None) -> int:
    print(f"imgkit: error: {message}", file=sys.stderr)
    if hint:
        print(f"imgkit: hint: {hint}", file=sys.stderr)
    return 1


def _os_error(exc: OSError) -> str:
    name = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes)) else ""
    if len(name) > 160:   # a path too long to use is too long to read, too
        name = f"{name[:60]}...{name[-60:]} ({len(name)} characters)"
    return f"{exc.strerror or exc}" + (f": {name}" if name else "")


def positive_seconds(text: str) -> float:
    """argparse type of ``--timeout``: a positive, finite number of seconds."""
    import argparse
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


#: The compression levels each method accepts (``--level``).
LEVELS = {"gzip": (0, 9), "xz": (0, 9), "zstd": (1, 22), "lz4": (1, 12)}


def check_level(method: str, level: int | None) -> None:
    """``--level`` within what ``method`` accepts (none is accepted for no compression)."""
    if level is None:
        return
    if method not in LEVELS:
        raise InputError(f"--level {level}: {method!r} has no compression levels",
                         hint="drop --level, or choose a compression with --compress")
    low, high = LEVELS[method]
    if not low <= level <= high:
        raise InputError(f"--level {level}: {method} levels are {low} to {high}")


def guarded(func: Handler, args: argparse.Namespace) -> int:
    """Run one command: library errors become one line and a hint (exit status 1), Ctrl-C
    exits 130, SIGTERM 143 and SIGHUP 129 (after the same clean-up); with ``--debug`` errors
    keep their traceback and the commands run are logged.

    The command's temporaries live in one scratch directory (:mod:`imgkit.scratch`), removed
    on every way out and swept by the next run after a SIGKILL. Errors of the host rather
    than of imgkit (a full disk, a read-only directory, memory exhausted, input nested too
    deeply) are reported as one line too."""
    from imgkit import progress as steps
    from imgkit import scratch
    from imgkit.cli import progress_line

    debug = bool(getattr(args, "debug", False))
    quiet = bool(getattr(args, "json", False) or getattr(args, "quiet", False))
    if debug:
        import logging
        logging.basicConfig(level=logging.DEBUG, format="imgkit: %(message)s")
    saved = _on_signals()
    try:
        with scratch.run_scratch(), \
                steps.reporting(progress_line.for_stream(sys.stderr, quiet=quiet)):
            return func(args)
    except ImgkitError as exc:
        if debug:
            raise
        return _error(str(exc), exc.hint)
    except KeyboardInterrupt:
        print("imgkit: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        import signal
        print(f"imgkit: terminated by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        return 1
    except MemoryError:
        if debug:
            raise
        return _error("out of memory", "an input declares a size or count far beyond what it holds")
    except RecursionError:
        if debug:
            raise
        return _error("input nested too deeply to process")
    except OSError as exc:
        if debug:
            raise
        return _error(_os_error(exc))
    finally:
        _restore(saved)
