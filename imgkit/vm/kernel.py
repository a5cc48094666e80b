"""Getting a kernel to boot: Debian's packaged one, a given file, the host's, or a tree's own.

Debian's ``linux-image-*`` package is fetched with ``apt-get download`` and unpacked with
``dpkg -x``: neither needs root or installs anything. Results live in a cache directory
(``$IMGKIT_CACHE``, else ``$XDG_CACHE_HOME/imgkit``, else ``~/.cache/imgkit``, else
``/tmp/imgkit-cache-UID``), filled under a lock and published by an atomic rename, so
concurrent runs neither clash nor see half-unpacked kernels. A CI job that runs as several
users sets ``IMGKIT_CACHE`` to one world-writable directory (mode 1777) so they share it.

:func:`extract_vmlinux` pulls the compressed ELF ``vmlinux`` out of a bzImage: QEMU boots it
through the PVH entry point, skipping the real-mode setup and the in-guest decompressor
(about 2.6 s instead of 5-9 s under TCG).

:func:`tree_kernel` takes the kernel a root filesystem tree carries (``boot/vmlinuz-VER`` or
the bootc/mkosi ``usr/lib/modules/VER/vmlinuz``) with its ``lib/modules/VER``, reading the
tree's lazy blobs: only the kernel image and the modules an initramfs needs are copied out.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import lzma
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgkit import tools
from imgkit.errors import ImageError, InputError, ToolError

if TYPE_CHECKING:
    from imgkit.tree import Tree


@dataclass(frozen=True)
class KernelInfo:
    """A bootable kernel image, its modules directory (may be ``None``) and release string."""

    vmlinuz: str
    moddir: str | None
    version: str
    #: Whether this call downloaded it (rather than finding it in the cache).
    downloaded: bool = False


# -- cache directory -------------------------------------------------------------------------
def usable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
    """The imgkit cache directory, created if needed.

    ``cache_dir`` wins, then ``$IMGKIT_CACHE``, ``$XDG_CACHE_HOME/imgkit``,
    ``~/.cache/imgkit``; if none is writable, ``/tmp/imgkit-cache-UID``. An explicitly given
    directory is returned even if read-only (it may hold what another user fetched).
    """
    if cache_dir is not None:
        path = os.path.abspath(os.fspath(cache_dir))
        usable_dir(path)
        return path
    env = os.environ.get("IMGKIT_CACHE")
    if env:
        path = os.path.abspath(env)
        usable_dir(path)
        return path
    candidates = []
    if os.environ.get("XDG_CACHE_HOME"):
        candidates.append(os.path.join(os.environ["XDG_CACHE_HOME"], "imgkit"))
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if home and home != "~":
        candidates.append(os.path.join(home, ".cache", "imgkit"))
    for path in candidates:
        if usable_dir(path):
            return path
    path = os.path.join(tempfile.gettempdir(), f"imgkit-cache-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def cache_lock(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if possible; read-only works too)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)  # let other users of a shared cache take the lock
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def writable_cache_subdir(root: str, name: str) -> str:
    """``root/name``, or a per-user fallback when a shared cache's subdir belongs to another
    user and cannot be written."""
    path = os.path.join(root, name)
    if usable_dir(path):
        return path
    fallback = os.path.join(tempfile.gettempdir(), f"imgkit-cache-{os.getuid()}", name)
    os.makedirs(fallback, exist_ok=True)
    return fallback


# -- Debian kernel ---------------------------------------------------------------------------
def _image_package(package: str) -> tuple[str, str]:
    """``linux-image-amd64`` -> (``linux-image-6.1.0-NN-amd64``, its candidate version)."""
    target = package
    out = tools.run(["apt-cache", "depends", package]).stdout.decode(errors="replace")
    for line in out.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(linux-image-\S+)", line)
        if m and not m.group(1).startswith("<"):
            target = m.group(1)
            break
    show = tools.run(["apt-cache", "show", "--no-all-versions", target],
                     check=False).stdout.decode(errors="replace")
    m = re.search(r"^Version:\s*(\S+)", show, re.M)
    if not m:
        raise ToolError(f"apt-cache knows no package {target!r} (from {package!r})",
                        hint="run 'apt-get update', or check the package name")
    return target, m.group(1)


def _kernel_in(root: str) -> KernelInfo:
    boot = os.path.join(root, "boot")
    images = sorted(f for f in os.listdir(boot) if f.startswith("vmlinuz-"))
    if not images:
        raise ImageError(f"no boot/vmlinuz-* in the unpacked kernel package at {root}")
    version = images[-1][len("vmlinuz-"):]
    moddir = os.path.join(root, "lib", "modules", version)
    return KernelInfo(os.path.join(boot, images[-1]),
                      moddir if os.path.isdir(moddir) else None, version)


def fetch_debian_kernel(cache_dir: str | os.PathLike | None = None,
                        package: str = "linux-image-amd64") -> KernelInfo:
    """Download and unpack Debian's kernel package (no root needed), cached.

    ``package`` may be a metapackage (``linux-image-amd64``): its real ``linux-image-X``
    dependency is what gets fetched. The unpacked tree is reused while apt's candidate
    version stays the same.
    """
    root = cache_root(cache_dir)
    try:
        target, version = _image_package(package)
    except ToolError:
        # offline or no apt lists: a kernel fetched earlier is better than nothing
        cached = any_cached_kernel(root) if package == "linux-image-amd64" else None
        if cached is None:
            raise
        return cached
    safe = re.sub(r"[^A-Za-z0-9.+~-]", "_", f"{target}_{version}")
    kernels = os.path.join(root, "kernels")
    final = os.path.join(kernels, safe)
    if os.path.exists(os.path.join(final, ".complete")):
        return _kernel_in(final)
    if not usable_dir(kernels):
        kernels = writable_cache_subdir(root, "kernels")
        final = os.path.join(kernels, safe)
        if os.path.exists(os.path.join(final, ".complete")):
            return _kernel_in(final)
    with contextlib.suppress(OSError):
        os.chmod(kernels, 0o1777)  # shared caches: any user may add a kernel
    with cache_lock(os.path.join(kernels, f".{safe}.lock")):
        if os.path.exists(os.path.join(final, ".complete")):
            return _kernel_in(final)
        work = tempfile.mkdtemp(prefix=f".{safe}.", dir=kernels)
        try:
            tools.run(["apt-get", "download", "-q", f"{target}={version}"], cwd=work,
                      timeout=900)
            debs = [f for f in os.listdir(work) if f.endswith(".deb")]
            if len(debs) != 1:
                raise ToolError(f"apt-get download {target} left {debs or 'no .deb files'} "
                                f"in {work}")
            unpacked = os.path.join(work, "root")
            tools.run(["dpkg", "-x", os.path.join(work, debs[0]), unpacked], timeout=600)
            os.unlink(os.path.join(work, debs[0]))
            open(os.path.join(unpacked, ".complete"), "w").close()
            os.chmod(unpacked, 0o755)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(unpacked, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dataclasses.replace(_kernel_in(final), downloaded=True)


def any_cached_kernel(root: str) -> KernelInfo | None:
    kernels = os.path.join(root, "kernels")
    try:
        names = sorted(n for n in os.listdir(kernels) if n.startswith("linux-image-")
                       and os.path.exists(os.path.join(kernels, n, ".complete")))
    except OSError:
        return None
    return _kernel_in(os.path.join(kernels, names[-1])) if names else None


# -- other kernels ---------------------------------------------------------------------------
def bzimage_version(path: str | os.PathLike) -> str | None:
    """The release string stored in a bzImage's setup header (``6.1.0-56-amd64``), if any."""
    with open(path, "rb") as f:
        head = f.read(0x4000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    ptr, = struct.unpack_from("<H", head, 0x20E)
    start = ptr + 0x200
    if not ptr or start >= len(head):
        return None
    text = head[start: start + 256].split(b"\0")[0].decode("ascii", "replace")
    return text.split()[0] if text else None


def find_kernel(path: str | os.PathLike, moddir: str | os.PathLike | None = None) -> KernelInfo:
    """Describe a kernel file given by the user, guessing its modules directory.

    For ``ROOT/boot/vmlinuz-VER`` the guess is ``ROOT/lib/modules/VER``; the release comes from
    the bzImage header, else from the file name.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise InputError(f"kernel image {path} does not exist")
    version = bzimage_version(path)
    base = os.path.basename(path)
    if version is None and base.startswith("vmlinuz-"):
        version = base[len("vmlinuz-"):]
    if moddir is None and version:
        guess = os.path.join(os.path.dirname(os.path.dirname(path)), "lib", "modules", version)
        moddir = guess if os.path.isdir(guess) else None
    elif moddir is not None:
        moddir = os.path.abspath(os.fspath(moddir))
        if not os.path.isdir(moddir):
            raise InputError(f"modules directory {moddir} does not exist")
        version = version or os.path.basename(moddir)
    return KernelInfo(path, os.fspath(moddir) if moddir else None, version or "unknown")


# -- a tree's own kernel ---------------------------------------------------------------------
#: Where a tree keeps its modules directories (``lib`` is a symlink to ``usr/lib`` with merged /usr).
_MODULE_ROOTS = ("lib/modules", "usr/lib/modules")


def version_key(version: str) -> tuple:
    """Sort key that orders ``6.1.0-9`` before ``6.1.0-50`` (digit runs compare as numbers)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", version)))


def tree_module_dirs(tree: Tree) -> dict[str, str]:
    """``version -> tree path`` of every modules directory in ``tree`` (symlinks resolved).

    A directory counts when it holds modules (``kernel/``) or depmod's index: a bare
    ``VERSION/build`` link left by kernel headers is not a kernel's modules."""
    from imgkit.tree import Kind
    from imgkit.vm.kmod import find_in_tree
    found: dict[str, str] = {}
    for root in _MODULE_ROOTS:
        top = find_in_tree(tree, root)
        if top is None or top.kind is not Kind.DIR:
            continue
        for child in tree.children(top.path):
            d = find_in_tree(tree, child.path)
            if d is None or d.kind is not Kind.DIR:
                continue
            if any(c.name in ("kernel", "modules.dep") for c in tree.children(d.path)):
                found.setdefault(child.name, d.path)
    return found


def tree_kernels(tree: Tree) -> dict[str, str]:
    """``version -> tree path`` of every kernel image in ``tree``: ``boot/vmlinuz-VER``, or
    ``usr/lib/modules/VER/vmlinuz`` (the bootc/mkosi place) where boot/ has none."""
    from imgkit.tree import Kind
    from imgkit.vm.kmod import find_in_tree
    found: dict[str, str] = {}
    boot = find_in_tree(tree, "boot")
    if boot is not None and boot.kind is Kind.DIR:
        for child in tree.children(boot.path):
            e = find_in_tree(tree, child.path)
            if child.name.startswith("vmlinuz-") and e is not None and e.kind is Kind.FILE:
                found[child.name[len("vmlinuz-"):]] = e.path
    for root in _MODULE_ROOTS:
        top = find_in_tree(tree, root)
        if top is None or top.kind is not Kind.DIR:
            continue
        for child in tree.children(top.path):
            e = find_in_tree(tree, f"{child.path}/vmlinuz")
            if e is not None and e.kind is Kind.FILE:
                found.setdefault(child.name, e.path)
    return found


def _copy_out(tree: Tree, path: str, dest: str) -> str:
    """Write the regular file ``path`` of ``tree`` to the host file ``dest``."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    data = tree[path].data
    with open(dest, "wb") as out:
        if data is not None:
            with data.open() as src:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest


def tree_kernel(tree: Tree, work_dir: str, *, where: str, version: str | None = None,
                modules: Iterable[str] = ()) -> KernelInfo:
    """The kernel a tree carries, and the modules an initramfs takes from it.

    Several kernels: the newest by version unless ``version`` names one. Its image is copied
    to ``work_dir``; of its modules directory only the modules ``modules`` resolve to (with
    their dependencies) and the index files are, so ``KernelInfo.moddir`` is a small host
    directory. A kernel whose release (from the bzImage header) differs from its modules
    directory's is an error naming both: it would boot with no module loadable.
    """
    from imgkit.vm.kmod import TreeModules, materialize_modules
    kernels = tree_kernels(tree)
    moddirs = tree_module_dirs(tree)
    if not kernels:
        raise InputError(f"{where}: no kernel in the tree (looked for /boot/vmlinuz-VERSION and "
                         "/usr/lib/modules/VERSION/vmlinuz)",
                         hint="install a kernel package in the tree, or use [kernel] source = "
                              "'debian' or 'path'")
    listed = ", ".join(sorted(kernels, key=version_key))
    if version is None:
        version = max(kernels, key=version_key)
    elif version not in kernels:
        raise InputError(f"{where}: no kernel {version} in the tree (it has {listed})",
                         hint="set [kernel] version to one of those, or leave it out for the newest")
    vmlinuz = _copy_out(tree, kernels[version], os.path.join(work_dir, f"vmlinuz-{version}"))
    release = bzimage_version(vmlinuz) or version   # the header, not the file name, is the truth
    if release not in moddirs:
        if moddirs:
            others = ", ".join(f"{v} (/{p})" for v, p in sorted(moddirs.items()))
            raise InputError(f"{where}: kernel {release} (/{kernels[version]}) has no modules "
                             f"directory in the tree; its modules are for {others}",
                             hint="install the matching kernel and modules together, or set "
                                  "[kernel] version to a kernel whose modules are there")
        return KernelInfo(vmlinuz, None, release)
    wanted = tuple(modules)
    if not wanted:
        return KernelInfo(vmlinuz, None, release)
    files = TreeModules(tree, moddirs[release], f"{where}: /{moddirs[release]}")
    moddir = materialize_modules(files, wanted, os.path.join(work_dir, "modules"))
    return KernelInfo(vmlinuz, moddir, release)


#: Where a tree keeps the initramfs made for its kernel VER (Debian's, then bootc/mkosi's).
_TREE_INITRDS = ("boot/initrd.img-{v}", "boot/initramfs-{v}.img", "usr/lib/modules/{v}/initrd",
                 "usr/lib/modules/{v}/initramfs.img")


def tree_initrd(tree: Tree, version: str, work_dir: str, *, where: str) -> str:
    """The initramfs the tree's own tools made for kernel ``version`` (``update-initramfs``,
    dracut), copied to ``work_dir``: used as it is instead of imgkit's."""
    from imgkit.tree import Kind
    from imgkit.vm.kmod import find_in_tree
    for pattern in _TREE_INITRDS:
        e = find_in_tree(tree, pattern.format(v=version))
        if e is not None and e.kind is Kind.FILE:
            return _copy_out(tree, e.path, os.path.join(work_dir, f"initrd-{version}"))
    raise InputError(f"{where}: no initramfs for kernel {version} in the tree (looked for "
                     + ", ".join("/" + p.format(v=version) for p in _TREE_INITRDS) + ")",
                     hint="make one in the tree (update-initramfs, dracut), or use imgkit's: "
                          "init = 'busybox' with modules in a [trees.NAME] and initramfs:NAME")


