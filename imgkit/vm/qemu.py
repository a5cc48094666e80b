"""Booting images in QEMU and watching the serial console.

Two halves: :func:`build_argv` turns a :class:`QemuSpec` into a QEMU command line (pure, so
it is unit-tested without QEMU), and :func:`boot` runs it headless with the serial console
on a pipe, reads it incrementally, and stops as soon as the expected text shows up, a
failure pattern shows up, or the timeout passes. QEMU runs in its own process group and is
killed on every way out of :func:`boot` (including ``KeyboardInterrupt``), and the kernel
kills it should the calling process die first. No tty is needed: stdin is ``/dev/null``
unless the caller passes a pipe or file to type into the serial console.

Accelerator: KVM only when ``/dev/kvm`` really works (:func:`choose_accel`), TCG otherwise.
"""
from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from re import Pattern
from typing import IO

from imgkit import tools
from imgkit.errors import BootError, InputError
from imgkit.vm.firmware import UefiFirmware, find_uefi

QEMU = "qemu-system-x86_64"
INTERFACES = ("virtio", "ide", "cdrom", "scsi")
FORMATS = ("raw", "qcow2")
SECURITY_MODELS = ("none", "mapped-xattr", "mapped-file")
FIRMWARES = ("bios", "uefi")
DISPLAYS = ("serial", "gtk", "none")
DEFAULT_FAIL_PATTERNS = ("Kernel panic", "imgkit-init: ERROR")
_KVM_GET_API_VERSION = 0xAE00


@dataclass(frozen=True)
class Drive:
    """A disk image attached to the VM. ``cdrom`` is an IDE CD-ROM (always read-only).

    ``readonly`` on an ``ide`` disk means ``snapshot=on``: the guest may write, the image
    file is never changed (QEMU's IDE disks cannot be read-only)."""

    file: str
    interface: str = "virtio"
    format: str = "raw"
    readonly: bool = False


@dataclass(frozen=True)
class Share:
    """A host directory shared over 9p (``mount -t 9p -o trans=virtio TAG /mnt``).

    ``security_model`` ``None`` picks :func:`share_security_model` for the running user."""

    path: str
    tag: str
    readonly: bool = False
    security_model: str | None = None


def share_security_model(euid: int | None = None) -> str:
    """How a 9p share maps the guest's file metadata onto the host.

    ``none`` passes the guest's chmod, chown and mknod through with QEMU's own credentials:
    rootless, the guest cannot do more than the user, and what it creates belongs to the user.
    Run by root, the same would let the guest make setuid-root programs and device nodes in
    the host directory, so as root the share is ``mapped-xattr``: the guest's owners, modes
    and device nodes are kept in ``user.virtfs.*`` xattrs of plain files (created 0600 on the
    host), and no setuid bit or device node ever reaches the host. Refusing would break root
    CI jobs, and stripping bits is not something QEMU offers for ``none``.
    """
    return "mapped-xattr" if (os.geteuid() if euid is None else euid) == 0 else "none"


@dataclass(frozen=True)
class QemuSpec:
    """What to boot and how. Paths are host paths.

    ``display``: ``serial`` = no graphics, the serial console on stdio (what :func:`boot`
    reads); ``gtk`` = a window with a VGA card, serial still on stdio; ``none`` = no graphics
    and no serial (a fully headless VM: only its exit can be waited for).
    ``uefi_vars``: a variable store to use (and modify); ``None`` means a private temporary
    copy of the firmware's template, discarded afterwards.
    """

    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    drives: tuple[Drive, ...] = ()
    firmware: str = "bios"
    memory: int = 512
    cpus: int = 1
    display: str = "serial"
    shares: tuple[Share, ...] = ()
    extra_args: tuple[str, ...] = ()
    machine: str = "pc"
    uefi_vars: str | None = None


VM = QemuSpec


@dataclass
class BootResult:
    """How a boot ended: the matched text (``None`` if no ``expect``), seconds from start,
    the last console lines, QEMU's exit status (negative: killed by that signal) and the
    whole console log."""

    matched: str | None
    elapsed: float
    log_tail: str
    returncode: int | None
    log: str = field(default="", repr=False)


