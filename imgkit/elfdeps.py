"""Binaries for an initramfs with their shared-library closure, read from the ELF files.

The init sometimes needs more than busybox (veritysetup, dmsetup, e2fsck). Copying such a
binary is only half the job: the dynamic loader must find every library it names. Which
ones, and where, is written in the ELF file itself, so this module reads it (with
pyelftools) instead of running ``ldd``, which executes the binary's own loader and must
never be pointed at an untrusted file, nor at one built for another machine:

- ``PT_INTERP``: the dynamic loader's path, exactly as the kernel will look it up;
- ``DT_NEEDED``: the libraries, searched the way glibc's ``ld.so`` does: the loader's
  ``DT_RPATH`` and then those of the objects that loaded it (only when it has no
  ``DT_RUNPATH``), its ``DT_RUNPATH``, then the standard library directories for its
  machine (``/lib/TRIPLET``, ``/usr/lib/TRIPLET``, ``/lib64``, ``/usr/lib64``, ``/lib``,
  ``/usr/lib``); ``$ORIGIN``, ``$LIB`` and ``$PLATFORM`` are expanded; a candidate of
  another ELF class or machine is skipped, as ``ld.so`` skips it;
- a library already loaded under that name or soname is not loaded twice.

Files come from a :class:`Root`: the host (:class:`HostRoot`, ``/`` or a sysroot directory)
or an imgkit :class:`Tree` (:class:`TreeRoot`); symlinks are followed inside that root, never
out of it. Libraries loaded through ``dlopen`` are not in the ELF's dynamic section: list them
as binaries too.
"""
from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, Protocol

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from imgkit.errors import InputError
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree

#: Where a bare binary name is looked for, in order.
BINARY_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
#: ELF ``e_machine`` -> (Debian multiarch triplet, ``$PLATFORM``), for the default library dirs.
MACHINES = {
    ("ELFCLASS64", "EM_X86_64"): ("x86_64-linux-gnu", "x86_64"),
    ("ELFCLASS32", "EM_386"): ("i386-linux-gnu", "i686"),
    ("ELFCLASS64", "EM_AARCH64"): ("aarch64-linux-gnu", "aarch64"),
    ("ELFCLASS32", "EM_ARM"): ("arm-linux-gnueabihf", "v7l"),
    ("ELFCLASS64", "EM_RISCV"): ("riscv64-linux-gnu", "riscv64"),
    ("ELFCLASS64", "EM_PPC64"): ("powerpc64le-linux-gnu", "powerpc64le"),
    ("ELFCLASS64", "EM_S390"): ("s390x-linux-gnu", "s390x"),
    ("ELFCLASS64", "EM_LOONGARCH"): ("loongarch64-linux-gnu", "loongarch64"),
}
#: The dynamic tags read, and the attribute pyelftools gives each one's string as.
_STRING_TAGS = {"DT_NEEDED": "needed", "DT_RPATH": "rpath", "DT_RUNPATH": "runpath",
                "DT_SONAME": "soname"}
_MAX_SYMLINKS = 40  # what the kernel allows in one lookup

PathKind = Literal["file", "dir", "symlink", "other"]


class Root(Protocol):
    """A filesystem the binaries and libraries are read from (paths are absolute in it)."""

    @property
    def name(self) -> str:
        """What messages call it ("the host", "tree initrd")."""
        ...

    def kind(self, path: str) -> PathKind | None:
        """What ``path`` is, without following a final symlink; ``None`` if absent."""
        ...

    def readlink(self, path: str) -> str: ...

    def open(self, path: str) -> BinaryIO:
        """A seekable reader of the regular file ``path``."""
        ...

    def entry(self, path: str, dest: str, mtime: int) -> Entry:
        """The regular file ``path`` as a tree entry at ``dest``, owned 0:0."""
        ...


def _kind_of(mode: int) -> PathKind:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


