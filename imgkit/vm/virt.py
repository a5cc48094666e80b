"""Run one command as root in a throwaway VM that sees only one host directory.

The VM is a kernel booted directly by QEMU (the uncompressed ``vmlinux`` through its PVH
entry point, no firmware) with a tiny initramfs: a static busybox, the modules 9p and
virtio need, and ``imgkit/data/virt-init.sh`` as ``/init``. That initramfs is built once
per kernel / module list / init script / busybox and cached; each run only writes a few
hundred bytes: a small uncompressed cpio (``/imgkit-run/conf`` and ``/imgkit-run/env``)
placed in front of a copy of the cached one. The kernel unpacks concatenated archives,
so the command line reaches the guest byte for byte as shell-quoted words in a file,
never through the kernel command line.

The host directory is shared over 9p (``security_model=none``: rootless, and files the
guest creates belong to the invoking user; run by root, ``mapped-xattr``, so that the guest
cannot make setuid-root files or device nodes on the host: see
:func:`imgkit.vm.qemu.share_security_model`). The guest talks back over serial ports wired
to Unix sockets: ttyS1 is the command's stdout, ttyS2 its stderr, ttyS3 a control channel
(start, not found, exit status), ttyS0 the kernel console, kept only for error reports.
Serial ports are built into the kernel (no module, no discovery), and closing a serial tty
waits until the host has every byte, so nothing is lost to the power-off.

QEMU runs in its own session and is killed on every way out of :func:`run_vm`, including
``KeyboardInterrupt``; the kernel kills it too should this process die
(``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import selectors
import shlex
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import IO

from imgkit import tools
from imgkit.atomic import atomic_open
from imgkit.errors import BootError, ImgkitError, InputError, ToolError
from imgkit.tree import BytesBlob, Entry, Kind, Tree
from imgkit.vm import kernel as kernels
from imgkit.vm import qemu

#: Modules for the 9p share over virtio-pci (dependencies are resolved from the kernel).
BASE_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
#: Extra modules loaded only when a root image is attached.
IMAGE_MODULES = ("virtio_blk", "ext4")
#: Kernel command line: console on ttyS0 for error reports only, quiet, reboot at once on a
#: panic (``-no-reboot`` turns that into QEMU exiting), no probing of hardware the VM does
#: not have. ``rodata=off`` skips the W+X page-table walk and ``mitigations=off`` the
#: speculation workarounds: together about 0.3 s under TCG, and the guest runs nothing
#: but the one command, as root, anyway.
APPEND = ("console=ttyS0 quiet panic=-1 rdinit=/init 8250.nr_uarts=4 "
          "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests "
          "random.trust_cpu=on tsc=reliable no_timer_check noreplace-smp "
          "rodata=off mitigations=off")
#: Under TCG, QEMU's ``max`` CPU without 5-level paging: every feature a program may
#: probe for, but page walks one level shorter (about 0.2 s of boot).
TCG_CPU = "max,la57=off"
SHARE_TAG = "work"
TIMEOUT_STATUS = 124
NOT_FOUND_STATUS = 127
_FORMAT = 1  # bump when the layout of the cached initramfs changes
_CTL_RE = re.compile(rb"^IMGKIT-VIRT-(START|NOTFOUND|EXIT|ERROR)(?: (.*))?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class VirtSpec:
    """One command to run: ``command`` (argv, run in the share's root), the host directory
    to share (``workdir``, default: the current directory), whether the share is read-only,
    an optional root ``image`` (raw or qcow2 disk, or a bare ext4 filesystem), guest memory
    in MiB, CPUs, extra environment, a timeout in seconds (``None``: none), a kernel
    (``None``: see :func:`select_kernel`) and the directory the command starts in (``cwd``,
    default the share, ``/work``; a container image's ``WorkingDir`` for its own command)."""

    command: tuple[str, ...]
    workdir: str | None = None
    share_ro: bool = False
    image: str | None = None
    memory: int = 512
    cpus: int = 1
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    kernel: str | None = None
    cwd: str | None = None


@dataclass(frozen=True)
class Prepared:
    """What to boot: the kernel file QEMU loads (a ``vmlinux`` when one could be extracted),
    the cached initramfs, the kernel it was built for, and whether the cache already had it."""

    boot_kernel: str
    initramfs: str
    kernel: kernels.KernelInfo
    cache_hit: bool


@dataclass
class VirtResult:
    """How a run ended. ``status`` is the command's exit status, ``124`` on timeout.
    ``started`` is seconds from QEMU's start to the command's start (``None`` if it never
    started); ``elapsed`` the whole run; ``console`` the end of the kernel console."""

    status: int
    timed_out: bool = False
    command_not_found: bool = False
    started: float | None = None
    elapsed: float = 0.0
    console: str = field(default="", repr=False)
    argv: list[str] = field(default_factory=list, repr=False)


# -- kernel ----------------------------------------------------------------------------------
def select_kernel(path: str | os.PathLike | None = None, *,
                  cache_dir: str | os.PathLike | None = None) -> kernels.KernelInfo:
    """The kernel to boot: ``path`` if given, else the host's if readable, else Debian's.

    A Debian kernel already in the cache is used as is (asking apt for a newer one takes
    seconds, and start-up time is the point); otherwise one is downloaded once.
    """
    if path is not None:
        return kernels.find_kernel(path)
    host = kernels.host_kernel()
    if host is not None and host.moddir is not None:
        return host
    root = kernels.cache_root(cache_dir)
    cached = kernels.any_cached_kernel(root)
    if cached is not None:
        return cached
    try:
        return kernels.fetch_debian_kernel(cache_dir)
    except ToolError as exc:
        raise ToolError(
            f"no kernel to boot: /boot/vmlinuz-{os.uname().release} is not readable and "
            f"Debian's kernel could not be downloaded ({exc})",
            hint="pass --kernel PATH (a vmlinuz or vmlinux; its modules are looked for in "
                 "ROOT/lib/modules/VERSION), or run 'apt-get update' so imgkit can fetch "
                 "linux-image-amd64 into its cache (no root needed)") from exc


# -- cached initramfs ------------------------------------------------------------------------
def init_script() -> bytes:
    """The VM's ``/init`` as shipped in the package (``imgkit/data/virt-init.sh``)."""
    return resources.files("imgkit").joinpath("data/virt-init.sh").read_bytes()


def _stat_id(path: str) -> list:
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


def _cache_dir(cache_dir: str | os.PathLike | None) -> str:
    """``CACHE/virt``, shared between users when the cache is (mode 1777), else private."""
    root = kernels.cache_root(cache_dir)
    path = os.path.join(root, "virt")
    with contextlib.suppress(OSError):
        os.makedirs(path, exist_ok=True)
        if os.stat(path).st_uid == os.getuid():
            os.chmod(path, 0o1777)
    if os.access(path, os.W_OK | os.X_OK):
        return path
    path = os.path.join(tempfile.gettempdir(), f"imgkit-cache-{os.getuid()}", "virt")
    os.makedirs(path, exist_ok=True)
    return path


def cache_key(kinfo: kernels.KernelInfo, busybox: str, compress: str) -> str:
    """What the cached initramfs depends on: the kernel and its modules directory (by path,
    size and modification time: cheap, and enough to notice a changed file), the module
    names, the init script's bytes, the busybox binary and the compression."""
    material = {
        "format": _FORMAT,
        "kernel": _stat_id(kinfo.vmlinuz),
        "moddir": _stat_id(kinfo.moddir) if kinfo.moddir else None,
        "modules": [BASE_MODULES, IMAGE_MODULES],
        "init": hashlib.sha256(init_script()).hexdigest(),
        "busybox": _stat_id(busybox),
        "compress": compress,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def initramfs_tree(kinfo: kernels.KernelInfo, busybox: str = "/bin/busybox") -> Tree:
    """The VM's initramfs: busybox, the virt ``/init``, and the modules for 9p (loaded at
    every boot) and for a virtio-blk ext4 root (loaded only with an image)."""
    from imgkit.vm import guest_init as initrd_init
    from imgkit.vm import kmod

    base: list = []
    extra: list = []
    if kinfo.moddir is not None:
        base = kmod.resolve_modules(kinfo.moddir, BASE_MODULES)
        names = {m.name for m in base}
        extra = [m for m in kmod.resolve_modules(kinfo.moddir, BASE_MODULES + IMAGE_MODULES)
                 if m.name not in names]
    tree = initrd_init.busybox_init_tree(busybox, base + extra, kinfo.moddir)
    tree.add(Entry("init", Kind.FILE, mode=0o755, data=BytesBlob(init_script()),
                   origin="imgkit/data/virt-init.sh"))
    tree.add(Entry("work", Kind.DIR, mode=0o755))
    if kinfo.moddir is not None:
        version = os.path.basename(os.path.realpath(kinfo.moddir))

        def listing(mods: list) -> bytes:
            return "".join(f"/lib/modules/{version}/{m.plain_path}\n" for m in mods).encode()
        tree.add(Entry("etc/imgkit/modules", Kind.FILE, mode=0o644, data=BytesBlob(listing(base)),
                       origin="imgkit.vm.virt"))
        tree.add(Entry("etc/imgkit/modules-image", Kind.FILE, mode=0o644,
                       data=BytesBlob(listing(extra)), origin="imgkit.vm.virt"))
    return tree


def prepare(kernel: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
            busybox: str = "/bin/busybox", compress: str = "none") -> Prepared:
    """Pick the kernel, extract its ``vmlinux`` and build the initramfs, all cached.

    ``compress="none"`` is the default because the guest then only copies the archive:
    under TCG, decompressing even a few MiB costs more than QEMU loading a bigger file.
    """
    from imgkit.archives import write_initramfs

    kinfo = select_kernel(kernel, cache_dir=cache_dir)
    if not os.path.exists(busybox):
        raise ToolError(f"static busybox {busybox} not found",
                        hint=f"install it: apt-get install {tools.PACKAGES['busybox']}")
    key = cache_key(kinfo, busybox, compress)
    base = os.path.join(_cache_dir(cache_dir), key)
    path = base + ".cpio" + ("" if compress == "none" else f".{compress}")
    # the vmlinux's path is remembered beside the archive: finding it again means reading
    # and hashing the whole bzImage, a noticeable part of a warm start
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with open(base + ".json", encoding="utf-8") as f:
            boot_kernel = json.load(f)["boot_kernel"]
        if os.access(path, os.R_OK) and os.access(boot_kernel, os.R_OK):
            return Prepared(boot_kernel, path, kinfo, True)
    try:
        boot_kernel = kernels.extract_vmlinux(kinfo.vmlinuz, cache_dir)
    except ImgkitError:
        boot_kernel = kinfo.vmlinuz  # not a bzImage we can unpack: QEMU boots it as is
    hit = os.path.exists(path)
    if not hit:
        write_initramfs(initramfs_tree(kinfo, busybox), path, compress=compress)
        _prune(os.path.dirname(path))
    with contextlib.suppress(OSError):
        with atomic_open(base + ".json") as f:
            f.write(json.dumps({"boot_kernel": boot_kernel}).encode())
    return Prepared(boot_kernel, path, kinfo, hit)


def _prune(directory: str, keep: int = 12) -> None:
    """Drop the least recently built archives beyond ``keep`` (each kernel file, by path,
    gets its own), leaving other users' files alone."""
    entries = []
    for name in os.listdir(directory):
        if name.endswith(".tmp"):
            continue
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(directory, name))
            if name.split(".")[0] and st.st_uid == os.getuid():
                entries.append((st.st_mtime, name))
    keys = sorted({(t, n.split(".")[0]) for t, n in entries}, reverse=True)
    stale = {k for _, k in keys[keep:]}
    for _, name in entries:
        if name.split(".")[0] in stale:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


# -- per-run archive -------------------------------------------------------------------------
def _quote(word: str) -> str:
    """Single-quote ``word`` for the guest's shell; bytes pass unchanged (surrogateescape)."""
    return shlex.quote(word) if word else "''"


def run_config(spec: VirtSpec) -> tuple[bytes, bytes]:
    """``/imgkit-run/conf`` and ``/imgkit-run/env`` for ``spec`` (shell, every word quoted)."""
    if not spec.command:
        raise InputError("no command to run", hint="e.g. imgkit virt -- make test")
    conf = "set -- " + " ".join(_quote(a) for a in spec.command) + "\n"
    conf += f"IMGKIT_RO={int(spec.share_ro)}\nIMGKIT_IMAGE={int(spec.image is not None)}\n"
    conf += f"IMGKIT_CWD={_quote(spec.cwd or '/work')}\n"
    env = ""
    for name, value in spec.env:
        if not _ENV_NAME.match(name):
            raise InputError(f"environment variable name {name!r}: expected letters, digits "
                             "and underscores, not starting with a digit")
        env += f"export {_quote(f'{name}={value}')}\n"
    enc = lambda s: s.encode("utf-8", "surrogateescape")  # noqa: E731
    return enc(conf), enc(env)


def write_run_initrd(spec: VirtSpec, cached: str, dest: str) -> None:
    """``dest`` = a small uncompressed cpio with the run's settings, then the cached
    initramfs. The uncompressed part goes first (as early microcode does): the kernel's
    unpacker reads it, skips the zero padding and goes on with the compressed part."""
    from imgkit.formats.cpio import write_cpio

    conf, env = run_config(spec)
    tree = Tree()
    tree.add(Entry("imgkit-run", Kind.DIR, mode=0o755))
    tree.add(Entry("imgkit-run/conf", Kind.FILE, mode=0o644, data=BytesBlob(conf)))
    tree.add(Entry("imgkit-run/env", Kind.FILE, mode=0o644, data=BytesBlob(env)))
    with open(dest, "wb") as out:
        n = write_cpio(tree, out)
        out.write(b"\0" * (-n % 512))
        out.flush()
        with open(cached, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            copied = 0
            while copied < size:
                try:
                    k = os.copy_file_range(src.fileno(), out.fileno(), size - copied)
                except OSError:
                    k = os.sendfile(out.fileno(), src.fileno(), None, size - copied)
                if k == 0:
                    raise BootError(f"{cached} shrank while being copied")
                copied += k


# -- QEMU ------------------------------------------------------------------------------------
def _image_format(path: str) -> str:
    """``qcow2`` or ``raw``; a qcow2 naming a backing file, data file or URL is refused."""
    from imgkit.detect import sniff_path
    from imgkit.formats import qcow2

    if sniff_path(path).format != "qcow2":
        return "raw"
    qcow2.check_self_contained(path)
    return "qcow2"


def vm_argv(spec: VirtSpec, prepared: Prepared, initrd: str, sockets: dict[str, str], *,
            accel: str, qemu_bin: str = qemu.QEMU) -> list[str]:
    """The QEMU command line: direct boot, no firmware or default devices, ttyS0 on QEMU's
    stdout, ttyS1-3 on the Unix sockets ``sockets['out'|'err'|'ctl']``, the share, and the
    image (``snapshot=on``: the guest may write, the image file never changes)."""
    workdir = os.path.abspath(spec.workdir or os.getcwd())
    extra: list[str] = ["-cpu", TCG_CPU] if accel == "tcg" else []  # the last -cpu wins
    for name in ("out", "err", "ctl"):
        extra += ["-chardev", f"socket,id={name},path={qemu.escape_option(sockets[name])}",
                  "-serial", f"chardev:{name}"]
    if spec.image is not None:
        extra += ["-drive", f"file={qemu.escape_option(spec.image)},format={_image_format(spec.image)},"
                            "if=virtio,snapshot=on"]
    vm = qemu.QemuSpec(kernel=prepared.boot_kernel, initrd=initrd, append=APPEND,
                       memory=spec.memory, cpus=spec.cpus, display="serial",
                       shares=(qemu.Share(workdir, SHARE_TAG, spec.share_ro),),
                       extra_args=tuple(extra))
    return qemu.build_argv(vm, accel=accel, qemu=qemu_bin)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fileno(target: IO | int) -> int:
    return target if isinstance(target, int) else target.fileno()


def run_vm(spec: VirtSpec, *, stdout: IO | int = 1, stderr: IO | int = 2,
           console: IO | None = None, prepared: Prepared | None = None,
           cache_dir: str | os.PathLike | None = None, accel: str | None = None) -> VirtResult:
    """Boot the VM, run ``spec.command`` in the shared directory, power off.

    The command's stdout and stderr are copied as they arrive to the file descriptors (or
    binary files) ``stdout`` and ``stderr``; the kernel console to ``console`` (a text
    stream) if given. Returns the command's exit status, or 124 on timeout (QEMU killed).
    Raises :class:`BootError` with the console's last lines when the VM does not get as far
    as running the command, :class:`ToolError` without QEMU.
    """
    workdir = os.path.abspath(spec.workdir or os.getcwd())
    if not os.path.isdir(workdir):
        raise InputError(f"directory to share {workdir} does not exist")
    if spec.image is not None and not os.path.isfile(spec.image):
        raise InputError(f"image {spec.image} does not exist",
                         hint="make one with 'imgkit build' (a raw disk or an ext4 image)")
    if spec.timeout is not None and spec.timeout <= 0:
        raise InputError(f"timeout {spec.timeout}: expected a positive number of seconds")
    qemu_bin = tools.which(qemu.QEMU)
    run_config(spec)  # validate before any expensive step
    prepared = prepared or prepare(spec.kernel, cache_dir=cache_dir)
    accel = accel or qemu.choose_accel()
    # Unix socket paths must stay under 108 bytes: fall back to /tmp for a long $TMPDIR
    tmp_parent = None if len(tempfile.gettempdir()) < 60 else "/tmp"
    with tempfile.TemporaryDirectory(prefix="imgkit-virt-", dir=tmp_parent) as tmp:
        initrd = os.path.join(tmp, "initrd")
        write_run_initrd(spec, prepared.initramfs, initrd)
        listeners: dict[str, socket.socket] = {}
        try:
            paths = {}
            for name in ("out", "err", "ctl"):
                paths[name] = os.path.join(tmp, name)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(paths[name])
                s.listen(1)
                listeners[name] = s
            argv = vm_argv(spec, prepared, initrd, paths, accel=accel, qemu_bin=qemu_bin)
            with open(os.path.join(tmp, "qemu.stderr"), "w+b") as err:
                return _supervise(argv, spec, listeners, err, _fileno(stdout), _fileno(stderr),
                                  console)
        finally:
            for s in listeners.values():
                s.close()


def _supervise(argv: list[str], spec: VirtSpec, listeners: dict[str, socket.socket],
               err: IO[bytes], out_fd: int, err_fd: int, console: IO | None) -> VirtResult:
    start = time.monotonic()
    deadline = start + spec.timeout if spec.timeout else None
    proc = tools.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                       kill_with_parent=True)
    log = bytearray()
    ctl_buf = bytearray()
    started: float | None = None
    status: int | None = None
    not_found = False
    guest_error: str | None = None
    timed_out = False
    conns: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "console")
        for name, s in listeners.items():
            sel.register(s, selectors.EVENT_READ, ("listen", name))
        grace: float | None = None  # after the exit status: how long QEMU may take to stop
        while sel.get_map():
            now = time.monotonic()
            limits = [t for t in (deadline, grace) if t is not None]
            if limits and now >= min(limits):
                if grace is not None and now >= grace:
                    break  # status known; QEMU did not power off: it is killed below
                timed_out = True
                break
            wait = min([0.5] + [t - now for t in limits])
            for key, _ in sel.select(timeout=wait):
                what = key.data
                if isinstance(what, tuple) and what[0] == "listen":
                    conn, _ = key.fileobj.accept()
                    conn.setblocking(False)
                    sel.unregister(key.fileobj)
                    sel.register(conn, selectors.EVENT_READ, what[1])
                    conns.append(conn)
                    continue
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fileobj)
                    if what == "console":  # QEMU is gone: no connection will come
                        for k in list(sel.get_map().values()):
                            if isinstance(k.data, tuple):
                                sel.unregister(k.fileobj)
                    continue
                if what == "out":
                    _write_all(out_fd, chunk)
                elif what == "err":
                    _write_all(err_fd, chunk)
                elif what == "console":
                    log += chunk
                    if len(log) > 1 << 20:
                        del log[: len(log) - (256 << 10)]
                    if console is not None:
                        console.write(chunk.decode("utf-8", "replace").replace("\r", ""))
                        console.flush()
                else:
                    ctl_buf += chunk
                    while b"\n" in ctl_buf:
                        line, _, rest = bytes(ctl_buf).partition(b"\n")
                        ctl_buf[:] = rest
                        m = _CTL_RE.match(line.rstrip(b"\r"))
                        if not m:
                            continue
                        kind, arg = m.group(1), (m.group(2) or b"").decode("utf-8", "replace")
                        if kind == b"START":
                            started = time.monotonic() - start
                        elif kind == b"NOTFOUND":
                            not_found = True
                        elif kind == b"ERROR":
                            guest_error = arg
                        elif kind == b"EXIT" and arg.isdigit():
                            status = int(arg)
                            grace = time.monotonic() + 10.0
    finally:
        qemu.kill_group(proc)
        sel.close()
        for c in conns:
            c.close()
        if proc.stdout is not None:
            proc.stdout.close()
    elapsed = time.monotonic() - start
    tail = _tail(log)
    if timed_out:
        return VirtResult(TIMEOUT_STATUS, timed_out=True, started=started, elapsed=elapsed,
                          console=tail, argv=argv)
    if status is not None:
        return VirtResult(status, command_not_found=not_found and status == NOT_FOUND_STATUS,
                          started=started, elapsed=elapsed, console=tail, argv=argv)
    err.flush()
    err.seek(0)
    qemu_err = _tail(err.read(), 15)
    what = (f"the VM reported an error: {guest_error}" if guest_error else
            "the VM stopped before the command finished" if started is not None else
            "the VM failed to boot")
    raise BootError(f"{what} (QEMU exit status {proc.returncode})\n"
                    f"--- last console lines ---\n{tail or '(no output)'}"
                    + (f"\n--- QEMU stderr ---\n{qemu_err}" if qemu_err else ""),
                    hint=f"QEMU command: {shlex.join(argv)}")


def _tail(data: bytes | bytearray, lines: int = 25) -> str:
    text = bytes(data).decode("utf-8", "replace").replace("\r", "")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
