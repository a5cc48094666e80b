"""The tree of a minimal initramfs driven by imgkit's built-in busybox init.

It holds ``/init`` (``imgkit/data/init.sh``), a static busybox, the two device nodes the
kernel needs before devtmpfs is mounted (``/dev/console`` so early output has somewhere to
go, ``/dev/null``), the mount points the init uses, the kernel modules to load with their
load-order file, optionally ``/etc/imgkit/rc``, the hook run when no ``root=`` is given, and
``/etc/imgkit/init.conf``, the declarative init config (:class:`InitConfig`) rendered as
shell assignments and hook functions, because busybox ``sh`` cannot read TOML: every value is
single-quoted, so the init sources the file without anything in it being expanded.
A config with id-mapped layers also gets ``/bin/idmap-mount`` (:mod:`imgkit.vm.idmap_helper`),
since busybox ``mount`` cannot make id-mapped mounts. Everything is owned by 0:0 whoever
builds it: metadata lives in the tree.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from imgkit.errors import InputError
from imgkit.settings import BOOL, INT, STR, STRING_MAP, STRINGS, ValueType, Where, setting

if TYPE_CHECKING:  # the config reads InitConfig without the tree machinery
    from imgkit.tree import Tree
    from imgkit.vm.kmod import Module

RC_PATH = "etc/imgkit/rc"
CONF_PATH = "etc/imgkit/init.conf"
_DIRS = ("bin", "sbin", "etc", "proc", "sys", "dev", "mnt", "root", "tmp", "run", "newroot")


def init_script() -> bytes:
    """The built-in ``/init`` (a busybox ``sh`` script), as shipped in the package."""
    return resources.files("imgkit").joinpath("data/init.sh").read_bytes()


def busybox_init_tree(busybox_path: str | os.PathLike = "/bin/busybox",
                      modules: Iterable[Module] = (), moddir: str | os.PathLike | None = None,
                      rc_script: str | None = None, *, init_config: InitConfig | None = None,
                      mtime: int = 0, cache_dir: str | os.PathLike | None = None) -> Tree:
    """An initramfs tree: built-in ``/init``, static busybox, device nodes, modules, rc hook.

    ``busybox_path`` must be a *static* busybox (Debian: busybox-static), since the
    initramfs has no libc. ``modules`` (from :func:`imgkit.vm.kmod.resolve_modules`) are taken
    from ``moddir``. ``rc_script`` becomes ``/etc/imgkit/rc``, ``init_config``
    ``/etc/imgkit/init.conf`` (its modules, :func:`init_config_modules`, are the caller's);
    with id-mapped layers, ``/bin/idmap-mount`` comes compiled from the cache in ``cache_dir``.
    """
    from imgkit.tree import BytesBlob, Entry, FileBlob, Kind, Tree
    from imgkit.vm.kmod import modules_tree

    busybox_path = os.fspath(busybox_path)
    try:
        size = os.stat(busybox_path).st_size
    except OSError as exc:
        raise InputError(f"busybox binary {busybox_path} is not readable: {exc.strerror}",
                         hint="install busybox-static or pass busybox_path") from exc
    tree = Tree(default_mtime=mtime)
    for d in _DIRS:
        tree.add(Entry(d, Kind.DIR, mode=0o755, mtime=mtime))
    tree.add(Entry("tmp", Kind.DIR, mode=0o1777, mtime=mtime))
    tree.add(Entry("root", Kind.DIR, mode=0o700, mtime=mtime))
    tree.add(Entry("init", Kind.FILE, mode=0o755, mtime=mtime, data=BytesBlob(init_script()),
                   origin="imgkit/data/init.sh"))
    tree.add(Entry("bin/busybox", Kind.FILE, mode=0o755, mtime=mtime,
                   data=FileBlob(busybox_path, size), origin=busybox_path))
    tree.add(Entry("bin/sh", Kind.SYMLINK, mode=0o777, mtime=mtime, target="busybox"))
    tree.add(Entry("dev/console", Kind.CHAR, mode=0o600, mtime=mtime, rdev=(5, 1)))
    tree.add(Entry("dev/null", Kind.CHAR, mode=0o666, mtime=mtime, rdev=(1, 3)))
    modules = list(modules)
    if modules:
        if moddir is None:
            raise InputError("busybox_init_tree: modules given without their moddir")
        for entry in modules_tree(moddir, modules, mtime=mtime):
            if entry.path:  # keep this tree's root metadata
                tree.add(entry)
    if rc_script is not None:
        tree.add(Entry(RC_PATH, Kind.FILE, mode=0o755, mtime=mtime,
                       data=BytesBlob(rc_script.encode()), origin="rc_script"))
    if init_config is not None:
        tree.add(Entry(CONF_PATH, Kind.FILE, mode=0o644, mtime=mtime,
                       data=BytesBlob(render_init_conf(init_config).encode()),
                       origin="init_config"))
        if uses_idmap(init_config):
            from imgkit.vm.idmap_helper import NAME, SOURCE_NAME, helper_path
            helper = helper_path(cache_dir)
            tree.add(Entry(f"bin/{NAME}", Kind.FILE, mode=0o755, mtime=mtime,
                           data=FileBlob(helper, os.stat(helper).st_size),
                           origin=f"imgkit/data/{SOURCE_NAME}"))
    return tree


# -- the declarative init config ---------------------------------------------------------------

@dataclass(frozen=True)
class ShellHook:
    """A hook written as a shell script: fed to busybox ``sh`` on its stdin."""

    script: str


Hook = tuple[str, ...] | ShellHook


def _hooks(value: Any, where: Where, key: str, path: bool) -> tuple[Hook, ...]:
    hooks: list[Hook] = []
    for item in value:
        if isinstance(item, list) and item and all(isinstance(a, str) for a in item):
            hooks.append(tuple(item))
        elif isinstance(item, dict) and set(item) == {"shell"} and isinstance(item["shell"], str):
            hooks.append(ShellHook(item["shell"]))
        else:
            raise where.error(key, "a list of argv lists (e.g. [[\"mkdir\", \"-p\", \"/x\"]]) "
                                   "or { shell = \"script\" } tables", value)
    return tuple(hooks)


HOOKS = ValueType("list of argv lists", (list,), _hooks)

#: Where each layer or root spelling comes from, as the init reads it.
LAYER_HELP = ("a device (/dev/vdX, LABEL=, UUID=, PARTLABEL=, PARTUUID=), DEVICE:/path for an "
              "image file or a directory on that device, /path for a directory of the initramfs")

#: How an id map is spelled (the on-disk id first, then the id seen through the mount).
IDMAP_HELP = ("blank-separated u|g|b:ON_DISK:SEEN:COUNT ranges, or ON_DISK:SEEN:COUNT for both "
              "(e.g. \"u:1000:0:1 g:1000:0:1\": files owned by 1000 on the filesystem are seen "
              "as root's); the layer's filesystem must allow id-mapped mounts (ext4, xfs, btrfs, "
              "vfat, f2fs on Linux 6.1; not squashfs, erofs, iso9660 or tmpfs)")

#: Modules a root of that filesystem type needs beyond its own name.
_FSTYPE_MODULES = {"iso9660": ("isofs",), "vfat": ("vfat", "nls_cp437", "nls_ascii"),
                   "ext2": ("ext4",), "ext3": ("ext4",)}


@dataclass(frozen=True)
class InitConfig:
    """What the built-in ``/init`` mounts as the root and runs, declared rather than scripted.

    The root is one layer (``root``, with ``file`` for an image on it) or, with ``lowers`` or
    ``upper``, an overlayfs stack: ``root`` at the bottom, then ``lowers`` (later wins), then
    the writable ``upper``. The kernel command line overrides it: ``imgkit.root=``,
    ``imgkit.file=``, ``imgkit.lowers=A,B``, ``imgkit.upper=``, ``imgkit.fstype=``,
    ``imgkit.init=``, ``imgkit.switch=`` (and the usual ``root=``, ``init=``, ``ro``/``rw``).
    """

    root: str | None = setting(STR, None, help=f"the root (bottom layer): {LAYER_HELP}")
    file: str | None = setting(STR, None, help="an image file on the root device that is the root "
                                               "(loop-mounted; e.g. /live/root.squashfs)")
    fstype: str | None = setting(STR, None, help="the root's filesystem type (default: probed)")
    lowers: tuple[str, ...] = setting(STRINGS, (), help=f"overlay layers above root, later wins: "
                                                         f"{LAYER_HELP}")
    upper: str | None = setting(STR, None, help="the overlay's writable layer: \"tmpfs\" or a "
                                                "device (its upper/ and work/ are made)")
    verity: str | None = setting(STR, None, help="the dm-verity hash device of root (a device "
                                                 "spelling): root is opened with veritysetup as "
                                                 "/dev/mapper/root, the root hash from roothash= "
                                                 "on the kernel command line")
    roothash: str | None = setting(STR, None, help="the root hash, when it is not given on the "
                                                   "kernel command line (roothash=HEX wins)")
    verity_check: bool = setting(BOOL, True, help="read the whole verity device once before "
                                                  "mounting it, so a corrupted block stops the "
                                                  "boot there (false: an I/O error when read)")
    rw: bool = setting(BOOL, False, help="mount a single-device root read-write")
    delay: int = setting(INT, 10, help="seconds to wait for each device")
    before_root: tuple[Hook, ...] = setting(
        HOOKS, (), help="commands run in the initramfs before the root is set up: argv lists, "
                        "or { shell = \"script\" } fed to sh on stdin")
    after_root: tuple[Hook, ...] = setting(
        HOOKS, (), help="commands run once the root is mounted on /newroot (argv or shell)")
    before_exec: tuple[Hook, ...] = setting(
        HOOKS, (), help="commands run just before the final command is executed (argv or shell)")
    command: tuple[str, ...] = setting(STRINGS, ("/sbin/init",),
                                       help="the final command (argv), run in the root as PID 1")
    initctl: bool = setting(BOOL, False, help="a /dev/initctl FIFO: any write to it powers off")
    switch: str = setting(STR, "switch_root", choices=("switch_root", "chroot", "pivot_root"),
                          help="how the root is entered: switch_root (the initramfs emptied), "
                               "chroot (the initramfs stays the mount namespace's root) or "
                               "pivot_root (through a tmpfs stage; the old root detached)")
    idmap: str | None = setting(STR, None, help=f"one id map for every layer of the root (root and "
                                                f"lowers; not the upper), spelled like mount's "
                                                f"X-mount.idmap: {IDMAP_HELP}")
    idmaps: tuple[tuple[str, str], ...] = setting(
        STRING_MAP, (), help="id maps of single layers (wins over idmap): layer as written in "
                             "root or lowers = map, e.g. { \"PARTLABEL=ext\" = \"b:1000:0:1\" }")


def _layers(cfg: InitConfig) -> list[str]:
    return ([cfg.root] if cfg.root else []) + list(cfg.lowers)


def _check_spec(value: str, what: str) -> None:
    if not value or any(c in value for c in ",\n\0"):
        raise InputError(f"init config {what}: {value!r} cannot be told apart in a list",
                         hint="a layer holds no comma or newline")


def _check_verity(cfg: InitConfig) -> None:
    if cfg.verity is None:
        if cfg.roothash:
            raise InputError("init config roothash: it goes with verity, the hash device",
                             hint='e.g. verity = "PARTLABEL=root-verity"')
        return
    if not cfg.root or cfg.file or cfg.rw or not _is_device(cfg.root):
        raise InputError(f"init config verity: expected root to be a device opened read-only, "
                         f"got root={cfg.root!r}" + (f", file={cfg.file!r}" if cfg.file else "")
                         + (", rw = true" if cfg.rw else ""),
                         hint="dm-verity protects a whole partition: root = \"PARTLABEL=root\", "
                              "verity = \"PARTLABEL=root-verity\"")
    if not _is_device(cfg.verity):
        raise InputError(f"init config verity: expected a device, got {cfg.verity!r}",
                         hint="/dev/vdX, LABEL=, UUID=, PARTLABEL= or PARTUUID=")
    if cfg.roothash and not _is_hex(cfg.roothash):
        raise InputError(f"init config roothash: expected hexadecimal digits, got {cfg.roothash!r}")


def _is_device(spec: str) -> bool:
    return (spec.startswith("/dev/") or "=" in spec) and ":/" not in spec and "\n" not in spec


def _is_hex(text: str) -> bool:
    return len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text)


def init_config_modules(cfg: InitConfig) -> tuple[str, ...]:
    """Kernel modules the config needs on top of the user's: loop and squashfs for image
    files, overlay for a stack, the root filesystem type's own."""
    wanted: list[str] = []
    if cfg.file or any(":/" in layer for layer in cfg.lowers):
        wanted += ["loop", "squashfs"]
    if cfg.lowers or cfg.upper:
        wanted.append("overlay")
    if cfg.verity:
        wanted.append("dm_verity")
    if cfg.fstype:
        wanted += _FSTYPE_MODULES.get(cfg.fstype, (cfg.fstype,))
    return tuple(dict.fromkeys(wanted))


def _here_document(command: str, text: str) -> list[str]:
    """``command`` with ``text`` on its stdin, verbatim: a quoted here-document whose
    delimiter is a word no line of ``text`` is."""
    if "\0" in text:
        raise InputError("init config hook: a shell script holds a NUL byte")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    n, delimiter = 0, "IMGKIT_HOOK_END"
    while delimiter in (line.strip() for line in lines):
        n += 1
        delimiter = f"IMGKIT_HOOK_END_{n}"
    return [f"{command} <<'{delimiter}'", *lines, delimiter]


@dataclass(frozen=True)
class MountIdRange:
    """One range of an id-mapped mount: ``count`` ids from ``on_disk`` seen from ``seen``."""

    kind: str  # "u" or "g"
    on_disk: int
    seen: int
    count: int


#: Ids are 32-bit and (uid_t)-1 is no id, so a range ends at 4294967294 at most.
_ID_END = 2**32 - 1
#: The kernel takes at most this many ranges of each kind (uid_map, gid_map).
_MAX_RANGES = 340


def parse_idmap(text: str, what: str) -> tuple[MountIdRange, ...]:
    """The ranges of an id map written like ``X-mount.idmap`` (``b:`` and untyped entries
    stand for a uid and a gid range), checked as the kernel checks ``uid_map``: numbers,
    no id beyond 4294967294, and no two ranges of a kind overlapping on either side."""
    ranges: list[MountIdRange] = []
    entries = text.split()
    if not entries:
        raise InputError(f"init config {what}: an empty id map",
                         hint='e.g. "u:1000:0:1 g:1000:0:1" or "0:100000:65536"')
    for entry in entries:
        kind, _, ids = entry.partition(":") if entry[:2] in ("u:", "g:", "b:") else ("b", "", entry)
        fields = ids.split(":")
        if len(fields) != 3 or not all(f.isascii() and f.isdigit() for f in fields):
            raise InputError(f"init config {what}: expected u|g|b:ON_DISK:SEEN:COUNT or "
                             f"ON_DISK:SEEN:COUNT, got {entry!r}",
                             hint='e.g. "u:1000:0:1 g:1000:0:1" (on-disk 1000 seen as 0)')
        on_disk, seen, count = (int(f) for f in fields)
        if count == 0 or on_disk + count > _ID_END or seen + count > _ID_END:
            raise InputError(f"init config {what}: range {entry!r} "
                             + ("is empty" if count == 0 else "goes past id 4294967294"),
                             hint="ids are 32-bit; the count is at least 1")
        for k in ("u", "g") if kind == "b" else (kind,):
            ranges.append(MountIdRange(k, on_disk, seen, count))
    for kind in ("u", "g"):
        mine = [r for r in ranges if r.kind == kind]
        if len(mine) > _MAX_RANGES:
            raise InputError(f"init config {what}: {len(mine)} {kind}id ranges, the kernel takes "
                             f"at most {_MAX_RANGES}")
        for i, a in enumerate(mine):
            for b in mine[:i]:
                for side in ("on_disk", "seen"):
                    lo_a, lo_b = getattr(a, side), getattr(b, side)
                    if lo_a < lo_b + b.count and lo_b < lo_a + a.count:
                        raise InputError(
                            f"init config {what}: {kind}id ranges {_spell(b)} and {_spell(a)} "
                            f"overlap on the {side.replace('_', '-')} side",
                            hint="each id may be mapped once, in each direction")
    return tuple(ranges)


def _spell(r: MountIdRange) -> str:
    return f"{r.kind}:{r.on_disk}:{r.seen}:{r.count}"


def layer_idmaps(cfg: InitConfig) -> dict[str, str]:
    """Each id-mapped layer of ``cfg`` (as written in root or lowers) and its map, checked
    and spelled for ``idmap-mount`` (one ``u:``/``g:`` entry per range)."""
    layers = _layers(cfg)
    wanted = dict(cfg.idmaps)
    for layer in wanted:
        if layer not in layers:
            raise InputError(f"init config idmaps: {layer!r} is not a layer of the root "
                             f"(root and lowers: {', '.join(map(repr, layers)) or 'none'})",
                             hint="name the layer as root or lowers write it")
    maps = {}
    for layer in layers:
        if layer in wanted:
            text, what = wanted[layer], f"idmaps.{layer!r}"
        elif cfg.idmap is not None:
            text, what = cfg.idmap, "idmap"
        else:
            continue
        maps[layer] = " ".join(_spell(r) for r in parse_idmap(text, what))
    return maps


def uses_idmap(cfg: InitConfig) -> bool:
    """Whether the init needs ``idmap-mount`` for ``cfg``."""
    return cfg.idmap is not None or bool(cfg.idmaps)


def _init_layer_name(cfg: InitConfig, layer: str) -> str:
    """How the init names ``layer`` when it mounts it: the root opened through dm-verity is
    /dev/mapper/root, the root with ``file`` is ROOT:FILE."""
    if layer != cfg.root:
        return layer
    if cfg.verity:
        layer = "/dev/mapper/root"
    return f"{layer}:{cfg.file}" if cfg.file else layer


def _render_idmaps(maps: dict[str, str]) -> list[str]:
    """``layer_idmap SPEC``: the map of that layer, empty for a plain one."""
    q = shlex.quote
    lines = ["layer_idmap() {", '    case "$1" in']
    lines += [f"        {q(layer)}) echo {q(text)} ;;" for layer, text in maps.items()]
    return lines + ["    esac", "}"]


def render_init_conf(cfg: InitConfig) -> str:
    """``/etc/imgkit/init.conf``: the config as shell assignments and hook functions.

    Every word is single-quoted (:func:`shlex.quote`), so sourcing it expands nothing and
    argv lists survive any character; the init ``eval``s the quoted final command.
    """
    if cfg.file and not cfg.root:
        raise InputError("init config: file needs root, the device the file is on",
                         hint="e.g. root = \"LABEL=LIVE\" and file = \"/live/root.squashfs\"")
    if cfg.file and not cfg.file.startswith("/"):
        raise InputError(f"init config file: expected an absolute path, got {cfg.file!r}")
    if not _layers(cfg):
        raise InputError("init config: nothing to mount as the root",
                         hint="set root (a device) or lowers (overlay layers)")
    for layer in _layers(cfg) + ([cfg.upper] if cfg.upper else []):
        _check_spec(layer, "layer")
    _check_verity(cfg)
    maps = layer_idmaps(cfg)
    q = shlex.quote
    lines = ["# /etc/imgkit/init.conf: read by /init (sourced; every value is quoted)",
             f"root={q(cfg.root or '')}",
             f"rootfile={q(cfg.file or '')}",
             f"rootfstype={q(cfg.fstype or '')}",
             f"lowers={q(','.join(cfg.lowers))}",
             f"upper={q(cfg.upper or '')}",
             f"verity={q(cfg.verity or '')}",
             f"roothash={q(cfg.roothash or '')}",
             f"verity_check={'1' if cfg.verity_check else ''}",
             f"mode={'rw' if cfg.rw else 'ro'}",
             f"rootdelay={int(cfg.delay)}",
             f"command={q(' '.join(q(a) for a in cfg.command))}",
             f"initctl={'1' if cfg.initctl else ''}",
             f"switch={q(cfg.switch)}"]
    if maps:
        lines += _render_idmaps({_init_layer_name(cfg, layer): text
                                 for layer, text in maps.items()})
    for hook in ("before_root", "after_root", "before_exec"):
        lines.append(f"hook_{hook}() {{")
        for item in getattr(cfg, hook):
            if isinstance(item, ShellHook):
                lines += _here_document(f"    run_hook_script {hook}", item.script)
            else:
                lines.append(f"    run_hook {hook} {' '.join(q(a) for a in item)}")
        lines.append("    :")
        lines.append("}")
    return "\n".join(lines) + "\n"