def mismatched_tree_modules(kernel: KernelInfo, tree: Tree) -> list[str]:
    """Versions of the modules directories ``tree`` has when none is ``kernel``'s: that
    tree, booted with that kernel, would load no module."""
    versions = sorted(tree_module_dirs(tree), key=version_key)
    return [] if not versions or kernel.version in versions else versions


def host_kernel() -> KernelInfo | None:
    """The running kernel, if its image is readable (``/boot`` is often root-only)."""
    release = os.uname().release
    path = f"/boot/vmlinuz-{release}"
    if not os.access(path, os.R_OK):
        return None
    moddir = f"/lib/modules/{release}"
    return KernelInfo(path, moddir if os.path.isdir(moddir) else None, release)


# -- vmlinux out of a bzImage ----------------------------------------------------------------
_MAGICS = ((b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08", "gzip"))


def _payload(data: bytes, origin: str) -> tuple[int, str]:
    """Offset and compression of the kernel payload inside a bzImage."""
    if data[0x202:0x206] == b"HdrS":
        version, = struct.unpack_from("<H", data, 0x206)
        if version >= 0x208:
            setup_sects = data[0x1F1] or 4
            offset, = struct.unpack_from("<I", data, 0x248)
            start = (setup_sects + 1) * 512 + offset
            for magic, comp in _MAGICS:
                if data.startswith(magic, start):
                    return start, comp
    for magic, comp in _MAGICS:  # older headers: search for the first known magic
        pos = data.find(magic)
        if pos >= 0:
            return pos, comp
    raise ImageError(f"{origin}: no xz, zstd or gzip payload found in the kernel image",
                     hint="extract_vmlinux handles bzImages compressed with xz, zstd or gzip")


def extract_vmlinux(bzimage: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """Path of the ELF ``vmlinux`` inside ``bzimage``, decompressed once and cached.

    The cache key is the bzImage's content hash, so a changed kernel never reuses a stale
    vmlinux.
    """
    bzimage = os.fspath(bzimage)
    with open(bzimage, "rb") as f:
        data = f.read()
    if data[:4] == b"\x7fELF":
        return bzimage  # already a vmlinux
    digest = hashlib.sha256(data).hexdigest()[:32]
    out_dir = writable_cache_subdir(cache_root(cache_dir), "vmlinux")
    dest = os.path.join(out_dir, f"{digest}.vmlinux")
    shared = os.path.join(cache_root(cache_dir), "vmlinux", f"{digest}.vmlinux")
    for candidate in (shared, dest):
        if os.path.exists(candidate):
            return candidate
    start, comp = _payload(data, bzimage)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{digest}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            _decompress_into(data, start, comp, out, bzimage)
        with open(tmp, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise ImageError(f"{bzimage}: the decompressed payload is not an ELF vmlinux")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def _decompress_into(data: bytes, start: int, comp: str, out, origin: str) -> None:
    view = memoryview(data)[start:]
    step = 1 << 20
    try:
        if comp == "xz":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            for i in range(0, len(view), step):
                out.write(d.decompress(view[i: i + step]))
                if d.eof:
                    break
        elif comp == "gzip":
            d = zlib.decompressobj(wbits=31)
            for i in range(0, len(view), step):
                out.write(d.decompress(view[i: i + step]))
                if d.eof:
                    break
        else:
            try:
                import zstandard
            except ImportError as exc:
                raise ToolError("the kernel payload is zstd-compressed; install the "
                                "'zstandard' Python module") from exc
            d = zstandard.ZstdDecompressor().decompressobj()
            for i in range(0, len(view), step):
                out.write(d.decompress(view[i: i + step]))
                if d.eof:
                    break
    except (lzma.LZMAError, zlib.error) as exc:
        raise ImageError(f"{origin}: corrupt {comp} kernel payload: {exc}") from exc
