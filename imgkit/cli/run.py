"""``imgkit run IMAGE``: boot a kernel, UKI, disk image or ISO in QEMU, the serial console on
the terminal; with ``--expect TEXT``, exit 0 as soon as TEXT appears."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from imgkit.cli.common import positive_seconds, progress
from imgkit.errors import InputError

if TYPE_CHECKING:
    import argparse

    from imgkit.vm.qemu import QemuSpec

DESCRIPTION = ("Boot a kernel (direct), a UKI, a disk image (raw/qcow2) or an ISO in QEMU with "
               "the right firmware; serial console on the terminal. With --expect, exit 0 once "
               "TEXT appears. A pipe or file as standard input is typed into the serial "
               "console (printf 'root\\n' | imgkit run disk.img --expect '# ').")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", metavar="IMAGE",
                   help="kernel (multiboot ones too), UKI, disk image or ISO (what it is is "
                        "detected)")
    p.add_argument("--kernel", metavar="FILE", help="boot this kernel directly (a multiboot "
                   "kernel QEMU cannot load goes through GRUB)")
    p.add_argument("--initrd", metavar="FILE", help="initramfs for a direct kernel boot")
    p.add_argument("--module", action="append", default=[], metavar="'FILE ARGS'",
                   help="a module of a multiboot kernel (GNU Mach, Xen) and its command line; "
                        "repeatable")
    p.add_argument("--append", metavar="CMDLINE", help="kernel command line (direct boot; "
                   "default console=ttyS0)")
    p.add_argument("--firmware", choices=["bios", "uefi"],
                   help="force SeaBIOS or OVMF (default: from the image)")
    p.add_argument("--display", choices=["serial", "gtk"], default="serial",
                   help="serial console on the terminal (default) or a GTK window")
    p.add_argument("--expect", metavar="TEXT", help="exit 0 as soon as TEXT is on the console")
    p.add_argument("--timeout", type=positive_seconds, default=300.0, metavar="SECONDS",
                   help="give up (exit 1, console tail shown) after this long (default 300)")
    p.add_argument("--mem", type=int, default=512, metavar="MiB", help="guest memory (default 512)")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--drive", action="append", default=[], metavar="FILE",
                   help="attach another raw disk image (virtio); repeatable")
    p.add_argument("--qemu-arg", action="append", default=[], metavar="ARGS",
                   help="extra QEMU arguments, passed through (split on spaces)")
    p.add_argument("--snapshot", action="store_true",
                   help="discard the guest's writes (the image files stay unchanged)")
    p.add_argument("--iso-as-disk", action="store_true",
                   help="attach an ISO as a hard disk (as a USB stick would be) instead of a CD")
    p.add_argument("--quiet", action="store_true", help="do not copy the console to stdout")
    p.add_argument("--json", action="store_true",
                   help="no console; print the outcome (matched text, seconds) as JSON")
    p.add_argument("--print-cmdline", action="store_true",
                   help="print the QEMU command line instead of running it")


def qemu_spec(args: argparse.Namespace, workdir: str) -> QemuSpec:
    """What to boot: IMAGE (its kind detected) or ``--kernel``."""
    from imgkit.vm.qemu import Drive, QemuSpec
    from imgkit.vm.runimage import spec_for

    drives = tuple(Drive(d) for d in args.drive)
    extra = tuple(a for item in args.qemu_arg for a in item.split())
    display = "gtk" if args.display == "gtk" else "serial"
    kernel = args.kernel or (args.image if args.image and _is_multiboot(args.image) else None)
    if args.image and kernel != args.image:
        spec, kind = spec_for(args.image, firmware=args.firmware, memory=args.mem,
                              cpus=args.cpus, display=display, extra_drives=drives,
                              extra_args=extra, initrd=args.initrd, append=args.append,
                              workdir=workdir, snapshot=args.snapshot,
                              iso_as_disk=args.iso_as_disk)
        progress(f"booting {args.image}: {kind.why}, {spec.firmware} firmware")
        return spec
    if kernel:
        from imgkit import detect
        from imgkit.vm.runimage import multiboot_spec
        detect.regular_file(kernel, "--kernel")   # a FIFO or device would block
        if args.module and args.initrd:
            raise InputError("a multiboot kernel takes --module, not --initrd")
        multiboot = None if args.initrd else multiboot_spec(
            kernel, args.module, append=args.append, firmware=args.firmware,
            workdir=workdir, memory=args.mem, cpus=args.cpus, display=display,
            extra_drives=drives, extra_args=extra)
        if multiboot is not None:
            progress(f"booting {kernel}: multiboot kernel"
                     + (" through GRUB" if multiboot.kernel is None else ""))
            return multiboot
        check_kernel(kernel)
        return QemuSpec(kernel=kernel, initrd=args.initrd,
                        append=args.append or "console=ttyS0", drives=drives, memory=args.mem,
                        cpus=args.cpus, display=display, extra_args=extra,
                        firmware=args.firmware or "bios")
    raise InputError("nothing to boot: give IMAGE or --kernel",
                     hint="imgkit run disk.img, or imgkit run --kernel vmlinuz --initrd initrd.zst")


def _is_multiboot(path: str) -> bool:
    """IMAGE is a multiboot kernel (GNU Mach, Xen): booted as ``--kernel`` would be."""
    from imgkit import detect
    try:
        return detect.sniff_path(detect.regular_file(path)).is_multiboot
    except (OSError, InputError):
        return False   # spec_for says what is wrong with it


def check_kernel(path: str) -> None:
    """``--kernel`` must be a kernel QEMU boots directly; otherwise say what the file is
    rather than boot it and wait for the whole timeout."""
    from imgkit import detect

    kind, what = detect.kernel_kind(detect.regular_file(path, "--kernel"))
    if kind is None:
        raise InputError(f"--kernel {path}: not a kernel QEMU can boot directly: it is {what}",
                         hint="give a Linux bzImage (vmlinuz), an ELF vmlinux or a multiboot "
                              "kernel; boot disks, ISOs and UKIs as IMAGE")


def print_cmdline(spec: QemuSpec, accel: str) -> None:
    """The QEMU command line a run would use. A UEFI run writes to a copy of OVMF's
    variable store made for that run (never the system's template): the line names that
    copy by a placeholder, and stderr says how to make one."""
    import shlex

    from imgkit.vm.firmware import find_uefi
    from imgkit.vm.qemu import build_argv

    uefi = find_uefi() if spec.firmware == "uefi" else None
    vars_path = None
    if uefi is not None and spec.uefi_vars is None:
        vars_path = vars_placeholder(uefi.vars_template)
        progress(f"{vars_path}: each run copies {uefi.vars_template} to a file of its own "
                 f"and gives QEMU that copy; to run this line, cp {uefi.vars_template} "
                 "OVMF_VARS.fd and put its path there")
    print(shlex.join(build_argv(spec, accel=accel, uefi=uefi, vars_path=vars_path)))


def vars_placeholder(template: str) -> str:
    """What ``--print-cmdline`` shows in place of the per-run copy of ``template``."""
    import os
    return f"COPY-OF-{os.path.basename(template)}"


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:   # closed
        return False


def piped_stdin() -> int | None:
    """Our standard input when it is a pipe or a regular file (``echo root | imgkit run``,
    ``imgkit run ... < keys``): QEMU reads it as the serial console's input. A terminal
    (without ``--expect``) gets the interactive console instead; anything else (``/dev/null``,
    no stdin at all) gives the guest no input."""
    import os
    import stat
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return None
    return 0 if stat.S_ISFIFO(mode) or stat.S_ISREG(mode) else None


def run(args: argparse.Namespace) -> int:
    import tempfile

    from imgkit.errors import BootError
    from imgkit.vm.qemu import boot, choose_accel, run_interactive

    with tempfile.TemporaryDirectory(prefix="imgkit-run-") as work:
        spec = qemu_spec(args, work)
        accel = choose_accel()
        if args.print_cmdline:
            print_cmdline(spec, accel)
            return 0
        if args.expect is None and not (args.quiet or args.json) and _stdin_is_tty():
            progress(f"QEMU ({accel}); serial console here: Ctrl-A X quits, Ctrl-A C is the "
                     "QEMU monitor")
            return run_interactive(spec, timeout=args.timeout, accel=accel)
        progress(f"QEMU ({accel}); " + ("waiting for " + repr(args.expect) if args.expect
                                        else "console below") + f", timeout {args.timeout:g} s")
        console = None if (args.quiet or args.json) else sys.stdout
        try:
            result = boot(spec, expect=args.expect, timeout=args.timeout, console=console,
                          accel=accel, wait_exit=args.expect is None, stdin=piped_stdin())
        except BootError as exc:
            tail = getattr(exc, "log_tail", None)
            if args.quiet and tail:
                print(tail, file=sys.stderr)
            raise
    if args.json:
        print(json.dumps({"matched": result.matched, "seconds": round(result.elapsed, 3),
                          "returncode": result.returncode, "firmware": spec.firmware,
                          "accel": accel}))
    elif args.expect:
        if console is not None:
            print(flush=True)  # the console's last line may have no newline yet
        progress(f"saw {result.matched!r} after {result.elapsed:.1f} s")
    return 0
