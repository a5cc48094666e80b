"""Kernel modules: find them by name or alias and order them so each loads after what it needs.

An initramfs that loads modules with plain ``insmod`` (no ``modprobe``, no ``modules.dep`` in
the image) needs the full list in load order at build time. Two things make that list longer
than the obvious: hard dependencies (``depends=``) and *soft* dependencies (``softdep=``):
ext4 only names ``crc32c`` as a softdep, yet fails to mount without it.

The index comes from depmod's files (``modules.dep``, ``modules.softdep``, ``modules.alias``)
when the modules directory has them. Debian's kernel package ships none of them, so otherwise
the ``.modinfo`` ELF section of every ``.ko`` is read directly (headers and one section only,
no full read for uncompressed modules). Either way the index is cached as JSON under the user
cache directory, keyed by the directory's path and modification times; JSON, not pickle,
because the cache directory may be shared between users.

The same index can be read from a :class:`~imgkit.tree.Tree` (a root filesystem from an
archive, whose blobs are read lazily): :func:`materialize_modules` resolves the requested
modules there and copies only those files out, so a build never unpacks a whole
``lib/modules`` (hundreds of MB) to use a tree's own kernel.
"""
from __future__ import annotations

import difflib
import fnmatch
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from imgkit.errors import ImageError, InputError
from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree

#: Module file suffixes and the compression each implies.
_SUFFIXES = {".ko": None, ".ko.xz": "xz", ".ko.zst": "zstd", ".ko.gz": "gzip"}

#: Where the init script reads its load order from (one absolute path per line).
LOAD_ORDER_FILE = "etc/imgkit/modules"

_INDEX_FORMAT = 1


@dataclass(frozen=True)
class Module:
    """One loadable module: its name, its path relative to the modules directory, and how
    the file is compressed (``None``, ``"xz"``, ``"zstd"`` or ``"gzip"``)."""

    name: str
    path: str
    compression: str | None = None

    @property
    def compressed(self) -> bool:
        return self.compression is not None

    @property
    def plain_path(self) -> str:
        """The path with any compression suffix removed (what ends up in an initramfs)."""
        for suffix, comp in _SUFFIXES.items():
            if comp and self.path.endswith(suffix):
                return self.path[: -len(suffix)] + ".ko"
        return self.path


def normalize(name: str) -> str:
    """Module names treat ``-`` and ``_`` as the same character; ``_`` is canonical."""
    return name.replace("-", "_")


def _strip_suffix(filename: str) -> tuple[str, str | None] | None:
    for suffix, comp in _SUFFIXES.items():
        if filename.endswith(suffix):
            return filename[: -len(suffix)], comp
    return None


# -- reading one module ----------------------------------------------------------------------
def read_module_bytes(path: str, compression: str | None) -> bytes:
    """The uncompressed ELF image of a module file."""
    with open(path, "rb") as f:
        return decompress_module(f.read(), compression, path)


def decompress_module(raw: bytes, compression: str | None, origin: str) -> bytes:
    """The uncompressed ELF image of a module file's bytes."""
    if compression is None:
        return raw
    try:
        if compression == "xz":
            return lzma.decompress(raw)
        if compression == "gzip":
            return gzip.decompress(raw)
        if compression == "zstd":
            try:
                import zstandard
            except ImportError as exc:  # pragma: no cover - depends on the host
                raise InputError(f"{origin} is zstd-compressed but the 'zstandard' module is "
                                 "not installed", hint="pip install zstandard") from exc
            return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise ImageError(f"cannot decompress kernel module {origin}: {exc}") from exc
    raise ImageError(f"unknown module compression {compression!r} for {origin}")


# -- where the files are: a host directory or a tree ---------------------------------------
class ModuleFiles(Protocol):
    """Read access to one ``lib/modules/VERSION`` directory, wherever it lives."""

    #: How messages name the directory (a host path, or ``tree NAME: /usr/lib/modules/VER``).
    where: str

    def open(self, rel: str) -> BinaryIO:
        """The file at ``rel`` (``FileNotFoundError`` if there is none)."""
        ...

    def walk(self, top: str) -> Iterator[str]:
        """Paths (relative to the directory) of the files below ``top``, in sorted order."""
        ...


