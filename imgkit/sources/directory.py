"""A host directory as a source tree.

Symlinks are never followed, so nothing outside the directory leaks in. Hard links are
detected by ``(st_dev, st_ino)``. Owners: by default the invoking user's files become root's
(as inside ``unshare -r``) and other owners are kept; ``host_owners=True`` keeps every owner
as it is on disk.

That default is imgkit's guess, not the user's word, and it must not turn a file the builder
can write into a setuid-root (or setgid-root) program of the image: a file whose owner (group)
is changed to root by the default loses its setuid (setgid) bit, and the paths are listed on
:attr:`Tree.warnings`. Bits are kept when the owner was given explicitly (``host_owners=True``,
then a ``--root-uid``/``--uid-map`` in the id map) or when the file already belongs to root.
"""
from __future__ import annotations

import os
import stat

from imgkit.errors import InputError
from imgkit.tree import Entry, FileBlob, Kind, Tree, normalize_path


def read_directory(path: str, *, host_owners: bool = False, xattrs: bool = True,
                   prefix: str = "") -> Tree:
    """Scan ``path`` into a new :class:`Tree`, its content placed under ``prefix``."""
    if not os.path.isdir(path):
        raise InputError(f"source directory {path!r} does not exist or is not a directory")
    prefix = normalize_path(prefix)
    tree = Tree()
    uid, gid = os.getuid(), os.getgid()
    seen_inodes: dict[tuple[int, int], str] = {}
    dropped: list[str] = []

    def owner(st: os.stat_result) -> tuple[int, int]:
        if host_owners:
            return st.st_uid, st.st_gid
        return (0 if st.st_uid == uid else st.st_uid, 0 if st.st_gid == gid else st.st_gid)

    kinds = {stat.S_IFREG: Kind.FILE, stat.S_IFDIR: Kind.DIR, stat.S_IFLNK: Kind.SYMLINK}
    # Which set-id bits a file of the invoking user loses to the default owner (see above).
    own_uid = uid if uid != 0 and not host_owners else -1
    own_gid = gid if gid != 0 and not host_owners else -1
    unreadable: list[str] = []
    add = tree.add_in_order

    root_st = os.lstat(path)
    u, g = owner(root_st)
    if prefix:
        tree.add(Entry(prefix, Kind.DIR, mode=stat.S_IMODE(root_st.st_mode), uid=u, gid=g,
                       mtime=int(root_st.st_mtime), origin=path))
    else:
        tree.with_root(mode=stat.S_IMODE(root_st.st_mode), uid=u, gid=g,
                       mtime=int(root_st.st_mtime))

    def walk(host_dir: str, rel_dir: str) -> None:
        """Add the entries below ``host_dir``, parents first, siblings by name: one ``lstat``
        and one ``listxattr`` an entry (and ``access`` for a regular file), the per-entry work
        written out in one loop, as it runs for every file of the tree."""
        try:
            with os.scandir(host_dir) as it:
                items = sorted(it, key=_by_name)
        except OSError as exc:
            raise unreadable_error(path, f"cannot read directory {host_dir!r}: "
                                   f"{exc.strerror}") from exc
        base = rel_dir + "/" if rel_dir else ""
        for item in items:
            host = item.path
            rel = base + item.name
            st = item.stat(follow_symlinks=False)
            mode = st.st_mode
            fmt = stat.S_IFMT(mode)
            kind = kinds.get(fmt) or Kind.from_mode(mode)
            st_uid, st_gid = st.st_uid, st.st_gid
            if host_owners:
                u, g = st_uid, st_gid
            else:
                u, g = (0 if st_uid == uid else st_uid), (0 if st_gid == gid else st_gid)
            perms = mode & 0o7777
            target = None
            data = None
            rdev = (0, 0)
            if kind is Kind.FILE:
                drop = (stat.S_ISUID if st_uid == own_uid else 0) | (
                    stat.S_ISGID if st_gid == own_gid else 0)
                if perms & drop:
                    dropped.append(rel)
                    perms &= ~drop
                if not ((st_uid == uid and mode & stat.S_IRUSR) or os.access(host, os.R_OK)):
                    unreadable.append(host)   # the owner's own bits spare most files a call
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    first = seen_inodes.get(key)
                    if first is not None:
                        add(Entry(rel, Kind.HARDLINK, perms, u, g, int(st.st_mtime), first,
                                  origin=host))
                        continue
                    seen_inodes[key] = rel
                data = FileBlob(host, st.st_size)
            elif kind is Kind.SYMLINK:
                target = os.readlink(host)
            elif kind is Kind.CHAR or kind is Kind.BLOCK:
                rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xa = _read_xattrs(host) if xattrs and kind is not Kind.SYMLINK else ()
            add(Entry(rel, kind, perms, u, g, int(st.st_mtime), target, rdev, xa, data, host))
            if kind is Kind.DIR:
                walk(host, rel)

    walk(path, prefix)
    if unreadable:
        raise unreadable_error(path, f"{len(unreadable)} file(s) of {path} cannot "
                               f"be read by uid {os.getuid()}: " + ", ".join(unreadable[:5]))
    if dropped:
        shown = ", ".join("/" + p for p in dropped[:5]) + (
            f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        tree.warnings.append(
            f"setuid/setgid bits dropped from {len(dropped)} file(s) of {path} owned by you, "
            f"which the default owner policy makes root's: {shown}; to keep them, give the "
            f"owner explicitly: --host-owners --root-uid {uid} --root-gid {gid}")
    return tree


def unreadable_error(source: str, message: str) -> InputError:
    """What to say when part of a source directory cannot be read: a root filesystem made by
    root (debootstrap, a package manager) has files only root may read, and the way out is
    to let a tool with that right pack it, not to run imgkit as root."""
    return InputError(message, hint=f"pack the tree as root, once: sudo tar -C {source} "
                      "--numeric-owner --xattrs --xattrs-include='*' --acls -S -cpf root.tar . "
                      "and give root.tar as the source (owners, modes and xattrs come from the "
                      "archive); or make the root as yourself with mmdebstrap --mode=unshare "
                      "(or podman/buildah unshare), which leaves it readable by you")


def _by_name(item: os.DirEntry[str]) -> str:
    return item.name


def _read_xattrs(host: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(host, follow_symlinks=False)
    except OSError:
        return ()
    if not names:
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(host, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(out)