@dataclass(frozen=True)
class HostRoot:
    """The host's files below ``prefix`` (``/`` for the host itself, or a sysroot)."""

    prefix: str = "/"

    @property
    def name(self) -> str:
        return "the host" if self.prefix == "/" else f"the directory {self.prefix}"

    def _host(self, path: str) -> str:
        return os.path.join(self.prefix, path.lstrip("/"))

    def kind(self, path: str) -> PathKind | None:
        try:
            return _kind_of(os.lstat(self._host(path)).st_mode)
        except OSError:
            return None

    def readlink(self, path: str) -> str:
        return os.readlink(self._host(path))

    def open(self, path: str) -> BinaryIO:
        return open(self._host(path), "rb")

    def entry(self, path: str, dest: str, mtime: int) -> Entry:
        host = self._host(path)
        st = os.stat(host)
        return Entry(dest, Kind.FILE, mode=st.st_mode & 0o755, mtime=mtime,
                     data=FileBlob(host, st.st_size), origin=host)


@dataclass
class TreeRoot:
    """The files of an imgkit tree (``name`` says which, in messages)."""

    tree: Tree
    name: str = "the tree"

    def kind(self, path: str) -> PathKind | None:
        e = self.tree.get(path.lstrip("/"))
        if e is None:
            return None
        if e.kind is Kind.HARDLINK:
            return "file"
        kinds: dict[Kind, PathKind] = {Kind.FILE: "file", Kind.DIR: "dir", Kind.SYMLINK: "symlink"}
        return kinds.get(e.kind, "other")

    def readlink(self, path: str) -> str:
        return self.tree[path.lstrip("/")].target or ""

    def _file(self, path: str) -> Entry:
        e = self.tree[path.lstrip("/")]
        if e.kind is Kind.HARDLINK and e.target is not None:
            e = self.tree[e.target]
        return e

    def open(self, path: str) -> BinaryIO:
        e = self._file(path)
        if e.data is None:
            return io.BytesIO(b"")
        with e.data.open() as f:
            return io.BytesIO(f.read())

    def entry(self, path: str, dest: str, mtime: int) -> Entry:
        e = self._file(path)
        return Entry(dest, Kind.FILE, mode=e.mode & 0o755, mtime=mtime,
                     data=e.data if e.data is not None else BytesBlob(b""),
                     origin=f"{self.name}: /{e.path}")


def realpath(root: Root, path: str) -> str | None:
    """``path`` with every symlink resolved inside ``root`` (``..`` stops at its top);
    ``None`` when a component is missing, is not a directory, or the links loop."""
    pending = [p for p in reversed(path.split("/"))]
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        current = "/" + "/".join([*done, part])
        kind = root.kind(current)
        if kind is None:
            return None
        if kind == "symlink":
            hops += 1
            if hops > _MAX_SYMLINKS:
                return None
            target = root.readlink(current)
            if target.startswith("/"):
                done = []
            pending.extend(reversed(target.split("/")))
            continue
        if pending and any(p not in ("", ".") for p in pending) and kind != "dir":
            return None
        done.append(part)
    return "/" + "/".join(done)


@dataclass(frozen=True)
class ElfInfo:
    """What of an ELF file decides which libraries it loads."""

    elf_class: str
    machine: str
    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    soname: str | None


def read_elf(root: Root, path: str) -> ElfInfo:
    """The dynamic section and interpreter of the ELF file ``path`` of ``root``."""
    with root.open(path) as f:
        if f.read(4) != b"\x7fELF":
            f.seek(0)
            first = f.read(128).split(b"\n", 1)[0]
            what = f"a script ({first.decode(errors='replace')})" if first.startswith(b"#!") \
                else "not an ELF file"
            raise InputError(f"{path} in {root.name} is {what}",
                             hint="binaries takes ELF executables and libraries; add scripts "
                                  "and their interpreters as files and binaries")
        f.seek(0)
        try:
            elf = ELFFile(f)
            interpreter = None
            strings: dict[str, list[str]] = {t: [] for t in _STRING_TAGS}
            for seg in elf.iter_segments():
                if isinstance(seg, InterpSegment):
                    interpreter = seg.get_interp_name()
                elif isinstance(seg, DynamicSegment):
                    for tag in seg.iter_tags():
                        attr = _STRING_TAGS.get(tag.entry.d_tag)
                        if attr is not None:   # pyelftools names the string after the tag
                            strings[tag.entry.d_tag].append(getattr(tag, attr))
            needed = strings["DT_NEEDED"]
            rpath = [p for v in strings["DT_RPATH"] for p in v.split(":")]
            runpath = [p for v in strings["DT_RUNPATH"] for p in v.split(":")]
            soname = strings["DT_SONAME"][0] if strings["DT_SONAME"] else None
            return ElfInfo(f"ELFCLASS{elf.elfclass}", elf["e_machine"],
                           interpreter, tuple(needed), tuple(p for p in rpath if p),
                           tuple(p for p in runpath if p), soname)
        except (ELFError, ValueError, KeyError, IndexError, OSError) as exc:
            raise InputError(f"{path} in {root.name}: a damaged ELF file ({exc})") from None


