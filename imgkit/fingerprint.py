"""What an artifact read from the host, recorded while it is built and checked before reuse.

An artifact's cache entry is only as good as its list of inputs: a missed input is a stale
image. Rather than trusting each writer and boot path to declare what it reads, every file
Python opens for reading, every directory it lists and every tool it starts while an artifact
is built is recorded (through an audit hook, :func:`sys.addaudithook`), together with its
identity at that moment. What Python does not see (metadata read with ``lstat`` only, files
read by C libraries) is added explicitly by the build driver: the walk of every source
directory and the identity of every source archive and host file a config names.

An identity is cheap by default (``stat``: mode, owner, size, mtime, inode, device; a source
directory's walk adds xattrs) or, with ``content``, the file's SHA-256 with its mode, owner,
size and mtime (what lands in an image) but not its inode. The ctime is left out: building
itself changes it (a staging tree hard-links the sources).

Deps are ``(kind, name, value)`` triples, JSON-friendly:

``file``  a host file (value: its identity, ``None`` when it did not exist: a probe)
``dir``   a listed directory (value: a hash of its sorted names)
``walk``  a source directory, recursively (value: a hash of every entry's identity)
``tool``  an executable a subprocess ran (value: the binary's identity)
``env``   something else checked by a function of the caller (the kernel's apt state)
``artifact`` another cached artifact (value: its key), checked by the build driver
``never`` an input that cannot be fingerprinted: the entry is never reused
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

STAT = "stat"
CONTENT = "content"
IDENTITIES = (STAT, CONTENT)

Dep = tuple[str, str, object]

#: Host files a tool reads besides its arguments (its configuration), by tool name.
TOOL_CONFIG: dict[str, tuple[str, ...]] = {
    "mke2fs": ("/etc/mke2fs.conf",),
    "mkfs.ext4": ("/etc/mke2fs.conf",),
    "mkfs.ext2": ("/etc/mke2fs.conf",),
    "mkfs.ext3": ("/etc/mke2fs.conf",),
}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with _paused(), open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path: str, identity: str = STAT) -> list | None:
    """The identity of host file ``path`` (symbolic links followed), ``None`` if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if identity == CONTENT and stat.S_ISREG(st.st_mode):
        try:
            digest = _sha256_file(path)
        except OSError:
            digest = "unreadable"
        return [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, digest]
    return [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino,
            st.st_dev, st.st_rdev]


def listing_identity(path: str) -> str | None:
    """A hash of the names in directory ``path`` (``None`` if it cannot be listed)."""
    try:
        with _paused():
            names = sorted(os.listdir(path))
    except OSError:
        return None
    return hashlib.sha256("\0".join(names).encode(errors="surrogateescape")).hexdigest()


def walk_identity(root: str, identity: str = STAT) -> str | None:
    """A hash of every entry below ``root`` (itself included): path, type, mode, owner,
    size, times, inode (``stat``) or content and xattrs (``content``), link targets."""
    h = hashlib.sha256()
    with _paused():
        try:
            st = os.lstat(root)
        except OSError:
            return None
        _hash_entry(h, root, ".", st, identity)
        if stat.S_ISDIR(st.st_mode):
            _hash_below(h, root, "", identity)
    return h.hexdigest()


def _hash_below(h: hashlib._Hash, top: str, rel: str, identity: str) -> None:
    directory = os.path.join(top, rel) if rel else top
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        h.update(f"unlistable {rel} {exc.errno}\n".encode())
        return
    for entry in entries:
        sub = f"{rel}/{entry.name}" if rel else entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            h.update(f"gone {sub}\n".encode(errors="surrogateescape"))
            continue
        _hash_entry(h, entry.path, sub, st, identity)
        if stat.S_ISDIR(st.st_mode):
            _hash_below(h, top, sub, identity)


