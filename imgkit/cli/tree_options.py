"""The options ``initramfs`` and ``tar`` share: sources, single entries, owners and times,
turned into one :class:`imgkit.assemble.TreeSpec`; and their common summary line."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from imgkit.cli.common import epoch, progress
from imgkit.errors import InputError

if TYPE_CHECKING:
    import argparse

    from imgkit.archives import ArchiveResult
    from imgkit.assemble import TreeSpec

COMPRESSIONS = ["none", "gzip", "xz", "zstd", "lz4"]


def add_tree_options(p: argparse.ArgumentParser) -> None:
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
    o.add_argument("--root-uid", type=int, metavar="UID",
                   help="map this uid to 0 (like gen_initramfs.sh -u)")
    o.add_argument("--root-gid", type=int, metavar="GID",
                   help="map this gid to 0 (like gen_initramfs.sh -g)")
    o.add_argument("--uid-map", metavar="'IN OUT COUNT[,...]'",
                   help="uid ranges as in /proc/PID/uid_map")
    o.add_argument("--gid-map", metavar="'IN OUT COUNT[,...]'",
                   help="gid ranges as in /proc/PID/gid_map")
    o.add_argument("--host-owners", action="store_true",
                   help="keep directory sources' owners exactly as on the host (default: the "
                        "invoking user's files become root's)")
    o.add_argument("--mtime", metavar="EPOCH",
                   help="clamp all times to EPOCH (default: $SOURCE_DATE_EPOCH if set)")


def add_output_options(p: argparse.ArgumentParser, compress_help: str) -> None:
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--compress", choices=COMPRESSIONS, help=compress_help)


def host_files(items: list[str]) -> tuple[tuple[str, str, int | None], ...]:
    """``--file HOST:DEST[:MODE]`` values as (host, dest, mode or None)."""
    files = []
    for item in items:
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise InputError(f"--file {item!r}: expected HOST:DEST or HOST:DEST:MODE")
        mode = _file_mode(item, parts[2]) if len(parts) == 3 else None
        if os.path.exists(parts[0]) and not (os.path.isfile(parts[0]) or os.path.isdir(parts[0])):
            from imgkit.detect import regular_file
            regular_file(parts[0], "--file")   # a device or FIFO: refused, naming it
        files.append((parts[0], parts[1], mode))
    return tuple(files)


def _file_mode(item: str, text: str) -> int:
    """The MODE of ``--file HOST:DEST:MODE``: octal, permission and setuid/setgid/sticky bits."""
    if not (text.isascii() and text.isdigit() and set(text) <= set("01234567")):
        raise InputError(f"--file {item!r}: MODE must be octal (like 0644), got {text!r}")
    mode = int(text, 8)
    if mode > 0o7777:
        raise InputError(f"--file {item!r}: MODE {text} has bits beyond 07777",
                         hint="give permission bits only: the file type comes from HOST")
    return mode


def tree_spec(args: argparse.Namespace, **init: Any) -> TreeSpec:
    """The tree the options describe; ``init`` adds the built-in init's fields."""
    from imgkit.assemble import TreeSpec
    from imgkit.idmap import idmap_from_options

    idmap = idmap_from_options(squash=args.squash, root_uid=args.root_uid,
                               root_gid=args.root_gid, uid_map=args.uid_map, gid_map=args.gid_map)
    return TreeSpec(sources=tuple(args.sources), entries=tuple(args.entry),
                    files=host_files(args.file), idmap=idmap, host_owners=args.host_owners,
                    mtime=epoch(args.mtime), **init)


def report(args: argparse.Namespace, result: ArchiveResult, started: float) -> None:
    """The summary: one progress line, or with ``--json`` one JSON object on stdout."""
    for path in result.skipped:
        progress(f"warning: /{path} left out: the format cannot store a socket")
    for warning in result.warnings:
        progress(f"warning: {warning}")
    seconds = time.monotonic() - started
    if args.json:
        import json

        print(json.dumps({"output": result.path, "entries": result.entries,
                          "data_bytes": result.data_bytes, "bytes": result.archive_bytes,
                          "compression": result.compress, "warnings": result.warnings,
                          "seconds": round(seconds, 3)}))
    elif not getattr(args, "quiet", False):
        progress(f"wrote {result.path}: {result.entries} entries, {result.data_bytes:,} bytes of "
                 f"data, {result.archive_bytes:,} bytes ({result.compress}) in {seconds:.2f} s")
