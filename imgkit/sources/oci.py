"""Container images as tree sources: an OCI image layout, an OCI archive, a ``docker save``.

An image is a stack of layer tarballs; the root filesystem is what extracting them in order
gives, with each layer's whiteouts (``.wh.NAME`` deletes ``NAME`` from the layers below,
``.wh..wh..opq`` hides everything the layers below put in its directory) applied before the
layer's own entries. Each layer is read by :func:`imgkit.sources.archive.read_archive`, so
owners, xattrs, ACLs, device numbers and sparse files come from the layer headers exactly as
they do for any archive, and gzip, zstd and plain layers need nothing more.

Every blob is checked against its digest before it is used (manifest, config and layers in
an OCI layout; the config and the uncompressed layers' ``diff_ids`` in a ``docker save``),
so a corrupt or tampered image is an error naming the blob, never a silently different tree.
A digest is only ever turned into a path after checking it is ``ALGORITHM:HEX``, and blob
paths are opened without following symlinks, so an image cannot make us read a file outside
its layout.

Spellings (as skopeo writes them): ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
``docker-archive:FILE[:NAME:TAG]``; a trailing ``:/DIR`` places the tree below ``DIR`` like any
other source (:func:`split_image_prefix`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from imgkit.errors import ImageError, InputError
from imgkit.tree import Entry, Kind, Tree, sort_key

TRANSPORTS = ("oci", "oci-archive", "docker-archive")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEXES = (OCI_INDEX, DOCKER_LIST)
_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
_LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
REF_NAME = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"(sha256):([0-9a-f]{64})|(sha512):([0-9a-f]{128})")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageSource:
    """A parsed image spelling: transport, where the image is, and the tag asked for."""

    transport: str
    location: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"{self.transport}:{self.location}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class ImageConfig:
    """What the image says about running it (its config's ``config`` object).

    Kept on :attr:`Tree.image_config` so a later step can start the image's own command.
    """

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    digest: str = ""
    """The manifest's digest (for a ``docker save``: the config's, the image ID)."""
    platform: str = ""

    @property
    def command(self) -> tuple[str, ...]:
        """The default command line: ``Entrypoint`` followed by ``Cmd``."""
        return self.entrypoint + self.cmd

    @property
    def environment(self) -> dict[str, str]:
        """``Env`` as a mapping (a bare ``NAME`` is an empty value)."""
        return {name: value for name, _, value in (item.partition("=") for item in self.env)}


def parse_image_source(spec: str) -> ImageSource | None:
    """``TRANSPORT:LOCATION[:TAG]`` -> :class:`ImageSource`; ``None`` if not an image spelling.

    The location ends at the first ``:`` (as in skopeo) unless the whole rest names an
    existing path, so ``oci:/srv/img:v1`` is the layout ``/srv/img`` with tag ``v1``.
    """
    transport, sep, rest = spec.partition(":")
    if not sep or transport not in TRANSPORTS:
        return None
    if not rest:
        raise InputError(f"source {spec!r}: expected {transport}:PATH[:TAG]")
    if os.path.exists(rest):
        return ImageSource(transport, rest)
    location, _, tag = rest.partition(":")
    return ImageSource(transport, location, tag or None)


def split_image_prefix(spec: str) -> tuple[str, str] | None:
    """``oci:DIR[:TAG]:/PREFIX`` -> (``oci:DIR[:TAG]``, ``PREFIX``); ``None`` if not an image.

    A tag never starts with ``/`` (nor do the name parts of a docker reference), so the first
    ``:/`` after the location starts the prefix.
    """
    transport, sep, rest = spec.partition(":")
    if not sep or transport not in TRANSPORTS:
        return None
    if os.path.exists(rest):
        return spec, ""
    cut = rest.find(":/", 1)
    if cut < 0:
        return spec, ""
    return f"{transport}:{rest[:cut]}", rest[cut + 2:].strip("/")


def read_image(spec: str | ImageSource, *, os_name: str = "linux",
               architecture: str = "amd64") -> Tree:
    """The root filesystem of the image ``spec`` names, its config on ``tree.image_config``.

    When an index lists several images for one tag, the one for ``os_name``/``architecture``
    is taken.
    """
    src = spec if isinstance(spec, ImageSource) else parse_image_source(spec)
    if src is None:
        raise InputError(f"source {spec!r} is not an image",
                         hint=f"expected one of {', '.join(t + ':PATH' for t in TRANSPORTS)}")
    with _open_files(src) as files:
        if src.transport == "docker-archive":
            layers, config = _docker_image(files, src)
        else:
            layers, config = _oci_image(files, src, (os_name, architecture))
        tree = apply_layers(layers)
    tree.image_config = config
    return tree


# -- where the files of an image are ----------------------------------------------------------

class _Files(Protocol):
    label: str

    def file(self, name: str) -> str:
        """Host path of the image's regular file ``name`` (a path inside the image)."""
        ...

    def has(self, name: str) -> bool:
        ...


