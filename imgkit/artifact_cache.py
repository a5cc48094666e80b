"""The store of built artifacts: an image is rebuilt only when something it was made of changed.

Two levels, like a compiler cache's manifests. The *first key* of an artifact hashes what is
known before building: imgkit's code, its kind and name, its config section and options, the
seed and time clamp. Under it, a manifest lists candidates: each the inputs an earlier build
recorded (:mod:`imgkit.fingerprint`) and the *key* those inputs give. A candidate whose inputs
all still have their identities names an object, the artifact's bytes, stored under its key.

Layout below ``$IMGKIT_CACHE/artifacts`` (the cache root of :func:`imgkit.vm.kernel.cache_root`)::

    manifests/FIRSTKEY.json    candidates (most recent first), with a checksum of the body
    objects/KEY.img            the artifact, holes kept
    objects/KEY.json           its size, a hash of its first and last 64 KiB, details
    kernels/HASH.json          which unpacked Debian kernel apt's current state resolves to
    placed/HASH.json           which object an output file was last made a copy of, and that
                               file's identity then (inode, size, mtime, ctime): an output
                               found as it was left is not copied again

Every file is written under a temporary name and renamed, so a killed run leaves no partial
entry; an entry whose checksum, size or sampled bytes do not match is ignored (and rebuilt).
Files are readable by everybody and directories in a shared (sticky) cache are sticky and
world-writable, so users of one machine share entries. After a build, the least recently used
objects are removed until the store is within its size limit.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgkit.fingerprint import STAT

DEFAULT_LIMIT = 2 << 30
LIMIT_ENV = "IMGKIT_CACHE_LIMIT"
#: Candidates kept per first key (a change and its undoing both stay cached).
CANDIDATES = 4
_SAMPLE = 64 << 10
_FORMAT = 1
_FICLONE = 0x40049409
SUBDIRS = ("manifests", "objects", "kernels", "placed")


@dataclass(frozen=True)
class CachePolicy:
    """How a build uses the artifact cache (``None`` instead of a policy: not at all)."""

    root: str | None = None       # default: cache_root()/artifacts
    limit: int = DEFAULT_LIMIT    # bytes on disk the objects may take
    identity: str = STAT          # "stat" or "content" (imgkit.fingerprint)


@dataclass(frozen=True)
class Hit:
    key: str
    path: str
    details: dict


def digest(*parts: object) -> str:
    """SHA-256 of the canonical JSON of ``parts``."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()


def default_limit() -> int:
    """``$IMGKIT_CACHE_LIMIT`` (a size: ``500M``, ``4G``), else 2 GiB."""
    value = os.environ.get(LIMIT_ENV)
    if not value:
        return DEFAULT_LIMIT
    from imgkit.sizes import parse_size
    return parse_size(value, what=f"${LIMIT_ENV}")


def place(src: str, fd: int) -> None:
    """Make open file ``fd`` a copy of ``src``: a reflink where the filesystem shares
    extents, else a copy of the data ranges (holes stay holes)."""
    with open(src, "rb") as f:
        try:
            fcntl.ioctl(fd, _FICLONE, f.fileno())
            return
        except OSError:
            pass
        size = os.fstat(f.fileno()).st_size
    from imgkit.holes import all_holes, copy_sparse
    all_holes(fd, size)
    copy_sparse(src, fd, 0, size)


def _sample(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(_SAMPLE, size - _SAMPLE))
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


def _sealed(body: dict) -> dict:
    return {"format": _FORMAT, "body": body, "sha256": digest(body)}


