"""Newer tools from another Debian release, fetched and unpacked without root, cached.

When the host's Debian ships a tool too old for something an image needs (squashfs-tools 4.5.1
takes no xattrs and no tar stream), the release that has a newer one is asked with a private
apt setup: its own sources list, lists and cache under a work directory, so the system's apt
configuration and state are neither used nor changed and nothing is installed. Each ``.deb``
is checked against the SHA-256 in the release's signed package index (apt checks it too; we
check again before unpacking) and unpacked with ``dpkg-deb -x``. The result lives in the
imgkit cache (:func:`imgkit.vm.kernel.cache_root`) under ``NAME/root``, filled under a lock
and published by an atomic rename, so concurrent builds and other users share one copy.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imgkit import tools
from imgkit.errors import ToolError

ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_COMPLETE = ".complete"


def _apt_options(work: str) -> list[str]:
    options = ["-q", "-o", f"Dir::Etc::SourceList={work}/sources.list",
               "-o", "Dir::Etc::SourceParts=/dev/null",
               "-o", f"Dir::State::Lists={work}/lists", "-o", f"Dir::Cache={work}/cache",
               "-o", "Debug::NoLocking=1"]
    if os.getuid() == 0:   # apt's _apt user could not write into this directory
        options += ["-o", "APT::Sandbox::User=root"]
    return options


def _index_sha256(apt: list[str], package: str, release: str, env: dict[str, str]) -> str:
    """The SHA-256 the release's package index gives for the candidate ``.deb``."""
    show = tools.run(["apt-cache", *apt, "show", "--no-all-versions", f"{package}/{release}"],
                     env=env).stdout.decode(errors="replace")
    m = re.search(r"^SHA256:\s*([0-9a-f]{64})\s*$", show, re.M)
    if not m:
        raise ToolError(f"Debian {release}'s index gives no SHA256 for {package}")
    return m.group(1)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _make_world_readable(top: str) -> None:
    """Other users of a shared cache run these tools too."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                x = 0o111 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o100 else 0
                os.chmod(path, st.st_mode | 0o444 | x)
    os.chmod(top, 0o755)


def _fetch(top: str, release: str, packages: Sequence[str],
           check: Callable[[str], None]) -> None:
    """Download, verify and unpack ``packages`` into ``top/root`` (under the caller's lock)."""
    work = tempfile.mkdtemp(prefix=".fetch.", dir=top)
    try:
        for d in ("lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(work, d))
        with open(os.path.join(work, "sources.list"), "w") as f:
            f.write(f"deb [signed-by={KEYRING}] {ARCHIVE} {release} main\n")
        apt = _apt_options(work)
        env = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
        tools.run(["apt-get", *apt, "--error-on=any", "update"], env=env, timeout=300)
        expected = {p: _index_sha256(apt, p, release, env) for p in packages}
        tools.run(["apt-get", *apt, "download", *(f"{p}/{release}" for p in packages)],
                  cwd=work, env=env, timeout=300)
        unpacked = os.path.join(work, "root")
        for package, digest in expected.items():
            debs = [f for f in os.listdir(work) if f.startswith(f"{package}_") and f.endswith(".deb")]
            if len(debs) != 1:
                raise ToolError(f"apt-get download {package}/{release} left "
                                f"{debs or 'no .deb file'} in {work}")
            deb = os.path.join(work, debs[0])
            got = file_sha256(deb)
            if got != digest:
                raise ToolError(f"{debs[0]} from Debian {release}: SHA-256 {got}, but the "
                                f"package index says {digest}")
            tools.run(["dpkg-deb", "-x", deb, unpacked], timeout=300)
        check(unpacked)
        _make_world_readable(unpacked)
        open(os.path.join(unpacked, _COMPLETE), "w").close()
        final = os.path.join(top, "root")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(unpacked, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch_release_packages(name: str, release: str, packages: Sequence[str], *,
                           check: Callable[[str], None] = lambda root: None,
                           cache_dir: str | None = None) -> str:
    """The unpacked ``packages`` of Debian ``release`` (``$CACHE/NAME/root``), fetched on
    first use; ``check(root)`` refuses an unpacked set (raising :class:`ToolError`) before it
    is published. Needs the network once; raises :class:`ToolError` when it cannot.

    What fetching reads is no input of the artifact being built (:mod:`imgkit.fingerprint`):
    the tools it unpacks are, as each is run."""
    from imgkit import fingerprint

    with fingerprint.unrecorded():
        return _fetch_release_packages(name, release, packages, check=check,
                                       cache_dir=cache_dir)


@dataclass(frozen=True)
class ToolChoice:
    """Which build of a tool to run: the fetched packages' root (None for the host's), and
    why, in words a build line can show."""

    root: str | None
    why: str


def host_unless_older(host_is_new_enough: Callable[[], bool], name: str, release: str,
                      packages: Sequence[str], *, check: Callable[[str], None]) -> ToolChoice:
    """The host's tool when ``host_is_new_enough()``; else ``packages`` of Debian
    ``release``, fetched once (:func:`fetch_release_packages`); else, when they cannot be
    fetched, the host's again, saying why. ``host_is_new_enough`` raising
    :class:`ToolError` means the host has no such tool: then a failed fetch raises that."""
    try:
        new_enough, missing = host_is_new_enough(), None
    except ToolError as exc:
        new_enough, missing = False, exc
    if new_enough:
        return ToolChoice(None, "the host's")
    try:
        root = fetch_release_packages(name, release, packages, check=check)
    except ToolError as exc:
        if missing is not None:
            raise missing from exc
        return ToolChoice(None, f"the host's; Debian {release}'s could not be fetched: "
                                f"{str(exc).splitlines()[0][:160]}")
    return ToolChoice(root, f"from Debian {release}")


def _fetch_release_packages(name: str, release: str, packages: Sequence[str], *,
                            check: Callable[[str], None], cache_dir: str | None) -> str:
    from imgkit.vm.kernel import cache_lock, cache_root, usable_dir, writable_cache_subdir

    root = cache_root(cache_dir)
    top = os.path.join(root, name)
    final = os.path.join(top, "root")
    if os.path.exists(os.path.join(final, _COMPLETE)):
        return final
    if not usable_dir(top):   # another user's directory, without a complete copy
        top = writable_cache_subdir(root, name)
        final = os.path.join(top, "root")
        if os.path.exists(os.path.join(final, _COMPLETE)):
            return final
    try:
        with cache_lock(os.path.join(top, ".lock")):
            if not os.path.exists(os.path.join(final, _COMPLETE)):
                os.chmod(top, 0o755)
                _fetch(top, release, packages, check)
    except OSError as exc:
        raise ToolError(f"cannot fetch {', '.join(packages)} from Debian {release} into "
                        f"{top}: {exc}") from exc
    return final