def _safe_name(name: str, where: str) -> str:
    """A relative path inside the image, with ``.`` parts dropped; ``..`` or absolute refused."""
    if name.startswith("/") or not name:
        raise ImageError(f"{where}: {name!r} is not a relative path inside the image")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise ImageError(f"{where}: {name!r} leads outside the image")
    return "/".join(parts)


class _LayoutDir:
    """An image laid out in a host directory. Each path component is opened without
    following symlinks, so nothing outside the directory is ever read."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise InputError(f"image layout {root!r} is not a directory",
                             hint="expected a directory with oci-layout, index.json and blobs/")
        self.root = root
        self.label = root

    def _lstat(self, name: str) -> os.stat_result | None:
        parts = _safe_name(name, self.label).split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                except OSError as exc:
                    raise ImageError(f"{self.label}: {name}: {exc.strerror}",
                                     hint="a directory of the layout is a symlink?") from exc
                os.close(fd)
                fd = nfd
            try:
                return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
        finally:
            os.close(fd)

    def has(self, name: str) -> bool:
        return self._lstat(name) is not None

    def file(self, name: str) -> str:
        st = self._lstat(name)
        if st is None:
            raise ImageError(f"{self.label}: {name} is missing")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{self.label}: {name} is not a regular file",
                             hint="blobs that are symlinks are not followed")
        return os.path.join(self.root, name)


class _ArchiveFiles:
    """The regular files of a tar archive (an OCI archive or a ``docker save``), copied out
    into a private temporary directory under names of our own; member names are only keys.
    Symlink members (``docker save`` links identical layers) are resolved inside the archive.
    """

    def __init__(self, path: str, tmp: str) -> None:
        if not os.path.isfile(path):
            raise InputError(f"image archive {path!r} does not exist")
        self.label = path
        self._files: dict[str, str] = {}
        self._links: dict[str, str] = {}
        try:
            with tarfile.open(path, "r:*") as tar:
                for n, member in enumerate(tar):
                    try:
                        name = _safe_name(member.name, path)
                    except ImageError:
                        continue   # not a file the image format names: never read
                    if member.issym():
                        self._links[name] = member.linkname
                    elif member.islnk():
                        self._links[name] = "/" + member.linkname
                    elif member.isfile():
                        # a name of our own that still says which blob it is, for messages
                        host = os.path.join(tmp, f"{n}-{name.replace('/', '_')}"[:200])
                        src = tar.extractfile(member)
                        assert src is not None
                        with src, open(host, "wb") as out:
                            shutil.copyfileobj(src, out, _CHUNK)
                        self._files[name] = host
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ImageError(f"cannot read image archive {path!r}: {exc}",
                             hint="expected a tar written by skopeo, podman save or docker save"
                             ) from exc

    def _resolve(self, name: str) -> str | None:
        for _ in range(16):
            if name in self._files:
                return name
            link = self._links.get(name)
            if link is None:
                return None
            joined = link[1:] if link.startswith("/") else posixpath.join(
                posixpath.dirname(name), link)
            name = _safe_name(posixpath.normpath(joined), self.label)
        return None

    def has(self, name: str) -> bool:
        return self._resolve(_safe_name(name, self.label)) is not None

    def file(self, name: str) -> str:
        found = self._resolve(_safe_name(name, self.label))
        if found is None:
            raise ImageError(f"{self.label}: {name} is missing from the archive")
        return self._files[found]


@contextmanager
def _open_files(src: ImageSource) -> Iterator[_Files]:
    if src.transport == "oci":
        yield _LayoutDir(src.location)
        return
    tmp = tempfile.mkdtemp(prefix="imgkit-image-")
    try:
        yield _ArchiveFiles(src.location, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- digests ------------------------------------------------------------------------------------

def _blob_name(digest: Any, where: str) -> tuple[str, str]:
    """``(blobs/ALG/HEX, algorithm)`` for a well-formed digest; anything else is refused."""
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise ImageError(f"{where}: digest {digest!r} is not sha256:HEX or sha512:HEX",
                         hint="a digest names a blob; other text could name a path outside "
                         "the image and is refused")
    alg = m.group(1) or m.group(3)
    return f"blobs/{alg}/{m.group(2) or m.group(4)}", alg


def _hash_file(f: Any, alg: str) -> tuple[str, int]:
    h = hashlib.new(alg)
    size = 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return f"{alg}:{h.hexdigest()}", size


def _verified_blob(files: _Files, desc: Any, what: str) -> str:
    """Host path of the blob ``desc`` describes, after checking its digest and size."""
    where = f"{files.label}: {what}"
    if not isinstance(desc, dict):
        raise ImageError(f"{where}: expected a descriptor object, got {type(desc).__name__}")
    name, alg = _blob_name(desc.get("digest"), where)
    path = files.file(name)
    with open(path, "rb") as f:
        got, size = _hash_file(f, alg)
    if got != desc["digest"]:
        raise ImageError(f"{where}: blob {name} has digest {got}, expected {desc['digest']}",
                         hint="the image is corrupt or was changed after it was written")
    want_size = desc.get("size")
    if isinstance(want_size, int) and want_size != size:
        raise ImageError(f"{where}: blob {name} is {size} bytes, the descriptor says "
                         f"{want_size}")
    return path


def _load_json(path: str, where: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{where}: not valid JSON ({exc})") from exc


def _verified_json(files: _Files, desc: Any, what: str) -> Any:
    return _load_json(_verified_blob(files, desc, what), f"{files.label}: {what}")


# -- OCI image layout -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One layer tarball to apply: its host path and what to call it in messages."""

    path: str
    label: str


