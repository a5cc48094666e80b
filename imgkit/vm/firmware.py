"""Finding UEFI firmware (OVMF) for QEMU.

QEMU's firmware descriptors (``/usr/share/qemu/firmware/*.json``, the interop format
libvirt uses) say which code/vars pair fits which machine and features; reading them
keeps us right when distributions move files. Known Debian/Fedora paths are the fallback.
We want plain UEFI: no Secure Boot (it would refuse our unsigned images), no SMM (which
needs the q35 machine and extra QEMU options).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

from imgkit.errors import ToolError

DESCRIPTOR_DIRS = ("/etc/qemu/firmware", "/usr/share/qemu/firmware")

#: (code, vars template) pairs tried when no descriptor fits, best first.
KNOWN_PATHS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"),
    ("/usr/share/qemu/ovmf-x86_64-code.bin", "/usr/share/qemu/ovmf-x86_64-vars.bin"),
)

_UNWANTED = {"secure-boot", "requires-smm", "enrolled-keys", "amd-sev-es", "intel-tdx"}


@dataclass(frozen=True)
class UefiFirmware:
    """A pflash code image (mapped read-only) and the template its variable store copies."""

    code: str
    vars_template: str
    source: str = ""
    """The descriptor file it came from, or ``"known path"``."""


def _from_descriptor(path: str, arch: str) -> UefiFirmware | None:
    try:
        with open(path, encoding="utf-8") as f:
            desc = json.load(f)
    except (OSError, ValueError):
        return None
    if "uefi" not in desc.get("interface-types", ()):
        return None
    if _UNWANTED & set(desc.get("features", ())):
        return None
    if not any(t.get("architecture") == arch for t in desc.get("targets", ())):
        return None
    mapping = desc.get("mapping", {})
    if mapping.get("device") != "flash":
        return None
    code = mapping.get("executable", {}).get("filename")
    nvram = mapping.get("nvram-template", {}).get("filename")
    if mapping.get("executable", {}).get("format", "raw") != "raw" or not code or not nvram:
        return None
    if not (os.path.isfile(code) and os.path.isfile(nvram)):
        return None
    return UefiFirmware(code, nvram, path)


def find_uefi(arch: str = "x86_64") -> UefiFirmware:
    """The plain (non Secure Boot) OVMF pair, or a :class:`ToolError` naming the package."""
    seen: dict[str, str] = {}
    for directory in DESCRIPTOR_DIRS:  # /etc overrides /usr/share for the same file name
        for path in glob.glob(os.path.join(directory, "*.json")):
            seen.setdefault(os.path.basename(path), path)
    for name in sorted(seen):  # descriptors are ordered by their numeric name prefix
        fw = _from_descriptor(seen[name], arch)
        if fw is not None:
            return fw
    for code, nvram in KNOWN_PATHS:
        if os.path.isfile(code) and os.path.isfile(nvram):
            return UefiFirmware(code, nvram, "known path")
    raise ToolError("no UEFI firmware (OVMF) for x86_64 found",
                    hint="install it: apt-get install ovmf")
