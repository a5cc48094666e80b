"""Which squashfs-tools imgkit runs: 4.6 or newer when it can be had, else the host's.

squashfs-tools 4.6 reads a tar archive on its standard input (``mksquashfs - IMG -tar``):
owners, modes, times, device numbers, hard links and xattrs (pax ``SCHILY.xattr``) come from
the archive, so the tree is streamed to it with no staging copy and no ``cat`` process per
file, and its pseudo files take ``x`` (xattr) definitions. Debian 12 ships 4.5.1, which has
neither; Debian 13 (trixie) ships 4.6.1, built against libraries bookworm has, so its package
is fetched once without root (:mod:`imgkit.debfetch`) and run from the cache.

``$IMGKIT_SQUASHFS_TOOLS`` overrides the choice: ``host`` takes the ``mksquashfs`` on
``PATH`` whatever its version (no download), a directory takes the squashfs-tools unpacked
there (``usr/bin/mksquashfs`` or ``bin/mksquashfs``). When the download fails (no network),
the host's tools are used and :attr:`SquashfsTools.why` says why, which the writer turns into
a warning when it has to drop xattrs.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from imgkit import tools
from imgkit.errors import ToolError

#: The Debian release whose squashfs-tools is fetched, and the oldest version we want.
RELEASE = "trixie"
PACKAGE = "squashfs-tools"
WANTED = (4, 6)
CACHE_NAME = "squashfs-tools-trixie"


@dataclass(frozen=True)
class SquashfsTools:
    """The ``mksquashfs``/``unsquashfs`` to run, their version, and why these."""

    mksquashfs: str
    unsquashfs: str
    version: tuple[int, ...]
    why: str

    @property
    def reads_tar(self) -> bool:
        """``mksquashfs -tar`` and pseudo ``x`` definitions (4.6 and newer)."""
        return self.version >= WANTED

    @property
    def label(self) -> str:
        return f"squashfs-tools {'.'.join(map(str, self.version))}"


def _version(mksquashfs: str) -> tuple[int, ...]:
    proc = tools.run([mksquashfs, "-version"], check=False)
    text = (proc.stdout or b"").decode(errors="replace") + (proc.stderr or b"").decode(errors="replace")
    m = re.search(r"mksquashfs version (\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise ToolError(f"cannot tell the squashfs-tools version from {mksquashfs} -version: "
                        f"{text.strip()[:200]!r}")
    return tuple(int(x or 0) for x in m.groups())


def tools_in(root: str, why: str) -> SquashfsTools:
    """The squashfs-tools unpacked under ``root``."""
    for sub in ("usr/bin", "bin", "usr/sbin", "sbin"):
        mk, un = os.path.join(root, sub, "mksquashfs"), os.path.join(root, sub, "unsquashfs")
        if os.access(mk, os.X_OK) and os.access(un, os.X_OK):
            return SquashfsTools(mk, un, _version(mk), why)
    raise ToolError(f"no mksquashfs and unsquashfs under {root}/usr/bin",
                    hint="point IMGKIT_SQUASHFS_TOOLS at an unpacked squashfs-tools package, "
                         "or set it to 'host'")


def host_tools(why: str) -> SquashfsTools:
    mk, un = tools.which("mksquashfs"), tools.which("unsquashfs")
    return SquashfsTools(mk, un, _version(mk), why)


def _check_fetched(root: str) -> None:
    found = tools_in(root, "")
    if not found.reads_tar:
        raise ToolError(f"Debian {RELEASE} has {found.label}, expected "
                        f"{'.'.join(map(str, WANTED))} or newer")


@functools.cache
def _choose(setting: str | None) -> SquashfsTools:
    if setting == "host":
        return host_tools("IMGKIT_SQUASHFS_TOOLS=host")
    if setting:
        return tools_in(os.path.abspath(setting), f"IMGKIT_SQUASHFS_TOOLS={setting}")
    from imgkit import debfetch
    choice = debfetch.host_unless_older(lambda: host_tools("").reads_tar, CACHE_NAME, RELEASE,
                                        (PACKAGE,), check=_check_fetched)
    if choice.root is None:
        return host_tools(choice.why)
    return tools_in(choice.root, f"{choice.why} (cached in {choice.root})")


def squashfs_tools() -> SquashfsTools:
    """The squashfs-tools to use (decided once per process and ``$IMGKIT_SQUASHFS_TOOLS``)."""
    return _choose(os.environ.get("IMGKIT_SQUASHFS_TOOLS") or None)
