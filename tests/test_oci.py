"""Container images as sources, checked against images made and unpacked by umoci and skopeo.

The image is built by umoci from real directory changes (umoci computes the layers and their
whiteouts), plus one layer archive added verbatim with ``umoci raw add-layer`` for what a
directory diff never produces (an opaque directory, a hard link to a file of a lower layer, a
device node). skopeo converts it to zstd layers, an OCI archive, a ``docker save`` archive and
uncompressed layers. Every variant read by imgkit must match, path by path, what
``umoci unpack`` extracts from the same image: owner, mode, size, link target, device
numbers, xattrs, mtime, hard-link groups and content hash.

As root umoci unpacks with real owners and device nodes; as uid 65534 it runs ``--rootless``
and keeps each file's owner in the ``user.rootlesscontainers`` xattr (the rootless-containers
convention umoci reads and writes), which the comparison decodes.
"""
from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

import pytest
from conftest import bsdtar_listing, cpio_listing, sh

from imgkit.assemble import TreeSpec, assemble, split_prefix
from imgkit.errors import ImageError
from imgkit.idmap import SQUASH
from imgkit.sources import load_source, source_kind
from imgkit.sources.oci import read_image
from imgkit.tree import Kind, Tree

ROOT = os.getuid() == 0
ROOTLESS_XATTR = "user.rootlesscontainers"
NOOP_ID = 0xFFFFFFFF

pytestmark = pytest.mark.skipif(not (shutil.which("umoci") and shutil.which("skopeo")),
                                reason="tool: umoci and skopeo (packages.txt)")


# -- building the image with umoci -------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _rootless_owner(uid: int, gid: int) -> bytes:
    """The ``user.rootlesscontainers`` protobuf (field 1 uid, field 2 gid; zeros left out)."""
    return (b"\x08" + _varint(uid) if uid else b"") + (b"\x10" + _varint(gid) if gid else b"")