def _hash_entry(h: hashlib._Hash, path: str, rel: str, st: os.stat_result, identity: str) -> None:
    fields: list[object] = [rel, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                            st.st_rdev]
    if identity == CONTENT:
        if stat.S_ISREG(st.st_mode):
            try:
                fields.append(_sha256_file(path))
            except OSError:
                fields.append("unreadable")
    else:
        fields += [st.st_ino, st.st_dev]
    with contextlib.suppress(OSError):   # an xattr edit changes no time but the ctime
        fields += sorted((name, os.getxattr(path, name, follow_symlinks=False).hex())
                         for name in os.listxattr(path, follow_symlinks=False))
    if stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            fields.append(os.readlink(path))
    h.update(repr(fields).encode(errors="surrogateescape") + b"\n")


def tool_path(argv0: str, env: object = None) -> str | None:
    """Where the executable a subprocess runs lives (``None`` if not found)."""
    if "/" in argv0:
        return os.path.abspath(argv0)
    path = None
    if isinstance(env, dict):
        path = env.get("PATH") or env.get(b"PATH")
        if isinstance(path, bytes):
            path = os.fsdecode(path)
    return shutil.which(argv0, path=path or os.environ.get("PATH"))


#: Where imgkit's tools look besides ``PATH`` (as :func:`imgkit.tools.which` does).
SBIN = ":/usr/local/sbin:/usr/sbin:/sbin"


def tool_identity(path: str) -> list:
    """A tool binary's identity, and whether its name on today's ``PATH`` finds it: a tool
    run by name is another one when an earlier ``PATH`` directory gets one of that name."""
    found = shutil.which(os.path.basename(path), path=os.environ.get("PATH", "") + SBIN)
    return [file_identity(path), found is not None and os.path.abspath(found) == path]


