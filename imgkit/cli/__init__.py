"""The ``imgkit`` command: one table of commands and one error boundary.

Each command is a module of this package with ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``. :data:`COMMANDS` names them with their one-line help, so ``imgkit
--help`` lists every command without importing any, and a run imports only the chosen one:
start-up stays small, and a command that reads no disk image never loads the binary-format
libraries. Library errors become one ``imgkit: error: ...`` line and a hint (exit status 1),
usage errors exit 2, Ctrl-C 130; ``--debug`` shows tracebacks and the commands run.
"""
from __future__ import annotations

import sys

from imgkit import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


class Command:
    """A command's module (imported only when it runs) and its line in ``imgkit --help``."""

    __slots__ = ("module", "help")

    def __init__(self, module: str, help: str) -> None:
        self.module = module
        self.help = help


COMMANDS: dict[str, Command] = {
    "initramfs": Command("imgkit.cli.initramfs", "build a cpio initramfs from sources"),
    "tar": Command("imgkit.cli.tar", "build a pax tar archive from sources"),
    "ls": Command("imgkit.cli.ls", "list the files of an archive or image"),
    "inspect": Command("imgkit.cli.inspect",
                       "describe a disk, filesystem, ISO, archive, UKI or qcow2 image"),
    "build": Command("imgkit.cli.build", "build the images a TOML config declares"),
    "run": Command("imgkit.cli.run", "boot a kernel, UKI, disk image or ISO in QEMU"),
    "kernel": Command("imgkit.cli.kernel",
                      "download (once) and show a Debian kernel for tests and VMs"),
    "virt": Command("imgkit.cli.virt",
                    "run a command as root in a throwaway VM seeing only the current directory"),
}

DESCRIPTION = ("Rootless disk and boot image assembler: initramfs, tar, FAT, ext4, ISO, "
               "GPT/MBR disks, UKIs, and a QEMU runner. No root, loop devices or mounts.")


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command word in ``argv``: the first argument that is not a top-level option
    (none of which takes a value)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser: every command listed, only ``command``'s options filled in."""
    import argparse
    import importlib

    class Version(argparse.Action):
        """``--version`` without argparse's help formatter (which imports shutil, textwrap)."""

        def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
            print(f"imgkit {__version__}")
            parser.exit()

    class Formatter(argparse.HelpFormatter):
        """argparse's formatter, told the width: left to find it, it imports shutil (with
        bz2 and lzma), a tenth of ``imgkit --version``'s time, for every parser made."""

        def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                     width: int | None = None) -> None:
            super().__init__(prog, indent_increment, max_help_position,
                             _columns() - 2 if width is None else width)

    parser = argparse.ArgumentParser(prog="imgkit", description=DESCRIPTION,
                                     formatter_class=Formatter)
    parser.add_argument("--version", action=Version, nargs=0,
                        help="show the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and commands run")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, entry in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=entry.help, formatter_class=Formatter)
            continue
        module = importlib.import_module(entry.module)
        p = sub.add_parser(name, help=entry.help, description=module.DESCRIPTION,
                           formatter_class=Formatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _columns() -> int:
    """The terminal's width as :func:`shutil.get_terminal_size` finds it: ``$COLUMNS``, else
    standard output's terminal, else 80."""
    import os
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def main(argv: Sequence[str] | None = None) -> int:
    """``imgkit ARGS``: parse, then run the chosen command inside the error boundary."""
    from imgkit.cli.common import guarded

    args_list = list(sys.argv[1:] if argv is None else argv)
    command = chosen_command(args_list)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(args_list)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return guarded(args.func, args)
