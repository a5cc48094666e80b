"""The input trees the benchmark archives: built once, cached, described.

A benchmark of archive and filesystem writers is only meaningful on a tree that looks like a
real root filesystem: thousands of small files, deep directories, symlinks, a few big
binaries. ``big`` is a Debian minbase (``debootstrap``, needs root) with a few dozen
many-filed packages unpacked on top; without root or debootstrap the same packages plus the
essential ones are unpacked with ``apt-get download`` + ``dpkg -x``, which works
unprivileged. ``quick`` is a copy-free view of the host's Python standard library.

Trees are cached under ``$IMGKIT_CACHE/bench`` (or ``~/.cache/imgkit/bench``) and marked
complete by a stamp file, so an interrupted build is redone rather than half-used.
"""
from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

#: Big, many-filed packages unpacked over the minbase: Python and Perl libraries, locales,
#: man pages, time zones, vim's runtime, git, systemd. About 470 MB and 16k files in all.
EXTRA_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libpython3.11",
    "python3.11", "python3-pkg-resources", "python3-setuptools", "python3-pip",
    "perl-modules-5.36", "libperl5.36", "perl", "locales", "tzdata", "manpages", "man-db",
    "git", "git-man", "vim-runtime", "vim", "openssh-server", "openssh-client", "systemd",
    "libsystemd-shared", "libicu72", "libstdc++6", "libssl3", "openssl", "ca-certificates",
    "libxml2", "libsqlite3-0", "busybox-static", "iproute2", "less", "curl", "libcurl4",
)

#: Without debootstrap: the essential packages a minbase would have brought.
BASE_PACKAGES = (
    "base-files", "base-passwd", "bash", "coreutils", "dash", "debianutils", "diffutils",
    "findutils", "grep", "gzip", "hostname", "libc6", "libc-bin", "libgcc-s1", "libacl1",
    "libattr1", "libselinux1", "libpcre2-8-0", "libtinfo6", "libzstd1", "liblzma5", "libbz2-1.0",
    "zlib1g", "sed", "tar", "util-linux", "mount", "login", "passwd", "apt", "dpkg",
    "ncurses-base", "ncurses-bin", "sensible-utils", "libcrypt1", "libssl3", "libgmp10",
)

SUITE = "bookworm"


@dataclass
class TreeStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    other: int = 0
    bytes: int = 0

    def line(self) -> str:
        return (f"{self.files:,} files, {self.dirs:,} dirs, {self.symlinks:,} symlinks, "
                f"{self.other:,} other, {self.bytes / 1e6:,.0f} MB")

    def as_dict(self) -> dict:
        return asdict(self)


def cache_dir() -> str:
    """``$IMGKIT_CACHE/bench``, else ``~/.cache/imgkit/bench``."""
    base = os.environ.get("IMGKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "imgkit")
    path = os.path.join(base, "bench")
    try:
        os.makedirs(path, exist_ok=True)
        writable = os.access(path, os.W_OK)
    except PermissionError:
        writable = False
    if not writable:  # another user's cache (e.g. root's): keep our own beside it
        path = os.path.join(base, f"bench-{os.getuid()}")
        os.makedirs(path, exist_ok=True)
    return path


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def tree_stats(root: str) -> TreeStats:
    """Count what a tree holds (regular file bytes, not disk usage)."""
    s = TreeStats()
    for dirpath, dirnames, filenames in os.walk(root):
        s.dirs += 1
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISREG(st.st_mode):
                s.files += 1
                s.bytes += st.st_size
            elif stat.S_ISLNK(st.st_mode):
                s.symlinks += 1
            else:
                s.other += 1
        # os.walk lists symlinks to directories among dirnames without descending: counted
        # above as symlinks by lstat, not as directories, since we skip only real dirs.
    return s


def warm(root: str) -> None:
    """Read every file once so that every tool sees a warm page cache."""
    buf = bytearray(1 << 20)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass
            except OSError:
                continue


def _run(argv: list[str], cwd: str | None = None) -> None:
    r = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tail = "\n".join(r.stdout.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(argv[:3])}... failed with status {r.returncode}:\n{tail}")


def _unpack_packages(packages: tuple[str, ...], dest: str, work: str) -> None:
    """``apt-get download`` the packages (unprivileged) and ``dpkg -x`` each into ``dest``."""
    debs = os.path.join(work, "debs")
    os.makedirs(debs, exist_ok=True)
    # One call for all: apt resolves each name to its candidate version.
    _run(["apt-get", "download", "-q", *packages], cwd=debs)
    for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
        _run(["dpkg-deb", "-x", deb, dest])


def _build_big(dest: str, work: str) -> str:
    """Build the big tree at ``dest``; returns how it was made."""
    how = "apt-get download + dpkg -x"
    if os.geteuid() == 0 and shutil.which("debootstrap", path=os.environ.get("PATH", "")
                                          + ":/usr/sbin:/sbin"):
        log(f"debootstrap --variant=minbase {SUITE} (about 30 s)...")
        t = time.monotonic()
        try:
            _run(["debootstrap", "--variant=minbase", SUITE, dest])
            if _mounts_under(dest):
                raise RuntimeError(f"debootstrap left mounts below {dest}")
            how = "debootstrap minbase + dpkg -x"
            log(f"debootstrap done in {time.monotonic() - t:.0f} s")
        except RuntimeError as exc:
            if _mounts_under(dest):
                raise RuntimeError(f"debootstrap failed and left mounts below {dest}: "
                                   f"unmount them, then run again ({exc})") from None
            log(f"debootstrap failed, falling back to unpacking packages: {exc}")
            shutil.rmtree(dest, ignore_errors=True)
    else:
        log("not root or no debootstrap: unpacking packages with apt-get download + dpkg -x")
    os.makedirs(dest, exist_ok=True)
    pkgs = EXTRA_PACKAGES if how.startswith("debootstrap") else BASE_PACKAGES + EXTRA_PACKAGES
    log(f"unpacking {len(pkgs)} packages...")
    _unpack_packages(tuple(dict.fromkeys(pkgs)), dest, work)
    # debootstrap leaves apt's downloaded .debs in the tree: not part of a root filesystem.
    for deb in glob.glob(os.path.join(dest, "var/cache/apt/archives/*.deb")):
        os.unlink(deb)
    # A tree built as root must stay readable when the benchmark runs unprivileged
    # (--tree): make every file and directory readable by others (a benchmark tree only).
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o005 != 0o005:
                os.chmod(p, stat.S_IMODE(st.st_mode) | 0o005)
            elif stat.S_ISREG(st.st_mode) and not st.st_mode & 0o004:
                os.chmod(p, stat.S_IMODE(st.st_mode) | 0o004)
    return how


def _mounts_under(path: str) -> list[str]:
    """Mount points below ``path`` (debootstrap mounts /proc and /sys in its target while it
    runs; an interrupted run can leave them behind, and they must never be deleted into)."""
    real = os.path.realpath(path) + "/"
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1].replace("\\040", " ") for line in f]
    except OSError:
        return []
    return [p for p in points if (p + "/").startswith(real)]


