"""The build driver: a config in, the images it declares out.

Artifacts reference each other by name (a tree feeds an initramfs, the initramfs a UKI, the
UKI a FAT tree, the FAT a disk partition). :class:`Builder` resolves each reference once, on
demand, building intermediate artifacts in a private work directory and only the declared
outputs in the output directory (each written under a temporary name and renamed on success).

Disks are built in three steps so that a filesystem can fill its partition: measure the
smallest size of every filesystem, plan the layout (pure), then write each filesystem at its
partition's size (learning where the partition starts, which a FAT's boot sector records).

Everything type- or bootloader-specific goes through the two tables: filesystem types
(:mod:`imgkit.filesystems`) and boot paths (:mod:`imgkit.bootloaders.table`), which get a
small :class:`~imgkit.filesystems.BuildContext` rather than this driver.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

from imgkit import filesystems, fingerprint, scratch
from imgkit.atomic import atomic_path
from imgkit.bootloaders import table as boot
from imgkit.config import (
    SUBSTITUTION,
    Config,
    DiskConfig,
    FilesystemConfig,
    PartitionConfig,
    TreeConfig,
    verity_partitions,
)
from imgkit.errors import InputError, LayoutError
from imgkit.filesystems import BuildContext
from imgkit.sizes import parse_size

if TYPE_CHECKING:
    import uuid

    from imgkit.artifact_cache import ArtifactCache, CachePolicy, Hit
    from imgkit.disk import layout
    from imgkit.disk.image import Content
    from imgkit.elfdeps import Root
    from imgkit.formats import verity as dm_verity
    from imgkit.tree import Tree
    from imgkit.vm.kernel import KernelInfo

Progress = Callable[[str], None]
_T = TypeVar("_T")


#: The largest file a ``[[disk.regions]]`` entry holds (read into memory: boot blobs are small).
_MAX_REGION = 64 << 20


@dataclass
class Output:
    kind: str
    name: str
    path: str
    size: int
    details: dict = field(default_factory=dict)


@dataclass
class BuildResult:
    outputs: list[Output]
    #: (artifact, taken from the cache?, what changed if it was cached before) for every
    #: artifact this build needed, with a cache.
    artifacts: list[tuple[str, bool, str]] = field(default_factory=list)


class Builder:
    """Builds the artifacts of one config; every artifact is built at most once."""

    def __init__(self, cfg: Config, output_dir: str, *, progress: Progress | None = None,
                 mtime: int | None = None, cache: CachePolicy | None = None) -> None:
        self.cfg = cfg
        self.output_dir = output_dir
        self.progress = progress or (lambda msg: None)
        self.mtime = mtime if mtime is not None else cfg.mtime
        self._work: str | None = None
        self._cache: dict[str, object] = {}
        self.outputs: list[Output] = []
        self.cache_policy = cache
        self.identity = cache.identity if cache else fingerprint.STAT
        self._store: ArtifactCache | None = None
        self._deps: dict[str, list[fingerprint.Dep]] = {}   # what each _once step read
        self._keys: dict[str, str] = {}                      # artifact reference -> key
        self._excluded_paths: list[str] | None = None
        self._kernel_state_value: str | None = None
        self.artifacts: list[tuple[str, bool, str]] = []

    @property
    def work(self) -> str:
        """The private directory for intermediate artifacts, made when first needed (a disk
        of empty partitions needs none)."""
        if self._work is None:
            import tempfile
            self._work = tempfile.mkdtemp(prefix="imgkit-build-", dir=scratch.current())
        return self._work

    def close(self) -> None:
        if self._work is not None:
            import shutil
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    # -- helpers ----------------------------------------------------------------------------
    def _once(self, key: str, make: Callable[[], _T]) -> _T:
        """``make()``, called the first time ``key`` is asked for and remembered after.

        Each key names one kind of artifact (``tree:NAME`` a Tree, ``fs:NAME`` a (path, size)),
        so what the cache holds under it is what ``make`` returns."""
        if key not in self._cache:
            if self.cache_policy is None:
                self._cache[key] = make()
            else:
                with self._recording() as rec:
                    self._cache[key] = make()
                self._deps[key] = rec.as_list()
        deps, top = self._deps.get(key), fingerprint.active()
        if deps and top is not None:
            top.merge(deps)   # whoever asks for a step depends on what it read
        return cast(_T, self._cache[key])

    # -- the artifact cache -----------------------------------------------------------------
    @property
    def store(self) -> ArtifactCache:
        """The artifact cache, opened when first needed (a build with a policy only)."""
        assert self.cache_policy is not None
        if self._store is None:
            from imgkit.artifact_cache import ArtifactCache
            self._store = ArtifactCache(self.cache_policy)
        return self._store

    def _recording(self) -> contextlib.AbstractContextManager[fingerprint.Recorder]:
        if self._excluded_paths is None:
            self._excluded_paths = list(os.path.abspath(p) for p in (
                self.work, scratch.current(), self.store.root, self.output_dir, _kmod_cache(),
                "/proc", "/sys", "/dev", *fingerprint.python_paths()) if p)
        return fingerprint.recording(self.identity, self._excluded_paths)

    def _artifact(self, ref: str, label: str, section: object,
                  write: Callable[[str], dict | None], path: str) -> tuple[str, dict]:
        """Artifact ``ref``: taken from the cache when everything it was made of is unchanged,
        else written at ``path`` by ``write(path)`` (which returns the details an output
        records) and kept in the cache -> (its file, its details)."""
        if self.cache_policy is None:
            return path, write(path) or {}
        from imgkit.artifact_cache import digest
        from imgkit.build_key import first_key
        first = first_key(self, ref, section)
        with self._recording():      # what checking reads is no input of the caller
            hit, changed = self._lookup(first)
        if hit is not None:
            self._found(ref, hit.key, cached=True)
            self.progress(f"{label}: cached")
            return hit.path, hit.details
        if changed:
            self.progress(f"{label}: rebuilding ({changed})")
        with self._recording() as rec:
            details = write(path) or {}
        deps = rec.as_list()
        key = digest(first, deps)
        self.store.store(first, key, deps, path, details)
        self._found(ref, key, cached=False, changed=changed)
        return path, details

    def _lookup(self, first: str) -> tuple[Hit | None, str]:
        """The cached artifact whose recorded inputs are all unchanged, else what changed
        for the most recent candidate ("" when there was none)."""
        changed = ""
        for candidate in self.store.candidates(first):
            dep = fingerprint.first_change(candidate["deps"], self.identity, self._check_dep)
            if dep is None:
                hit = self.store.entry(candidate["key"])
                if hit is not None:
                    return hit, ""
                changed = changed or "its cache entry is missing or damaged"
            else:
                changed = changed or f"{dep[0]} {dep[1]} changed"
        return None, changed

    def _found(self, ref: str, key: str, *, cached: bool, changed: str = "") -> None:
        self._keys[ref] = key
        self.artifacts.append((ref, cached, changed))
        top = fingerprint.active()
        if top is not None:
            top.add(fingerprint.ARTIFACT, ref, key)

    def _check_dep(self, kind: str, name: str, value: object) -> bool:
        """Whether a recorded input only this driver knows is unchanged: another artifact
        (fetched or rebuilt now, then its key compared) or the kernel's resolution."""
        if kind == fingerprint.ENV and name == "kernel":
            return self._kernel_state() == value
        if kind != fingerprint.ARTIFACT:
            return False
        from imgkit.errors import ImgkitError
        try:
            self._reference(name)
        except (ImgkitError, KeyError, ValueError):
            return False
        return self._keys.get(name) == value

    def _reference(self, ref: str) -> None:
        kind, _, rest = ref.partition(":")
        if kind == "fs":
            name, _, at = rest.partition("@")
            if at:
                size, _, offset = at.partition("+")
                self.filesystem(name, size=int(size),
                                disk_offset=None if offset == "None" else int(offset))
            else:
                self.filesystem(name)
        elif kind == "initramfs":
            self.initramfs(rest)
        elif kind == "uki":
            self.uki(rest)
        else:
            raise KeyError(ref)

    def _kernel_state(self) -> str:
        """What the kernel's resolution depends on besides files: its config, and for a
        Debian kernel apt's state (the candidate version follows the package lists)."""
        if self._kernel_state_value is None:
            from imgkit.build_key import kernel_state
            self._kernel_state_value = kernel_state(self.cfg.kernel)
        return self._kernel_state_value

    def _record_blobs(self, tree: Tree) -> None:
        top = fingerprint.active()
        if top is not None:
            from imgkit.build_key import record_blobs
            record_blobs(top, tree)

    def evict(self) -> None:
        """After a build: the artifact cache back within its size limit."""
        if self._store is not None:
            self._store.evict()

    def _place(self, ref: str, src: str, dest: str) -> None:
        """Cached final output ``ref`` copied to ``dest`` (atomically; holes kept), unless
        ``dest`` is still the copy an earlier build left there."""
        from imgkit.artifact_cache import place
        key = self._keys[ref]
        if self.store.still_placed(dest, key):
            return
        self._check_room(os.path.getsize(src), f"output {os.path.basename(dest)}",
                         os.path.dirname(dest) or ".")
        with atomic_path(dest) as tmp, open(tmp, "wb") as f:
            place(src, f.fileno())
        self.store.placed(dest, key)

    def _seed(self, *parts: str) -> str:
        import hashlib
        return hashlib.sha256("\0".join((self.cfg.seed, *parts)).encode()).hexdigest()

    def _out_path(self, name: str) -> str:
        """Where output ``name`` goes (a relative name the config checked: OUTPUT_NAME)."""
        path = os.path.join(self.output_dir, name)
        os.makedirs(os.path.dirname(path) or self.output_dir, exist_ok=True)
        return path

    def _record(self, kind: str, name: str, path: str, **details: object) -> None:
        size = os.path.getsize(path)
        self.outputs.append(Output(kind, name, path, size, details))
        self.progress(f"wrote {path} ({size:,} bytes)")

    def _publish(self, kind: str, name: str, built: str, output: str | None) -> None:
        """Copy an intermediate artifact to a declared output (atomically)."""
        if not output:
            return
        dest = self._out_path(output)
        from imgkit.holes import copy_sparse
        with atomic_path(dest) as tmp:
            size = os.path.getsize(built)
            with open(tmp, "wb") as f:   # holes stay holes: an ext4 of one directory stays small
                f.truncate(size)
                copy_sparse(built, f.fileno(), 0, size)
        self._record(kind, name, dest)

    def _check_room(self, size: int, what: str, directory: str) -> None:
        """Refuse an image bigger than the free space where it is written, before writing
        anything (a typo such as ``size = "10T"`` must not fill the disk)."""
        os.makedirs(directory, exist_ok=True)
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if size > free:
            from imgkit.sizes import format_size
            raise InputError(f"{self.cfg.path}: {what} is {format_size(size)} "
                             f"({size:,} bytes), more than the {format_size(free)} free in "
                             f"{directory}", hint="give a smaller size, or free space there")

    # -- kernel -----------------------------------------------------------------------------
    def kernel(self) -> KernelInfo:
        def make() -> KernelInfo:
            from imgkit.vm import kernel as k
            from imgkit.vm.guest_init import init_config_modules
            kc = self.cfg.kernel
            if kc.source == "path":
                assert kc.path, "load_config requires path with source = 'path'"
                return k.find_kernel(kc.path, kc.moddir)
            if kc.source == "host":
                info = k.host_kernel()
                if info is None:
                    raise InputError("[kernel] source = 'host': no readable kernel in /boot",
                                     hint="use source = 'debian' to fetch one, or 'path'")
                return info
            if kc.source == "tree":
                assert kc.tree, "load_config requires tree with source = 'tree'"
                # only the modules some tree asks for leave the tree (load_config keeps
                # the kernel's own tree from asking)
                wanted = [m for tc in self.cfg.trees.values() for m in tc.modules + (
                          init_config_modules(tc.init_config) if tc.init_config else ())]
                info = k.tree_kernel(self.tree(kc.tree), os.path.join(self.work, "kernel"),
                                     where=f"{self.cfg.path}: [trees.{kc.tree}]",
                                     version=kc.version, modules=wanted)
                self.progress(f"kernel: {info.version} from tree {kc.tree}")
                return info
            info = self._debian_kernel()
            self.progress(f"kernel: {info.version} from Debian package {kc.package} "
                          + ("(downloaded)" if info.downloaded else "(cached)"))
            return info

        def make_recorded() -> KernelInfo:
            top = fingerprint.active()
            if top is None:
                return make()
            top.add(fingerprint.ENV, "kernel", self._kernel_state())
            info = make()
            if self.cfg.kernel.source == "debian":
                # an unpacked package is never changed, only replaced with a new .complete:
                # that one file stands for its thousands
                unpacked = os.path.dirname(os.path.dirname(info.vmlinuz))
                top.add_file(os.path.join(unpacked, ".complete"))
                assert self._excluded_paths is not None
                self._excluded_paths += {os.path.abspath(unpacked), os.path.realpath(unpacked)}
            return info
        info = self._once("kernel", make_recorded)
        self._check_tree_modules()
        return info

    def _debian_kernel(self) -> KernelInfo:
        """The Debian kernel: which one apt resolves to is remembered in the artifact cache
        while apt's state is unchanged (asking apt takes seconds)."""
        from imgkit.vm import kernel as k
        package = self.cfg.kernel.package
        if self.cache_policy is None:
            return k.fetch_debian_kernel(package=package)
        state = self._kernel_state()
        known = self.store.remembered(state)
        if known is not None and os.path.isfile(str(known.get("vmlinuz"))) and (
                known.get("moddir") is None or os.path.isdir(str(known["moddir"]))):
            return k.KernelInfo(str(known["vmlinuz"]), known.get("moddir"), str(known["version"]))
        with fingerprint.unrecorded():   # what it reads in apt's lists is the kernel state
            info = k.fetch_debian_kernel(package=package)
        self.store.remember(state, {"vmlinuz": info.vmlinuz, "moddir": info.moddir,
                                    "version": info.version})
        return info

    def kernel_initrd(self) -> str:
        """``kernel:initrd``: the initramfs the kernel's own tree carries for it."""
        def make() -> str:
            from imgkit.vm.kernel import tree_initrd
            kc = self.cfg.kernel
            if kc.source != "tree" or kc.tree is None:
                raise InputError(f"{self.cfg.path}: 'kernel:initrd' is the initramfs of the "
                                 f"kernel's tree, and [kernel] source is {kc.source!r}",
                                 hint="set [kernel] source = 'tree', or use initramfs:NAME")
            return tree_initrd(self.tree(kc.tree), self.kernel().version,
                               os.path.join(self.work, "kernel"),
                               where=f"{self.cfg.path}: [trees.{kc.tree}]")
        return self._once("kernel:initrd", make)

    def _check_tree_modules(self) -> None:
        """Warn once per tree whose modules are for another kernel than the one the image
        boots: nothing would load (the tree, from a tar or a container, often has its own)."""
        info = cast("KernelInfo | None", self._cache.get("kernel"))
        if info is None or self.cfg.kernel.source == "tree":
            return
        from imgkit.vm.kernel import mismatched_tree_modules
        for name in self.cfg.trees:
            tree = cast("Tree | None", self._cache.get(f"tree:{name}"))
            if tree is None or f"checked:{name}" in self._cache:
                continue
            self._cache[f"checked:{name}"] = True
            others = mismatched_tree_modules(info, tree)
            if others:
                self.progress(f"warning: tree {name} has modules for kernel {', '.join(others)} "
                              f"but the image boots kernel {info.version} "
                              f"([kernel] source = {self.cfg.kernel.source!r}): none of them "
                              f"will load; set [kernel] source = 'tree' and tree = '{name}'")

    # -- references -------------------------------------------------------------------------
    def resolve(self, ref: str, where: str) -> str:
        """A reference or host path -> a host file path."""
        if ref in ("kernel", "kernel:vmlinuz"):
            return self.kernel().vmlinuz
        if ref == "kernel:vmlinux":
            from imgkit.vm.kernel import extract_vmlinux
            return extract_vmlinux(self.kernel().vmlinuz)
        if ref == "kernel:initrd":
            return self.kernel_initrd()
        kind, _, name = ref.partition(":")
        if name and kind == "initramfs":
            return self.initramfs(name)
        if name and kind == "uki":
            return self.uki(name)
        if name and kind == "fs":
            return self.filesystem(name)[0]
        if name and kind == "file":
            ref = name
        if not os.path.exists(ref):
            raise InputError(f"{self.cfg.path}: {where}: {ref!r} does not exist",
                             hint="a host path (relative to the config file) or a reference: "
                                  "kernel, initramfs:NAME, uki:NAME, fs:NAME")
        top = fingerprint.active()
        watched = top.watched(ref) if top is not None else None
        if top is not None and watched is not None:
            top.add_file(watched)   # its mode and size count, not only its bytes
        return ref

    # -- trees ------------------------------------------------------------------------------
    def tree(self, name: str) -> Tree:
        tree = self._once(f"tree:{name}", lambda: self._make_tree(self.cfg.trees[name]))
        self._check_tree_modules()
        return tree

    def _make_tree(self, tc: TreeConfig) -> Tree:
        from imgkit.assemble import TreeSpec, assemble
        from imgkit.idmap import idmap_from_options

        moddir = None
        if tc.modules or tc.init_config is not None:
            moddir = self.kernel().moddir
            if not moddir:
                raise InputError(f"[trees.{tc.name}] modules need a kernel modules directory",
                                 hint="set [kernel] moddir, or use source = 'debian'")
        files = tuple((self.resolve(src, f"[trees.{tc.name}] files.{dest!r}"), dest, None)
                      for dest, src in tc.files)
        idmap = idmap_from_options(squash=tc.owner == "squash", root_uid=tc.root_uid,
                                   root_gid=tc.root_gid, uid_map=tc.uid_map, gid_map=tc.gid_map)
        spec = TreeSpec(binaries=tc.binaries, binaries_root=self._binaries_root(tc),
                        sources=tc.sources, entries=tc.entries, files=files, idmap=idmap,
                        host_owners=tc.host_owners, mtime=self.mtime,
                        origin=f"{self.cfg.path}: [trees.{tc.name}]",
                        entries_origin=f"{self.cfg.path}: [trees.{tc.name}] entries line",
                        init=tc.init, modules=tc.modules, moddir=moddir, rc=tc.rc,
                        init_config=tc.init_config, file_mask=0o755,
                        keep_zeros=tc.keep_zeros)
        top = fingerprint.active()
        if top is not None:
            from imgkit.build_key import record_sources
            record_sources(top, tc.sources)
        tree = assemble(spec, progress=lambda msg: self.progress(f"tree {tc.name}: {msg}"))
        for warning in tree.warnings:
            self.progress(f"warning: tree {tc.name}: {warning}")
        return tree

    def _binaries_root(self, tc: TreeConfig) -> Root | None:
        """Where ``[trees.NAME] binaries`` are read from: the host (``None``) or a tree."""
        if not tc.binaries or tc.binaries_from == "host":
            return None
        from imgkit.elfdeps import TreeRoot
        if tc.binaries_from == tc.name or tc.binaries_from not in self.cfg.trees:
            others = [n for n in self.cfg.trees if n != tc.name]
            raise InputError(f"{self.cfg.path}: [trees.{tc.name}] binaries_from: expected "
                             f"\"host\" or another tree, got {tc.binaries_from!r}",
                             hint="trees: " + (", ".join(others) or "none"))
        return TreeRoot(self.tree(tc.binaries_from), f"tree {tc.binaries_from}")

    # -- archives and UKIs ------------------------------------------------------------------
    def initramfs(self, name: str) -> str:
        ic = self.cfg.initramfs[name]

        def write(path: str) -> None:
            from imgkit.archives import write_initramfs
            tree = self.tree(ic.tree)
            self._record_blobs(tree)
            result = write_initramfs(tree, path, compress=ic.compress)
            for warning in result.warnings:
                if warning not in tree.warnings:  # the tree's own are reported once, when built
                    self.progress(f"warning: initramfs {name}: {warning}")
            self.progress(f"initramfs {name}: {os.path.getsize(path):,} bytes ({ic.compress})")

        def make() -> str:
            path, _ = self._artifact(f"initramfs:{name}", f"initramfs {name}", ic, write,
                                     os.path.join(self.work, f"initramfs-{name}.cpio"))
            self._publish("initramfs", name, path, ic.output)
            return path
        return self._once(f"initramfs:{name}", make)

    def uki(self, name: str) -> str:
        uc = self.cfg.uki[name]

        def write(path: str) -> None:
            from imgkit.bootloaders.uki import build_uki
            where = f"[uki.{name}]"
            build_uki(path, kernel=self.resolve(uc.kernel, where),
                      initrds=[self.resolve(r, where) for r in uc.initrd],
                      cmdline=self.substitute(uc.cmdline),
                      os_release=uc.os_release,
                      splash=self.resolve(uc.splash, where) if uc.splash else None,
                      devicetree=self.resolve(uc.devicetree, where) if uc.devicetree else None)
            self.progress(f"uki {name}: {os.path.getsize(path):,} bytes")

        def make() -> str:
            path, _ = self._artifact(f"uki:{name}", f"uki {name}", uc, write,
                                     os.path.join(self.work, f"uki-{name}.efi"))
            self._publish("uki", name, path, uc.output)
            return path
        return self._once(f"uki:{name}", make)

    # -- dm-verity --------------------------------------------------------------------------
    def substitute(self, text: str, where: str = "cmdline") -> str:
        """A kernel command line with ``${cmdline}`` replaced by the config's top-level
        ``cmdline`` (so an image's command line is declared once for every boot path) and
        each ``${verity:PARTITION}`` by that partition's root hash."""
        def value(m: re.Match[str]) -> str:
            kind, _, name = m.group(1).partition(":")
            if kind == "cmdline" and not name:
                return self.cfg.cmdline
            if kind == "verity" and name:
                return self.verity(name).root_hash_hex
            raise InputError(f"{self.cfg.path}: {where}: unknown substitution ${{{m.group(1)}}}",
                             hint="there are ${cmdline} and ${verity:PARTITION}")
        return SUBSTITUTION.sub(value, text)

    def _disk_partition(self, name: str) -> PartitionConfig:
        assert self.cfg.disk is not None
        return next(p for p in self.cfg.disk.partitions if p.name == name)

    def verity_data(self, part: str) -> tuple[str, int]:
        """The file partition ``part`` holds and the bytes of it a hash tree protects (whole
        data blocks): its filesystem built at its own size, never filling the partition, so
        the root hash is known before the layout is planned."""
        def make() -> tuple[str, int]:
            from imgkit.formats import verity as dm_verity
            p = self._disk_partition(part)
            path = self.filesystem(p.filesystem)[0] if p.filesystem else \
                self._partition_image(p.image or "", p.name)
            return path, -(-os.path.getsize(path) // dm_verity.BLOCK_SIZE) * dm_verity.BLOCK_SIZE
        return self._once(f"veritydata:{part}", make)

    def verity(self, part: str) -> dm_verity.VerityTree:
        """The dm-verity hash tree of partition ``part`` (written in the work directory, as
        ``verity_hash_path(part)``), salt and superblock UUID derived from the seed."""
        def make() -> dm_verity.VerityTree:
            from imgkit.formats import verity as dm_verity
            from imgkit.formats.gpt import guid_from_seed
            data = self.verity_data(part)[0]
            params = dm_verity.VerityParams(salt=bytes.fromhex(self._seed("verity-salt", part)),
                                         uuid=guid_from_seed(self.cfg.seed, "verity:" + part))
            tree = dm_verity.write_hash_tree(data, self.verity_hash_path(part), params)
            self.progress(f"verity {part}: {tree.data_blocks:,} data blocks, "
                          f"root hash {tree.root_hash_hex}")
            return tree
        return self._once(f"verity:{part}", make)

    def verity_hash_path(self, part: str) -> str:
        return os.path.join(self.work, f"verity-{part}.img")

    def verity_signature(self, p: PartitionConfig) -> str:
        """The signature partition ``p``'s content, in a work file."""
        def make() -> str:
            from imgkit.formats import verity as dm_verity
            assert p.verity_signature and p.verity_key and p.verity_certificate
            data = dm_verity.sign_root_hash(self.verity(p.verity_signature).root_hash,
                                         p.verity_key, p.verity_certificate)
            path = os.path.join(self.work, f"verity-sig-{p.name}.json")
            with open(path, "wb") as f:
                f.write(data)
            return path
        return self._once(f"veritysig:{p.name}", make)

    def _verity_spec(self, p: PartitionConfig, protected: Mapping[str, PartitionConfig]
                     ) -> tuple[int, uuid.UUID | str | None] | None:
        """(content size, GUID) of a partition that dm-verity involves, else ``None``: the data
        partition and its hash partition take the halves of the root hash as their GUIDs
        (the Discoverable Partitions convention) unless the config gives them."""
        if p.name in protected:
            return self.verity_data(p.name)[1], p.guid or self.verity(p.name).data_uuid
        if p.verity:
            return self.verity(p.verity).hash_size, p.guid or self.verity(p.verity).hash_uuid
        if p.verity_signature:
            return os.path.getsize(self.verity_signature(p)), p.guid
        return None

    def _verity_content(self, p: PartitionConfig, protected: Mapping[str, PartitionConfig]
                        ) -> str | None:
        """The file copied into a partition that dm-verity involves, else ``None``."""
        if p.name in protected:
            return self.verity_data(p.name)[0]
        if p.verity:
            self.verity(p.verity)
            return self.verity_hash_path(p.verity)
        if p.verity_signature:
            return self.verity_signature(p)
        return None

    # -- filesystems ------------------------------------------------------------------------
    def context(self) -> BuildContext:
        """What filesystem and boot path handlers may use of this build."""
        return self._once("context", lambda: BuildContext(
            config_path=self.cfg.path, work=self.work, mtime=self.mtime, resolve=self.resolve,
            seed=self._seed, progress=self.progress, substitute=self.substitute))

    def fs_tree(self, fc: FilesystemConfig) -> Tree:
        """The filesystem's tree plus the files of the boot paths it holds."""
        def make() -> Tree:
            from imgkit.tree import Tree
            tree = Tree(default_mtime=self.mtime or 0)
            if fc.tree:
                tree.overlay(self.tree(fc.tree))
            for name, options in fc.boot.items():
                files = boot.get(name).fs_files(options, self.context(),
                                                f"[filesystems.{fc.name}.{name}]")
                if files is not None:
                    tree.overlay(files)
            return tree
        return self._once(f"fstree:{fc.name}", make)

    def min_fs_size(self, fc: FilesystemConfig) -> int:
        """Smallest size of the filesystem (explicit sizes are taken as they are)."""
        if fc.size != "auto":
            return parse_size(fc.size, what=f"[filesystems.{fc.name}] size")
        free = sum(boot.get(name).fs_room(options) for name, options in fc.boot.items())
        return filesystems.get(fc.type).min_size(self.fs_tree(fc), fc, self.context(), free=free)

    def filesystem(self, name: str, *, size: int | None = None,
                   disk_offset: int | None = None) -> tuple[str, int]:
        """Build filesystem ``name`` in a file of its own (at ``size`` bytes, else its own
        size; ``disk_offset``: where on a disk it will be copied) -> (path, size)."""
        fc = self.cfg.filesystems[name]
        key = f"fs:{name}" if size is None else f"fs:{name}@{size}+{disk_offset}"

        def write(path: str) -> None:
            want = size if size is not None else (
                None if fc.size == "auto" else parse_size(fc.size, what=f"[filesystems.{name}] size"))
            if want is not None:
                self._check_room(want, f"[filesystems.{name}] size", self.work)
            self._record_blobs(self.fs_tree(fc))
            filesystems.get(fc.type).write(self.fs_tree(fc), path, 0, want, fc, self.context(),
                                           disk_offset=disk_offset)

        def make() -> tuple[str, int]:
            path, _ = self._artifact(key, f"filesystem {name}", fc, write,
                                     os.path.join(self.work, f"fs-{name}.img"))
            self._publish("filesystem", name, path, fc.output)
            return path, os.path.getsize(path)
        return self._once(key, make)

    # -- disk -------------------------------------------------------------------------------
    def _bios_holder(self, bp: boot.BootPath) -> tuple[str | None, object]:
        """The partition whose filesystem holds the disk's BIOS boot path, and its options."""
        dc = self.cfg.disk
        assert dc is not None
        if not bp.fs_types:
            return None, bp.options()
        holders = [(p.name, self.cfg.filesystems[p.filesystem]) for p in dc.partitions
                   if p.filesystem and bp.name in self.cfg.filesystems[p.filesystem].boot]
        if len(holders) != 1:
            types = " or ".join(bp.fs_types)
            raise InputError(f"{self.cfg.path}: [disk] bios = {bp.name!r} needs exactly one {types} "
                             f"partition whose filesystem has a {bp.name} table, found {len(holders)}",
                             hint=f"add {bp.name} = {{ ... }} to the [filesystems.NAME] of the "
                                  "partition it boots from")
        name, fs = holders[0]
        return name, fs.boot[bp.name]

    def disk(self) -> str:
        """The disk: from the cache when no partition, region or boot code changed, else
        assembled (a filesystem taken from the cache is copied in, holes kept)."""
        dc = self.cfg.disk
        assert dc is not None
        out = self._out_path(dc.output)
        if not any(p.filesystem or p.image for p in dc.partitions):
            self._record("disk", dc.output, out, **self._write_disk(out))
            return out   # nothing in it is built: nothing to reuse
        section = (dc, [self.cfg.filesystems[p.filesystem] for p in dc.partitions if p.filesystem])
        path, details = self._artifact("disk", f"disk {dc.output}", section,
                                       lambda _: self._write_disk(out), out)
        if path != out:
            self._place("disk", path, out)
        elif self.cache_policy is not None:
            self.store.placed(out, self._keys["disk"])
        self._record("disk", dc.output, out, **details)
        return out

    def _write_disk(self, out: str) -> dict:
        """Assemble the disk at ``out`` -> the details its output records."""
        from imgkit.disk import layout
        from imgkit.disk.image import convert_raw, write_disk_into

        dc = self.cfg.disk
        assert dc is not None
        bios = boot.get(dc.bios) if dc.bios else None
        holder, bios_options = self._bios_holder(bios) if bios else (None, None)
        specs = []
        protected = verity_partitions(dc)
        for p in dc.partitions:
            if p.filesystem and not filesystems.get(self.cfg.filesystems[p.filesystem].type).partition:
                fc = self.cfg.filesystems[p.filesystem]
                raise InputError(f"{self.cfg.path}: [filesystems.{fc.name}]: type {fc.type!r} "
                                 f"cannot go in a partition (partition {p.name!r})",
                                 hint="types that can: " + ", ".join(filesystems.names(partition=True)))
            verity_spec = self._verity_spec(p, protected)
            if verity_spec is not None:
                content_size, guid = verity_spec
                specs.append(self._partition_spec(p, content_size, guid, holder, bios))
                continue
            content = self.min_fs_size(self.cfg.filesystems[p.filesystem]) if p.filesystem else None
            if p.image:
                content = self._image_offset(p) + os.path.getsize(self._partition_image(p.image, p.name))
            if p.size == "auto" and content is None:
                raise LayoutError(f"{self.cfg.path}: partition {p.name!r} has size 'auto' but no "
                                  "filesystem or image to measure",
                                  hint="give it a size, e.g. '1M' or 'grow'")
            # A prebuilt image is checked against a fixed size below, naming the file.
            specs.append(self._partition_spec(
                p, content if (p.size == "auto" or not p.image) else None, p.guid, holder, bios))
        if bios:
            specs += bios.extra_partitions(bios_options, dc.table, tuple(specs))
        blobs = self._regions()
        plan = layout.plan(self._disk_spec(dc, specs, tuple(r for r, _ in blobs)))
        self._check_room(plan.disk_size, "[disk] size", self.output_dir)
        regions = bios.disk_regions(bios_options, dc.table, plan, holder, self.context()) \
            if bios else boot.DiskBoot()
        with atomic_path(out) as tmp:
            # A raw disk is assembled in its final file; other formats are converted from one.
            raw = tmp if dc.format == "raw" else os.path.join(self.work, "disk.raw")
            with open(raw, "wb") as f:
                f.truncate(plan.disk_size)
            contents: dict[str, Content] = dict(regions.contents)
            for p in dc.partitions:
                verity_content = self._verity_content(p, protected)
                if verity_content is not None:
                    contents[p.name] = verity_content
                elif p.filesystem:
                    contents[p.name] = self._partition_content(p.name, p.filesystem, plan, raw)
                elif p.image:
                    contents[p.name] = (self._partition_image(p.image, p.name), self._image_offset(p))
            write_disk_into(plan, contents, raw, boot_code=regions.boot_code,
                            extra_regions=list(regions.regions) +
                            [piece for r, data in blobs for piece in self._region_pieces(plan, r, data)])
            if bios:
                bios.install(bios_options, raw, plan.partition(holder) if holder else None,
                             self.context())
            if dc.format != "raw":
                convert_raw(raw, tmp, dc.format, seed=self._seed("disk"), mtime=self.mtime or 0,
                            name=os.path.basename(dc.output))
        verity_info = {name: self.verity(name).root_hash_hex for name in protected}
        return dict(table=dc.table, format=dc.format,
                    partitions=[{"name": p.name, "start": p.start, "size": p.size,
                                 "number": p.number} for p in plan.partitions],
                    **({"verity_root_hashes": verity_info} if verity_info else {}))

    def _disk_spec(self, dc: DiskConfig, specs: list[layout.PartitionSpec],
                   reserved: tuple[layout.Reserved, ...]) -> layout.DiskSpec:
        """The layout's view of [disk]: its keys, with the layout's defaults where unset."""
        from imgkit.disk import layout
        if dc.gpt_backup is False:
            self.progress(f"warning: {self.cfg.path}: disk.gpt_backup = false: the disk has no "
                          "backup GPT; sgdisk, sfdisk, fdisk and firmware will report it as "
                          "missing or damaged")
        return layout.DiskSpec(
            table=dc.table, partitions=tuple(specs), size=None if dc.size == "auto" else dc.size,
            alignment=dc.alignment, seed=self._seed("disk"), disk_guid=dc.guid,
            disk_signature=dc.signature, reserved=reserved, size_align=dc.size_align,
            gpt_entries=dc.gpt_entries if dc.gpt_entries is not None else layout.MAX_GPT_ENTRIES,
            gpt_entries_offset=dc.gpt_entries_offset, gpt_first_lba=dc.gpt_first_lba,
            gpt_backup=dc.gpt_backup is not False, protective_first=dc.hybrid_ee != "last",
            auto_logical=dc.auto_logical,
            extended_type=dc.extended_type if dc.extended_type is not None else "extended")

    def _partition_spec(self, p: PartitionConfig, content: int | None, guid: uuid.UUID | str | None,
                        holder: str | None, bios: boot.BootPath | None) -> layout.PartitionSpec:
        from imgkit.disk import layout
        dc = self.cfg.disk
        assert dc is not None
        return layout.PartitionSpec(
            name=p.name, type=p.type, size=p.size, offset=p.offset, content_size=content,
            attributes=list(p.attributes),
            bootable=p.bootable or (p.name == holder and bios is not None and bios.bootable_holder),
            guid=guid, logical=p.logical, hybrid=p.name in dc.hybrid_mbr,
            mbr_type=p.mbr_type, align=p.align)

    def _partition_image(self, image: str, part: str) -> str:
        """The host file partition ``part``'s ``image`` names (a reference is built first)."""
        return self.resolve(image, f"partition {part!r} image")

    def _image_offset(self, p: PartitionConfig) -> int:
        return parse_size(p.image_offset, what=f"image_offset of partition {p.name!r}")

    def _regions(self) -> list[tuple[layout.Reserved, bytes]]:
        """``[[disk.regions]]``: each one's byte range (kept free of partitions and checked
        against the tables by the layout) and the bytes written there."""
        from imgkit.disk import layout
        dc = self.cfg.disk
        assert dc is not None
        out = []
        for r in dc.regions:
            where = f"disk.regions ({r.name!r})"
            path = self.resolve(r.image, where)
            offset = parse_size(r.offset, what=f"{where} offset")
            with open(path, "rb") as f:
                data = f.read(_MAX_REGION + 1)
            if len(data) > _MAX_REGION:
                raise InputError(f"{self.cfg.path}: {where}: {path} is larger than "
                                 f"{_MAX_REGION:,} bytes, the most a region holds",
                                 hint="put a file this large in a partition (image = ...)")
            size = len(data) if r.size is None else parse_size(r.size, what=f"{where} size")
            if len(data) > size:
                raise LayoutError(f"{self.cfg.path}: {where}: {path} is {len(data):,} bytes but "
                                  f"the region's size is {size:,}",
                                  hint="make size larger or leave it out")
            if size <= 0:
                raise InputError(f"{self.cfg.path}: {where}: the region is empty ({path})")
            out.append((layout.Reserved(offset, offset + size, f"region {r.name!r}",
                                        over_tables=r.in_table_area), data))
        return out

    def _region_pieces(self, plan: layout.Plan, region: layout.Reserved,
                       data: bytes) -> list[tuple[int, bytes]]:
        """``data`` at ``region.start`` as the pieces that miss the table's structures; for a
        region allowed over them (``in_table_area``), the bytes it has there must be zero:
        they are the table's, and a blob that needs them would be broken by it."""
        if not region.over_tables:
            return [(region.start, data)]
        end = region.start + len(data)
        cuts = sorted((max(s.start, region.start), min(s.end, end), s.what)
                      for s in plan.structures if s.start < end and region.start < s.end)
        pieces, pos = [], region.start
        for lo, hi, what in cuts:
            chunk = data[lo - region.start:hi - region.start]
            if any(chunk):
                first = lo + next(i for i, b in enumerate(chunk) if b)
                raise LayoutError(f"{self.cfg.path}: {region.what} has data at byte {first:,}, "
                                  f"inside {what} [{lo:,}, {hi:,}), which the table writes",
                                  hint="the file must hold zeros (holes) where the table goes")
            if lo > pos:
                pieces.append((pos, data[pos - region.start:lo - region.start]))
            pos = max(pos, hi)
        if pos < end:
            pieces.append((pos, data[pos - region.start:]))
        return pieces

    def _partition_content(self, part: str, fs_name: str, plan: layout.Plan, disk: str) -> str | None:
        """Put filesystem ``fs_name`` into partition ``part``: a type that can is written in
        place in the disk file (no copy of hundreds of MB); others are built apart and copied
        in (returns the image to copy, or ``None`` when already in place)."""
        pp = plan.partition(part)
        fc = self.cfg.filesystems[fs_name]
        handler = filesystems.get(fc.type)
        fs_size = pp.size if fc.size == "auto" else parse_size(fc.size)
        if fs_size > pp.size:
            raise LayoutError(f"filesystem {fc.name!r} is {fs_size:,} bytes but partition "
                              f"{part!r} holds {pp.size:,}",
                              hint="make the partition bigger or the filesystem size 'auto'")
        if handler.in_place and not fc.output and self.cache_policy is None:
            # in the disk file: no copy (with the cache, built apart so the next build can
            # copy it in when only another partition changed)
            handler.write(self.fs_tree(fc), disk, pp.start, fs_size, fc, self.context(),
                          disk_offset=pp.start)
            return None
        return self.filesystem(fc.name, size=fs_size, disk_offset=pp.start)[0]

    # -- ISO --------------------------------------------------------------------------------
    def iso(self) -> str:
        ic = self.cfg.iso
        assert ic is not None
        out = self._out_path(ic.output)
        path, _ = self._artifact("iso", f"iso {ic.output}", ic, lambda _: self._write_iso(out), out)
        if path != out:
            self._place("iso", path, out)
        elif self.cache_policy is not None:
            self.store.placed(out, self._keys["iso"])
        self._record("iso", ic.output, out)
        return out

    def _write_iso(self, out: str) -> None:
        from imgkit.tree import Tree
        ic = self.cfg.iso
        assert ic is not None
        tree = Tree(default_mtime=self.mtime or 0)
        if ic.tree:
            tree.overlay(self.tree(ic.tree))
        entries = []
        for key, choice in (("bios", ic.bios), ("efi", ic.efi)):
            if choice is not None:
                entry = boot.get(choice.path).eltorito(choice.options, self.context(), f"[iso] {key}")
                tree.overlay(entry.files)
                entries.append(entry)
        self._record_blobs(tree)
        own_hybrid = [e.hybrid for e in entries if e.hybrid is not None]
        filesystems.get(ic.type).write_boot_media(tree, out, entries, label=ic.volume_id,
                                                  hybrid=ic.hybrid and not own_hybrid,
                                                  ctx=self.context())
        for make_hybrid in own_hybrid if ic.hybrid else ():
            make_hybrid(out)


def _kmod_cache() -> str:
    """Where module metadata derived from the kernel's files is cached (no input itself)."""
    from imgkit.vm.kernel import cache_root
    return os.path.join(cache_root(), "kmod")


def build(cfg: Config, output_dir: str, *, progress: Progress | None = None,
          mtime: int | None = None, only: tuple[str, ...] = (),
          cache: CachePolicy | None = None) -> BuildResult:
    """Build every output ``cfg`` declares (or only those named in ``only``) into ``output_dir``.

    ``only`` names artifacts as ``disk``, ``iso``, ``initramfs:NAME``, ``uki:NAME``,
    ``fs:NAME``. With a ``cache`` policy, artifacts whose inputs are unchanged are taken
    from the artifact cache (:mod:`imgkit.artifact_cache`), and new ones kept there.
    """
    b = Builder(cfg, output_dir, progress=progress, mtime=mtime, cache=cache)
    try:
        wanted = set(only)

        def want(key: str) -> bool:
            return not wanted or key in wanted

        for name, ic in cfg.initramfs.items():
            if ic.output and want(f"initramfs:{name}"):
                b.initramfs(name)
        for name, uc in cfg.uki.items():
            if uc.output and want(f"uki:{name}"):
                b.uki(name)
        for name, fc in cfg.filesystems.items():
            if fc.output and want(f"fs:{name}"):
                b.filesystem(name)
        if cfg.disk and want("disk"):
            b.disk()
        if cfg.iso and want("iso"):
            b.iso()
        for key in wanted:
            kind, _, name = key.partition(":")
            named: Mapping[str, Mapping[str, object]] = {
                "initramfs": cfg.initramfs, "uki": cfg.uki, "fs": cfg.filesystems}
            if kind not in ("disk", "iso", "initramfs", "uki", "fs") or (
                    name and name not in named.get(kind, {})):
                raise InputError(f"nothing named {key!r} in {cfg.path}")
        if not b.outputs:
            raise InputError(f"{cfg.path} declares no output",
                             hint="add [disk] or [iso] with output = ..., or output = ... to an "
                                  "[initramfs.NAME], [uki.NAME] or [filesystems.NAME] table")
        b.evict()
        return BuildResult(b.outputs, b.artifacts)
    finally:
        b.close()