def _oci_image(files: _Files, src: ImageSource,
               platform: tuple[str, str]) -> tuple[list[Layer], ImageConfig]:
    if not files.has("oci-layout"):
        raise ImageError(f"{files.label}: no oci-layout file: not an OCI image layout",
                         hint="a docker save archive is docker-archive:FILE")
    layout = _load_json(files.file("oci-layout"), f"{files.label}: oci-layout")
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageError(f"{files.label}: oci-layout: expected imageLayoutVersion 1.x, got "
                         f"{version!r}")
    index = _load_json(files.file("index.json"), f"{files.label}: index.json")
    desc = _select(_manifests(index, f"{files.label}: index.json"), src.tag, platform,
                   f"{files.label}: index.json")
    what = f"manifest {desc.get('digest')}"
    depth = 0
    while desc.get("mediaType") in _INDEXES:
        depth += 1
        if depth > 4:
            raise ImageError(f"{files.label}: indexes nested more than 4 deep")
        where = f"index {desc.get('digest')}"
        nested = _verified_json(files, desc, where)
        desc = _select(_manifests(nested, f"{files.label}: {where}"), None, platform,
                       f"{files.label}: {where}")
        what = f"manifest {desc.get('digest')}"
    manifest = _verified_json(files, desc, what)
    if not isinstance(manifest, dict):
        raise ImageError(f"{files.label}: {what}: expected a JSON object")
    media = manifest.get("mediaType", desc.get("mediaType", OCI_MANIFEST))
    if media not in _MANIFESTS:
        raise ImageError(f"{files.label}: {what}: media type {media!r} is not an image "
                         f"manifest", hint=f"expected {OCI_MANIFEST}")
    config = _verified_json(files, manifest.get("config"), f"config of {what}")
    layers = []
    descs = manifest.get("layers")
    if not isinstance(descs, list):
        raise ImageError(f"{files.label}: {what}: expected a list of layers")
    for n, layer in enumerate(descs, 1):
        digest = layer.get("digest") if isinstance(layer, dict) else layer
        label = f"layer {n} of {len(descs)} ({digest})"
        kind = layer.get("mediaType") if isinstance(layer, dict) else None
        if kind not in _LAYER_TYPES:
            raise ImageError(f"{files.label}: {label}: media type {kind!r} is not a layer "
                             "imgkit reads", hint="expected a tar, tar+gzip or tar+zstd layer")
        layers.append(Layer(_verified_blob(files, layer, label), f"{files.label}: {label}"))
    return layers, _image_config(config, str(desc["digest"]), f"{files.label}: config")