class HostModules:
    """A modules directory on the host."""

    def __init__(self, moddir: str) -> None:
        self.moddir = self.where = moddir

    def open(self, rel: str) -> BinaryIO:
        return open(os.path.join(self.moddir, rel), "rb")

    def walk(self, top: str) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(os.path.join(self.moddir, top)):
            dirnames.sort()
            for filename in sorted(filenames):
                full = os.path.join(dirpath, filename)
                yield os.path.relpath(full, self.moddir).replace(os.sep, "/")


def find_in_tree(tree: Tree, path: str, *, follow_last: bool = True) -> Entry | None:
    """The entry at ``path`` in ``tree``, following symlinks as the booted system would
    (absolute targets from the tree's root; merged /usr makes ``lib`` one) and hard links to
    their file; ``None`` if nothing is there or the links loop."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        e = tree.get("/".join([*done, part]))
        if e is None:
            return None
        if e.kind is Kind.SYMLINK and (parts or follow_last):
            hops += 1
            if hops > 40:
                return None
            target = e.target or ""
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    e = tree.get("/".join(done))
    if e is not None and e.kind is Kind.HARDLINK:
        e = tree.get(e.target or "")
    return e


class TreeModules:
    """A modules directory inside a tree (``base``: its tree path, symlinks resolved)."""

    def __init__(self, tree: Tree, base: str, where: str) -> None:
        self.tree, self.base, self.where = tree, base, where

    def entry(self, rel: str) -> Entry:
        """The regular file at ``rel``; a symlink or hard link leads to its file."""
        e = find_in_tree(self.tree, f"{self.base}/{rel}")
        if e is None or e.kind is not Kind.FILE:
            raise FileNotFoundError(f"{self.where}/{rel}")
        return e

    def open(self, rel: str) -> BinaryIO:
        """A seekable reader (``.modinfo`` is found by seeking): an archive member's reader
        is a stream, so its bytes are read into memory (modules are small)."""
        e = self.entry(rel)
        if e.data is None:
            return io.BytesIO(b"")
        f = e.data.open()
        if f.seekable():
            return f
        with f:
            return io.BytesIO(f.read())

    def walk(self, top: str) -> Iterator[str]:
        start = find_in_tree(self.tree, f"{self.base}/{top}")
        if start is None or start.kind is not Kind.DIR:
            return
        cut = len(start.path)
        stack = [start.path]
        while stack:
            d = stack.pop()
            for child in reversed(self.tree.children(d)):
                if child.kind is Kind.DIR:
                    stack.append(child.path)
            for child in self.tree.children(d):
                if child.kind in (Kind.FILE, Kind.HARDLINK):
                    yield top + child.path[cut:]


def _text_lines(files: ModuleFiles, name: str) -> Iterator[str]:
    with files.open(name) as f:
        yield from io.TextIOWrapper(f, encoding="utf-8", errors="replace")


def modinfo_section(data_or_file, origin: str) -> bytes:
    """The raw ``.modinfo`` section of an ELF object (bytes or a seekable binary file).

    Only the ELF header, the section headers and the section-name table are read, which keeps
    a scan of thousands of uncompressed modules fast.
    """
    f = data_or_file
    if isinstance(f, (bytes, bytearray)):
        f = io.BytesIO(f)

    def read_at(offset: int, size: int) -> bytes:
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise ImageError(f"{origin}: truncated ELF file (wanted {size} bytes at {offset})")
        return data

    ident = read_at(0, 16)
    if ident[:4] != b"\x7fELF":
        raise ImageError(f"{origin}: not an ELF object (magic {ident[:4]!r})")
    cls, endian = ident[4], ident[5]
    if cls not in (1, 2) or endian not in (1, 2):
        raise ImageError(f"{origin}: unsupported ELF class {cls} / data encoding {endian}")
    e = "<" if endian == 1 else ">"
    if cls == 2:
        shoff, = struct.unpack(e + "Q", read_at(0x28, 8))
        shentsize, shnum, shstrndx = struct.unpack(e + "HHH", read_at(0x3A, 6))
        sh_fmt, name_i, off_i, size_i = e + "IIQQQQIIQQ", 0, 4, 5
    else:
        shoff, = struct.unpack(e + "I", read_at(0x20, 4))
        shentsize, shnum, shstrndx = struct.unpack(e + "HHH", read_at(0x2E, 6))
        sh_fmt, name_i, off_i, size_i = e + "IIIIIIIIII", 0, 4, 5
    if shnum == 0 or shstrndx >= shnum:
        raise ImageError(f"{origin}: ELF file has no usable section header table")
    need = struct.calcsize(sh_fmt)
    table = read_at(shoff, shentsize * shnum)
    sections = [struct.unpack(sh_fmt, table[i * shentsize: i * shentsize + need])
                for i in range(shnum)]
    strtab_sh = sections[shstrndx]
    strtab = read_at(strtab_sh[off_i], strtab_sh[size_i])
    for sh in sections:
        end = strtab.find(b"\0", sh[name_i])
        if strtab[sh[name_i]:end] == b".modinfo":
            return read_at(sh[off_i], sh[size_i])
    return b""


def parse_modinfo(section: bytes) -> list[tuple[str, str]]:
    """``key=value`` pairs of a ``.modinfo`` section, in order (keys repeat: alias, softdep)."""
    pairs = []
    for item in section.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode("utf-8", "replace").partition("=")
            pairs.append((key, value))
    return pairs


def parse_softdep(text: str) -> tuple[list[str], list[str]]:
    """``"pre: a b post: c"`` -> (["a", "b"], ["c"])."""
    pre: list[str] = []
    post: list[str] = []
    current = None
    for word in text.split():
        if word == "pre:":
            current = pre
        elif word == "post:":
            current = post
        elif current is not None:
            current.append(word)
    return pre, post


# -- the index -------------------------------------------------------------------------------
@dataclass
class ModuleIndex:
    """Everything resolution needs to know about one modules directory."""

    moddir: str
    modules: dict[str, dict]  # name -> {"path", "comp", "depends", "pre", "post"}
    aliases: list[tuple[str, str]]  # (pattern, module name)
    builtin: set[str]
    builtin_aliases: list[tuple[str, str]]

    # alias lookups: exact patterns in a dict, wildcard patterns scanned with fnmatch
    def __post_init__(self) -> None:
        self._exact: dict[str, list[str]] = {}
        # Wildcard aliases (thousands of device ids such as "pci:v00001AF4d*") are bucketed by
        # their first three literal characters, so a lookup tries a handful, not all of them.
        self._wild: dict[str, list[tuple[str, str]]] = {}
        for pattern, name in self.aliases:
            if any(c in pattern for c in "*?["):
                literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
                key = normalize(literal)[:3] if len(literal) >= 3 else ""
                self._wild.setdefault(key, []).append((pattern, name))
            else:
                self._exact.setdefault(normalize(pattern), []).append(name)
        self._bexact: set[str] = set()
        self._bwild: list[str] = []
        for pattern, _name in self.builtin_aliases:
            if any(c in pattern for c in "*?["):
                self._bwild.append(pattern)
            else:
                self._bexact.add(normalize(pattern))

    def lookup(self, query: str) -> list[str] | None:
        """Module names ``query`` stands for; ``[]`` if built in; ``None`` if unknown."""
        n = normalize(query)
        if n in self.modules:
            return [n]
        if n in self.builtin:
            return []
        found = set(self._exact.get(n, ()))
        candidates = {*self._wild.get(n[:3], ()), *self._wild.get("", ())}
        for pattern, name in candidates:
            if fnmatch.fnmatchcase(query, pattern) or fnmatch.fnmatchcase(n, normalize(pattern)):
                found.add(name)
        found = {m for m in found if m in self.modules}
        if found:
            return sorted(found)
        if n in self._bexact or any(fnmatch.fnmatchcase(query, p) for p in self._bwild):
            return []
        return None

    def module(self, name: str) -> Module:
        info = self.modules[name]
        return Module(name, info["path"], info["comp"])

    def close_names(self, query: str) -> list[str]:
        names = list(self.modules) + list(self.builtin)
        return difflib.get_close_matches(normalize(query), names, n=4, cutoff=0.6)

    def to_json(self) -> dict:
        return {"format": _INDEX_FORMAT, "moddir": self.moddir, "modules": self.modules,
                "aliases": self.aliases, "builtin": sorted(self.builtin),
                "builtin_aliases": self.builtin_aliases}

    @classmethod
    def from_json(cls, data: dict) -> ModuleIndex:
        return cls(data["moddir"], data["modules"], [tuple(a) for a in data["aliases"]],
                   set(data["builtin"]), [tuple(a) for a in data["builtin_aliases"]])


def _read_builtin(files: ModuleFiles) -> tuple[set[str], list[tuple[str, str]]]:
    builtin: set[str] = set()
    aliases: list[tuple[str, str]] = []
    try:
        for line in _text_lines(files, "modules.builtin"):
            line = line.strip()
            if line:
                stripped = _strip_suffix(posixpath.basename(line))
                builtin.add(normalize(stripped[0] if stripped else line))
    except FileNotFoundError:
        pass
    try:
        with files.open("modules.builtin.modinfo") as f:
            for item in f.read().split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                mod, dot, field = key.partition(".")
                if sep and dot and field == "alias":
                    aliases.append((value, normalize(mod)))
                    builtin.add(normalize(mod))
    except FileNotFoundError:
        pass
    return builtin, aliases


#: depmod's files an index is read from when the directory has all of them.
_DEPMOD_FILES = ("modules.dep", "modules.softdep", "modules.alias")


def _index_from_depmod(files: ModuleFiles) -> ModuleIndex:
    modules: dict[str, dict] = {}
    by_path: dict[str, str] = {}
    for lineno, line in enumerate(_text_lines(files, "modules.dep"), 1):
        if not line.strip():
            continue
        path, sep, deps = line.partition(":")
        stripped = _strip_suffix(posixpath.basename(path.strip()))
        if not sep or stripped is None:
            raise ImageError(f"{files.where}/modules.dep line {lineno}: expected "
                             f"'path.ko: deps...', got {line.strip()!r}")
        name = normalize(stripped[0])
        by_path[path.strip()] = name
        modules[name] = {"path": path.strip(), "comp": stripped[1],
                         "depends": deps.split(), "pre": [], "post": []}
    for info in modules.values():
        info["depends"] = [by_path.get(d) or normalize(_strip_suffix(posixpath.basename(d))[0])
                           for d in info["depends"]]
    for line in _text_lines(files, "modules.softdep"):
        words = line.split(None, 2)
        if len(words) == 3 and words[0] == "softdep" and normalize(words[1]) in modules:
            pre, post = parse_softdep(words[2])
            modules[normalize(words[1])]["pre"] += pre
            modules[normalize(words[1])]["post"] += post
    aliases = []
    for line in _text_lines(files, "modules.alias"):
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            aliases.append((words[1], normalize(words[2])))
    builtin, baliases = _read_builtin(files)
    return ModuleIndex(files.where, modules, aliases, builtin, baliases)


def _index_from_modinfo(files: ModuleFiles) -> ModuleIndex:
    modules: dict[str, dict] = {}
    aliases: list[tuple[str, str]] = []
    for top in ("kernel", "updates", "extra"):
        for rel in files.walk(top):
            stripped = _strip_suffix(posixpath.basename(rel))
            if stripped is None:
                continue
            origin = f"{files.where}/{rel}"
            with files.open(rel) as f:
                if stripped[1] is None:
                    section = modinfo_section(f, origin)
                else:
                    section = modinfo_section(decompress_module(f.read(), stripped[1], origin),
                                              origin)
            info = parse_modinfo(section)
            name = normalize(next((v for k, v in info if k == "name"), stripped[0]))
            depends, pre, post = [], [], []
            for key, value in info:
                if key == "depends":
                    depends += [normalize(d) for d in value.split(",") if d]
                elif key == "softdep":
                    p, q = parse_softdep(value)
                    pre += p
                    post += q
                elif key == "alias":
                    aliases.append((value, name))
            if name in modules and top != "kernel":
                pass  # updates/ and extra/ override kernel/, as depmod does
            elif name in modules:
                continue
            modules[name] = {"path": rel, "comp": stripped[1], "depends": depends,
                             "pre": pre, "post": post}
    if not modules:
        raise InputError(f"no kernel modules (*.ko, *.ko.xz, *.ko.zst, *.ko.gz) found under "
                         f"{files.where}/kernel", hint="pass the lib/modules/VERSION directory")
    builtin, baliases = _read_builtin(files)
    return ModuleIndex(files.where, modules, aliases, builtin, baliases)


def read_index(files: ModuleFiles) -> ModuleIndex:
    """The index of a modules directory: from depmod's files when it has them all, else
    from every module's ``.modinfo`` (no cache: :func:`load_index` caches host ones)."""
    try:
        return _index_from_depmod(files)
    except FileNotFoundError:
        return _index_from_modinfo(files)


