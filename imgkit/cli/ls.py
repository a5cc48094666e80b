"""``imgkit ls IMAGE[:PARTITION] [PATH]``: the files of an archive or image, as ``tar -tv``."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

DESCRIPTION = ("List files like 'cpio -tv' / 'tar -tv': any archive libarchive reads, or a "
               "disk image (IMAGE:PARTITION).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE[:PARTITION]")
    p.add_argument("path", nargs="?", help="only this path and what is below it")
    p.add_argument("-n", "--numeric", action="store_true", help="numeric owners")
    p.add_argument("--json", action="store_true", help="JSON output")


def run(args: argparse.Namespace) -> int:
    from imgkit.browse import open_tree
    from imgkit.listing import entry_json, long_row

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
