"""``imgkit kernel fetch``: a Debian kernel, downloaded once without root, and its paths."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

DESCRIPTION = ("Fetch a Debian kernel package without root (apt-get download + dpkg -x), "
               "cached in $IMGKIT_CACHE or ~/.cache/imgkit, and print its paths.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--package", default="linux-image-amd64")
    p.add_argument("--vmlinux", action="store_true", help="also extract the uncompressed vmlinux")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
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