def _cache_key(moddir: str) -> str:
    parts = [moddir]
    for name in ("", "kernel", "modules.dep", "modules.alias", "modules.softdep",
                 "modules.builtin", "updates", "extra"):
        try:
            st = os.stat(os.path.join(moddir, name))
            parts.append(f"{name}:{st.st_mtime_ns}:{st.st_size}:{st.st_ino}")
        except OSError:
            parts.append(f"{name}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


_memo: dict[str, ModuleIndex] = {}


def load_index(moddir: str | os.PathLike, *, use_cache: bool = True) -> ModuleIndex:
    """The module index of ``moddir`` (a ``lib/modules/VERSION`` directory), cached.

    The on-disk cache is best effort: an unwritable cache directory only costs speed.
    """
    moddir = os.path.realpath(os.fspath(moddir))
    if not os.path.isdir(moddir):
        raise InputError(f"modules directory {moddir} does not exist",
                         hint="expected a lib/modules/VERSION directory")
    key = _cache_key(moddir)
    if use_cache and key in _memo:
        return _memo[key]
    cache_file = None
    if use_cache:
        from imgkit.vm.kernel import cache_root
        cache_file = os.path.join(cache_root(), "kmod", f"{key}.json")
        try:
            with open(cache_file, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("format") == _INDEX_FORMAT and data.get("moddir") == moddir:
                index = ModuleIndex.from_json(data)
                _memo[key] = index
                return index
        except (OSError, ValueError, KeyError, TypeError):
            pass
    host = HostModules(moddir)
    have_depmod = all(os.path.exists(os.path.join(moddir, f)) for f in _DEPMOD_FILES)
    index = _index_from_depmod(host) if have_depmod else _index_from_modinfo(host)
    if cache_file is not None:
        _memo[key] = index
        try:
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache_file), suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(index.to_json(), f)
                os.chmod(tmp, 0o644)
                os.replace(tmp, cache_file)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            pass
    return index


# -- resolution ------------------------------------------------------------------------------
def resolve_modules(moddir: str | os.PathLike, names_or_aliases: Iterable[str]) -> list[Module]:
    """The modules to load from host directory ``moddir``: see :func:`resolve_in`."""
    return resolve_in(load_index(moddir), names_or_aliases)


def resolve_in(index: ModuleIndex, names_or_aliases: Iterable[str]) -> list[Module]:
    """The modules to load, dependencies first, for the given names or aliases.

    Follows ``depends`` and both halves of ``softdep`` (``pre:`` before the module, ``post:``
    after it). An alias matching several modules brings in all of them, as ``modprobe`` does.
    Built-in modules count as satisfied. A soft dependency that names nothing known is skipped
    (as ``modprobe`` does); an unknown requested name or hard dependency is an error.
    """
    order: list[str] = []
    done: set[str] = set()
    active: set[str] = set()

    def visit(name: str, via: str) -> None:
        if name in done or name in active:
            return
        info = index.modules.get(name)
        if info is None:
            if name in index.builtin:
                done.add(name)
                return
            raise InputError(f"kernel module {name!r} (needed by {via}) is not in "
                             f"{index.moddir}", hint="the modules directory looks incomplete")
        active.add(name)
        for soft in info["pre"]:
            for m in index.lookup(soft) or ():
                visit(m, f"{name} (softdep)")
        for dep in info["depends"]:
            visit(dep, name)
        active.discard(name)
        done.add(name)
        order.append(name)
        for soft in info["post"]:
            for m in index.lookup(soft) or ():
                visit(m, f"{name} (softdep)")

    for query in names_or_aliases:
        found = index.lookup(query)
        if found is None:
            close = index.close_names(query)
            raise InputError(
                f"unknown kernel module or alias {query!r} in {index.moddir}",
                hint=f"did you mean: {', '.join(close)}?" if close else
                "check the name with 'modinfo -b' or list the modules directory")
        for name in found:
            visit(name, "the request")
    return [index.module(name) for name in order]


#: Index files copied next to materialized modules (what ``modprobe`` and depmod read too).
_INDEX_FILES = (*_DEPMOD_FILES, "modules.builtin", "modules.builtin.modinfo", "modules.order")


def materialize_modules(files: TreeModules, names_or_aliases: Iterable[str], dest: str) -> str:
    """Copy the modules ``names_or_aliases`` resolve to (dependencies and softdeps included)
    and the directory's index files out of a tree into ``dest/VERSION``; returns that
    directory, ready for :func:`resolve_modules` and :func:`modules_tree`.

    Only these few files are written, never the whole ``lib/modules``. The tree's index is
    remembered for the new directory (in memory: it lives as long as the build), so resolving
    there gives exactly what the tree's full directory gives.
    """
    index = read_index(files)
    modules = resolve_in(index, names_or_aliases)
    out = os.path.join(dest, posixpath.basename(files.base))
    os.makedirs(out, exist_ok=True)
    wanted = [m.path for m in modules] + list(_INDEX_FILES)
    for rel in wanted:
        try:
            src = files.open(rel)
        except FileNotFoundError:
            if rel in _INDEX_FILES:
                continue
            raise
        target = os.path.join(out, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with src, open(target, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
    _memo[_cache_key(os.path.realpath(out))] = ModuleIndex(
        files.where, index.modules, index.aliases, index.builtin, index.builtin_aliases)
    return out


def modules_tree(moddir: str | os.PathLike, modules: Iterable[Module], *, mtime: int = 0) -> Tree:
    """A tree holding ``modules`` at ``lib/modules/VERSION/...`` and the load-order file.

    Compressed modules are stored decompressed: busybox ``insmod`` hands the file straight to
    the kernel, and a kernel without in-kernel module decompression cannot load ``.ko.xz``.
    """
    moddir = os.path.realpath(os.fspath(moddir))
    version = os.path.basename(moddir)
    tree = Tree(default_mtime=mtime)
    lines = []
    for mod in modules:
        host = os.path.join(moddir, mod.path)
        dest = f"lib/modules/{version}/{mod.plain_path}"
        if mod.compressed:
            blob = BytesBlob(read_module_bytes(host, mod.compression))
        else:
            blob = FileBlob(host, os.stat(host).st_size)
        tree.add(Entry(dest, Kind.FILE, mode=0o644, mtime=mtime, data=blob, origin=host))
        lines.append("/" + dest)
    text = "".join(line + "\n" for line in lines)
    tree.add(Entry(LOAD_ORDER_FILE, Kind.FILE, mode=0o644, mtime=mtime,
                   data=BytesBlob(text.encode()), origin="imgkit.vm.kmod"))
    return tree