def _manifests(index: Any, where: str) -> list[dict]:
    found = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(found, list) or not all(isinstance(d, dict) for d in found):
        raise ImageError(f"{where}: expected an object with a list of manifests")
    if not found:
        raise ImageError(f"{where}: lists no image")
    return found


def _select(descs: list[dict], tag: str | None, platform: tuple[str, str],
            where: str) -> dict:
    """The descriptor for ``tag`` (or the only one), narrowed by platform when several."""
    if tag is not None:
        names = [str((d.get("annotations") or {}).get(REF_NAME)) for d in descs]
        tagged = [d for d, name in zip(descs, names, strict=True) if name == tag] or [
            d for d, name in zip(descs, names, strict=True) if _short_ref(name) == _short_ref(tag)]
        if not tagged:
            raise ImageError(f"{where}: no image tagged {tag!r}",
                             hint=f"tags there: {_tags(descs) or 'none'}")
        descs = tagged
    if len(descs) == 1:
        return descs[0]
    with_platform = [d for d in descs if isinstance(d.get("platform"), dict)]
    if len(with_platform) == len(descs):
        want_os, want_arch = platform
        match = [d for d in descs if d["platform"].get("os") == want_os
                 and d["platform"].get("architecture") == want_arch]
        if len(match) >= 1:
            return match[0]
        have = ", ".join(sorted({f"{d['platform'].get('os')}/{d['platform'].get('architecture')}"
                                 for d in descs}))
        raise ImageError(f"{where}: no image for {want_os}/{want_arch}", hint=f"platforms: {have}")
    raise ImageError(f"{where}: lists {len(descs)} images, which one?",
                     hint=f"name it with :TAG (tags: {_tags(descs) or 'none'})")


def _tags(descs: list[dict]) -> str:
    return ", ".join(sorted({str((d.get("annotations") or {}).get(REF_NAME)) for d in descs
                             if (d.get("annotations") or {}).get(REF_NAME)}))


def _image_config(config: Any, digest: str, where: str) -> ImageConfig:
    if not isinstance(config, dict):
        raise ImageError(f"{where}: expected a JSON object")
    run = config.get("config") or {}
    if not isinstance(run, dict):
        raise ImageError(f"{where}: config: expected an object")

    def strings(key: str) -> tuple[str, ...]:
        value = run.get(key) or ()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ImageError(f"{where}: {key}: expected a list of strings, got {value!r}")
        return tuple(value)

    platform = "/".join(str(config[k]) for k in ("os", "architecture") if config.get(k))
    return ImageConfig(env=strings("Env"), entrypoint=strings("Entrypoint"),
                       cmd=strings("Cmd"), working_dir=str(run.get("WorkingDir") or ""),
                       user=str(run.get("User") or ""), digest=digest, platform=platform)


# -- docker save / podman save ----------------------------------------------------------------