class Recorder:
    """The inputs one artifact (or one memoized step) read, first identity kept."""

    def __init__(self, identity: str, excluded: Sequence[str]) -> None:
        self.identity = identity
        self.excluded = excluded
        self.deps: dict[tuple[str, str], object] = {}

    def add(self, kind: str, name: str, value: object) -> None:
        self.deps.setdefault((kind, name), value)

    def merge(self, deps: Iterable[Dep]) -> None:
        for kind, name, value in deps:
            self.add(kind, name, value)

    def watched(self, path: object) -> str | None:
        """``path`` made absolute, or ``None`` for what is no input (Python's own files,
        the build's temporaries, the artifact cache, /proc and the like)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None
        try:
            text = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        for prefix in self.excluded:
            if text == prefix or text.startswith(prefix + "/"):
                return None
        return text

    def add_file(self, path: str) -> None:
        if (FILE, path) not in self.deps:
            self.add(FILE, path, file_identity(path, self.identity))

    def add_path(self, path: str) -> None:
        """A path a subprocess was given: a file's identity, a directory's walk."""
        if os.path.isdir(path):
            if (WALK, path) not in self.deps:
                self.add(WALK, path, walk_identity(path, self.identity))
        elif os.path.lexists(path):
            self.add_file(path)

    def as_list(self) -> list[Dep]:
        return sorted((k, n, v) for (k, n), v in self.deps.items())


FILE, DIR, WALK, TOOL, ENV, ARTIFACT, NEVER = (
    "file", "dir", "walk", "tool", "env", "artifact", "never")

_stack: list[Recorder] = []
_pause = [0]
_hooked = [False]


@contextlib.contextmanager
def _paused() -> Iterator[None]:
    """Our own reads (fingerprinting) are no inputs."""
    _pause[0] += 1
    try:
        yield
    finally:
        _pause[0] -= 1


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """A step whose reads are no input (fetching into a cache whose result is itself
    fingerprinted)."""
    with _paused():
        yield


def active() -> Recorder | None:
    return _stack[-1] if _stack else None


@contextlib.contextmanager
def recording(identity: str, excluded: Sequence[str]) -> Iterator[Recorder]:
    """Record into a fresh :class:`Recorder` for the duration of the block (``excluded``:
    the directories whose files are no input; a list may grow while recording)."""
    if not _hooked[0]:
        sys.addaudithook(_audit)
        _hooked[0] = True
    rec = Recorder(identity, excluded)
    _stack.append(rec)
    try:
        yield rec
    finally:
        _stack.remove(rec)


def code_dirs() -> tuple[str, ...]:
    """The directories of imgkit's own code (``imgkit.formats`` and ``imgkit.bootloaders``
    may live apart from ``imgkit``, as in a source checkout)."""
    import importlib.util
    dirs = [os.path.dirname(os.path.abspath(__file__))]
    for name in ("imgkit.formats", "imgkit.bootloaders"):
        spec = importlib.util.find_spec(name)
        dirs += [os.path.abspath(p) for p in (spec.submodule_search_locations or ())] if spec else []
    return tuple(dict.fromkeys(dirs))


def python_paths() -> tuple[str, ...]:
    """Where Python and imgkit's own code lives (read by imports, never an image's input)."""
    import sysconfig
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(code_dirs())
    paths.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return tuple(sorted(os.path.abspath(p) for p in paths if p))


def _audit(event: str, args: tuple) -> None:
    if not _stack or _pause[0]:
        return
    if event not in ("open", "os.listdir", "os.scandir", "subprocess.Popen"):
        return
    rec = _stack[-1]
    _pause[0] += 1
    try:
        if event == "open":
            path, mode, flags = args
            if not _absolute(path):
                return   # relative to a directory descriptor (a walk): the walk is the input
            if isinstance(mode, str):
                if any(c in mode for c in "wax+"):
                    return
            elif isinstance(flags, int) and flags & _WRITE_FLAGS:
                return
            where = rec.watched(path)
            if where is not None and "/__pycache__/" not in where:
                rec.add_file(where)
        elif event in ("os.listdir", "os.scandir"):
            where = rec.watched(args[0]) if args and _absolute(args[0]) else None
            if where is not None:
                rec.add(DIR, where, listing_identity(where))
        else:
            _record_subprocess(rec, *args)
    except Exception as exc:  # an input we could not identify: never reuse this entry
        rec.add(NEVER, f"{event}: {exc}", None)
    finally:
        _pause[0] -= 1


def _absolute(path: object) -> bool:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    return isinstance(path, str) and path.startswith("/") or \
        isinstance(path, bytes) and path.startswith(b"/")


def _record_subprocess(rec: Recorder, executable: object, argv: object, cwd: object,
                       env: object) -> None:
    words = [os.fsdecode(a) for a in argv] if isinstance(argv, (list, tuple)) else \
        [os.fsdecode(argv)] if isinstance(argv, (str, bytes)) else []
    program = os.fsdecode(executable) if isinstance(executable, (str, bytes)) else \
        (words[0] if words else "")
    found = tool_path(program, env)
    if found is None:
        rec.add(NEVER, f"tool {program}", None)
        return
    rec.add(TOOL, found, tool_identity(found))
    for config in TOOL_CONFIG.get(os.path.basename(found), ()):
        rec.add_file(config)
    libraries = env.get("LD_LIBRARY_PATH") if isinstance(env, dict) else None
    for directory in libraries.split(":") if isinstance(libraries, str) else ():
        if directory.startswith("/"):   # a tool's own libraries (an unpacked e2fsprogs)
            rec.add_path(directory)
    base = os.fsdecode(cwd) if isinstance(cwd, (str, bytes)) else os.getcwd()
    for word in words[1:]:
        if "/" not in word or word.startswith("-") or "=" in word:
            continue
        where = rec.watched(os.path.join(base, word))
        if where is not None and os.path.lexists(where):
            rec.add_path(where)


def first_change(deps: Iterable[Dep], identity: str,
                 check: Callable[[str, str, object], bool]) -> Dep | None:
    """The first recorded input whose identity changed, ``None`` if every one is as it was.
    ``check`` answers for the kinds only the caller knows (``artifact``, ``env``), asked
    last: it may build."""
    deps = list(deps)
    later = []
    for dep in deps:
        kind, name, value = dep
        if kind == FILE:
            ok = file_identity(name, identity) == value
        elif kind == TOOL:
            ok = tool_identity(name) == value
        elif kind == DIR:
            ok = listing_identity(name) == value
        elif kind == WALK:
            ok = walk_identity(name, identity) == value
        elif kind == NEVER:
            ok = False
        else:
            later.append(dep)
            continue
        if not ok:
            return dep
    for dep in later:
        if not check(*dep):
            return dep
    return None
