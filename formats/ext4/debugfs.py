"""The one way imgkit runs ``debugfs``: the writer's metadata pass and the reader's listing.

Commands go in one session (``-f``), so thousands of them cost one process. debugfs exits 0
even when a command fails, so its standard error is read: for the writer any message is a
failure of ours (:class:`ToolError`); the reader only refuses an image debugfs cannot open
(:class:`ImageError`), and takes what the commands printed otherwise.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence

from imgkit import tools
from imgkit.errors import ImageError, ToolError

_OPEN_FAILED = ("Bad magic number", "Couldn't find valid", "Attempt to read block from "
                "filesystem resulted in short read")


def quote(path: str) -> str:
    """Quote for debugfs' command parser: double quotes, a quote inside doubled."""
    return '"' + path.replace('"', '""') + '"'


def run(device: str, commands: Sequence[str] | str, *, writable: bool = False,
        output: bool = True, reading: bool = False, doing: str = "running commands on") -> bytes:
    """Run ``commands`` (a list, or the path of a command file) on ``device``; its stdout.

    ``device`` may carry debugfs' ``IMAGE?offset=N`` suffix. ``reading`` selects the
    reader's error rule (see the module docstring); ``doing`` completes the error message.
    """
    from imgkit.formats.ext4.write import e2fsprogs_command

    prog, env = e2fsprogs_command("debugfs")
    argv = [prog] + (["-w"] if writable else [])
    stdin = None
    if isinstance(commands, str):
        argv += ["-f", commands, device]
    else:
        argv += ["-f", "-", device]
        stdin = "".join(c + "\n" for c in commands).encode("utf-8", "surrogateescape")
    proc = tools.run(argv, input=stdin, env=env, check=False,
                     stdout=None if output else subprocess.DEVNULL)
    stderr = (proc.stderr or b"").decode(errors="replace")
    errors = [line for line in stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if reading:
        if proc.returncode != 0 or any(m in stderr for m in _OPEN_FAILED):
            raise ImageError(f"debugfs cannot open {device}: " + " ".join(stderr.split()[-30:]),
                             hint="is it an ext2/3/4 filesystem (at that offset)?")
    elif proc.returncode != 0 or errors:
        raise ToolError(f"debugfs failed {doing} {device}: " + "; ".join(errors[:10])
                        + (f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""))
    return proc.stdout or b""


def by_command(output: str) -> Iterator[tuple[str, list[str]]]:
    """Split ``-f`` output into ``(command, lines)``: debugfs echoes ``debugfs: CMD`` first."""
    cmd, lines = None, []
    for line in output.splitlines():
        if line.startswith("debugfs: "):
            if cmd is not None:
                yield cmd, lines
            cmd, lines = line[9:], []
        elif cmd is not None:
            lines.append(line)
    if cmd is not None:
        yield cmd, lines