def _docker_image(files: _Files, src: ImageSource) -> tuple[list[Layer], ImageConfig]:
    if not files.has("manifest.json"):
        raise ImageError(f"{files.label}: no manifest.json: not a docker save archive",
                         hint="an OCI archive is oci-archive:FILE")
    images = _load_json(files.file("manifest.json"), f"{files.label}: manifest.json")
    if not isinstance(images, list) or not images or not all(isinstance(i, dict) for i in images):
        raise ImageError(f"{files.label}: manifest.json: expected a list of images")
    image = _docker_select(images, src.tag, f"{files.label}: manifest.json")
    config_name = image.get("Config")
    if not isinstance(config_name, str):
        raise ImageError(f"{files.label}: manifest.json: image without a Config")
    digest = _docker_config_digest(config_name, f"{files.label}: manifest.json")
    path = files.file(_safe_name(config_name, files.label))
    with open(path, "rb") as f:
        got, _ = _hash_file(f, "sha256")
    if got != digest:
        raise ImageError(f"{files.label}: config {config_name} has digest {got}, its name "
                         f"says {digest}", hint="the archive is corrupt or was changed")
    config = _load_json(path, f"{files.label}: {config_name}")
    names = image.get("Layers")
    diff_ids = ((config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict)
                else None)
    if not isinstance(names, list) or not isinstance(diff_ids, list) \
            or len(names) != len(diff_ids):
        raise ImageError(f"{files.label}: {config_name}: the layer list and rootfs.diff_ids "
                         "do not match", hint=f"layers: {names!r}, diff_ids: {diff_ids!r}")
    layers = []
    for n, (name, diff_id) in enumerate(zip(names, diff_ids, strict=True), 1):
        label = f"layer {n} of {len(names)} ({name})"
        _, alg = _blob_name(diff_id, f"{files.label}: {label}: diff_id")
        if not isinstance(name, str):
            raise ImageError(f"{files.label}: {label}: expected a file name")
        path = files.file(_safe_name(name, files.label))
        got = _uncompressed_digest(path, alg)
        if got != diff_id:
            raise ImageError(f"{files.label}: {label}: blob {name} has digest {got} "
                             f"uncompressed, rootfs.diff_ids says {diff_id}",
                             hint="the archive is corrupt or was changed")
        layers.append(Layer(path, f"{files.label}: {label}"))
    return layers, _image_config(config, digest, f"{files.label}: {config_name}")


def _docker_select(images: list[dict], tag: str | None, where: str) -> dict:
    """The image tagged ``tag`` (``NAME:TAG``, or only ``TAG`` or ``NAME`` when that is
    unambiguous), or the only image."""
    if tag is None:
        if len(images) == 1:
            return images[0]
        raise ImageError(f"{where}: holds {len(images)} images, which one?",
                         hint=f"name it with :NAME:TAG (tags: {_repo_tags(images)})")
    want = _short_ref(tag)
    for test in (lambda t: _short_ref(t) == want, lambda t: t.rpartition(":")[2] == tag,
                 lambda t: t.rpartition(":")[0] == tag,
                 lambda t: t.rpartition(":")[0].rpartition("/")[2] == tag):
        found = [i for i in images if any(test(t) for t in i.get("RepoTags") or ())]
        if len(found) == 1:
            return found[0]
        if found:
            raise ImageError(f"{where}: {tag!r} names {len(found)} images",
                             hint=f"name one in full (tags: {_repo_tags(images)})")
    raise ImageError(f"{where}: no image tagged {tag!r}",
                     hint=f"tags there: {_repo_tags(images)}")


def _short_ref(ref: str) -> str:
    """A reference without the registry docker or podman adds to a short name
    (``docker.io/library/``, ``localhost/``)."""
    for default in ("docker.io/library/", "docker.io/", "localhost/"):
        if ref.startswith(default):
            return ref[len(default):]
    return ref


def _repo_tags(images: list[dict]) -> str:
    return ", ".join(t for i in images for t in i.get("RepoTags") or ()) or "none"


def _docker_config_digest(name: str, where: str) -> str:
    """The digest a config's name carries: ``HEX.json`` (docker's image ID) or
    ``blobs/sha256/HEX`` (docker 25 and later)."""
    base = posixpath.basename(name)
    hexpart = base[:-5] if base.endswith(".json") else base
    if not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise ImageError(f"{where}: config {name!r} is not named by its sha256 digest",
                         hint="expected HEX.json or blobs/sha256/HEX")
    return f"sha256:{hexpart}"


