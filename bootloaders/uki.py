"""Unified kernel images: systemd-stub plus kernel, initrd, command line and os-release.

The stub (``linuxx64.efi.stub`` from systemd-boot-efi) finds its payload by PE section name
at run time, so a UKI is the stub with sections appended (:mod:`imgkit.formats.pe`).
systemd 252's stub reads ``.linux``, ``.initrd``, ``.cmdline``, ``.osrel``, ``.splash``,
``.dtb``, ``.pcrsig`` and ``.pcrpkey``; ``.uname`` is read by later versions and by tools
(``bootctl``, ``kernel-install``) and ignored by 252. Section order is ukify's, with
``.linux`` last so the kernel has free address space after it; section addresses follow the
stub's last section, aligned, as ukify places them (the old objcopy recipe's fixed VMAs are
not needed and may collide with a larger stub).
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence

from imgkit.atomic import atomic_open
from imgkit.errors import InputError
from imgkit.formats import pe

DEFAULT_STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

#: Written to ``.osrel`` when the caller gives no os-release.
DEFAULT_OS_RELEASE = 'ID=imgkit\nNAME="imgkit"\nPRETTY_NAME="imgkit image"\n'

#: Section order (ukify's); ``.linux`` is always last.
SECTION_ORDER = (".osrel", ".cmdline", ".dtb", ".splash", ".initrd", ".uname", ".linux")

PathLike = str | os.PathLike


def _text_or_file(value: str | os.PathLike, what: str) -> bytes:
    """os-release content from text or a file.

    An ``os.PathLike``, or a ``str`` without ``=`` (os-release text always has one), names
    a file; any other ``str`` is the content itself.
    """
    if isinstance(value, str) and "=" in value:
        return value.encode()
    try:
        with open(value, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"cannot read the {what} file {os.fspath(value)!r}: {exc.strerror}",
                         hint=f"pass the {what} text (KEY=value lines) or an existing file"
                         ) from exc


def _check_file(path: PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"the {what} {path!r} does not exist or is not a regular file")
    return path


def initrd_parts(initrds: Sequence[PathLike]) -> list[pe.Part]:
    """The ``.initrd`` content: the files concatenated, each padded to 4 bytes.

    The kernel unpacks concatenated (even separately compressed) cpio archives and skips
    the zero padding between them; the padding keeps each archive 4-byte aligned, as
    ukify does.
    """
    parts: list[pe.Part] = []
    for i, path in enumerate(initrds):
        path = _check_file(path, "initrd")
        parts.append(path)
        size = os.stat(path).st_size
        if i < len(initrds) - 1 and size % 4:
            parts.append(bytes(4 - size % 4))
    return parts


def uki_sections(*, kernel: PathLike, initrds: Sequence[PathLike] = (), cmdline: str = "",
                 os_release: str | os.PathLike | None = None, splash: PathLike | None = None,
                 devicetree: PathLike | None = None, uname: str | None = None
                 ) -> list[pe.NewSection]:
    """The sections of a UKI, in the order the image will have them."""
    data = pe.SCN_CNT_INITIALIZED_DATA | pe.SCN_MEM_READ
    osrel = DEFAULT_OS_RELEASE.encode() if os_release is None else \
        _text_or_file(os_release, "os-release")
    if "\0" in cmdline:
        raise InputError("the kernel command line contains a NUL byte")
    sections = [pe.NewSection(".osrel", [osrel], data)]
    if cmdline:
        sections.append(pe.NewSection(".cmdline", [cmdline.encode()], data))
    if devicetree is not None:
        sections.append(pe.NewSection(".dtb", [_check_file(devicetree, "devicetree")], data))
    if splash is not None:
        sections.append(pe.NewSection(".splash", [_check_file(splash, "splash image")], data))
    if initrds:
        sections.append(pe.NewSection(".initrd", initrd_parts(initrds), data))
    if uname is not None:
        if not re.fullmatch(r"[\x21-\x7e]+", uname):
            raise InputError(f"uname {uname!r} is not a kernel release string "
                             f"(expected printable characters without spaces)")
        sections.append(pe.NewSection(".uname", [uname.encode()], data))
    # ukify marks the kernel as code: kernels entered through the EFI handover protocol run
    # from where the stub finds them.
    sections.append(pe.NewSection(".linux", [_check_file(kernel, "kernel")],
                                  pe.SCN_CNT_CODE | pe.SCN_MEM_READ))
    return sections


def build_uki(out_path: PathLike, *, stub: PathLike = DEFAULT_STUB, kernel: PathLike,
              initrds: Sequence[PathLike] = (), cmdline: str = "",
              os_release: str | os.PathLike | None = None, splash: PathLike | None = None,
              devicetree: PathLike | None = None, uname: str | None = None,
              strip_signature: bool = False, checksum: bool = False) -> pe.Plan:
    """Write a unified kernel image to ``out_path`` (atomically) and return its layout.

    ``os_release`` is os-release text, or a path to such a file; ``None`` writes a minimal
    one naming imgkit. ``initrds`` are concatenated into one ``.initrd`` section. A signed
    stub is refused unless ``strip_signature`` (the result is unsigned either way).
    ``checksum=True`` stores a real PE checksum instead of zero.
    """
    _check_file(stub, "UEFI stub")
    sections = uki_sections(kernel=kernel, initrds=initrds, cmdline=cmdline,
                            os_release=os_release, splash=splash, devicetree=devicetree,
                            uname=uname)
    with atomic_open(out_path, mode=0o755) as f:
        return pe.add_sections(stub, f, sections, strip_signature=strip_signature,
                               checksum=checksum)