def default_dirs(info: ElfInfo) -> tuple[str, ...]:
    """The library directories ``ld.so`` searches last, for the file's machine."""
    triplet = MACHINES.get((info.elf_class, info.machine), (None, None))[0]
    multiarch = (f"/lib/{triplet}", f"/usr/lib/{triplet}") if triplet else ()
    wide = ("/lib64", "/usr/lib64") if info.elf_class == "ELFCLASS64" else ("/lib32", "/usr/lib32")
    return (*multiarch, *wide, "/lib", "/usr/lib")


def expand_origin(entry: str, origin: str, info: ElfInfo) -> str:
    """A RUNPATH/RPATH entry with ``$ORIGIN``, ``$LIB`` and ``$PLATFORM`` expanded."""
    triplet, platform = MACHINES.get((info.elf_class, info.machine), ("", ""))
    lib = f"lib/{triplet}" if triplet else "lib"
    for name, value in (("ORIGIN", origin), ("LIB", lib), ("PLATFORM", platform)):
        entry = entry.replace("${" + name + "}", value).replace("$" + name, value)
    return posixpath.normpath(entry) if entry else entry


@dataclass(frozen=True)
class Resolved:
    """One file of a closure: where the loader finds it, the file that really is, who needs it."""

    path: str
    real: str
    needed_by: str | None
    info: ElfInfo = field(compare=False)


@dataclass
class _Loaded:
    path: str
    info: ElfInfo
    #: The directory ``$ORIGIN`` stands for.
    origin: str
    #: RPATH lists (expanded) of this object and the objects that loaded it, nearest first.
    rpaths: tuple[tuple[str, ...], ...]


def find_binary(root: Root, name: str) -> str:
    """The path of a binary: ``name`` itself when absolute, else the first of
    :data:`BINARY_DIRS` holding it."""
    if name.startswith("/"):
        if realpath(root, name) is None:
            raise InputError(f"binary {name} does not exist in {root.name}")
        return posixpath.normpath(name)
    if "/" in name or not name:
        raise InputError(f"binary {name!r}: expected an absolute path or a bare name")
    for d in BINARY_DIRS:
        candidate = f"{d}/{name}"
        real = realpath(root, candidate)
        if real is not None and root.kind(real) == "file":
            return candidate
    raise InputError(f"binary {name!r} was not found in {root.name}",
                     hint=f"searched {', '.join(BINARY_DIRS)}; give an absolute path")


def _same_machine(a: ElfInfo, b: ElfInfo) -> bool:
    return a.elf_class == b.elf_class and a.machine == b.machine