def big_tree() -> str:
    """The cached big tree, built on first use."""
    base = cache_dir()
    dest = os.path.join(base, "tree-big")
    stamp = dest + ".complete"
    if os.path.exists(stamp):
        return dest
    left = _mounts_under(dest)
    if left:
        raise RuntimeError(f"{dest} has file systems mounted below it ({', '.join(left)}), left "
                           "by an interrupted debootstrap: unmount them, then run again")
    shutil.rmtree(dest, ignore_errors=True)
    work = os.path.join(base, "tree-big.work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t = time.monotonic()
    how = _build_big(dest, work)
    shutil.rmtree(work, ignore_errors=True)
    with open(stamp, "w") as f:
        f.write(how + "\n")
    log(f"built {dest} ({how}) in {time.monotonic() - t:.0f} s")
    return dest


def quick_tree() -> str:
    """A small tree: the host's Python standard library (no copy: used in place)."""
    candidates = sorted(glob.glob("/usr/lib/python3.[0-9]*"))
    for c in candidates:
        if os.path.isdir(os.path.join(c, "json")):
            return c
    return os.path.dirname(os.__file__)


def regular_subset(root: str, dest: str, *, max_files: int, max_bytes: int,
                   prefer: tuple[str, ...] = ()) -> str:
    """Hard-link (else copy) up to ``max_files``/``max_bytes`` of regular files into ``dest``.

    For formats that hold only files and directories (FAT): no symlinks, devices or
    special files, names that differ only in case dropped (FAT is case-insensitive).
    Cached: rebuilt only when missing.
    """
    stamp = dest + ".complete"
    if os.path.exists(stamp):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    files = nbytes = 0
    starts = [os.path.join(root, p) for p in prefer if os.path.isdir(os.path.join(root, p))]
    starts.append(root)
    seen_lower: set[str] = set()
    done = False
    for start in starts:
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            for name in sorted(filenames):
                src = os.path.join(dirpath, name)
                rel = os.path.relpath(src, root)
                st = os.lstat(src)
                if (not stat.S_ISREG(st.st_mode) or rel.lower() in seen_lower
                        or any(c in rel for c in '\\:*?"<>|')):
                    continue
                if nbytes + st.st_size > max_bytes:
                    continue
                seen_lower.add(rel.lower())
                out = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                try:
                    os.link(src, out)
                except OSError:
                    shutil.copy2(src, out)
                files += 1
                nbytes += st.st_size
                if files >= max_files:
                    done = True
                    break
            if done:
                break
        if done:
            break
    open(stamp, "w").close()
    return dest


#: The "linear at scale" trees: (name, files, files per directory). ``flat`` puts every file
#: in one directory, with long names that share their first six characters (what makes
#: mtools' short-name search and pycdlib's directory code quadratic).
SCALE_TREES = (("1k", 1_000, 100), ("10k", 10_000, 100), ("100k", 100_000, 100),
               ("flat-20k", 20_000, 0))
#: ``--quick``: the same shapes, smaller, so the section takes seconds.
SCALE_TREES_QUICK = (("1k", 1_000, 100), ("10k", 10_000, 100), ("flat-5k", 5_000, 0))


def scale_tree(name: str, files: int, per_dir: int) -> str:
    """A synthetic tree of ``files`` small files (0-2 KiB, deterministic contents), ``per_dir``
    to a directory (0: all in one directory ``flat``). Cached under the bench cache.

    The one-directory tree's names are long and share their first six characters (the case
    mtools handles worst), yet short enough (25 characters: two long-name slots and the short
    one) for 20,000 of them to fit the 65,536 entries a FAT directory may have."""
    dest = os.path.join(cache_dir(), f"scale-{name}" + ("" if per_dir else "-3slot"))
    stamp = dest + ".complete"
    if os.path.exists(stamp):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    log(f"making the {name} scale tree ({files:,} files)...")
    for i in range(files):
        if per_dir:
            d = os.path.join(dest, f"d{i // (per_dir * 100):03d}", f"s{(i // per_dir) % 100:02d}")
            fname = f"file{i:06d}.dat"
        else:
            d = os.path.join(dest, "flat")
            fname = f"shared_prefix_{i:06d}.data"
        if i % (per_dir or files) == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, fname), "wb") as f:
            f.write(b"%07d\n" % i * ((i * 37) % 256))
    open(stamp, "w").close()
    return dest
