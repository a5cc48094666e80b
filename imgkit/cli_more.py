"""Subcommands beyond archives (build, run, inspect, kernel, virt), registered into the CLI."""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import cli
from .cli import _epoch, progress


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build
    from .config import load_config

    started = time.monotonic()
    cfg = load_config(args.config)
    quiet = args.json or args.quiet
    result = build(cfg, args.output_dir, mtime=_epoch(args.mtime),
                   progress=None if quiet else progress, only=tuple(args.only))
    if args.json:
        print(json.dumps({"outputs": [{"kind": o.kind, "name": o.name, "path": o.path,
                                       "bytes": o.size, **o.details} for o in result.outputs],
                          "seconds": round(time.monotonic() - started, 3)}, indent=1))
    elif not args.quiet:
        progress(f"done in {time.monotonic() - started:.1f} s")
    return 0


def _register_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build the images a TOML config declares",
                       description="Build trees, initramfs archives, UKIs, filesystems, a disk "
                                   "and/or an ISO as declared in a TOML config file (see README).")
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("-O", "--output-dir", default=".", metavar="DIR",
                   help="where declared outputs go (default: current directory)")
    p.add_argument("--only", action="append", default=[], metavar="ARTIFACT",
                   help="build only this: disk, iso, initramfs:NAME, uki:NAME, fs:NAME")
    p.add_argument("--mtime", metavar="EPOCH",
                   help="clamp times to EPOCH (default: config 'mtime', else $SOURCE_DATE_EPOCH)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("--json", action="store_true", help="print a JSON list of outputs on stdout")
    p.set_defaults(func=cmd_build)


cli._EXTRA_PARSERS.append(_register_build)
