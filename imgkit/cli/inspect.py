"""``imgkit inspect IMAGE``: what an image holds, without mounting it."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

DESCRIPTION = ("Show what an image file holds, without mounting it: the partition table "
               "(GPT or MBR: GUIDs, types, names, attributes, positions in sectors and "
               "bytes) and the filesystem found in each partition (FAT, ext2/3/4, ISO "
               "9660, squashfs: label, UUID/serial, size); for an ISO its volume and El "
               "Torito entries (and the table of a hybrid ISO); for a cpio/tar archive its "
               "compression and entry count; for a PE/UKI its sections; for qcow2 the "
               "virtual disk. List the files with: imgkit ls IMAGE[:PARTITION].")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="the image file to describe")
    p.add_argument("--json", action="store_true",
                   help="print the description as JSON on stdout (sizes in bytes)")


def run(args: argparse.Namespace) -> int:
    from imgkit.inspect import describe, format_description

    info = describe(args.image)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(format_description(info))
    return 0
