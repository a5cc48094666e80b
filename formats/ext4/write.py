"""ext4 images from a :class:`~imgkit.tree.Tree`, without root.

``mke2fs -d DIR`` is the fast way to fill an ext4 filesystem, but it copies owners, modes,
times and xattrs from the host inodes of ``DIR`` and cannot see device nodes an unprivileged
user cannot create. So the image is made in two steps:

1. ``mke2fs -d`` copies a host directory holding the tree's *names and bytes*. When the tree
   was read from one host directory and still matches it name for name (the usual case for
   :func:`imgkit.sources.read_directory`), that directory is used as it is: ``mke2fs`` only
   reads it. Otherwise a staging directory mirrors the tree (regular files are hard links to
   the blob's host file where possible, so staging costs an inode, not a copy). Device nodes
   the builder cannot make are staged as placeholders at their place, so every inode is
   allocated by ``mke2fs`` in the same order whichever way the image is made.
2. ``debugfs`` lists the new directories (``ls -p``: inode numbers, modes and owners), then
   one ``debugfs -w -f CMDS`` pass addresses each inode by number and rewrites what differs
   from the tree: owner, full mode, device numbers, xattrs, and all four times. Nothing of the
   host (owners, umask, atimes, ctimes, inode numbers) leaks into the image.

``mke2fs`` 1.47 reads directories sorted by name (``scandir`` + ``alphasort``, and the C
locale is forced), so the host directory order does not matter either.

Everything that would otherwise be random or host time is fixed: the UUID and directory hash
seed derive from a seed, ``E2FSPROGS_FAKE_TIME`` and debugfs' ``set_current_time`` pin the
superblock and special-inode times, our own ``mke2fs.conf`` replaces the host's, and the
options whose defaults depend on the host kernel (lazy init, discard) are given explicitly.
Two builds of the same tree are therefore bit-identical, whether from the source directory or
from a staging copy.

From e2fsprogs 1.47.1 on, ``mke2fs -d -`` reads a tar archive on its standard input (through
libarchive, which it loads at run time: ``libarchive13``). Then a tree that is not exactly
one host directory (which mke2fs still reads itself: that costs less) is streamed to it as a
pax archive (:func:`imgkit.formats.tar.write_tar`) and no host directory is read or made: owners,
modes, mtimes, device numbers, symlinks and hard links come from the archive. The debugfs pass
still runs, for what the archive path leaves out: atime, ctime and crtime (mke2fs sets the
first two to 0, as the archive has none, and crtime to the fake time), xattrs (it copies only
``security.capability`` and ``gnu.translator``; the archive is written without any, and all
are set by debugfs in the tree's order), sockets (tar cannot hold one: a FIFO stands in and is
turned into the socket), and the root directory and ``lost+found`` (mke2fs ORs the archive's
mode into theirs). mke2fs runs in the ``C.UTF-8`` locale there, or libarchive refuses every
non-ASCII name. Trees the archive path cannot carry exactly (names that are not UTF-8, symlink
targets whose length is a multiple of 1024, which that mke2fs mishandles) take the directory
path. :attr:`Ext4Info.populated_from` says which path was taken.

Which e2fsprogs: the host's when it reads archives (1.47.1 or newer); else the writer fetches
Debian bookworm-backports' e2fsprogs once, without root (:mod:`imgkit.debfetch`, cached under
``$IMGKIT_CACHE/e2fsprogs-bpo``), so a tree from an archive is streamed rather than staged,
and falls back to the host's (with staging) when it cannot be had. Only writing fetches:
reading an image uses what this process already chose, else the host's, and never opens a
connection. ``E2FSPROGS_DIR`` (from the environment variable ``IMGKIT_E2FSPROGS``) overrides
the choice: ``host`` takes the e2fsprogs on ``PATH`` whatever its version, a directory the one
unpacked there (``sbin/mke2fs``, ``sbin/debugfs`` and ``sbin/e2fsck`` or ``usr/sbin/...``, its
libraries under ``lib/`` or ``usr/lib/``, any multiarch subdirectory, as ``dpkg -x`` unpacks a
Debian package). Its libraries are put on ``LD_LIBRARY_PATH`` of those tools only.
"""
from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import ctypes
import errno
import functools
import glob
import hashlib
import os
import re
import shutil
import stat
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgkit import hostdir, progress, scratch, tools
from imgkit.atomic import atomic_path
from imgkit.errors import InputError, LayoutError, ToolError
from imgkit.formats.ext4 import debugfs
from imgkit.hostdir import HostEntry
from imgkit.tree import Entry, FileBlob, Kind, Tree

if TYPE_CHECKING:
    from imgkit.debfetch import ToolChoice

#: Another e2fsprogs to run instead of the one on ``PATH``, or ``"host"`` (see the module
#: docstring); unset, the writer chooses (:func:`choose_e2fsprogs`).
E2FSPROGS_DIR: str | None = os.environ.get("IMGKIT_E2FSPROGS") or None
#: The first e2fsprogs whose mke2fs reads a tar archive (``-d -``).
TAR_INPUT = (1, 47, 1)
#: Where an e2fsprogs with :data:`TAR_INPUT` comes from when the host's is older.
BACKPORTS_RELEASE = "bookworm-backports"
BACKPORTS_PACKAGES = ("e2fsprogs", "libext2fs2")
BACKPORTS_CACHE = "e2fsprogs-bpo"
#: The writer's choice once made (``{"choice": ToolChoice}``), kept for the process.
_chosen: dict[str, ToolChoice] = {}

BLOCK = 4096
INODE_SIZE = 256
MIB = 1 << 20

