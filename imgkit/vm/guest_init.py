"""The tree of a minimal initramfs driven by imgkit's built-in busybox init.

It holds ``/init`` (``imgkit/data/init.sh``), a static busybox, the two device nodes the
kernel needs before devtmpfs is mounted (``/dev/console`` so early output has somewhere to
go, ``/dev/null``), the mount points the init uses, the kernel modules to load with their
load-order file, and optionally ``/etc/imgkit/rc``, the hook run when no ``root=`` is given.
Everything is owned by 0:0 whoever builds it: metadata lives in the tree.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources

from imgkit.errors import InputError
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree
from imgkit.vm.kmod import Module, modules_tree

RC_PATH = "etc/imgkit/rc"
_DIRS = ("bin", "sbin", "etc", "proc", "sys", "dev", "mnt", "root", "tmp", "run", "newroot")


def init_script() -> bytes:
    """The built-in ``/init`` (a busybox ``sh`` script), as shipped in the package."""
    return resources.files("imgkit").joinpath("data/init.sh").read_bytes()


def busybox_init_tree(busybox_path: str | os.PathLike = "/bin/busybox",
                      modules: Iterable[Module] = (), moddir: str | os.PathLike | None = None,
                      rc_script: str | None = None, *, mtime: int = 0) -> Tree:
    """An initramfs tree: built-in ``/init``, static busybox, device nodes, modules, rc hook.

    ``busybox_path`` must be a *static* busybox (Debian: busybox-static), since the
    initramfs has no libc. ``modules`` (from :func:`imgkit.vm.kmod.resolve_modules`) are taken
    from ``moddir``. ``rc_script`` becomes ``/etc/imgkit/rc``.
    """
    busybox_path = os.fspath(busybox_path)
    try:
        size = os.stat(busybox_path).st_size
    except OSError as exc:
        raise InputError(f"busybox binary {busybox_path} is not readable: {exc.strerror}",
                         hint="install busybox-static or pass busybox_path") from exc
    tree = Tree(default_mtime=mtime)
    for d in _DIRS:
        tree.add(Entry(d, Kind.DIR, mode=0o755, mtime=mtime))
    tree.add(Entry("tmp", Kind.DIR, mode=0o1777, mtime=mtime))
    tree.add(Entry("root", Kind.DIR, mode=0o700, mtime=mtime))
    tree.add(Entry("init", Kind.FILE, mode=0o755, mtime=mtime, data=BytesBlob(init_script()),
                   origin="imgkit/data/init.sh"))
    tree.add(Entry("bin/busybox", Kind.FILE, mode=0o755, mtime=mtime,
                   data=FileBlob(busybox_path, size), origin=busybox_path))
    tree.add(Entry("bin/sh", Kind.SYMLINK, mode=0o777, mtime=mtime, target="busybox"))
    tree.add(Entry("dev/console", Kind.CHAR, mode=0o600, mtime=mtime, rdev=(5, 1)))
    tree.add(Entry("dev/null", Kind.CHAR, mode=0o666, mtime=mtime, rdev=(1, 3)))
    modules = list(modules)
    if modules:
        if moddir is None:
            raise InputError("busybox_init_tree: modules given without their moddir")
        for entry in modules_tree(moddir, modules, mtime=mtime):
            if entry.path:  # keep this tree's root metadata
                tree.add(entry)
    if rc_script is not None:
        tree.add(Entry(RC_PATH, Kind.FILE, mode=0o755, mtime=mtime,
                       data=BytesBlob(rc_script.encode()), origin="rc_script"))
    return tree