def _unsealed(path: str) -> dict | None:
    """The body of a JSON file written by :func:`_sealed`, ``None`` if absent or damaged."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 22))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return None
    body = data.get("body")
    if not isinstance(body, dict) or data.get("sha256") != digest(body):
        return None
    return body


class ArtifactCache:
    """One artifact store (see the module docstring)."""

    def __init__(self, policy: CachePolicy) -> None:
        from imgkit.vm.kernel import cache_root, writable_cache_subdir
        if policy.root is not None:
            self.root = os.path.abspath(policy.root)
            os.makedirs(self.root, exist_ok=True)
        else:
            base = cache_root()
            self.root = writable_cache_subdir(base, "artifacts")
            with contextlib.suppress(OSError):
                if os.stat(base).st_mode & stat.S_ISVTX:
                    os.chmod(self.root, 0o1777)   # shared caches: any user may add entries
        self.policy = policy
        self.shared = bool(os.stat(self.root).st_mode & stat.S_ISVTX)
        self.stored = 0
        for sub in SUBDIRS:
            self._subdir(sub)

    def _subdir(self, name: str) -> str:
        path = os.path.join(self.root, name)
        if not os.path.isdir(path):
            with contextlib.suppress(OSError):   # a read-only cache is only read
                os.mkdir(path, 0o1777 if self.shared else 0o755)
                os.chmod(path, 0o1777 if self.shared else 0o755)
        return path

    # -- reading ----------------------------------------------------------------------------
    def _manifest_paths(self, first: str) -> list[str]:
        d = os.path.join(self.root, "manifests")
        return [os.path.join(d, f"{first}.{os.getuid()}.json"), os.path.join(d, f"{first}.json")]

    def candidates(self, first: str) -> list[dict]:
        """The recorded candidates under ``first``, most recent first (damaged ones left out)."""
        out: list[dict] = []
        for path in self._manifest_paths(first):
            body = _unsealed(path)
            if body is None or body.get("first") != first:
                continue
            for c in body.get("candidates", []):
                if isinstance(c, dict) and isinstance(c.get("key"), str) and \
                        isinstance(c.get("deps"), list) and c not in out:
                    out.append(c)
        return out

    def entry(self, key: str) -> Hit | None:
        """The stored artifact ``key`` if it is whole (size and sampled bytes match)."""
        base = os.path.join(self.root, "objects", key)
        meta = _unsealed(base + ".json")
        if meta is None or meta.get("key") != key:
            return None
        data = base + ".img"
        try:
            size = os.stat(data).st_size
            if size != meta.get("size") or _sample(data, size) != meta.get("sample"):
                return None
        except OSError:
            return None
        with contextlib.suppress(OSError):
            # recently used: evicted last. The time is the clock's, to the nanosecond: the
            # file system's own stamp (utime without a time) is as coarse as the kernel's
            # tick, so the artifacts of one build would tie and be evicted by size.
            now = time.time_ns()
            os.utime(base + ".json", ns=(now, now))
        return Hit(key, data, dict(meta.get("details") or {}))

    # -- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        from imgkit.vm.kernel import cache_lock
        with cache_lock(os.path.join(self.root, ".lock")):
            yield

    def _write(self, dest: str, fill: Callable[[int], object]) -> bool:
        """Write ``dest`` through a temporary file renamed over it; ``fill(fd)`` writes.
        False when this user may not replace it (another user's entry in a shared cache)."""
        directory = os.path.dirname(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", dir=directory)
        try:
            os.fchmod(fd, 0o644)
            fill(fd)
            now = time.time_ns()   # the last use, finer than the file system's stamp
            os.utime(fd, ns=(now, now))
            os.close(fd)
            fd = -1
            os.replace(tmp, dest)
            return True
        except PermissionError:
            return False
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _write_json(self, dest: str, body: dict) -> bool:
        data = json.dumps(_sealed(body), sort_keys=True).encode()
        return self._write(dest, lambda fd: _write_all(fd, data))

    def store(self, first: str, key: str, deps: list, built: str, details: dict) -> None:
        """Keep ``built`` as artifact ``key``, found from ``first`` when ``deps`` hold.
        A full or read-only cache only costs the reuse: the build goes on."""
        try:
            with self._lock():
                self._store(first, key, deps, built, details)
        except OSError:
            return
        self.stored += 1

    def _store(self, first: str, key: str, deps: list, built: str, details: dict) -> None:
        base = os.path.join(self.root, "objects", key)
        if self.entry(key) is None:
            size = os.path.getsize(built)
            if not self._write(base + ".img", lambda fd: place(built, fd)):
                return
            self._write_json(base + ".json", {"key": key, "size": size, "details": details,
                                              "sample": _sample(base + ".img", size)})
        mine, shared = self._manifest_paths(first)
        entry = json.loads(json.dumps({"key": key, "deps": deps}, default=repr))
        rest = [c for c in self.candidates(first) if c.get("key") != key]
        body = {"first": first, "candidates": [entry, *rest][:CANDIDATES]}
        if not self._write_json(shared, body):
            self._write_json(mine, body)

    # -- the kernel apt resolves to ---------------------------------------------------------
    def remembered(self, name: str) -> dict | None:
        return _unsealed(os.path.join(self.root, "kernels", f"{name}.json"))

    def remember(self, name: str, body: dict) -> None:
        with contextlib.suppress(OSError):
            self._write_json(os.path.join(self.root, "kernels", f"{name}.json"), body)

    # -- outputs made from objects -----------------------------------------------------------
    def _placed_path(self, dest: str) -> str:
        return os.path.join(self.root, "placed", digest(os.path.abspath(dest)) + ".json")

    def still_placed(self, dest: str, key: str) -> bool:
        """Whether ``dest`` is the copy of object ``key`` this cache made, untouched since."""
        body = _unsealed(self._placed_path(dest))
        return body is not None and body.get("key") == key and \
            body.get("identity") == _output_identity(dest)

    def placed(self, dest: str, key: str) -> None:
        with contextlib.suppress(OSError):
            self._write_json(self._placed_path(dest), {"key": key, "dest": os.path.abspath(dest),
                                                       "identity": _output_identity(dest)})

    # -- eviction ---------------------------------------------------------------------------
    def usage(self) -> list[tuple[float, int, str]]:
        """(last use, bytes on disk, key) of every stored object."""
        objects = os.path.join(self.root, "objects")
        out = []
        for name in os.listdir(objects):
            if not name.endswith(".img") or name.startswith("."):
                continue
            key = name[:-4]
            try:
                data = os.stat(os.path.join(objects, name))
                used = os.stat(os.path.join(objects, key + ".json")).st_mtime
            except OSError:
                used = 0.0
                data = None
            out.append((used, data.st_blocks * 512 if data else 0, key))
        return sorted(out)

    def evict(self, limit: int | None = None) -> list[str]:
        """Remove least recently used objects until they take at most ``limit`` bytes (and
        temporaries of runs that died); returns the keys removed."""
        limit = self.policy.limit if limit is None else limit
        removed: list[str] = []
        try:
            with self._lock():
                self._sweep()
                entries = self.usage()
                total = sum(size for _, size, _ in entries)
                for _, size, key in entries:
                    if total <= limit:
                        break
                    base = os.path.join(self.root, "objects", key)
                    try:
                        os.unlink(base + ".json")
                        os.unlink(base + ".img")
                    except FileNotFoundError:
                        pass
                    except PermissionError:
                        continue    # another user's entry in a shared cache
                    total -= size
                    removed.append(key)
        except OSError:
            pass
        return removed

    def _sweep(self) -> None:
        from imgkit.scratch import pid_alive
        for sub in SUBDIRS:
            directory = os.path.join(self.root, sub)
            for name in os.listdir(directory):
                if not name.startswith(".tmp-"):
                    continue
                pid = name[5:].partition("-")[0]
                if pid.isdigit() and not pid_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))


def _output_identity(path: str) -> list | None:
    """What changes whenever a file is written to, renamed over or has its mode changed
    (the ctime cannot be set back)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
