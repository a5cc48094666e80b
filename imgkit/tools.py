"""The one place that runs external programs.

Every subprocess goes through :func:`run`: argv lists only (no shell), a clean environment,
a log of what ran, and errors that name the command and the Debian package that provides a
missing tool. Tests and library users may swap :data:`runner` for their own.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from imgkit.errors import ToolError

#: Which Debian package ships each external tool, for the "install it" hint.
PACKAGES: dict[str, str] = {
    "mke2fs": "e2fsprogs", "debugfs": "e2fsprogs", "e2fsck": "e2fsprogs", "dumpe2fs": "e2fsprogs",
    "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils",
    "syslinux": "syslinux", "mcopy": "mtools", "mdir": "mtools",
    "mtype": "mtools", "minfo": "mtools", "mlabel": "mtools", "fatlabel": "dosfstools",
    "file": "file",
    "sfdisk": "fdisk", "sgdisk": "gdisk", "fsck.vfat": "dosfstools", "mkfs.vfat": "dosfstools",
    "cpio": "cpio", "bsdtar": "libarchive-tools", "xorriso": "xorriso", "objdump": "binutils",
    "objcopy": "binutils", "mmd": "mtools",
    "depmod": "kmod", "busybox": "busybox-static", "zstd": "zstd", "lz4": "lz4",
    "apt-get": "apt", "apt-cache": "apt", "dpkg": "dpkg", "dpkg-deb": "dpkg",
    "isoinfo": "genisoimage",
    "mksquashfs": "squashfs-tools", "unsquashfs": "squashfs-tools",
    "mkfs.erofs": "erofs-utils", "fsck.erofs": "erofs-utils", "dump.erofs": "erofs-utils",
    "veritysetup": "cryptsetup-bin", "openssl": "openssl",
    "grub-mkimage": "grub-common", "grub-mkstandalone": "grub-common",
    "grub-file": "grub-common", "grub-script-check": "grub-common",
    "debootstrap": "debootstrap", "genimage": "genimage",
}


def which(tool: str) -> str:
    """Absolute path of ``tool``, or a :class:`ToolError` saying which package to install.

    Looks in ``PATH`` and in the sbin directories an unprivileged user's ``PATH`` often lacks.
    """
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(tool, path=path)
    if found is None:
        pkg = PACKAGES.get(tool)
        raise ToolError(
            f"required tool {tool!r} was not found in PATH",
            hint=f"install it: apt-get install {pkg}" if pkg else "install it and retry",
        )
    return found


def have(tool: str) -> bool:
    """Whether ``tool`` can be found (for choosing the best available path)."""
    try:
        which(tool)
        return True
    except ToolError:
        return False


@dataclass
class Runner:
    """Runs commands; replace :data:`runner` to record or fake them."""

    env: Mapping[str, str] | None = None

    def _prepare(self, argv: Sequence[str], env: Mapping[str, str | None] | None,
                 how: str) -> tuple[list[str], dict[str, str]]:
        """The resolved argv and the clean environment every command gets, logged; a
        variable given as ``None`` is removed (a tool that refuses to run when it is set)."""
        argv = [str(a) for a in argv]
        argv[0] = which(argv[0]) if "/" not in argv[0] else argv[0]
        full_env = _clean_env()
        full_env.update(self.env or {})
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        _log_debug(f"{how}: {shlex.join(argv)}")
        return argv, full_env

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        stdin: IO | int | None = None,
        stdout: IO | int | None = None,
        stderr: IO | int | None = None,
        cwd: str | None = None,
        env: Mapping[str, str | None] | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess:
        argv, full_env = self._prepare(argv, env, "run")
        capture_out = stdout is None
        capture_err = stderr is None
        try:
            proc = subprocess.run(
                argv, input=input, stdin=stdin if input is None else None,
                stdout=subprocess.PIPE if capture_out else stdout,
                stderr=subprocess.PIPE if capture_err else stderr,
                cwd=cwd, env=full_env, timeout=timeout,
            )
        except FileNotFoundError as exc:
            raise ToolError(f"cannot execute {argv[0]}: {exc.strerror}") from exc
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"{shlex.join(argv)} did not finish within {timeout} s") from exc
        if check and proc.returncode != 0:
            err = ""
            if capture_err and proc.stderr:
                err = proc.stderr.decode(errors="replace").strip()
            tail = "\n".join(err.splitlines()[-15:])
            raise ToolError(
                f"{os.path.basename(argv[0])} failed with exit status {proc.returncode}: "
                f"{shlex.join(argv)}" + (f"\n{tail}" if tail else ""))
        return proc


    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: IO | int | None = subprocess.DEVNULL,
        stdout: IO | int | None = None,
        stderr: IO | int | None = None,
        cwd: str | None = None,
        env: Mapping[str, str | None] | None = None,
        new_session: bool = True,
        kill_with_parent: bool = False,
    ) -> subprocess.Popen:
        """Start ``argv`` without waiting, for long-running programs read incrementally
        (the QEMU runner). Same tool lookup and clean environment as :meth:`run`; by default
        it gets its own session so the caller can kill its whole process group.
        ``kill_with_parent`` has the kernel SIGKILL the child if this process dies first
        (Linux ``PR_SET_PDEATHSIG``), so not even a SIGKILLed caller leaves it behind."""
        argv, full_env = self._prepare(argv, env, "spawn")
        try:
            hook = _die_with_parent_hook() if kill_with_parent else None
            return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
                                    env=full_env, start_new_session=new_session, preexec_fn=hook)
        except FileNotFoundError as exc:
            raise ToolError(f"cannot execute {argv[0]}: {exc.strerror}") from exc


def _log_debug(message: str) -> None:
    """Log to ``imgkit.tools`` at debug level. Until something imports :mod:`logging` no
    handler can be listening, so the module (some milliseconds of start-up) is not imported
    here for nothing."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("imgkit.tools").debug("%s", message)


def _die_with_parent_hook():
    """A pre-exec hook asking for SIGKILL when the parent exits (``PR_SET_PDEATHSIG``).

    libc is loaded here, in the parent: nothing may be imported between fork and exec."""
    import ctypes
    import signal
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    sig = int(signal.SIGKILL)

    def hook() -> None:
        prctl(1, sig, 0, 0, 0)
    return hook


def _clean_env() -> dict[str, str]:
    """A predictable environment: C locale, the caller's PATH and HOME, nothing else."""
    env = {"LC_ALL": "C", "LANG": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")
           + ":/usr/local/sbin:/usr/sbin:/sbin"}
    for key in ("HOME", "TMPDIR", "SOURCE_DATE_EPOCH", "TERM"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


runner = Runner()


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` through the current :data:`runner` (see :meth:`Runner.run`)."""
    return runner.run(argv, **kwargs)


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` through the current :data:`runner` (see :meth:`Runner.spawn`)."""
    return runner.spawn(argv, **kwargs)
