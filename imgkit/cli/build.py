"""``imgkit build CONFIG.toml``: every image a config declares, through
:func:`imgkit.build.build`."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from imgkit.cli.common import epoch, progress

if TYPE_CHECKING:
    import argparse

    from imgkit.artifact_cache import CachePolicy

DESCRIPTION = ("Build trees, initramfs archives, UKIs, filesystems, a disk and/or an ISO as "
               "declared in a TOML config file (see README).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("-O", "--output-dir", default=".", metavar="DIR",
                   help="where declared outputs go (default: current directory)")
    p.add_argument("--only", action="append", default=[], metavar="ARTIFACT",
                   help="build only this: disk, iso, initramfs:NAME, uki:NAME, fs:NAME")
    p.add_argument("--mtime", metavar="EPOCH",
                   help="clamp times to EPOCH (default: config 'mtime', else $SOURCE_DATE_EPOCH)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("--json", action="store_true", help="print a JSON list of outputs on stdout")
    p.add_argument("--no-cache", action="store_true",
                   help="neither use nor fill the artifact cache ($IMGKIT_CACHE/artifacts)")
    p.add_argument("--cache-limit", metavar="SIZE",
                   help="keep the artifact cache within SIZE, least recently used entries "
                        "removed first (default: $IMGKIT_CACHE_LIMIT, else 2G; 0: no cache)")
    p.add_argument("--cache-identity", choices=("stat", "content"), default="stat",
                   help="how input files are recognised as unchanged: by path, size, times "
                        "and inode (default), or by their content's hash")


def check_output_dir(path: str) -> None:
    """``-O DIR`` is a directory, or a name one can be made at: said before anything is
    built, not after the first artifact."""
    import os

    from imgkit.errors import InputError
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise InputError(f"-O {path}: expected a directory, got an existing file")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"-O {path}: {parent} is a file, so no directory can be made there")


def cache_policy(args: argparse.Namespace) -> CachePolicy | None:
    """The artifact cache a build uses, from ``--no-cache``, ``--cache-limit``,
    ``--cache-identity`` and ``$IMGKIT_CACHE_LIMIT``."""
    if args.no_cache:
        return None
    from imgkit.artifact_cache import CachePolicy, default_limit
    from imgkit.sizes import parse_size
    limit = parse_size(args.cache_limit, what="--cache-limit") if args.cache_limit \
        else default_limit()
    if limit == 0:
        return None   # a cache that may hold nothing: none at all, like --no-cache
    return CachePolicy(limit=limit, identity=args.cache_identity)


def run(args: argparse.Namespace) -> int:

    from imgkit.build import build
    from imgkit.config import load_config

    started = time.monotonic()
    quiet = args.json or args.quiet
    check_output_dir(args.output_dir)
    # the progress line's reporter is installed for every command (cli.common.guarded)
    result = build(load_config(args.config), args.output_dir, mtime=epoch(args.mtime),
                   progress=None if quiet else progress, only=tuple(args.only),
                   cache=cache_policy(args))
    if args.json:
        import json

        print(json.dumps({"outputs": [{"kind": o.kind, "name": o.name, "path": o.path,
                                       "bytes": o.size, **o.details} for o in result.outputs],
                          "artifacts": [{"artifact": ref, "cached": cached,
                                         **({"changed": why} if why else {})}
                                        for ref, cached, why in result.artifacts],
                          "seconds": round(time.monotonic() - started, 3)}, indent=1))
    elif not args.quiet:
        progress(f"done in {time.monotonic() - started:.1f} s")
    return 0
