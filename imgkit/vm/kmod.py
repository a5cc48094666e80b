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
"""
from __future__ import annotations

import difflib
import fnmatch
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import re
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

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
    if compression is None:
        with open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if compression == "xz":
            return lzma.decompress(raw)
        if compression == "gzip":
            return gzip.decompress(raw)
        if compression == "zstd":
            try:
                import zstandard
            except ImportError as exc:  # pragma: no cover - depends on the host
                raise InputError(f"{path} is zstd-compressed but the 'zstandard' module is "
                                 "not installed", hint="pip install zstandard") from exc
            return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise ImageError(f"cannot decompress kernel module {path}: {exc}") from exc
    raise ImageError(f"unknown module compression {compression!r} for {path}")


def modinfo_section(data_or_file, origin: str) -> bytes:
    """The raw ``.modinfo`` section of an ELF object (bytes or a seekable binary file).

    Only the ELF header, the section headers and the section-name table are read, which keeps
    a scan of thousands of uncompressed modules fast.
    """
    f = data_or_file
    if isinstance(f, (bytes, bytearray)):
        import io
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


def _read_builtin(moddir: str) -> tuple[set[str], list[tuple[str, str]]]:
    builtin: set[str] = set()
    aliases: list[tuple[str, str]] = []
    try:
        with open(os.path.join(moddir, "modules.builtin"), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    stripped = _strip_suffix(posixpath.basename(line))
                    builtin.add(normalize(stripped[0] if stripped else line))
    except FileNotFoundError:
        pass
    try:
        with open(os.path.join(moddir, "modules.builtin.modinfo"), "rb") as f:
            for item in f.read().split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                mod, dot, field = key.partition(".")
                if sep and dot and field == "alias":
                    aliases.append((value, normalize(mod)))
                    builtin.add(normalize(mod))
    except FileNotFoundError:
        pass
    return builtin, aliases


def _index_from_depmod(moddir: str) -> ModuleIndex:
    modules: dict[str, dict] = {}
    by_path: dict[str, str] = {}
    with open(os.path.join(moddir, "modules.dep"), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            path, sep, deps = line.partition(":")
            stripped = _strip_suffix(posixpath.basename(path.strip()))
            if not sep or stripped is None:
                raise ImageError(f"{moddir}/modules.dep line {lineno}: expected "
                                 f"'path.ko: deps...', got {line.strip()!r}")
            name = normalize(stripped[0])
            by_path[path.strip()] = name
            modules[name] = {"path": path.strip(), "comp": stripped[1],
                             "depends": deps.split(), "pre": [], "post": []}
    for info in modules.values():
        info["depends"] = [by_path.get(d) or normalize(_strip_suffix(posixpath.basename(d))[0])
                           for d in info["depends"]]
    with open(os.path.join(moddir, "modules.softdep"), encoding="utf-8") as f:
        for line in f:
            words = line.split(None, 2)
            if len(words) == 3 and words[0] == "softdep" and normalize(words[1]) in modules:
                pre, post = parse_softdep(words[2])
                modules[normalize(words[1])]["pre"] += pre
                modules[normalize(words[1])]["post"] += post
    aliases = []
    with open(os.path.join(moddir, "modules.alias"), encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if len(words) == 3 and words[0] == "alias":
                aliases.append((words[1], normalize(words[2])))
    builtin, baliases = _read_builtin(moddir)
    return ModuleIndex(moddir, modules, aliases, builtin, baliases)


def _index_from_modinfo(moddir: str) -> ModuleIndex:
    modules: dict[str, dict] = {}
    aliases: list[tuple[str, str]] = []
    for top in ("kernel", "updates", "extra"):
        base = os.path.join(moddir, top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for filename in sorted(filenames):
                stripped = _strip_suffix(filename)
                if stripped is None:
                    continue
                full = os.path.join(dirpath, filename)
                rel = os.path.relpath(full, moddir).replace(os.sep, "/")
                if stripped[1] is None:
                    with open(full, "rb") as f:
                        section = modinfo_section(f, full)
                else:
                    section = modinfo_section(read_module_bytes(full, stripped[1]), full)
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
                         f"{moddir}/kernel", hint="pass the lib/modules/VERSION directory")
    builtin, baliases = _read_builtin(moddir)
    return ModuleIndex(moddir, modules, aliases, builtin, baliases)


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
    have_depmod = all(os.path.exists(os.path.join(moddir, f))
                      for f in ("modules.dep", "modules.softdep", "modules.alias"))
    index = _index_from_depmod(moddir) if have_depmod else _index_from_modinfo(moddir)
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
    """The modules to load, dependencies first, for the given names or aliases.

    Follows ``depends`` and both halves of ``softdep`` (``pre:`` before the module, ``post:``
    after it). An alias matching several modules brings in all of them, as ``modprobe`` does.
    Built-in modules count as satisfied. A soft dependency that names nothing known is skipped
    (as ``modprobe`` does); an unknown requested name or hard dependency is an error.
    """
    index = load_index(moddir)
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
