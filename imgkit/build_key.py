"""The parts of an artifact's cache key the build driver knows before building anything.

The first key (:func:`first_key`) says *what* is built: imgkit's own code (a changed module
rebuilds everything), the artifact, its config section, the seed, the time clamp and the
identity mode. What it is built *from* is recorded while it is built
(:mod:`imgkit.fingerprint`); this module adds the inputs Python's audit events do not show:
the walk of each source directory and the identity of each source archive (read by C
libraries), and the state apt resolves a Debian kernel from.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from imgkit import fingerprint
from imgkit.artifact_cache import digest

if TYPE_CHECKING:
    from imgkit.build import Builder
    from imgkit.config import KernelConfig
    from imgkit.tree import Tree

#: The directories whose files apt reads to choose a package's candidate version (the binary
#: caches under /var/cache/apt are derived from these and rewritten by apt itself), and
#: names in them that are apt's own working state, not input.
APT_STATE = ("/etc/apt", "/etc/apt/sources.list.d", "/etc/apt/preferences.d",
             "/etc/apt/apt.conf.d", "/etc/apt/trusted.gpg.d", "/var/lib/apt/lists")
APT_WORK = ("lock", "partial", "auxfiles")


@functools.cache
def code_identity() -> str:
    """imgkit's version, its modules' sizes and times, Python's version and the installed
    distributions (their dist-info names carry versions): what makes the same config give
    different bytes."""
    import sysconfig

    import imgkit
    files = []
    for package in fingerprint.code_dirs():
        for top, dirs, names in os.walk(package):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                if not name.endswith((".pyc", ".pyo")):
                    st = os.stat(os.path.join(top, name))
                    files.append((os.path.join(top, name), st.st_size, st.st_mtime_ns))
    installed = []
    for key in ("purelib", "platlib"):
        try:
            installed += sorted(os.listdir(sysconfig.get_paths()[key]))
        except OSError:
            pass
    return digest(imgkit.__version__, sys.version, files, installed)


def first_key(builder: Builder, ref: str, section: object) -> str:
    """What artifact ``ref`` is (see the module docstring); ``section`` is its config."""
    cfg = builder.cfg
    return digest(code_identity(), ref, repr(section), cfg.seed, cfg.cmdline, builder.mtime,
                  os.path.abspath(cfg.path), builder.identity)


def kernel_state(kc: KernelConfig) -> str:
    """The kernel's config and, for a Debian kernel, apt's state: unchanged, the same
    unpacked package is found again."""
    return digest(repr(kc), _apt_state() if kc.source == "debian" else None)


def _apt_state() -> list:
    """Each file of :data:`APT_STATE` with its identity, and dpkg's status file: what any
    user can see of them (``stat`` needs no read permission), so every user of a shared
    cache finds the same state."""
    state: list = [fingerprint.file_identity("/var/lib/dpkg/status")]
    with fingerprint.unrecorded():
        for directory in APT_STATE:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                state.append((directory, None))
                continue
            state += [(directory, name, fingerprint.file_identity(os.path.join(directory, name)))
                      for name in names if name not in APT_WORK and
                      os.path.isfile(os.path.join(directory, name))]
    return state


def record_sources(rec: fingerprint.Recorder, sources: Iterable[str]) -> None:
    """The inputs of a tree's sources that no audit event shows: a directory's entries
    (modes, owners, times, link targets: read with ``lstat``), an archive (read by
    libarchive, in C). A source that is no host path (an image in a daemon) has no
    fingerprint: its tree is never reused."""
    from imgkit.assemble import split_prefix
    for source in sources:
        path, _ = split_prefix(source)
        _, _, located = path.partition(":")
        for candidate in (path, located, located.rpartition(":")[0]):
            if candidate and os.path.lexists(candidate):
                rec.add_path(os.path.abspath(candidate))
                break
        else:
            rec.add(fingerprint.NEVER, f"source {source}", None)


def record_blobs(rec: fingerprint.Recorder, tree: Tree) -> None:
    """Every host file whose bytes ``tree`` holds, even when a writer never opens it in
    Python (hard-linked into a staging directory for mke2fs, listed for xorriso). Files
    below a walked source directory are already covered by its walk."""
    from imgkit.tree import FileBlob
    walked = tuple(name + "/" for kind, name in rec.deps if kind == fingerprint.WALK)
    for entry in tree:
        blob = entry.data
        if isinstance(blob, FileBlob) and not blob.path.startswith(walked):
            where = rec.watched(blob.path)
            if where is not None:
                rec.add_file(where)
