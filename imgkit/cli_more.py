"""Subcommands beyond archives (build, run, inspect, kernel, virt), registered into the CLI."""
from __future__ import annotations

import argparse
import json
import sys
import time

from imgkit import cli
from imgkit.cli import _epoch, progress


def cmd_build(args: argparse.Namespace) -> int:
    from imgkit.build import build
    from imgkit.config import load_config

    started = time.monotonic()
    cfg = load_config(args.config)
    quiet = args.json or args.quiet
    result = build(cfg, args.output_dir, mtime=_epoch(args.mtime),
                   progress=None if quiet else progress, only=tuple(args.only))
    if args.json:
        print(json.dumps({"outputs": [{"kind": o.kind, "name": o.name, "path": o.path,
                                       "bytes": o.size, **o.details} for o in result.outputs],
                          "seconds": round(time.monotonic() - started, 3)}, indent=1))
    elif not args.quiet:
        progress(f"done in {time.monotonic() - started:.1f} s")
    return 0


def _register_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build the images a TOML config declares",
                       description="Build trees, initramfs archives, UKIs, filesystems, a disk "
                                   "and/or an ISO as declared in a TOML config file (see README).")
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("-O", "--output-dir", default=".", metavar="DIR",
                   help="where declared outputs go (default: current directory)")
    p.add_argument("--only", action="append", default=[], metavar="ARTIFACT",
                   help="build only this: disk, iso, initramfs:NAME, uki:NAME, fs:NAME")
    p.add_argument("--mtime", metavar="EPOCH",
                   help="clamp times to EPOCH (default: config 'mtime', else $SOURCE_DATE_EPOCH)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("--json", action="store_true", help="print a JSON list of outputs on stdout")
    p.set_defaults(func=cmd_build)


cli._EXTRA_PARSERS.append(_register_build)


# --------------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    import tempfile

    from imgkit.vm.qemu import Drive, QemuSpec, boot, build_argv, choose_accel
    from imgkit.vm.runimage import spec_for
    from imgkit.errors import BootError, InputError

    extra_drives = tuple(Drive(d) for d in args.drive)
    extra = tuple(a for item in args.qemu_arg for a in item.split())
    display = "gtk" if args.display == "gtk" else "serial"
    with tempfile.TemporaryDirectory(prefix="imgkit-run-") as work:
        if args.image:
            spec, kind = spec_for(args.image, firmware=args.firmware, memory=args.mem,
                                  cpus=args.cpus, display=display, extra_drives=extra_drives,
                                  extra_args=extra, initrd=args.initrd, append=args.append,
                                  workdir=work, snapshot=args.snapshot,
                                  iso_as_disk=args.iso_as_disk)
            progress(f"booting {args.image}: {kind.why}, {spec.firmware} firmware")
        elif args.kernel:
            spec = QemuSpec(kernel=args.kernel, initrd=args.initrd,
                            append=args.append or "console=ttyS0", drives=extra_drives,
                            memory=args.mem, cpus=args.cpus, display=display, extra_args=extra,
                            firmware=args.firmware or "bios")
        else:
            raise InputError("nothing to boot: give IMAGE or --kernel",
                             hint="imgkit run disk.img, or imgkit run --kernel vmlinuz --initrd initrd.zst")
        accel = choose_accel()
        if args.print_cmdline:
            from imgkit.vm.firmware import find_uefi
            uefi = find_uefi() if spec.firmware == "uefi" else None
            import shlex
            print(shlex.join(build_argv(spec, accel=accel, uefi=uefi,
                                        vars_path=uefi.vars_template if uefi else None)))
            return 0
        if args.expect is None and not (args.quiet or args.json) and sys.stdin.isatty():
            from imgkit.vm.qemu import run_interactive
            progress(f"QEMU ({accel}); serial console here: Ctrl-A X quits, Ctrl-A C is the "
                     "QEMU monitor")
            return run_interactive(spec, timeout=args.timeout, accel=accel)
        progress(f"QEMU ({accel}); " + ("waiting for " + repr(args.expect) if args.expect
                                        else "console below") + f", timeout {args.timeout:g} s")
        console = None if (args.quiet or args.json) else sys.stdout
        try:
            result = boot(spec, expect=args.expect, timeout=args.timeout, console=console,
                          accel=accel, wait_exit=args.expect is None)
        except BootError as exc:
            if args.quiet and getattr(exc, "log_tail", None):
                print(exc.log_tail, file=sys.stderr)
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


def _register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="boot a kernel, UKI, disk image or ISO in QEMU",
                       description="Boot a kernel (direct), a UKI, a disk image (raw/qcow2) or an "
                                   "ISO in QEMU with the right firmware; serial console on the "
                                   "terminal. With --expect, exit 0 once TEXT appears.")
    p.add_argument("image", nargs="?", metavar="IMAGE",
                   help="kernel, UKI, disk image or ISO (what it is is detected)")
    p.add_argument("--kernel", metavar="FILE", help="boot this kernel directly")
    p.add_argument("--initrd", metavar="FILE", help="initramfs for a direct kernel boot")
    p.add_argument("--append", metavar="CMDLINE", help="kernel command line (direct boot; "
                   "default console=ttyS0)")
    p.add_argument("--firmware", choices=["bios", "uefi"],
                   help="force SeaBIOS or OVMF (default: from the image)")
    p.add_argument("--display", choices=["serial", "gtk"], default="serial",
                   help="serial console on the terminal (default) or a GTK window")
    p.add_argument("--expect", metavar="TEXT", help="exit 0 as soon as TEXT is on the console")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
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
    p.set_defaults(func=cmd_run)


def cmd_kernel(args: argparse.Namespace) -> int:
    from imgkit.vm.kernel import extract_vmlinux, fetch_debian_kernel

    info = fetch_debian_kernel(package=args.package)
    data = {"vmlinuz": info.vmlinuz, "moddir": info.moddir, "version": info.version}
    if args.vmlinux:
        data["vmlinux"] = extract_vmlinux(info.vmlinuz)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        for k, v in data.items():
            print(f"{k}\t{v}")
    return 0


def _register_kernel(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernel", help="download (once) and show a Debian kernel for tests and VMs",
                       description="Fetch a Debian kernel package without root (apt-get "
                                   "download + dpkg -x), cached in $IMGKIT_CACHE or "
                                   "~/.cache/imgkit, and print its paths.")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--package", default="linux-image-amd64")
    p.add_argument("--vmlinux", action="store_true", help="also extract the uncompressed vmlinux")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_kernel)


cli._EXTRA_PARSERS.extend([_register_run, _register_kernel])

from imgkit import cli_inspect  # noqa: E402  (registers `inspect`)

cli._EXTRA_PARSERS.append(cli_inspect.register)

from imgkit import cli_virt  # noqa: E402  (registers `virt`)

cli._EXTRA_PARSERS.append(cli_virt.register)