#: Features of a plain ext4 as e2fsprogs 1.47.0 makes it; the host's mke2fs.conf is ignored
#: so the same tree gives the same image on every machine.
DEFAULT_FEATURES = ("has_journal", "extent", "huge_file", "flex_bg", "metadata_csum", "64bit",
                    "dir_nlink", "extra_isize")

_MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 5.0
	lazy_itable_init = false
	lazy_journal_init = false

[fs_types]
	ext4 = {{
		features = {features}
	}}
"""

# What mke2fs says when the tree does not fit the size it was given.
_NO_SPACE = re.compile(
    r"Could not allocate (block|inode)|No space left|No free space|too big for a filesystem|"
    r"too small|Cannot create filesystem with requested number of inodes", re.I)


@dataclass(frozen=True)
class Ext4Info:
    """What :func:`write_ext4` made: the size in bytes and the identifiers it chose."""

    size: int
    uuid: str
    hash_seed: str
    inodes: int
    #: How mke2fs got the tree: ``"tar"`` (an archive on its standard input), ``"directory"``
    #: (the host directory the tree was read from) or ``"staging"`` (a staging copy).
    populated_from: str = "staging"
    #: Which e2fsprogs wrote it, e.g. ``"e2fsprogs 1.47.2 (from Debian bookworm-backports)"``.
    tools: str = ""


# -- public API ---------------------------------------------------------------------------

def write_ext4(
    tree: Tree,
    out_path: str | os.PathLike,
    *,
    size: int | None = None,
    label: str = "",
    uuid: str | None = None,
    hash_seed: str | None = None,
    seed: str | None = None,
    mtime_epoch: int | None = None,
    features: Sequence[str] | None = None,
    inodes: int | None = None,
    reserved_percent: float = 0.0,
    extra_mke2fs_args: Sequence[str] = (),
    staging_dir: str | os.PathLike | None = None,
    offset: int | None = None,
) -> Ext4Info:
    """Write ``tree`` as an ext4 image at ``out_path`` (atomically) and describe it.

    With ``offset`` (bytes), the filesystem is written into the existing file ``out_path`` at
    that offset instead, as into a partition of a disk image being built: no copy of the
    filesystem is made. ``size`` is then required, the range must be empty (zero or a hole),
    and the caller owns the file (it is not replaced atomically).

    ``size`` is the image size in bytes (a multiple of 4096); ``None`` picks the smallest size
    that fits with some slack, growing it if ``mke2fs`` still runs out of room. A tree that does
    not fit an explicit ``size`` raises :class:`LayoutError` naming the size it needs.

    ``uuid`` and ``hash_seed`` default to values derived from ``seed``; without a seed, from
    the label and the tree's metadata, so they never come from a random source.
    ``mtime_epoch`` clamps every mtime (``SOURCE_DATE_EPOCH``) and is the time written into
    the superblock; without it, the newest mtime of the tree is used. ``features`` are added to
    :data:`DEFAULT_FEATURES` (``"^name"`` removes one), ``inodes`` overrides the inode count,
    ``reserved_percent`` is mke2fs' ``-m`` (0 by default: an image is not a shared disk).
    ``staging_dir`` is where the temporary staging tree goes (default: beside ``out_path``
    when hard links to the sources work there, else the run's scratch directory: never a
    copy of the tree in the output directory); a tree read unchanged from one
    host directory needs none, as ``mke2fs`` reads that directory itself, and neither does
    any tree with e2fsprogs 1.47.1 or newer, which is streamed to ``mke2fs`` as an archive.
    """
    tree.validate()
    choose_e2fsprogs()
    version = e2fsprogs_version()
    if version < (1, 43):
        raise ToolError(f"mke2fs {'.'.join(map(str, version))} cannot populate a filesystem "
                        f"from a directory (-d); e2fsprogs 1.43 or newer is needed")
    if mtime_epoch is not None:
        tree = tree.clamp_mtimes(mtime_epoch)
        fs_time = mtime_epoch
    else:
        fs_time = max((e.mtime for e in tree), default=0)
    # e2fsprogs reads a fake time of 0 as "no fake time"; 1 s keeps the image host-independent.
    fs_time = max(int(fs_time), 1)
    if len(label.encode()) > 16:
        raise InputError(f"ext4 label {label!r} is {len(label.encode())} bytes; at most 16 fit")
    if offset is not None and (size is None or offset < 0 or offset % 512):
        raise InputError("ext4 at an offset needs an explicit size and a sector-aligned offset, "
                         f"got size={size}, offset={offset}")
    if size is not None and (size <= 0 or size % BLOCK):
        raise InputError(f"ext4 size must be a positive multiple of {BLOCK} bytes, got {size}")
    for e in tree:
        if "\n" in e.path or "\r" in e.path:
            raise InputError(f"ext4: cannot store the name {e.path!r}: it contains a line break",
                             hint="debugfs commands are line based; rename the file")
    seed_text = seed if seed is not None else _tree_seed(tree, label)
    fs_uuid = _parse_uuid(uuid, "uuid") if uuid else _derive_uuid(seed_text, "uuid")
    fs_hash = (_parse_uuid(hash_seed, "hash_seed") if hash_seed
               else _derive_uuid(seed_text, "hash_seed"))
    need_inodes = _inodes_needed(tree)
    if inodes is None:
        n_inodes = need_inodes + max(64, need_inodes // 10)
        if size is not None:
            n_inodes = max(n_inodes, size // 16384)
    else:
        if inodes < need_inodes:
            raise LayoutError(f"ext4: the tree needs {need_inodes} inodes, but inodes={inodes}")
        n_inodes = inodes

    out_path = os.fspath(out_path)
    can_tar = version >= (1, 47, 1) and _tar_can_carry(tree)
    base = os.fspath(staging_dir) if staging_dir else _work_base(tree, out_path, can_tar)
    with tempfile.TemporaryDirectory(prefix=".imgkit-ext4-", dir=base) as work, \
            (atomic_path(out_path) if offset is None else contextlib.nullcontext(out_path)) as tmp, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        source: str | None = None
        host: dict[str, HostEntry] = {}
        # The source directory first, whatever the version: mke2fs reading it costs less
        # than streaming the tree (and gives the same image). Looked at only now that our
        # own temporaries exist: were they inside the source directory, it would no longer
        # match the tree and would not be used.
        direct = _direct_source(tree, version)
        use_tar = direct is None and can_tar
        if direct is not None:
            source, host = direct
            populated_from = "directory"
        elif use_tar:
            populated_from = "tar"
        else:
            source = os.path.join(work, "root")
            stage_tree(tree, source)
            host = hostdir.scan(source)
            populated_from = "staging"
        conf = os.path.join(work, "mke2fs.conf")
        feats = _merge_features(features)
        with open(conf, "w") as f:
            f.write(_MKE2FS_CONF.format(features=",".join(feats)))
        mkfs = functools.partial(
            _mke2fs, source=source, tar=_tar_tree(tree) if use_tar else None,
            log=os.path.join(work, "mke2fs.log"), conf=conf, label=label, fs_uuid=fs_uuid,
            fs_hash=fs_hash, inodes=n_inodes, reserved=reserved_percent, fs_time=fs_time,
            extra=tuple(extra_mke2fs_args), what=f"ext4 {label or os.path.basename(out_path)}",
            data_bytes=sum(e.size for e in tree if e.kind is Kind.FILE))
        try:
            if size is not None:
                if mkfs(tmp, size, offset=offset) is not None:
                    # Find what it does need, so the message can say so.
                    estimate = estimate_size(tree, inodes=n_inodes,
                                             reserved_percent=reserved_percent)
                    needed = _fit(mkfs, os.path.join(work, "probe.img"),
                                  max(estimate, size + size // 4))
                    raise _too_small(size, needed)
                final = size
            else:
                final = _fit(mkfs, tmp, estimate_size(tree, inodes=n_inodes,
                                                      reserved_percent=reserved_percent))
        except ToolError:
            if source is not None:
                _raise_unreadable(source)
            raise
        # The staging copy is no longer needed: remove it while debugfs works (unlinking
        # thousands of hard links costs as much as making them).
        cleanup = pool.submit(shutil.rmtree, source) if populated_from == "staging" else None
        target = tmp if offset is None else f"{tmp}?offset={offset}"   # debugfs' offset syntax
        inodes_now = _list_inodes(target, tree)
        cmds = os.path.join(work, "debugfs.cmds")
        _write_debugfs_commands(cmds, tree, host, inodes_now, work, fs_time,
                                exact_times=use_tar or version <= (1, 47, 0),
                                mtimes_set=use_tar)
        _debugfs(target, cmds)
        # The superblock counts the bytes each tool wrote, which differs with the work done
        # (placeholders linked anew); zero it in a pass of its own, which writes no more.
        with open(cmds, "w") as f:
            f.write(f"set_current_time @{fs_time}\n")
            f.writelines(_allocate_commands(tree, inodes_now))
            f.write("ssv kbytes_written 0\n")
        _debugfs(target, cmds)
        if cleanup is not None:
            cleanup.result()
    why = choose_e2fsprogs()
    return Ext4Info(size=final, uuid=fs_uuid, hash_seed=fs_hash, inodes=n_inodes,
                    populated_from=populated_from,
                    tools=f"e2fsprogs {'.'.join(map(str, version))}, {why}")


def _work_base(tree: Tree, out_path: str, use_tar: bool) -> str:
    """Where the work directory (and a staging copy, if one is needed) goes.

    Beside the output only when staging there can hard-link the tree's files (whole host
    files on the output's filesystem): then staging costs inodes, not bytes. Otherwise (an
    archive's spool, generated files, the archive path, which stages nothing) in this run's
    scratch directory, beside the spool, so no copy of the tree lands in the output
    directory and a filesystem that shares extents (``copy_file_range``) can reflink it.
    """
    out_dir = os.path.dirname(os.path.abspath(out_path))
    scratch_dir = scratch.current() or tempfile.gettempdir()
    if use_tar:
        return scratch_dir
    try:
        out_dev = os.stat(out_dir).st_dev
    except OSError:
        return out_dir
    for e in tree:
        if e.kind is Kind.FILE and isinstance(e.data, FileBlob) and e.data.offset == 0:
            try:
                return out_dir if os.stat(e.data.path).st_dev == out_dev else scratch_dir
            except OSError:
                continue
    return scratch_dir


def estimate_size(tree: Tree, *, inodes: int | None = None,
                  reserved_percent: float = 0.0) -> int:
    """A size in bytes (MiB-aligned) an ext4 image of ``tree`` fits in, with ~5% slack.

    Counts data and directory blocks, long symlinks, xattr blocks, the inode table, the
    journal mke2fs will make, and per-group metadata; for layout planning before any I/O.
    """
    n_inodes = inodes if inodes is not None else _inodes_needed(tree) + 64
    payload = 0
    dir_bytes: dict[str, int] = {}
    for e in tree:
        if e.kind is Kind.FILE:
            blocks = -(-e.size // BLOCK)
            payload += blocks + blocks // (32768 * 340) + (1 if blocks > 4 * 32768 else 0)
        elif e.kind is Kind.SYMLINK and e.size >= 60:
            payload += 1
        if e.xattrs and sum(len(n) + len(v) + 20 for n, v in e.xattrs) > 90:
            payload += 1
        if e.path:
            name = len(os.fsencode(e.name))
            dir_bytes[e.parent] = dir_bytes.get(e.parent, 24) + 8 + (name + 3) // 4 * 4
    for nbytes in dir_bytes.values():
        blocks = -(-nbytes // (BLOCK - 12))
        payload += blocks if blocks == 1 else blocks * 3 // 2 + 1   # htree leaves half full
    payload += len([e for e in tree if e.kind is Kind.DIR]) - len(dir_bytes)  # empty dirs
    payload += 4 + 2  # lost+found, root
    payload += -(-n_inodes * INODE_SIZE // BLOCK)
    total = payload
    for _ in range(20):
        groups = -(-total // 32768)
        overhead = groups * 2 + _sb_copies(groups) * (2 + _reserved_gdt(total)) + 16
        journal = _journal_blocks(total)
        new = int((payload + overhead + journal) * (1 + reserved_percent / 100) * 1.05) + 256
        if new <= total:
            break
        total = new
    return -(-total * BLOCK // MIB) * MIB


def stage_tree(tree: Tree, staging: str) -> None:
    """Mirror the names and bytes of ``tree`` under ``staging`` (which must not exist).

    Metadata is not copied: the debugfs pass sets it. Regular files become hard links to the
    blob's host file when it is a whole file on the same filesystem, not used by another entry
    (mke2fs would merge two links to one host inode into one image inode) and without xattrs
    too big for the inode (mke2fs would give them a block of their own); otherwise they are
    copied (``copy_file_range``, which reflinks where the filesystem can). Device nodes are
    made when the builder may (root); otherwise a character device becomes a 0:0 "whiteout"
    node (which Linux lets anyone make) and a block device a FIFO: a placeholder of the same
    name that the debugfs pass turns into the real node.
    """
    os.mkdir(staging, 0o755)
    linked: set[tuple[int, int]] = set()
    hardlinks: list[Entry] = []
    files = [e for e in tree if e.kind is Kind.FILE]
    with progress.step("staging for mke2fs", sum(e.size for e in files), len(files)) as step:
        _stage_entries(tree, staging, linked, hardlinks, step)
    for e in hardlinks:   # after all primaries exist, wherever they sort
        os.link(os.path.join(staging, e.target or ""), os.path.join(staging, e.path))


def _stage_entries(tree: Tree, staging: str, linked: set[tuple[int, int]],
                   hardlinks: list[Entry], step: progress.Step) -> None:
    for e in tree:
        dest = os.path.join(staging, e.path) if e.path else staging
        if e.kind is Kind.DIR:
            if e.path:
                os.mkdir(dest, 0o755)
        elif e.kind is Kind.FILE:
            _stage_file(e, dest, linked)
            step.advance(e.size, 1)
        elif e.kind is Kind.SYMLINK:
            os.symlink(e.target or "", dest)
        elif e.kind is Kind.FIFO:
            os.mknod(dest, stat.S_IFIFO | 0o644)
        elif e.kind is Kind.SOCKET:
            os.mknod(dest, stat.S_IFSOCK | 0o644)
        elif e.kind in (Kind.CHAR, Kind.BLOCK):
            _stage_device(e, dest)
        elif e.kind is Kind.HARDLINK:
            hardlinks.append(e)


def _active_dir() -> str | None:
    """The unpacked e2fsprogs in use, or None for the host's."""
    if E2FSPROGS_DIR == "host":
        return None
    chosen = _chosen.get("choice")
    return E2FSPROGS_DIR or (chosen.root if chosen else None)


