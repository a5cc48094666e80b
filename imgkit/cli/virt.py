"""``imgkit virt [OPTIONS] -- COMMAND [ARGS...]``: run a command as root in a throwaway VM
that sees only the current directory (mounted on /work).

The exit status is the command's; 124 on ``--timeout`` (as ``timeout(1)``), 127 when the
command is not found in the VM, 130 on Ctrl-C (143 on SIGTERM), 1 when the VM cannot be
started. ``main`` parses it on its own (``python -m imgkit.cli.virt -- COMMAND``), for
scripts that want only this command.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from imgkit.cli.common import guarded, positive_seconds
from imgkit.errors import InputError

DESCRIPTION = ("Boot a minimal VM (cached kernel and initramfs), mount the current directory "
               "on /work over 9p, run COMMAND there as root with its stdout, stderr and exit "
               "status passed back, power off. Exit status: the command's; 124 on timeout, "
               "127 if not found, 130 on Ctrl-C.")

_MEM = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.I)


def parse_memory(text: str) -> int:
    """``512``, ``512M``, ``2G``, ``1GiB`` -> MiB (a bare number is MiB, as QEMU's ``-m``)."""
    m = _MEM.match(text.strip())
    if not m:
        raise InputError(f"--mem {text!r}: expected a size such as 512M or 2G")
    n, unit = int(m.group(1)), m.group(2).upper()
    mib = {"": n, "K": n // 1024, "M": n, "G": n * 1024, "T": n * 1024 * 1024}[unit]
    if mib < 64:
        raise InputError(f"--mem {text!r}: expected at least 64M")
    return mib


def _env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise InputError(f"--env {text!r}: expected NAME=VALUE")
    return name, value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--share-ro", action="store_true",
                   help="share the current directory read-only")
    p.add_argument("--image", metavar="IMAGE",
                   help="run the command in this root filesystem (a raw or qcow2 disk with an "
                        "ext4 partition, or an ext4 image, e.g. from 'imgkit build'; or a "
                        "container image, oci:DIR[:TAG], oci-archive:FILE or "
                        "docker-archive:FILE, whose Entrypoint/Cmd is the default command, run "
                        "in its WorkingDir, with its Env); the image is never modified")
    p.add_argument("--mem", default="512M", metavar="SIZE", help="guest memory (default 512M)")
    p.add_argument("--cpus", type=int, default=1, metavar="N", help="guest CPUs (default 1)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set an environment variable for the command (repeatable)")
    p.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                   help="kill the VM after this long and exit with status 124")
    p.add_argument("--kernel", metavar="PATH",
                   help="kernel to boot (default: the host's if readable, else Debian's, "
                        "downloaded once into the cache)")
    p.add_argument("--console", action="store_true",
                   help="copy the VM's kernel console to stderr (for debugging boots)")
    p.add_argument("--timing", action="store_true",
                   help="print boot and run times on stderr")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                   help="the command to run in /work (the shared directory)")


def run(args: argparse.Namespace) -> int:
    """Run the VM; returns the exit status (handles Ctrl-C and timeouts itself)."""
    import tempfile

    from imgkit import scratch
    from imgkit.vm import container, virt

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.cpus < 1:
        raise InputError(f"--cpus {args.cpus}: expected at least 1")
    image, env, cwd = args.image, tuple(_env(e) for e in args.env), None
    if image is not None and container.is_container_image(image):
        root = container.container_root(image, scratch.current() or tempfile.gettempdir())
        image, env = root.image, root.env + env
        if not command:
            command, cwd = list(root.command), root.working_dir or None
        if not command:
            raise InputError(f"no command given, and {args.image} names none (no Entrypoint "
                             "or Cmd in its config)",
                             hint="usage: imgkit virt --image IMAGE -- COMMAND [ARGS...]")
    if not command:
        raise InputError("no command given",
                         hint="usage: imgkit virt [OPTIONS] -- COMMAND [ARGS...]")
    spec = virt.VirtSpec(command=tuple(command), share_ro=args.share_ro, image=image,
                         memory=parse_memory(args.mem), cpus=args.cpus, env=env,
                         timeout=args.timeout, kernel=args.kernel, cwd=cwd)
    # SIGTERM (kill, a CI runner's cancel) ends the run like Ctrl-C: QEMU is killed on the way
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        result = virt.run_vm(spec, stdout=sys.stdout.fileno(), stderr=sys.stderr.fileno(),
                             console=sys.stderr if args.console else None)
    except KeyboardInterrupt as exc:
        print("imgkit virt: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, old)
    if result.command_not_found:
        print(f"imgkit virt: {command[0]}: not found", file=sys.stderr)
    if result.timed_out:
        where = "" if result.started is not None else " (the VM had not finished booting)"
        print(f"imgkit virt: timed out after {args.timeout:g} s{where}", file=sys.stderr)
    if args.timing:
        started = "-" if result.started is None else f"{result.started:.2f} s"
        print(f"imgkit virt: command started after {started}, VM ran {result.elapsed:.2f} s",
              file=sys.stderr)
    return result.status


class _Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so QEMU is killed on the way out."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """``imgkit virt`` on its own: parse ``argv`` (the arguments after ``virt``) and run."""
    p = argparse.ArgumentParser(prog="imgkit virt",
                                description="Run a command as root in a throwaway VM.")
    p.add_argument("--debug", action="store_true", help="tracebacks for errors")
    add_arguments(p)
    return guarded(run, p.parse_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
