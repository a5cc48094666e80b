"""The ``imgkit`` command: thin wiring over the library.

Library errors become one ``imgkit: error: ...`` line and a hint, exit status 1 (2 for usage
errors); a traceback only with ``--debug``. Progress and summaries go to stderr, machine
output (``--json``) to stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Callable, Sequence

from imgkit import __version__
from imgkit.errors import ImgkitError, InputError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Handler] = {}


def _epoch(value: str | None) -> int | None:
    if value is None:
        value = os.environ.get("SOURCE_DATE_EPOCH")
    if value in (None, ""):
        return None
    if not value.isdigit():
        raise InputError(f"--mtime/SOURCE_DATE_EPOCH must be seconds since 1970, got {value!r}")
    return int(value)


def progress(msg: str) -> None:
    print(f"imgkit: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# tree options shared by initramfs and tar

def _add_tree_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="a directory, an archive (tar, cpio, zip, docker export) or a "
                        "gen_init_cpio list file; later sources override earlier ones. "
                        "SOURCE:/DIR places it below DIR")
    g = p.add_argument_group("single entries")
    g.add_argument("--entry", action="append", default=[], metavar="LINE",
                   help="add one entry in gen_init_cpio syntax, e.g. "
                        "'nod /dev/console 0600 0 0 c 5 1' or 'slink /bin/sh busybox 0777 0 0'")
    g.add_argument("--file", action="append", default=[], metavar="HOST:DEST[:MODE]",
                   help="add the host file HOST at DEST (mode octal, default from the host)")
    o = p.add_argument_group("owners and times")
    o.add_argument("--squash", action="store_true", help="make every file owned by 0:0")
    o.add_argument("--root-uid", type=int, metavar="UID", help="map this uid to 0 (like gen_initramfs.sh -u)")
    o.add_argument("--root-gid", type=int, metavar="GID", help="map this gid to 0 (like gen_initramfs.sh -g)")
    o.add_argument("--uid-map", metavar="'IN OUT COUNT[,...]'", help="uid ranges as in /proc/PID/uid_map")
    o.add_argument("--gid-map", metavar="'IN OUT COUNT[,...]'", help="gid ranges as in /proc/PID/gid_map")
    o.add_argument("--host-owners", action="store_true",
                   help="keep directory sources' owners exactly as on the host (default: the "
                        "invoking user's files become root's)")
    o.add_argument("--mtime", metavar="EPOCH",
                   help="clamp all times to EPOCH (default: $SOURCE_DATE_EPOCH if set)")


def _tree_spec(args: argparse.Namespace):
    from imgkit.assemble import TreeSpec
    from imgkit.idmap import idmap_from_options

    idmap = idmap_from_options(squash=args.squash, root_uid=args.root_uid,
                               root_gid=args.root_gid, uid_map=args.uid_map, gid_map=args.gid_map)
    files = []
    for item in args.file:
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise InputError(f"--file {item!r}: expected HOST:DEST or HOST:DEST:MODE")
        mode = int(parts[2], 8) if len(parts) == 3 else None
        files.append((parts[0], parts[1], mode))
    init = dict(init=None)
    if getattr(args, "init", None) or getattr(args, "modules", None) or getattr(args, "rc", None):
        init = _builtin_init_options(args)
    return TreeSpec(sources=tuple(args.sources), entries=tuple(args.entry), files=tuple(files),
                    idmap=idmap, host_owners=args.host_owners, mtime=_epoch(args.mtime), **init)


def _builtin_init_options(args: argparse.Namespace) -> dict:
    if not args.init:
        raise InputError("--modules and --rc need --init busybox",
                         hint="or add the modules as files with a SOURCE of your own")
    names = tuple(m for item in args.modules for m in item.split(",") if m)
    if names and not args.moddir:
        raise InputError("--modules needs --moddir DIR (a lib/modules/VERSION directory)",
                         hint="imgkit kernel fetch prints one for the Debian kernel")
    rc = None
    if args.rc:
        try:
            with open(args.rc, encoding="utf-8") as f:
                rc = f.read()
        except OSError as exc:
            raise InputError(f"--rc {args.rc!r} cannot be read: {exc.strerror}") from None
    return dict(init=args.init, busybox=args.busybox, modules=names, moddir=args.moddir, rc=rc)


def _report(args: argparse.Namespace, result, started: float) -> None:
    for path in result.skipped:
        progress(f"warning: /{path} left out: the format cannot store a socket")
    if getattr(args, "json", False):
        print(json.dumps({"output": result.path, "entries": result.entries,
                          "data_bytes": result.data_bytes, "bytes": result.archive_bytes,
                          "compression": result.compress,
                          "seconds": round(time.monotonic() - started, 3)}))
    else:
        progress(f"wrote {result.path}: {result.entries} entries, {result.data_bytes:,} bytes of "
                 f"data, {result.archive_bytes:,} bytes ({result.compress}) in "
                 f"{time.monotonic() - started:.2f} s")


# --------------------------------------------------------------------------------------------

def cmd_initramfs(args: argparse.Namespace) -> int:
    from imgkit.archives import write_initramfs
    from imgkit.assemble import assemble
    from imgkit.compress import method_for_path

    started = time.monotonic()
    spec = _tree_spec(args)
    if not spec.sources and not spec.entries and not spec.files and not args.init:
        raise InputError("nothing to archive: give at least one SOURCE, --entry or --file",
                         hint="e.g. imgkit initramfs rootfs/ -o initrd.zst")
    tree = assemble(spec, progress=progress)
    compress = args.compress or method_for_path(args.output)
    result = write_initramfs(tree, args.output, compress=compress, level=args.level,
                             crc=args.format == "crc")
    _report(args, result, started)
    return 0


def cmd_tar(args: argparse.Namespace) -> int:
    from imgkit.archives import write_tarball
    from imgkit.assemble import assemble
    from imgkit.compress import method_for_path

    started = time.monotonic()
    spec = _tree_spec(args)
    if not spec.sources and not spec.entries and not spec.files:
        raise InputError("nothing to archive: give at least one SOURCE, --entry or --file")
    tree = assemble(spec)
    result = write_tarball(tree, args.output,
                           compress=args.compress or method_for_path(args.output, "none"))
    _report(args, result, started)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from imgkit.listing import entry_json, long_row
    from imgkit.browse import open_tree

    tree = open_tree(args.image)
    prefix = (args.path or "").strip("/")
    rows = [e for e in tree if e.path and (not prefix or e.path == prefix
                                           or e.path.startswith(prefix + "/"))]
    if args.json:
        print(json.dumps([entry_json(e, tree) for e in rows], indent=1))
    else:
        for e in rows:
            print(long_row(e, tree, numeric=args.numeric))
    return 0


# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgkit",
        description="Rootless disk and boot image assembler: initramfs, tar, FAT, ext4, ISO, "
                    "GPT/MBR disks, UKIs, and a QEMU runner. No root, loop devices or mounts.")
    p.add_argument("--version", action="version", version=f"imgkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and commands run")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ini = sub.add_parser("initramfs", help="build a cpio initramfs from sources",
                         description="Build a newc cpio initramfs from directories, archives and "
                                     "gen_init_cpio list files, compressed for the kernel.")
    _add_tree_options(ini)
    ini.add_argument("-o", "--output", required=True, metavar="FILE")
    ini.add_argument("--compress", choices=["none", "gzip", "xz", "zstd", "lz4"],
                     help="default from the output's suffix (.gz .xz .zst .lz4 .cpio), else zstd")
    ini.add_argument("--level", type=int, help="compression level")
    ini.add_argument("--format", choices=["newc", "crc"], default="newc",
                     help="cpio header format (default newc, 070701)")
    b = ini.add_argument_group("built-in init")
    b.add_argument("--init", choices=["busybox"], help="add a small busybox /init that loads "
                   "modules and mounts root= or runs /etc/imgkit/rc")
    b.add_argument("--busybox", default="/bin/busybox", metavar="PATH",
                   help="static busybox to include with --init (default /bin/busybox)")
    b.add_argument("--moddir", metavar="DIR", help="kernel modules directory (lib/modules/VERSION)")
    b.add_argument("--modules", action="append", default=[], metavar="NAME",
                   help="kernel module (or alias) to include with its dependencies and softdeps;"
                        " repeatable, comma-separated allowed")
    b.add_argument("--rc", metavar="SCRIPT", help="shell script the init runs when the kernel "
                   "command line has no root= (installed as /etc/imgkit/rc)")
    ini.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    ini.set_defaults(func=cmd_initramfs)

    tar = sub.add_parser("tar", help="build a pax tar archive from sources",
                         description="Build a pax tar archive (owners, devices, xattrs) from sources.")
    _add_tree_options(tar)
    tar.add_argument("-o", "--output", required=True, metavar="FILE")
    tar.add_argument("--compress", choices=["none", "gzip", "xz", "zstd", "lz4"],
                     help="default from the output's suffix, else none")
    tar.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    tar.set_defaults(func=cmd_tar)

    ls = sub.add_parser("ls", help="list the files of an archive or image",
                        description="List files like 'cpio -tv' / 'tar -tv': any archive "
                                    "libarchive reads, or a disk image (IMAGE:PARTITION).")
    ls.add_argument("image", metavar="IMAGE[:PARTITION]")
    ls.add_argument("path", nargs="?", help="only this path and what is below it")
    ls.add_argument("-n", "--numeric", action="store_true", help="numeric owners")
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(func=cmd_ls)

    for register in _EXTRA_PARSERS:
        register(sub)
    return p


#: Other modules add subcommands here (``run``, ``build``, ``inspect``, ``virt``...).
_EXTRA_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    from imgkit import cli_more  # noqa: F401  (registers the remaining subcommands)

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="imgkit: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_handler(args.func, args)


def run_handler(func: Handler, args: argparse.Namespace) -> int:
    """The error boundary: library errors become one line and a hint, exit status 1."""
    try:
        return func(args)
    except ImgkitError as exc:
        if getattr(args, "debug", False):
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


if __name__ == "__main__":
    sys.exit(main())