def _check_backports(root: str) -> None:
    version = _version_of(root)
    if version < TAR_INPUT:
        raise ToolError(f"{BACKPORTS_RELEASE} has e2fsprogs {'.'.join(map(str, version))}, "
                        f"expected {'.'.join(map(str, TAR_INPUT))} or newer")


def choose_e2fsprogs() -> str:
    """Decide, once per process, which e2fsprogs writes (see the module docstring); why it.

    Called by the writer only, since it may fetch Debian packages (once per cache)."""
    if E2FSPROGS_DIR:
        return f"IMGKIT_E2FSPROGS={E2FSPROGS_DIR}"
    if "choice" not in _chosen:
        from imgkit import debfetch
        _chosen["choice"] = debfetch.host_unless_older(
            lambda: _version_of(None) >= TAR_INPUT, BACKPORTS_CACHE, BACKPORTS_RELEASE,
            BACKPORTS_PACKAGES, check=_check_backports)
    return _chosen["choice"].why


def e2fsprogs_version() -> tuple[int, ...]:
    """The e2fsprogs version in use, from ``mke2fs -V`` (asked once per process and
    e2fsprogs)."""
    return _version_of(_active_dir())


@functools.cache
def _version_of(directory: str | None) -> tuple[int, ...]:
    prog, env = _command_in(directory, "mke2fs")
    proc = tools.run([prog, "-V"], env=env, check=False)
    text = (proc.stderr or b"").decode() + (proc.stdout or b"").decode()
    m = re.search(r"mke2fs (\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise ToolError(f"cannot tell the e2fsprogs version from {prog} -V: {text.strip()!r}")
    return tuple(int(x or 0) for x in m.groups())


def e2fsprogs_command(name: str) -> tuple[str, dict[str, str]]:
    """The program to run for e2fsprogs tool ``name`` and the environment it needs.

    ``name`` itself (looked up on ``PATH``) and no environment, unless another e2fsprogs is
    in use (:data:`E2FSPROGS_DIR`, or the one the writer fetched): then its binary and
    ``LD_LIBRARY_PATH`` pointing at its libraries.
    """
    return _command_in(_active_dir(), name)


def _command_in(directory: str | None, name: str) -> tuple[str, dict[str, str]]:
    if not directory:
        return name, {}
    root = os.path.abspath(directory)
    for sub in ("sbin", "usr/sbin", "bin", "usr/bin"):
        prog = os.path.join(root, sub, name)
        if os.access(prog, os.X_OK):
            break
    else:
        raise ToolError(f"no {name} in the e2fsprogs at {root} (IMGKIT_E2FSPROGS): "
                        f"expected sbin/{name} or usr/sbin/{name}")
    libs: list[str] = []
    for pattern in ("lib", "lib/*", "usr/lib", "usr/lib/*"):
        for d in sorted(glob.glob(os.path.join(root, pattern))):
            if os.path.isdir(d) and glob.glob(os.path.join(d, "libext2fs.so*")) and d not in libs:
                libs.append(d)
    return prog, {"LD_LIBRARY_PATH": ":".join(libs)} if libs else {}


# -- staging ------------------------------------------------------------------------------

def _stage_file(e: Entry, dest: str, linked: set[tuple[int, int]]) -> None:
    blob = e.data
    if blob is None or blob.size == 0:
        open(dest, "wb").close()
        return
    rng = blob.host_range()
    if rng is not None and rng[1] == 0:
        try:
            st = os.stat(rng[0])
        except OSError:
            st = None
        if (st is not None and stat.S_ISREG(st.st_mode) and st.st_size == blob.size
                and (st.st_dev, st.st_ino) not in linked and _xattrs_fit(rng[0])):
            try:
                os.link(rng[0], dest)
                linked.add((st.st_dev, st.st_ino))
                return
            except OSError as exc:   # other filesystem, protected_hardlinks, no link support
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK,
                                     errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
    with open(dest, "wb") as out:
        try:
            src = open(rng[0], "rb") if rng is not None else blob.open()
        except OSError as exc:
            raise InputError(f"ext4: cannot read {e.path!r} from "
                             f"{rng[0] if rng else 'its source'!r}: {exc.strerror}") from exc
        with src:
            if rng is not None:
                _copy_range(src.fileno(), rng[1], out.fileno(), blob.size)
            else:
                shutil.copyfileobj(src, out, 1 << 20)


def _stage_device(e: Entry, dest: str) -> None:
    """The device node itself if we may make it, else a placeholder (see :func:`stage_tree`)."""
    fmt = stat.S_IFCHR if e.kind is Kind.CHAR else stat.S_IFBLK
    try:
        os.mknod(dest, fmt | 0o600, os.makedev(*e.rdev))
        return
    except (OSError, ValueError, OverflowError):
        pass
    if e.kind is Kind.CHAR:
        try:
            os.mknod(dest, stat.S_IFCHR | 0o600, 0)
            return
        except OSError:
            pass
    os.mknod(dest, stat.S_IFIFO | 0o600)


#: Room for xattrs inside a 256-byte inode, with a margin; more goes to a block of its own.
_XATTR_IN_INODE = 80


def _xattrs_fit(path: str, names: Sequence[str] | None = None) -> bool:
    """Whether the xattrs of host ``path`` would stay inside the inode when mke2fs copies them.

    A block of their own would be allocated in the middle of mke2fs' pass, moving every later
    block; in-inode ones are removed and rewritten by the debugfs pass without a trace.
    """
    try:
        if names is None:
            names = os.listxattr(path, follow_symlinks=False)
        if not names:
            return True
        used = 0
        for name in names:
            value = os.getxattr(path, name, follow_symlinks=False)
            used += 16 + -(-len(name.encode()) // 4) * 4 + -(-len(value) // 4) * 4
        return used <= _XATTR_IN_INODE
    except OSError:
        return False


def _copy_range(src: int, offset: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes in the kernel; ``copy_file_range`` may share extents (reflink)."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, offset + done)
            if n == 0:
                break
            done += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while done < size:
        n = os.sendfile(dst, src, offset + done, size - done)
        if n == 0:
            raise InputError(f"source file shrank while copying: expected {size} bytes, "
                             f"got {done}")
        done += n


# -- the source directory ----------------------------------------------------------------

def _direct_source(tree: Tree, version: tuple[int, ...]) -> tuple[str, dict[str, HostEntry]] | None:
    """The host directory the tree was read from, if ``mke2fs -d`` can take it as it is
    (:func:`imgkit.hostdir.match`), with xattrs that fit in the inode.

    Then ``mke2fs`` allocates every inode and block just as it would from a staging copy, and
    the debugfs pass fixes metadata the same way. Only from e2fsprogs 1.47, which reads
    directories sorted.
    """
    if version < (1, 47):
        return None
    return hostdir.match(tree, xattrs_ok=lambda path, e, h: not h.xattrs
                         or _xattrs_fit(path, h.xattrs))


def _raise_unreadable(source: str) -> None:
    """After mke2fs failed: if it was for want of permission, say which file (InputError)."""
    for dirpath, _dirnames, filenames in os.walk(source):
        if not os.access(dirpath, os.R_OK | os.X_OK):
            raise InputError(f"ext4: cannot read directory {dirpath!r}: permission denied",
                             hint="make the source readable by the user building the image")
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path) and not os.access(path,
                                                                                    os.R_OK):
                raise InputError(f"ext4: cannot read {path!r}: permission denied",
                                 hint="make the source readable by the user building the "
                                      "image")


# -- mke2fs -------------------------------------------------------------------------------

def _mke2fs(image: str, size: int, *, source: str | None, tar: Tree | None, log: str,
            conf: str, label: str, fs_uuid: str, fs_hash: str, inodes: int, reserved: float,
            fs_time: int, extra: tuple[str, ...], offset: int | None = None,
            what: str = "ext4", data_bytes: int = 0) -> str | None:
    """Make the filesystem from the directory ``source``, or from ``tar`` streamed as an
    archive; ``None`` on success, mke2fs' complaint if the tree did not fit.

    With ``offset``, the filesystem goes into the existing file ``image`` at that byte offset
    (mke2fs' ``-E offset=``), whose range the caller has left empty.
    """
    if offset is None:
        with open(image, "wb") as f:   # a fresh sparse file: no bytes of an earlier try remain
            f.truncate(size)
    prog, env = e2fsprogs_command("mke2fs")
    argv = [prog, "-q", "-F", "-t", "ext4", "-d", "-" if tar is not None else source,
            "-L", label, "-U", fs_uuid,
            "-E", f"hash_seed={fs_hash},root_owner=0:0,nodiscard,lazy_itable_init=0,"
                  "lazy_journal_init=0" + (f",offset={offset}" if offset is not None else ""),
            "-b", str(BLOCK), "-I", str(INODE_SIZE), "-N", str(inodes), "-m", f"{reserved:g}",
            *extra, image, str(size // BLOCK)]
    # Both clocks pinned: from 1.47.1 mke2fs reads SOURCE_DATE_EPOCH too, which must not
    # come from the caller's environment.
    env.update({"MKE2FS_CONFIG": conf, "E2FSPROGS_FAKE_TIME": str(fs_time),
                "SOURCE_DATE_EPOCH": str(fs_time)})
    if tar is None:
        with progress.watching(image, what, data_bytes):
            proc = tools.run(argv, env=env, check=False)
        returncode = proc.returncode
        text = (proc.stderr or b"").decode(errors="replace") + (proc.stdout or b"").decode(
            errors="replace")
    else:
        env["LC_ALL"] = "C.UTF-8"   # libarchive converts UTF-8 names to the locale's charset
        returncode, text = _mke2fs_from_tar(argv, env, tar, log, what)
    if returncode == 0:
        return None
    if _NO_SPACE.search(text):
        return text
    tail = "\n".join(text.strip().splitlines()[-15:])
    hint = None
    if "libarchive" in text:
        hint = "mke2fs loads libarchive at run time to read archives: apt-get install libarchive13"
    raise ToolError(f"mke2fs failed with exit status {returncode} making a "
                    f"{size} byte ext4 image\n{tail}", hint=hint)


class _Pipe:
    """mke2fs' standard input as the tar writer's file: once mke2fs has exited (it ran out
    of room, or failed), the rest of the archive is dropped and its exit status tells why."""

    def __init__(self, f, step: progress.Step | None = None,
                 ends: Sequence[int] = ()) -> None:
        self._f = f
        self.broken = False
        self._step = step
        self._ends = ends     # where each file's data ends in the stream, about
        self._written = 0

    def write(self, data) -> int:
        if not self.broken:
            try:
                self._f.write(data)
            except BrokenPipeError:
                self.broken = True
        if self._step is not None:
            self._written += len(data)
            self._step.set(min(self._written, self._ends[-1] if self._ends else 0),
                           bisect.bisect_right(self._ends, self._written))
        return len(data)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._f.flush()
            except BrokenPipeError:
                self.broken = True


def _mke2fs_from_tar(argv: list[str], env: dict[str, str], tar: Tree,
                     log: str, what: str) -> tuple[int, str]:
    """Run mke2fs reading ``tar`` from its standard input, written as the archive goes."""
    from imgkit.formats.tar import run_reading_tar

    # About where each file's data ends in the archive (a header or three per entry), so
    # the progress line can count files as the bytes go.
    ends, at = [], 0
    for e in tar:
        at += 3 * 512
        if e.kind is Kind.FILE:
            at += -(-e.size // 512) * 512
            ends.append(at)
    with progress.step(what, at, len(ends)) as step:
        return run_reading_tar(argv, tar, log, tool="ext4", env=dict(env),
                               sink=lambda stdin: _Pipe(stdin, step, ends))


# -- the archive path ---------------------------------------------------------------------

def _tar_can_carry(tree: Tree) -> bool:
    """Whether ``mke2fs -d -`` would get every name and link of ``tree`` exactly, from an
    archive: names must be UTF-8 (pax stores them so, and mke2fs' libarchive needs it), and a
    symlink target whose length is a multiple of 1024 overflows the buffer mke2fs copies it
    into. Also needs libarchive for mke2fs to load."""
    for e in tree:
        try:
            e.path.encode()
            if e.kind is Kind.SYMLINK and len((e.target or "").encode()) % 1024 == 0:
                return False
        except UnicodeEncodeError:
            return False
    return _have_libarchive()


@functools.cache
def _have_libarchive() -> bool:
    """Whether the library mke2fs loads (by this name) for ``-d ARCHIVE`` is there."""
    try:
        ctypes.CDLL("libarchive.so.13")
        return True
    except OSError:
        return False


def _tar_tree(tree: Tree) -> Tree:
    """The tree as the archive for mke2fs carries it: without xattrs (mke2fs would copy only
    two names; the debugfs pass sets them all, in the tree's order) and with a FIFO in place
    of each socket (which tar cannot hold; the debugfs pass makes it a socket again)."""
    def strip(e: Entry) -> Entry:
        if e.kind is Kind.SOCKET:
            return e.replace(kind=Kind.FIFO, xattrs=())
        return e.replace(xattrs=()) if e.xattrs else e
    return tree.map(strip)


def _fit(mkfs, image: str, start: int) -> int:
    """Run ``mkfs`` at ``start`` bytes, growing by a quarter until the tree fits."""
    size = start
    for _ in range(12):
        if mkfs(image, size) is None:
            return size
        size = -(-(size + max(size // 4, 4 * MIB)) // MIB) * MIB
    raise LayoutError(f"ext4: the tree did not fit even in {size} bytes",
                      hint="this looks like a bug in the size estimate; give size= explicitly")


def _too_small(size: int, needed: int) -> LayoutError:
    return LayoutError(
        f"ext4: the tree does not fit in {size} bytes ({size / MIB:.1f} MiB); "
        f"it needs about {needed} bytes ({needed / MIB:.1f} MiB)",
        hint=f"make the filesystem at least {-(-needed // MIB)} MiB, or use size=auto")


# -- debugfs ------------------------------------------------------------------------------

_q = debugfs.quote


def _abs(path: str) -> str:
    return "/" + path


@dataclass(frozen=True, slots=True)
class _Inode:
    """An inode as ``debugfs ls -p`` shows it after mke2fs: number, full mode and owner."""

    ino: int
    mode: int
    uid: int
    gid: int


def _list_inodes(image: str, tree: Tree) -> dict[str, _Inode]:
    """Every name of the image (and lost+found) with its inode, from one ``ls -p`` pass.

    Knowing the numbers lets the next pass address inodes as ``<ino>``: a path costs debugfs a
    linear scan of every directory on the way, which made metadata 10x slower than this pass.
    """
    dirs = [e.path for e in tree if e.kind is Kind.DIR]
    stdout = debugfs.run(image, [f"ls -p {_q(_abs(d))}" for d in dirs],
                         doing="listing the new image")
    out: dict[str, _Inode] = {}
    current = -1
    for line in stdout.split(b"\n"):
        if line.startswith(b"debugfs:"):
            current += 1
            continue
        if not line.startswith(b"/"):
            continue
        # /ino/mode/uid/gid/name/size/ -- a name never holds a slash, and line breaks in
        # names were refused up front.
        _, ino, mode, uid, gid, rest = line.split(b"/", 5)
        name = os.fsdecode(rest.rsplit(b"/", 2)[0])
        d = dirs[current]
        if name == "..":
            continue
        path = d if name == "." else f"{d}/{name}" if d else name
        if name == "." and d:
            continue   # the parent's listing already has it
        out[path] = _Inode(int(ino), int(mode, 8), int(uid), int(gid))
    missing = [e.path for e in tree if e.path not in out]
    if missing:
        raise ToolError(f"ext4: mke2fs left out {len(missing)} entries of the tree, "
                        f"e.g. {missing[0]!r}")
    return out


def _write_debugfs_commands(cmd_path: str, tree: Tree, host: dict[str, HostEntry],
                            inodes: dict[str, _Inode], work: str, fs_time: int, *,
                            exact_times: bool, mtimes_set: bool = False) -> None:
    """Commands that make each inode exactly what the tree says, by inode number.

    ``host`` is what mke2fs copied (owners, atime and mtime to the second, xattrs),
    ``inodes`` what ``ls -p`` saw; only what differs is rewritten, except ctime and crtime,
    which always come from the host or the clock. ``exact_times``: this mke2fs stores whole
    seconds only, so the ``*_extra`` fields (nanoseconds, epoch bits) are already 0.
    ``mtimes_set``: mke2fs took every mtime from the tree (an archive), so only those of
    directories, which it may touch while filling them, are written again.
    """
    # Written as they are made: a tree of 100k files needs about a million commands, which
    # as one list of strings, encoded and joined, took 300 MB.
    with open(cmd_path, "wb") as f:
        def emit(line: str) -> None:
            f.write(os.fsencode(line) + b"\n")
        _metadata_commands(emit, tree, host, inodes, work, fs_time,
                           exact_times=exact_times, mtimes_set=mtimes_set)


def _metadata_commands(emit: Callable[[str], None], tree: Tree, host: dict[str, HostEntry],
                       inodes: dict[str, _Inode], work: str, fs_time: int, *,
                       exact_times: bool, mtimes_set: bool) -> None:
    emit(f"set_current_time @{fs_time}")
    retime: set[str] = set()   # directories whose entries were rewritten
    # 1. device numbers, and the type of placeholders (see stage_tree and _tar_tree): the
    #    directory entry carries the type too, so the name is linked anew once the inode has
    #    its mode.
    for e in tree:
        if e.kind not in (Kind.CHAR, Kind.BLOCK, Kind.SOCKET):
            continue
        node = inodes[e.path]
        ref = f"<{node.ino}>"
        if e.kind is not Kind.SOCKET:
            major, minor = e.rdev
            if not (0 <= major <= 0xFFF and 0 <= minor <= 0xFFFFF):
                raise InputError(f"device {e.path!r} has number {major}:{minor}; Linux "
                                 f"allows majors up to 4095 and minors up to 1048575")
            if major < 256 and minor < 256:   # the encodings mke2fs and the kernel use
                words = (major * 256 + minor, 0)
            else:
                words = (0, (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12))
            emit(f"sif {ref} block[0] {words[0]}")
            emit(f"sif {ref} block[1] {words[1]}")
        if stat.S_IFMT(node.mode) != e.kind.type_bits:
            emit(f"sif {ref} mode 0{e.st_mode:o}")
            emit(f"cd <{inodes[e.parent].ino}>")
            emit(f"unlink {_q(e.name)}")
            emit(f"link {ref} {_q(e.name)}")
            retime.add(e.parent)
    # 2. xattrs: drop all mke2fs copied from the host (SELinux labels, inherited ACLs, or
    #    the same ones in another order), then set the tree's in its order. Values go
    #    through files so any bytes survive.
    n_values = 0
    for e in tree:
        if e.kind is Kind.HARDLINK:
            continue
        h = host.get(e.path)
        if not e.xattrs and not (h and h.xattrs):
            continue
        ref = f"<{inodes[e.path].ino}>"
        for name in sorted(h.xattrs if h else ()):
            emit(f"ea_rm {ref} {_q(name)}")
        for name, value in e.xattrs:
            vfile = os.path.join(work, f"xattr-{n_values}")
            n_values += 1
            with open(vfile, "wb") as f:
                f.write(value)
            emit(f"ea_set -f {_q(vfile)} {ref} {_q(name)}")
    # 3. owner, full mode and the four times, last so nothing above bumps them.
    entries: Iterable[Entry] = [e for e in tree if e.kind is not Kind.HARDLINK]
    if "lost+found" not in tree:
        entries = [*entries, Entry("lost+found", Kind.DIR, mode=0o700, mtime=fs_time)]
    for e in entries:
        node = inodes[e.path]
        ref = f"<{node.ino}>"
        if node.uid != e.uid:
            emit(f"sif {ref} uid {e.uid}")
        if node.gid != e.gid:
            emit(f"sif {ref} gid {e.gid}")
        if node.mode != e.st_mode:
            emit(f"sif {ref} mode 0{e.st_mode:o}")
        h = host.get(e.path) if e.path and e.path != "lost+found" else None
        exact = exact_times and 0 <= e.mtime < 1 << 31
        want_ns = e.mtime * 1_000_000_000
        for field in ("atime", "mtime", "ctime", "crtime"):
            if (field in ("atime", "mtime") and h is not None and e.path not in retime
                    and getattr(h.st, f"st_{field}_ns") == want_ns and exact):
                continue   # mke2fs copied it from the host already
            if (field == "mtime" and mtimes_set and exact and e.kind is not Kind.DIR
                    and e.path not in retime):
                continue   # mke2fs took it from the archive
            if not exact:
                emit(f"sif {ref} {field}_extra 0")   # before the time: epoch bits
            emit(f"sif {ref} {field} @{e.mtime}")


def _allocate_commands(tree: Tree, inodes: dict[str, _Inode]) -> list[str]:
    """``fallocate`` for each file whose every block must be allocated (mke2fs stores
    all-zero blocks as holes): the holes become unwritten extents, which read as zeros and
    which ``swapon`` takes."""
    out = []
    for e in tree:
        if e.kind is Kind.FILE and e.keep_zeros and e.size:
            out.append(f"fallocate <{inodes[e.path].ino}> 0 {(e.size - 1) // BLOCK}\n")
    return out


def _debugfs(image: str, cmds: str) -> None:
    """Run the command file that sets the tree's metadata."""
    debugfs.run(image, cmds, writable=True, output=False, doing="setting metadata in")


# -- sizing helpers -----------------------------------------------------------------------

def _inodes_needed(tree: Tree) -> int:
    """Inodes the tree uses (hard links share one) plus the 11 reserved and lost+found."""
    return sum(1 for e in tree if e.kind is not Kind.HARDLINK) + 12


def _journal_blocks(blocks: int) -> int:
    """The journal size mke2fs picks (ext2fs_default_journal_size)."""
    if blocks < 2048:
        return 0
    for limit, journal in ((32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192),
                           (4096 * 1024, 16384), (8192 * 1024, 32768),
                           (16384 * 1024, 65536), (32768 * 1024, 131072)):
        if blocks < limit:
            return journal
    return 262144


def _sb_copies(groups: int) -> int:
    """Groups holding a superblock copy with sparse_super: 0, 1 and powers of 3, 5, 7."""
    copies = {0, 1}
    for base in (3, 5, 7):
        g = base
        while g < groups:
            copies.add(g)
            g *= base
    return len([g for g in copies if g < groups]) or 1


def _reserved_gdt(blocks: int) -> int:
    """Group descriptor blocks reserved for online growth to 1024x (resize_inode)."""
    groups = -(-blocks // 32768)
    max_groups = -(-min(blocks * 1024, 2 ** 32) // 32768)
    per_block = BLOCK // 64
    return min(1024, -(-max_groups // per_block)) + -(-groups // per_block)


def _merge_features(extra: Sequence[str] | None) -> list[str]:
    feats = list(DEFAULT_FEATURES)
    for f in extra or ():
        name = f.lstrip("^")
        if name in feats:
            feats.remove(name)
        if not f.startswith("^"):
            feats.append(name)
        elif name not in DEFAULT_FEATURES:
            feats.append(f)
    return feats


def _parse_uuid(text: str, what: str) -> str:
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise InputError(f"ext4 {what} must be a UUID like "
                         f"12345678-1234-1234-1234-123456789abc, got {text!r}") from None


def _derive_uuid(seed: str, purpose: str) -> str:
    digest = hashlib.sha256(f"imgkit ext4 {purpose}\0{seed}".encode()).digest()
    return str(uuidlib.UUID(bytes=digest[:16], version=4))


def _tree_seed(tree: Tree, label: str) -> str:
    """A seed from the tree's metadata, so an image without a seed still has no random bits."""
    h = hashlib.sha256(label.encode())
    for e in tree:
        h.update(os.fsencode(f"{e.path}\0{e.kind.value}\0{e.mode}\0{e.uid}\0{e.gid}\0"
                             f"{e.mtime}\0{e.size}\0{e.target}\0"))
    return h.hexdigest()
