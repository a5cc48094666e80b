"""A real Debian bookworm root, from debootstrap, built by imgkit and booted to ``login:``.

The root is made once by ``debootstrap`` (as root: it chroots and runs maintainer scripts)
and cached as a tar in ``$IMGKIT_CACHE`` keyed by its package list, so the unprivileged run
of the suite and later runs reuse it. Everything after that runs as whoever runs the test:
imgkit builds a GPT disk from the tar (a UKI with the tree's own kernel on an ESP, syslinux
on the same ESP for BIOS, an ext4 root), the ext4 is compared path by path with the tar
through ``bsdtar`` and ``debugfs``, and the disk boots under OVMF (raw) and SeaBIOS (qcow2).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import pytest

SUITE = "bookworm"
PACKAGES = ("systemd-sysv", "udev", "linux-image-amd64", "kmod", "iproute2", "passwd",
            "iputils-ping")
MARKER = "imgkit-debian-check"


def debian_mirror() -> str:
    """The Debian mirror apt uses here (the first ``URIs:`` of debian.sources)."""
    for path in ("/etc/apt/sources.list.d/debian.sources",):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("URIs:"):
                        return line.split()[1]
        except OSError:
            pass
    return "http://deb.debian.org/debian"


def cached_root_tar() -> str:
    """Where the tar of the root for :data:`PACKAGES` is cached."""
    cache = os.environ.get("IMGKIT_CACHE", "/tmp/imgkit-cache")
    key = hashlib.sha256("\n".join((SUITE, "minbase", *sorted(PACKAGES))).encode()).hexdigest()[:16]
    return os.path.join(cache, "debian-roots", f"{SUITE}-minbase-{key}.tar")


def make_root_tar() -> str:
    """The cached root tar, made with debootstrap when missing (root only, else a skip)."""
    tar = cached_root_tar()
    if os.path.exists(tar):
        return tar
    if os.getuid() != 0:
        pytest.skip("privilege: debootstrap needs root and no cached root tar exists "
                    f"({tar}); run the suite as root once")
    if shutil.which("debootstrap") is None:
        raise AssertionError("debootstrap is missing (packages.txt lists it)")
    os.makedirs(os.path.dirname(tar), exist_ok=True)
    os.chmod(os.path.dirname(tar), 0o755)
    work = tempfile.mkdtemp(prefix="debootstrap-", dir=os.path.dirname(tar))
    try:
        root = os.path.join(work, "root")
        subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                        SUITE, root, debian_mirror()], check=True, capture_output=True)
        part = os.path.join(work, "root.tar")
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
                        "-S", "-cpf", part, "."], cwd=root, check=True)
        os.chmod(part, 0o644)   # the unprivileged run reads it too
        os.replace(part, tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar
