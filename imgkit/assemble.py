"""From a list of sources and extra entries to one finished tree.

The CLI and the config-file build both describe a tree the same way; this module turns that
description into a :class:`Tree`: overlay the sources in order, add single entries, map ids,
clamp times. Every writer then takes the result as it is.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgkit.errors import InputError
from imgkit.idmap import KEEP, IdMap
from imgkit.sources import load_source
from imgkit.sources.initramfs_list import parse_list_lines
from imgkit.sources.oci import split_image_prefix
from imgkit.tree import Entry, FileBlob, Kind, Tree, normalize_path

if TYPE_CHECKING:
    from imgkit.elfdeps import Root
    from imgkit.vm.guest_init import InitConfig


@dataclass(frozen=True)
class TreeSpec:
    """What a tree is made of.

    ``sources``: paths (directory, archive or list), each optionally ``PATH:/prefix`` to place
    it below a directory; ``entries``: extra lines in gen_init_cpio syntax; ``files``:
    ``(host_path, tree_path, mode or None)``.
    """

    sources: tuple[str, ...] = ()
    entries: tuple[str, ...] = ()
    files: tuple[tuple[str, str, int | None], ...] = ()
    idmap: IdMap = KEEP
    host_owners: bool = False
    mtime: int | None = None
    origin: str = "command line"
    #: ``"busybox"`` lays imgkit's built-in ``/init`` and a static busybox under the tree.
    init: str | None = None
    busybox: str = "/bin/busybox"
    #: Kernel modules (names or aliases) to bundle, resolved with their dependencies in
    #: ``moddir`` (a ``lib/modules/VERSION`` directory); they need ``init``.
    modules: tuple[str, ...] = ()
    moddir: str | None = None
    #: The ``/etc/imgkit/rc`` script the built-in init runs when there is no ``root=``.
    rc: str | None = None
    #: The built-in init's declarative config (an :class:`imgkit.vm.guest_init.InitConfig`),
    #: written as ``/etc/imgkit/init.conf``; the modules it needs are added to ``modules``.
    init_config: InitConfig | None = None
    #: Mode bits kept from a host file placed with ``files`` (a config keeps no group/other
    #: write bits from the host's umask).
    file_mask: int = 0o7777
    #: How errors name the ``entries`` lines (default: "ORIGIN entry").
    entries_origin: str | None = None
    #: Tree paths whose files get every block allocated (a directory: each file below it;
    #: ``/``: the whole tree), see :attr:`Entry.keep_zeros`.
    keep_zeros: tuple[str, ...] = ()
    #: ELF binaries (absolute paths or names looked up in the sbin and bin directories) laid
    #: under the user tree with their shared-library closure (:mod:`imgkit.elfdeps`), owned
    #: 0:0, taken from ``binaries_root`` (default: the host).
    binaries: tuple[str, ...] = ()
    binaries_root: Root | None = None


def split_prefix(source: str) -> tuple[str, str]:
    """``"rootfs.tar:/opt/x"`` -> (``"rootfs.tar"``, ``"opt/x"``); a plain path has no prefix.

    Image spellings carry their own colons (``oci:/srv/img:v1:/opt/x``): the image module
    splits those.
    """
    image = split_image_prefix(source)
    if image is not None:
        return image
    if ":/" in source and not os.path.exists(source):
        path, prefix = source.split(":/", 1)
        return path, prefix
    return source, ""


def assemble(spec: TreeSpec, *, progress: Callable[[str], None] | None = None) -> Tree:
    """Build the tree ``spec`` describes.

    The CLI (``imgkit initramfs``) and the config build (``[trees.NAME]``) both come here, so
    a tree means the same thing whichever way it is declared. The built-in init's own entries
    (owned by 0:0 already) are laid under the finished user tree, outside the id map.
    """
    user = _with_binaries(spec, _assemble_user(spec))
    if spec.init is None:
        if spec.modules or spec.rc is not None or spec.init_config is not None:
            raise InputError(f"{spec.origin}: modules, rc and init_config need init = 'busybox'",
                             hint="or add the modules as files with a source of your own")
        return user
    if spec.init != "busybox":
        raise InputError(f"{spec.origin}: init {spec.init!r}: expected 'busybox'")
    from imgkit.vm.guest_init import busybox_init_tree, init_config_modules, render_init_conf
    from imgkit.vm.kmod import resolve_modules

    wanted = spec.modules
    if spec.init_config is not None:
        render_init_conf(spec.init_config)  # its errors first, before modules are looked up
        if spec.init_config.verity:
            _need_binary(user, "veritysetup", spec.origin, "init_config verity")
        wanted = tuple(dict.fromkeys(wanted + init_config_modules(spec.init_config)))
    modules = []
    if wanted:
        if not spec.moddir:
            raise InputError(f"{spec.origin}: modules need a kernel modules directory "
                             "(lib/modules/VERSION)",
                             hint="--moddir DIR on the command line; [kernel] in a config")
        modules = resolve_modules(spec.moddir, wanted)
        if progress:
            progress(f"{len(modules)} modules: {', '.join(m.name for m in modules)}")
    base = busybox_init_tree(spec.busybox, modules, spec.moddir, rc_script=spec.rc,
                             init_config=spec.init_config, mtime=spec.mtime or 0)
    base.overlay(user)
    return base


def _need_binary(tree: Tree, name: str, origin: str, what: str) -> None:
    """The init runs ``name`` from its PATH: it must be in the tree."""
    if not any(f"{d}/{name}" in tree for d in ("usr/sbin", "usr/bin", "sbin", "bin")):
        raise InputError(f"{origin}: {what} needs {name} in the initramfs",
                         hint=f'add binaries = ["{name}"] (with its libraries, from the host)')


def _with_binaries(spec: TreeSpec, user: Tree) -> Tree:
    """``user`` laid over the binaries and their libraries (the user's own files win)."""
    if not spec.binaries:
        return user
    from imgkit.elfdeps import HostRoot, closure_entries

    root = spec.binaries_root or HostRoot()
    try:
        entries = closure_entries(root, spec.binaries, mtime=spec.mtime or 0)
    except InputError as exc:
        raise InputError(f"{spec.origin}: binaries: {exc}", hint=exc.hint) from None
    tree = Tree(default_mtime=spec.mtime or 0)
    tree.update(entries)
    tree.overlay(user)
    return tree


def _assemble_user(spec: TreeSpec) -> Tree:
    default_mtime = spec.mtime or 0
    tree = Tree(default_mtime=default_mtime)
    for source in spec.sources:
        path, prefix = split_prefix(source)
        sub = load_source(path, host_owners=spec.host_owners, default_mtime=default_mtime)
        if prefix:
            moved = Tree(default_mtime=default_mtime)
            moved.warnings = sub.warnings
            root = sub.root
            moved.add(root.replace(path=prefix))
            for e in sub:
                if e.path:
                    target = e.target
                    if e.kind is Kind.HARDLINK and target is not None:
                        target = f"{prefix}/{target}"
                    moved.add(e.replace(path=f"{prefix}/{e.path}", target=target))
            sub = moved
        tree.overlay(sub)
    add_list_entries(tree, spec.entries, origin=spec.entries_origin or f"{spec.origin} entry",
                     default_mtime=default_mtime)
    for host, dest, mode in spec.files:
        tree.add(host_file_entry(dest, host, mode=mode, where=spec.origin,
                                 mtime=spec.mtime, mask=spec.file_mask))
    tree.validate()
    mark_keep_zeros(tree, spec.keep_zeros, origin=spec.origin)
    return finish(tree, idmap=spec.idmap, mtime=spec.mtime)


def mark_keep_zeros(tree: Tree, paths: tuple[str, ...], *, origin: str) -> None:
    """Set :attr:`Entry.keep_zeros` on the files ``paths`` name (a path, or every file below a
    directory); a path the tree does not have is an error, not a silent no-op."""
    for given in paths:
        path = normalize_path(given, origin=origin)
        if path not in tree:
            raise InputError(f"{origin}: keep_zeros: {given!r} is not in the tree",
                             hint="give tree paths of files or directories (\"/\" is all)")
        below = f"{path}/" if path else ""
        for e in list(tree):
            if e.kind is Kind.FILE and (e.path == path or e.path.startswith(below)):
                tree.add(e.replace(keep_zeros=True))


def add_list_entries(tree: Tree, lines: tuple[str, ...] | list[str], *, origin: str,
                     default_mtime: int = 0) -> None:
    """Add entries written in gen_init_cpio syntax (errors name ``origin:N``). A directory
    the lines only imply (the parent of a listed path) keeps the owner, mode and time it has
    in ``tree``: a line adding one file must not reset its directories."""
    if lines:
        for e in parse_list_lines(lines, origin=origin, base=os.getcwd(),
                                  default_mtime=default_mtime):
            implied = e.kind is Kind.DIR and e.origin.startswith("implied by ")
            if e.path and not (implied and e.path in tree):
                tree.add(e)


def host_file_entry(dest: str, host: str, *, mode: int | None = None,
                    mtime: int | None = None, where: str = "", mask: int = 0o7777) -> Entry:
    """The host file ``host`` placed at ``dest``: its mode (``& mask``) unless ``mode`` is
    given, its time clamped to ``mtime`` when given."""
    try:
        st = os.stat(host)
    except OSError as exc:
        raise InputError(f"{where}: file {host!r} cannot be read: {exc.strerror}") from None
    when = int(st.st_mtime) if mtime is None else min(int(st.st_mtime), mtime)
    return Entry(dest, Kind.FILE, mode=mode if mode is not None else (st.st_mode & mask),
                 mtime=when, data=FileBlob(host, st.st_size), origin=host)


def finish(tree: Tree, *, idmap: IdMap = KEEP, mtime: int | None = None) -> Tree:
    """Apply the id map and clamp times (the last step before any writer)."""
    tree = idmap.apply(tree)
    if mtime is not None:
        tree = tree.clamp_mtimes(mtime)
    return tree
