"""``imgkit initramfs SOURCE... -o FILE``: a compressed newc cpio for the kernel.

The tree goes through :func:`imgkit.assemble.assemble`, the same builder as a config's
``[trees.NAME]``, the built-in init and its modules included."""
from __future__ import annotations

import tempfile
import time
from typing import TYPE_CHECKING, Any

from imgkit.cli.common import check_level, progress
from imgkit.cli.tree_options import add_output_options, add_tree_options, report, tree_spec
from imgkit.errors import InputError

if TYPE_CHECKING:
    import argparse

DESCRIPTION = ("Build a newc cpio initramfs from directories, archives and gen_init_cpio "
               "list files, compressed for the kernel.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_tree_options(p)
    add_output_options(p, "default from the output's suffix (.gz .xz .zst .lz4 .cpio), else zstd")
    p.add_argument("--level", type=int, help="compression level")
    p.add_argument("--format", choices=["newc", "crc"], default="newc",
                   help="cpio header format (default newc, 070701)")
    b = p.add_argument_group("built-in init")
    b.add_argument("--init", choices=["busybox"], help="add a small busybox /init that loads "
                   "modules and mounts root= or runs /etc/imgkit/rc")
    b.add_argument("--busybox", default="/bin/busybox", metavar="PATH",
                   help="static busybox to include with --init (default /bin/busybox)")
    b.add_argument("--moddir", metavar="DIR", help="kernel modules directory (lib/modules/VERSION)")
    b.add_argument("--kernel-from-tree", metavar="SOURCE",
                   help="take --modules from the kernel of this root (a directory or archive, "
                        "never unpacked): its lib/modules/VERSION")
    b.add_argument("--kernel-version", metavar="VERSION",
                   help="with --kernel-from-tree: which kernel (default: the newest)")
    b.add_argument("--modules", action="append", default=[], metavar="NAME",
                   help="kernel module (or alias) to include with its dependencies and softdeps;"
                        " repeatable, comma-separated allowed")
    b.add_argument("--rc", metavar="SCRIPT", help="shell script the init runs when the kernel "
                   "command line has no root= (installed as /etc/imgkit/rc)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress line and no summary (warnings and errors still)")


def builtin_init(args: argparse.Namespace) -> dict[str, Any]:
    """The TreeSpec fields of ``--init``, ``--modules`` and ``--rc`` (none without them)."""
    if not (args.init or args.modules or args.rc):
        return {}
    if not args.init:
        raise InputError("--modules and --rc need --init busybox",
                         hint="or add the modules as files with a SOURCE of your own")
    names = _module_names(args)
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
    return {"init": args.init, "busybox": args.busybox, "modules": names,
            "moddir": args.moddir, "rc": rc}


def _module_names(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(m for item in args.modules for m in item.split(",") if m)


def _moddir_from_tree(args: argparse.Namespace, work: str) -> str | None:
    """``--kernel-from-tree``: the requested modules copied out of the root's own
    modules directory into ``work`` (the kernel's version must match its modules')."""
    from imgkit.sources import load_source
    from imgkit.vm.kernel import tree_kernel
    if args.moddir:
        raise InputError("give --moddir or --kernel-from-tree, not both")
    where = f"--kernel-from-tree {args.kernel_from_tree}"
    info = tree_kernel(load_source(args.kernel_from_tree), work, where=where,
                       version=args.kernel_version, modules=_module_names(args))
    progress(f"kernel {info.version} from {args.kernel_from_tree}")
    return info.moddir


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="imgkit-kernel-") as work:
        if args.kernel_from_tree:
            args.moddir = _moddir_from_tree(args, work)
        elif args.kernel_version:
            raise InputError("--kernel-version needs --kernel-from-tree")
        return _build(args)


def _build(args: argparse.Namespace) -> int:
    from imgkit.archives import write_initramfs
    from imgkit.assemble import assemble
    from imgkit.compress import method_for_path

    started = time.monotonic()
    spec = tree_spec(args, **builtin_init(args))
    if not spec.sources and not spec.entries and not spec.files and not spec.init:
        raise InputError("nothing to archive: give at least one SOURCE, --entry or --file",
                         hint="e.g. imgkit initramfs rootfs/ -o initrd.zst")
    method = args.compress or method_for_path(args.output)
    check_level(method, args.level)
    result = write_initramfs(assemble(spec, progress=progress), args.output,
                             compress=method, level=args.level, crc=args.format == "crc")
    report(args, result, started)
    return 0