def _decode_rootless_owner(value: bytes) -> tuple[int, int]:
    ids, i = {1: 0, 2: 0}, 0
    while i < len(value):
        field, i = value[i] >> 3, i + 1
        n = shift = 0
        while True:
            b = value[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        ids[field] = n
    # 0xFFFFFFFF is the format's "unchanged": the unpacking user, who stands for root
    return tuple(0 if ids[k] == NOOP_ID else ids[k] for k in (1, 2))  # type: ignore[return-value]


def chown(path: str, uid: int, gid: int) -> None:
    """Give ``path`` an owner in the image: for real as root, as umoci's xattr otherwise."""
    if ROOT:
        os.lchown(path, uid, gid)
    elif not os.path.islink(path):   # user.* xattrs cannot be set on symlinks
        os.setxattr(path, ROOTLESS_XATTR, _rootless_owner(uid, gid), follow_symlinks=False)


def umoci(*args: str) -> str:
    rootless = ("--rootless",) if not ROOT and args[0] == "unpack" else ()
    return sh("umoci", args[0], *rootless, *args[1:])


def write(path: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    chown(path, *owner)


def _layer_one(r: str) -> None:
    os.makedirs(f"{r}/etc", 0o755)
    write(f"{r}/etc/keep", b"keep\n", 0o640, (1000, 100))
    os.setxattr(f"{r}/etc/keep", "user.note", b"kept")
    os.link(f"{r}/etc/keep", f"{r}/etc/keep-hl")
    write(f"{r}/etc/replace", b"old\n")
    write(f"{r}/etc/gone", b"bye\n")
    write(f"{r}/etc/lower", b"linked to from a later layer\n", 0o600, (7, 7))
    write(f"{r}/etc/f2d", b"a file, later a directory\n")
    os.symlink("keep", f"{r}/etc/sym")
    write(f"{r}/usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o4755)
    write(f"{r}/usr/share/big", os.urandom(1 << 20))
    write(f"{r}/gone/sub/f", b"in a deleted directory\n")
    write(f"{r}/d2f/x", b"in a directory, later a file\n")
    write(f"{r}/opq/old", b"hidden by an opaque whiteout\n")
    write(f"{r}/opq/olddir/x", b"hidden too\n")
    write(f"{r}/home/user/file", b"mine\n", 0o600, (1000, 1000))
    os.chmod(f"{r}/home/user", 0o700)
    chown(f"{r}/home/user", 1000, 1000)


def _layer_two(r: str) -> None:
    os.unlink(f"{r}/etc/gone")
    shutil.rmtree(f"{r}/gone")
    os.unlink(f"{r}/etc/keep")          # etc/keep-hl keeps the data
    write(f"{r}/etc/replace", b"new content\n", 0o600, (5, 5))
    os.unlink(f"{r}/etc/sym")
    os.symlink("replace", f"{r}/etc/sym")
    os.unlink(f"{r}/etc/f2d")
    write(f"{r}/etc/f2d/inside", b"now a directory\n")
    shutil.rmtree(f"{r}/d2f")
    write(f"{r}/d2f", b"now a file\n", 0o755)
    chown(f"{r}/home/user/file", 1001, 1001)


def _layer_three() -> bytes:
    """What no directory diff gives: an opaque directory, a hard link into a lower layer,
    device nodes and a fifo (an uncompressed tar, as ``umoci raw add-layer`` wants)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", **kw) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.size, ti.mtime = kind, mode, len(data), 1_700_000_000
            for k, v in kw.items():
                setattr(ti, k, v)
            tar.addfile(ti, io.BytesIO(data) if data else None)
        add("opq/", tarfile.DIRTYPE, 0o750, uid=3, gid=3)
        add("opq/.wh..wh..opq", tarfile.REGTYPE, 0o644)
        add("opq/new", tarfile.REGTYPE, 0o644, b"only this is left\n")
        add("etc/across", tarfile.LNKTYPE, 0o600, linkname="etc/lower")
        add("dev/", tarfile.DIRTYPE, 0o755)
        add("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)
        add("dev/sda", tarfile.BLKTYPE, 0o660, gid=6, devmajor=8, devminor=0)
        add("dev/fifo", tarfile.FIFOTYPE, 0o600)
    return buf.getvalue()


def _layer_four() -> bytes:
    """A new etc/lower: etc/across, its other name since layer three, keeps the old data."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"a new file under the old name\n"
        ti = tarfile.TarInfo("etc/lower")
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
        tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


CONFIG = ("--config.env=PATH=/usr/bin:/bin", "--config.env=LANG=C.UTF-8",
          "--config.entrypoint=/usr/bin/tool", "--config.cmd=--verbose",
          "--config.workingdir=/home/user")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    """The image in every spelling imgkit reads, and its ``umoci unpack`` as ``ref``."""
    d = str(tmp_path_factory.mktemp("oci"))
    img = f"{d}/img"
    umoci("init", "--layout", img)
    umoci("new", "--image", f"{img}:base")
    for n, (tag, change) in enumerate((("one", _layer_one), ("two", _layer_two))):
        bundle = f"{d}/bundle{n}"
        umoci("unpack", "--image", f"{img}:{'base' if n == 0 else 'one'}", bundle)
        change(f"{bundle}/rootfs")
        umoci("repack", "--image", f"{img}:{tag}", bundle)
    with open(f"{d}/layer3.tar", "wb") as f:
        f.write(_layer_three())
    umoci("raw", "add-layer", "--image", f"{img}:two", "--tag", "three", f"{d}/layer3.tar")
    with open(f"{d}/layer4.tar", "wb") as f:
        f.write(_layer_four())
    umoci("raw", "add-layer", "--image", f"{img}:three", "--tag", "four", f"{d}/layer4.tar")
    umoci("config", "--image", f"{img}:four", "--tag", "final", *CONFIG)
    umoci("unpack", "--image", f"{img}:final", f"{d}/ref")
    skopeo = ("skopeo", "--insecure-policy", "copy", "-q")
    sh(*skopeo, "--dest-compress-format", "zstd", f"oci:{img}:final", f"oci:{d}/zstd:final")
    sh(*skopeo, f"oci:{img}:final", f"oci-archive:{d}/img.tar:final")
    sh(*skopeo, f"oci:{img}:final", f"docker-archive:{d}/docker.tar:example/img:final")
    _uncompressed_copy(img, f"{d}/plain")
    return {"dir": d, "oci": f"oci:{img}:final", "zstd": f"oci:{d}/zstd:final",
            "oci-archive": f"oci-archive:{d}/img.tar:final",
            "docker-archive": f"docker-archive:{d}/docker.tar:example/img:final",
            "plain": f"oci:{d}/plain", "ref": f"{d}/ref/rootfs", "layout": img}


def _uncompressed_copy(layout: str, dest: str) -> None:
    """The layout with its "final" image's layers gunzipped under an edited manifest
    (skopeo 1.9 compresses every layer it writes to an OCI layout)."""
    shutil.copytree(layout, dest)
    desc, manifest = _manifest(dest, "final")
    for layer in manifest["layers"]:
        with gzip.open(f"{dest}/blobs/sha256/{layer['digest'][7:]}") as f:
            layer.update(_add_blob(dest, f.read()),
                         mediaType="application/vnd.oci.image.layer.v1.tar")
    desc.update(_add_blob(dest, json.dumps(manifest).encode()))
    with open(f"{dest}/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [desc]}, f)


# -- listings of the reference and of a tree ---------------------------------------------------

def reference_listing(rootfs: str) -> tuple[dict[str, dict], set[frozenset[str]]]:
    """Path -> fields of what umoci extracted, and its hard-link groups (by inode)."""
    out: dict[str, dict] = {}
    inodes: dict[tuple[int, int], set[str]] = {}
    for top, dirs, files in os.walk(rootfs):
        for name in ["", *dirs, *files] if top == rootfs else [*dirs, *files]:
            host = os.path.join(top, name) if name else top
            rel = os.path.relpath(host, rootfs).replace(os.sep, "/")
            rel = "" if rel == "." else rel
            st = os.lstat(host)
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for key in os.listxattr(host, follow_symlinks=False):
                    xattrs[key] = os.getxattr(host, key, follow_symlinks=False)
            uid, gid = st.st_uid, st.st_gid
            if not ROOT:
                uid, gid = _decode_rootless_owner(xattrs.pop(ROOTLESS_XATTR, b""))
            kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                    stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}[
                        stat.S_IFMT(st.st_mode)]
            fields = {"kind": kind, "mode": stat.S_IMODE(st.st_mode), "uid": uid, "gid": gid,
                      "xattrs": xattrs}
            if kind == "file":
                with open(host, "rb") as f:
                    fields["sha256"] = hashlib.sha256(f.read()).hexdigest()
                fields["size"] = st.st_size
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
            if kind == "symlink":
                fields["target"] = os.readlink(host)
            if kind in ("char", "block"):
                fields["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if kind != "dir":
                fields["mtime"] = int(st.st_mtime)
            out[rel] = fields
    return out, {frozenset(g) for g in inodes.values()}


def tree_listing(tree: Tree) -> tuple[dict[str, dict], set[frozenset[str]]]:
    out: dict[str, dict] = {}
    for e in tree:
        data = tree[e.target] if e.kind is Kind.HARDLINK else e
        kind = "file" if e.kind is Kind.HARDLINK else e.kind.value
        fields = {"kind": kind, "mode": data.mode, "uid": data.uid, "gid": data.gid,
                  "xattrs": dict(data.xattrs)}
        if kind == "file":
            with data.data.open() as f:
                fields["sha256"] = hashlib.sha256(f.read()).hexdigest()
            fields["size"] = data.size
        if kind == "symlink":
            fields["target"] = e.target
        if kind in ("char", "block"):
            fields["rdev"] = e.rdev
        if kind != "dir":
            fields["mtime"] = data.mtime
        out[e.path] = fields
    groups = {frozenset([p, *names]) for p, names in tree.hardlink_groups().items()}
    return out, groups


def without_rootless_devices(ours: dict[str, dict], ref: dict[str, dict]) -> None:
    """Rootless umoci cannot mknod and extracts device nodes as empty files: those paths
    are compared as such (their numbers are checked against the layer by bsdtar)."""
    if ROOT:
        return
    for path, fields in ours.items():
        if fields["kind"] in ("char", "block") and ref.get(path, {}).get("kind") == "file":
            ref[path] = dict(fields)


def assert_same(tree: Tree, rootfs: str) -> None:
    ours, our_links = tree_listing(tree)
    ref, ref_links = reference_listing(rootfs)
    without_rootless_devices(ours, ref)
    diffs = [f"/{p}: imgkit {ours.get(p)} umoci {ref.get(p)}"
             for p in sorted(set(ours) | set(ref)) if ours.get(p) != ref.get(p)]
    assert not diffs, "\n".join(diffs[:20])
    assert our_links == ref_links


# -- the tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["oci", "zstd", "oci-archive", "docker-archive", "plain"])
def test_image_matches_umoci_unpack(images, variant):
    tree = load_source(images[variant])
    assert_same(tree, images["ref"])
    # what the image was made to test is really there
    assert "etc/gone" not in tree and "gone" not in tree and "opq/old" not in tree
    assert tree["etc/keep-hl"].kind is Kind.FILE and "etc/keep" not in tree
    across, lower = tree["etc/across"], tree["etc/lower"]   # no longer one file
    assert across.kind is lower.kind is Kind.FILE and across.uid == 7 and lower.uid == 0
    assert tree["dev/sda"].rdev == (8, 0) and tree["opq"].mode == 0o750
    assert tree["etc/keep-hl"].xattrs == (("user.note", b"kept"),)


def test_variants_use_the_layer_encodings_they_claim(images):
    """The zstd and plain layouts really hold zstd and uncompressed layers."""
    for variant, suffix in (("zstd", "tar+zstd"), ("plain", "tar")):
        layout = images[variant].split(":")[1]
        index = json.load(open(f"{layout}/index.json"))
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(open(f"{layout}/blobs/sha256/{digest}"))
        types = {layer["mediaType"] for layer in manifest["layers"]}
        assert types == {f"application/vnd.oci.image.layer.v1.{suffix}"}, types


def test_device_numbers_match_the_layer_headers(images):
    """bsdtar's reading of the layer umoci stored, for the nodes a rootless unpack cannot make."""
    tree = load_source(images["oci"])
    layout = images["layout"]
    listing = sh("bsdtar", "-tvnf", f"{images['dir']}/layer3.tar")
    assert any(line.startswith("crw-rw-rw-") and " 1,3 " in line.replace(", ", ",")
               and line.endswith("dev/null") for line in listing.splitlines()), listing
    assert tree["dev/null"].rdev == (1, 3) and tree["dev/null"].kind is Kind.CHAR
    assert os.path.isdir(layout)


def test_image_config_is_kept(images):
    for variant in ("oci", "oci-archive", "docker-archive"):
        config = load_source(images[variant]).image_config
        assert config.env == ("PATH=/usr/bin:/bin", "LANG=C.UTF-8")
        assert config.command == ("/usr/bin/tool", "--verbose")
        assert config.working_dir == "/home/user"
        assert config.platform == "linux/amd64"


def test_cli_initramfs_from_an_image(images, tmp_path):
    out = tmp_path / "initrd.cpio"
    r = subprocess.run([sys.executable, "-m", "imgkit", "initramfs", images["oci"],
                        f"{images['docker-archive']}:/srv/copy", "-o", str(out),
                        "--compress", "none"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listing = cpio_listing(str(out))
    ref, _ = reference_listing(images["ref"])
    without_rootless_devices(tree_listing(load_source(images["oci"]))[0], ref)
    letters = {"file": "-", "dir": "d", "symlink": "l", "char": "c", "block": "b", "fifo": "p"}
    for path, fields in ref.items():
        for where in filter(None, (path, f"srv/copy/{path}".rstrip("/"))):
            got = listing[where]
            assert (got["uid"], got["gid"]) == (fields["uid"], fields["gid"]), where
            assert got["mode"][0] == letters[fields["kind"]], where
            if fields["kind"] == "file" and got["nlink"] == 1:
                assert got["size"] == str(fields["size"]), where
            if "rdev" in fields:
                assert got["size"] == "{},{}".format(*fields["rdev"]), where
            if fields["kind"] == "symlink":
                assert got["target"] == fields["target"], where


def test_config_tree_from_an_image(images, tmp_path):
    """``[trees.NAME] sources`` takes image spellings, relative to the config file."""
    layout = images["layout"]
    shutil.copytree(layout, tmp_path / "img", symlinks=True)
    (tmp_path / "image.toml").write_text("""
[trees.root]
sources = ["oci:img:final"]
[initramfs.main]
tree = "root"
compress = "none"
output = "root.cpio"
""")
    r = subprocess.run([sys.executable, "-m", "imgkit", "build", str(tmp_path / "image.toml"),
                        "-O", str(tmp_path / "out")], capture_output=True, text=True,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    listing = cpio_listing(str(tmp_path / "out" / "root.cpio"))
    assert listing["etc/replace"]["uid"] == 5 and listing["etc/replace"]["size"] == "12"
    assert "etc/gone" not in listing and listing["opq/new"]["size"] == "18"


@pytest.mark.parametrize("spec, expected", [
    ("oci:/srv/img", ("oci:/srv/img", "")),
    ("oci:/srv/img:v1", ("oci:/srv/img:v1", "")),
    ("oci:/srv/img:v1:/opt/x", ("oci:/srv/img:v1", "opt/x")),
    ("oci:/srv/img:/opt", ("oci:/srv/img", "opt")),
    ("docker-archive:a.tar:example/img:final:/opt", ("docker-archive:a.tar:example/img:final",
                                                     "opt")),
    ("rootfs.tar:/opt/x", ("rootfs.tar", "opt/x")),
])
def test_image_spellings_and_prefixes(spec, expected):
    assert split_prefix(spec) == expected


def test_source_kind_of_an_image(images):
    assert source_kind(images["oci"]) == "image"
    assert source_kind(images["layout"]) == "directory"   # a plain path stays a directory
    assert any("oci:" in w for w in load_source(images["layout"]).warnings)


def test_the_image_config_survives_assembly(images):
    tree = assemble(TreeSpec(sources=(images["oci"],), idmap=SQUASH, mtime=5))
    assert tree.image_config.command == ("/usr/bin/tool", "--verbose")
    assert tree["home/user/file"].uid == 0


# -- images that must be refused ------------------------------------------------------------------

def _copy_layout(images, tmp_path) -> str:
    dest = str(tmp_path / "img")
    shutil.copytree(images["layout"], dest, symlinks=True)
    return dest


def _manifest(layout: str, tag: str) -> tuple[dict, dict]:
    index = json.load(open(f"{layout}/index.json"))
    desc = next(d for d in index["manifests"]
                if d["annotations"]["org.opencontainers.image.ref.name"] == tag)
    return desc, json.load(open(f"{layout}/blobs/sha256/{desc['digest'][7:]}"))


def test_a_corrupt_layer_is_an_error_naming_the_blob(images, tmp_path):
    layout = _copy_layout(images, tmp_path)
    _, manifest = _manifest(layout, "final")
    blob = f"{layout}/blobs/sha256/{manifest['layers'][1]['digest'][7:]}"
    data = bytearray(open(blob, "rb").read())
    data[-1] ^= 1
    os.chmod(blob, 0o644)
    open(blob, "wb").write(data)
    with pytest.raises(ImageError, match=manifest["layers"][1]["digest"][7:]):
        read_image(f"oci:{layout}:final")


def test_a_corrupt_docker_layer_is_an_error(images, tmp_path):
    src = f"{images['dir']}/docker.tar"
    out = tmp_path / "bad.tar"
    with tarfile.open(src) as tin, tarfile.open(out, "w") as tout:
        for m in tin:
            f = tin.extractfile(m) if m.isfile() else None
            if f is not None and m.name.endswith(".tar"):
                data = bytearray(f.read())
                data[600] ^= 1
                tout.addfile(m, io.BytesIO(bytes(data)))
            else:
                tout.addfile(m, f)
    with pytest.raises(ImageError, match="diff_ids"):
        read_image(f"docker-archive:{out}")


def test_a_digest_that_is_not_hex_is_refused(images, tmp_path):
    layout = _copy_layout(images, tmp_path)
    index = json.load(open(f"{layout}/index.json"))
    index["manifests"] = [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": "sha256:../../../../etc/passwd", "size": 1}]
    os.chmod(f"{layout}/index.json", 0o644)
    json.dump(index, open(f"{layout}/index.json", "w"))
    with pytest.raises(ImageError, match="not sha256:HEX"):
        read_image(f"oci:{layout}")


def test_a_blob_that_is_a_symlink_is_not_followed(images, tmp_path):
    layout = _copy_layout(images, tmp_path)
    desc, _ = _manifest(layout, "final")
    blob = f"{layout}/blobs/sha256/{desc['digest'][7:]}"
    shutil.copy(blob, tmp_path / "outside")
    os.unlink(blob)
    os.symlink(tmp_path / "outside", blob)
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(f"oci:{layout}:final")


def test_tags_select_and_missing_tags_are_named(images):
    assert "etc/keep" in read_image(f"oci:{images['layout']}:one")
    with pytest.raises(ImageError, match="no image tagged 'nope'") as err:
        read_image(f"oci:{images['layout']}:nope")
    assert "final" in (err.value.hint or "")
    with pytest.raises(ImageError, match="which one"):
        read_image(f"oci:{images['layout']}")


def _add_blob(layout: str, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{layout}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def test_an_index_of_platforms_gives_linux_amd64(images, tmp_path):
    """A hand-written multi-platform index over umoci's manifests: amd64 is "final", the
    arm64 entry is another image of the same layout."""
    layout = _copy_layout(images, tmp_path)
    final, _ = _manifest(layout, "final")
    one, _ = _manifest(layout, "one")
    nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [
                  {**one, "annotations": {}, "platform": {"os": "linux", "architecture": "arm64"}},
                  {**final, "annotations": {},
                   "platform": {"os": "linux", "architecture": "amd64"}}]}
    desc = _add_blob(layout, json.dumps(nested).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", **desc,
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}
    os.chmod(f"{layout}/index.json", 0o644)
    json.dump(index, open(f"{layout}/index.json", "w"))
    assert_same(read_image(f"oci:{layout}"), images["ref"])
    assert "etc/keep" in read_image(f"oci:{layout}:multi", architecture="arm64")
    with pytest.raises(ImageError, match="no image for linux/riscv64"):
        read_image(f"oci:{layout}", architecture="riscv64")


# -- an image built by podman from a Containerfile ----------------------------------------------

CONTAINERFILE = """\
FROM scratch
COPY rootfs/ /
RUN ["/bin/busybox", "sh", "-c", "set -e; rm /etc/gone; rm -rf /gone; \\
     echo new > /etc/replace; chmod 600 /etc/replace; chown 5:5 /etc/replace; \\
     rm -rf /opq; mkdir /opq; echo only > /opq/new; ln /etc/lower /etc/across; \\
     mknod /etc/null c 1 3; mknod /etc/sda b 8 0; mkfifo /etc/fifo; ln -sf replace /etc/sym; \\
     mkdir -p /home/user; echo mine > /home/user/file; chown -R 1000:100 /home/user"]
RUN ["/bin/busybox", "sh", "-c", "set -e; rm /etc/keep; rm -rf /usr/share/doc; \\
     echo third > /etc/third; chmod 4755 /etc/third"]
ENV LANG=C.UTF-8
WORKDIR /home/user
ENTRYPOINT ["/bin/busybox"]
CMD ["sh"]
"""


def _podman_context(d: str) -> None:
    r = f"{d}/rootfs"
    write(f"{r}/bin/busybox", open(shutil.which("busybox") or "/bin/busybox", "rb").read(),
          0o755)
    for name, data in (("keep", b"keep\n"), ("replace", b"old\n"), ("gone", b"bye\n"),
                       ("lower", b"linked\n")):
        write(f"{r}/etc/{name}", data)
    os.link(f"{r}/etc/keep", f"{r}/etc/keep-hl")
    os.symlink("keep", f"{r}/etc/sym")
    write(f"{r}/gone/sub/f", b"deleted with its directory\n")
    write(f"{r}/opq/old", b"hidden by the opaque directory\n")
    write(f"{r}/opq/olddir/x", b"hidden too\n")
    write(f"{r}/usr/share/doc/README", b"doc\n")
    with open(f"{d}/Containerfile", "w") as f:
        f.write(CONTAINERFILE)


def _build_with_podman(d: str) -> None:
    """Build with overlay storage (its opaque directories become ``.wh..wh..opq``) and save
    the image in every format podman writes, plus an export of a container of it."""
    _podman_context(d)
    store = tempfile.mkdtemp(prefix="imgkit-podman-")   # runroot: 50 characters at most
    podman = ("podman", "--storage-driver", "overlay", "--root", f"{store}/root",
              "--runroot", f"{store}/run")
    try:
        sh(*podman, "build", "-q", "--cap-add", "MKNOD", "--isolation", "chroot",
           "-t", "imgkit-test:final", d)
        sh(*podman, "save", "-q", "--format", "oci-dir", "-o", f"{d}/oci", "imgkit-test:final")
        sh(*podman, "save", "-q", "--format", "oci-dir", "--uncompressed", "-o", f"{d}/plain",
           "imgkit-test:final")
        sh(*podman, "save", "-q", "--format", "oci-archive", "-o", f"{d}/img.tar",
           "imgkit-test:final")
        sh(*podman, "save", "-q", "--format", "docker-archive", "-o", f"{d}/docker.tar",
           "imgkit-test:final")
        sh(*podman, "create", "--network", "none", "--name", "imgkit-test", "imgkit-test:final")
        sh(*podman, "export", "-o", f"{d}/export.tar", "imgkit-test")
    finally:
        sh(*podman, "system", "reset", "--force", check=False)
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="module")
def podman_images(tmp_path_factory) -> dict[str, str]:
    """The podman-built image, made once by root into the shared cache (podman needs root
    here: rootless podman needs user namespaces and subordinate ids), read by every run."""
    key = hashlib.sha256((CONTAINERFILE + inspect.getsource(_podman_context)
                          + inspect.getsource(_build_with_podman)).encode()).hexdigest()[:16]
    cache = os.environ.get("IMGKIT_CACHE", "/tmp/imgkit-cache")
    done = os.path.join(cache, f"test-oci-podman-{key}")
    if not os.path.isdir(done):
        if not ROOT:
            pytest.skip("privilege: podman build needs root here (the root run caches the image)")
        if not shutil.which("podman"):
            pytest.fail("podman is missing (packages.txt)")
        os.makedirs(cache, exist_ok=True)
        work = tempfile.mkdtemp(prefix="test-oci-podman-", dir=cache)
        try:
            _build_with_podman(work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        sh("chmod", "-R", "a+rX", work)
        os.chmod(work, 0o755)
        try:
            os.rename(work, done)
        except OSError:   # another run got there first
            shutil.rmtree(work, ignore_errors=True)
    ref = str(tmp_path_factory.mktemp("podman-ref") / "bundle")
    umoci("unpack", "--image", f"{done}/oci:localhost/imgkit-test:final", ref)
    return {"oci": f"oci:{done}/oci:imgkit-test:final", "plain": f"oci:{done}/plain",
            "oci-archive": f"oci-archive:{done}/img.tar",
            "docker-archive": f"docker-archive:{done}/docker.tar:imgkit-test:final",
            "export": f"{done}/export.tar", "ref": f"{ref}/rootfs"}


@pytest.mark.parametrize("variant", ["oci", "plain", "oci-archive", "docker-archive"])
def test_podman_image_matches_umoci_unpack(podman_images, variant):
    tree = load_source(podman_images[variant])
    assert_same(tree, podman_images["ref"])
    assert "opq/old" not in tree and tree["opq/new"].kind is Kind.FILE
    assert "etc/keep" not in tree and "gone" not in tree and "usr/share/doc" not in tree
    assert tree["etc/third"].mode == 0o4755 and tree["etc/sda"].rdev == (8, 0)
    config = tree.image_config
    assert config.command == ("/bin/busybox", "sh") and config.working_dir == "/home/user"
    assert "LANG=C.UTF-8" in config.env


def test_podman_layers_hold_an_opaque_directory(podman_images):
    """The Containerfile's ``rm -rf /opq; mkdir /opq`` really is an opaque whiteout."""
    layout = podman_images["plain"].split(":", 1)[1]
    index = json.load(open(f"{layout}/index.json"))
    manifest = json.load(open(f"{layout}/blobs/sha256/{index['manifests'][0]['digest'][7:]}"))
    names = sh("bsdtar", "-tf", f"{layout}/blobs/sha256/{manifest['layers'][1]['digest'][7:]}")
    assert "opq/.wh..wh..opq" in names.splitlines()
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar"}   # --uncompressed: plain tar layers


def test_podman_image_matches_podman_export(podman_images):
    """``podman export`` of a container of the image, listed by bsdtar."""
    exported = bsdtar_listing(podman_images["export"])
    tree = load_source(podman_images["oci"])
    ours = {e.path: e for e in tree if e.path}
    assert set(exported) == set(ours)
    for path, got in exported.items():
        e = ours[path]
        data = tree[e.target] if e.kind is Kind.HARDLINK else e
        assert (got["uid"], got["gid"]) == (data.uid, data.gid), path
        assert got["mode"][1:] == stat.filemode(data.st_mode)[1:], path
        if e.kind is Kind.FILE:
            assert got["size"] in (str(e.size), "0") and (got["size"] != "0" or e.size == 0
                                                          or got["target"]), path
        if e.kind in (Kind.CHAR, Kind.BLOCK):
            assert got["size"] == "{},{}".format(*e.rdev), path
        if e.kind is Kind.SYMLINK:
            assert got["target"] == e.target, path


def test_compressed_layers_in_a_docker_archive(images, tmp_path):
    """``docker save`` layers are plain tars, but a loader takes gzip and zstd ones too: the
    ``diff_ids`` still name the uncompressed streams, so they are checked decompressed."""
    src = f"{images['dir']}/docker.tar"
    out = tmp_path / "compressed.tar"
    tools = iter((("gzip", "-n", "-c"), ("zstd", "-q", "-c")))
    with tarfile.open(src) as tin, tarfile.open(out, "w") as tout:
        for m in tin:
            f = tin.extractfile(m) if m.isfile() else None
            if f is not None and m.name.endswith(".tar"):
                tool = next(tools, None)
                data = f.read()
                if tool is not None:
                    data = subprocess.run(tool, input=data, capture_output=True,
                                          check=True).stdout
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
            else:
                tout.addfile(m, f)
    assert next(tools, None) is None   # both compressions were used
    assert_same(read_image(f"docker-archive:{out}"), images["ref"])


def test_a_hard_link_into_a_lower_layer(images, tmp_path):
    """Image "three": layer three's etc/across names layer one's etc/lower."""
    umoci("unpack", "--image", f"{images['layout']}:three", str(tmp_path / "bundle"))
    tree = read_image(f"oci:{images['layout']}:three")
    assert_same(tree, str(tmp_path / "bundle" / "rootfs"))
    assert tree["etc/across"].kind is Kind.HARDLINK and tree["etc/across"].target == "etc/lower"