def _uncompressed_digest(path: str, alg: str) -> str:
    """Digest of a layer's tar stream, decompressing gzip or zstd (what ``diff_ids`` hold)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as g:
            return _hash_file(g, alg)[0]
    if magic == b"\x28\xb5\x2f\xfd":
        import zstandard
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as z:
            return _hash_file(z, alg)[0]
    with open(path, "rb") as f:
        return _hash_file(f, alg)[0]


# -- applying layers ------------------------------------------------------------------------------

def apply_layers(layers: list[Layer]) -> Tree:
    """Extract ``layers`` in order into one tree, as a container runtime would."""
    from imgkit.sources.archive import read_archive  # libarchive loads slowly: on use

    stack = _LayerStack()
    for layer in layers:
        stack.apply(read_archive(layer.path, layer=True), layer.label)
    stack.tree.validate()
    return stack.tree


@dataclass
class _LayerStack:
    """The tree so far, and its hard-link groups both ways, so that replacing or deleting the
    file that carries a group's data hands it to a name that stays (an inode outlives one of
    its names)."""

    tree: Tree = field(default_factory=Tree)
    primary_of: dict[str, str] = field(default_factory=dict)   # extra name -> data path
    names: dict[str, set[str]] = field(default_factory=dict)   # data path -> extra names

    def apply(self, layer: Tree, label: str) -> None:
        whiteouts: list[str] = []
        opaque: list[str] = []
        entries: list[Entry] = []
        links: list[Entry] = []
        for e in layer:
            if e.path == "":
                continue
            if e.name == OPAQUE:
                opaque.append(e.parent)
            elif e.name.startswith(WHITEOUT + WHITEOUT):
                continue   # other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not content
            elif e.name.startswith(WHITEOUT):
                whiteouts.append(posixpath.join(e.parent, e.name[len(WHITEOUT):]))
            elif e.kind is Kind.HARDLINK:
                links.append(e)
            else:
                entries.append(e)
        self.tree.warnings.extend(layer.warnings)
        if layer.root != Tree().root:
            r = layer.root
            self.tree.with_root(mode=r.mode, uid=r.uid, gid=r.gid, mtime=r.mtime,
                                xattrs=r.xattrs)
        self._remove({p for p in whiteouts if p in self.tree}, set(opaque))
        for e in entries:
            self._put(e)
        for e in links:
            self._link(e, label)

    def _put(self, e: Entry) -> None:
        old = self.tree.get(e.path)
        if old is not None:
            if old.kind is Kind.DIR and e.kind is Kind.DIR:
                if e.origin.startswith("implied by"):
                    return   # the layer only passes through: the directory stays as it was
            elif old.kind is Kind.DIR:
                self._remove({e.path}, set())
            else:
                self._forget(e.path)
        self.tree.add(e)

    def _link(self, e: Entry, label: str) -> None:
        target = self.tree.get(e.target or "")
        if target is None or target.kind not in (Kind.FILE, Kind.HARDLINK):
            found = "nothing" if target is None else f"a {target.kind.value}"
            raise ImageError(f"{label}: hard link {e.path!r} points at {e.target!r}, which is "
                             f"{found} in this layer or the ones below",
                             hint="expected a regular file of this layer or a lower one")
        primary = target.target if target.kind is Kind.HARDLINK else target.path
        assert primary is not None
        if e.path == primary:
            return
        self._put(e.replace(target=primary))
        self.primary_of[e.path] = primary
        self.names.setdefault(primary, set()).add(e.path)

    def _remove(self, gone: set[str], emptied: set[str]) -> None:
        """Delete the paths ``gone`` with what is below them, and what is below the
        directories ``emptied``, in one pass over the tree (a layer may hold thousands of
        whiteouts)."""
        if not gone and not emptied:
            return

        def doomed(path: str) -> bool:
            if path in gone:
                return True
            while path:
                path = posixpath.dirname(path)
                if path in gone or path in emptied:
                    return True
            return False

        for name in [n for n in self.primary_of if doomed(n)]:
            self._forget(name)
        for primary in [p for p in self.names if doomed(p)]:
            self._forget(primary)
        old = self.tree
        self.tree = Tree(dir_mode=old.dir_mode, default_mtime=old.default_mtime)
        self.tree.warnings = old.warnings
        r = old.root
        self.tree.with_root(mode=r.mode, uid=r.uid, gid=r.gid, mtime=r.mtime, xattrs=r.xattrs)
        for e in old:
            if e.path and not doomed(e.path):
                self.tree.add_in_order(e)

    def _forget(self, path: str) -> None:
        """``path`` is about to go: take it out of its hard-link group, handing the data on."""
        primary = self.primary_of.pop(path, None)
        if primary is not None:
            self.names[primary].discard(path)
            if not self.names[primary]:
                del self.names[primary]
            return
        others = self.names.pop(path, None)
        if not others:
            return
        data = self.tree[path]
        heir = min(others, key=sort_key)
        self.tree.add(data.replace(path=heir, origin=self.tree[heir].origin))
        others.discard(heir)
        for name in others:
            self.tree.add(self.tree[name].replace(target=heir))
            self.primary_of[name] = heir
        del self.primary_of[heir]
        if others:
            self.names[heir] = others