# -- accelerator -----------------------------------------------------------------------------
def kvm_usable() -> bool:
    """Whether KVM can run guests here.

    ``/dev/kvm`` must open read-write and answer the API version ioctl. A nested PVM host
    (``/sys/module/kvm_pvm``) passes those checks but hangs or fails real guests, so it
    counts as unusable.
    """
    if os.path.exists("/sys/module/kvm_pvm"):
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def choose_accel() -> str:
    """``"kvm"`` or ``"tcg"``; ``$IMGKIT_ACCEL`` overrides the detection."""
    forced = os.environ.get("IMGKIT_ACCEL", "").strip().lower()
    if forced:
        if forced not in ("kvm", "tcg"):
            raise InputError(f"IMGKIT_ACCEL={forced!r}: expected 'kvm' or 'tcg'")
        return forced
    return "kvm" if kvm_usable() else "tcg"


# -- command line ----------------------------------------------------------------------------
def escape_option(value: str) -> str:
    """Escape a value for a QEMU ``key=value,...`` option (a comma is written twice)."""
    return str(value).replace(",", ",,")


def build_argv(spec: QemuSpec, *, accel: str = "tcg", qemu: str = QEMU,
               uefi: UefiFirmware | None = None, vars_path: str | None = None,
               interactive: bool = False) -> list[str]:
    """The QEMU command line for ``spec``; pure (no files are touched).

    For ``firmware="uefi"`` pass ``uefi`` (from :func:`imgkit.vm.firmware.find_uefi`) and the
    variable store ``vars_path`` (a private copy; defaults to ``spec.uefi_vars``).
    ``interactive`` multiplexes the QEMU monitor onto the console (Ctrl-A C).
    """
    if accel not in ("tcg", "kvm"):
        raise InputError(f"accelerator {accel!r}: expected 'tcg' or 'kvm'")
    if spec.firmware not in FIRMWARES:
        raise InputError(f"firmware {spec.firmware!r}: expected one of {', '.join(FIRMWARES)}")
    if spec.display not in DISPLAYS:
        raise InputError(f"display {spec.display!r}: expected one of {', '.join(DISPLAYS)}")
    if spec.kernel is None and (spec.initrd or spec.append):
        raise InputError("an initrd or kernel command line was given without a kernel")
    if spec.memory < 16 or spec.cpus < 1:
        raise InputError(f"memory {spec.memory} MiB / cpus {spec.cpus}: expected at least "
                         "16 MiB and 1 CPU")
    argv = [qemu, "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-machine", spec.machine, "-m", str(spec.memory), "-smp", str(spec.cpus),
            "-nodefaults", "-no-reboot", "-no-user-config"]
    if spec.display == "gtk":
        argv += ["-display", "gtk", "-vga", "std"]
    else:
        argv += ["-display", "none"]
    if spec.display == "none":
        argv += ["-serial", "null"]
    else:
        argv += ["-serial", "mon:stdio" if interactive else "stdio"]
    if spec.firmware == "uefi":
        vars_path = vars_path or spec.uefi_vars
        if uefi is None or vars_path is None:
            raise InputError("UEFI boot needs the firmware code and a variable store path")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={escape_option(uefi.code)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={escape_option(vars_path)}"]
    if spec.kernel is not None:
        argv += ["-kernel", spec.kernel]
        if spec.initrd is not None:
            argv += ["-initrd", spec.initrd]
        if spec.append is not None:
            argv += ["-append", spec.append]
    for i, d in enumerate(spec.drives):
        if d.interface not in INTERFACES:
            raise InputError(f"drive {d.file}: interface {d.interface!r}, expected one of "
                             f"{', '.join(INTERFACES)}")
        if d.format not in FORMATS:
            raise InputError(f"drive {d.file}: format {d.format!r}, expected one of "
                             f"{', '.join(FORMATS)}")
        opts = f"file={escape_option(d.file)},format={d.format}"
        if d.interface == "cdrom":
            opts += ",if=ide,media=cdrom,readonly=on"
        elif d.interface == "scsi":
            if not any(a.startswith("virtio-scsi") for a in argv):
                argv += ["-device", "virtio-scsi-pci,id=scsi0"]
            opts += f",if=none,id=drive{i}" + (",readonly=on" if d.readonly else "")
            argv += ["-drive", opts, "-device", f"scsi-hd,drive=drive{i},bus=scsi0.0"]
            continue
        elif d.interface == "ide":
            # QEMU's IDE disks cannot be read-only; snapshot=on keeps the image untouched
            # (guest writes go to a discarded temporary overlay)
            opts += ",if=ide" + (",snapshot=on" if d.readonly else "")
        else:
            opts += f",if={d.interface}" + (",readonly=on" if d.readonly else "")
        argv += ["-drive", opts]
    for s in spec.shares:
        if not s.tag or len(s.tag) > 31 or "," in s.tag:
            raise InputError(f"9p share {s.path}: mount tag {s.tag!r} must be 1-31 "
                             "characters without commas")
        model = s.security_model or share_security_model()
        if model not in SECURITY_MODELS:
            raise InputError(f"9p share {s.path}: security model {model!r}, expected one of "
                             f"{', '.join(SECURITY_MODELS)}")
        opts = f"local,path={escape_option(s.path)},mount_tag={s.tag},security_model={model}"
        argv += ["-virtfs", opts + (",readonly=on" if s.readonly else "")]
    argv += list(spec.extra_args)
    return argv


# -- running ---------------------------------------------------------------------------------
def _check_inputs(spec: QemuSpec) -> None:
    for what, path in (("kernel", spec.kernel), ("initrd", spec.initrd),
                       *(("drive", d.file) for d in spec.drives),
                       *(("9p share", s.path) for s in spec.shares)):
        if path is not None and not os.path.exists(path):
            raise InputError(f"{what} {path} does not exist")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL QEMU's whole process group and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _compile(p: str | Pattern[str]) -> Pattern[str]:
    return p if isinstance(p, re.Pattern) else re.compile(re.escape(p))


def _emit(console, text: str) -> None:
    if console is None:
        return
    try:
        console.write(text)
    except TypeError:
        console.write(text.encode())
    with contextlib.suppress(AttributeError, ValueError):
        console.flush()


def check_timeout(timeout: float) -> None:
    """A timeout is a positive, finite number of seconds (``-1`` or ``nan`` never expire)."""
    import math
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")


def boot(spec: QemuSpec, *, expect: str | Pattern[str] | None = None, timeout: float = 120.0,
         console: IO | None = None,
         fail_patterns: Iterable[str | Pattern[str]] = DEFAULT_FAIL_PATTERNS,
         accel: str | None = None, wait_exit: bool = False,
         stdin: int | None = None) -> BootResult:
    """Boot ``spec`` headless and watch its serial console.

    ``stdin`` (a file descriptor: a pipe or a file) becomes QEMU's standard input, which
    ``-serial stdio`` passes to the guest's serial port; by default the guest gets none.

    Returns as soon as ``expect`` (text or compiled regex) appears, then kills QEMU, unless
    ``wait_exit`` asks to wait (within ``timeout``) for the guest to power off by itself.
    With ``expect=None`` it waits for QEMU to exit, which must then be with status 0.
    Raises :class:`BootError` with the last console lines on timeout, when a fail pattern
    appears, or when QEMU exits before ``expect`` was seen (with its stderr and command line).
    The console is copied to ``console`` (a text or binary stream) as it arrives.
    """
    check_timeout(timeout)
    _check_inputs(spec)
    qemu = tools.which(QEMU)
    accel = accel or choose_accel()
    expect_re = _compile(expect) if expect is not None else None
    fails = [(_compile(p), p if isinstance(p, str) else p.pattern) for p in fail_patterns]
    with tempfile.TemporaryDirectory(prefix="imgkit-qemu-") as tmp:
        uefi, vars_path = _firmware_files(spec, tmp)
        argv = build_argv(spec, accel=accel, qemu=qemu, uefi=uefi, vars_path=vars_path)
        with open(os.path.join(tmp, "stderr"), "w+b") as err:
            return _watch(argv, err, expect_re, fails, timeout, console, wait_exit,
                          subprocess.DEVNULL if stdin is None else stdin)


def _firmware_files(spec: QemuSpec, tmp: str) -> tuple[UefiFirmware | None, str | None]:
    """OVMF's code and a private, writable copy of its variable store (UEFI boots only)."""
    if spec.firmware != "uefi":
        return None, None
    uefi = find_uefi()
    vars_path = spec.uefi_vars
    if vars_path is None:
        vars_path = os.path.join(tmp, "OVMF_VARS.fd")
        shutil.copyfile(uefi.vars_template, vars_path)
        os.chmod(vars_path, 0o600)
    return uefi, vars_path


def run_interactive(spec: QemuSpec, *, timeout: float | None = None,
                    accel: str | None = None) -> int:
    """Boot ``spec`` with the serial console (and the monitor: Ctrl-A C, quit: Ctrl-A X) on
    this terminal, so a person can type into the guest; returns QEMU's exit status.

    QEMU stays in the caller's session (it must read the terminal) and is killed at the
    timeout or if this process is interrupted.
    """
    if timeout is not None:
        check_timeout(timeout)
    _check_inputs(spec)
    qemu = tools.which(QEMU)
    accel = accel or choose_accel()
    with tempfile.TemporaryDirectory(prefix="imgkit-qemu-") as tmp:
        uefi, vars_path = _firmware_files(spec, tmp)
        argv = build_argv(spec, accel=accel, qemu=qemu, uefi=uefi, vars_path=vars_path,
                          interactive=True)
        proc = tools.spawn(argv, stdin=None, new_session=False, kill_with_parent=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BootError(f"QEMU still running after {timeout:g} s: stopped it",
                            hint="raise --timeout") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _watch(argv: list[str], err: IO[bytes], expect_re: Pattern[str] | None,
           fails: list[tuple[Pattern[str], str]], timeout: float, console, wait_exit: bool,
           stdin: int = subprocess.DEVNULL) -> BootResult:
    cmdline = shlex.join(argv)
    start = time.monotonic()
    deadline = start + timeout
    proc = tools.spawn(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=err,
                       kill_with_parent=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""
    scanned = 0
    matched: str | None = None
    failed: tuple[str, int] | None = None  # (pattern, where) once a fail pattern appeared

    def stderr_text() -> str:
        err.flush()
        err.seek(0)
        return _tail(err.read().decode(errors="replace"), 20)

    def failure(message: str) -> BootError:
        tail = _tail(text)
        exc = BootError(f"{message}\n--- last console lines ---\n{tail or '(no output)'}",
                        hint=f"QEMU command: {cmdline}")
        exc.log_tail = tail  # type: ignore[attr-defined]
        exc.log = text  # type: ignore[attr-defined]
        exc.argv = argv  # type: ignore[attr-defined]
        return exc

    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            eof = False
            while not eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    if failed is not None:
                        raise failure(f"the guest reported a failure ({failed[0]!r})")
                    what = (f"{expect_re.pattern!r} to appear" if expect_re is not None and
                            matched is None else "the VM to power off")
                    raise failure(f"timed out after {timeout:g} s waiting for {what}")
                if not sel.select(timeout=min(left, 0.5)):
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    eof = True
                    chunk_text = decoder.decode(b"", final=True)
                else:
                    chunk_text = decoder.decode(chunk)
                chunk_text = chunk_text.replace("\r", "")
                if not chunk_text:
                    continue
                _emit(console, chunk_text)
                text += chunk_text
                if len(text) > 4 << 20:  # keep memory bounded on chatty guests
                    cut = len(text) - (2 << 20)
                    text, scanned = text[cut:], max(0, scanned - cut)
                    if failed is not None:
                        failed = (failed[0], max(0, failed[1] - cut))
                window_start = max(0, scanned - 4096)
                scanned = len(text)
                if failed is None and matched is None:
                    for pat, label in fails:
                        m = pat.search(text, window_start)
                        if m:
                            # report the whole line: read on until it ends (briefly)
                            failed = (label, m.start())
                            deadline = min(deadline, time.monotonic() + 2.0)
                            break
                if failed is not None and "\n" in text[failed[1]:]:
                    raise failure(f"the guest reported a failure ({failed[0]!r})")
                if expect_re is not None and matched is None:
                    m = expect_re.search(text, window_start)
                    if m:
                        matched = m.group(0)
                        if not wait_exit:
                            break
        if failed is not None:
            raise failure(f"the guest reported a failure ({failed[0]!r})")
        if matched is None or wait_exit:
            try:
                rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise failure(f"timed out after {timeout:g} s waiting for QEMU to exit") from None
            if expect_re is not None and matched is None:
                raise failure(f"QEMU exited with status {rc} before {expect_re.pattern!r} "
                              f"appeared\nQEMU stderr:\n{stderr_text() or '(empty)'}\n"
                              f"command: {cmdline}")
            if rc != 0:
                raise failure(f"QEMU exited with status {rc}\nQEMU stderr:\n"
                              f"{stderr_text() or '(empty)'}\ncommand: {cmdline}")
    finally:
        kill_group(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    return BootResult(matched, time.monotonic() - start, _tail(text), proc.returncode, text)
