"""``imgkit tar SOURCE... -o FILE``: a pax tar archive (owners, devices, xattrs)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from imgkit.cli.tree_options import add_output_options, add_tree_options, report, tree_spec
from imgkit.errors import InputError

if TYPE_CHECKING:
    import argparse

DESCRIPTION = "Build a pax tar archive (owners, devices, xattrs) from sources."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_tree_options(p)
    add_output_options(p, "default from the output's suffix, else none")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress line and no summary (warnings and errors still)")


def run(args: argparse.Namespace) -> int:
    from imgkit.archives import write_tarball
    from imgkit.assemble import assemble
    from imgkit.compress import method_for_path

    started = time.monotonic()
    spec = tree_spec(args)
    if not spec.sources and not spec.entries and not spec.files:
        raise InputError("nothing to archive: give at least one SOURCE, --entry or --file")
    result = write_tarball(assemble(spec), args.output,
                           compress=args.compress or method_for_path(args.output, "none"))
    report(args, result, started)
    return 0