def closure(root: Root, binaries: Iterable[str]) -> list[Resolved]:
    """Every file the binaries need to run: each binary, its interpreter and its libraries,
    recursively, in load order (binaries first); errors name the missing library, the object
    that needs it and the binary it serves."""
    out: list[Resolved] = []
    by_name: dict[str, str] = {}   # names and sonames loaded -> path
    seen_paths: set[str] = set()
    for name in binaries:
        path = find_binary(root, name)
        real = realpath(root, path)
        assert real is not None
        info = read_elf(root, real)
        if path not in seen_paths:
            seen_paths.add(path)
            out.append(Resolved(path, real, None, info))
        # the executable's $ORIGIN is its real directory (the kernel gives ld.so the file)
        origin = posixpath.dirname(real)
        first = _Loaded(path, info, origin, (_expand_all(info.rpath, origin, info),))
        queue = [first]
        if info.interpreter:
            interp_real = realpath(root, info.interpreter)
            if interp_real is None:
                raise InputError(f"the dynamic loader {info.interpreter} of {path} is not in "
                                 f"{root.name}", hint="install the C library it was built for")
            interp = read_elf(root, interp_real)
            if info.interpreter not in seen_paths:
                seen_paths.add(info.interpreter)
                out.append(Resolved(info.interpreter, interp_real, path, interp))
            for alias in (info.interpreter, interp.soname):
                if alias:
                    by_name.setdefault(alias, info.interpreter)
        while queue:
            obj = queue.pop(0)
            for lib in obj.info.needed:
                if lib in by_name:
                    continue
                found = _search(root, lib, obj)
                if found is None:
                    dirs = _search_dirs(obj)
                    via = f" (for {path})" if obj.path != path else ""
                    raise InputError(
                        f"library {lib}, needed by {obj.path}{via}, was not found in {root.name}",
                        hint=f"searched {', '.join(dirs)}; install it, or list it in binaries "
                             "by its path")
                lib_path, lib_real, lib_info = found
                by_name[lib] = lib_path
                if lib_info.soname:
                    by_name.setdefault(lib_info.soname, lib_path)
                if lib_path not in seen_paths:
                    seen_paths.add(lib_path)
                    out.append(Resolved(lib_path, lib_real, obj.path, lib_info))
                lib_origin = posixpath.dirname(lib_path)
                own = _expand_all(lib_info.rpath, lib_origin, lib_info)
                queue.append(_Loaded(lib_path, lib_info, lib_origin, (own, *obj.rpaths)))
    return out


def _expand_all(entries: tuple[str, ...], origin: str, info: ElfInfo) -> tuple[str, ...]:
    return tuple(e for e in (expand_origin(x, origin, info) for x in entries) if e.startswith("/"))


def _search_dirs(obj: _Loaded) -> list[str]:
    dirs: list[str] = []
    if not obj.info.runpath:
        for rpath in obj.rpaths:
            dirs += rpath
    dirs += _expand_all(obj.info.runpath, obj.origin, obj.info)
    dirs += default_dirs(obj.info)
    return list(dict.fromkeys(dirs))


def _search(root: Root, lib: str, obj: _Loaded) -> tuple[str, str, ElfInfo] | None:
    if "/" in lib:
        candidates = [lib] if lib.startswith("/") else []
    else:
        candidates = [f"{d}/{lib}" for d in _search_dirs(obj)]
    for candidate in candidates:
        real = realpath(root, candidate)
        if real is None or root.kind(real) != "file":
            continue
        try:
            info = read_elf(root, real)
        except InputError:
            continue   # ld.so skips a file it cannot load and looks further
        if _same_machine(info, obj.info):
            return candidate, real, info
    return None


def closure_entries(root: Root, binaries: Iterable[str], *, mtime: int = 0) -> list[Entry]:
    """Tree entries for the binaries and their closure, owned 0:0.

    A binary is placed at its real path (so its ``$ORIGIN`` is the one the loader computes)
    with a symlink from the name it was asked by; a library at the path the loader finds it
    by, and a second path to the same file is a symlink to the first.
    """
    entries: list[Entry] = []
    placed: dict[str, str] = {}   # real path -> where its bytes went
    for r in closure(root, binaries):
        dest = r.real if r.needed_by is None else r.path
        if r.real in placed:
            if placed[r.real] != dest:
                entries.append(_symlink(dest, placed[r.real], mtime))
        else:
            placed[r.real] = dest
            entries.append(root.entry(r.real, dest.lstrip("/"), mtime))
        if r.needed_by is None and r.path != r.real:
            entries.append(_symlink(r.path, r.real, mtime))
    return entries


def _symlink(path: str, target: str, mtime: int) -> Entry:
    rel = posixpath.relpath(target, posixpath.dirname(path))
    return Entry(path.lstrip("/"), Kind.SYMLINK, mode=0o777, mtime=mtime, target=rel)
