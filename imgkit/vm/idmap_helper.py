"""``idmap-mount``, the initramfs helper that makes id-mapped bind mounts, compiled and cached.

Busybox ``mount`` cannot make an id-mapped mount and Debian 12's util-linux (2.38) has no
``X-mount.idmap``, so the built-in init carries a small static program of our own
(``imgkit/data/idmap-mount.c``: open_tree, a user namespace holding the mapping,
mount_setattr(MOUNT_ATTR_IDMAP), move_mount). It is compiled from that source only, never
from user input, with ``gcc -static`` when an image needs it, and kept in the imgkit cache
under a key made of the source, the compiler's version and the flags, so a build compiles
it once. The same compiler makes the same bytes: the binary is stripped, holds no
timestamp or path of the build directory, and its build-id is a SHA-1 of its contents.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from importlib import resources

from imgkit import tools
from imgkit.errors import ToolError
from imgkit.vm.kernel import cache_root, usable_dir

#: The helper's name in the cache, in the initramfs (``/bin``) and of its source.
NAME = "idmap-mount"
SOURCE_NAME = f"{NAME}.c"
#: ``-s`` and a content-hash build-id make the output depend only on the source and gcc.
CFLAGS = ("-static", "-O2", "-Wall", "-s", "-Wl,--build-id=sha1")


def helper_source() -> bytes:
    """The C source of ``idmap-mount``, as shipped in the package."""
    return resources.files("imgkit").joinpath(f"data/{SOURCE_NAME}").read_bytes()


def _gcc_version() -> str:
    try:
        out = tools.run(["gcc", "--version"]).stdout
    except ToolError as exc:
        raise ToolError("id-mapped layers need gcc to compile the initramfs helper "
                        f"{NAME}: {exc}",
                        hint="install it: apt-get install gcc libc6-dev") from None
    return out.decode(errors="replace").splitlines()[0].strip()


def cache_key(source: bytes, gcc_version: str) -> str:
    """What the binary depends on: the source, the compiler and the flags."""
    digest = hashlib.sha256()
    for part in (source, gcc_version.encode(), " ".join(CFLAGS).encode()):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()[:32]


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return os.path.isfile(path) and f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _shared_dir(path: str) -> str | None:
    """``path`` created and readable by every user, or ``None`` when it cannot be written."""
    if not usable_dir(path):
        return None
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o555 != 0o555:
            os.chmod(path, mode | 0o555)
    return path


def compile_helper(dest: str) -> None:
    """Compile ``idmap-mount`` into ``dest``, atomically (a temporary name beside it, then a
    rename), executable and readable by every user."""
    source = helper_source()
    directory = os.path.dirname(os.path.abspath(dest))
    with tempfile.TemporaryDirectory(prefix="imgkit-idmap-") as work:
        with open(os.path.join(work, SOURCE_NAME), "wb") as f:
            f.write(source)
        fd, tmp = tempfile.mkstemp(prefix=f".{NAME}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            # a relative source name: the only file name gcc records is the source's own
            r = tools.run(["gcc", *CFLAGS, "-o", tmp, SOURCE_NAME], cwd=work, check=False)
            if r.returncode != 0:
                err = r.stderr.decode(errors="replace").strip()
                missing_libc = any(s in err for s in ("-lc", "stdio.h", "linux/mount.h", "crt1.o"))
                raise ToolError(f"gcc could not compile {SOURCE_NAME} (the initramfs helper for "
                                f"id-mapped layers): {err.splitlines()[-1] if err else r.returncode}",
                                hint="install the static C library and the kernel headers: "
                                     "apt-get install libc6-dev" if missing_libc else
                                     "check the gcc installation (gcc -static must work)")
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def helper_path(cache_dir: str | os.PathLike | None = None) -> str:
    """The compiled ``idmap-mount`` (a static x86-64 executable), from the cache or compiled
    into it now. A shared cache another user filled is read even when it cannot be written;
    then the binary goes into a per-user directory."""
    key = cache_key(helper_source(), _gcc_version())
    name = f"{NAME}-{key}"
    shared = os.path.join(cache_root(cache_dir), NAME)
    if _is_elf(os.path.join(shared, name)):
        return os.path.join(shared, name)
    directory = _shared_dir(shared) or _shared_dir(
        os.path.join(tempfile.gettempdir(), f"imgkit-cache-{os.getuid()}", NAME))
    if directory is None:
        raise ToolError(f"no writable cache directory for {NAME} (tried {shared})",
                        hint="set IMGKIT_CACHE to a writable directory")
    dest = os.path.join(directory, name)
    if not _is_elf(dest):
        compile_helper(dest)
    return dest
